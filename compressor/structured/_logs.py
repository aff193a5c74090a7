"""Logs: collapse the repetitive, keep every distinct error, warning and stack trace.

Lines are compared by a *signature* (timestamps, numbers, ids and quoted values normalised), so
10,000 "GET /health 200 3ms" lines become one line with a count. What is kept, in order of
priority: the first and last line and the first line of every distinct error signature with its
stack trace (even over the budget); the rest of the head and tail, within a quarter of the budget;
lines relevant to the question; the other error lines; the first line of every warning signature;
the rest of the head and tail; then one line of each other signature. So a tight budget goes to
what went wrong and what was asked, not to the first and last few lines. Kept lines are copied
verbatim; each gap becomes one "… N lines omitted" line.
"""

from __future__ import annotations

import re

from ._types import Crushed, Tools

HEAD, TAIL = 3, 5
TRACE_MAX = 40  # a longer stack trace keeps its first 30 and last 10 lines
MARKER_COST = 8  # tokens a kept block may add in gap markers and [+N similar] counts

_NORM = [
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?"), "<ts>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I), "<id>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-f]+\b|\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.I), "<hex>"),
    (re.compile(r"\"[^\"]*\"|'[^']*'"), "<str>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
]
_ERROR = re.compile(
    r"\b(?:ERROR|ERR|FATAL|CRITICAL|SEVERE|PANIC|EMERG|ALERT)\b|Exception\b|Error\b|Traceback|"
    r"\bpanic:|\bfailed\b|\bfailure\b|\bsegfault|\bkilled\b|\bOOM\b|\btimed? ?out\b",
    re.I,
)
_WARN = re.compile(r"\bWARN(?:ING)?\b|\bdeprecat", re.I)
_TRACE_START = re.compile(
    r"^Traceback \(most recent call last\)|^\S.*(?:Exception|Error)(?::|$)|^panic: |^goroutine \d+"
)
_TRACE_LINE = re.compile(r"^\s+(?:at |File \"|\.\.\. \d+ more|\S+\.(?:py|go|rs|js|ts|java):\d+)|^Caused by: |^\s{2,}\S")


def signature(line: str) -> str:
    s = line
    for pat, rep in _NORM:
        s = pat.sub(rep, s)
    return " ".join(s.split())


def severity(line: str) -> int:
    """2 error, 1 warning, 0 other."""
    return 2 if _ERROR.search(line) else 1 if _WARN.search(line) else 0


def _traces(lines: list[str]) -> dict[int, list[int]]:
    """Stack-trace blocks: the line that starts one -> its following trace lines (and the final
    exception line of a Python traceback)."""
    out: dict[int, list[int]] = {}
    i = 0
    while i < len(lines):
        if _TRACE_START.match(lines[i]):
            j = i + 1
            while j < len(lines) and (
                _TRACE_LINE.match(lines[j])
                or (lines[i].startswith("Traceback") and j + 1 < len(lines) and _TRACE_LINE.match(lines[j + 1]))
            ):
                j += 1
            if lines[i].startswith("Traceback") and j < len(lines) and lines[j].strip():
                j += 1  # "ValueError: ..." closes a Python traceback
            if j > i + 1:
                body = list(range(i + 1, j))
                if len(body) > TRACE_MAX:
                    body = body[:30] + body[-10:]
                out[i] = body
            i = max(j, i + 1)
        else:
            i += 1
    return out


