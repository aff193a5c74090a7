"""The real `ctxgate` console script, run as a subprocess like a user would."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.data import ROOT

DATA = ROOT.parent / "shared" / "data"
NQ = DATA / "nq" / "nq-open-20docs-derived_first500.jsonl"


def ctxgate(*args, stdin: bytes | None = None, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "ctxgate", *map(str, args)],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check:
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc


@pytest.mark.models
def test_compress_stdin_reports_tokens_on_stderr():
    text = (DATA / "arxiv" / "article_5.txt").read_text()[:3000]
    p = ctxgate("compress", "--method", "truncate", "--rate", "0.25", stdin=text.encode())
    out = p.stdout.decode()
    assert text.strip().startswith(out.strip()[:200]) and len(out) < len(text) / 2
    assert "tokens" in p.stderr.decode() and "truncate" in p.stderr.decode()


@pytest.mark.models
def test_compress_docs_from_dataset_row_json():
    p = ctxgate("compress", "--docs", NQ, "--row", 2, "--rate", "0.25", "--method", "random", "--json")
    r = json.loads(p.stdout)
    for key in ("compressed", "original_tokens", "compressed_tokens", "ratio", "method", "seconds", "documents"):
        assert key in r
    assert len(r["documents"]) == 20 and r["method"] == "random"
    assert 3.4 <= r["ratio"] <= 4.6
    assert r["documents"][0]["metadata"]["title"]  # metadata carried through


@pytest.mark.models
def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text " * 3 + b"\xc3\x28 tail")
    for args in (
        ["compress", bad],
        ["compress", tmp_path / "missing.txt"],
        ["compress", bad, "--rate", "2"],
        ["models", "prepare", "no-such-model"],
    ):
        p = ctxgate(*args, check=False)
        err = p.stderr.decode()
        assert p.returncode != 0 and "Traceback" not in err, err
        assert err.strip().count("\n") == 0 or "usage" in err, err
    assert "invalid UTF-8 at byte offset 24" in ctxgate("compress", bad, check=False).stderr.decode()
    big = tmp_path / "big.txt"
    big.write_text("word " * 5000, encoding="utf-8")
    p = ctxgate("compress", big, "--method", "truncate", "--max-input-tokens", "1000", check=False)
    assert p.returncode == 2 and "over the limit of 1000" in p.stderr.decode() and "Traceback" not in p.stderr.decode()


@pytest.mark.models
def test_batch_mode_streams_rows_and_resumes(tmp_path):
    rows = [json.loads(line) for line in NQ.open().readlines()[:3]]
    src = tmp_path / "in.jsonl"
    with src.open("w") as f:
        for i, row in enumerate(rows):
            f.write(
                json.dumps(
                    {"id": f"q{i}", "question": row["question"], "context": [c["text"] for c in row["ctxs"][:6]]}
                )
                + "\n"
            )
        f.write("{not json\n")
        f.write(json.dumps({"context": "x " * 50, "rate": 7}) + "\n")
    out = tmp_path / "out.jsonl"
    p = ctxgate("compress", "--input", src, "--output", out, "--rate", "0.3", "--method", "truncate", check=False)
    assert p.returncode == 1  # two bad rows reported, none lost
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["row"] for g in got] == [0, 1, 2, 3, 4]
    assert [g.get("id") for g in got[:3]] == ["q0", "q1", "q2"]
    assert "invalid JSON" in got[3]["error"] and "rate" in got[4]["error"]
    # a crash mid-run: drop the last two rows and resume; finished rows are not redone
    out.write_text("\n".join(out.read_text().splitlines()[:2]) + "\n" + '{"row": 2, "compre')
    ctxgate(
        "compress", "--input", src, "--output", out, "--rate", "0.3", "--method", "truncate", "--resume", check=False
    )
    again = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted({g["row"] for g in again}) == [0, 1, 2, 3, 4]
    assert got[0]["compressed"] == again[0]["compressed"]


@pytest.mark.models
def test_batch_rows_that_break_the_parser_or_the_text_are_error_rows_and_numbering_holds(tmp_path):
    """The second audit: a "\\ud800" escape (TypeError in the tokenizer) or 100,000 nested brackets
    (RecursionError) aborted the whole run with a traceback; a raw U+2028 inside a JSON string
    (valid JSONL) split its row in two and shifted every later row number; and resuming trusted
    any line with a "row" key."""
    src = tmp_path / "in.jsonl"
    rows = [
        json.dumps({"id": "a", "context": "first " * 60}),
        '{"id": "b", "context": "bad \\ud800 here"}',
        "[" * 100_000,
        json.dumps({"id": "d", "context": "line\u2028separator and\x85next " * 20}, ensure_ascii=False),
        json.dumps({"id": "e", "context": "last " * 60}),
    ]
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    p = ctxgate("compress", "--input", src, "--output", out, "--rate", "0.3", "--method", "truncate", check=False)
    assert p.returncode == 1 and b"Traceback" not in p.stderr, p.stderr.decode()[-1500:]
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert [g["row"] for g in got] == [0, 1, 2, 3, 4]
    assert [g.get("id") for g in got] == ["a", None, None, "d", "e"]
    assert "lone surrogate" in got[1]["error"] and "nested too deeply" in got[2]["error"]
    assert "\u2028" in got[3]["compressed"] or got[3]["compressed_tokens"] > 0
    # a tampered output: bare row numbers are not results, so those rows are computed again
    out.write_text('{"row": 0}\n{"row": "3"}\n' + json.dumps(got[4]) + "\n", encoding="utf-8")
    ctxgate(
        "compress", "--input", src, "--output", out, "--rate", "0.3", "--resume", "--method", "truncate", check=False
    )
    again = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    done = {g["row"] for g in again if "compressed" in g or "error" in g}
    assert done == {0, 1, 2, 3, 4}


@pytest.mark.models
def test_models_list_and_verify():
    assert "smollm2" in ctxgate("models", "list").stdout.decode()
    p = ctxgate("models", "verify", "smollm2", "minilm")
    assert p.stdout.decode().count("ok") >= 2


@pytest.mark.parametrize("args", [["--help"], ["compress", "--help"]])
def test_help(args):
    assert "compress" in ctxgate(*args).stdout.decode()
