"""What kind of content a text is, part by part: JSON, NDJSON, logs, tables, code, diffs, HTML, prose.

Tool results arrive as one string. Token pruning breaks JSON and mangles identifiers, so each
part goes to the compressor that fits its kind. Detection is conservative: a part is structured
only when most of its lines say so; anything unsure stays prose, which the text methods handle
as before (so RAG documents are never misrouted).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

from .._protect import fences, find_protected

Kind = Literal["json", "ndjson", "log", "table", "code", "diff", "html", "prose"]

MIN_JSON_CHARS = 200  # smaller JSON inside prose stays a protected atom of the text
MIN_LOG_LINES = 6
MIN_TABLE_ROWS = 4
MIN_BLOCK_LINES = 6  # a run of lines shorter than this is never split out of prose
MAX_NDJSON_PROBE = 64  # lines tried before deciding a text is NDJSON

_TIMESTAMP = re.compile(
    r"^\s*(?:\[?\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?|\[?\d{2}:\d{2}:\d{2}|"
    r"[A-Z][a-z]{2} +\d{1,2} \d{2}:\d{2}:\d{2}|\[\d+(?:\.\d+)?\]|\d{10}(?:\.\d+)?\s)"
)
_LEVEL = re.compile(r"\b(?:TRACE|DEBUG|INFO|NOTICE|WARN(?:ING)?|ERROR|ERR|FATAL|CRITICAL|SEVERE|PANIC)\b")
_STACK = re.compile(
    r"^\s+(?:at [\w.$<>]+\(|File \"[^\"]+\", line \d+)|^Traceback \(most recent call last\)|^Caused by: "
)
_MD_ROW = re.compile(r"^\s*\|.*\|\s*$")
# possessive blanks: "\s*\|?\s*" backtracked quadratically over a line of 100k spaces
_MD_RULE = re.compile(r"^\s*+\|?\s*+:?-{3,}:?\s*+(?:\|\s*+:?-{3,}:?\s*+)*\|?\s*+$")
_DIFF = re.compile(r"^(?:diff --git |--- [^\n]|\+\+\+ [^\n]|@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@)")
_CODE_LINE = re.compile(
    r"^\s*(?:def |class |async def |import |from [\w.]+ import |@\w|return\b|if .*:\s*$|elif |else:|for .*:\s*$|"
    r"while .*:\s*$|try:|except\b|with .*:\s*$|function\b|const |let |var |export |package |func |pub |fn |"
    r"impl |struct |enum |interface |public |private |protected |static |#include|#define|using |namespace )"
    r"|[;{}]\s*$|^\s*[})\]];?\s*$|^\s*(?://|/\*|\*/|\* |#)"
)
_HTML = re.compile(r"^\s*(?:<!doctype html|<html[\s>]|<head[\s>]|<body[\s>])", re.I)
_TAG = re.compile(r"<(?:/?[a-zA-Z][\w-]*)(?:\s[^<>]*)?/?>")


@dataclass(frozen=True)
class Part:
    """``text[start:end]`` is of ``kind``; ``lang`` is a code fence's language tag, if any."""

    start: int
    end: int
    kind: Kind
    lang: str = ""


def parse_json(text: str):
    """The parsed value, or None when ``text`` is not one JSON object or array (deep nesting included:
    the decoder's RecursionError means 'not JSON here', never an error)."""
    s = text.strip()
    if not s or s[0] not in "{[":
        return None
    try:
        return json.loads(s, parse_int=_Raw, parse_float=_Raw)
    except (ValueError, RecursionError):
        return None


class _Raw(str):
    """A JSON number kept as the exact text it was written as, so 1.0 never becomes 1 or 1e5 100000.0."""

    __slots__ = ()


def is_number(v: object) -> bool:
    return isinstance(v, _Raw)


def _ndjson(text: str) -> bool:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        return False
    for ln in lines[:MAX_NDJSON_PROBE]:
        s = ln.strip()
        if not s.startswith("{"):
            return False
        try:
            json.loads(s)
        except (ValueError, RecursionError):
            return False
    return True


def kind_of(text: str) -> Kind:
    """The kind of a whole text (no splitting): what one tool result mostly is."""
    s = text.strip()
    if not s:
        return "prose"
    if s[0] in "{[":
        if parse_json(s) is not None:
            return "json"
        if _ndjson(s):
            return "ndjson"
    if _HTML.match(s) or (len(_TAG.findall(s[:20_000])) > 20 and _tag_density(s[:20_000]) > 0.3):
        return "html"
    lines = s.splitlines()
    kind = _line_kind(lines)
    return kind or "prose"


def _tag_density(s: str) -> float:
    return sum(len(m.group()) for m in _TAG.finditer(s)) / max(1, len(s))


