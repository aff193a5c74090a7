"""Typed request and result structures: the contract of ``Compressor.compress``.

msgspec Structs, so Litestar can take them as request bodies and the CLI can dump them as JSON
without a second schema.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ._errors import InvalidRequest
from ._options import checked_options

CacheStatus = Literal["hit", "miss", "off"]


class Document(msgspec.Struct, kw_only=True):
    """One retrieved document. ``metadata`` is carried through untouched."""

    text: str
    id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class CompressRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What to compress and how hard.

    ``rate`` is the fraction of tokens to keep (0.25 means about 4x), as in LLMLingua, or
    ``"auto"``: the method keeps what it judges relevant, whatever the ratio (methods that can
    judge: ``classifier``); the result reports the ratio achieved.
    ``target_tokens`` is an absolute budget. Give at most one; with neither, ``rate`` is 0.5.
    ``question`` makes compression question-aware; ``instruction`` is kept verbatim and never
    compressed (it is not counted in the budget).
    """

    context: str | list[str | Document]
    question: str | None = None
    instruction: str | None = None
    rate: float | Literal["auto"] | None = None
    target_tokens: int | None = None
    method: str = "auto"
    tokenizer: str | None = None
    options: dict[str, Any] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate is not None and self.target_tokens is not None:
            raise InvalidRequest("give either rate or target_tokens, not both")
        if isinstance(self.rate, str):
            if self.rate.strip().lower() != "auto":
                raise InvalidRequest(f"rate must be a number in (0, 1] or 'auto', got {self.rate!r}")
            self.rate = "auto"
        elif self.rate is not None and (isinstance(self.rate, bool) or not isinstance(self.rate, (int, float))):
            raise InvalidRequest(f"rate must be a number in (0, 1] or 'auto', got {self.rate!r}")
        elif self.rate is not None and not (0.0 < self.rate <= 1.0):
            raise InvalidRequest(f"rate must be in (0, 1] (the fraction of tokens to keep), got {self.rate}")
        if self.target_tokens is not None and self.target_tokens < 1:
            raise InvalidRequest(f"target_tokens must be a positive integer, got {self.target_tokens}")
        self.options = checked_options(self.options)
        for name, text in (("question", self.question), ("instruction", self.instruction)):
            _check_text(text, name)
        if isinstance(self.context, str):
            _check_text(self.context, "context")
        else:
            for i, item in enumerate(self.context):
                _check_text(item.text if isinstance(item, Document) else item, f"context[{i}]")

    @property
    def auto(self) -> bool:
        """True when the method decides how much to keep (``rate="auto"``)."""
        return self.rate == "auto"

    def documents(self) -> list[Document]:
        """The context as a list of Documents (a plain string is one document)."""
        if isinstance(self.context, str):
            return [Document(text=self.context)]
        out: list[Document] = []
        for i, item in enumerate(self.context):
            if isinstance(item, Document):
                out.append(item)
            elif isinstance(item, str):
                out.append(Document(text=item))
            else:
                raise InvalidRequest(f"context[{i}] must be a string or a Document, got {type(item).__name__}")
        return out

    @property
    def is_documents(self) -> bool:
        return not isinstance(self.context, str)


def _check_text(text: object, name: str) -> None:
    """Raise on a lone surrogate (U+D800-U+DFFF, from a JSON "\\ud800" escape or a bad decode): no
    Unicode text, the tokenizers raised TypeError on it and the cache key UnicodeEncodeError (second
    audit). Checked once, when the request is built; a non-string item is documents()' error."""
    if isinstance(text, str) and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidRequest(
                f"{name} holds a lone surrogate at character {exc.start}, which is not valid text"
            ) from None


class DocumentResult(msgspec.Struct, kw_only=True):
    """What became of one input document. Dropped documents are reported, never lost silently."""

    index: int
    text: str
    original_tokens: int
    compressed_tokens: int
    dropped: bool = False
    score: float | None = None
    id: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class CompressResult(msgspec.Struct, kw_only=True):
    """The compressed text plus honest accounting.

    Token counts are in ``tokenizer``; when that is only an estimate, ``tokens_estimated`` is true.
    ``ratio`` is original/compressed (4.0 means 4x smaller); ``rate`` is its inverse.
    ``kinds`` names the structured content found (``json``, ``log``, ...; prose is not listed) and
    ``expand_refs`` the stored originals that omission markers point to (``Compressor.expand``).
    """

    compressed: str
    documents: list[DocumentResult]
    original_tokens: int
    compressed_tokens: int
    ratio: float
    rate: float
    method: str
    model: str | None
    seconds: float
    cache: CacheStatus
    tokenizer: str
    tokens_estimated: bool = False
    warnings: list[str] = msgspec.field(default_factory=list)
    kinds: list[str] = msgspec.field(default_factory=list)
    expand_refs: list[str] = msgspec.field(default_factory=list)
