"""``ctxgate eval`` end to end on a tiny slice: real data, the real Compressor, the SmolLM2 reader;
then resume, a method added later, and the readers' stop and cap accounting."""

import json

import httpx
import msgspec
import pytest

from ctxgate.eval._batching import _prefill_groups
from ctxgate.eval.cli import main
from ctxgate.eval.readers import Ask, HTTPReader, LocalReader, cut_at_stop
from ctxgate.eval.report import _machine_lines
from ctxgate.eval.runner import CHUNK_BATCHES, _chunks, compute_dtype, load_rows, load_sessions

ARGS = [
    "--dataset",
    "nq",
    "--option",
    "docs=5",
    "--limit",
    "2",
    "--reader",
    "smollm2",
    "--rates",
    "0.25",
    "--max-new-tokens",
    "8",
    "--quiet",
]


@pytest.mark.models
def test_tiny_eval_end_to_end_then_resume(tmp_path, capsys, monkeypatch, runtime_with):
    out = tmp_path / "run"
    assert main([*ARGS, "--methods", "truncate", "--out", str(out)]) == 0
    rows = load_rows(out / "results.jsonl")
    assert sorted((r.method, r.rate) for r in rows) == [("passthrough", 1.0)] * 2 + [("truncate", 0.25)] * 2
    full = {r.item: r for r in rows if r.method == "passthrough"}
    for r in rows:
        assert r.prediction and r.reader == "smollm2" and r.new_tokens <= 8 and r.prompt_tokens > 0
        assert r.reference_answer == full[r.item].prediction
        assert r.accuracy in (0.0, 1.0) and 0.0 <= r.fidelity_f1 <= 1.0
    assert all(r.ratio == 1.0 and r.fidelity_em == 1.0 and r.answer_kept == 1.0 for r in full.values())
    trunc = [r for r in rows if r.method == "truncate"]
    assert all(3.0 <= r.ratio <= 5.0 and r.compressed_tokens < r.original_tokens for r in trunc)
    # gold documents sit at positions 0 and 2 of 5; keeping the first quarter keeps only the first
    assert [r.answer_kept for r in sorted(trunc, key=lambda r: r.item)] == [1.0, 0.0]

    report = (out / "report.md").read_text()
    assert "| full prompt | 1 | 2 |" in report and "| truncate | 0.25 | 2 |" in report
    assert "ctxgate eval --dataset nq" in report and " cores (" in report
    for png in ("nq5_accuracy_vs_ratio.png", "nq5_latency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (session,) = load_sessions(out)
    assert session["first_row"] == 0 and session["compute_dtype"] == session["dtype"] == compute_dtype()

    # a rerun without --resume refuses to mix results
    assert main([*ARGS, "--methods", "truncate", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with one more method: only the new rows run, the full-prompt answers are reused
    assert main([*ARGS, "--methods", "truncate,random", "--out", str(out), "--resume"]) == 0
    rows = load_rows(out / "results.jsonl")
    assert len(rows) == 6 and sum(r.method == "random" for r in rows) == 2
    assert "| random | 0.25 | 2 |" in (out / "report.md").read_text()
    assert [s["first_row"] for s in load_sessions(out)] == [0, 4]
    assert "Machine: " in (out / "report.md").read_text()  # same machine twice: one line
    # resuming in another precision (another machine kind's default) is refused, naming the fix
    other = "bf16" if compute_dtype() == "float32" else "fp32"
    runtime_with(dtype=other)
    assert main([*ARGS, "--methods", "truncate,random", "--rates", "0.1", "--out", str(out), "--resume"]) == 2
    assert f"CTXGATE_DTYPE={'fp32' if other == 'bf16' else 'bf16'}" in capsys.readouterr().err
    assert len(load_rows(out / "results.jsonl")) == 6
    runtime_with(dtype=None)
    # another batch size, or a run decoded in fixed batches by an earlier ctxgate, is not continued
    assert main([*ARGS, "--methods", "truncate", "--batch", "4", "--out", str(out), "--resume"]) == 2
    assert "pass --batch 8" in capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["batching"] == "continuous" and "continuous batching (`--batch 8`" in (out / "report.md").read_text()
    (out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "batching"}))
    assert main([*ARGS, "--methods", "truncate", "--out", str(out), "--resume"]) == 2
    assert "decoded in grouped batches" in capsys.readouterr().err
    assert main(["--report-only", "--out", str(out)]) == 0
    assert "per generate call" in (out / "report.md").read_text()  # described as it was decoded
    (out / "config.json").write_text(json.dumps(cfg))
    # the report can be rebuilt from results.jsonl alone
    (out / "report.md").unlink()
    assert main(["--report-only", "--out", str(out)]) == 0
    assert "| random | 0.25 | 2 |" in (out / "report.md").read_text()


def test_cut_at_stop_uses_the_earliest_match():
    assert cut_at_stop("  Paris\nBecause", [r"\S[^\n]*\n"]) == ("  Paris\n", True)
    assert cut_at_stop(
        "x = 2\nThe answer is 4\nQuestion: next", [r"The answer is[^\n]*\d[^\n]*\n", r"\n\s*Question:"]
    ) == ("x = 2\nThe answer is 4\n", True)
    assert cut_at_stop("no stop", [r"\n"]) == ("no stop", False)


def test_http_reader_speaks_openai_chat_and_reports_cap_hits():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append(body)
        content = "Paris\nIt is the capital." if body["max_tokens"] > 5 else "Well, the answer"
        finish = "stop" if body["max_tokens"] > 5 else "length"
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": finish}],
                "usage": {"prompt_tokens": 42, "completion_tokens": 7},
            },
        )

    reader = HTTPReader("http://test/v1", "gpt-x", transport=httpx.MockTransport(handler))
    a = reader.answer("Be brief.", "Capital of France?", max_new_tokens=32, stop=[r"\S[^\n]*\n"])
    assert (a.text, a.prompt_tokens, a.hit_cap) == ("Paris", 42, False)
    assert seen[0]["messages"][0] == {"role": "system", "content": "Be brief."} and seen[0]["temperature"] == 0
    assert reader.answer(None, "q", max_new_tokens=3, stop=[]).hit_cap is True
    assert len(seen[1]["messages"]) == 1


