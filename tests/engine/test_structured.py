"""Structured tool outputs through ``Compressor.compress``: JSON stays valid with its key paths,
anomalies survive, logs collapse, tables keep their header, code is cut only in whole regions,
and everything is deterministic and within budget."""

from __future__ import annotations

import json
import random

import pytest

from ctxgate.compressor import Compressor, InputTooLarge, MemoryCache
from ctxgate.compressor.structured import kind_of, split
from tests.helpers.data import nq_docs
from tests.helpers.payloads import records, search_payload

QUESTION = "When was the Eiffel Tower completed?"


@pytest.fixture(scope="module")
def comp() -> Compressor:
    return Compressor(default_method="classifier")


def _leaves(v, path=()):
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _leaves(x, (*path, k))
    elif isinstance(v, list):
        for x in v:
            yield from _leaves(x, (*path, "[]"))
    else:
        yield path


def test_kinds_are_detected_and_rag_documents_stay_prose(nq_items):
    assert kind_of(json.dumps(records(5))) == "json"
    assert kind_of("\n".join(json.dumps(r) for r in records(5))) == "ndjson"
    assert kind_of(_log(50)) == "log"
    assert kind_of("| a | b |\n|---|---|\n" + "\n".join(f"| {i} | {i * 2} |" for i in range(6))) == "table"
    assert kind_of("name,size,owner\n" + "\n".join(f"f{i}.txt,{i},bob" for i in range(8))) == "table"
    assert kind_of(_code(3)) == "code"
    assert (
        kind_of("diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@\n a\n-b\n+c\n d\n e\n f") == "diff"
    )
    assert kind_of("<!doctype html><html><body><p>hi</p></body></html>") == "html"
    for item in nq_items:
        docs = nq_docs(item)
        for doc in [*docs, "\n\n".join(docs)]:
            assert [p.kind for p in split(doc)] == ["prose"], doc[:80]


@pytest.mark.models
def test_json_search_result_stays_valid_keeps_paths_the_answer_and_the_anomalies(comp):
    text, items = search_payload()
    r = comp.compress(context=text, question=QUESTION, rate=0.2)
    assert r.kinds == ["json"]
    assert r.compressed_tokens <= r.original_tokens * 0.2 + 1
    out = json.loads(r.compressed)
    assert set(out) == {"query", "total", "results"} and out["query"] == "tower"
    kept = [x for x in out["results"] if "_ctxgate_omitted" not in x]
    ids = [x["id"] for x in kept]
    assert {137, 50, 90, 0, 199} <= set(ids)  # answer, error status, outlier, first, last
    assert ids == sorted(ids)  # original order
    for x in kept:
        assert x == items[x["id"]]  # every kept record is the input's, whole
    note = out["results"][-1]["_ctxgate_omitted"]
    assert note.startswith(f"{200 - len(kept)} of 200 items omitted")
    original_paths = set(_leaves(json.loads(text)))
    assert set(_leaves(out)) - {("results", "[]", "_ctxgate_omitted")} <= original_paths


@pytest.mark.models
def test_json_numbers_keep_their_spelling_and_output_is_deterministic(comp):
    rows = [
        {"id": f"item-{i:04d}", "price": "1.0" if i % 2 else "2.50", "big": "1e5", "when": f"2026-01-{i % 28 + 1:02d}"}
        for i in range(150)
    ]
    text = (
        "["
        + ",".join(
            '{{"id":"{}","price":{},"big":{},"when":"{}"}}'.format(r["id"], r["price"], r["big"], r["when"])
            for r in rows
        )
        + "]"
    )
    a = comp.compress(context=text, question="price of item-0077?", rate=0.25)
    b = comp.compress(context=text, question="price of item-0077?", rate=0.25)
    assert a.compressed == b.compressed
    assert '"price":1.0' in a.compressed and '"big":1e5' in a.compressed and '"price":2.50' in a.compressed
    assert '"id":"item-0077"' in a.compressed
    json.loads(a.compressed)


@pytest.mark.models
def test_json_without_a_question_keeps_a_spread_sample_and_all_anomalies(comp):
    text, _ = search_payload()
    out = json.loads(comp.compress(context=text, rate=0.1).compressed)
    ids = [x["id"] for x in out["results"] if "id" in x]
    assert {50, 90} <= set(ids)
    assert min(ids) == 0 and max(ids) == 199
    assert any(60 <= i <= 140 for i in ids) and any(i > 150 for i in ids if i != 199)  # spread, not a head


