"""``ctxgate bench batch``: JSONL batch throughput, the single-process CLI against Ray Data.

Builds one input from NQ 20-document rows (question + passages), then runs the real CLI on it:
``ctxgate compress --input`` in one process, and ``--ray`` with 1, 2, ... actors on a local Ray.
Each run goes to a fresh output. Two figures per run, both in rows/s and input tokens/s:
- ``wall``: the whole command, with Ray's start and every model load;
- ``steady``: from the CLI's summary line (from the first row, model loads included).
All outputs are compared with the single-process one byte for byte.

    ctxgate bench batch --rows 100 --workers 1,2 --out eval/results/bench/batch-xeon.json
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .datasets import data_dir as find_data

NQ = "nq/nq-open-20docs-derived_first500.jsonl"
_SUMMARY = re.compile(r"ctxgate: (\d+) row\(s\) in ([\d.]+) s on (.*?): ([\d.]+) rows/s, ([\d,]+) input tok/s")


def _input(path: Path, data_dir: Path, start: int, rows: int, docs: int) -> int:
    """Write the batch of NQ rows ``start`` to ``start + rows``; returns how many rows it holds."""
    with (data_dir / NQ).open(encoding="utf-8") as f:
        items = [json.loads(line) for line in f][start : start + rows]
    with path.open("w", encoding="utf-8") as f:
        for i, r in enumerate(items):
            f.write(
                json.dumps(
                    {
                        "id": f"nq{start + i}",
                        "question": r["question"],
                        "context": [c["text"] for c in r["ctxs"][:docs]],
                    }
                )
                + "\n"
            )
    return len(items)


def _run(cmd: list[str]) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"ctxgate bench batch: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    m = _SUMMARY.search(p.stderr)
    if m is None:
        raise SystemExit(f"ctxgate bench batch: no summary line from {' '.join(cmd)}")
    return {"rows": int(m[1]), "seconds": float(m[2]), "where": m[3], "wall": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="ctxgate bench batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--start", type=int, default=0, help="first NQ row (default 0)")
    p.add_argument("--docs", type=int, default=20, help="passages per row (default 20)")
    p.add_argument("--rate", default="0.25")
    p.add_argument("--method", default="auto")
    p.add_argument("--workers", default="1,2", help="Ray actor counts to run (default 1,2); empty: no Ray")
    p.add_argument("--ray-batch", type=int, default=8)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write the runs as JSON here")
    args = p.parse_args(argv)
    data_dir = find_data(args.data_dir)
    exe = str(Path(sys.executable).parent / "ctxgate")
    workers = [int(w) for w in re.split(r"[,\s]+", args.workers) if w]
    with tempfile.TemporaryDirectory(prefix="ctxgate-bench-batch-") as tmp:
        src = Path(tmp) / "in.jsonl"
        n = _input(src, data_dir, args.start, args.rows, args.docs)
        base = [exe, "compress", "--input", str(src), "--rate", args.rate, "--method", args.method]
        runs = []
        local = Path(tmp) / "local.jsonl"
        runs.append({"run": "1 process", **_run([*base, "--output", str(local)])})
        tokens = sum(json.loads(line)["original_tokens"] for line in local.read_text(encoding="utf-8").splitlines())
        for w in workers:
            out = Path(tmp) / f"ray{w}.jsonl"
            runs.append(
                {
                    "run": f"Ray, {w} actor(s)",
                    **_run(
                        [
                            *base,
                            "--output",
                            str(out),
                            "--ray",
                            "--ray-workers",
                            str(w),
                            "--ray-batch",
                            str(args.ray_batch),
                        ]
                    ),
                    "identical": out.read_bytes() == local.read_bytes(),
                }
            )
    for r in runs:
        r.update(
            rows_per_s=round(r["rows"] / r["seconds"], 3),
            tok_per_s=round(tokens / r["seconds"]),
            wall_rows_per_s=round(r["rows"] / r["wall"], 3),
            wall_tok_per_s=round(tokens / r["wall"]),
        )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    result = {
        "command": "ctxgate bench batch " + " ".join(argv or sys.argv[1:]),
        "cpu": cpu,
        "rows": n,
        "input_tokens": tokens,
        "runs": runs,
    }
    print(f"{n} rows, {tokens:,} input tokens, {cpu}")
    print(f"{'run':<20} {'rows/s':>8} {'tok/s':>9} {'wall rows/s':>12} {'wall tok/s':>11}  same bytes")
    for r in runs:
        same = "" if "identical" not in r else ("yes" if r["identical"] else "NO")
        print(
            f"{r['run']:<20} {r['rows_per_s']:>8.2f} {r['tok_per_s']:>9,} {r['wall_rows_per_s']:>12.2f} "
            f"{r['wall_tok_per_s']:>11,}  {same}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0 if all(r.get("identical", True) for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
