"""HotpotQA dev, distractor setting: multi-hop questions over 10 paragraphs (2 gold, 8 distractors).

Each paragraph is one document (``Document [i](Title: T) sentences``). ``meta["supports"]`` holds
(document index, sentence) for every supporting fact, so the eval can say whether compression kept
both hops (``supports_kept``). All 23 stored rows are for reporting; nothing is tuned on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._types import FIRST_LINE, Item
from ._common import data_file, sample

FILE = "hotpotqa/hotpot_dev_distractor_rows30-52.json"
TEMPLATE = "Answer the question using the documents below.\n\n{context}\n\nQuestion: {question}\nAnswer:"
SYSTEM = "Answer with a short span: a few words or yes/no, no explanation."


def load_hotpotqa(root: Path, limit: int | None, seed: int, **_: Any) -> list[Item]:
    rows = json.loads(data_file(root, FILE).read_text(encoding="utf-8"))
    items = []
    for row in sample(rows, limit, seed):
        titles = [t for t, _ in row["context"]]
        docs = [
            f"Document [{i + 1}](Title: {t}) {''.join(sents).strip()}" for i, (t, sents) in enumerate(row["context"])
        ]
        supports = []
        for title, k in row["supporting_facts"]:
            if title in titles:
                sents = row["context"][titles.index(title)][1]
                if 0 <= k < len(sents):
                    supports.append([titles.index(title), sents[k].strip()])
        items.append(
            Item(
                id=f"hotpotqa-{row['_id']}",
                dataset="hotpotqa",
                task="qa",
                context=docs,
                question=row["question"],
                template=TEMPLATE,
                references=[row["answer"]],
                system=SYSTEM,
                separator="\n\n",
                max_new_tokens=32,
                stop=[FIRST_LINE],
                meta={"supports": supports, "type": row.get("type"), "gold_docs": sorted({d for d, _ in supports})},
            )
        )
    return items
