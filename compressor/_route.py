"""Routing by content kind: structured parts of a document are compressed by their own compressor
before the text method sees the rest.

A tool result that is JSON, a log, a table or code is compressed within its share of the budget
(the request's rate applied to the part) and then stands in the document as a keep span: the
text method counts it and leaves it alone. HTML becomes its readable text, which is prose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ._markup import Markup, Region
from ._tokens import TokenCounter
from .structured import Tools, crush, html_text, split

MIN_PART_TOKENS = 64  # smaller structured parts stay what they were: protected text
AUTO_STRUCTURED_RATE = 0.2  # rate "auto": structured parts aim at 5x, anomalies and errors on top


@dataclass
class Routed:
    """``markup``: the document with its structured parts replaced; ``keep``: their spans in it;
    ``final``: nothing is left for the text method."""

    markup: Markup
    keep: list[tuple[int, int]]
    final: bool
    kinds: list[str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def route(
    markup: Markup,
    tokens: int,
    rate: float | None,
    counter: TokenCounter,
    tools_for: Callable[[str, int], Tools],
    stored: Callable[[str, str], None],
) -> Routed | None:
    """``tokens``: the document's size; ``rate``: the share of each part to keep (None: ``rate: auto``). ``tools_for(text, budget)``
    builds a part's tools; ``stored(ref, text)`` keeps an original that markers point to.
    None when the document has no structured part worth routing."""
    text = markup.text
    parts = split(text)
    if all(p.kind == "prose" for p in parts):
        return None
    out: list[str] = []
    keep: list[tuple[int, int]] = []
    shift: list[tuple[int, int, int]] = []  # (old_start, old_end, new_start) of parts copied unchanged
    routed = Routed(markup, [], False)
    pos = 0
    for p in parts:
        chunk = text[p.start : p.end]
        new: str | None = None
        if p.kind != "prose" and not _touches_keep(markup, p.start, p.end):
            n = tokens if len(chunk) == len(text) else counter.count(chunk)
            if n >= MIN_PART_TOKENS:
                if p.kind == "html":
                    new = html_text(chunk)
                    routed.kinds.append("html")
                else:
                    budget = max(1, math.ceil(n * (AUTO_STRUCTURED_RATE if rate is None else rate)))
                    tools = tools_for(chunk, budget)
                    crushed = crush(chunk, p.kind, tools, p.lang)
                    if crushed is not None:
                        new = crushed.text
                        routed.kinds.append(p.kind)
                        routed.warnings.extend(crushed.warnings)
                        if crushed.omitted and tools.ref:
                            stored(tools.ref, chunk)
                            routed.refs.append(tools.ref)
        start = pos
        if new is None:
            out.append(chunk)
            shift.append((p.start, p.end, start))
            pos += len(chunk)
        else:
            out.append(new)
            pos += len(new)
            if p.kind != "html":
                keep.append((start, pos))
    if not routed.kinds:
        return None
    new_text = "".join(out)
    keeps = [
        Region(ns + (k.start - s), ns + (k.end - s))
        for k in markup.keep
        for s, e, ns in shift
        if s <= k.start and k.end <= e
    ]
    routed.markup = Markup(new_text, keep=keeps)
    routed.keep = keep
    routed.final = bool(keep) and all(not new_text[a:b].strip() for a, b in _gaps(keep, len(new_text)))
    return routed


def _touches_keep(markup: Markup, start: int, end: int) -> bool:
    return any(k.start < end and start < k.end for k in markup.keep)


def _gaps(spans: list[tuple[int, int]], n: int) -> list[tuple[int, int]]:
    out, pos = [], 0
    for s, e in sorted(spans):
        out.append((pos, s))
        pos = e
    out.append((pos, n))
    return out