@pytest.mark.models
def test_json_object_map_and_key_value_lookup_keep_the_exact_value(comp):
    rnd = random.Random(3)
    kv = {f"{rnd.getrandbits(128):032x}": f"{rnd.getrandbits(128):032x}" for _ in range(300)}
    key = list(kv)[211]
    r = comp.compress(context=json.dumps(kv, indent=1), question=f'What is the value of key "{key}"?', rate=0.1)
    out = json.loads(r.compressed)
    assert out[key] == kv[key]
    assert "_ctxgate_omitted" in out and len(out) < 60


@pytest.mark.models
def test_ndjson_lines_are_kept_byte_for_byte(comp):
    lines = [json.dumps({"i": i, "msg": "ok" if i != 33 else "upstream timeout error"}) for i in range(200)]
    r = comp.compress(context="\n".join(lines), rate=0.1)
    assert r.kinds == ["ndjson"]
    out = r.compressed.split("\n")
    for ln in out[:-1]:
        assert ln in lines
    assert lines[33] in out and lines[0] in out and lines[-1] in out
    assert json.loads(out[-1])["_ctxgate_omitted"].startswith(f"{200 - len(out) + 1} of 200")


@pytest.mark.models
def test_long_string_values_are_pruned_but_never_ids_numbers_or_urls(comp):
    rnd = random.Random(5)
    words = "the river runs past the old mill where the miller kept his grain in wooden barrels".split()
    docs = [
        {
            "id": f"doc-{i}",
            "url": f"https://example.org/{i}",
            "year": 1900 + i,
            "text": " ".join(rnd.choice(words) for _ in range(160)),
        }
        for i in range(12)
    ]
    r = comp.compress(context=json.dumps({"hits": docs}), question="Where did the miller keep his grain?", rate=0.3)
    out = json.loads(r.compressed)
    for d in out["hits"]:
        if "id" in d:
            src = docs[int(d["id"].split("-")[1])]
            assert (d["url"], d["year"]) == (src["url"], src["year"])
            assert set(d["text"].split()) <= set(src["text"].split())


@pytest.mark.models
def test_a_relevant_record_too_long_to_fit_is_kept_pruned_not_skipped(comp):
    """The best record is longer than the whole budget: it comes back with its prose pruned to
    the sentence the question needs, not dropped for shorter, less relevant records."""
    rnd = random.Random(3)
    filler = "harbour ferry timetable cargo crane dock pier tide warehouse freight".split()
    facts = [
        "The Eiffel Tower stands on the Champ de Mars in Paris.",
        "Its iron lattice was designed by engineers of Gustave Eiffel's company.",
        "Critics of the time called the tower an eyesore.",
        "The tower is repainted every seven years.",
        "Millions of visitors climb the tower each year.",
        "The top floor holds a small apartment.",
        "Radio antennas were added to the tower later.",
        "The tower was the tallest structure in the world for four decades.",
    ]
    best = " ".join([*facts[:4], "The Eiffel Tower was completed in March 1889.", *facts[4:], *facts])
    records = [
        {"id": f"r{i}", "title": f"Port notice {i}", "snippet": " ".join(rnd.choice(filler) for _ in range(60))}
        for i in range(7)
    ]
    records.insert(4, {"id": "eiffel", "title": "Eiffel Tower", "snippet": best})
    text = json.dumps({"results": records})
    r = comp.compress(context=text, question=QUESTION, rate=0.2)
    assert r.compressed_tokens <= r.original_tokens * 0.2 + 1
    kept = {d.get("id"): d for d in json.loads(r.compressed)["results"]}
    assert comp.compress(context=best, method="passthrough").original_tokens > r.compressed_tokens  # never fits whole
    assert "eiffel" in kept and "1889" in kept["eiffel"]["snippet"]
    assert len(kept["eiffel"]["snippet"]) < len(best)


@pytest.mark.models
def test_bad_json_is_text_and_deep_or_huge_input_is_bounded(comp):
    r = comp.compress(context='{"a": [1, 2, 3, "unterminated ' + "word " * 200, rate=0.3)
    assert r.kinds == [] and r.compressed_tokens < r.original_tokens
    deep = "[" * 50_000 + "]" * 50_000
    comp.compress(context=deep + " and some words after it " * 20, rate=0.3)  # no RecursionError
    nested = json.dumps({"a": 1, "rows": [{"x": i} for i in range(100)]})
    for _ in range(500):
        nested = '{"k":' + nested + "}"
    out = json.loads(comp.compress(context=nested, rate=0.3).compressed)
    assert out["k"]["k"]
    huge = json.dumps(list(range(100_000)))
    r = Compressor(default_method="classifier", max_input_tokens=10_000_000).compress(context=huge, rate=0.01)
    kept = json.loads(r.compressed)
    assert kept[0] == 0 and kept[-2] == 99_999 and len(kept) < 3_000
    with pytest.raises(InputTooLarge):
        Compressor(default_method="classifier", max_input_tokens=1_000).compress(context=huge, rate=0.1)


