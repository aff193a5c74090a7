"""Context windows: how many tokens a model takes, prompt and answer together.

A prompt whose size plus its ``max_tokens`` would overflow the window is rejected by the upstream;
with ``policy.fit_context`` the proxy compresses it harder instead (``Rewriter.rewrite``). The size
comes from, first match wins:

1. ``context_windows`` in the config: model glob -> tokens (``"my-vllm-*": 4096``);
2. what the upstream's own ``GET /v1/models`` reports for the model (vLLM's ``max_model_len``,
   OpenRouter's and LM Studio's ``context_length``, others' ``context_window`` /
   ``max_input_tokens``), fetched with the client's own credentials at most once per ``TTL`` per
   upstream, waiting at most ``WAIT`` seconds (then the table answers and the next request knows);
3. the built-in table below, for common hosted models.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("ctxgate.windows")

TTL = 600.0
WAIT = 1.0
FETCH_TIMEOUT = 10.0  # the background fetch gives up after this
MAX_REPORTED = 4096  # models remembered per upstream (a hostile upstream cannot grow memory)
REPORTED_FIELDS = (
    "max_model_len",
    "context_length",
    "context_window",
    "max_context_length",
    "max_input_tokens",
    "input_token_limit",
)

# Ordered: the first glob that matches wins, so specific names come before families.
BUILTIN: tuple[tuple[str, int], ...] = (
    ("gpt-4.1*", 1_047_576),
    ("gpt-5*", 400_000),
    ("gpt-4o*", 128_000),
    ("gpt-4-turbo*", 128_000),
    ("gpt-4-1106*", 128_000),
    ("gpt-4-0125*", 128_000),
    ("gpt-4-32k*", 32_768),
    ("gpt-4", 8_192),
    ("gpt-4-0613", 8_192),
    ("gpt-3.5-turbo-instruct*", 4_096),
    ("gpt-3.5-turbo*", 16_385),
    ("o1-mini*", 128_000),
    ("o1*", 200_000),
    ("o3*", 200_000),
    ("o4-mini*", 200_000),
    ("claude-*", 200_000),
    ("gemini-1.5-pro*", 2_097_152),
    ("gemini-*", 1_048_576),
    ("smollm2*", 8_192),
    ("qwen2.5*", 32_768),
)


@dataclass(frozen=True)
class Window:
    tokens: int
    source: str  # config | upstream | builtin


def builtin_window(model: str) -> int | None:
    m = (model or "").strip().lower()
    for glob, n in BUILTIN:
        if fnmatch.fnmatchcase(m, glob):
            return n
    return None


def reported_windows(payload: Any) -> dict[str, int]:
    """model id -> window from a ``/v1/models`` body; anything malformed is skipped."""
    out: dict[str, int] = {}
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return out
    for entry in data[:MAX_REPORTED]:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        for name in REPORTED_FIELDS:
            value = entry.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1 << 31:
                out[entry["id"][:256]] = value
                break
    return out


class Windows:
    """The window of a request's model (see the module docstring). One per app."""

    def __init__(self, overrides: dict[str, int], upstream, *, ttl: float = TTL, wait: float = WAIT) -> None:
        self.overrides = list(overrides.items())
        self.upstream = upstream
        self.ttl = ttl
        self.wait = wait
        self._reported: dict[str, dict[str, int]] = {}
        self._fetched: dict[str, float] = {}
        self._pending: dict[str, asyncio.Task] = {}

    async def window(self, provider: str, model: str, headers) -> Window | None:
        for glob, configured in self.overrides:
            if fnmatch.fnmatchcase(model or "", glob):
                return Window(configured, "config")
        await self._refresh(provider, headers)
        n = self._reported.get(provider, {}).get(model)
        if n is not None:
            return Window(n, "upstream")
        n = builtin_window(model)
        return Window(n, "builtin") if n is not None else None

    async def _refresh(self, provider: str, headers) -> None:
        task = self._pending.get(provider)
        if task is None:
            last = self._fetched.get(provider)
            if last is not None and time.monotonic() - last < self.ttl:
                return
            self._fetched[provider] = time.monotonic()
            task = self._pending[provider] = asyncio.create_task(self._fetch(provider, headers))
            task.add_done_callback(lambda _t: self._pending.pop(provider, None))
        try:
            await asyncio.wait_for(asyncio.shield(task), self.wait)
        except TimeoutError:
            pass  # the table answers now; the fetch still lands for later requests

    async def _fetch(self, provider: str, headers) -> None:
        path = "/v1/models" if provider == "anthropic" else "/models"
        try:
            async with asyncio.timeout(FETCH_TIMEOUT):
                body = await self.upstream.get_json(provider, path, headers)
        except Exception as exc:  # an upstream without /v1/models is normal
            log.debug("no model list from the %s upstream: %s", provider, type(exc).__name__)
            return
        if body is not None:
            self._reported[provider] = reported_windows(body)


def request_reserve(route: str, body: dict[str, Any]) -> int:
    """The answer tokens a request reserves: its max_tokens (0 when it names none)."""
    keys = ("max_tokens",) if route == "messages" else ("max_completion_tokens", "max_tokens")
    for k in keys:
        v = body.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return 0


__all__ = ["BUILTIN", "Window", "Windows", "builtin_window", "reported_windows", "request_reserve"]