@pytest.mark.models
def test_prefix_cache_reuses_the_shared_demonstrations_and_answers_the_same():
    from ctxgate.eval.datasets import load_dataset
    from ctxgate.eval.readers import LocalReader

    item = load_dataset("gsm8k", limit=1)[0]
    demos = item.separator.join(item.context)[:1500]
    cached, plain = LocalReader("smollm2"), LocalReader("smollm2", prefix_cache=False)
    for q in ("Tom has 3 apples and buys 4 more. How many apples?", "A box holds 6 eggs. How many eggs in 7 boxes?"):
        prompt = f"{demos}\n\nQuestion: {q}\nLet's think step by step\n"
        a = cached.answer(None, prompt, max_new_tokens=12, stop=[])
        b = plain.answer(None, prompt, max_new_tokens=12, stop=[])
        assert a.text == b.text and a.prompt_tokens == b.prompt_tokens
    assert cached.reused_tokens > 300 and plain.reused_tokens == 0


class _FakeCache:
    """Stands in for a transformers KV cache: only its length matters to the retention policy."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_seq_length(self) -> int:
        return self.n

    def crop(self, k: int) -> None:
        self.n += k  # negative k removes tokens from the end


def test_prefix_cache_keeps_a_reused_prompt_through_an_items_other_conditions():
    """The eval's order per item is full prompt, then the other conditions; the full prompt's cache
    must still be there when a prompt sharing its prefix comes (truncate in NQ, the next item's
    full prompt in GSM8K), however many conditions came in between."""
    from ctxgate.eval.readers import LocalReader

    reader = object.__new__(LocalReader)  # the retention policy only; no model loaded
    reader.prefix_cache, reader._caches, reader.reused_tokens = True, [], 0
    demos = list(range(1000, 3000))
    for item in range(3):
        full = demos + [item, 7, 7]
        cache, reused = reader._cached_prefix(full)
        assert reused == (0 if item == 0 else len(demos)), item  # the previous item's full prompt
        reader._remember(full, _FakeCache(len(full)))
        for cond in range(6):  # six other conditions, no long prefix in common
            other = [item * 100 + cond] * 200
            assert reader._cached_prefix(other) == (None, 0)
            reader._remember(other, _FakeCache(len(other)))
        truncated = demos[:600] + [5]
        cache, reused = reader._cached_prefix(truncated)
        assert reused == 600 and cache.get_seq_length() == 600
    assert len(reader._caches) <= LocalReader.KEEP


def test_a_run_resumed_on_another_machine_says_which_rows_ran_where(tmp_path):
    # the file as written before sessions were kept: one machine, from row 0
    amd = {
        "cpu": "AMD EPYC",
        "cores": "2",
        "simd": "avx2",
        "torch": "2.13.0+cpu",
        "dtype": "float32",
        "date": "2026-11-28 10:00",
    }
    (tmp_path / "machine.json").write_text(json.dumps(amd))
    assert load_sessions(tmp_path) == [{**amd, "first_row": 0}]
    xeon = {**amd, "cpu": "Intel Xeon", "simd": "avx512_bf16,amx_bf16", "compute_dtype": "float32"}
    sessions = [
        {**amd, "first_row": 0, "last_row": 9},
        {**amd, "first_row": 10, "last_row": 19},
        {**xeon, "first_row": 20, "last_row": 24},
    ]
    lines = _machine_lines(sessions)
    assert lines[0].startswith("Machines (the run was resumed")
    assert [ln.split(":")[0] for ln in lines[2:]] == ["- rows 1-20", "- rows 21-25"]
    assert "AMD EPYC" in lines[2] and "Intel Xeon" in lines[3] and "float32" in lines[3]
    assert _machine_lines(sessions[:2]) == [f"Machine: {lines[2].split(': ', 1)[1]}."]


@pytest.mark.models
def test_continuous_batching_answers_as_one_at_a_time_does(runtime_with):
    # fp32: padded batches are exact up to rounding there (bf16 may flip a greedy choice)
    runtime_with(dtype="fp32")
    reader = LocalReader("smollm2", prefix_cache=False)
    asks = [
        Ask("Answer briefly.", "What is the capital of France?", 6, []),  # hits its cap
        Ask("Answer briefly.", "Count from one to twenty in words, separated by commas.", 40, []),
        Ask("Answer briefly.", "Name three colours.", 40, [r"blue"]),  # stops early
        Ask("Answer briefly.", "What is 2+2? " + "Think it through. " * 30, 24, []),  # 5x the others
        Ask("Answer briefly.", "Say yes.", 1, []),  # done at its prefill
        Ask("Answer briefly.", "Name a large city in Spain, and say why it is famous.", 12, []),
    ]
    one = [reader.answer(a.system, a.user, max_new_tokens=a.max_new_tokens, stop=a.stop) for a in asks]
    assert one[0].hit_cap and one[2].text.endswith("blue") and one[4].new_tokens == 1
    for most in (8, 2):  # 2: rows leave and others join mid-way, the long prompt's columns dropped
        many = reader.answer_many(asks, most)
        assert [(a.text, a.new_tokens, a.hit_cap, a.prompt_tokens) for a in many] == [
            (a.text, a.new_tokens, a.hit_cap, a.prompt_tokens) for a in one
        ]
        assert many[4].batch == 1 and all(2 <= a.batch <= most for k, a in enumerate(many) if k != 4)


def test_prefill_groups_and_chunks_keep_items_whole():
    # longest first; a group's padded size (rows x its longest) stays within the budget, and no prompt
    # is padded to more than 1.5x its length
    assert _prefill_groups([2700, 2600, 700, 690, 650, 330], 4096) == [[0], [1], [2, 3, 4], [5]]
    assert _prefill_groups([600] * 8, 4096) == [list(range(6)), [6, 7]]
    assert _prefill_groups([5000, 10], 4096) == [[0], [1]] and _prefill_groups([], 4096) == []

    class It:
        def __init__(self, i):
            self.id = f"item-{i}"

    items = [It(i) for i in range(6)]
    todo = [(it, m, 0.1) for it in items for m in "abcdefg"]  # 7 conditions per item
    chunks = _chunks(todo, 8)  # up to 32 conditions: 4 whole items
    assert [len(c) for c in chunks] == [28, 14] and CHUNK_BATCHES == 4
    assert [e for c in chunks for e in c] == todo
    assert {e[0].id for e in chunks[0]} == {f"item-{i}" for i in range(4)}
    assert [len(c) for c in _chunks(todo[:7], 1)] == [4, 3]  # an item larger than a chunk spans two


def test_rescore_recomputes_metrics_from_the_stored_answers(tmp_path, capsys):
    from ctxgate.eval._types import Row

    (tmp_path / "config.json").write_text(
        json.dumps({"dataset": "gsm8k", "limit": 2, "seed": 0, "methods": ["truncate"], "reader": "qwen-1.5b"})
    )
    full = "So she pays \\(\\boxed{100}\\) dollars for 2 items."  # its last number is 2: scored 0 before
    rows = [
        Row(
            dataset="gsm8k",
            item="gsm8k-788",
            method=m,
            rate=r,
            task="math",
            reader="qwen-1.5b",
            prediction=full if m == "passthrough" else "The answer is 100.",
            reference_answer=full,
            accuracy=0.0,
            fidelity_em=0.0,
        )
        for m, r in (("passthrough", 1.0), ("truncate", 0.1))
    ]
    (tmp_path / "results.jsonl").write_bytes(b"".join(msgspec.json.encode(r) + b"\n" for r in rows))
    assert main(["--report-only", "--rescore", "--out", str(tmp_path), "--no-plots"]) == 0
    fixed = load_rows(tmp_path / "results.jsonl")
    assert [(r.accuracy, r.fidelity_em) for r in fixed] == [(1.0, 1.0), (1.0, 1.0)]
    assert len(load_rows(tmp_path / "results.jsonl.bak")) == 2
    assert "| truncate | 0.1 | 1 | 1.000" in (tmp_path / "report.md").read_text()


@pytest.mark.models
def test_reader_none_measures_compression_alone_and_compress_options_reach_the_compressor(tmp_path, capsys):
    base = ["--dataset", "hotpotqa", "--limit", "4", "--reader", "none", "--methods", "extractive", "--rates", "0.25"]
    on, off = tmp_path / "on", tmp_path / "off"
    assert main([*base, "--quiet", "--no-plots", "--out", str(on)]) == 0
    assert main([*base, "--compress-option", "multi_hop=false", "--quiet", "--no-plots", "--out", str(off)]) == 0
    rows = load_rows(on / "results.jsonl")
    assert len(rows) == 8 and all(r.reader == "none" and r.prediction == "" for r in rows)
    assert all(r.accuracy is None and r.fidelity_f1 is None for r in rows)  # nothing answered: no score
    full = [r for r in rows if r.method == "passthrough"]
    assert all(r.metrics["supports_kept"] == 1.0 for r in full)  # both hops are in the uncompressed prompt
    assert all(r.answer_kept is not None and 3.0 <= r.ratio <= 5.0 for r in rows if r.method == "extractive")
    assert json.loads((off / "config.json").read_text())["compress_options"] == {"multi_hop": False}
    assert "| extractive | 0.25 | 4 | - |" in (on / "report.md").read_text()
    # resuming with other compression options would mix two configurations: refused
    assert (
        main([*base, "--quiet", "--no-plots", "--out", str(on), "--resume", "--compress-option", "multi_hop=false"])
        == 2
    )
    assert "compress_options" in capsys.readouterr().err
