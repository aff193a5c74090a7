"""Key-value retrieval over UUID pairs (lost-in-the-middle): the exact value must come back,
so compression must keep identifiers byte for byte."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .._types import FIRST_LINE, Item
from ._common import data_file, read_jsonl, sample

FILE = "kv_retrieval/kv-retrieval-75_keys.jsonl.gz"
PROMPT = "nq/kv_retrieval.prompt"
SYSTEM = "Reply with the value only, exactly as written."


def format_records(pairs: list[list[str]]) -> str:
    """One JSON object, one pair per line, as in lost-in-the-middle."""
    lines = [f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs]
    return "{" + ",\n ".join(lines) + "}"


def load_kv(root: Path, limit: int | None, seed: int, *, keys: int = 75, **_: Any) -> list[Item]:
    """``keys`` < 75 keeps the gold pair plus a seeded subset of the others (shorter, faster)."""
    tmpl = data_file(root, PROMPT).read_text(encoding="utf-8").rstrip("\n")
    tmpl = tmpl.replace("{formatted_kv_records}", "{context}").replace("{key}", "{question}")
    rows = list(read_jsonl(data_file(root, FILE)))
    out = []
    for idx, row in sample(list(enumerate(rows)), limit, seed):
        pairs = row["ordered_kv_records"]
        if keys < len(pairs):
            gold = next(i for i, (k, _) in enumerate(pairs) if k == row["key"])
            others = [i for i in range(len(pairs)) if i != gold]
            chosen = sorted(random.Random(seed + idx).sample(others, max(0, keys - 1)) + [gold])
            pairs = [pairs[i] for i in chosen]
        out.append(
            Item(
                id=f"kv-{idx}",
                dataset="kv",
                task="kv",
                context=format_records(pairs),
                question=row["key"],
                template=tmpl,
                references=[row["value"]],
                system=SYSTEM,
                max_new_tokens=40,
                stop=[FIRST_LINE],
            )
        )
    return out
