"""Relevance of many small texts (records, lines, rows, functions) to a question, cheaply.

Structured outputs hold hundreds of items, so every item gets a lexical score (BM25 plus exact
hits on the question's identifiers, numbers and quoted strings, which a search or lookup question
names verbatim) and only the best few are re-ranked by the dense embedder. The model so runs on
a few dozen short texts, never on the whole payload.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

Dense = Callable[[Sequence[str], str], Sequence[float]]  # (texts, question) -> cosine per text

DENSE_CANDIDATES = 16  # at most this many texts go to the embedder per call ...
DENSE_CHARS_PER_CANDIDATE = 4000  # ... and one per this many input characters, so its cost stays in
DENSE_CHARS = 320  # proportion to the payload (the embedder is the slow part)
K1, B = 1.2, 0.75

_WORD = re.compile(r"[^\W_]+", re.U)
# identifiers and literals a question may name verbatim: ids with digits or separators, quoted strings
# (a bare run of identifier characters counts when it has a digit or an inner separator; matched
# whole and tested afterwards: "[\w.:/@-]*\d" tried from every position of a long digit-free run
# scanned it to its end each time, so a 40 KB question took 30 s)
_ATOM = re.compile(r"\"([^\"]{2,80})\"|'([^']{2,80})'|`([^`]{2,80})`|([\w.:/@-]+)")
_INNER_SEPARATOR = re.compile(r"\w[-_.:/][\w.:/@-]")
_WORD_CHAR = re.compile(r"\w")
MAX_ATOMS = 64  # a question names a few identifiers; each one is a substring test on every record
_STOP = frozenset(
    "a an and are as at be by did do does for from has have how i in is it its of on or that the this to was "
    "were what when where which who whom whose why will with you your me my we our can could should would "
    "please tell give find show list there their them they he she his her than then".split()
)


_SUFFIX = re.compile(r"(?:ing|ed|es|s|ly)$")
# what the embedder is not shown: URLs and opaque identifiers (10+ characters mixing letters and
# digits, or 10+ digits). They cost it many word pieces and carry no meaning it can match; the
# lexical score already matches them exactly (``atoms``). An identifier is tried only where its run
# of [\w.:-] starts (its leading punctuation kept, as ``lead``), so the lookaheads scan each run once:
# trying every word boundary inside "a.a.a..." made it quadratic (25 ms for 1,400 characters).
_OPAQUE = re.compile(
    r"\b(?:https?://|www\.)\S+"
    r"|(?<![\w.:-])(?P<lead>[.:-]*)(?=\w)(?=[\w.:-]*\d)(?=[\w.:-]*[^\W\d_])[\w.:-]{10,}"
    r"|\b\d{10,}\b"
)
_SPACES = re.compile(r"\s{2,}")


def dense_text(text: str) -> str:
    """``text`` as the embedder reads it: opaque tokens removed, at most DENSE_CHARS characters."""
    cut = _OPAQUE.sub(lambda m: (m.group("lead") or "") + " ", text[: 4 * DENSE_CHARS])
    return _SPACES.sub(" ", cut).strip()[:DENSE_CHARS]


def words(text: str) -> list[str]:
    """Lower-cased content words, lightly stemmed ("charged", "charges" -> "charg") so that a
    question's inflection still matches a record's."""
    return [_SUFFIX.sub("", w) if len(w) > 4 else w for w in _WORD.findall(text.lower()) if w not in _STOP]


def atoms(question: str) -> list[str]:
    """Quoted strings and identifier-like runs (ids with digits, dotted or slashed names) of
    ``question``, lower-cased, first MAX_ATOMS distinct ones."""
    out: dict[str, None] = {}
    for m in _ATOM.finditer(question):
        quoted = m.group(1) or m.group(2) or m.group(3)
        if quoted is None:
            run = m.group(4)
            if not any(ch.isdigit() for ch in run):
                inner = _INNER_SEPARATOR.search(run)
                if inner is None:
                    continue
                start = inner.start()
                while start > 0 and _WORD_CHAR.match(run, start - 1):
                    start -= 1  # from the start of that word, as "\w+[-_.:/]..." matched
                run = run[start:]
            quoted = run
        a = quoted.strip(".,;:?!")
        if len(a) >= 2:
            out[a.lower()] = None
            if len(out) >= MAX_ATOMS:
                break
    return list(out)


class Relevance:
    """``score(texts)``: one float per text, higher is more relevant; deterministic."""

    def __init__(self, question: str | None, dense: Dense | None = None) -> None:
        self.question = (question or "").strip()
        self.dense = dense
        self.terms = list(dict.fromkeys(words(self.question)))
        self.atoms = list(dict.fromkeys(atoms(self.question)))

    @property
    def active(self) -> bool:
        return bool(self.terms or self.atoms)

    def lexical(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text shares a content word or a named identifier with the question."""
        if not self.active:
            return [False] * len(texts)
        q = set(self.terms)
        return [bool(q.intersection(words(t))) or any(a in t.lower() for a in self.atoms) for t in texts]

    def score(self, texts: Sequence[str]) -> list[float]:
        if not texts or not self.active:
            return [0.0] * len(texts)
        lexical = self._bm25(texts)
        top = max(lexical) or 1.0
        scores = [x / top for x in lexical]
        if self.atoms:
            lowered = [t.lower() for t in texts]
            for i, t in enumerate(lowered):
                scores[i] += 2.0 * sum(a in t for a in self.atoms)
        if self.dense is not None:
            bits = max(1, (len(texts) - 1).bit_length())  # ties: spread over the list, not its head
            k = max(4, min(DENSE_CANDIDATES, sum(map(len, texts)) // DENSE_CHARS_PER_CANDIDATE))
            order = sorted(range(len(texts)), key=lambda i: (-scores[i], _bitrev(i, bits)))[:k]
            cos = self.dense([dense_text(texts[i]) for i in order], self.question)
            ranked = set(order)
            for i in range(len(texts)):  # below every re-ranked candidate (those are >= 0), in lexical order
                if i not in ranked:
                    scores[i] = -10.0 + 0.01 * scores[i]
            for i, c in zip(order, cos):
                scores[i] = 0.5 * scores[i] + float(c) + 1.0
        return scores

    def _bm25(self, texts: Sequence[str]) -> list[float]:
        return _bm25(self.terms, texts)


def bm25(question: str, texts: Sequence[str]) -> list[float]:
    """Okapi BM25 of each text against the question's content words (0 for all without any)."""
    return _bm25(list(dict.fromkeys(words(question))), texts)


def _bm25(terms: Sequence[str], texts: Sequence[str]) -> list[float]:
    q = set(terms)
    if not q:
        return [0.0] * len(texts)
    tfs: list[Counter] = []
    df: Counter = Counter()
    lengths = []
    for t in texts:
        ws = words(t)
        lengths.append(len(ws))
        c = Counter(w for w in ws if w in q)
        tfs.append(c)
        df.update(c.keys())
    n = len(texts)
    avg = (sum(lengths) / n) or 1.0
    idf = {w: math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5)) for w in q}
    out = []
    for c, ln in zip(tfs, lengths):
        s = 0.0
        for w, f in c.items():
            s += idf[w] * f * (K1 + 1) / (f + K1 * (1 - B + B * ln / avg))
        out.append(s)
    return out


def _bitrev(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2)
