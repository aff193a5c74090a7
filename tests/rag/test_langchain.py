"""CtxgateDocumentCompressor in a real LangChain retriever pipeline (in-process mode).

ContextualCompressionRetriever lives in ``langchain-classic`` since LangChain 1.0; the vector store,
retriever and runnables are langchain-core's own, over real NQ passages embedded with MiniLM.
"""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore

from ctxgate.compressor import Compressor
from ctxgate.langchain import CtxgateDocumentCompressor
from ctxgate.rag import RAGCompressor
from tests.helpers.rag import METHOD, langchain_embeddings, nq_passages, question

K = 6


@pytest.fixture(scope="module")
def store():
    vs = InMemoryVectorStore(langchain_embeddings())
    vs.add_documents(
        [Document(page_content=p["text"], metadata=dict(p["metadata"]), id=p["id"]) for p in nq_passages(1)]
    )
    return vs


@pytest.fixture(scope="module")
def local_rag():
    return RAGCompressor(method=METHOD, rate=0.5, compressor=Compressor(default_method=METHOD))


def check_pipeline_output(raw: list[Document], out: list[Document], *, compressed: bool = True):
    by_id = {d.id: d for d in raw}
    assert out and len(out) <= len(raw)
    for d in out:
        src = by_id[d.id]
        info = d.metadata.pop("ctxgate")
        assert d.metadata == src.metadata  # the user's keys, untouched
        assert "ctxgate" not in src.metadata  # and the input documents not mutated
        assert info["method"] == METHOD and info["original_tokens"] >= info["compressed_tokens"] > 0
        assert raw[info["index"]].id == d.id
        if compressed:
            assert d.page_content != src.page_content or info["compressed_tokens"] == info["original_tokens"]
    if compressed:
        before = sum(len(d.page_content) for d in raw)
        assert sum(len(d.page_content) for d in out) < 0.75 * before


@pytest.mark.models
def test_contextual_compression_retriever_compresses_each_document(store, local_rag):
    q, answers = question()
    base = store.as_retriever(search_kwargs={"k": K})
    retriever = ContextualCompressionRetriever(
        base_compressor=CtxgateDocumentCompressor(rag=local_rag), base_retriever=base
    )
    raw, out = base.invoke(q), retriever.invoke(q)
    assert len(raw) == K and any(a in raw[0].page_content for a in answers)  # MiniLM retrieves the gold passage
    check_pipeline_output(raw, out)
    assert out[0].id == raw[0].id and out[0].page_content == raw[0].page_content  # truncate keeps the head


@pytest.mark.models
def test_async_retriever_matches_sync(store, local_rag):
    q, _ = question()
    retriever = ContextualCompressionRetriever(
        base_compressor=CtxgateDocumentCompressor(rag=local_rag),
        base_retriever=store.as_retriever(search_kwargs={"k": K}),
    )
    a, b = retriever.invoke(q), asyncio.run(retriever.ainvoke(q))
    assert [(d.id, d.page_content, d.metadata) for d in a] == [(d.id, d.page_content, d.metadata) for d in b]


@pytest.mark.models
def test_core_runnable_chain_with_field_configuration(store):
    """The same compressor built from its own fields, in an LCEL chain of langchain-core pieces."""
    q, _ = question()
    comp = CtxgateDocumentCompressor(method=METHOD, target_tokens=200, metadata_key="cg")
    chain = store.as_retriever(search_kwargs={"k": K}) | RunnableLambda(lambda docs: comp.compress_documents(docs, q))
    out = chain.invoke(q)
    assert sum(d.metadata["cg"]["compressed_tokens"] for d in out) <= 200 * 1.15
    assert all("ctxgate" not in d.metadata for d in out)


@pytest.mark.models
def test_users_own_ctxgate_key_is_not_overwritten(local_rag):
    docs = [Document(page_content="alpha beta gamma " * 30, metadata={"ctxgate": "mine", "k": 1})]
    out = CtxgateDocumentCompressor(rag=local_rag).compress_documents(docs, "q")
    assert out[0].metadata == {"ctxgate": "mine", "k": 1} and len(out[0].page_content) < len(docs[0].page_content)


def test_empty_and_non_string_page_content(local_rag):
    comp = CtxgateDocumentCompressor(rag=local_rag)
    assert comp.compress_documents([], "q") == []
    bad = Document(page_content="fine")
    bad.page_content = 123  # pydantic does not validate assignment; such documents reach compressors
    with pytest.raises(TypeError, match=r"documents\[1\]\.page_content must be str, got int"):
        comp.compress_documents([Document(page_content="ok"), bad], "q")
    with pytest.raises(TypeError, match="page_content must be str, got NoneType"):
        asyncio.run(comp.acompress_documents([Document.model_construct(metadata={})], "q"))


def test_missing_langchain_gives_install_hint(monkeypatch):
    monkeypatch.delitem(sys.modules, "ctxgate.langchain")
    monkeypatch.setitem(sys.modules, "langchain_core.documents", None)  # what the import system does when absent
    with pytest.raises(ImportError, match=r"pip install 'ctxgate\[langchain\]'"):
        importlib.import_module("ctxgate.langchain")
