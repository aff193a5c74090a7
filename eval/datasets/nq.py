"""NQ-Open multi-document QA (lost-in-the-middle / LongLLMLingua setup).

``nq20`` reads the derived 20-document file. ``nq`` builds the same kind of item for any document
count and gold position from the oracle file, with the BM25 hard-negative rule of
``nq/build_nq_multidoc.py`` (the derived file is its output for 20 docs, positions 0/4/9/14/19).
That file drew distractors from all 2,655 oracle rows; the shared oracle file has the first 2,000,
so built items share most but not all distractors with it (14 to 17 of 19 on the first rows).
"""

from __future__ import annotations

import collections
import math
import re
import string
import unicodedata
from pathlib import Path
from typing import Any

from .._types import FIRST_LINE, Item
from ._common import DataError, data_file, read_jsonl

DERIVED_20 = "nq/nq-open-20docs-derived_first500.jsonl"
ORACLE = "nq/nq-open-oracle-dev.jsonl.gz"
QA_PROMPT = "nq/qa.prompt"

SYSTEM = "Answer the question with the short answer only: a few words, no explanation, no full sentence."


def template(root: Path) -> str:
    """The lost-in-the-middle qa.prompt with our slots ({search_results} -> {context})."""
    text = data_file(root, QA_PROMPT).read_text(encoding="utf-8").rstrip("\n")
    return text.replace("{search_results}", "{context}")


def format_doc(i: int, ctx: dict[str, Any]) -> str:
    return f"Document [{i + 1}](Title: {ctx['title']}) {ctx['text']}"


def to_item(row: dict[str, Any], idx: int, dataset: str, tmpl: str) -> Item:
    return Item(
        id=f"{dataset}-{idx}",
        dataset=dataset,
        task="qa",
        context=[format_doc(i, c) for i, c in enumerate(row["ctxs"])],
        question=row["question"],
        template=tmpl,
        references=list(row["answers"]),
        system=SYSTEM,
        separator="\n",
        max_new_tokens=96,
        stop=[FIRST_LINE],
        meta={"gold_index": row.get("gold_index")},
    )


def rotated(row: dict[str, Any], by: int) -> dict[str, Any]:
    """``row`` with its documents moved ``by`` places to the right (wrapping), so they are numbered
    in the new order and the gold passage sits off the file's 0/4/9/14/19."""
    ctxs = row["ctxs"]
    k = by % len(ctxs) if ctxs else 0
    gold = row.get("gold_index")
    return {
        **row,
        "ctxs": ctxs[len(ctxs) - k :] + ctxs[: len(ctxs) - k],
        "gold_index": None if gold is None else (gold + k) % len(ctxs),
    }


def load_nq20(root: Path, limit: int | None, seed: int, *, offset: int = 0, rotate: int = 0, **_: Any) -> list[Item]:
    """``limit`` rows from row ``offset`` on: file order cycles the gold position through
    0/4/9/14/19, so any run of rows is balanced and comparable with earlier runs (the seed is not
    needed). Method defaults were tuned on rows 0-49; ``offset=100`` keeps a headline run clear of them.
    ``rotate=N`` moves every row's documents N places (``rotated``): the student's training rows
    use the same five gold positions, so this is the check that nothing learned them."""
    offset, rotate = int(offset), int(rotate)
    if offset < 0:
        raise DataError(f"offset must be non-negative, got {offset}")
    if not 0 <= rotate < 20:
        raise DataError(f"rotate must be in [0, 19], got {rotate}")
    tmpl = template(root)
    out = []
    for idx, row in enumerate(read_jsonl(data_file(root, DERIVED_20))):
        if idx < offset:
            continue
        if limit is not None and idx >= offset + limit:
            break
        out.append(to_item(rotated(row, rotate) if rotate else row, idx, "nq20", tmpl))
    return out


def load_nq(
    root: Path, limit: int | None, seed: int, *, docs: int = 20, gold_position: int | None = None, **_: Any
) -> list[Item]:
    """Build ``docs``-document items on the fly; ``gold_position`` pins the gold document (0-based),
    else it cycles like the derived file."""
    if docs < 1:
        raise DataError(f"docs must be at least 1, got {docs}")
    if gold_position is not None and not 0 <= gold_position < docs:
        raise DataError(f"gold_position must be in [0, {docs - 1}], got {gold_position}")
    tmpl = template(root)
    rows = build_multidoc(list(read_jsonl(data_file(root, ORACLE))), docs, limit, gold_position)
    return [to_item(r, i, f"nq{docs}", tmpl) for i, r in enumerate(rows)]


def _norm(s: str) -> str:
    """SQuAD-style normalization, as in build_nq_multidoc.py (used for answer exclusion)."""
    s = unicodedata.normalize("NFD", s).lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _tok(s: str) -> list[str]:
    return re.findall(r"\w+", s.lower())


def build_multidoc(
    rows: list[dict[str, Any]], n_docs: int, limit: int | None, gold_position: int | None = None
) -> list[dict[str, Any]]:
    """Gold passage + (n_docs-1) BM25-ranked gold passages of other questions that do not contain
    an answer. Same rule and tie-breaking as build_nq_multidoc.py."""
    positions = [0, 4, 9, 14, 19] if n_docs == 20 else [0, n_docs // 2, n_docs - 1]
    pool = [r["ctxs"][0] for r in rows]
    docs = [_tok(p["title"] + " " + p["text"]) for p in pool]
    df = collections.Counter(w for d in docs for w in set(d))
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    idf = {w: math.log(1 + (n - c + 0.5) / (c + 0.5)) for w, c in df.items()}
    tfs = [collections.Counter(d) for d in docs]
    lens = [len(d) for d in docs]
    normpool = [_norm(p["title"] + " " + p["text"]) for p in pool]

    def bm25(q: list[str], i: int, k1: float = 1.2, b: float = 0.75) -> float:
        tf, s = tfs[i], 0.0
        for w in q:
            if w in tf:
                f = tf[w]
                s += idf[w] * f * (k1 + 1) / (f + k1 * (1 - b + b * lens[i] / avgdl))
        return s

    out = []
    for qi, r in enumerate(rows[: limit if limit is not None else len(rows)]):
        q = _tok(r["question"])
        answers = [_norm(a) for a in r["answers"] if _norm(a)]
        scored = sorted(((bm25(q, i), i) for i in range(n) if i != qi), reverse=True)
        distract: list[int] = []
        for _, i in scored:
            if any(a in normpool[i] for a in answers):
                continue
            distract.append(i)
            if len(distract) == n_docs - 1:
                break
        gold = gold_position if gold_position is not None else positions[qi % len(positions)]
        ctxs = [dict(pool[i], isgold=False, hasanswer=False, source_question_idx=i) for i in distract]
        ctxs.insert(gold, dict(pool[qi], source_question_idx=qi))
        out.append({"question": r["question"], "answers": r["answers"], "gold_index": gold, "ctxs": ctxs})
    return out
