"""QMSum query-based meeting summarization (specific queries, ROUGE-L against the reference).

Whole meetings run to 10k+ tokens, far too slow to read on CPU, so the context is the transcript
around the query's relevant spans (``window`` turns either side, at most ``max_turns`` turns).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._types import Item
from ._common import data_file, read_jsonl, sample

FILE = "qmsum/val.jsonl"
TEMPLATE = "Meeting transcript:\n{context}\n\nQuery: {question}\nAnswer the query in a few sentences."
SYSTEM = "You summarize meeting transcripts. Answer the query in at most three sentences."


def _turns(transcript: list[dict[str, str]], spans: list[list[str]], window: int, max_turns: int) -> list[str]:
    keep: set[int] = set()
    for start, end in spans:
        lo, hi = max(0, int(start) - window), min(len(transcript), int(end) + 1 + window)
        keep.update(range(lo, hi))
    picked = sorted(keep)[:max_turns]
    return [f"{transcript[i]['speaker']}: {transcript[i]['content']}" for i in picked]


def load_qmsum(
    root: Path, limit: int | None, seed: int, *, window: int = 10, max_turns: int = 120, **_: Any
) -> list[Item]:
    rows = []
    for mi, meeting in enumerate(read_jsonl(data_file(root, FILE))):
        for qi, q in enumerate(meeting["specific_query_list"]):
            rows.append((mi, qi, q, meeting["meeting_transcripts"]))
    out = []
    for mi, qi, q, transcript in sample(rows, limit, seed):
        turns = _turns(transcript, q["relevant_text_span"], window, max_turns)
        out.append(
            Item(
                id=f"qmsum-{mi}-{qi}",
                dataset="qmsum",
                task="summary",
                context="\n".join(turns),
                question=q["query"],
                template=TEMPLATE,
                references=[q["answer"]],
                system=SYSTEM,
                max_new_tokens=160,
            )
        )
    return out