@pytest.mark.models
def test_mixed_prose_around_json_is_split_and_each_part_handled(comp):
    files = [{"name": f"file{i}.txt", "size": i * 10} for i in range(100)]
    prose = " ".join(["The listing below was produced by the storage service for the current project."] * 6)
    text = prose + "\n\n" + json.dumps(files) + "\n\n" + prose
    r = comp.compress(context=text, question="How big is file42.txt?", rate=0.3)
    start, end = r.compressed.index("["), r.compressed.rindex("]") + 1
    block = json.loads(r.compressed[start:end])
    assert {"name": "file42.txt", "size": 420} in block
    assert len(r.compressed[:start]) < len(prose)  # the prose went to the text method


def _log(n: int, seed: int = 1) -> str:
    rnd = random.Random(seed)
    lines = []
    for i in range(n):
        ts = f"2026-11-30T10:{i // 60 % 60:02d}:{i % 60:02d}.{rnd.randint(0, 999):03d}Z"
        lines.append(f"{ts} INFO GET /api/items/{rnd.randint(1, 999)} 200 {rnd.randint(2, 40)}ms")
    return "\n".join(lines)


@pytest.mark.models
def test_logs_collapse_repeats_and_keep_every_error_warning_and_trace(comp):
    lines = _log(1500).split("\n")
    failures = {
        400: "ERROR payment charge failed for order 10400: card_declined",
        777: "ERROR payment charge failed for order 10777: insufficient_funds",
        1201: "ERROR inventory sync failed: upstream 503",
        900: "WARN db pool exhausted, waiting 250ms",
    }
    for i, msg in failures.items():
        lines[i] = lines[i].split(" INFO ")[0] + " " + msg
    trace = [
        "Traceback (most recent call last):",
        '  File "worker.py", line 10, in run',
        "    x = 1 / 0",
        "ZeroDivisionError: division by zero",
    ]
    lines[1300:1301] = [lines[1300].split(" INFO ")[0] + " ERROR worker crashed", *trace]
    text = "\n".join(lines)
    r = comp.compress(context=text, question="Which orders failed to be charged and why?", rate=0.1)
    assert r.kinds == ["log"] and r.compressed_tokens <= r.original_tokens * 0.1 + 1
    out = r.compressed.split("\n")
    for msg in failures.values():
        assert any(ln.endswith(msg) for ln in out), msg
    for t in trace:
        assert t in out
    assert out[0] == lines[0] and out[-1] == lines[-1]
    assert any("similar]" in ln for ln in out) and any("lines omitted]" in ln for ln in out)
    gaps = sum(int(ln.split()[1]) for ln in out if ln.startswith("[… "))
    assert gaps + sum(not ln.startswith("[… ") for ln in out) == len(lines)  # every line accounted for


@pytest.mark.models
def test_a_tight_log_budget_goes_to_failures_before_the_head_and_tail(comp):
    # 60 lines at 5x leave room for about a dozen: five same-signature failures, whose order ids
    # differ, must all come back verbatim rather than fold into "[+4 similar]" behind the 3 head
    # and 5 tail lines
    lines = _log(60, seed=3).split("\n")
    planted = {}
    for k, i in enumerate((12, 20, 31, 40, 47)):
        planted[i] = (
            lines[i].split(" INFO ")[0]
            + f" ERROR payments charge failed order=ord_{91000 + 7 * k} reason=card_declined"
        )
        lines[i] = planted[i]
    r = comp.compress(context="\n".join(lines), question="Which orders failed to be charged?", rate=0.2)
    out = r.compressed.split("\n")
    assert [ln for ln in planted.values() if ln not in out] == []
    assert out[0] == lines[0] and out[-1] == lines[-1]
    assert r.compressed_tokens <= r.original_tokens * 0.2 + 1
    assert not r.warnings


@pytest.mark.models
def test_tables_keep_header_alignment_and_relevant_rows(comp):
    rows = ["| city | country | population |", "|---|---|---|"] + [
        f"| City{i} | Country{i % 7} | {1000 * i} |" for i in range(120)
    ]
    rows[52] = "| Zanzibar City | Tanzania | 593678 |"
    r = comp.compress(context="\n".join(rows), question="What is the population of Zanzibar City?", rate=0.2)
    out = r.compressed.split("\n")
    assert r.kinds == ["table"] and out[:2] == rows[:2] and rows[52] in out
    assert all(ln in rows for ln in out[:-1]) and out[-1].startswith("(… ") and "of 120 rows omitted" in out[-1]


