"""The RAG plugins: Python API, LangChain, LlamaIndex, and the remote (sidecar) mode."""
