"""``ctxgate train labels|fit``: rebuild the ``classifier`` student from the shared data.

    ctxgate train labels     # teacher labels -> eval/train/data/labels-v1.msgpack.gz (about 25 min, 2 cores)
    ctxgate train fit        # student -> compressor/models/weights/student-v2.safetensors (+ .train.json)

``fit`` prints the artifact's SHA-256; pin it in ``STUDENTS`` (compressor/models/_registry.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..datasets._common import REPO_ROOT, data_dir

LABELS = REPO_ROOT / "eval" / "train" / "data" / "labels-v1.msgpack.gz"
ARTIFACT = REPO_ROOT / "compressor" / "models" / "weights" / "student-v2.safetensors"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="ctxgate train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="action", required=True)
    lab = sub.add_parser("labels", help="label the training texts with the hybrid teacher")
    lab.add_argument("--out", type=Path, default=LABELS)
    lab.add_argument("--data-dir", default=None)
    lab.add_argument("--limit", type=int, default=None, help="first N examples only (a quick check)")
    fit = sub.add_parser("fit", help="train the student on the labels")
    fit.add_argument("--labels", type=Path, default=LABELS)
    fit.add_argument("--out", type=Path, default=ARTIFACT)
    fit.add_argument("--data-dir", default=None)
    fit.add_argument("--layers", type=int, default=3)
    fit.add_argument("--max-len", type=int, default=256)
    fit.add_argument("--epochs", type=int, default=3)
    fit.add_argument("--batch", type=int, default=32)
    fit.add_argument("--lr", type=float, default=2e-4)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default=None, help="cpu or cuda (default: cuda when there is one)")
    args = ap.parse_args(argv)

    from . import teach
    from .examples import build_examples

    root = data_dir(args.data_dir)
    examples = build_examples(root)
    if args.action == "labels":
        if args.limit:
            examples = examples[: args.limit]
        t0 = time.perf_counter()
        rows = teach.label(examples, log=_log)
        teach.save(
            args.out,
            rows,
            {
                "examples": len(examples),
                "teacher": "hybrid (smollm2 + minilm)",
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
        _log(f"wrote {len(rows)} labelled examples to {args.out}")
        return 0

    from ctxgate.compressor.models import pick_device, resolve
    from ctxgate.compressor.training import sha256_file

    meta, rows = teach.load(args.labels)
    device = args.device or pick_device()
    from .examples import relevance_examples
    from .fit import fit_student

    metrics = fit_student(
        examples,
        rows,
        args.out,
        base_location=resolve("minilm").location,
        layers=args.layers,
        relevance_only=relevance_examples(root),
        max_len=args.max_len,
        epochs=args.epochs,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        device=device,
        log=_log,
    )
    sha = sha256_file(args.out)
    metrics.update(sha256=sha, size_bytes=args.out.stat().st_size, labels=str(args.labels.name), labels_meta=meta)
    args.out.with_suffix(".train.json").write_text(json.dumps(metrics, indent=1) + "\n")
    print(json.dumps({"artifact": str(args.out), "sha256": sha, "size_bytes": metrics["size_bytes"]}))
    return 0
