"""Where the data lives and how every loader picks its slice (``limit`` rows, fixed ``seed``)."""

from __future__ import annotations

import gzip
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from ctxgate.compressor import CtxgateError, runtime

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(CtxgateError, ValueError):
    """The data folder or a file in it is missing or unusable (one clear line)."""


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--data-dir``, else ``$CTXGATE_DATA``, else ``../shared/data`` beside the repo root."""
    raw = explicit or runtime().data or REPO_ROOT.parent / "shared" / "data"
    path = Path(raw).expanduser().resolve()
    if "holdout" in path.parts:
        raise DataError(f"{path}: the holdout set is not for development evals; point --data-dir elsewhere")
    if not path.is_dir():
        raise DataError(f"data folder {path} not found; pass --data-dir or set CTXGATE_DATA")
    return path


def data_file(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.exists():
        raise DataError(f"{path} not found (is --data-dir the shared data folder?)")
    return path


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def sample(rows: list[T], limit: int | None, seed: int) -> list[T]:
    """``limit`` rows drawn with ``seed``, kept in file order (all rows when limit is None or larger)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    if limit < 1:
        raise DataError(f"limit must be positive, got {limit}")
    picked = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in picked]
