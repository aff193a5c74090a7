"""Texts as sequences of *units*: the atoms that word-level methods keep or drop.

A unit is a whitespace-delimited word (one character in unspaced CJK text), widened to cover any
protected span it touches, so a URL or a JSON block is one unit. Rendering copies kept units from the original text (never
re-decoded from model tokens), so casing, Unicode and spacing stay exactly as they were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ._markup import Markup
from ._protect import find_protected

UnitKind = Literal["word", "atom", "keep"]

# Scripts written without spaces (Chinese, Japanese kana, Korean syllables when unspaced): each
# character is a unit, with any CJK/full-width punctuation that follows it, so such a text can be
# compressed rather than kept or dropped whole. Everything else: whitespace-delimited words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_CJK_PUNCT = "\u3000-\u303f\uff00-\uffef"
_WORD = re.compile(rf"[{_CJK}][{_CJK_PUNCT}]*|[^\s{_CJK}]+")
_SENT_END = re.compile(r"(?<=[.!?。！？])[\"')\]]*\s+|(?<=[。！？])(?=\S)|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")


@dataclass(frozen=True)
class Unit:
    start: int
    end: int
    kind: UnitKind  # word: free to drop; atom: protected, whole or absent; keep: must stay


@dataclass
class Segmented:
    """One document, split into units, with sentence boundaries as unit index ranges."""

    text: str
    units: list[Unit]
    sentences: list[tuple[int, int]]  # [first_unit, last_unit + 1)

    def unit_text(self, i: int) -> str:
        u = self.units[i]
        return self.text[u.start : u.end]

    def unit_texts_with_space(self) -> list[str]:
        """Each unit with its preceding whitespace: what a tokenizer sees in running text."""
        out, prev = [], 0
        for u in self.units:
            out.append(self.text[prev : u.end])
            prev = u.end
        return out

    @property
    def must_keep(self) -> list[int]:
        return [i for i, u in enumerate(self.units) if u.kind == "keep"]

    def render(self, keep: set[int] | list[int]) -> str:
        return render(self, keep)


def _merge(intervals: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    intervals.sort()
    merged: list[list] = []
    rank = {"word": 0, "atom": 1, "keep": 2}
    for s, e, k in intervals:
        if merged and s < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
            if rank[k] > rank[merged[-1][2]]:
                merged[-1][2] = k
        else:
            merged.append([s, e, k])
    return [(s, e, k) for s, e, k in merged]


def segment(
    markup: Markup | str, *, keep_structures: bool = True, extra_keep: Sequence[tuple[int, int]] = ()
) -> Segmented:
    """Split text into units. Markup keep regions and (optionally) code/JSON become keep units."""
    if isinstance(markup, str):
        markup = Markup(markup)
    text = markup.text
    intervals: list[tuple[int, int, str]] = [(m.start(), m.end(), "word") for m in _WORD.finditer(text)]
    for span in find_protected(text):
        kind = "keep" if (span.structural and keep_structures) else "atom"
        intervals.append((span.start, span.end, kind))
    for r in markup.keep:
        intervals.append((r.start, r.end, "keep"))
    for s, e in extra_keep:
        intervals.append((s, e, "keep"))
    units = [Unit(s, e, k) for s, e, k in _merge(intervals)]  # type: ignore[arg-type]
    # keep regions may contain nothing but whitespace: they still must survive
    return Segmented(text, units, _sentences(text, units))


def _sentences(text: str, units: list[Unit]) -> list[tuple[int, int]]:
    if not units:
        return []
    cuts = {m.end() for m in _SENT_END.finditer(text)}
    bounds: list[tuple[int, int]] = []
    first = 0
    for i in range(1, len(units)):
        gap_start, gap_end = units[i - 1].end, units[i].start
        big_unit = units[i - 1].kind == "keep" or units[i].kind == "keep"
        if big_unit or any(gap_start <= c <= gap_end for c in _cuts_near(cuts, gap_start, gap_end)):
            bounds.append((first, i))
            first = i
    bounds.append((first, len(units)))
    return bounds


def _cuts_near(cuts: set[int], lo: int, hi: int):
    return (c for c in range(lo, hi + 1) if c in cuts)


def render(seg: Segmented, keep: set[int] | list[int]) -> str:
    """Kept units joined by their original whitespace; gaps left by dropped units collapse to
    one space, or one newline if the dropped stretch crossed a line break, or nothing if it held
    no whitespace at all."""
    keep_sorted = sorted(set(keep))
    if not keep_sorted:
        return ""
    units, text = seg.units, seg.text
    parts: list[str] = []
    prev = -1
    for i in keep_sorted:
        u = units[i]
        if prev == -1:
            if i == 0:
                parts.append(text[: u.start])
        elif i == prev + 1:
            parts.append(text[units[prev].end : u.start])
        else:
            gap = text[units[prev].end : u.start]
            # a dropped stretch with no whitespace in it (unspaced CJK) closes up without a space
            parts.append("\n" if "\n" in gap else " " if any(c.isspace() for c in gap) else "")
        parts.append(text[u.start : u.end])
        prev = i
    if prev == len(units) - 1:
        parts.append(text[units[prev].end :])
    return "".join(parts)
