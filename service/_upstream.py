"""The transport to the upstream LLM API: header hygiene, streaming pass-through, error mapping.

Every upstream quirk lives here (like httpx's ``map_httpcore_exceptions``):
- hop-by-hop headers, ``host`` and ``x-ctxgate-*`` never cross; credentials (``authorization``,
  ``x-api-key``) and ``anthropic-*``/``openai-*`` headers pass through untouched and are never
  logged or cached;
- we ask for ``accept-encoding: identity`` so SSE chunks can be relayed as they arrive, and relay
  bytes raw (a ``content-encoding`` the upstream insists on is passed through with them);
- transport failures become provider-format errors: timeout 504, unreachable or reset 502; a
  stream that breaks after it began ends with a provider-format SSE error event;
- a client that disconnects cancels the upstream request (the connection is closed).
The URL is always the configured base plus a fixed path; the request only contributes its query.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import anyio
import httpx
from litestar import Request, Response
from litestar.response import Stream

from ._errors import error_body, sse_error
from ._metrics import Metrics

log = logging.getLogger("ctxgate.service")
T = TypeVar("T")

_HOP = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
                  "upgrade", "proxy-authorization", "proxy-authenticate", "proxy-connection", "accept-encoding",
                  "expect"})
_HOP_RESPONSE = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
                           "upgrade", "proxy-authenticate", "proxy-connection", "date", "server"})


class ClientGone(Exception):
    """The client disconnected while we waited on upstream."""


async def until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the client disconnects first; then cancel it and raise ClientGone."""
    task = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    raise ClientGone


async def _disconnected(request: Request) -> None:
    # the body has been read: the next ASGI message is http.disconnect (or an empty keep-alive read)
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def forward_headers(headers) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in _HOP and not k.lower().startswith("x-ctxgate-")}
    out["accept-encoding"] = "identity"
    return out


def response_headers(resp: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_RESPONSE}


class Upstream:
    """Pooled ``httpx.AsyncClient`` shards for the lifetime of the app (opened in the lifespan); each
    request takes the next shard, so no pool holds more than its share of the streams in flight."""

    def __init__(self, clients: list[httpx.AsyncClient], openai_base: str | None, anthropic_base: str | None,
                 metrics: Metrics) -> None:
        if not clients:
            raise ValueError("Upstream needs at least one client")
        self._clients = itertools.cycle(clients)
        self.bases = {"openai": openai_base, "anthropic": anthropic_base}
        self.metrics = metrics
        self._urls: dict[tuple[str, str], httpx.URL] = {}

    @property
    def client(self) -> httpx.AsyncClient:
        return next(self._clients)

    def url(self, provider: str, path: str) -> httpx.URL | None:
        """The fixed upstream URL for a route (parsed once: httpx's URL parser is costly per request)."""
        url = self._urls.get((provider, path))
        if url is None:
            base = self.bases[provider]
            if base is None:
                return None
            url = self._urls[(provider, path)] = httpx.URL(base + path)
        return url

    async def forward(self, request: Request, *, route: str, provider: str, path: str, method: str = "POST",
                      content: bytes | None = None, extra_headers: dict[str, str] | None = None) -> Response:
        url = self.url(provider, path)
        if url is None:
            return self.error(provider, 502, f"no {provider} upstream is configured for {request.url.path}")
        headers = forward_headers(request.headers)
        query = request.scope.get("query_string", b"")
        client = self.client
        req = client.build_request(method, url.copy_with(query=query) if query else url, content=content,
                                   headers=headers)
        t0 = time.perf_counter()
        try:
            resp = await until_disconnect(request, client.send(req, stream=True))
        except httpx.TimeoutException:
            self.metrics.upstream_errors.labels(route, "timeout").inc()
            return self.error(provider, 504, "the upstream API timed out")
        except httpx.TransportError as exc:
            self.metrics.upstream_errors.labels(route, "connect").inc()
            log.warning("upstream %s unreachable: %s", provider, type(exc).__name__)
            return self.error(provider, 502, f"the upstream API is unreachable ({type(exc).__name__})")
        self.metrics.upstream_seconds.labels(route).observe(time.perf_counter() - t0)
        headers_out = response_headers(resp)
        headers_out.update(extra_headers or {})
        media = headers_out.pop("content-type", None)
        if (media or "").startswith("text/event-stream"):
            return Stream(self._relay(resp, route, provider), status_code=resp.status_code, headers=headers_out,
                          media_type=media)
        try:
            body = await until_disconnect(request, self._read(resp))
        except httpx.TimeoutException:
            self.metrics.upstream_errors.labels(route, "timeout").inc()
            return self.error(provider, 504, "the upstream API timed out while sending its response")
        except httpx.TransportError as exc:
            self.metrics.upstream_errors.labels(route, "reset").inc()
            return self.error(provider, 502, f"the upstream API broke off its response ({type(exc).__name__})")
        finally:
            await resp.aclose()
        return Response(body, status_code=resp.status_code, headers=headers_out, media_type=media)

    @staticmethod
    async def _read(resp: httpx.Response) -> bytes:
        return b"".join([chunk async for chunk in resp.aiter_raw()])

    async def _relay(self, resp: httpx.Response, route: str, provider: str) -> AsyncIterator[bytes]:
        """Chunks as they arrive, untouched; a provider-format error event if upstream breaks mid-way."""
        tail = b""
        try:
            async for chunk in resp.aiter_raw():
                if chunk:
                    tail = chunk[-2:]
                    yield chunk
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "reset"
            self.metrics.upstream_errors.labels(route, kind).inc()
            yield sse_error(provider, f"the upstream stream broke off ({type(exc).__name__})", tail)
        finally:
            # shielded: on client disconnect we are inside a cancelled scope, and closing is what
            # tells upstream to stop generating
            with anyio.CancelScope(shield=True):
                await resp.aclose()

    @staticmethod
    def error(provider: str, status: int, message: str, param: str | None = None) -> Response:
        return Response(error_body(provider, status, message, param), status_code=status,
                        media_type="application/json")