def crush_log(text: str, tools: Tools) -> Crushed:
    lines = text.split("\n")
    n = len(lines)
    sigs = [signature(ln) for ln in lines]
    sev = [severity(ln) for ln in lines]
    traces = _traces(lines)
    in_trace = {j for body in traces.values() for j in body}
    costs = [c + 1 for c in tools.counter.count_many(lines)]
    # relevant: lines sharing words with the question, ranked (the embedder sees only those)
    hit_idx = [i for i, h in enumerate(tools.relevance.lexical(lines)) if h and lines[i].strip()]
    hit_scores = tools.relevance.score([lines[i] for i in hit_idx]) if hit_idx else []

    first_of: dict[str, int] = {}
    for i, s in enumerate(sigs):
        first_of.setdefault(s, i)
    ends = [i for i in _ends(n) if lines[i].strip() or i in (0, n - 1)]
    firsts = [i for i in range(n) if sev[i] and first_of[sigs[i]] == i and i not in in_trace]
    # forced: the first and last line, and the first line of every error signature
    forced = ends[:2] + [i for i in firsts if sev[i] == 2]
    warnings_first = [i for i in firsts if sev[i] == 1]
    relevant = [hit_idx[k] for k in sorted(range(len(hit_idx)), key=lambda k: (-hit_scores[k], k))]
    errors = [i for i in range(n) if sev[i] == 2 and i not in in_trace]
    distinct = [i for i in range(n) if first_of[sigs[i]] == i and lines[i].strip()]
    # the rest of the head and tail is context: it may take a quarter of the budget ahead of the
    # relevant and error lines, and only what is left after them beyond that, so a tight budget
    # spends itself on the lines that say what happened rather than on the first and last few
    tiers: list[tuple[list[int], int | None]] = [  # (lines, the most tokens the tier may add)
        (forced, None),  # None: kept even over the budget
        (ends[2:], tools.budget // 4 - sum(costs[i] + MARKER_COST for i in ends[:2])),
        (relevant, tools.budget),
        (errors, tools.budget),
        (warnings_first, tools.budget),
        (ends[2:], tools.budget),
        (distinct, tools.budget),
    ]

    keep: set[int] = set()
    spent = 0
    over = False
    for tier, cap in tiers:
        added = 0
        for i in tier:
            if i in keep:
                continue
            block = [i] + [j for j in traces.get(i, ()) if j not in keep]
            c = sum(costs[j] for j in block) + MARKER_COST
            if cap is not None and (spent + c > tools.budget or added + c > cap):
                continue
            over = over or spent + c > tools.budget
            keep.update(block)
            spent += c
            added += c
    warnings = (
        [f"log errors, first and last line ({spent} tokens) exceed the budget ({tools.budget}); kept them"]
        if over
        else []
    )
    return Crushed(_render(lines, sigs, keep, tools), n - len(keep), warnings)


def _ends(n: int) -> list[int]:
    """Line indexes from both ends inwards, last first: n-1, 0, n-2, 1, ... within HEAD and TAIL."""
    tail = list(range(n - 1, max(n - 1 - TAIL, -1), -1))
    head = [i for i in range(min(HEAD, n)) if i not in tail]
    out = []
    for k in range(max(len(head), len(tail))):
        out += tail[k : k + 1] + head[k : k + 1]
    return out


def _render(lines: list[str], sigs: list[str], keep: set[int], tools: Tools) -> str:
    out: list[str] = []
    n = len(lines)
    # omitted lines that repeat a kept line's signature are counted on that line
    later: dict[int, int] = {}
    last_kept: dict[str, int] = {}
    for i in range(n):
        s = sigs[i]
        if i in keep:
            last_kept[s] = i
        elif s in last_kept:
            later[last_kept[s]] = later.get(last_kept[s], 0) + 1
    gap = 0
    ref_used = False
    for i in range(n):
        if i not in keep:
            gap += 1
            continue
        if gap:
            out.append(_gap(gap, tools, not ref_used))
            ref_used = True
            gap = 0
        extra = later.get(i, 0)
        out.append(lines[i] + (f"  [+{extra} similar]" if extra else ""))
    if gap:
        out.append(_gap(gap, tools, not ref_used))
    return "\n".join(out)


def _gap(n: int, tools: Tools, with_ref: bool) -> str:
    what = f"… {n} line{'s' if n != 1 else ''} omitted"
    return f"[{tools.marker(what) if with_ref else what}]"
