"""SQuAD v2.0 dev subset: extractive QA over one paragraph; unanswerable questions are skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._types import FIRST_LINE, Item
from ._common import data_file, sample

FILE = "squad/squad_v2_dev_subset_san_mrc.json"
TEMPLATE = "Answer the question using the passage below.\n\nPassage: {context}\n\nQuestion: {question}\nAnswer:"
SYSTEM = "Answer with the exact short span from the passage: a few words, no explanation."


def load_squad(root: Path, limit: int | None, seed: int, *, context: str = "paragraph", **_: Any) -> list[Item]:
    """``context="paragraph"`` (default) gives the question's own paragraph; ``"article"`` gives
    every paragraph of its article as documents (a long, RAG-like context)."""
    data = json.loads(data_file(root, FILE).read_text(encoding="utf-8"))["data"]
    rows = []
    for article in data:
        paragraphs = [p["context"] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                rows.append((qa, p["context"], paragraphs))
    items = []
    for qa, paragraph, paragraphs in sample(rows, limit, seed):
        refs = list(dict.fromkeys(a["text"] for a in qa["answers"]))
        items.append(
            Item(
                id=f"squad-{qa['id']}",
                dataset="squad",
                task="squad",
                context=paragraph if context == "paragraph" else list(paragraphs),
                question=qa["question"],
                template=TEMPLATE,
                references=refs,
                system=SYSTEM,
                max_new_tokens=48,
                stop=[FIRST_LINE],
            )
        )
    return items
