"""The README's three RAG integration styles, run for real on one NQ 20-document item.

    .venv/bin/python examples/rag_styles.py

The 20 retrieved Wikipedia passages of the first NQ item (../shared/data/nq) go through
(1) ctxgate.rag.RAGCompressor, (2) a LangChain ContextualCompressionRetriever over an
InMemoryVectorStore, and (3) a LlamaIndex VectorStoreIndex retriever with CtxgateNodePostprocessor.
The vector stores embed with MiniLM (the embedded model; bring your own embeddings in practice).
Nothing here calls an LLM: each style prints what it would hand to one.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctxgate.compressor.models import load_embedder

NQ20 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nq" / "nq-open-20docs-derived_first500.jsonl"


def first_item() -> tuple[str, list[dict]]:
    with NQ20.open(encoding="utf-8") as f:
        row = json.loads(f.readline())
    docs = [{"text": c["text"], "title": c["title"], "rank": i} for i, c in enumerate(row["ctxs"])]
    return row["question"], docs


def python_api(question: str, docs: list[dict]) -> None:
    from ctxgate.rag import RAGCompressor

    rag = RAGCompressor(rate=0.25, order="relevance")
    result = rag.compress(docs, question=question)
    print("== Python API")
    for d in result.documents[:3]:
        print(
            f"  kept #{d.index:<2} {d.metadata['title'][:40]:<40} {d.original_tokens:>3} -> {d.compressed_tokens:>3} tokens"
        )
    print(
        f"  ... {len(result.documents)} kept, {len(result.dropped)} dropped; {result.original_tokens} -> "
        f"{result.compressed_tokens} tokens ({result.ratio:.1f}x) in {result.seconds:.2f}s"
    )


def langchain(question: str, docs: list[dict], encoder) -> None:
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    from ctxgate.langchain import CtxgateDocumentCompressor

    class MiniLM(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return encoder.encode(list(texts), normalize_embeddings=True).tolist()

        def embed_query(self, text: str) -> list[float]:
            return self.embed_documents([text])[0]

    store = InMemoryVectorStore(MiniLM())
    store.add_documents(
        [Document(page_content=d["text"], metadata={"title": d["title"]}, id=f"nq0-{d['rank']}") for d in docs]
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=CtxgateDocumentCompressor(rate=0.25), base_retriever=store.as_retriever(search_kwargs={"k": 10})
    )
    out = retriever.invoke(question)
    print("== LangChain")
    for d in out[:3]:
        info = d.metadata["ctxgate"]
        print(
            f"  {d.id:<7} {d.metadata['title'][:40]:<40} {info['original_tokens']:>3} -> {info['compressed_tokens']:>3} tokens"
        )
    print(f"  ... {len(out)} documents, {sum(len(d.page_content) for d in out)} characters")


def llamaindex(question: str, docs: list[dict], encoder) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.schema import TextNode

    from ctxgate.llamaindex import CtxgateNodePostprocessor

    class MiniLM(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return encoder.encode([query], normalize_embeddings=True)[0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return self._get_query_embedding(text)

    nodes = [TextNode(text=d["text"], id_=f"nq0-{d['rank']}", metadata={"title": d["title"]}) for d in docs]
    index = VectorStoreIndex(nodes, embed_model=MiniLM(model_name="minilm"))
    retrieved = index.as_retriever(similarity_top_k=10).retrieve(question)
    out = CtxgateNodePostprocessor(rate=0.25).postprocess_nodes(retrieved, query_str=question)
    print("== LlamaIndex")
    for n in out[:3]:
        info = n.node.metadata["ctxgate"]
        print(
            f"  {n.node.node_id:<7} score={n.score:.3f} {info['original_tokens']:>3} -> {info['compressed_tokens']:>3} tokens"
        )
    print(f"  ... {len(out)} of {len(retrieved)} nodes kept")


def main() -> None:
    question, docs = first_item()
    print(f"question: {question}")
    encoder, _ = load_embedder("minilm")
    python_api(question, docs)
    langchain(question, docs, encoder)
    llamaindex(question, docs, encoder)


if __name__ == "__main__":
    main()