def _code(copies: int) -> str:
    block = """
# helpers for the billing job
# (kept small on purpose)
def parse_config(path):
    with open(path) as f:
        data = f.read()
    out = {}
    for line in data.splitlines():
        k, v = line.split("=")
        out[k] = v
    return out


def send_email(to, body):
    server = connect()
    server.login()
    server.send(to, body)
    server.quit()
    return True


def compute_tax_COPY(amount, rate):
    base = amount * rate
    if base < 0:
        raise ValueError("negative")
    rounded = round(base, 2)
    return rounded
"""
    return "import os\n" + "".join(block.replace("COPY", str(i)) for i in range(copies))


@pytest.mark.models
def test_code_is_cut_only_in_whole_marked_regions(comp):
    src = _code(4)
    r = comp.compress(context=src, question="How does compute_tax_2 round the tax?", rate=0.45)
    assert r.kinds == ["code"] and r.compressed_tokens < r.original_tokens
    src_lines = set(src.split("\n"))
    for ln in r.compressed.split("\n"):
        assert ln in src_lines or ln.strip().startswith(("# …", "...  # ")), ln
    assert "    rounded = round(base, 2)" in r.compressed.split("def compute_tax_2")[1].split("def ")[0]
    assert "lines omitted" in r.compressed


@pytest.mark.models
def test_diffs_keep_headers_and_changed_lines(comp):
    ctx = "\n".join(f" unchanged line {i}" for i in range(80))
    diff = (
        "diff --git a/app.py b/app.py\n--- a/app.py\n+++ b/app.py\n@@ -1,90 +1,90 @@\n"
        + ctx
        + "\n-    retries = 3\n+    retries = 5\n"
        + ctx
    )
    r = comp.compress(context=diff, rate=0.3)
    assert r.kinds == ["diff"]
    for must in ("diff --git a/app.py b/app.py", "@@ -1,90 +1,90 @@", "-    retries = 3", "+    retries = 5"):
        assert must in r.compressed.split("\n")


@pytest.mark.models
def test_html_pages_become_text(comp):
    page = (
        "<!doctype html><html><head><style>body{color:red}</style><script>var x=1;</script></head><body>"
        + "<p>The museum opens at nine and closes at five on weekdays.</p>" * 40
        + "</body></html>"
    )
    r = comp.compress(context=page, question="When does the museum open?", rate=0.3)
    assert "<p>" not in r.compressed and "var x" not in r.compressed and "nine" in r.compressed


@pytest.mark.models
def test_structured_false_keeps_the_old_protected_behaviour(comp):
    text, _ = search_payload()
    r = comp.compress(context=text, question=QUESTION, rate=0.2, options={"structured": False})
    assert r.compressed == text and r.kinds == []
    assert any("protected content" in w for w in r.warnings)


@pytest.mark.models
def test_expand_returns_the_stored_original():
    c = Compressor(default_method="classifier", cache=MemoryCache())
    text, _ = search_payload()
    r = c.compress(context=text, question=QUESTION, rate=0.2, options={"expand": True})
    assert len(r.expand_refs) == 1
    ref = r.expand_refs[0]
    assert f"ctxgate_expand ref={ref}" in r.compressed
    assert c.expand(ref) == text
    assert c.expand("nope") is None and c.expand("../../etc") is None
    plain = c.compress(context=text, question=QUESTION, rate=0.2)
    assert plain.expand_refs == [] and "ctxgate_expand" not in plain.compressed


@pytest.mark.parametrize("name", ["tools-nq", "tools-squad", "tools-kv", "tools-logs", "tools-hotpot"])
def test_tool_output_datasets_hold_what_they_claim(name):
    from ctxgate.eval.datasets import load_dataset
    from ctxgate.eval.datasets.tools import needed_kept, valid_json

    items = load_dataset(name, limit=2, seed=0)
    assert len(items) == 2 and items[0].id != items[1].id
    for it in items:
        assert isinstance(it.context, str) and it.question and it.references
        assert needed_kept(it, it.context) == 1.0  # the uncompressed output has what is needed
        assert valid_json(it.context) == bool(it.meta["json"])
        assert kind_of(it.context) == ("json" if it.meta["json"] else "log")
    if name == "tools-nq":
        assert 50 <= json.loads(items[0].context)["total"] <= 500
    assert needed_kept(items[0], "nothing here") == 0.0


