"""arXiv papers (Selective-Context set). No references: the score is fidelity to the answer the
reader gives from the uncompressed prompt."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .._types import Item
from ._common import DataError, sample

TEMPLATE = "{context}\n\n{question}"
QUESTION = "Summarize the paper above in three sentences."
SYSTEM = "You are a careful scientific summarizer."


def load_arxiv(root: Path, limit: int | None, seed: int, *, max_chars: int = 6000, **_: Any) -> list[Item]:
    """The first ``max_chars`` characters of each paper (about 1.5k tokens; whole papers are
    10k+ tokens, too slow to read on CPU), cut at a paragraph boundary."""
    folder = root / "arxiv"
    files = sorted(folder.glob("article_*.txt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    if not files:
        raise DataError(f"no article_*.txt in {folder}")
    out = []
    for path in sample(files, limit, seed):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if len(text) > max_chars:
            cut = text.rfind("\n\n", 0, max_chars)
            text = text[: cut if cut > max_chars // 2 else max_chars]
        out.append(
            Item(
                id=f"arxiv-{path.stem}",
                dataset="arxiv",
                task="fidelity",
                context=text,
                question=QUESTION,
                template=TEMPLATE,
                system=SYSTEM,
                max_new_tokens=128,
            )
        )
    return out
