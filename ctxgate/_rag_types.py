"""What the RAG API takes and returns: documents in many shapes, typed results out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ctxgate.compressor import CtxgateError, Document

Mode = Literal["local", "remote"]
Order = Literal["original", "relevance"]
DocumentLike = str | Document | Mapping[str, Any]


class SidecarError(CtxgateError):
    """The sidecar could not be reached or answered badly, and ``strict=True`` forbids failing open."""


@dataclass
class RAGDocument:
    """One input document after compression. ``metadata`` is the caller's own object, untouched."""

    index: int  # position in the input list
    text: str  # compressed text ("" when dropped)
    original_text: str
    metadata: dict[str, Any]
    id: str | None = None
    original_tokens: int = 0
    compressed_tokens: int = 0
    score: float | None = None  # relevance, when the method ranks documents (higher is more relevant)
    dropped: bool = False


@dataclass
class RAGResult:
    """Kept documents in the chosen order, the dropped ones (reported, never lost), and totals.

    Token totals are over the document texts (separators not counted). ``fallback`` is true when a
    remote sidecar was unavailable and the documents came back uncompressed.
    """

    documents: list[RAGDocument]
    dropped: list[RAGDocument]
    original_tokens: int
    compressed_tokens: int
    ratio: float  # original / compressed (4.0 means 4x smaller)
    seconds: float
    method: str
    mode: Mode
    budget: int | None  # the token budget asked for (None for an empty input)
    model: str | None = None
    tokenizer: str | None = None
    tokens_estimated: bool = False
    cache: str = "off"
    fallback: bool = False
    warnings: list[str] = field(default_factory=list)

    def info(self, doc: RAGDocument) -> dict[str, Any]:
        """What the LangChain and LlamaIndex plugins add to a kept document's metadata."""
        return {
            "index": doc.index,
            "original_tokens": doc.original_tokens,
            "compressed_tokens": doc.compressed_tokens,
            "score": doc.score,
            "method": self.method,
            "fallback": self.fallback,
        }

    @property
    def over_budget(self) -> bool:
        """True when the kept text is larger than the budget (e.g. protected spans that had to stay whole)."""
        return self.budget is not None and self.compressed_tokens > self.budget

    def text(self, separator: str = "\n\n") -> str:
        """The kept documents joined, ready to paste into a prompt."""
        return separator.join(d.text for d in self.documents)


_DOC_KEYS = frozenset({"text", "page_content", "metadata", "id"})


def to_documents(documents: Sequence[DocumentLike]) -> list[Document]:
    """Normalise strings, ``compressor.Document`` and mappings (text or page_content, metadata, id;
    any other key of a mapping joins its metadata)."""
    if isinstance(documents, (str, bytes, Mapping)):
        raise TypeError(
            f"documents must be a list of documents, not a single {type(documents).__name__}; wrap it in a list"
        )
    out: list[Document] = []
    for i, item in enumerate(documents):
        if isinstance(item, Document):
            doc = item
        elif isinstance(item, str):
            doc = Document(text=item)
        elif isinstance(item, Mapping):
            text = item.get("text", item.get("page_content"))
            meta = item.get("metadata") or {}
            if not isinstance(meta, dict):
                raise TypeError(f"documents[{i}]: metadata must be a dict, got {type(meta).__name__}")
            # any other key is metadata too ({"text": ..., "source": ...}): nothing the caller gave is lost
            extra = {k: v for k, v in item.items() if k not in _DOC_KEYS}
            meta = {**extra, **meta} if extra else meta
            doc_id = item.get("id")
            doc = Document(text=text, id=None if doc_id is None else str(doc_id), metadata=meta)  # type: ignore[arg-type]
        else:
            raise TypeError(
                f"documents[{i}] must be a str, a compressor.Document or a mapping with 'text', "
                f"got {type(item).__name__}"
            )
        if not isinstance(doc.text, str):
            raise TypeError(f"documents[{i}]: text must be str, got {type(doc.text).__name__}")
        out.append(doc)
    return out
