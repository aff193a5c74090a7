"""``ctxgate compress``: one text, RAG documents, or a JSONL batch (streamed, resumable)."""

from __future__ import annotations

import argparse
import sys

import msgspec

from ctxgate.compressor import METHODS, Compressor, CompressRequest, Document, InvalidRequest, SQLiteCache

from ._batch import RowDefaults, run_local
from ._inputs import read_documents, read_text

EPILOG = (
    "methods:\n"
    + "\n".join(f"  {k:<14} {v}" for k, v in METHODS.items())
    + """

rate is the fraction of tokens to keep: --rate 0.25 is about 4x smaller.
examples:
  ctxgate compress notes.txt --rate 0.3
  ctxgate compress --docs ../shared/data/nq/nq-open-20docs-derived_first500.jsonl --row 0 --rate 0.25 --json
  ctxgate compress --input batch.jsonl --output out.jsonl --rate 0.2 --resume
  ctxgate compress --input batch.jsonl --output out.jsonl --rate 0.2 --ray 10.0.0.5:6379"""
)


def _rate(value: str) -> float | str:
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate must be a number in (0, 1] or auto, got {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctxgate compress",
        description="Compress a prompt context.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", nargs="?", help="text file to compress, or - for stdin (default)")
    p.add_argument("--docs", metavar="FILE", help="RAG documents: a JSON list or JSONL (strings or {text, ...})")
    p.add_argument("--row", type=int, help="with --docs on a dataset JSONL: which row's documents (default 0)")
    p.add_argument("--question", "-q", help="the question, for question-aware compression")
    p.add_argument("--instruction", help="instruction text, kept verbatim and used as context by some methods")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument(
        "--rate",
        type=_rate,
        help="fraction of tokens to keep, in (0, 1] (default 0.5), or auto "
        "(the classifier keeps what it judges relevant)",
    )
    budget.add_argument("--target-tokens", type=int, help="absolute token budget")
    p.add_argument(
        "--method", "-m", default="auto", help="compression method (default: auto = classifier on CPU, hybrid on a GPU)"
    )
    p.add_argument("--tokenizer", help="count tokens in this tokenizer (model name, HF id, gpt-4o, ...)")
    p.add_argument("--scorer", default="smollm2", help="causal LM used for token scoring (default smollm2)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--input", metavar="JSONL", help="batch mode: one request per line")
    p.add_argument("--output", metavar="JSONL", help="batch mode: results, one line per input row")
    p.add_argument("--resume", action="store_true", help="batch mode: skip rows already in --output")
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="batch mode on Ray Data: a cluster address (host:port, ray://...), or none to start a local "
        "Ray (needs the ray extra: pip install 'ctxgate[ray]')",
    )
    p.add_argument(
        "--ray-workers",
        type=int,
        help="with --ray: compressor actors (default: one per GPU, else per 2 CPUs of the cluster)",
    )
    p.add_argument("--ray-gpus", type=float, help="with --ray: GPUs per actor (default 1 when the cluster has GPUs)")
    p.add_argument("--ray-batch", type=int, default=8, help="with --ray: rows per actor call (default 8)")
    p.add_argument("--cache", metavar="SQLITE", help="reuse compressions across runs from this SQLite file")
    p.add_argument(
        "--max-input-tokens",
        type=int,
        default=1_000_000,
        help="refuse inputs longer than this (default 1,000,000; scoring is chunked below it)",
    )
    return p


def _request(args, context, question) -> CompressRequest:
    return CompressRequest(
        context=context,
        question=question,
        instruction=args.instruction,
        rate=args.rate,
        target_tokens=args.target_tokens,
        method=args.method,
        tokenizer=args.tokenizer,
    )


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
        print(
            f"ctxgate: {result.original_tokens} -> {result.compressed_tokens} tokens{est} "
            f"({result.ratio:.2f}x, {result.method}, {result.seconds:.2f} s)",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cache = SQLiteCache(args.cache) if args.cache else None
    if args.max_input_tokens < 1:
        raise InvalidRequest(f"--max-input-tokens must be positive, got {args.max_input_tokens}")
    if args.ray is not None and not args.input:
        raise InvalidRequest("--ray is for batch mode (--input)")
    if args.ray is not None and args.cache:
        raise InvalidRequest("--cache is a local SQLite file; with --ray each worker compresses afresh")
    compressor_kwargs = {"scorer": args.scorer, "tokenizer": args.tokenizer, "max_input_tokens": args.max_input_tokens}
    if args.input:
        defaults = RowDefaults(
            question=args.question,
            instruction=args.instruction,
            rate=args.rate,
            target_tokens=args.target_tokens,
            method=args.method,
            tokenizer=args.tokenizer,
        )
        if args.ray is not None:
            from ._ray_batch import run_on_ray

            return run_on_ray(
                args.ray or None,
                defaults,
                compressor_kwargs,
                args.input,
                args.output,
                args.resume,
                workers=args.ray_workers,
                gpus=args.ray_gpus,
                batch_size=args.ray_batch,
            )
        return run_local(Compressor(**compressor_kwargs), defaults, args.input, args.output, args.resume)
    if args.output or args.resume:
        raise InvalidRequest("--output and --resume are for batch mode (--input)")
    return _single(args, Compressor(**compressor_kwargs, cache=cache))
