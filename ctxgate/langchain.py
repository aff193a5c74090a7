"""LangChain plugin: a ``BaseDocumentCompressor`` for ``ContextualCompressionRetriever`` and friends.

    from langchain_classic.retrievers import ContextualCompressionRetriever
    from ctxgate.langchain import CtxgateDocumentCompressor

    retriever = ContextualCompressionRetriever(
        base_compressor=CtxgateDocumentCompressor(rate=0.25), base_retriever=vectorstore.as_retriever())

Unlike llmlingua's integration, documents stay separate: each comes back with its own compressed
text, its id and the caller's metadata keys untouched, plus compression info under one extra key
(``ctxgate`` by default). Documents dropped entirely are left out of the list and logged (counts
and positions only); use ``ctxgate.rag.RAGCompressor`` directly for the full report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor
    from langchain_core.documents import Document as LCDocument
    from pydantic import ConfigDict, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "ctxgate.langchain needs langchain-core; install it with: pip install 'ctxgate[langchain]'"
    ) from exc

from .rag import Mode, Order, RAGCompressor, RAGResult

log = logging.getLogger("ctxgate.langchain")


class CtxgateDocumentCompressor(BaseDocumentCompressor):
    """Compresses each retrieved document for the query, in-process or through a ctxgate sidecar.

    The fields mirror ``RAGCompressor``; pass ``rag=`` to share one that is already configured.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    mode: Mode = "local"
    url: str | None = None
    method: str = "auto"
    rate: float | Literal["auto"] | None = None
    target_tokens: int | None = None
    order: Order = "original"
    strict: bool = False
    timeout: float = 30.0
    tokenizer: str | None = None
    options: dict[str, Any] = {}
    metadata_key: str = "ctxgate"
    rag: RAGCompressor | None = None

    _rag: RAGCompressor = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        self._rag = self.rag or RAGCompressor.from_settings(self)

    def compress_documents(
        self, documents: Sequence[LCDocument], query: str | None = None, callbacks: Callbacks | None = None
    ) -> Sequence[LCDocument]:
        """The kept documents, compressed, with metadata preserved and compression info added."""
        docs = _inputs(documents)
        return self._outputs(documents, self._rag.compress(docs, question=query or None))

    async def acompress_documents(
        self, documents: Sequence[LCDocument], query: str | None = None, callbacks: Callbacks | None = None
    ) -> Sequence[LCDocument]:
        docs = _inputs(documents)
        return self._outputs(documents, await self._rag.acompress(docs, question=query or None))

    def _outputs(self, documents: Sequence[LCDocument], result: RAGResult) -> list[LCDocument]:
        if result.dropped:
            log.info(
                "ctxgate dropped %d of %d documents (positions %s)",
                len(result.dropped),
                len(documents),
                [d.index for d in result.dropped],
            )
        out: list[LCDocument] = []
        for d in result.documents:
            src = documents[d.index]
            meta = dict(src.metadata)
            if self.metadata_key in meta:
                log.warning(
                    "document metadata already has a %r key; ctxgate info not added (set metadata_key)",
                    self.metadata_key,
                )
            else:
                meta[self.metadata_key] = result.info(d)
            out.append(LCDocument(page_content=d.text, metadata=meta, id=src.id))
        return out


def _inputs(documents: Sequence[LCDocument]) -> list[dict[str, Any]]:
    docs = []
    for i, d in enumerate(documents):
        content = getattr(d, "page_content", None)
        if not isinstance(content, str):
            raise TypeError(f"documents[{i}].page_content must be str, got {type(content).__name__}")
        docs.append({"text": content, "metadata": d.metadata, "id": getattr(d, "id", None)})
    return docs


__all__ = ["CtxgateDocumentCompressor"]
