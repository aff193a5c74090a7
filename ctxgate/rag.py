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
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from compressor import CompressRequest, CompressResult, CtxgateError, Document, InvalidRequest

if TYPE_CHECKING:
    import httpx

    from compressor import Compressor

log = logging.getLogger("ctxgate.rag")

Mode = Literal["local", "remote"]
Order = Literal["original", "relevance"]
DocumentLike = str | Document | Mapping[str, Any]

COMPRESS_PATH = "/v1/compress"
# The request itself is wrong: the same request would raise InvalidRequest in-process, so never fail open.
_CLIENT_ERRORS = (400, 413, 422)


class SidecarError(CtxgateError):
    """The sidecar could not be reached or answered badly, and ``strict=True`` forbids failing open."""


@dataclass
class RAGDocument:
    """One input document after compression. ``metadata`` is the caller's own object, untouched."""

    index: int                  # position in the input list
    text: str                   # compressed text ("" when dropped)
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
    ratio: float                # original / compressed (4.0 means 4x smaller)
    seconds: float
    method: str
    mode: Mode
    budget: int | None          # the token budget asked for (None for an empty input)
    model: str | None = None
    tokenizer: str | None = None
    tokens_estimated: bool = False
    cache: str = "off"
    fallback: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def over_budget(self) -> bool:
        """True when the kept text is larger than the budget (e.g. protected spans that had to stay whole)."""
        return self.budget is not None and self.compressed_tokens > self.budget

    def text(self, separator: str = "\n\n") -> str:
        """The kept documents joined, ready to paste into a prompt."""
        return separator.join(d.text for d in self.documents)


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
        rate: float | None = None,
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
        self._client: httpx.Client | None = None
        CompressRequest(context=[], rate=rate, target_tokens=target_tokens)  # bad settings fail here, not per call

    # ------------------------------------------------------------------ public

    def compress(
        self,
        documents: Sequence[DocumentLike],
        question: str | None = None,
        *,
        rate: float | None = None,
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
            response = self._post_sync(request)
        except _Unavailable as exc:
            return self._fail_open(docs, request, exc, t0)
        return self._from_response(docs, request, response, t0)

    async def acompress(
        self,
        documents: Sequence[DocumentLike],
        question: str | None = None,
        *,
        rate: float | None = None,
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
            response = await self._post_async(request)
        except _Unavailable as exc:
            return self._fail_open(docs, request, exc, t0)
        return self._from_response(docs, request, response, t0)

    def close(self) -> None:
        """Close the pooled HTTP connection (remote mode)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RAGCompressor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- request

    def _request(self, docs, question, rate, target_tokens, method) -> CompressRequest:
        if rate is None and target_tokens is None:
            rate, target_tokens = self.rate, self.target_tokens
        context = [d if isinstance(d, Document) else Document(text=d) for d in docs]
        # Validation (rate range, rate xor target_tokens) lives in CompressRequest: one rule for both modes.
        return CompressRequest(
            context=context, question=question, rate=rate, target_tokens=target_tokens,
            method=method or self.method, tokenizer=self.tokenizer, options=dict(self.options),
        )

    def _engine(self) -> Compressor:
        if self._compressor is None:
            from compressor import Compressor

            self._compressor = Compressor(tokenizer=self.tokenizer)
        return self._compressor

    def _body(self, request: CompressRequest) -> dict[str, Any]:
        """The sidecar's RAG form. Only text and ids travel; metadata stays in this process."""
        body: dict[str, Any] = {
            "context": [{"text": d.text, **({"id": d.id} if d.id is not None else {})} for d in request.documents()],
            "method": request.method,
        }
        for key in ("question", "rate", "target_tokens", "tokenizer"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.options:
            body["options"] = request.options
        return body

    # ------------------------------------------------------------------- HTTP

    def _post_sync(self, request: CompressRequest) -> CompressResult:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        with _map_http_errors():
            response = self._client.post(self.url + COMPRESS_PATH, json=self._body(request))
        return _decode(response, self.url)

    async def _post_async(self, request: CompressRequest) -> CompressResult:
        import httpx

        # A client per call: an AsyncClient is bound to the event loop that first used it.
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            with _map_http_errors():
                response = await client.post(self.url + COMPRESS_PATH, json=self._body(request))
        return _decode(response, self.url)

    # ---------------------------------------------------------------- results

    def _from_response(self, docs, request, result: CompressResult, t0: float) -> RAGResult:
        if sorted(dr.index for dr in result.documents) != list(range(len(docs))):
            return self._fail_open(docs, request, _Unavailable(
                f"answered {len(result.documents)} documents for {len(docs)}"), t0)
        out = self._from_engine(docs, result, request)
        out.seconds = time.perf_counter() - t0  # the caller's wall time, network included
        return out

    def _from_engine(self, docs: list[Document], result: CompressResult, request: CompressRequest) -> RAGResult:
        by_index = {dr.index: dr for dr in result.documents}
        items: list[RAGDocument] = []
        for i, d in enumerate(docs):
            dr = by_index[i]
            items.append(RAGDocument(
                index=i, text="" if dr.dropped else dr.text, original_text=d.text, metadata=d.metadata, id=d.id,
                original_tokens=dr.original_tokens, compressed_tokens=0 if dr.dropped else dr.compressed_tokens,
                score=dr.score, dropped=dr.dropped,
            ))
        kept = [x for x in items if not x.dropped]
        if self.order == "relevance":
            kept.sort(key=lambda x: (x.score is None, -(x.score or 0.0), x.index))
        before = sum(x.original_tokens for x in items)
        after = sum(x.compressed_tokens for x in kept)
        return RAGResult(
            documents=kept, dropped=[x for x in items if x.dropped], original_tokens=before,
            compressed_tokens=after, ratio=_ratio(before, after), seconds=result.seconds, method=result.method,
            mode=self.mode, budget=_budget(request, before), model=result.model, tokenizer=result.tokenizer,
            tokens_estimated=result.tokens_estimated, cache=result.cache, warnings=list(result.warnings),
        )

    def _empty(self, request: CompressRequest, t0: float) -> RAGResult:
        return RAGResult(documents=[], dropped=[], original_tokens=0, compressed_tokens=0, ratio=1.0,
                         seconds=time.perf_counter() - t0, method=request.method, mode=self.mode, budget=None)

    def _fail_open(self, docs: list[Document], request: CompressRequest, exc: _Unavailable, t0: float) -> RAGResult:
        """Uncompressed documents and a warning, or SidecarError under ``strict``. Never logs document text."""
        if self.strict:
            raise SidecarError(f"ctxgate sidecar at {self.url} {exc.reason} (strict=True; "
                               "strict=False returns the documents uncompressed instead)") from exc
        log.warning("ctxgate sidecar at %s %s; returning %d documents uncompressed",
                    self.url, exc.reason, len(docs))
        from compressor import get_counter

        counter = get_counter("estimate")  # no tokenizer load on the fallback path; labelled as an estimate
        counts = counter.count_many([d.text for d in docs])
        items = [RAGDocument(index=i, text=d.text, original_text=d.text, metadata=d.metadata, id=d.id,
                             original_tokens=n, compressed_tokens=n) for i, (d, n) in enumerate(zip(docs, counts))]
        total = sum(counts)
        return RAGResult(
            documents=items, dropped=[], original_tokens=total, compressed_tokens=total, ratio=1.0,
            seconds=time.perf_counter() - t0, method="passthrough", mode=self.mode, budget=_budget(request, total),
            tokenizer=counter.name, tokens_estimated=True, fallback=True,
            warnings=[f"sidecar {exc.reason}; documents returned uncompressed"],
        )


# ---------------------------------------------------------------------- helpers


def to_documents(documents: Sequence[DocumentLike]) -> list[Document]:
    """Normalise strings, ``compressor.Document`` and mappings (text or page_content, metadata, id)."""
    if isinstance(documents, (str, bytes, Mapping)):
        raise TypeError("documents must be a list of documents, not a single "
                        f"{type(documents).__name__}; wrap it in a list")
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
            doc_id = item.get("id")
            doc = Document(text=text, id=None if doc_id is None else str(doc_id), metadata=meta)  # type: ignore[arg-type]
        else:
            raise TypeError(f"documents[{i}] must be a str, a compressor.Document or a mapping with 'text', "
                            f"got {type(item).__name__}")
        if not isinstance(doc.text, str):
            raise TypeError(f"documents[{i}]: text must be str, got {type(doc.text).__name__}")
        out.append(doc)
    return out


def _ratio(before: int, after: int) -> float:
    return round(before / after, 4) if after else (float(before) if before else 1.0)


def _budget(request: CompressRequest, total: int) -> int:
    if request.target_tokens is not None:
        return request.target_tokens
    from compressor._compressor import DEFAULT_RATE

    return max(1, math.ceil(total * (request.rate if request.rate is not None else DEFAULT_RATE)))


class _Unavailable(Exception):
    """Internal: the sidecar is down, slow, overloaded or answered nonsense (fail-open territory)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@contextlib.contextmanager
def _map_http_errors() -> Iterator[None]:
    """Turn httpx transport failures into _Unavailable (one place, like httpx's own exception map)."""
    import httpx

    try:
        yield
    except httpx.TimeoutException as exc:
        raise _Unavailable(f"timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise _Unavailable(f"is unreachable ({type(exc).__name__})") from exc


def _decode(response: httpx.Response, url: str | None) -> CompressResult:
    import msgspec

    if response.status_code in _CLIENT_ERRORS:
        raise InvalidRequest(f"the sidecar at {url} rejected the request (HTTP {response.status_code}): "
                             f"{_detail(response)}")
    if response.status_code != 200:
        raise _Unavailable(f"answered HTTP {response.status_code}")
    try:
        return msgspec.json.decode(response.content, type=CompressResult)
    except msgspec.DecodeError as exc:
        # The body may echo document text: keep it out of the message.
        raise _Unavailable("sent a response that is not a CompressResult") from exc


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:200]


__all__ = ["DocumentLike", "RAGCompressor", "RAGDocument", "RAGResult", "SidecarError", "to_documents"]
