"""``ctxgate compress``: one text, RAG documents, or a JSONL batch (streamed, resumable)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from compressor import METHODS, CompressRequest, Compressor, CtxgateError, Document, InvalidRequest, SQLiteCache

from ._inputs import read_documents, read_text, to_document

EPILOG = "methods:\n" + "\n".join(f"  {k:<14} {v}" for k, v in METHODS.items()) + """

rate is the fraction of tokens to keep: --rate 0.25 is about 4x smaller.
examples:
  ctxgate compress notes.txt --rate 0.3
  ctxgate compress --docs ../shared/data/nq/nq-open-20docs-derived_first500.jsonl --row 0 --rate 0.25 --json
  ctxgate compress --input batch.jsonl --output out.jsonl --rate 0.2 --resume"""


def _rate(value: str) -> float | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate must be a number in (0, 1] or auto, got {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxgate compress", description="Compress a prompt context.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", nargs="?", help="text file to compress, or - for stdin (default)")
    p.add_argument("--docs", metavar="FILE", help="RAG documents: a JSON list or JSONL (strings or {text, ...})")
    p.add_argument("--row", type=int, help="with --docs on a dataset JSONL: which row's documents (default 0)")
    p.add_argument("--question", "-q", help="the question, for question-aware compression")
    p.add_argument("--instruction", help="instruction text, kept verbatim and used as context by some methods")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--rate", type=_rate, help="fraction of tokens to keep, in (0, 1] (default 0.5), or auto "
                        "(the classifier keeps what it judges relevant)")
    budget.add_argument("--target-tokens", type=int, help="absolute token budget")
    p.add_argument("--method", "-m", default="auto", help="compression method (default: auto = hybrid)")
    p.add_argument("--tokenizer", help="count tokens in this tokenizer (model name, HF id, gpt-4o, ...)")
    p.add_argument("--scorer", default="smollm2", help="causal LM used for token scoring (default smollm2)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--input", metavar="JSONL", help="batch mode: one request per line")
    p.add_argument("--output", metavar="JSONL", help="batch mode: results, one line per input row")
    p.add_argument("--resume", action="store_true", help="batch mode: skip rows already in --output")
    p.add_argument("--cache", metavar="SQLITE", help="reuse compressions across runs from this SQLite file")
    p.add_argument("--max-input-tokens", type=int, default=1_000_000,
                   help="refuse inputs longer than this (default 1,000,000; scoring is chunked below it)")
    return p


def _request(args, context, question) -> CompressRequest:
    return CompressRequest(context=context, question=question, instruction=args.instruction, rate=args.rate,
                           target_tokens=args.target_tokens, method=args.method, tokenizer=args.tokenizer)


def _single(args, comp: Compressor) -> int:
    question = args.question
    if args.docs:
        if args.file:
            raise InvalidRequest("give either a FILE or --docs, not both")
        docs, row_question = read_documents(args.docs, args.row)
        context: str | list[Document] = docs
        question = question or row_question
    else:
        context = read_text(args.file or "-")
    result = comp.compress(_request(args, context, question))
    if args.json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    else:
        sys.stdout.write(result.compressed + ("" if result.compressed.endswith("\n") else "\n"))
        est = " (estimated)" if result.tokens_estimated else ""
        print(f"ctxgate: {result.original_tokens} -> {result.compressed_tokens} tokens{est} "
              f"({result.ratio:.2f}x, {result.method}, {result.seconds:.2f} s)", file=sys.stderr)
    return 0


def _drop_torn_tail(path: Path) -> None:
    """A crash can leave half a line at the end: cut it so appended rows stay parseable."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def _done_rows(path: Path) -> set[int]:
    done: set[int] = set()
    if not path.exists():
        return done
    _drop_torn_tail(path)
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                done.add(int(json.loads(line)["row"]))
            except (ValueError, KeyError, TypeError):
                continue  # not a result row: redo it
    return done


def _batch_request(args, row: dict, n: int) -> CompressRequest:
    if not isinstance(row, dict) or "context" not in row:
        raise InvalidRequest(f"row {n}: needs a 'context' field (a string or a list of documents)")
    ctx = row["context"]
    if isinstance(ctx, list):
        ctx = [to_document(d, f"row {n} context[{i}]") for i, d in enumerate(ctx)]
    elif not isinstance(ctx, str):
        raise InvalidRequest(f"row {n}: 'context' must be a string or a list")
    rate, target = row.get("rate", args.rate), row.get("target_tokens", args.target_tokens)
    if "rate" in row or "target_tokens" in row:
        rate, target = row.get("rate"), row.get("target_tokens")
    return CompressRequest(context=ctx, question=row.get("question", args.question),
                           instruction=row.get("instruction", args.instruction), rate=rate, target_tokens=target,
                           method=row.get("method", args.method), tokenizer=row.get("tokenizer", args.tokenizer))


def _batch(args, comp: Compressor) -> int:
    from tqdm import tqdm

    if not args.output:
        raise InvalidRequest("--input needs --output")
    src, out = Path(args.input), Path(args.output)
    if not src.exists():
        raise InvalidRequest(f"{src}: no such file")
    done = _done_rows(out) if args.resume else set()
    if out.exists() and not args.resume:
        raise InvalidRequest(f"{out} exists; pass --resume to continue it, or remove it")
    lines = read_text(str(src)).splitlines()
    failed = 0
    # line-buffered append: a crash loses at most the row being compressed
    with open(out, "a", encoding="utf-8", buffering=1) as f, \
            tqdm(total=len(lines), initial=len(done), unit="row", file=sys.stderr) as bar:
        for n, line in enumerate(lines):
            if n in done or not line.strip():
                continue
            try:
                row = json.loads(line)
                result = comp.compress(_batch_request(args, row, n))
                record = {"row": n, **({"id": row["id"]} if "id" in row else {}), **msgspec.to_builtins(result)}
            except json.JSONDecodeError as exc:
                record, failed = {"row": n, "error": f"invalid JSON: {exc.msg}"}, failed + 1
            except CtxgateError as exc:
                record, failed = {"row": n, "error": str(exc)}, failed + 1
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            bar.update(1)
    if failed:
        print(f"ctxgate: {failed} row(s) failed; their errors are in {out}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cache = SQLiteCache(args.cache) if args.cache else None
    if args.max_input_tokens < 1:
        raise InvalidRequest(f"--max-input-tokens must be positive, got {args.max_input_tokens}")
    comp = Compressor(scorer=args.scorer, tokenizer=args.tokenizer, cache=cache, max_input_tokens=args.max_input_tokens)
    if args.input:
        return _batch(args, comp)
    if args.output or args.resume:
        raise InvalidRequest("--output and --resume are for batch mode (--input)")
    return _single(args, comp)