def _line_kind(lines: list[str]) -> Kind | None:
    body = [ln for ln in lines if ln.strip()]
    if len(body) < MIN_LOG_LINES:
        return None
    n = len(body)
    if sum(bool(_DIFF.match(ln)) for ln in body) >= 2 and body[0].startswith(("diff --git", "--- ", "@@")):
        return "diff"
    logish = sum(bool(_TIMESTAMP.match(ln) or _LEVEL.search(ln[:80]) or _STACK.match(ln)) for ln in body)
    if logish >= 0.6 * n:
        return "log"
    if _table_lines(body) is not None:
        return "table"
    codeish = sum(bool(_CODE_LINE.search(ln)) for ln in body)
    indented = sum(ln.startswith((" ", "\t")) for ln in body)
    if codeish >= 0.35 * n and indented >= 0.25 * n and _prose_words(body) < 0.5:
        return "code"
    return None


def _prose_words(lines: list[str]) -> float:
    """Share of lines that read like sentences (end with . ! ? and have 8+ words)."""
    return sum(ln.rstrip().endswith((".", "!", "?")) and len(ln.split()) >= 8 for ln in lines) / max(1, len(lines))


def _table_lines(lines: list[str]) -> str | None:
    """The table flavour (``md`` or a delimiter) when every line is one row of one table."""
    if len(lines) < MIN_TABLE_ROWS:
        return None
    if all(_MD_ROW.match(ln) for ln in lines) and any(_MD_RULE.match(ln) for ln in lines[1:3]):
        return "md"
    for delim in ("\t", ",", ";", "|"):
        counts = [_split_count(ln, delim) for ln in lines[:200]]
        if counts[0] >= 1 and all(c == counts[0] for c in counts):
            return delim
    return None


def _split_count(line: str, delim: str) -> int:
    """Delimiters outside double quotes (CSV quoting)."""
    n, quoted = 0, False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif ch == delim and not quoted:
            n += 1
    return n


def table_flavour(text: str) -> str | None:
    return _table_lines([ln for ln in text.splitlines() if ln.strip()])


def split(text: str) -> list[Part]:
    """``text`` as consecutive parts, each of one kind; prose between structured blocks stays prose.

    Whole-text kinds win (a JSON body, an HTML page, a log, a diff). Otherwise fenced code blocks,
    large JSON blocks and runs of log or table lines are split out of the prose around them."""
    whole = kind_of(text)
    if whole != "prose":
        return [Part(0, len(text), whole)]
    blocks: list[Part] = []
    for f in fences(text):
        blocks.append(Part(f.body_start, f.body_end, "code", f.info.strip().lower()))
    taken = [(b.start, b.end) for b in blocks]
    for span in find_protected(text):
        if span.kind == "json" and span.end - span.start >= MIN_JSON_CHARS and not _inside(span.start, taken):
            blocks.append(Part(span.start, span.end, "json"))
    blocks.sort(key=lambda p: p.start)
    parts: list[Part] = []
    pos = 0
    for b in blocks:
        parts.extend(_line_runs(text, pos, b.start))
        parts.append(b)
        pos = b.end
    parts.extend(_line_runs(text, pos, len(text)))
    return _merge_prose(parts)


def _inside(i: int, taken: list[tuple[int, int]]) -> bool:
    return any(s <= i < e for s, e in taken)


def _line_runs(text: str, start: int, end: int) -> list[Part]:
    """Prose between ``start`` and ``end``, with runs of log/table/diff lines split out."""
    if end <= start:
        return []
    chunk = text[start:end]
    lines = chunk.splitlines(keepends=True)
    if len(lines) < MIN_BLOCK_LINES:
        return [Part(start, end, "prose")]
    labels = [_label(ln) for ln in lines]
    out: list[Part] = []
    i, off = 0, start
    offsets = []
    for ln in lines:
        offsets.append(off)
        off += len(ln)
    while i < len(lines):
        lab = labels[i]
        j = i
        while j < len(lines) and (labels[j] == lab or (lab == "log" and labels[j] == "cont")):
            j += 1
        block_end = offsets[j] if j < len(lines) else end
        if lab in ("log", "table") and j - i >= (MIN_TABLE_ROWS if lab == "table" else MIN_BLOCK_LINES):
            sub = _line_kind([ln.rstrip("\n") for ln in lines[i:j]])
            out.append(Part(offsets[i], block_end, sub if sub in ("log", "table") else "prose"))
        else:
            out.append(Part(offsets[i], block_end, "prose"))
        i = j
    return out


def _label(line: str) -> str:
    s = line.rstrip("\n")
    if not s.strip():
        return "cont"
    if _TIMESTAMP.match(s) or _STACK.match(s) or (_LEVEL.search(s[:40]) and not s.rstrip().endswith(".")):
        return "log"
    if _MD_ROW.match(s):
        return "table"
    if s.startswith((" ", "\t")):
        return "cont"
    return "prose"


def _merge_prose(parts: list[Part]) -> list[Part]:
    out: list[Part] = []
    for p in parts:
        if p.end <= p.start:
            continue
        if out and p.kind == "prose" and out[-1].kind == "prose":
            out[-1] = Part(out[-1].start, p.end, "prose")
        else:
            out.append(p)
    return out
