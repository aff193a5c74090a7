"""Answer metrics, written out so their normalization is visible and tested.

- NQ: best-subspan exact match (lost-in-the-middle): a normalized gold answer appears inside the
  normalized prediction.
- SQuAD: official EM and token F1 (max over references).
- GSM8K: the final number (\\boxed{N}, else "The answer is N", else the last number) equals the reference.
- Summaries: ROUGE-L F1 on lowercased word tokens (LCS), as rouge-score without stemming.
- Fidelity to the full-prompt answer: token F1, normalized exact agreement and embedding cosine
  (the eval harness and the sidecar's shadow checks both score with these).
"""

from __future__ import annotations

import re
import unicodedata

# one definition of answer agreement, shared with the sidecar's shadow checks
from ctxgate.compressor import agreement, embedding_cosine, final_number, first_line, normalize_answer, token_f1


def normalize_context(s: str) -> str:
    """As ``normalize_answer`` plus Unicode decomposition with accents dropped, so that
    'Röntgen' in a document matches 'Rontgen' (used for answer-kept-in-context)."""
    s = unicodedata.normalize("NFD", s)
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    return normalize_answer(s)


def best_subspan_em(prediction: str, references: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(r) and normalize_answer(r) in pred for r in references))


def exact_match(prediction: str, references: list[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in references))


def squad_f1(prediction: str, references: list[str]) -> float:
    return max((token_f1(prediction, r) for r in references), default=0.0)


def number_match(prediction: str, reference: str) -> float:
    got, want = final_number(prediction), final_number(reference)
    return float(got is not None and want is not None and float(got) == float(want))


def _lcs(a: list[str], b: list[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


_WORD = re.compile(r"[a-z0-9]+")


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lowercased alphanumeric tokens (rouge-score's default tokenizer, no stemmer)."""
    p, r = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not p or not r:
        return 0.0
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def answer_kept(context: str, references: list[str]) -> float:
    """1 when some reference survives in the (compressed) context, after normalization."""
    ctx = normalize_context(context)
    return float(any(normalize_context(r) and normalize_context(r) in ctx for r in references))


def exact_kept(context: str, references: list[str]) -> float:
    """Byte-exact variant, for identifiers (UUIDs) that must survive unchanged."""
    return float(any(r and r in context for r in references))


def facts_found(text: str, references: list[str]) -> float:
    """Fraction of the references whose every word appears in ``text`` (any case, any order): a
    listing answer ("which orders failed, and why") names each fact's parts in its own layout."""
    if not references:
        return 0.0
    words = set(re.findall(r"[\w.-]+", text.lower()))
    return sum(all(w in words for w in re.findall(r"[\w.-]+", r.lower())) for r in references) / len(references)


def score(task: str, prediction: str, references: list[str]) -> tuple[float | None, dict[str, float]]:
    """(headline accuracy, all metrics) of one prediction for ``task``."""
    if task == "qa":
        line = first_line(prediction)
        acc = best_subspan_em(line, references)
        return acc, {"subspan_em": acc, "em": exact_match(line, references), "f1": squad_f1(line, references)}
    if task == "squad":
        line = first_line(prediction)
        f1 = squad_f1(line, references)
        return f1, {"f1": f1, "em": exact_match(line, references), "subspan_em": best_subspan_em(line, references)}
    if task == "math":
        acc = number_match(prediction, references[0])
        return acc, {"number_match": acc}
    if task == "summary":
        r = max((rouge_l(prediction, ref) for ref in references), default=0.0)
        return r, {"rouge_l": r}
    if task == "kv":
        acc = exact_kept(prediction, references)
        return acc, {"exact_value": acc}
    if task == "facts":  # every reference, anywhere in the answer
        found = facts_found(prediction, references)
        return float(found == 1.0), {"all_facts": float(found == 1.0), "facts_recall": found}
    if task == "fidelity":
        return None, {}
    raise ValueError(f"unknown task {task!r}")


def kept(task: str, context: str, references: list[str]) -> float | None:
    """Answer-kept-in-context for tasks where the gold string should appear in the context."""
    if task in ("qa", "squad"):
        return answer_kept(context, references)
    if task == "kv":
        return exact_kept(context, references)
    if task == "facts":
        return float(facts_found(context, references) == 1.0)
    return None


def supports_kept(supports: list[list], documents: list[str]) -> float:
    """Multi-hop: 1.0 when every supporting paragraph survived. A paragraph survives when at least
    one of its supporting sentences kept half of its words (any case) in that document's
    compressed text; ``supports`` is [(document index, sentence), ...]."""
    by_doc: dict[int, list[str]] = {}
    for d, sentence in supports:
        by_doc.setdefault(int(d), []).append(sentence)

    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    for d, sentences in by_doc.items():
        have = set(words(documents[d])) if 0 <= d < len(documents) else set()
        if not any(ws and sum(w in have for w in ws) >= 0.5 * len(ws) for ws in map(words, sentences)):
            return 0.0
    return 1.0


__all__ = [
    "agreement",
    "answer_kept",
    "best_subspan_em",
    "embedding_cosine",
    "exact_kept",
    "exact_match",
    "final_number",
    "first_line",
    "kept",
    "normalize_answer",
    "normalize_context",
    "number_match",
    "rouge_l",
    "score",
    "squad_f1",
    "supports_kept",
    "token_f1",
]
