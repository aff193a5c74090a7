"""``<ctxgate:keep>`` and ``<ctxgate:compress rate=...>`` markup: parsed, validated, stripped.

Markup lets a caller override the defaults inside one text: keep a span verbatim, or compress
only the marked spans (at their own rate). Tags never reach the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._errors import InvalidRequest

# A tag is scanned piece by piece from each "<ctxgate:" / "</ctxgate:" (found by a literal-prefix search),
# with patterns that each match in one pass and never look past MAX_TAG_CHARS: parsing is linear in the
# text, whatever it holds. (One pattern with a repeated attribute group, the earlier design, backtracked
# exponentially on an unclosed tag with many attributes: 25 s for 24 of them.)
MAX_TAG_CHARS = 256
# more regions than any hand-written markup needs; each one is a unit the methods must place
MAX_REGIONS = 256
_TAG_START = re.compile(r"<(/?)ctxgate:", re.I)
_KIND = re.compile(r"(keep|compress)\b", re.I)
_ATTR = re.compile(r"\s+([a-z_]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)'|([^\s>]+))", re.I)
_END = re.compile(r"\s*(/?)>")


def has_markup(text: str) -> bool:
    """Whether ``text`` holds anything that looks like a ctxgate tag (any case)."""
    return _TAG_START.search(text) is not None


@dataclass(frozen=True)
class Region:
    start: int
    end: int
    rate: float | None = None


@dataclass(frozen=True)
class Markup:
    """Text with the tags removed, plus where the keep / compress regions are in that text."""

    text: str
    keep: list[Region] = field(default_factory=list)
    compress: list[Region] = field(default_factory=list)

    @property
    def has_compress_regions(self) -> bool:
        return bool(self.compress)


@dataclass(frozen=True)
class _Tag:
    start: int
    end: int
    kind: str  # keep | compress
    closing: bool
    attrs: list[tuple[str, str]]


def _scan_tag(text: str, m: re.Match[str], last_gt: int) -> _Tag | None:
    """The tag starting at ``m`` (a "<ctxgate:" or "</ctxgate:"), parsed within MAX_TAG_CHARS.

    None when it is no tag at all: no ``>`` follows anywhere, so it is plain text that mentions
    ctxgate. A ``>`` later on with no valid tag before it is malformed markup: InvalidRequest."""
    at = m.start()
    limit = min(len(text), at + MAX_TAG_CHARS)
    kind = _KIND.match(text, m.end(), limit)
    if kind is not None:
        pos = kind.end()
        attrs: list[tuple[str, str]] = []
        while (a := _ATTR.match(text, pos, limit)) is not None:
            value = a.group(2) if a.group(2) is not None else a.group(3) if a.group(3) is not None else a.group(4)
            attrs.append((a.group(1).lower(), value))
            pos = a.end()
        end = _END.match(text, pos, limit)
        if end is not None:
            if end.group(1):
                raise InvalidRequest(f"<ctxgate:{kind.group(1).lower()}/> at offset {at}: the tag must wrap text")
            return _Tag(at, end.end(), kind.group(1).lower(), bool(m.group(1)), attrs)
    if last_gt < at:
        return None
    raise InvalidRequest(f"malformed ctxgate tag at offset {at}: {_quote(text[at : at + 40])}")


def _quote(snippet: str) -> str:
    """A client's text in an error message: printable ASCII only, so it is safe in any log or header."""
    return repr(snippet.encode("ascii", "backslashreplace").decode("ascii"))


def _rate(tag: _Tag) -> float | None:
    rate = None
    for key, value in tag.attrs:
        if key != "rate":
            raise InvalidRequest(
                f"<ctxgate:compress> at offset {tag.start}: unknown attribute {_quote(key)} (only rate)"
            )
        try:
            rate = float(value)
        except ValueError:
            raise InvalidRequest(
                f"<ctxgate:compress> at offset {tag.start}: rate={_quote(value[:40])} is not a number"
            ) from None
        if not 0.0 < rate <= 1.0:
            raise InvalidRequest(f"<ctxgate:compress> at offset {tag.start}: rate must be in (0, 1], got {rate}")
    return rate


def parse_markup(text: str) -> Markup:
    """Strip ctxgate tags; raise InvalidRequest naming the offset of an unbalanced, nested or
    malformed tag, or when a text holds more than MAX_REGIONS regions. Linear in ``len(text)``."""
    if not has_markup(text):
        return Markup(text)
    out: list[str] = []
    keep: list[Region] = []
    compress: list[Region] = []
    pos = 0
    open_tag: tuple[_Tag, int, float | None] | None = None  # tag, out_start, rate
    out_len = 0
    last_gt = text.rfind(">")
    for m in _TAG_START.finditer(text):
        if m.start() < pos:
            continue  # inside a tag already parsed (a quoted attribute value)
        tag = _scan_tag(text, m, last_gt)
        if tag is None:
            continue
        chunk = text[pos : tag.start]
        out.append(chunk)
        out_len += len(chunk)
        pos = tag.end
        if not tag.closing:
            if open_tag is not None:
                raise InvalidRequest(f"<ctxgate:{tag.kind}> at offset {tag.start}: ctxgate tags cannot be nested")
            if tag.kind == "keep" and tag.attrs:
                raise InvalidRequest(f"<ctxgate:keep> at offset {tag.start} takes no attributes")
            open_tag = (tag, out_len, _rate(tag) if tag.kind == "compress" else None)
            continue
        if open_tag is None or open_tag[0].kind != tag.kind:
            raise InvalidRequest(f"</ctxgate:{tag.kind}> at offset {tag.start} has no matching opening tag")
        if tag.attrs:
            raise InvalidRequest(f"</ctxgate:{tag.kind}> at offset {tag.start}: a closing tag takes no attributes")
        regions = keep if tag.kind == "keep" else compress
        regions.append(Region(open_tag[1], out_len, open_tag[2]))
        if len(keep) + len(compress) > MAX_REGIONS:
            raise InvalidRequest(f"more than {MAX_REGIONS} ctxgate regions in one text (at offset {tag.start})")
        open_tag = None
    if open_tag is not None:
        raise InvalidRequest(f"<ctxgate:{open_tag[0].kind}> at offset {open_tag[0].start} is never closed")
    out.append(text[pos:])
    return Markup("".join(out), keep, compress)


def strip_markup(text: str) -> str:
    """The text without ctxgate tags (validates them too)."""
    return parse_markup(text).text
