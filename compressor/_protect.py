"""Spans that must survive byte for byte: numbers, URLs, e-mails, IDs, paths, code identifiers,
inline code, tags, fenced code blocks and JSON.

LLMLingua prunes *inside* such spans ("Fuel Dilution" became "uedil", upstream issue #149), which
breaks identifiers, JSON and arithmetic. Here a protected span is atomic: whole or absent.
Structures (code blocks, JSON) are also kept verbatim by word-level methods.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("url", re.compile(r"\b(?:https?|ftp|s3|gs|file)://[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]}]", re.I)),
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("uuid", re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)),
    ("hash", re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", re.I)),
    (
        "path",
        re.compile(
            r"(?:(?<=\s)|^|(?<=[(\"'`]))(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?|\b[A-Za-z]:\\[\w\\ .-]+|\b[\w.-]+/[\w./-]*\.\w{1,5}\b"
        ),
    ),
    ("inline_code", re.compile(r"`[^`\n]+`")),
    ("tag", re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")),
    (
        "identifier",
        re.compile(
            r"\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*(?:\(\))?|\b[a-z]+_[\w]+\b|\b_\w+\b|\b[a-z]+[A-Z]\w*\b|\b[A-Za-z_]\w*\(\)"
        ),
    ),
    # numbers: money, percentages, dates, times, versions, 1,000.5, -3, 1e-9
    ("number", re.compile(r"[$€£¥]?[-+]?\d+(?:[.,:/-]\d+)*(?:[eE][-+]?\d+)?%?")),
]
_FENCE = re.compile(r"^([ \t]*)(```|~~~)[^\n]*\n.*?^\1\2[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    kind: str

    @property
    def structural(self) -> bool:
        """Code blocks and JSON: kept verbatim by word-level pruning."""
        return self.kind in ("code_block", "json")


# a run of this many opening brackets is skipped whole when a decode from its start fails: trying
# every position inside it made "[[[[..." quadratic
_BRACKET_RUN = 16


def _json_spans(text: str, taken: list[tuple[int, int]]) -> list[Span]:
    """Balanced {...} / [...] blocks that parse as JSON (objects, or arrays of 2+ items).

    Linear in practice: code blocks (``taken``, sorted) are skipped by index, failed starts inside a
    long bracket run are not retried, and JSON too deep for the decoder (RecursionError) ends the
    search: what is left stays ordinary text."""
    spans: list[Span] = []
    n = len(text)
    decoder = json.JSONDecoder()
    find = _next_bracket
    i = find(text, 0)
    t = 0
    while i < n:
        while t < len(taken) and taken[t][1] <= i:
            t += 1
        if t < len(taken) and taken[t][0] <= i:
            i = find(text, taken[t][1])
            continue
        try:
            obj, end = decoder.raw_decode(text, i)
        except RecursionError:
            return spans
        except ValueError:
            j = i + 1
            while j < n and text[j] in "{[":
                j += 1
            i = find(text, j if j - i >= _BRACKET_RUN else i + 1)
            continue
        if (isinstance(obj, dict) and obj) or (isinstance(obj, list) and len(obj) >= 2):
            spans.append(Span(i, end, "json"))
            i = find(text, end)
            continue
        i = find(text, i + 1)
    return spans


_BRACKET = re.compile(r"[{\[]")


def _next_bracket(text: str, start: int) -> int:
    m = _BRACKET.search(text, start)
    return m.start() if m else len(text)


class _Occupied:
    """Non-overlapping intervals, sorted by start: overlap test and insert by bisection."""

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        self.starts = [s for s, _ in intervals]
        self.ends = [e for _, e in intervals]

    def add_if_free(self, start: int, end: int) -> bool:
        k = bisect.bisect_right(self.starts, start)
        if k > 0 and self.ends[k - 1] > start:
            return False
        if k < len(self.starts) and self.starts[k] < end:
            return False
        self.starts.insert(k, start)
        self.ends.insert(k, end)
        return True


def find_protected(text: str) -> list[Span]:
    """Non-overlapping protected spans, sorted; structural spans win over the small ones inside."""
    if not text:
        return []
    big = [Span(m.start(), m.end(), "code_block") for m in _FENCE.finditer(text)]
    big += _json_spans(text, [(s.start, s.end) for s in big])
    big.sort(key=lambda s: s.start)
    out = list(big)
    occupied = _Occupied([(s.start, s.end) for s in big])
    # earlier patterns win; within one pattern, matches come in order and never overlap
    for kind, pat in _PATTERNS:
        for m in pat.finditer(text):
            if m.end() > m.start() and occupied.add_if_free(m.start(), m.end()):
                out.append(Span(m.start(), m.end(), kind))
    out.sort(key=lambda s: (s.start, s.end))
    return out
