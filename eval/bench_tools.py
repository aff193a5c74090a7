"""``ctxgate bench tools``: structured tool outputs (search JSON, nested API JSON, key-value JSON,
logs) compressed by ``Compressor.compress``; needed item kept, valid JSON, achieved ratio and
speed per dataset. No reader: ``ctxgate eval --dataset tools-nq ...`` adds reader accuracy.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from .bench import machine
from .datasets import load_dataset
from .datasets.tools import needed_kept, valid_json

DEFAULT = ("tools-nq", "tools-squad", "tools-kv", "tools-logs", "tools-hotpot")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from ctxgate.compressor import Compressor

    comp = Compressor(default_method=args.method, device=args.device)
    comp.warm_up()
    comp.compress(context=json.dumps([{"warm": i, "up": "x " * 20} for i in range(50)]), question="warm?", rate=0.2)
    rows: list[dict[str, Any]] = []
    for name in args.datasets:
        for item in load_dataset(name, limit=args.limit, seed=args.seed, data=args.data_dir):
            t0 = time.perf_counter()
            r = comp.compress(context=item.context, question=item.question, rate=args.rate)
            secs = time.perf_counter() - t0
            rows.append(
                {
                    "dataset": name,
                    "id": item.id,
                    "original_tokens": r.original_tokens,
                    "compressed_tokens": r.compressed_tokens,
                    "ratio": r.ratio,
                    "seconds": secs,
                    "kinds": r.kinds,
                    "needed_kept": needed_kept(item, r.compressed),
                    "valid_json": valid_json(r.compressed) if item.meta.get("json") else None,
                }
            )
    return {"machine": machine(args.device), "method": comp.default_method, "rate": args.rate, "rows": rows}


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["dataset"] for r in result["rows"]):
        rs = [r for r in result["rows"] if r["dataset"] == name]
        js = [r["valid_json"] for r in rs if r["valid_json"] is not None]
        tokens, secs = sum(r["original_tokens"] for r in rs), sum(r["seconds"] for r in rs)
        out.append(
            {
                "dataset": name,
                "n": len(rs),
                "tokens_mean": round(tokens / len(rs)),
                "ratio_mean": round(sum(r["ratio"] for r in rs) / len(rs), 2),
                "needed_kept": round(sum(r["needed_kept"] for r in rs) / len(rs), 3),
                "valid_json": round(sum(js) / len(js), 3) if js else None,
                "seconds_mean": round(secs / len(rs), 3),
                "tokens_per_s": round(tokens / secs) if secs else None,
            }
        )
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        f"method {result['method']}, rate {result['rate']}, {result['machine'].get('cpu', '?')}",
        "",
        "| dataset | n | tokens (mean) | ratio (mean) | needed kept | valid JSON | s/item | tokens/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary(result):
        vj = "-" if s["valid_json"] is None else f"{s['valid_json']:.3f}"
        lines.append(
            f"| {s['dataset']} | {s['n']} | {s['tokens_mean']} | {s['ratio_mean']}x | {s['needed_kept']:.3f} "
            f"| {vj} | {s['seconds_mean']} | {s['tokens_per_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ctxgate bench tools", description=__doc__)
    p.add_argument("--datasets", default=",".join(DEFAULT), type=lambda s: [x for x in re.split(r"[,\s]+", s) if x])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=0.2)
    p.add_argument("--method", default="auto")
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write the rows and summary as JSON here")
    args = p.parse_args(argv)
    result = run(args)
    result["summary"] = summary(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(table(result), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
