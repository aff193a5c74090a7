"""Code and diffs: only whole regions are cut, never tokens inside a line, and every cut is marked.

Code first loses comment-only lines and runs of blank lines; if that is not enough, the bodies
of the functions least relevant to the question, each replaced by one marker line at the body's
indentation (signatures stay, so the model still sees the whole API). Diffs keep every file and
hunk header and every changed line; context lines far from a change go first, then whole hunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ._types import Crushed, Tools

_PY_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+\w+")
_BRACE_DEF = re.compile(
    r"^(\s*)(?:(?:export|public|private|protected|static|async|final|override|pub|inline|virtual|"
    r"def|func|fn|function)\s+)*[\w<>\[\]:*&, ]*?\b\w+\s*\([^;]*\)\s*(?:->\s*[^{]+|:\s*[\w<>\[\]., ]+)?"
    r"(?:throws [\w., ]+)?\s*\{\s*$"
)
# a line longer than this is never a signature (the pattern's lazy scan over it cost seconds per
# line of 40k spaces); the scan budget of _functions
MAX_SIGNATURE_CHARS = 400
SCAN_LINES_PER_LINE = 8
SCAN_FLOOR = 20_000
_CONTROL = re.compile(r"^\s*(?:if|for|while|switch|catch|else|do|try|return)\b")
_COMMENT = {"py": re.compile(r"^\s*#(?!!)"), "c": re.compile(r"^\s*(?://|/\*.*\*/\s*$|\*(?!/)|/\*)")}


@dataclass
class _Region:
    start: int  # first body line
    end: int  # one past the last body line
    indent: str
    name_line: int


def _style(lines: list[str], lang: str) -> str:
    if lang in ("py", "python", "python3", "pyi"):
        return "py"
    if lang:
        return "c"
    py = sum(bool(_PY_DEF.match(ln)) or ln.rstrip().endswith(":") for ln in lines)
    brace = sum(ln.rstrip().endswith(("{", "}", ";")) for ln in lines)
    return "py" if py > brace else "c"


def _functions(lines: list[str], style: str) -> list[_Region]:
    """Function bodies of 3+ lines. Each signature scans forward for its body's end; a budget of
    SCAN_LINES_PER_LINE x the line count (plus a floor) caps those scans, so thousands of unclosed
    "function f() {" lines cost linear time, not a scan to the end each (what is found before the
    budget runs out is kept; real code spends a few lines of scan per line)."""
    out: list[_Region] = []
    budget = SCAN_LINES_PER_LINE * len(lines) + SCAN_FLOOR
    i = 0
    while i < len(lines) and budget > 0:
        ln = lines[i]
        if len(ln) > MAX_SIGNATURE_CHARS:
            i += 1
            continue
        if style == "py":
            m = _PY_DEF.match(ln)
            if m:
                indent = len(m.group(1).expandtabs())
                j = i + 1
                while j < len(lines) and not lines[j - 1].rstrip().endswith(":"):
                    j += 1  # a signature over several lines
                k = j
                while k < len(lines) and (not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > indent):
                    k += 1
                budget -= k - i
                while k > j and not lines[k - 1].strip():
                    k -= 1
                if k - j >= 3:
                    body_indent = lines[j][: len(lines[j]) - len(lines[j].lstrip())]
                    out.append(_Region(j, k, body_indent, i))
                    i = k
                    continue
        else:
            m = _BRACE_DEF.match(ln)
            if m and not _CONTROL.match(ln):
                depth, k = 0, i
                while k < len(lines):
                    depth += lines[k].count("{") - lines[k].count("}")
                    if depth <= 0 and k > i:
                        break
                    k += 1
                budget -= k - i
                if k < len(lines) and k - i - 1 >= 3:
                    body_indent = m.group(1) + "    "
                    out.append(_Region(i + 1, k, body_indent, i))
                    i = k
                    continue
        i += 1
    return out


def crush_code(text: str, tools: Tools, lang: str = "") -> Crushed:
    lines = text.split("\n")
    style = _style(lines, lang)
    comment = _COMMENT[style]
    mark = "# …" if style == "py" else "// …"
    # 1. comment-only lines and blank runs
    keep: list[str] = []
    cuts = 0
    blank = False
    in_comment_run = False
    for ln in lines:
        if comment.match(ln) and not ln.strip().startswith(("#!", "# -*-")):
            if not in_comment_run:
                keep.append(ln[: len(ln) - len(ln.lstrip())] + mark)
                cuts += 1
                in_comment_run = True
            continue
        in_comment_run = False
        if not ln.strip():
            if blank:
                continue
            blank = True
        else:
            blank = False
        keep.append(ln)
    out = "\n".join(keep)
    n = tools.counter.count(out)
    if n <= tools.budget:
        return Crushed(out, cuts)
    # 2. bodies of the least relevant functions
    lines = keep
    regions = _functions(lines, style)
    if not regions:
        return Crushed(out, cuts, [f"code without function bodies to cut ({n} tokens) is over the budget"])
    texts = ["\n".join(lines[r.name_line : r.end]) for r in regions]
    scores = tools.relevance.score(texts) if tools.relevance.active else [0.0] * len(regions)
    costs = tools.counter.count_many(["\n".join(lines[r.start : r.end]) for r in regions])
    order = sorted(range(len(regions)), key=lambda k: (scores[k], -costs[k], k))  # least relevant, biggest first
    cut: set[int] = set()
    for k in order:
        if n <= tools.budget:
            break
        cut.add(k)
        n -= costs[k] - 8
    res: list[str] = []
    pos = 0
    for k, r in enumerate(regions):
        if k not in cut:
            continue
        res.extend(lines[pos : r.start])
        note = f"{r.end - r.start} lines omitted"
        res.append(
            f"{r.indent}{'...  # ' if style == 'py' else '/* '}{tools.marker(note)}{'' if style == 'py' else ' */'}"
        )
        pos = r.end
    res.extend(lines[pos:])
    out = "\n".join(res)
    return Crushed(out, cuts + len(cut))


_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+\d+(?:,\d+)? @@")
_FILE = re.compile(
    r"^(?:diff --git |index [0-9a-f]|--- |\+\+\+ |new file mode|deleted file mode|similarity index|rename )"
)
DIFF_CONTEXT = 1


def crush_diff(text: str, tools: Tools) -> Crushed:
    lines = text.split("\n")
    changed = [i for i, ln in enumerate(lines) if ln[:1] in "+-" and not _FILE.match(ln)]
    near = {j for i in changed for j in range(i - DIFF_CONTEXT, i + DIFF_CONTEXT + 1)}
    keep = [i for i, ln in enumerate(lines) if _FILE.match(ln) or _HUNK.match(ln) or i in near]
    out, gone = _render_diff(lines, set(keep), tools)
    if tools.counter.count(out) <= tools.budget:
        return Crushed(out, gone)
    # whole hunks, least relevant first
    hunks: list[tuple[int, int]] = []
    for i, ln in enumerate(lines):
        if _HUNK.match(ln):
            hunks.append((i, i))
        elif hunks and not _FILE.match(ln):
            hunks[-1] = (hunks[-1][0], i)
    texts = ["\n".join(lines[a : b + 1]) for a, b in hunks]
    scores = tools.relevance.score(texts) if tools.relevance.active else [0.0] * len(hunks)
    kept = set(keep)
    n = tools.counter.count(out)
    costs = tools.counter.count_many(texts)
    for k in sorted(range(len(hunks)), key=lambda k: (scores[k], -costs[k], k)):
        if n <= tools.budget:
            break
        a, b = hunks[k]
        kept.difference_update(range(a + 1, b + 1))
        n -= costs[k]
    out, gone = _render_diff(lines, kept, tools)
    return Crushed(out, gone)


def _render_diff(lines: list[str], keep: set[int], tools: Tools) -> tuple[str, int]:
    out: list[str] = []
    gap = gone = 0
    for i, ln in enumerate(lines):
        if i in keep:
            if gap:
                out.append(f" … {gap} unchanged or omitted lines")
                gone += gap
                gap = 0
            out.append(ln)
        else:
            gap += 1
    if gap:
        out.append(f" … {gap} unchanged or omitted lines")
        gone += gap
    if gone and tools.ref:
        out.append(f" [{tools.marker('diff shortened')}]")
    return "\n".join(out), gone
