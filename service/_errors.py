"""Errors in the provider's own format, so SDK clients raise their usual exception types.

OpenAI:    {"error": {"message", "type", "param", "code"}}
Anthropic: {"type": "error", "error": {"type", "message"}}
Routes other than /v1/messages answer in the OpenAI format (headroom and LiteLLM do the same).
"""

from __future__ import annotations

import msgspec

from ctxgate.compressor import ConfigError, CtxgateError, InputTooLarge, InvalidRequest, ModelError, ModelNotPrepared

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ProxyError(Exception):
    """Raised by handlers; rendered by ``error_response`` in the route's provider format."""

    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


# the engine's errors are HTTP-agnostic; their status is decided here, most specific class first
_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InputTooLarge, 413),
    (InvalidRequest, 400),
    (ConfigError, 500),
    (ModelNotPrepared, 503),
    (ModelError, 500),
    (CtxgateError, 500),
)


def status_for(exc: BaseException) -> int:
    """The HTTP status of an exception raised on purpose: ProxyError's own, else by class."""
    if isinstance(exc, ProxyError):
        return exc.status
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def provider_for(path: str) -> str:
    return "anthropic" if path.rstrip("/").endswith("/messages") else "openai"


# an error quotes what the client sent (an unknown key, a bad header value): bounded here, once for
# every error, so a 1 MB key is not echoed back as a 1 MB (or, in message and param, 2 MB) body
MAX_MESSAGE_CHARS = 600
MAX_PARAM_CHARS = 120


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 15] + f"... ({len(text)} chars)"


def error_payload(provider: str, status: int, message: str, param: str | None = None) -> dict:
    message = _bounded(message, MAX_MESSAGE_CHARS)
    param = _bounded(param, MAX_PARAM_CHARS) if param is not None else None
    if provider == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error_body(provider: str, status: int, message: str, param: str | None = None) -> bytes:
    return msgspec.json.encode(error_payload(provider, status, message, param))


def sse_error(provider: str, message: str, previous_tail: bytes) -> bytes:
    """An SSE error event to end a stream that broke mid-way; first terminates a half-sent event."""
    lead = (
        b""
        if previous_tail.endswith(b"\n\n") or not previous_tail
        else (b"\n" if previous_tail.endswith(b"\n") else b"\n\n")
    )
    payload = msgspec.json.encode(error_payload(provider, 502, message))
    if provider == "anthropic":
        return lead + b"event: error\ndata: " + payload + b"\n\n"
    return lead + b"data: " + payload + b"\n\n"
