"""ctxgate.rag in-process: documents in, compressed documents out, nothing lost silently."""

from __future__ import annotations

import asyncio

import pytest

from ctxgate.compressor import Compressor, Document, InvalidRequest, find_protected
from ctxgate.rag import RAGCompressor
from tests.helpers.rag import METHOD, nq_passages, question


@pytest.fixture(scope="module")
def engine():
    return Compressor(default_method=METHOD)


@pytest.fixture(scope="module")
def docs():
    return [dict(p, metadata=dict(p["metadata"])) for p in nq_passages(1)[:8]]


@pytest.mark.models
def test_kept_documents_are_compressed_with_metadata_untouched_and_drops_reported(engine, docs):
    q, _ = question()
    r = RAGCompressor(method=METHOD, rate=0.3, compressor=engine).compress(docs, question=q)
    assert r.mode == "local" and r.method == METHOD and not r.fallback
    assert 1 <= len(r.documents) < len(docs) and r.dropped
    assert sorted(d.index for d in r.documents + r.dropped) == list(range(len(docs)))
    for d in r.documents + r.dropped:
        assert d.metadata is docs[d.index]["metadata"]  # the caller's own object
        assert d.id == docs[d.index]["id"] and d.original_text == docs[d.index]["text"]
    assert all(d.text == "" and d.compressed_tokens == 0 for d in r.dropped)
    assert r.original_tokens == sum(d.original_tokens for d in r.documents + r.dropped)
    assert r.compressed_tokens == sum(d.compressed_tokens for d in r.documents)
    assert abs(r.compressed_tokens - 0.3 * r.original_tokens) <= 0.15 * 0.3 * r.original_tokens
    assert r.ratio == pytest.approx(r.original_tokens / r.compressed_tokens, rel=1e-3)
    assert r.text() == "\n\n".join(d.text for d in r.documents) and r.seconds > 0
    assert docs[0]["metadata"] == nq_passages(1)[0]["metadata"]  # not modified either


@pytest.mark.models
def test_target_tokens_and_per_call_overrides(engine, docs):
    rag = RAGCompressor(method=METHOD, rate=0.9, compressor=engine)
    r = rag.compress(docs, target_tokens=120)
    assert r.budget == 120 and r.compressed_tokens <= 120 * 1.15
    r2 = rag.compress(docs, rate=0.5, method="random")
    assert r2.method == "random" and r2.budget == -(-r2.original_tokens // 2)


@pytest.mark.models
def test_relevance_order_without_scores_keeps_input_order(engine, docs):
    r = RAGCompressor(method=METHOD, rate=0.5, order="relevance", compressor=engine).compress(docs)
    assert [d.index for d in r.documents] == sorted(d.index for d in r.documents)


@pytest.mark.models
def test_relevance_order_follows_the_methods_scores(docs):
    """Needs a method that scores documents: extractive ranks them with MiniLM."""
    q, _ = question()
    rev = docs[::-1]  # the gold passage is now last
    r = RAGCompressor(method="extractive", rate=0.4, order="relevance").compress(rev, q)
    scores = [d.score for d in r.documents]
    assert len(scores) >= 2 and None not in scores and scores == sorted(scores, reverse=True)
    assert r.documents[0].index == len(rev) - 1 and r.documents[0].metadata["hasanswer"]
    same = RAGCompressor(method="extractive", rate=0.4).compress(rev, q)
    assert [d.index for d in same.documents] == sorted(d.index for d in r.documents)


@pytest.mark.models
def test_accepts_strings_documents_and_mappings(engine):
    r = RAGCompressor(method=METHOD, rate=1.0, compressor=engine).compress(
        [
            "plain string",
            Document(text="a Document", id="x", metadata={"k": 1}),
            {"page_content": "a LangChain-style dict", "metadata": {"m": 2}, "id": 7},
            {"text": "a flat dict", "source": "https://example.com/a", "metadata": {"m": 3}},
        ]
    )
    assert [d.text for d in r.documents] == ["plain string", "a Document", "a LangChain-style dict", "a flat dict"]
    assert [d.id for d in r.documents] == [None, "x", "7", None]
    assert [d.metadata for d in r.documents] == [{}, {"k": 1}, {"m": 2}, {"source": "https://example.com/a", "m": 3}]


def test_empty_document_list_is_an_empty_result(engine):
    r = RAGCompressor(method=METHOD, rate=0.2, compressor=engine).compress([], question="anything?")
    assert (r.documents, r.dropped, r.original_tokens, r.compressed_tokens, r.ratio) == ([], [], 0, 0, 1.0)
    assert not r.over_budget and r.text() == ""


@pytest.mark.parametrize(
    "bad, match",
    [
        ([{"text": None}], "text must be str"),
        ([{"page_content": b"bytes"}], "text must be str"),
        ([42], "must be a str"),
        ("a single string", "not a single str"),
        ([{"text": "ok", "metadata": ["not", "a", "dict"]}], "metadata must be a dict"),
    ],
)
def test_bad_documents_are_clear_type_errors(engine, bad, match):
    with pytest.raises(TypeError, match=match):
        RAGCompressor(method=METHOD, compressor=engine).compress(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(rate=0),
        dict(rate=2.0),
        dict(rate=0.5, target_tokens=10),
        dict(target_tokens=0),
        dict(mode="gpu"),
        dict(mode="remote"),
        dict(order="random"),
        dict(timeout=0),
    ],
)
def test_bad_settings_fail_at_construction(kwargs):
    with pytest.raises(InvalidRequest):
        RAGCompressor(**kwargs)


