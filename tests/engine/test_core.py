"""Compressor behaviour shared by every method: budgets, edge cases, caching, accounting."""

import json

import pytest

from ctxgate.compressor import (
    Compressor,
    CompressRequest,
    ConfigError,
    Document,
    InputTooLarge,
    InvalidRequest,
    MemoryCache,
    SQLiteCache,
    get_counter,
)
from tests.helpers.data import DATA


@pytest.fixture(scope="module")
def text():
    return (DATA / "arxiv" / "article_3.txt").read_text()[:6000]


@pytest.fixture(scope="module")
def comp():
    return Compressor(default_method="truncate")


@pytest.mark.models
def test_empty_context_is_returned_with_ratio_one(comp):
    r = comp.compress(context="", rate=0.1)
    assert (r.compressed, r.ratio, r.original_tokens) == ("", 1.0, 0)
    r = comp.compress(context=[], rate=0.1)
    assert (r.compressed, r.documents, r.ratio) == ("", [], 1.0)


@pytest.mark.models
def test_context_within_budget_is_untouched(comp):
    r = comp.compress(context="Short text, 42 words at most.", target_tokens=500)
    assert r.compressed == "Short text, 42 words at most." and r.ratio == 1.0


@pytest.mark.parametrize(
    "bad", [dict(rate=0), dict(rate=1.5), dict(target_tokens=0), dict(rate=0.5, target_tokens=10), dict(method="nope")]
)
def test_bad_options_are_clear_errors(comp, bad):
    with pytest.raises(InvalidRequest):
        comp.compress(context="some text " * 50, **bad)


def test_method_options_are_converted_or_refused_when_the_request_is_built():
    """Numbers may come as strings (the eval CLI passes them so) and flags as "true"/"false":
    before, bool("false") left multi_hop on, and the classifier's int()/float() crashed on junk."""
    from ctxgate.service import Settings
    from ctxgate.service._config import Rule

    opts = CompressRequest(
        context="x", options={"passage_words": "32", "coarse_factor": 2, "multi_hop": "false", "custom": [1]}
    ).options
    assert opts == {"passage_words": 32, "coarse_factor": 2.0, "multi_hop": False, "custom": [1]}
    assert isinstance(opts["coarse_factor"], float) and opts["multi_hop"] is False
    for bad in ({"passage_words": 2.5}, {"sentence_factor": "nan"}, {"structured": 1}, {"lexical_weight": 1e9}):
        with pytest.raises(InvalidRequest, match="option " + next(iter(bad))):
            CompressRequest(context="x", options=bad)
    with pytest.raises(ConfigError, match=r"rules\[0\].options: option coarse_factor"):
        Settings(rules=[Rule(options={"coarse_factor": 0})])


@pytest.mark.models
def test_input_limit_is_enforced(text):
    small = Compressor(default_method="truncate", max_input_tokens=100)
    with pytest.raises(InputTooLarge, match="over the limit of 100"):
        small.compress(context=text, rate=0.5)


@pytest.mark.models
@pytest.mark.parametrize("rate", [0.5, 0.2, 0.1, 0.05])
def test_budget_is_honoured_within_15_percent(comp, text, rate):
    r = comp.compress(context=text, rate=rate, method="random")
    asked = r.original_tokens * rate
    assert r.original_tokens > 500
    assert abs(r.compressed_tokens - asked) / asked <= 0.15, (r.compressed_tokens, asked)
    assert r.compressed_tokens == get_counter().count(r.compressed)  # honest accounting


@pytest.mark.models
def test_documents_keep_metadata_and_report_drops(comp):
    docs = [
        Document(text="first document " * 40, id="a", metadata={"src": 1}),
        Document(text="second document " * 40, id="b", metadata={"src": 2}),
    ]
    r = comp.compress(CompressRequest(context=docs, rate=0.3))
    assert [d.metadata for d in r.documents] == [{"src": 1}, {"src": 2}]
    assert [d.id for d in r.documents] == ["a", "b"]
    assert r.documents[1].dropped and r.documents[1].text == ""
    assert sum(d.original_tokens for d in r.documents) == r.original_tokens


@pytest.mark.models
def test_a_cache_hit_carries_the_callers_own_document_ids():
    """The second audit: a hit returned the first caller's ids (``patient-4711-record-1``) to a
    second caller who sent the same texts under its own ids."""
    comp = Compressor(default_method="truncate", cache=MemoryCache())
    texts = ["first document " * 40, "second document " * 40]
    first = comp.compress(
        context=[Document(text=t, id=f"patient-{i}", metadata={"t": "A"}) for i, t in enumerate(texts)]
    )
    second = comp.compress(
        context=[Document(text=t, id=f"tenantB-{i}", metadata={"t": "B"}) for i, t in enumerate(texts)]
    )
    assert first.cache != "hit" and second.cache == "hit"
    assert [d.id for d in second.documents] == ["tenantB-0", "tenantB-1"]
    assert [d.metadata for d in second.documents] == [{"t": "B"}] * 2


