"""ctxgate: prompt compression for LLM apps. The engine is ``compressor``; the sidecar is
``service``; evals and benchmarks are ``eval``. This package holds the CLI and the RAG API."""

from ctxgate.compressor import Compressor, CompressRequest, CompressResult, Document, compress

from .rag import RAGCompressor, RAGDocument, RAGResult, SidecarError

__all__ = [
    "CompressRequest",
    "CompressResult",
    "Compressor",
    "Document",
    "RAGCompressor",
    "RAGDocument",
    "RAGResult",
    "SidecarError",
    "compress",
]
