"""``ctxgate bench`` (engine): real subprocess workers on real NQ text, JSON with every field."""

import json

import pytest

from ctxgate.compressor import InvalidRequest
from ctxgate.eval.bench import main

FIELDS = {
    "method",
    "status",
    "n",
    "input_tokens",
    "output_tokens",
    "seconds",
    "mean_seconds",
    "tokens_per_s",
    "ratio",
    "warmup_seconds",
    "peak_rss_mib",
    "model",
    "warnings",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    rc = main(
        [
            "--methods",
            "passthrough,truncate,longllmlingua",
            "--items",
            "1",
            "--docs",
            "3",
            "--rate",
            "0.3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    return json.loads(out.read_text())


def test_report_describes_machine_and_command(report):
    m = report["machine"]
    for key in ("cpu", "cores", "torch", "device", "dtype", "transformers", "llmlingua"):
        assert key in m
    assert m["cores"] >= 1 and (m["device"] == "cpu" or m["device"].startswith("cuda"))
    assert report["command"].startswith("ctxgate bench --methods passthrough,truncate,longllmlingua")
    assert report["rate"] == 0.3 and report["input"] == {
        "dataset": "nq/nq-open-20docs-derived_first500.jsonl",
        "items": 1,
        "docs": 3,
    }


@pytest.mark.models
def test_every_method_is_measured_in_its_own_process(report):
    res = {r["method"]: r for r in report["results"]}
    assert list(res) == ["passthrough", "truncate", "longllmlingua"]
    for r in res.values():
        assert r["status"] == "ok", r
        assert FIELDS <= set(r)
        assert r["n"] == 1 and len(r["seconds"]) == 1 and r["tokens_per_s"] > 0
        assert r["peak_rss_mib"] > 50
    assert res["passthrough"]["input_tokens"] == res["truncate"]["input_tokens"] == res["longllmlingua"]["input_tokens"]
    assert res["passthrough"]["ratio"] == pytest.approx(1.0, abs=0.05)
    assert 3.0 <= res["truncate"]["ratio"] <= 3.7  # rate 0.3 fitted by the shared selector
    assert res["longllmlingua"]["ratio"] > 1.3 and res["longllmlingua"]["model"] == "smollm2"
    # a method that loads a 135M-parameter LM needs more memory than one that loads nothing
    assert res["longllmlingua"]["peak_rss_mib"] > res["passthrough"]["peak_rss_mib"] + 100
    assert report["speedup_hybrid_vs_longllmlingua"] is None  # hybrid was not asked for


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(InvalidRequest, match="unknown method"):
        main(["--methods", "nope"])
    with pytest.raises(InvalidRequest, match="rate"):
        main(["--rate", "2"])
    with pytest.raises(InvalidRequest, match="no such file"):
        main(["--text", "does/not/exist.txt", "--methods", "passthrough"])
