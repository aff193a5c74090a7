"""Structured tool outputs: each part of a text goes to the compressor of its kind.

``split(text)`` finds the parts (JSON, NDJSON, logs, tables, code, diffs, HTML, prose) and
``crush(part_text, kind, tools)`` compresses one within ``tools.budget``; prose is left to the
text methods. The Compressor calls both; nothing here loads a model (ranking and pruning come in
through ``Tools``), so everything is plain parsing and fast.
"""

from __future__ import annotations

from ._code import crush_code, crush_diff
from ._detect import Kind, Part, kind_of, parse_json, split
from ._html import html_text
from ._json import crush as crush_json
from ._json import crush_ndjson, dumps
from ._logs import crush_log, signature
from ._rank import Relevance
from ._tables import crush_table
from ._types import Crushed, Prune, Tools


def crush(text: str, kind: Kind, tools: Tools, lang: str = "") -> Crushed | None:
    """``text`` (one part of ``kind``) within ``tools.budget``; None when it should be handled as
    prose after all (JSON that does not parse, a table that is not one, HTML: its text is prose)."""
    if kind == "json":
        return crush_json(text, tools)
    if kind == "ndjson":
        return crush_ndjson(text, tools)
    if kind == "log":
        return crush_log(text, tools)
    if kind == "table":
        return crush_table(text, tools)
    if kind == "code":
        return crush_code(text, tools, lang)
    if kind == "diff":
        return crush_diff(text, tools)
    return None


__all__ = [
    "Crushed",
    "Kind",
    "Part",
    "Prune",
    "Relevance",
    "Tools",
    "crush",
    "dumps",
    "html_text",
    "kind_of",
    "parse_json",
    "signature",
    "split",
]
