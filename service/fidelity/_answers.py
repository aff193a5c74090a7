"""Answers and ``usage`` out of OpenAI and Anthropic responses, JSON or SSE, and how two answers compare.

The comparison is the eval's (``compressor.agreement``: token F1 and normalized exact agreement)
plus MiniLM cosine; nothing here decides what to compress.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ctxgate.compressor import agreement


@dataclass
class Answer:
    text: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    complete: bool = False  # a finish/stop reason was seen (a broken stream is not compared)

    def prompt_tokens(self) -> int | None:
        """Prompt tokens as the upstream counted them (Anthropic: cached input tokens included)."""
        u = self.usage
        if isinstance(u.get("prompt_tokens"), int):
            return u["prompt_tokens"]
        if isinstance(u.get("input_tokens"), int):
            return u["input_tokens"] + sum(
                u.get(k) or 0 for k in ("cache_creation_input_tokens", "cache_read_input_tokens")
            )
        return None

    def total_tokens(self) -> int | None:
        u = self.usage
        if isinstance(u.get("total_tokens"), int):
            return u["total_tokens"]
        prompt = self.prompt_tokens()
        out = u.get("completion_tokens", u.get("output_tokens"))
        return prompt + out if prompt is not None and isinstance(out, int) else None


def from_json(provider: str, raw: bytes) -> Answer:
    """A non-streaming response body."""
    try:
        body = json.loads(raw)
    except ValueError:
        return Answer()
    if not isinstance(body, dict):
        return Answer()
    raw_usage = body.get("usage")
    usage: dict[str, Any] = raw_usage if isinstance(raw_usage, dict) else {}
    if provider == "anthropic":
        parts = [
            b.get("text", "") if b.get("type") == "text" else json.dumps(b.get("input"), sort_keys=True)
            for b in body.get("content") or []
            if isinstance(b, dict) and b.get("type") in ("text", "tool_use")
        ]
        return Answer("".join(parts), usage, body.get("type") == "message")
    choices = body.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return Answer(usage=usage)
    msg = choices[0].get("message") or {}
    text = msg.get("content") or ""
    if not isinstance(text, str):  # content parts
        text = "".join(p.get("text", "") for p in text if isinstance(p, dict))
    calls = msg.get("tool_calls") or []
    text += "".join(json.dumps((c.get("function") or {}), sort_keys=True) for c in calls if isinstance(c, dict))
    return Answer(text, usage, True)


def _events(raw: bytes):
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                try:
                    obj = json.loads(data)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    yield obj


def from_sse(provider: str, raw: bytes) -> Answer:
    """The text deltas of a teed SSE stream joined, and its usage (OpenAI: only with include_usage)."""
    ans = Answer()
    text: list[str] = []
    for ev in _events(raw):
        if "error" in ev and ev.get("type") in ("error", None):
            return Answer()  # the stream broke: nothing to compare
        if provider == "anthropic":
            kind = ev.get("type")
            if kind == "message_start":
                ans.usage.update((ev.get("message") or {}).get("usage") or {})
            elif kind == "content_block_delta":
                delta = ev.get("delta") or {}
                text.append(delta.get("text") or delta.get("partial_json") or "")
            elif kind == "message_delta":
                ans.usage.update(ev.get("usage") or {})
            elif kind == "message_stop":
                ans.complete = True
            continue
        if isinstance(ev.get("usage"), dict):
            ans.usage = ev["usage"]
        for choice in ev.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta") or {}
                text.append(delta.get("content") or "")
                for call in delta.get("tool_calls") or []:
                    text.append(((call or {}).get("function") or {}).get("arguments") or "")
                if choice.get("finish_reason"):
                    ans.complete = True
    ans.text = "".join(text)
    return ans


def agreement_scores(compressed: str, full: str) -> tuple[float, float]:
    """(token F1, exact agreement) of the compressed-prompt answer with the full-prompt answer."""
    return agreement(compressed, full, "fidelity")
