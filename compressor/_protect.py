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
    # bounded like RFC 5321 (local part 64, labels 63): unbounded, every word start in a long run
    # of "1." scanned to its end for an "@" (quadratic: 20 KB took 1 s)
    ("email", re.compile(r"\b[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}\b")),
    ("uuid", re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)),
    ("hash", re.compile(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,}\b", re.I)),
    (
        "path",
        re.compile(
            r"(?:(?<=\s)|^|(?<=[(\"'`]))(?:~|\.{1,2})?(?:/[\w.@+-]+){2,}/?|\b[A-Za-z]:\\[\w\\ .-]+"
            # a relative path starts where a run of path characters does: started at every word
            # boundary inside the run, "1.1.1..." was scanned to its end once per start (quadratic)
            r"|(?<![\w./-])/*[\w.-]+/[\w./-]*\.\w{1,5}\b"
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
_FENCE_OPEN = re.compile(r"^([ \t]*)(```|~~~)([^\n]*)$", re.M)


@dataclass(frozen=True)
class Fence:
    """A fenced code block: ``start``/``end`` of the whole block (opening line to the closing
    marker), ``body_start``/``body_end`` of the code, and the opening line's info string."""

    start: int
    end: int
    body_start: int
    body_end: int
    info: str


def fences(text: str) -> list[Fence]:
    """Fenced code blocks: an opening line (indent, then three backticks or tildes, then anything)
    closed by the next line with the same indent and marker and nothing else but blanks.

    Linear in the text (bisection per opener): the one-regex form (an opener, then ``.*?`` up to a
    closer) scanned to the end of the text for every opener that was never closed, so 40 KB of
    "```x" lines took seconds while holding the GIL."""
    lines = list(_FENCE_OPEN.finditer(text))
    closers: dict[tuple[str, str], list[int]] = {}
    for k, m in enumerate(lines):
        if not m.group(3).strip(" \t"):
            closers.setdefault((m.group(1), m.group(2)), []).append(k)
    out: list[Fence] = []
    k = 0
    while k < len(lines):
        m = lines[k]
        later = closers.get((m.group(1), m.group(2)), [])
        j = bisect.bisect_right(later, k)
        if j == len(later):
            k += 1
            continue
        close = lines[later[j]]
        body_start = min(m.end() + 1, close.start())
        out.append(Fence(m.start(), close.end(), body_start, close.start(), m.group(3)))
        k = later[j] + 1
    return out


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
            obj, end = _decode_at(decoder, text, i)
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
_JSON_WINDOW = 4096


def _decode_at(decoder: json.JSONDecoder, text: str, i: int):
    """``raw_decode`` of the value at ``text[i]`` over a window that grows while the failure may
    come from the window's end. Why not the whole text: every failed decode builds a
    JSONDecodeError, which counts the newlines before its position, so thousands of failed starts
    in a long text ("  {\n" lines) were quadratic."""
    window = _JSON_WINDOW
    while True:
        chunk = text[i : i + window]
        try:
            obj, end = decoder.raw_decode(chunk)
            return obj, i + end
        except json.JSONDecodeError as exc:
            whole = i + window >= len(text)
            cut = exc.pos >= len(chunk) - 8 or exc.msg.startswith("Unterminated string")
            if whole or not cut:
                raise
            window *= 4


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
    big = [Span(f.start, f.end, "code_block") for f in fences(text)]
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
