"""The HTTP server: uvicorn with the connection limits a gateway needs (as nginx's
``client_header_timeout`` / ``large_client_header_buffers`` and Envoy's ``request_headers_timeout`` /
``max_request_headers_kb``).

uvicorn's httptools protocol has none of them: a connection that never sends a byte, or sends half
a header block, or half a body, is kept forever, and 200,000 headers (2.4 MB) were accepted and
forwarded upstream. ``limited_protocol`` subclasses it with:
- a header timer from connection (or request) start until the header block is complete (408, close);
- a body timer, re-armed by every chunk, while a request body is still arriving (408, close);
- a cap on header bytes (counted as they arrive, so one 5 MB header is refused before it is buffered)
  and on header lines: 431, close.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._config import Limits, Settings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class _HeadersTooLarge(Exception):
    pass


class _LimitedProtocol(HttpToolsProtocol):
    limits: Limits = Limits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._in_headers = False
        self._header_bytes = 0
        self._header_count = 0

    # ------------------------------------------------------------ timers

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_headers or (self.cycle is None or not self.cycle.response_started):
            self._refuse(408, "the request was not received in time")
        else:
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()

    # ------------------------------------------------------------ protocol

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._in_headers = True  # the first request's headers are due now
        self._arm(self.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_headers:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge):
                self._refuse(431, "too many or too large request headers")
                return
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserError:
            self.send_400_response("Invalid HTTP request received.")
            return
        except httptools.HttpParserUpgrade:  # as uvicorn does it (the sidecar serves no websockets)
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if self._in_headers and self._header_bytes > self.limits.max_header_bytes and not self.transport.is_closing():
            self._refuse(431, "too many or too large request headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        self._header_count = 0
        self._header_size = 0
        if self._timer is None:
            self._arm(self.limits.header_timeout)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._header_size += len(name) + len(value) + 4
        if self._header_count > self.limits.max_headers or self._header_size > self.limits.max_header_bytes:
            raise _HeadersTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0
        self._disarm()
        super().on_headers_complete()
        if not self.transport.is_closing():
            self._arm(self.limits.body_timeout)  # disarmed by on_message_complete

    def on_body(self, body: bytes) -> None:
        self._arm(self.limits.body_timeout)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the next request


class WorkerProtocol(_LimitedProtocol):
    """The protocol of ``serve --workers`` processes: importable by name, so uvicorn's spawned workers
    can unpickle it; each worker sets ``limits`` from its settings before it accepts a connection."""


def limited_protocol(limits: Limits) -> type[HttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` with these limits."""
    return type("LimitedHttpToolsProtocol", (_LimitedProtocol,), {"limits": limits})


def server_config(
    app: Any, settings: Settings, *, host: str | None = None, port: int | None = None, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn settings for the sidecar: its limits, no access log (prompts never belong in logs)."""
    lim = settings.limits
    http = kwargs.pop("http", None) or limited_protocol(lim)
    return uvicorn.Config(
        app,
        host=host or settings.host,
        port=port or settings.port,
        http=http,
        timeout_keep_alive=max(1, round(lim.keepalive_timeout)),
        limit_concurrency=lim.max_concurrency,
        access_log=False,
        **kwargs,
    )
