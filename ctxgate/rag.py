"""Compression for RAG pipelines: documents in, compressed documents out, same API in-process or remote.

    rag = RAGCompressor(rate=0.25)                                   # in-process (compressor.Compressor)
    rag = RAGCompressor(mode="remote", url="http://gpu-box:8340")    # a sidecar's POST /v1/compress
    result = rag.compress(docs, question="who ...?")

Moving compression to a (GPU) sidecar is a constructor argument, not a code change. Metadata never
leaves the process: remote mode sends only text and ids, and maps results back by position, so the
caller's metadata objects come back untouched. Remote mode fails open (uncompressed documents and a
logged warning that holds no document text) unless ``strict=True``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ctxgate.compressor import (
    DEFAULT_RATE,  # the engine's rate when neither rate nor target_tokens is given
    CompressRequest,
    CompressResult,
    Document,
    InvalidRequest,
)

from ._rag_remote import SidecarClient, Unavailable
from ._rag_types import DocumentLike, Mode, Order, RAGDocument, RAGResult, SidecarError, to_documents

if TYPE_CHECKING:
    from ctxgate.compressor import Compressor

log = logging.getLogger("ctxgate.rag")


class RAGCompressor:
    """Compresses retrieved documents for a question, in-process or through a ctxgate sidecar.

    ``rate`` is the fraction of tokens to keep; ``target_tokens`` an absolute budget (give at most
    one). ``order="relevance"`` returns kept documents most relevant first (when the method scores
    documents), ``"original"`` in input order. ``compressor`` lets local mode share a loaded engine.
    """

    def __init__(
        self,
        *,
        mode: Mode = "local",
        url: str | None = None,
        method: str = "auto",
        rate: float | Literal["auto"] | None = None,
        target_tokens: int | None = None,
        order: Order = "original",
        strict: bool = False,
        timeout: float = 30.0,
        tokenizer: str | None = None,
        options: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        compressor: Compressor | None = None,
    ) -> None:
        if mode not in ("local", "remote"):
            raise InvalidRequest(f"mode must be 'local' or 'remote', got {mode!r}")
        if mode == "remote" and not url:
            raise InvalidRequest("remote mode needs the sidecar's url, e.g. url='http://127.0.0.1:8340'")
        if order not in ("original", "relevance"):
            raise InvalidRequest(f"order must be 'original' or 'relevance', got {order!r}")
        if timeout <= 0:
            raise InvalidRequest(f"timeout must be positive seconds, got {timeout}")
        self.mode: Mode = mode
        self.url = url.rstrip("/") if url else None
        self.method = method
        self.rate = rate
        self.target_tokens = target_tokens
        self.order: Order = order
        self.strict = strict
        self.timeout = timeout
        self.tokenizer = tokenizer
        self.options = dict(options or {})
        self.headers = dict(headers or {})
        self._compressor = compressor
        self._sidecar = SidecarClient(url, timeout=timeout, headers=headers) if mode == "remote" else None
        CompressRequest(context=[], rate=rate, target_tokens=target_tokens)  # bad settings fail here, not per call

    # ------------------------------------------------------------------ public

    SETTINGS = ("mode", "url", "method", "rate", "target_tokens", "order", "strict", "timeout", "tokenizer", "options")

    @classmethod
    def from_settings(cls, source: Any) -> RAGCompressor:
        """One built from the same-named attributes of ``source`` (the LangChain and LlamaIndex
        plugins declare these fields themselves, as pydantic needs, and build through here)."""
        return cls(**{name: getattr(source, name) for name in cls.SETTINGS})

    def compress(
        self,
        documents: Sequence[DocumentLike],
        question: str | None = None,
        *,
        rate: float | Literal["auto"] | None = None,
        target_tokens: int | None = None,
        method: str | None = None,
    ) -> RAGResult:
        """Compress ``documents`` (strings, ``compressor.Document`` or dicts with text and metadata).

        ``rate``/``target_tokens``/``method`` override the constructor's settings for this call.
        """
        t0 = time.perf_counter()
        docs = to_documents(documents)
        request = self._request(docs, question, rate, target_tokens, method)
        if not docs:
            return self._empty(request, t0)
        if self.mode == "local":
            return self._from_engine(docs, self._engine().compress(request), request)
        try:
            response = self._remote().post(request)
        except Unavailable as exc:
            return self._fail_open(docs, request, exc, t0)
        return self._from_response(docs, request, response, t0)

    async def acompress(
        self,
        documents: Sequence[DocumentLike],
        question: str | None = None,
        *,
        rate: float | Literal["auto"] | None = None,
        target_tokens: int | None = None,
        method: str | None = None,
    ) -> RAGResult:
        """``compress`` for event loops: local work runs in a thread, remote calls use httpx's async client."""
        if self.mode == "local":
            return await asyncio.to_thread(
                self.compress, documents, question, rate=rate, target_tokens=target_tokens, method=method
            )
        t0 = time.perf_counter()
        docs = to_documents(documents)
        request = self._request(docs, question, rate, target_tokens, method)
        if not docs:
            return self._empty(request, t0)
        try:
            response = await self._remote().apost(request)
        except Unavailable as exc:
            return self._fail_open(docs, request, exc, t0)
        return self._from_response(docs, request, response, t0)

    def close(self) -> None:
        """Close the pooled HTTP connection (remote mode)."""
        if self._sidecar is not None:
            self._sidecar.close()

    def __enter__(self) -> RAGCompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- request

    def _request(
        self,
        docs: list[Document],
        question: str | None,
        rate: float | Literal["auto"] | None,
        target_tokens: int | None,
        method: str | None,
    ) -> CompressRequest:
        if rate is None and target_tokens is None:
            rate, target_tokens = self.rate, self.target_tokens
        # Validation (rate range, rate xor target_tokens) lives in CompressRequest: one rule for both modes.
        return CompressRequest(
            context=list(docs),
            question=question,
            rate=rate,
            target_tokens=target_tokens,
            method=method or self.method,
            tokenizer=self.tokenizer,
            options=dict(self.options),
        )

    def _remote(self) -> SidecarClient:
        assert self._sidecar is not None  # remote mode always has one (checked in __init__)
        return self._sidecar

    def _engine(self) -> Compressor:
        if self._compressor is None:
            from ctxgate.compressor import Compressor

            self._compressor = Compressor(tokenizer=self.tokenizer)
        return self._compressor

    # ---------------------------------------------------------------- results

    def _from_response(self, docs, request, result: CompressResult, t0: float) -> RAGResult:
        if sorted(dr.index for dr in result.documents) != list(range(len(docs))):
            return self._fail_open(
                docs, request, Unavailable(f"answered {len(result.documents)} documents for {len(docs)}"), t0
            )
        out = self._from_engine(docs, result, request)
        out.seconds = time.perf_counter() - t0  # the caller's wall time, network included
        return out

    def _from_engine(self, docs: list[Document], result: CompressResult, request: CompressRequest) -> RAGResult:
        by_index = {dr.index: dr for dr in result.documents}
        items: list[RAGDocument] = []
        for i, d in enumerate(docs):
            dr = by_index[i]
            items.append(
                RAGDocument(
                    index=i,
                    text="" if dr.dropped else dr.text,
                    original_text=d.text,
                    metadata=d.metadata,
                    id=d.id,
                    original_tokens=dr.original_tokens,
                    compressed_tokens=0 if dr.dropped else dr.compressed_tokens,
                    score=dr.score,
                    dropped=dr.dropped,
                )
            )
        kept = [x for x in items if not x.dropped]
        if self.order == "relevance":
            kept.sort(key=lambda x: (x.score is None, -(x.score or 0.0), x.index))
        before = sum(x.original_tokens for x in items)
        after = sum(x.compressed_tokens for x in kept)
        return RAGResult(
            documents=kept,
            dropped=[x for x in items if x.dropped],
            original_tokens=before,
            compressed_tokens=after,
            ratio=_ratio(before, after),
            seconds=result.seconds,
            method=result.method,
            mode=self.mode,
            budget=_budget(request, before),
            model=result.model,
            tokenizer=result.tokenizer,
            tokens_estimated=result.tokens_estimated,
            cache=result.cache,
            warnings=list(result.warnings),
        )

    def _empty(self, request: CompressRequest, t0: float) -> RAGResult:
        return RAGResult(
            documents=[],
            dropped=[],
            original_tokens=0,
            compressed_tokens=0,
            ratio=1.0,
            seconds=time.perf_counter() - t0,
            method=request.method,
            mode=self.mode,
            budget=None,
        )

    def _fail_open(self, docs: list[Document], request: CompressRequest, exc: Unavailable, t0: float) -> RAGResult:
        """Uncompressed documents and a warning, or SidecarError under ``strict``. Never logs document text."""
        if self.strict:
            raise SidecarError(
                f"ctxgate sidecar at {self.url} {exc.reason} (strict=True; "
                "strict=False returns the documents uncompressed instead)"
            ) from exc
        log.warning("ctxgate sidecar at %s %s; returning %d documents uncompressed", self.url, exc.reason, len(docs))
        from ctxgate.compressor import get_counter

        counter = get_counter("estimate")  # no tokenizer load on the fallback path; labelled as an estimate
        counts = counter.count_many([d.text for d in docs])
        items = [
            RAGDocument(
                index=i,
                text=d.text,
                original_text=d.text,
                metadata=d.metadata,
                id=d.id,
                original_tokens=n,
                compressed_tokens=n,
            )
            for i, (d, n) in enumerate(zip(docs, counts))
        ]
        total = sum(counts)
        return RAGResult(
            documents=items,
            dropped=[],
            original_tokens=total,
            compressed_tokens=total,
            ratio=1.0,
            seconds=time.perf_counter() - t0,
            method="passthrough",
            mode=self.mode,
            budget=_budget(request, total),
            tokenizer=counter.name,
            tokens_estimated=True,
            fallback=True,
            warnings=[f"sidecar {exc.reason}; documents returned uncompressed"],
        )


# ---------------------------------------------------------------------- helpers


def _ratio(before: int, after: int) -> float:
    return round(before / after, 4) if after else (float(before) if before else 1.0)


def _budget(request: CompressRequest, total: int) -> int:
    if request.target_tokens is not None:
        return request.target_tokens
    if request.auto:  # the method decides: the whole input is the only bound
        return total
    return max(1, math.ceil(total * (request.rate if request.rate is not None else DEFAULT_RATE)))


__all__ = ["DocumentLike", "Mode", "Order", "RAGCompressor", "RAGDocument", "RAGResult", "SidecarError", "to_documents"]
