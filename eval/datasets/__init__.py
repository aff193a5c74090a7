"""Eval datasets, read from the shared data folder: ``load_dataset(name, limit=..., seed=...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._types import Item
from ._common import DataError, data_dir
from .arxiv import load_arxiv
from .gsm8k import load_gsm8k
from .hotpotqa import load_hotpotqa
from .kv import load_kv
from .nq import build_multidoc, load_nq, load_nq20
from .qmsum import load_qmsum
from .squad import load_squad
from .tools import load_tools_hotpot, load_tools_kv, load_tools_logs, load_tools_nq, load_tools_squad

# name -> (loader, one line for --help)
DATASETS: dict[str, tuple[Callable[..., list[Item]], str]] = {
    "nq20": (load_nq20, "NQ-Open, 20 documents (derived file), best-subspan match"),
    "nq": (load_nq, "NQ-Open built for any document count (docs=N, gold_position=P)"),
    "squad": (load_squad, "SQuAD v2 dev subset (answerable), EM/F1"),
    "gsm8k": (load_gsm8k, "GSM8K with the 8-shot CoT prompt compressed, final-number accuracy"),
    "qmsum": (load_qmsum, "QMSum query-based summarization, ROUGE-L"),
    "arxiv": (load_arxiv, "arXiv papers, fidelity to the uncompressed answer (no reference)"),
    "kv": (load_kv, "key-value retrieval over UUIDs, exact value"),
    "tools-nq": (load_tools_nq, "NQ rows 100-199 as a search API's JSON array of 50-500 results"),
    "tools-hotpot": (load_tools_hotpot, "HotpotQA paragraphs as search-result JSON; both supports needed"),
    "tools-squad": (load_tools_squad, "a SQuAD article as a nested docs-API JSON response"),
    "tools-kv": (load_tools_kv, "key-value retrieval as one JSON object; the exact value must come back"),
    "tools-logs": (load_tools_logs, "service logs with planted payment failures (synthetic, seeded)"),
    "hotpotqa": (
        load_hotpotqa,
        "HotpotQA multi-hop (distractor), best-subspan match; supports_kept: both hops survive",
    ),
}


def load_dataset(
    name: str, *, limit: int | None = None, seed: int = 0, data: str | None = None, **options: Any
) -> list[Item]:
    """Items of dataset ``name``; ``options`` go to its loader (e.g. docs=10 for ``nq``)."""
    key = name.strip().lower()
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    items = DATASETS[key][0](data_dir(data), limit, seed, **options)
    if not items:
        raise DataError(f"dataset {name!r} gave no items")
    return items


__all__ = ["DATASETS", "DataError", "build_multidoc", "data_dir", "load_dataset"]
