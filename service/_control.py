"""Per-request control: ``x-ctxgate-*`` headers and the ``ctxgate: {...}`` body field.

The body field wins over headers (it is closer to the request). Bad values are the client's error:
400, naming the header or field. The body field is removed before the request is forwarded.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from ctxgate.compressor import METHOD_NAMES

from ._config import Policy
from ._errors import ProxyError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
_METHODS = ("auto", *METHOD_NAMES)


class Control(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What a request may ask for. ``question`` picks the question for question-aware compression."""

    bypass: bool = False
    rate: float | Literal["auto"] | None = None
    method: str | None = None
    question: str | None = None
    min_tokens: int | None = None
    fit_context: bool | None = None

    def apply(self, policy: Policy) -> Policy:
        changes: dict[str, Any] = {}
        if self.rate is not None:
            changes["rate"] = self.rate
        if self.method is not None:
            changes["method"] = self.method
        if self.min_tokens is not None:
            changes["min_tokens"] = self.min_tokens
        if self.fit_context is not None:
            changes["fit_context"] = self.fit_context
        return msgspec.structs.replace(policy, **changes) if changes else policy


def _rate(value: Any, name: str) -> float | Literal["auto"]:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, bool):  # float(True) is 1.0: a flag is no rate
        raise ProxyError(
            400, f"{name} must be a number in (0, 1] (the fraction of tokens to keep), got {value!r}", param=name
        )
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ProxyError(
            400, f"{name} must be a number in (0, 1] (the fraction of tokens to keep), got {value!r}", param=name
        ) from None
    if not 0.0 < rate <= 1.0:
        raise ProxyError(400, f"{name} must be in (0, 1] (the fraction of tokens to keep), got {value!r}", param=name)
    return rate


def _method(value: Any, name: str) -> str:
    method = str(value).strip().lower() if isinstance(value, str) else None
    if method is None or method not in _METHODS:
        raise ProxyError(400, f"{name} must be one of {', '.join(_METHODS)}; got {value!r}", param=name)
    return method


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ProxyError(400, f"{name} must be 1 or 0 (true/false), got {value!r}", param=name)


def parse_control(headers, body: dict[str, Any] | None, *, prefix: str = "ctxgate") -> Control:
    """Headers, then the body's ``ctxgate`` field (popped from ``body``); errors name its keys as
    ``prefix.key`` (``/v1/compress``'s messages form calls the same object ``config``)."""
    ctl = Control()
    if (v := headers.get("x-ctxgate-bypass")) is not None:
        ctl.bypass = _flag(v, "x-ctxgate-bypass")
    if (v := headers.get("x-ctxgate-rate")) is not None:
        ctl.rate = _rate(v, "x-ctxgate-rate")
    if (v := headers.get("x-ctxgate-method")) is not None:
        ctl.method = _method(v, "x-ctxgate-method")
    if (v := headers.get("x-ctxgate-question")) is not None:
        ctl.question = v
    if (v := headers.get("x-ctxgate-fit-context")) is not None:
        ctl.fit_context = _flag(v, "x-ctxgate-fit-context")
    field = body.pop("ctxgate", None) if body is not None else None
    if field is None:
        return ctl
    if not isinstance(field, dict):
        raise ProxyError(400, 'the ctxgate field must be an object, e.g. {"rate": 0.3}', param="ctxgate")
    known = set(Control.__struct_fields__)
    for key, value in field.items():
        name = f"{prefix}.{key}"
        if key not in known:
            raise ProxyError(400, f"unknown field {name}; known: {', '.join(sorted(known))}", param=name)
        if value is None:
            continue
        if key == "bypass":
            ctl.bypass = _flag(value, name)
        elif key == "rate":
            ctl.rate = _rate(value, name)
        elif key == "method":
            ctl.method = _method(value, name)
        elif key == "question":
            if not isinstance(value, str):
                raise ProxyError(400, f"{name} must be a string", param=name)
            ctl.question = value
        elif key == "fit_context":
            ctl.fit_context = _flag(value, name)
        elif key == "min_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ProxyError(400, f"{name} must be a non-negative integer, got {value!r}", param=name)
            ctl.min_tokens = value
    return ctl
