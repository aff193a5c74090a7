"""The student's training texts, built deterministically from the shared data folder.

Every example has a stable ``key`` (source, row, part), so a labels file stores keys and targets
only and never a copy of the data. Rows that eval reports use are left out here:

- NQ 20-doc: rows 0-99 and 200-499 train; rows 100-199 are the headline rows and never appear.
- SQuAD: articles whose title hash is not 0 mod 4 (``squad_split``), up to 500 answerable
  questions. All five articles of the stored subset hash to 'train', and the cap is reached in
  article 3, so article 4 (Victoria) is the unseen one: reports use ``--option articles=4``.
- GSM8K: ``train.jsonl`` worked solutions (the eval reads ``test.jsonl`` and the CoT demos).
- arXiv: articles 0-19 (20-29 are held out); QMSum: meetings with an even index.
- JSON and log text: NQ training rows rendered as API results and as log lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ..datasets._common import data_file, read_jsonl
from ..datasets.nq import DERIVED_20, format_doc
from ..datasets.squad import FILE as SQUAD_FILE

NQ_HELD_OUT = range(100, 200)
WINDOW_WORDS = 180  # long texts are cut into windows of about this many words
NO_QUESTION_EVERY = 7  # one NQ document in 7 is also taught without its question


class Example(msgspec.Struct, frozen=True):
    key: str
    source: str
    text: str
    question: str | None = None
    answers: tuple[str, ...] = ()
    relevant: bool | None = None  # None: no relevance label (no question)

    @property
    def digest(self) -> str:
        return hashlib.sha1(f"{self.question}\x00{self.text}".encode()).hexdigest()[:12]


def squad_split(title: str) -> str:
    """'test' for one article in four (by title hash), else 'train'."""
    return "test" if int(hashlib.sha1(title.encode()).hexdigest(), 16) % 4 == 0 else "train"


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def has_answer(text: str, answers: tuple[str, ...]) -> bool:
    t = f" {_norm(text)} "
    return any(f" {_norm(a)} " in t for a in answers if _norm(a))


def windows(text: str, words: int = WINDOW_WORDS) -> list[str]:
    """Paragraph-aligned windows of about ``words`` words (long paragraphs are cut by words)."""
    out, cur, n = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        toks = para.split()
        while len(toks) > words:
            if cur:
                out.append("\n\n".join(cur))
                cur, n = [], 0
            out.append(" ".join(toks[:words]))
            toks = toks[words:]
        if n + len(toks) > words and cur:
            out.append("\n\n".join(cur))
            cur, n = [], 0
        if toks:
            cur.append(" ".join(toks))
            n += len(toks)
    if cur:
        out.append("\n\n".join(cur))
    return [w for w in out if len(w.split()) >= 20]


def nq_rows(root: Path) -> Iterator[tuple[int, dict]]:
    for idx, row in enumerate(read_jsonl(data_file(root, DERIVED_20))):
        if idx not in NQ_HELD_OUT:
            yield idx, row


def build_examples(
    root: Path,
    *,
    nq_rows_max: int = 150,
    squad_max: int = 500,
    gsm8k_max: int = 300,
    arxiv_windows: int = 8,
    qmsum_windows: int = 8,
    structured_max: int = 40,
) -> list[Example]:
    """All training examples, in a fixed order (the same data folder gives the same list)."""
    out: list[Example] = []
    nq = [(i, r) for i, r in nq_rows(root)][:nq_rows_max]
    for idx, row in nq:
        answers = tuple(row["answers"])
        for d, ctx in enumerate(row["ctxs"]):
            text = format_doc(d, ctx)
            out.append(Example(f"nq:{idx}:{d}", "nq", text, row["question"], answers, has_answer(text, answers)))
            if (idx * 20 + d) % NO_QUESTION_EVERY == 0:
                out.append(Example(f"nq-noq:{idx}:{d}", "nq", text))

    data = json.loads(data_file(root, SQUAD_FILE).read_text(encoding="utf-8"))["data"]
    n = 0
    for a, article in enumerate(data):
        if squad_split(article["title"]) != "train":
            continue
        paras = [p["context"] for p in article["paragraphs"]]
        for p, para in enumerate(article["paragraphs"]):
            for q, qa in enumerate(para["qas"]):
                if qa.get("is_impossible") or not qa["answers"] or n >= squad_max:
                    continue
                answers = tuple(dict.fromkeys(x["text"] for x in qa["answers"]))
                out.append(Example(f"squad:{a}:{p}:{q}", "squad", para["context"], qa["question"], answers, True))
                other = paras[(p + 1 + q) % len(paras)] if len(paras) > 1 else None
                if other is not None and other != para["context"]:
                    out.append(
                        Example(
                            f"squad-neg:{a}:{p}:{q}",
                            "squad",
                            other,
                            qa["question"],
                            answers,
                            has_answer(other, answers),
                        )
                    )
                n += 1

    for i, row in enumerate(read_jsonl(data_file(root, "gsm8k/train.jsonl"))):
        if i >= gsm8k_max:
            break
        solution = re.sub(r"<<[^>]*>>", "", row["answer"]).replace("####", "The answer is")
        out.append(Example(f"gsm8k:{i}", "gsm8k", f"Question: {row['question']}\nLet's think step by step\n{solution}"))

    files = sorted((root / "arxiv").glob("article_*.txt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    for path in files[:20]:
        k = int(re.findall(r"\d+", path.stem)[0])
        for w, text in enumerate(windows(path.read_text(encoding="utf-8", errors="replace"))[:arxiv_windows]):
            out.append(Example(f"arxiv:{k}:{w}", "arxiv", text))

    for m, meeting in enumerate(read_jsonl(data_file(root, "qmsum/val.jsonl"))):
        if m % 2:
            continue
        turns = "\n\n".join(f"{t['speaker']}: {t['content']}" for t in meeting["meeting_transcripts"])
        for w, text in enumerate(windows(turns)[:qmsum_windows]):
            out.append(Example(f"qmsum:{m}:{w}", "qmsum", text))

    for idx, row in nq[:structured_max]:
        results = [
            {"id": d, "title": c["title"], "snippet": c["text"][:300], "score": round(1 - d / 40, 3)}
            for d, c in enumerate(row["ctxs"][:6])
        ]
        out.append(
            Example(
                f"json:{idx}",
                "json",
                json.dumps({"query": row["question"], "results": results}, indent=1, ensure_ascii=False),
            )
        )
        lines = [
            f"2026-01-0{1 + d % 9}T10:{d:02d}:0{d % 10}Z {'WARN' if d % 5 == 3 else 'INFO'} retriever "
            f"doc={d} title={json.dumps(c['title'], ensure_ascii=False)} chars={len(c['text'])}"
            for d, c in enumerate(row["ctxs"][:12])
        ]
        out.append(Example(f"log:{idx}", "log", "\n".join(lines)))
    return out


REL_ROWS = range(250, 400)  # NQ rows taught for relevance only (no teacher pass needed)


def relevance_examples(root: Path) -> list[Example]:
    """NQ documents with their question and has-answer label only: more ranking data for the
    relevance head at no teacher cost (their word targets are not trained)."""
    out = []
    for idx, row in nq_rows(root):
        if idx not in REL_ROWS:
            continue
        answers = tuple(row["answers"])
        for d, ctx in enumerate(row["ctxs"]):
            text = format_doc(d, ctx)
            out.append(Example(f"nq-rel:{idx}:{d}", "nq", text, row["question"], answers, has_answer(text, answers)))
    return out
