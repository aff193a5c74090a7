"""``ctxgate bench``: compression speed and peak memory per method, on fixed real text.

Every method runs through ``Compressor.compress`` (the public entry point, so the comparison is
apples to apples) in its own fresh subprocess, so its peak RSS (``VmHWM``) is its own and no
model loaded by one method is shared with the next. One warm-up call on a short slice of the
first input loads the models and is excluded from timing. Timed calls run with no cache.

    ctxgate bench --methods hybrid,longllmlingua --items 5 --rate 0.25 --out bench.json
    ctxgate bench --text ../shared/data/arxiv/article_0.txt --max-chars 12000

Input tokens are counted in the Compressor's default tokenizer (the scorer's); tokens/s is total
input tokens over total wall seconds of the timed calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .datasets import data_dir

REPO_ROOT = Path(__file__).resolve().parents[1]
NQ20 = "nq/nq-open-20docs-derived_first500.jsonl"
WORKER_FLAG = "--worker"


def load_inputs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The fixed inputs: the first ``items`` NQ 20-document rows, or one long text."""
    from ctxgate.compressor import InvalidRequest

    if args.text:
        path = Path(args.text)
        if not path.is_absolute() and not path.exists():
            path = REPO_ROOT / path
        if not path.is_file():
            raise InvalidRequest(f"--text {args.text}: no such file")
        text = path.read_text(encoding="utf-8")[: args.max_chars]
        return [{"context": text, "question": args.question}] * max(1, args.items if args.items_given else 1)
    nq = data_dir(args.data_dir) / NQ20
    if not nq.is_file():
        raise InvalidRequest(f"{nq} not found (is --data-dir the shared data folder?)")
    out = []
    with nq.open(encoding="utf-8") as f:
        for line in f:
            if len(out) >= args.items:
                break
            row = json.loads(line)
            docs = [f"Document [{i + 1}](Title: {c['title']}) {c['text']}" for i, c in enumerate(row["ctxs"])]
            out.append({"context": docs[: args.docs] if args.docs else docs, "question": row["question"]})
    return out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is empty on most Linux systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(device: str | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    from ctxgate.compressor.models import pick_device, pick_dtype

    cpu = cpu_name()
    dev = device or pick_device()
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": dev,
        "dtype": str(pick_dtype(dev)).removeprefix("torch."),
        "platform": platform.platform(),
    }
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # what the workers ran with
    info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]  # other jobs sharing the cores
    if dev.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    for pkg in ("transformers", "llmlingua", "sentence-transformers"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = None
    return info


def _rss_mib() -> float:
    """Peak RSS of this process image. ``ru_maxrss`` is not enough on Linux: a child started by
    fork+exec keeps the parent's peak (measured: a passthrough worker spawned from a process
    holding SmolLM2 reported 1,469 MiB), so read the per-image high-water mark ``VmHWM``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def run_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Measure one method in this process (the worker side)."""
    from ctxgate.compressor import Compressor

    inputs = load_inputs(args)
    comp = Compressor(
        scorer=args.scorer, embedder=args.embedder, student=args.student, tokenizer=args.tokenizer, device=args.device
    )
    rss_start = _rss_mib()
    first = inputs[0]
    warm_ctx = first["context"][:2] if isinstance(first["context"], list) else first["context"][:2000]
    t = time.perf_counter()
    comp.compress(context=warm_ctx, question=first["question"], rate=args.rate, method=method)
    warm_s = time.perf_counter() - t
    seconds, tokens_in, tokens_out, warnings = [], 0, 0, set()
    for item in inputs:
        t = time.perf_counter()
        r = comp.compress(context=item["context"], question=item["question"], rate=args.rate, method=method)
        seconds.append(time.perf_counter() - t)
        tokens_in += r.original_tokens
        tokens_out += r.compressed_tokens
        warnings.update(r.warnings)
    total = sum(seconds)
    return {
        "method": method,
        "status": "ok",
        "n": len(inputs),
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "seconds": [round(s, 4) for s in seconds],
        "mean_seconds": total / len(seconds),
        "tokens_per_s": tokens_in / total if total else None,
        "ratio": tokens_in / tokens_out if tokens_out else None,
        "warmup_seconds": round(warm_s, 3),
        "rss_before_load_mib": round(rss_start, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "model": getattr(comp.method(method), "model_name", None),
        "warnings": sorted(warnings),
    }


def _spawn(method: str, argv: list[str], timeout: float | None) -> dict[str, Any]:
    """Run ``method`` in a fresh interpreter and read its JSON line back."""
    cmd = [sys.executable, "-m", "ctxgate.eval.bench", WORKER_FLAG, method, *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    # busy-waiting OpenMP threads slow torch ~7x when the cores are shared (15 s vs 1.6 s for one
    # 141-token SmolLM2 forward at load 6 on 2 cores); passive waiting costs little on an idle box
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "status": "skipped", "note": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"method": method, "status": "skipped", "note": f"worker failed (rc {proc.returncode}): {err}"}


def _worker(method: str, args: argparse.Namespace) -> int:
    try:
        res = run_method(method, args)
    except ImportError as exc:  # a method still being written, or an optional dependency missing
        res = {"method": method, "status": "skipped", "note": f"cannot import: {exc}"}
    except Exception as exc:  # reported, not raised: one broken method must not hide the others
        res = {"method": method, "status": "skipped", "note": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(res), flush=True)
    return 0


def table(results: list[dict[str, Any]]) -> str:
    head = f"{'method':<14} {'n':>3} {'input tok':>10} {'tok/s':>9} {'mean s':>8} {'ratio':>6} {'peak RSS MiB':>13}"
    lines = [head, "-" * len(head)]
    for r in results:
        if r.get("status") != "ok":
            lines.append(f"{r['method']:<14} skipped: {r.get('note', '')}")
            continue
        tps = f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] else "-"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "-"
        lines.append(
            f"{r['method']:<14} {r['n']:>3} {r['input_tokens']:>10} {tps:>9} {r['mean_seconds']:>8.3f} "
            f"{ratio:>6} {r['peak_rss_mib']:>13.0f}"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    from ctxgate.compressor import METHOD_NAMES

    p = argparse.ArgumentParser(prog="ctxgate bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods",
        default=",".join(METHOD_NAMES),
        help=f"comma-separated methods (default: all of {', '.join(METHOD_NAMES)})",
    )
    p.add_argument("--rate", type=_rate, default=0.25, help="fraction of tokens to keep (default 0.25), or auto")
    p.add_argument("--items", type=int, default=None, help="NQ 20-document items, from the first (default 5)")
    p.add_argument("--docs", type=int, default=0, help="only the first N documents of each item (default all 20)")
    p.add_argument("--text", help="benchmark one long text instead of NQ (e.g. ../shared/data/arxiv/article_0.txt)")
    p.add_argument("--max-chars", type=int, default=12000, help="truncate --text to this many characters")
    p.add_argument("--question", default=None, help="question for --text (default: none, question-agnostic)")
    p.add_argument("--scorer", default="smollm2", help="causal-LM scorer (default smollm2)")
    p.add_argument("--embedder", default="minilm", help="sentence embedder (default minilm)")
    p.add_argument("--student", default="student", help="classifier network (default: the shipped student)")
    p.add_argument("--tokenizer", default=None, help="target tokenizer for token counts (default: the scorer's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if available)")
    p.add_argument("--data-dir", default=None, help="shared data folder (default $CTXGATE_DATA or ../shared/data)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per method before it is skipped")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    return p


def _rate(value: str) -> float | str:
    return "auto" if value.strip().lower() == "auto" else float(value)


def _parse(argv: list[str]) -> argparse.Namespace:
    args = parser().parse_args(argv)
    args.items_given = args.items is not None
    args.items = args.items if args.items is not None else 5
    from ctxgate.compressor import InvalidRequest

    if args.items < 1:
        raise InvalidRequest(f"--items must be at least 1, got {args.items}")
    if args.rate != "auto" and not 0.0 < args.rate <= 1.0:
        raise InvalidRequest(f"--rate must be in (0, 1] or auto, got {args.rate}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["engine"]:
        argv = argv[1:]
    if argv[:1] == [WORKER_FLAG]:
        return _worker(argv[1], _parse(argv[2:]))
    args = _parse(argv)
    from ctxgate.compressor import METHOD_NAMES, InvalidRequest

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown or not methods:
        raise InvalidRequest(
            f"unknown method(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(METHOD_NAMES)}"
        )
    load_inputs(args)  # fail fast, in one line, on bad data paths
    worker_argv = list(argv)  # workers run from the repo root: give them absolute paths
    if args.text:
        worker_argv += ["--text", str(Path(args.text).resolve() if Path(args.text).exists() else args.text)]
    else:
        worker_argv += ["--data-dir", str(data_dir(args.data_dir))]
    load_start = [round(x, 2) for x in os.getloadavg()]
    results = []
    for m in methods:
        print(f"bench: {m} ...", file=sys.stderr, flush=True)
        results.append(_spawn(m, worker_argv, args.timeout))
    by = {r["method"]: r for r in results if r.get("status") == "ok"}
    speedup = None
    if "hybrid" in by and "longllmlingua" in by and by["longllmlingua"]["tokens_per_s"]:
        speedup = by["hybrid"]["tokens_per_s"] / by["longllmlingua"]["tokens_per_s"]
    print(table(results))
    if speedup is not None:
        print(f"hybrid vs longllmlingua speedup: {speedup:.2f}x")
    report = {
        "command": "ctxgate bench " + " ".join(argv),
        "machine": {**machine(args.device), "load_average_start": load_start},
        "input": {"text": args.text, "max_chars": args.max_chars}
        if args.text
        else {"dataset": NQ20, "items": args.items, "docs": args.docs or 20},
        "rate": args.rate,
        "scorer": args.scorer,
        "embedder": args.embedder,
        "tokenizer": args.tokenizer,
        "results": results,
        "speedup_hybrid_vs_longllmlingua": speedup,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
