"""``ctxgate eval``: argv -> EvalConfig -> run_eval; prints where the report went."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ctxgate.compressor import CtxgateError
from ctxgate.compressor.methods import METHOD_NAMES

from ._types import AUTO_RATE, EvalConfig
from .datasets import DATASETS

DEFAULT_METHODS = ",".join(EvalConfig().methods)


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _rates(s: str) -> list[float]:
    """Fractions kept; ``auto`` (the method decides) is stored as rate 0 (``eval._types.AUTO_RATE``)."""
    try:
        rates = [AUTO_RATE if x.lower() == "auto" else float(x) for x in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"rates must be numbers like 0.25,0.1 or auto; got {s!r}") from None
    bad = [r for r in rates if not (0 < r <= 1 or r == AUTO_RATE)]
    if bad or not rates:
        raise argparse.ArgumentTypeError(f"rates are fractions of tokens kept, in (0, 1]; got {s!r}")
    return rates


def _option(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--option takes key=value, got {s!r}")
    k, v = s.split("=", 1)
    for cast in (int, float):
        try:
            return k.strip(), cast(v)
        except ValueError:
            pass
    return k.strip(), v


def _flag(v: object) -> object:
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    return v


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ctxgate eval",
        description="Answer quality under compression: methods x rates on a real dataset.",
        epilog="datasets: " + "; ".join(f"{k}: {v[1]}" for k, v in DATASETS.items()),
    )
    p.add_argument("--dataset", default="nq20", choices=list(DATASETS))
    p.add_argument("--limit", type=int, default=25, help="items (default 25)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (nq20 takes the first items)")
    p.add_argument("--data-dir", default=None, help="shared data folder (default $CTXGATE_DATA or ../shared/data)")
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. docs=10 gold_position=4 (nq), keys=25 (kv), context=article (squad)",
    )
    p.add_argument(
        "--compress-option",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="compression option for every condition, e.g. multi_hop=false (true/false are booleans)",
    )
    p.add_argument(
        "--methods",
        type=_csv,
        default=_csv(DEFAULT_METHODS),
        help=f"comma list from {','.join(METHOD_NAMES)} (the full prompt always runs)",
    )
    p.add_argument(
        "--rates",
        type=_rates,
        default=[0.25, 0.1],
        help="fractions kept, e.g. 0.5,0.25,0.1,0.05; auto lets classifier decide",
    )
    p.add_argument(
        "--reader",
        default="qwen-1.5b",
        help="local model name, the model name sent to --reader-url, or none (compression metrics only)",
    )
    p.add_argument("--reader-url", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8340/v1")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"), help="for --reader-url ($OPENAI_API_KEY)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="override the dataset's answer length cap")
    p.add_argument(
        "--batch",
        type=int,
        default=8,
        help="answers a local reader decodes at once, with continuous batching (default 8; 1 = one "
        "at a time). Decoding is memory-bound, so a step for 8 costs little more than for one; "
        "padded batches are not bit-identical to one at a time, so a run keeps its batch size",
    )
    p.add_argument("--tokenizer", default=None, help="token accounting (default: the reader's tokenizer)")
    p.add_argument("--scorer", default="smollm2")
    p.add_argument("--embedder", default="minilm")
    p.add_argument(
        "--student", default="student", help="classifier network: student or a .safetensors from ctxgate train"
    )
    p.add_argument("--out", default=None, help="output folder (default eval-results/<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue --out, skipping finished rows")
    p.add_argument("--report-only", action="store_true", help="rebuild report.md and plots from --out, run nothing")
    p.add_argument(
        "--rescore",
        action="store_true",
        help="with --report-only: recompute accuracy and agreement from the stored answers (after a "
        "metric fix); results.jsonl is rewritten, the old one kept as results.jsonl.bak",
    )
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(argv: list[str]) -> EvalConfig:
    a = parser().parse_args(argv)
    unknown = [m for m in a.methods if m not in METHOD_NAMES]
    if unknown:
        raise SystemExit(
            f"ctxgate eval: error: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHOD_NAMES)}"
        )
    if a.limit < 1:
        raise SystemExit("ctxgate eval: error: --limit must be at least 1")
    if a.batch < 1:
        raise SystemExit("ctxgate eval: error: --batch must be at least 1")
    return EvalConfig(
        dataset=a.dataset,
        limit=a.limit,
        seed=a.seed,
        data_dir=a.data_dir,
        methods=a.methods,
        rates=a.rates,
        reader=a.reader,
        reader_url=a.reader_url,
        reader_api_key=a.api_key,
        max_new_tokens=a.max_new_tokens,
        batch=a.batch,
        tokenizer=a.tokenizer,
        scorer=a.scorer,
        embedder=a.embedder,
        student=a.student,
        out=a.out or f"eval-results/{a.dataset}",
        resume=a.resume,
        report_only=a.report_only,
        rescore=a.rescore,
        plots=not a.no_plots,
        progress=not a.quiet,
        dataset_options=dict(a.option),
        compress_options={k: _flag(v) for k, v in a.compress_option},
        command="ctxgate eval " + shlex.join(argv),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = config_from_args(argv)
    from .runner import run_eval

    try:
        results = run_eval(config)
    except CtxgateError as exc:
        print(f"ctxgate eval: error: {exc}", file=sys.stderr)
        return 2
    print(f"{results.new_rows} new rows, {len(results.rows)} in all -> {results.out / 'results.jsonl'}")
    print(f"report: {results.report}")
    for m, why in results.skipped_methods.items():
        print(f"skipped {m}: {why}", file=sys.stderr)
    return 0
