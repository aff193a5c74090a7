"""The transport to the upstream LLM API: header hygiene, streaming pass-through, error mapping.

Every upstream quirk lives here:
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
import json
import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar
from urllib.parse import quote_from_bytes

import aiohttp
import yarl
from litestar import Request, Response
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse

from ._access import path_of
from ._errors import error_body, sse_error
from ._metrics import Metrics

log = logging.getLogger("ctxgate.service")
T = TypeVar("T")
_QUERY_SAFE = "!$&'()*+,;=:@/?%~-._"

_HOP = frozenset(
    {
        "host",
        "content-length",
        "content-encoding",  # the body sent is ours (re-encoded JSON); encoded bodies are refused (415)
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "accept-encoding",
        "expect",
    }
)
_HOP_RESPONSE = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authenticate",
        "proxy-connection",
        "date",
        "server",
    }
)


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
    await _hangup(request.receive)


def forward_headers(headers) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k.lower() not in _HOP and not k.lower().startswith("x-ctxgate-")}
    out["accept-encoding"] = "identity"
    return out


def response_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower() not in _HOP_RESPONSE}


def _env_proxy(base: str) -> str | None:
    """The proxy the environment names for ``base`` (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY), or None
    when there is none or NO_PROXY covers its host."""
    url = yarl.URL(base)
    if not url.host or urllib.request.proxy_bypass(url.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(url.scheme) or proxies.get("all")


def _buffered(content: aiohttp.StreamReader) -> bytes:
    """What had arrived when the connection broke: aiohttp's readers raise the stored error before
    returning buffered bytes, which would drop the last events an upstream sent before breaking.
    (A private method; the mid-stream reset test pins the behaviour.)"""
    try:
        return content._read_nowait(-1) if getattr(content, "_buffer", None) else b""
    except Exception:
        return b""


def _finish(resp: aiohttp.ClientResponse) -> None:
    """A fully read response returns its connection to the pool; anything else closes it."""
    if resp.content.at_eof():
        resp.release()
    else:
        resp.close()


class _RelayASGI(ASGIStreamingResponse):
    """Litestar's streaming response with a leaner body loop: per response one disconnect watcher
    that cancels this task, instead of an anyio task group running the stream in a second task.
    Every chunk of every stream goes through here (about a tenth less CPU per relayed stream,
    measured at 100 streams)."""

    __slots__ = ()

    async def send_body(self, send, receive) -> None:
        task = asyncio.current_task()
        assert task is not None

        def hung_up(f: asyncio.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                task.cancel()

        watcher = asyncio.ensure_future(_hangup(receive))
        watcher.add_done_callback(hung_up)
        chunks = self.iterator
        try:
            async for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            watcher.remove_done_callback(hung_up)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not (watcher.done() and not watcher.cancelled()):
                raise
            task.uncancel()  # the client hung up: the response just ends
        finally:
            watcher.remove_done_callback(hung_up)
            watcher.cancel()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()  # closes the upstream connection now, not at GC


async def _hangup(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Relay(Stream):
    """The response for a relayed upstream stream (see ``_RelayASGI``)."""

    def to_asgi_response(self, *args, headers=None, **kwargs) -> ASGIResponse:
        return _RelayASGI(
            iterator=self.iterator,  # type: ignore[arg-type]  # always an async iterator here status_code=self.status_code, media_type=self.media_type,
            headers={**(headers or {}), **self.headers},
            content_length=0,
        )


class _Waits:
    """The upstream read timeout ("seconds between bytes"), for every response in flight, kept by one
    periodic task. aiohttp's own ``sock_read`` re-arms a timer on every chunk received (about 5% of
    the relay's CPU at 100 streams), and it also counts time spent waiting on a slow *client* as
    upstream silence. Here only the waits for upstream bytes count."""

    __slots__ = ("timeout", "_waiting", "_task")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._waiting: dict[aiohttp.StreamReader, float] = {}  # reader -> when its current wait began
        self._task: asyncio.Task | None = None

    async def read(self, reader: aiohttp.StreamReader) -> bytes:
        """The next bytes (b"" at the end), or TimeoutError after ``timeout`` s of silence."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._sweep())
        self._waiting[reader] = time.monotonic()
        try:
            return await reader.readany()
        finally:
            self._waiting.pop(reader, None)

    async def _sweep(self) -> None:
        tick = min(1.0, self.timeout / 4)
        while True:
            await asyncio.sleep(tick)
            limit = time.monotonic() - self.timeout
            for reader, since in list(self._waiting.items()):
                if since < limit:
                    self._waiting.pop(reader, None)
                    reader.set_exception(TimeoutError())  # wakes the read, which raises

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Upstream:
    """One ``aiohttp.ClientSession`` for the lifetime of the app (opened in the lifespan).

    aiohttp, not httpx, on this path: every SSE chunk of every stream crosses it, and aiohttp parses
    HTTP in C and hands out pooled connections in O(1). Measured on a 2-core VM (``ctxgate bench
    proxy``, 100 LLM-paced streams), the added time to first byte fell from 254 ms p50 with httpx
    (16 pools) to about 20 ms. The fidelity shadow calls, off the client's path, still use httpx.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        openai_base: str | None,
        anthropic_base: str | None,
        metrics: Metrics,
        *,
        timeout: float = 600.0,
        env_proxy: bool = False,
    ) -> None:
        self.session = session
        self.timeout = timeout
        self._waits = _Waits(timeout)
        self.bases = {"openai": openai_base, "anthropic": anthropic_base}
        self.metrics = metrics
        self._urls: dict[tuple[str, str], str] = {}
        # HTTP(S)_PROXY / NO_PROXY, resolved once per upstream (the hosts are fixed)
        self._proxies = {p: _env_proxy(b) if env_proxy and b else None for p, b in self.bases.items()}

    @classmethod
    def open(
        cls,
        *,
        timeout: float,
        connect_timeout: float,
        max_connections: int,
        env_proxy: bool,
        openai_base: str | None,
        anthropic_base: str | None,
        metrics: Metrics,
    ) -> Upstream:
        """``timeout`` bounds each wait for upstream bytes (headers or the next chunk), not the whole
        stream: a long answer that keeps streaming never times out. ``env_proxy`` honours
        HTTP(S)_PROXY/NO_PROXY; aiohttp's own ``trust_env`` is off, because it also reads ~/.netrc on
        every request (a file read per request) and would clash with the client's Authorization."""
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),  # reads: see _Waits
            auto_decompress=False,  # relay bytes as sent; content-encoding passes through with them
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # a proxy keeps no cookies between clients
            skip_auto_headers=("User-Agent", "Content-Type"),  # the client's own, or none
            max_line_size=65536,
            max_field_size=65536,  # aiohttp's 8 KiB default would 502 on long upstream headers
        )
        return cls(session, openai_base, anthropic_base, metrics, timeout=timeout, env_proxy=env_proxy)

    async def close(self) -> None:
        self._waits.close()
        await self.session.close()

    def url(self, provider: str, path: str) -> str | None:
        """The fixed upstream URL for a route: the configured base plus a fixed path."""
        url = self._urls.get((provider, path))
        if url is None:
            base = self.bases[provider]
            if base is None:
                return None
            url = self._urls[(provider, path)] = base + path
        return url

    async def _open(
        self, request: Request, route: str, provider: str, path: str, method: str, content: bytes | None
    ) -> aiohttp.ClientResponse | Response:
        """The upstream response with its headers read, or the provider-format error to return."""
        url = self.url(provider, path)
        if url is None:
            return self.error(provider, 502, f"no {provider} upstream is configured for {path_of(request)}")
        query = request.scope.get("query_string", b"")
        # the query is the only part a request contributes; re-quoted (valid %XX kept), so it can
        # never add a fragment, a space or a line break to the request line
        target = yarl.URL(url + "?" + quote_from_bytes(query, safe=_QUERY_SAFE), encoded=True) if query else url
        t0 = time.perf_counter()
        try:
            resp = await until_disconnect(
                request, self._send(provider, method, target, content, forward_headers(request.headers))
            )
        except TimeoutError:
            self.metrics.upstream_errors.labels(route, "timeout").inc()
            return self.error(provider, 504, "the upstream API timed out")
        except aiohttp.ClientError as exc:
            self.metrics.upstream_errors.labels(route, "connect").inc()
            log.warning("upstream %s unreachable: %s", provider, type(exc).__name__)
            return self.error(provider, 502, f"the upstream API is unreachable ({type(exc).__name__})")
        self.metrics.upstream_seconds.labels(route).observe(time.perf_counter() - t0)
        return resp

    async def forward(
        self,
        request: Request,
        *,
        route: str,
        provider: str,
        path: str,
        method: str = "POST",
        content: bytes | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        resp = await self._open(request, route, provider, path, method, content)
        if isinstance(resp, Response):
            return resp
        headers_out = response_headers(resp)
        headers_out.update(extra_headers or {})
        # the upstream's content-type goes in as a header, verbatim: given as media_type, Litestar
        # appends "; charset=utf-8" to every text/* type, even one that already has a charset
        media = headers_out.get("content-type")
        if (media or "").startswith("text/event-stream"):
            return Relay(
                self._relay(resp, route, provider), status_code=resp.status, headers=headers_out, media_type=media
            )
        return await self._whole(request, resp, route, provider, headers_out)

    async def fetch(
        self,
        request: Request,
        *,
        route: str,
        provider: str,
        path: str,
        content: bytes,
        extra_headers: dict[str, str] | None = None,
    ) -> Response:
        """Like ``forward``, but a stream is read whole before it is returned (as one body with the
        stream's content type), so that the caller can look at it. Like ``forward``'s JSON bodies,
        the read is bounded only by the upstream's own response (its ``max_tokens``)."""
        resp = await self._open(request, route, provider, path, "POST", content)
        if isinstance(resp, Response):
            return resp
        headers_out = response_headers(resp)
        headers_out.update(extra_headers or {})
        return await self._whole(request, resp, route, provider, headers_out)

    async def _whole(
        self, request: Request, resp: aiohttp.ClientResponse, route: str, provider: str, headers_out: dict[str, str]
    ) -> Response:
        try:
            body = await until_disconnect(request, self._read_all(resp.content))
        except TimeoutError:
            self.metrics.upstream_errors.labels(route, "timeout").inc()
            return self.error(provider, 504, "the upstream API timed out while sending its response")
        except aiohttp.ClientError as exc:
            self.metrics.upstream_errors.labels(route, "reset").inc()
            return self.error(provider, 502, f"the upstream API broke off its response ({type(exc).__name__})")
        finally:
            _finish(resp)
        return Response(body, status_code=resp.status, headers=headers_out, media_type=headers_out.get("content-type"))

    async def get_json(self, provider: str, path: str, headers, *, max_bytes: int = 4 * 1024 * 1024) -> Any:
        """GET an upstream path with the client's own headers (its credentials); the decoded JSON
        body of a 200, else None. Bounded in size; raises on network errors."""
        url = self.url(provider, path)
        if url is None:
            return None
        resp = await self._send(provider, "GET", url, None, forward_headers(headers))
        try:
            if resp.status != 200:
                return None
            raw = await resp.content.read(max_bytes + 1)
            if len(raw) > max_bytes:
                return None
            return json.loads(raw)
        except ValueError:
            return None
        finally:
            _finish(resp)

    async def _send(
        self, provider: str, method: str, url: str | yarl.URL, content: bytes | None, headers: dict[str, str]
    ) -> aiohttp.ClientResponse:
        async with asyncio.timeout(self.timeout):  # until the response headers
            return await self.session.request(
                method, url, data=content, headers=headers, allow_redirects=False, proxy=self._proxies[provider]
            )

    async def _read_all(self, reader: aiohttp.StreamReader) -> bytes:
        parts = []
        while chunk := await self._waits.read(reader):
            parts.append(chunk)
        return b"".join(parts)

    async def _relay(self, resp: aiohttp.ClientResponse, route: str, provider: str) -> AsyncIterator[bytes]:
        """Chunks as they arrive, untouched; a provider-format error event if upstream breaks mid-way."""
        tail = b""
        try:
            reader, read = resp.content, self._waits.read
            while chunk := await read(reader):
                tail = chunk[-2:]
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            rest = _buffered(resp.content)
            if rest:
                tail = rest[-2:]
                yield rest
            kind = "timeout" if isinstance(exc, TimeoutError) else "reset"
            self.metrics.upstream_errors.labels(route, kind).inc()
            yield sse_error(provider, f"the upstream stream broke off ({type(exc).__name__})", tail)
        finally:
            # on client disconnect we are inside a cancelled scope; closing the connection is what
            # tells upstream to stop generating
            _finish(resp)

    @staticmethod
    def error(provider: str, status: int, message: str, param: str | None = None) -> Response:
        return Response(error_body(provider, status, message, param), status_code=status, media_type="application/json")