@pytest.mark.models
def test_bench_tools_reports_per_dataset(comp):
    import contextlib
    import io

    from ctxgate.eval.bench_tools import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--datasets", "tools-kv,tools-logs", "--limit", "2", "--method", "classifier"]) == 0
    rows = [ln for ln in buf.getvalue().splitlines() if ln.startswith("| tools-")]
    assert [r.split("|")[1].strip() for r in rows] == ["tools-kv", "tools-logs"]
    assert all(r.split("|")[5].strip() == "1.000" for r in rows)  # needed kept on these at 5x


@pytest.mark.models
def test_json_without_collections_prunes_prose_values_and_keeps_every_key(comp):
    rnd = random.Random(9)
    words = "the committee met on tuesday to discuss the budget and the new library building plans".split()
    doc = {
        "id": "rec-7",
        "created": "2026-03-04",
        "summary": " ".join(rnd.choice(words) for _ in range(300)),
        "notes": {"body": " ".join(rnd.choice(words) for _ in range(300)), "author": "J. Smith"},
    }
    r = comp.compress(context=json.dumps(doc, indent=2), question="What did the committee discuss?", rate=0.4)
    out = json.loads(r.compressed)
    assert list(_leaves(out)) == list(_leaves(doc))
    assert (out["id"], out["created"], out["notes"]["author"]) == ("rec-7", "2026-03-04", "J. Smith")
    assert len(out["summary"]) < len(doc["summary"]) and r.compressed_tokens < r.original_tokens * 0.6


def test_the_embedder_reads_records_without_urls_and_opaque_ids():
    from ctxgate.compressor.structured._rank import DENSE_CHARS, dense_text

    record = (
        "id doc-hotpotqa-5ae4a3265542995ad6573de5-0 title Atsushi Sakurai url https://en.wikipedia.org/wiki/A_S "
        "at 2024-01-01T10:00:00Z user 5551234567890 snippet born March 7, 1966 (1966-03-07), COVID19 B2B 12.50"
    )
    assert dense_text(record) == (
        "id title Atsushi Sakurai url at user snippet born March 7, 1966 (1966-03-07), COVID19 B2B 12.50"
    )
    assert len(dense_text("word " * 1000)) <= DENSE_CHARS


def test_rerank_precision_is_int8_on_cpu_and_can_be_overridden(runtime_with):
    from ctxgate.compressor import ConfigError, Runtime
    from ctxgate.compressor.models import rerank_precision

    runtime_with(rerank_precision=None, dtype="fp32")
    assert rerank_precision("cpu") == "int8"
    assert rerank_precision("cuda") == "fp32"  # the LMs' dtype on a GPU
    runtime_with(rerank_precision="bf16")
    assert rerank_precision("cpu") == "bf16"
    runtime_with(rerank_precision="int8")
    with pytest.raises(ConfigError, match="CPU-only"):
        rerank_precision("cuda")
    with pytest.raises(ConfigError, match="CTXGATE_RERANK_PRECISION"):
        Runtime.from_env({"CTXGATE_RERANK_PRECISION": "int4"})
    assert Runtime.from_env({"CTXGATE_RERANK_PRECISION": "FP32"}).rerank_precision == "fp32"


@pytest.mark.models
def test_int8_reranker_is_quantised_and_still_ranks_by_meaning():
    import torch

    from ctxgate.compressor._embed import Embedder

    e = Embedder("minilm", "cpu", precision="int8")
    vecs = e.embed(
        [
            "Bananas are a yellow fruit.",
            "Paris is the capital and largest city of France.",
            "What is the capital of France?",
        ]
    )
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in e._load().modules())
    sims = vecs[:2] @ vecs[2]
    assert sims[1] > sims[0] + 0.2
    fp32 = Embedder("minilm", "cpu", precision="fp32").embed(["Paris is the capital and largest city of France."])
    assert float(fp32[0] @ vecs[1]) > 0.9  # the same embedding space, approximately


@pytest.mark.models
def test_cached_structured_output_is_keyed_by_the_rerank_precision(runtime_with):
    cache = MemoryCache()
    text, _ = search_payload()
    runtime_with(rerank_precision="int8")
    first = Compressor(default_method="classifier", cache=cache).compress(context=text, question=QUESTION, rate=0.2)
    again = Compressor(default_method="classifier", cache=cache).compress(context=text, question=QUESTION, rate=0.2)
    runtime_with(rerank_precision="fp32")
    other = Compressor(default_method="classifier", cache=cache).compress(context=text, question=QUESTION, rate=0.2)
    assert (first.cache, again.cache, other.cache) == ("miss", "hit", "miss")
