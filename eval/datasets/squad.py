"""SQuAD v2.0 dev subset: extractive QA over one paragraph; unanswerable questions are skipped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._types import FIRST_LINE, Item
from ._common import DataError, data_file, sample

FILE = "squad/squad_v2_dev_subset_san_mrc.json"
TEMPLATE = "Answer the question using the passage below.\n\nPassage: {context}\n\nQuestion: {question}\nAnswer:"
SYSTEM = "Answer with the exact short span from the passage: a few words, no explanation."


def load_squad(
    root: Path,
    limit: int | None,
    seed: int,
    *,
    context: str = "paragraph",
    articles: Any = None,
    skip: Any = 0,
    **_: Any,
) -> list[Item]:
    """``context="paragraph"`` (default) gives the question's own paragraph; ``"article"`` gives
    every paragraph of its article as documents (a long, RAG-like context). ``articles="4"`` (a
    comma list of 0-based article positions in the file) keeps only those articles: the student's
    training questions come from articles 0-3 of the stored subset, so a ``classifier`` result is
    reported on article 4. ``skip=N`` drops the first N answerable questions of those articles (in
    file order) before sampling: the training cap of 500 is reached 27 questions into article 3, so
    ``articles=3, skip=27`` gives questions the student never saw, for tuning."""
    data = json.loads(data_file(root, FILE).read_text(encoding="utf-8"))["data"]
    wanted = _positions(articles, len(data))
    rows = []
    for a, article in enumerate(data):
        if wanted is not None and a not in wanted:
            continue
        paragraphs = [p["context"] for p in article["paragraphs"]]
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                if qa.get("is_impossible") or not qa["answers"]:
                    continue
                rows.append((qa, p["context"], paragraphs))
    items = []
    rows = rows[_count(skip, "skip") :]
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


def _count(value: Any, name: str) -> int:
    try:
        n = int(value or 0)
    except (TypeError, ValueError):
        raise DataError(f"squad {name} must be a whole number, got {value!r}") from None
    if n < 0:
        raise DataError(f"squad {name} must not be negative, got {n}")
    return n


def _positions(articles: Any, n: int) -> set[int] | None:
    if articles is None or articles == "":
        return None
    try:
        out = {int(x) for x in str(articles).split(",")}
    except ValueError:
        raise DataError(f"squad articles must be a comma list of positions, got {articles!r}") from None
    bad = sorted(x for x in out if not 0 <= x < n)
    if bad:
        raise DataError(f"squad articles {bad} out of range: the file has {n} articles (0-{n - 1})")
    return out
