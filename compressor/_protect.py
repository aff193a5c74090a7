"""Spans that must survive byte for byte: numbers, URLs, e-mails, IDs, paths, code identifiers,
inline code, tags, fenced code blocks and JSON.

LLMLingua prunes *inside* such spans ("Fuel Dilution" became "uedil", upstream issue #149), which
breaks identifiers, JSON and arithmetic. Here a protected span is atomic: whole or absent.
Structures (code blocks, JSON) are also kept verbatim by word-level methods.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("url", re.compile(r"\b(?:https?|ftp|s3|gs|file)://[^\s<>\"'`]+[^\s<>\"'`.,;:!?)\]}]", re.I)),
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("uuid", re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)),
    ("hash", re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", re.I)),
    ("path", re.compile(r"(?:(?<=\s)|^|(?<=[(\"'`]))(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?|\b[A-Za-z]:\\[\w\\ .-]+|\b[\w.-]+/[\w./-]*\.\w{1,5}\b")),
    ("inline_code", re.compile(r"`[^`\n]+`")),
    ("tag", re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")),
    ("identifier", re.compile(r"\b(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*(?:\(\))?|\b[a-z]+_[\w]+\b|\b_\w+\b|\b[a-z]+[A-Z]\w*\b|\b[A-Za-z_]\w*\(\)")),
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


def _json_spans(text: str, taken: list[tuple[int, int]]) -> list[Span]:
    """Balanced {...} / [...] blocks that parse as JSON (objects, or arrays of 2+ items)."""
    spans: list[Span] = []
    i, n = 0, len(text)
    decoder = json.JSONDecoder()
    while i < n:
        c = text[i]
        if c in "{[" and not any(s <= i < e for s, e in taken):
            try:
                obj, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            if (isinstance(obj, dict) and obj) or (isinstance(obj, list) and len(obj) >= 2):
                spans.append(Span(i, end, "json"))
                i = end
                continue
        i += 1
    return spans


def find_protected(text: str) -> list[Span]:
    """Non-overlapping protected spans, sorted; structural spans win over the small ones inside."""
    if not text:
        return []
    big = [Span(m.start(), m.end(), "code_block") for m in _FENCE.finditer(text)]
    big += _json_spans(text, [(s.start, s.end) for s in big])
    small: list[Span] = []
    for kind, pat in _PATTERNS:
        for m in pat.finditer(text):
            if m.end() > m.start():
                small.append(Span(m.start(), m.end(), kind))
    out = list(big)
    occupied = [(s.start, s.end) for s in big]
    # earlier patterns win; longer matches win within one pattern
    for span in small:
        if any(span.start < e and s < span.end for s, e in occupied):
            continue
        out.append(span)
        occupied.append((span.start, span.end))
    out.sort(key=lambda s: (s.start, s.end))
    return out
