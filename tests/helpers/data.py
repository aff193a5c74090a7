"""Real evaluation data for the method tests, read from ../shared/data (never copied here)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
DATA = ROOT.parent / "shared" / "data"
NQ20 = DATA / "nq" / "nq-open-20docs-derived_first500.jsonl"


@cache
def nq_items(n: int = 25) -> tuple[dict, ...]:
    """The first ``n`` 20-document NQ items (question, answers, ctxs[{title, text}])."""
    with open(NQ20, encoding="utf-8") as f:
        return tuple(json.loads(line) for _, line in zip(range(n), f))


def nq_docs(item: dict) -> list[str]:
    """Documents formatted as in lost-in-the-middle's qa.prompt search results."""
    return [f"Document [{i + 1}](Title: {c['title']}) {c['text']}" for i, c in enumerate(item["ctxs"])]


def answer_kept(text: str, answers: list[str]) -> bool:
    low = text.lower()
    return any(a.lower() in low for a in answers)


@cache
def _squad() -> dict:
    return json.loads((DATA / "squad" / "squad_v2_dev_subset_san_mrc.json").read_text(encoding="utf-8"))


@cache
def squad_article(index: int = 0, paragraphs: int = 5) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The first paragraphs of a SQuAD article as one text, with (question, answer) pairs on it."""
    paras = _squad()["data"][index]["paragraphs"][:paragraphs]
    qas = tuple(
        (qa["question"], qa["answers"][0]["text"])
        for p in paras
        for qa in p["qas"]
        if not qa.get("is_impossible") and qa["answers"]
    )
    return "\n\n".join(p["context"] for p in paras), qas


@cache
def squad_questions(index: int) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(paragraph, question, answers) for every answerable question of one SQuAD article."""
    return tuple(
        (p["context"], qa["question"], tuple(a["text"] for a in qa["answers"]))
        for p in _squad()["data"][index]["paragraphs"]
        for qa in p["qas"]
        if not qa.get("is_impossible") and qa["answers"]
    )


# Real-looking text with every kind of protected span, plus keep-markup.
PROTECTED = (
    "Deploy notes. The service listens on https://api.example.com/v2/items?limit=50 and its id is "
    "123e4567-e89b-12d3-a456-426614174000. It costs $1,299.99 per month (12.5% more than 2023-01-05).\n\n"
    "```python\ndef total(xs):\n    return sum(x * 2 for x in xs)\n```\n\n"
    'The config is {"retries": 3, "backoff": [1, 2, 4]} and <ctxgate:keep>NEVER DROP THIS LINE</ctxgate:keep>.\n\n'
)
# protected atom -> a fragment of it: wherever the fragment shows up, the whole atom must be there
ATOMS = {
    "https://api.example.com/v2/items?limit=50": "api.example",
    "123e4567-e89b-12d3-a456-426614174000": "123e4567",
    "$1,299.99": "1,299",
    "12.5%": "12.5",
    "2023-01-05": "2023-01",
}


def check_protected(out: str, filler: str) -> None:
    """Keep-markup and structures are present verbatim; atoms are whole or absent."""
    assert "NEVER DROP THIS LINE" in out
    assert "```python\ndef total(xs):\n    return sum(x * 2 for x in xs)\n```" in out
    assert '{"retries": 3, "backoff": [1, 2, 4]}' in out
    for atom, fragment in ATOMS.items():
        assert fragment not in filler
        assert out.count(fragment) == out.count(atom), atom
