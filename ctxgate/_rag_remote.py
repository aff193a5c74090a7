"""The HTTP side of remote mode: one client for a sidecar's ``POST /v1/compress`` (RAG form).

Every transport quirk lives here, the way httpx maps httpcore's exceptions in one place: timeouts,
refused connections, 5xx and nonsense answers become ``Unavailable`` (fail-open territory); a
rejected request (400/413/422) is ``InvalidRequest``, as the same request would be in-process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ctxgate.compressor import CompressRequest, CompressResult, InvalidRequest

if TYPE_CHECKING:
    import httpx

COMPRESS_PATH = "/v1/compress"
_CLIENT_ERRORS = (400, 413, 422)


class Unavailable(Exception):
    """The sidecar is down, slow, overloaded or answered nonsense. ``reason`` never holds document text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SidecarClient:
    """Posts CompressRequests to a sidecar; the sync client is pooled, the async one is per call."""

    def __init__(self, url: str, *, timeout: float, headers: Mapping[str, str] | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        self._client: httpx.Client | None = None

    def post(self, request: CompressRequest) -> CompressResult:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        with _map_errors():
            response = self._client.post(self.url + COMPRESS_PATH, json=body(request))
        return self._decode(response)

    async def apost(self, request: CompressRequest) -> CompressResult:
        import httpx

        # A client per call: an AsyncClient is bound to the event loop that first used it.
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            with _map_errors():
                response = await client.post(self.url + COMPRESS_PATH, json=body(request))
        return self._decode(response)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _decode(self, response: httpx.Response) -> CompressResult:
        if response.status_code in _CLIENT_ERRORS:
            raise InvalidRequest(
                f"the sidecar at {self.url} rejected the request (HTTP {response.status_code}): {_detail(response)}"
            )
        if response.status_code != 200:
            raise Unavailable(f"answered HTTP {response.status_code}")
        try:
            return msgspec.json.decode(response.content, type=CompressResult)
        except msgspec.DecodeError as exc:
            # The body may echo document text: keep it out of the message.
            raise Unavailable("sent a response that is not a CompressResult") from exc


def body(request: CompressRequest) -> dict[str, Any]:
    """The sidecar's RAG form. Only text and ids travel; metadata stays in the caller's process."""
    out: dict[str, Any] = {
        "context": [{"text": d.text, **({"id": d.id} if d.id is not None else {})} for d in request.documents()],
        "method": request.method,
    }
    for key in ("question", "rate", "target_tokens", "tokenizer"):
        value = getattr(request, key)
        if value is not None:
            out[key] = value
    if request.options:
        out["options"] = request.options
    return out


@contextlib.contextmanager
def _map_errors() -> Iterator[None]:
    import httpx

    try:
        yield
    except httpx.TimeoutException as exc:
        raise Unavailable(f"timed out ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise Unavailable(f"is unreachable ({type(exc).__name__})") from exc


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict):
        for key in ("detail", "error", "message"):
            if data.get(key):
                return str(data[key])[:300]
    return str(data)[:200]
