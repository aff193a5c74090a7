"""JSONL batch compression: one request per input line, one result line per row, in input order.

Shared by the single-process loop here and the Ray runner (``_ray_batch``): both turn a line into
its output line with ``row_record``, so a Ray run writes the same bytes as a local one. Result
lines carry no timings (``seconds`` is left out): a row's line is a function of the input alone,
so reruns, resumed runs and Ray runs can be compared with ``cmp``. Throughput goes to the summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import msgspec

from ctxgate.compressor import Compressor, CompressRequest, CtxgateError, InvalidRequest

from ._inputs import lines, read_text, to_document


class RowDefaults(msgspec.Struct, frozen=True, kw_only=True):
    """The command line's request fields; a row's own fields win. Plain data, so it pickles to Ray."""

    question: str | None = None
    instruction: str | None = None
    rate: float | str | None = None
    target_tokens: int | None = None
    method: str = "auto"
    tokenizer: str | None = None


class Tally:
    """Rows written, rows failed and input tokens, for the summary line."""

    def __init__(self) -> None:
        self.rows = self.failed = self.tokens = 0
        self.t0 = time.perf_counter()

    def add(self, failed: bool, tokens: int) -> None:
        self.rows += 1
        self.failed += failed
        self.tokens += tokens

    def summary(self, out: Path, where: str) -> str:
        s = max(time.perf_counter() - self.t0, 1e-9)
        line = (
            f"ctxgate: {self.rows} row(s) in {s:.1f} s on {where}: {self.rows / s:.2f} rows/s, "
            f"{self.tokens / s:,.0f} input tok/s"
        )
        if self.failed:
            line += f"; {self.failed} row(s) failed, their errors are in {out}"
        return line


def row_request(defaults: RowDefaults, row: object, n: int) -> CompressRequest:
    if not isinstance(row, dict) or "context" not in row:
        raise InvalidRequest(f"row {n}: needs a 'context' field (a string or a list of documents)")
    ctx = row["context"]
    if isinstance(ctx, list):
        ctx = [to_document(d, f"row {n} context[{i}]") for i, d in enumerate(ctx)]
    elif not isinstance(ctx, str):
        raise InvalidRequest(f"row {n}: 'context' must be a string or a list")
    rate, target = defaults.rate, defaults.target_tokens
    if "rate" in row or "target_tokens" in row:
        rate, target = row.get("rate"), row.get("target_tokens")
    return CompressRequest(
        context=ctx,
        question=row.get("question", defaults.question),
        instruction=row.get("instruction", defaults.instruction),
        rate=rate,
        target_tokens=target,
        method=row.get("method", defaults.method),
        tokenizer=row.get("tokenizer", defaults.tokenizer),
    )


class Row(NamedTuple):
    record: str  # the output line, without its newline
    failed: bool
    tokens: int  # input tokens compressed (0 for a failed row), for the summary


def row_record(comp: Compressor, defaults: RowDefaults, n: int, line: str) -> Row:
    """Input line ``n`` -> its output line, whether the row failed, and its input tokens.

    A bad row becomes ``{"row": n, "error": ...}``; only ctxgate's own errors are caught, so a bug
    still stops the run instead of filling the output with error lines.
    """
    try:
        row = json.loads(line)
        result = msgspec.to_builtins(comp.compress(row_request(defaults, row, n)))
        result.pop("seconds", None)
        record: dict = {"row": n, **({"id": row["id"]} if "id" in row else {}), **result}
        return Row(json.dumps(record, ensure_ascii=False), False, int(result["original_tokens"]))
    except json.JSONDecodeError as exc:
        error = f"invalid JSON: {exc.msg}"
    except RecursionError:  # json's own guard: a row nested deeper than the interpreter's limit
        error = "invalid JSON: nested too deeply"
    except CtxgateError as exc:
        error = str(exc)
    return Row(json.dumps({"row": n, "error": error}, ensure_ascii=False), True, 0)


def _drop_torn_tail(path: Path) -> None:
    """A crash can leave half a line at the end: cut it so appended rows stay parseable."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def done_rows(path: Path) -> set[int]:
    """Rows already in an output file (a resumed run skips them)."""
    done: set[int] = set()
    if not path.exists():
        return done
    _drop_torn_tail(path)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                continue  # not a result row: redo it
            # a result row is what row_record writes: an integer row and a result or an error (a
            # bare {"row": 1} in a tampered file was taken as done and never computed)
            if (
                isinstance(record, dict)
                and type(record.get("row")) is int
                and ("compressed" in record or "error" in record)
            ):
                done.add(record["row"])
    return done


def open_batch(input_path: str, output: str | None, resume: bool) -> tuple[Path, list[str], set[int]]:
    """Check the paths; (output path, the input's lines, rows already done)."""
    if not output:
        raise InvalidRequest("--input needs --output")
    src, out = Path(input_path), Path(output)
    if not src.exists():
        raise InvalidRequest(f"{src}: no such file")
    if out.exists() and not resume:
        raise InvalidRequest(f"{out} exists; pass --resume to continue it, or remove it")
    done = done_rows(out) if resume else set()
    return out, lines(read_text(str(src))), done


def todo(lines: list[str], done: set[int]) -> Iterator[tuple[int, str]]:
    """(row number, line) still to compress; blank lines are not rows and get no output."""
    return ((n, line) for n, line in enumerate(lines) if n not in done and line.strip())


def run_local(comp: Compressor, defaults: RowDefaults, input_path: str, output: str | None, resume: bool) -> int:
    from tqdm import tqdm

    out, lines, done = open_batch(input_path, output, resume)
    tally = Tally()
    # line-buffered append: a crash loses at most the row being compressed
    with (
        open(out, "a", encoding="utf-8", buffering=1) as f,
        tqdm(total=len(lines), initial=len(done), unit="row", file=sys.stderr) as bar,
    ):
        for n, line in todo(lines, done):
            out_row = row_record(comp, defaults, n, line)
            f.write(out_row.record + "\n")
            tally.add(out_row.failed, out_row.tokens)
            bar.update(1)
    print(tally.summary(out, "1 process"), file=sys.stderr)
    return 1 if tally.failed else 0
