"""Server-sent events as the providers frame them (the one encoder the fake upstreams share)."""

from __future__ import annotations

import json
from typing import Any


def sse(obj: Any, event: str | None = None) -> bytes:
    """One ``data:`` event (with an ``event:`` line, as Anthropic sends), JSON-encoded."""
    return (f"event: {event}\n" if event else "").encode() + b"data: " + json.dumps(obj).encode() + b"\n\n"
