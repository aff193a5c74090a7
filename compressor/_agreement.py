"""How close two answers are: the measure of fidelity shared by the sidecar's shadow checks and
the eval harness (token F1, normalized exact agreement, final-number agreement for math, MiniLM
cosine). Normalization follows SQuAD and lost-in-the-middle."""

from __future__ import annotations

import re
import string
from collections import Counter

import numpy as np

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lowercase, drop punctuation and articles, squeeze spaces (SQuAD / lost-in-the-middle)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def first_line(prediction: str) -> str:
    """The first line with content: short-answer QA is scored on it (lost-in-the-middle)."""
    for line in prediction.strip().splitlines():
        if line.strip():
            return line.strip()
    return ""


def token_f1(prediction: str, reference: str) -> float:
    p, r = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not p or not r:
        return float(p == r)
    common = Counter(p) & Counter(r)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(r)
    return 2 * precision * recall / (precision + recall)


_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
# instruct models write \boxed{21}, often inside \( \) and followed by more words with numbers
_BOXED = re.compile(r"\\boxed\{\s*\\?\$?\s*(-?[\d,]*\.?\d+)")


def final_number(text: str) -> str | None:
    """The last \\boxed{N}, else the number after the last 'The answer is', else the last number.

    "will be \\(\\boxed{21}\\) years old in 3 years" is 21, not 3.
    """
    hits = _BOXED.findall(text) or _ANSWER_IS.findall(text)
    raw = hits[-1] if hits else (_NUMBER.findall(text) or [None])[-1]
    if raw is None:
        return None
    raw = raw.replace(",", "").replace("$", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return None
    return str(int(value)) if value == int(value) else str(value)


def agreement(prediction: str, reference_answer: str, task: str) -> tuple[float, float]:
    """(token F1, exact agreement) of a prediction with the full-prompt answer. For short-answer
    tasks only the first line counts; for math, agreement is on the final number."""
    if task in ("qa", "squad", "kv"):
        prediction, reference_answer = first_line(prediction), first_line(reference_answer)
    f1 = token_f1(prediction, reference_answer)
    if task == "math":
        a, b = final_number(prediction), final_number(reference_answer)
        em = float(a is not None and a == b)
    else:
        em = float(normalize_answer(prediction) == normalize_answer(reference_answer))
    return f1, em


def embedding_cosine(model, a: str, b: str) -> float:
    """Cosine of two answers under a sentence-transformer ``model`` (MiniLM); two empty answers agree.

    Computed in float64 from the raw vectors: a bf16 model's own normalization leaves norms of
    0.999-1.001, which scored identical answers 0.999.
    """
    if not a.strip() or not b.strip():
        return float(a.strip() == b.strip())
    va, vb = model.encode([a, b], convert_to_numpy=True, show_progress_bar=False).astype(np.float64)
    return float(max(-1.0, min(1.0, va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb) or 1.0))))
