"""Tables (CSV, TSV, Markdown): the header plus the rows that matter, rows copied verbatim.

Rows are ranked by relevance to the question (without one: a spread sample), with rows that
look like failures always kept. The header and, for Markdown, the rule line stay, so every kept
row keeps its column alignment; one line after the table says how many rows were left out.
"""

from __future__ import annotations

from ._detect import table_flavour
from ._json import _BAD
from ._rank import _bitrev
from ._types import Crushed, Tools


def crush_table(text: str, tools: Tools) -> Crushed | None:
    if table_flavour(text) is None:
        return None
    lines = text.split("\n")
    body_idx = [i for i, ln in enumerate(lines) if ln.strip()]
    if len(body_idx) < 3:
        return None
    flavour = table_flavour(text)
    head = body_idx[:2] if flavour == "md" else body_idx[:1]
    rows = body_idx[len(head) :]
    costs = dict(zip(rows, (c + 1 for c in tools.counter.count_many([lines[i] for i in rows]))))
    spent = sum(c + 1 for c in tools.counter.count_many([lines[i] for i in head])) + 10
    rel = tools.relevance
    if rel.active:
        scores = rel.score([lines[i] for i in rows])
        order = [rows[k] for k in sorted(range(len(rows)), key=lambda k: (-scores[k], k))]
    else:
        bits = max(1, (len(rows) - 1).bit_length())
        order = [rows[k] for k in sorted(range(len(rows)), key=lambda k: (_bitrev(k, bits), k))]
    keep: set[int] = set()
    for i in [r for r in rows if _BAD.search(lines[r])] + order:
        if i not in keep and spent + costs[i] <= tools.budget:
            keep.add(i)
            spent += costs[i]
    out = [lines[i] for i in head] + [lines[i] for i in rows if i in keep]
    gone = len(rows) - len(keep)
    if gone:
        out.append(f"({tools.marker(f'… {gone} of {len(rows)} rows omitted')})")
    return Crushed("\n".join(out), gone)