MIXED = [
    "北京是中华人民共和国的首都，2023年常住人口为2185.8万人。故宫建于1406年至1420年，"
    "占地面积约72万平方米。长城全长21196.18公里。" * 3,
    "Here is the helper we ship:\n```python\ndef parse_ids(raw: str) -> list[int]:\n"
    "    return [int(x) for x in raw.split(',') if x.strip()]\n```\n"
    "It is called by the importer for every batch of records that arrives from upstream systems. " * 2,
    'The service answered with {"status": "ok", "items": [101, 202, 303], "next": "https://api.example.com/v2/page/3"} '
    "after we retried the request three times, and the latency stayed under the limit. " * 2,
    "Die Bundesrepublik Deutschland hat rund 84,4 Millionen Einwohner; mehr unter https://www.destatis.de/DE/Home "
    "oder per E-Mail an info@destatis.de. Version 3.2.1 des Berichts erschien am 2024-06-30. " * 2,
]


@pytest.mark.models
def test_mixed_languages_code_and_json_keep_their_protected_spans(engine):
    r = RAGCompressor(method="random", rate=0.4, compressor=engine).compress(MIXED)
    assert r.compressed_tokens < 0.6 * r.original_tokens
    assert {1, 2, 3} <= {d.index for d in r.documents}
    for d in r.documents:
        spans = find_protected(MIXED[d.index])
        original = {MIXED[d.index][s.start : s.end] for s in spans}
        structural = {MIXED[d.index][s.start : s.end] for s in spans if s.structural}
        kept = {d.text[s.start : s.end] for s in find_protected(d.text)}
        assert structural <= kept  # code blocks and JSON verbatim
        assert kept <= original, kept - original  # no mangled number, URL, identifier or e-mail
        assert d.index not in (1, 2) or structural
    for d in r.dropped:  # reported with the original text, never lost
        assert d.original_text == MIXED[d.index] and d.text == ""


@pytest.mark.models
def test_chinese_document_is_compressed_not_dropped(engine):
    r = RAGCompressor(method="random", rate=0.5, compressor=engine).compress([MIXED[0]])
    assert not r.dropped and 0 < r.compressed_tokens < r.original_tokens
    out = r.documents[0].text
    assert " " not in out  # no spaces invented between characters
    for number in ("2185.8", "1406", "1420", "21196.18"):  # numbers whole or absent
        assert out.count(number[:3]) == out.count(number)


@pytest.mark.models
def test_budget_below_protected_content_returns_it_with_a_warning_flag(engine):
    block = '```json\n{"order_id": "A-7731", "sku": [1001, 1002], "url": "https://shop.example.com/o/7731"}\n```'
    docs = [f"Order summary follows.\n{block}\nThanks for shopping with us." for _ in range(3)]
    r = RAGCompressor(method="random", target_tokens=5, compressor=engine).compress(docs)
    assert r.over_budget and r.warnings and any("protected" in w for w in r.warnings)
    assert sum(d.text.count(block) for d in r.documents) == 3


@pytest.mark.models
def test_acompress_matches_compress(engine, docs):
    rag = RAGCompressor(method=METHOD, rate=0.3, compressor=engine)
    a, b = rag.compress(docs), asyncio.run(rag.acompress(docs))
    assert [(d.index, d.text) for d in a.documents] == [(d.index, d.text) for d in b.documents]
    assert [d.index for d in a.dropped] == [d.index for d in b.dropped]


def test_the_plugins_declare_every_setting_the_rag_compressor_takes():
    import inspect

    from ctxgate.langchain import CtxgateDocumentCompressor
    from ctxgate.llamaindex import CtxgateNodePostprocessor

    params = set(inspect.signature(RAGCompressor.__init__).parameters) - {"self", "headers", "compressor"}
    assert set(RAGCompressor.SETTINGS) == params  # a new constructor setting is listed, or this fails
    for plugin in (CtxgateDocumentCompressor, CtxgateNodePostprocessor):
        assert set(RAGCompressor.SETTINGS) <= set(plugin.model_fields), plugin.__name__
        made = plugin(rate=0.4, order="relevance", timeout=5.0, options={"structured": False})._rag
        assert (made.rate, made.order, made.timeout, made.options) == (0.4, "relevance", 5.0, {"structured": False})
