"""CtxgateNodePostprocessor in a real LlamaIndex pipeline (in-process mode): a VectorStoreIndex over
real NQ passages with MiniLM embeddings, its retriever, and a query engine. The engine runs in
"no_text" mode: on these shared 2-core machines a generating reader costs far more than the plugin
under test; examples/rag_nq.py runs the whole pipeline with a reader."""

from __future__ import annotations

import asyncio
import importlib
import sys

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from ctxgate.compressor import Compressor
from ctxgate.llamaindex import CtxgateNodePostprocessor
from ctxgate.rag import RAGCompressor
from tests.helpers.rag import METHOD, llamaindex_embedding, nq_passages, question, smollm2_llm

K = 6


@pytest.fixture(scope="module")
def index():
    nodes = [
        TextNode(
            text=p["text"],
            id_=p["id"],
            metadata=dict(p["metadata"]),
            excluded_llm_metadata_keys=["source_question_idx"],
        )
        for p in nq_passages(1)
    ]
    return VectorStoreIndex(nodes, embed_model=llamaindex_embedding())


@pytest.fixture(scope="module")
def local_rag():
    return RAGCompressor(method=METHOD, rate=0.4, compressor=Compressor(default_method=METHOD))


def check_nodes(raw: list[NodeWithScore], out: list[NodeWithScore]):
    by_id = {n.node.node_id: n for n in raw}
    assert out and len(out) < len(raw)
    for n in out:
        src = by_id[n.node.node_id]
        meta = dict(n.node.metadata)
        info = meta.pop("ctxgate")
        assert meta == src.node.metadata and "ctxgate" not in src.node.metadata
        assert n.score == src.score and info["index"] == raw.index(src)
        assert n.node.relationships == src.node.relationships
        assert info["original_tokens"] >= info["compressed_tokens"] > 0
        # compression info costs no prompt tokens, and the user's exclusions still hold
        llm_view = n.node.get_content(metadata_mode=MetadataMode.LLM)
        assert "ctxgate" not in llm_view and "source_question_idx" not in llm_view and n.node.text in llm_view
    assert sum(len(n.node.text) for n in out) < 0.6 * sum(len(n.node.text) for n in raw)


@pytest.mark.models
def test_query_engine_with_postprocessor(index, local_rag):
    q, answers = question()
    retriever = index.as_retriever(similarity_top_k=K)
    raw = retriever.retrieve(q)
    assert len(raw) == K and any(a in raw[0].node.text for a in answers)  # the gold passage is retrieved
    originals = [n.node.text for n in raw]
    # NoText built directly: llama-index's factory drops llm= for "no_text" and falls back to OpenAI
    engine = RetrieverQueryEngine(
        retriever,
        response_synthesizer=NoText(llm=smollm2_llm()),
        node_postprocessors=[CtxgateNodePostprocessor(rag=local_rag)],
    )
    response = engine.query(q)
    check_nodes(raw, response.source_nodes)
    assert [n.node.text for n in retriever.retrieve(q)] == originals  # the index itself is untouched


@pytest.mark.models
def test_no_query_needed_and_async_matches_sync(index, local_rag):
    raw = index.as_retriever(similarity_top_k=K).retrieve(question()[0])
    pp = CtxgateNodePostprocessor(rag=local_rag)
    no_query = pp.postprocess_nodes(raw)
    check_nodes(raw, no_query)
    a = pp.postprocess_nodes(raw, query_str=question()[0])
    b = asyncio.run(pp.apostprocess_nodes(raw, query_bundle=QueryBundle(question()[0])))
    assert [(n.node.node_id, n.node.text, n.score) for n in a] == [(n.node.node_id, n.node.text, n.score) for n in b]


@pytest.mark.models
def test_fields_configure_the_compressor():
    nodes = [
        NodeWithScore(node=TextNode(text="gamma delta " * 80, metadata={"k": i}), score=1.0 - i / 10) for i in range(3)
    ]
    out = CtxgateNodePostprocessor(method=METHOD, target_tokens=100).postprocess_nodes(nodes)
    assert sum(n.node.metadata["ctxgate"]["compressed_tokens"] for n in out) <= 115
    assert [n.node.metadata["k"] for n in out] == [n.node.metadata["k"] for n in nodes[: len(out)]]


def test_empty_and_non_string_text(local_rag):
    pp = CtxgateNodePostprocessor(rag=local_rag)
    assert pp.postprocess_nodes([]) == []
    bad = NodeWithScore(node=TextNode.model_construct(text=None, metadata={}), score=0.5)
    with pytest.raises(TypeError, match=r"nodes\[1\]\.node\.text must be str, got NoneType"):
        pp.postprocess_nodes([NodeWithScore(node=TextNode(text="ok")), bad])


def test_missing_llamaindex_gives_install_hint(monkeypatch):
    monkeypatch.delitem(sys.modules, "ctxgate.llamaindex")
    monkeypatch.setitem(sys.modules, "llama_index.core.postprocessor.types", None)
    with pytest.raises(ImportError, match=r"pip install 'ctxgate\[llamaindex\]'"):
        importlib.import_module("ctxgate.llamaindex")