@pytest.mark.models
def test_keep_markup_survives_and_compress_regions_are_the_only_ones_compressed(comp, text):
    doc = f"{text[:800]} <ctxgate:keep>The secret code is XJ-42.</ctxgate:keep> {text[800:1600]}"
    r = comp.compress(context=doc, rate=0.2, method="random")
    assert "The secret code is XJ-42." in r.compressed and "ctxgate:" not in r.compressed
    only = f"Verbatim head. <ctxgate:compress rate=0.3>{text[:3000]}</ctxgate:compress> Verbatim tail."
    r = comp.compress(context=only, rate=1.0, method="random")
    assert r.compressed.startswith("Verbatim head. ") and r.compressed.endswith(" Verbatim tail.")
    assert r.compressed_tokens < 0.5 * r.original_tokens


@pytest.mark.models
def test_budget_below_protected_content_keeps_it_and_warns(comp):
    block = '```json\n{"ids": [101, 202, 303], "url": "https://example.com/x"}\n```'
    r = comp.compress(context=f"some words here\n{block}\nand more words\n" * 3, target_tokens=5, method="random")
    assert r.compressed.count(block) == 3
    assert any("protected content" in w for w in r.warnings)


@pytest.mark.models
@pytest.mark.parametrize("method", ["classifier", "extractive", "truncate"])
def test_a_context_of_one_span_larger_than_the_budget_is_kept_whole_not_emptied(method):
    """The second audit: a tool output that is one 8,000-character hex key came back as "" (and
    the proxy sent "" upstream), because no unit fitted the budget and nothing said so."""
    key = "0123456789abcdef" * 500
    comp = Compressor(cache=None)
    for context in (key, [key, key[:3000]]):
        r = comp.compress(context=context, question="What is the key?", rate=0.25, method=method)
        assert key in r.compressed, method
        assert any("no part of the context fits the budget" in w for w in r.warnings), r.warnings
    r = comp.compress(context="The key is below.\n" + key, question="What is the key?", rate=0.25, method=method)
    assert r.compressed.strip(), "a text that keeps a sentence is compressed as usual"
    assert not any("no part of the context" in w for w in r.warnings)


@pytest.mark.models
@pytest.mark.parametrize("cache_factory", [lambda p: MemoryCache(), lambda p: SQLiteCache(p / "c.sqlite")])
def test_cache_hit_returns_identical_bytes(tmp_path, text, cache_factory):
    comp = Compressor(default_method="random", cache=cache_factory(tmp_path))
    a = comp.compress(context=text, rate=0.3, question="what?")
    b = comp.compress(context=text, rate=0.3, question="what?")
    assert (a.cache, b.cache) == ("miss", "hit")
    assert a.compressed == b.compressed
    c = comp.compress(context=text, rate=0.3, question="something else?")
    assert c.cache == "miss"


def test_sqlite_cache_survives_reopen_and_is_bounded(tmp_path):
    c = SQLiteCache(tmp_path / "c.sqlite", max_entries=5)
    for i in range(12):
        c.set(f"k{i}", json.dumps(i).encode())
    c.prune()
    reopened = SQLiteCache(tmp_path / "c.sqlite", max_entries=5)
    assert len(reopened) == 5 and reopened.get("k11") == b"11" and reopened.get("k0") is None


def test_memory_cache_ttl_and_lru():
    c = MemoryCache(max_entries=2, ttl=1000)
    c.set("a", b"1")
    c.set("b", b"2")
    c.get("a")
    c.set("c", b"3")
    assert c.get("b") is None and c.get("a") == b"1"
    expired = MemoryCache(ttl=-1)
    expired.set("x", b"1")
    assert expired.get("x") is None


@pytest.mark.models
def test_token_counters_exact_or_labelled():
    assert not get_counter("gpt-4o").estimated and get_counter("gpt-4o").count("hello world") == 2
    assert get_counter("claude-3-5-sonnet").estimated
    assert not get_counter("smollm2").estimated


@pytest.mark.models
def test_hf_counts_match_the_tokenizer_and_ignore_a_truncating_backend(text):
    """Counting goes straight to the Rust tokenizer; it must give the wrapper's ids, and a backend
    configured to truncate or pad must not shorten a count."""
    import copy

    from ctxgate.compressor._tokens import HFCounter
    from ctxgate.compressor.models import load_tokenizer

    texts = [text, "", " ", "héllo wörld ünïcode", "\u200b", "🙂 emoji 🙂", "  spaced  out  ", "x" * 3000]
    for name in ("smollm2", "minilm"):
        tok = load_tokenizer(name)
        wrapper = [len(ids) if t else 0 for ids, t in zip(tok(texts, add_special_tokens=False)["input_ids"], texts)]
        counter = HFCounter(name, tok)
        assert counter.count_many(texts) == wrapper
        assert [counter.count(t) for t in texts] == wrapper
        truncating = copy.deepcopy(tok)
        truncating.backend_tokenizer.enable_truncation(8)
        assert HFCounter(name, truncating).count_many(texts) == wrapper


@pytest.mark.parametrize(
    "kw",
    [
        dict(context="bad \ud800 here " * 30),
        dict(context=["fine " * 30, "bad \udfff"]),
        dict(context=[Document(text="x\ud800")]),
        dict(context="fine " * 50, question="why \ud800?"),
    ],
)
def test_a_lone_surrogate_is_an_invalid_request(kw):
    """The second audit: the tokenizers raised TypeError on one, the cache key UnicodeEncodeError."""
    with pytest.raises(InvalidRequest, match="lone surrogate"):
        Compressor(default_method="truncate", cache=MemoryCache()).compress(**kw)
