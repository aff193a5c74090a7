"""Reversible compression: the ``ctxgate_expand`` tool, offered to the model and answered by the proxy.

When a request carries tool outputs whose omission markers name a stored original
(``ctxgate_expand ref=...``), the proxy adds one tool definition. If the model calls it (and
only it), the proxy answers the call from the cache and sends the conversation upstream again;
the client sees one ordinary response, streamed or not. The client's own tools and tool calls
are never changed: a response that also calls a client tool goes back as it is.

This module only speaks the two wire formats (OpenAI chat, Anthropic messages); the originals
come from ``Compressor.expand``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

NAME = "ctxgate_expand"
MAX_ROUNDS = 3  # expansions answered per client request; then the response goes back as is
MAX_RESULT_CHARS = 200_000  # an expanded original is cut here (the model asked for it, not for unbounded text)
# all expansions of one client request together: each follow-up resends the conversation, so fifty
# calls for one ref grew the upstream bodies to 4 MB (second audit)
MAX_TOTAL_CHARS = 400_000
UNKNOWN = "That ref is unknown or has expired from the cache; answer from the shortened output."
DESCRIPTION = (
    "Return the full original of a tool output that was shortened. Shortened outputs say "
    "'ctxgate_expand ref=<ref>' where items, lines or rows were omitted; call this with that ref "
    "when the omitted content is needed to answer."
)
_PARAMS = {
    "type": "object",
    "properties": {"ref": {"type": "string", "description": "the ref from the marker"}},
    "required": ["ref"],
}


@dataclass
class Call:
    id: str
    ref: str


@dataclass
class Turn:
    """What the model said in one upstream response: our calls, whether it also called a client
    tool, and its message in the form the follow-up request needs."""

    calls: list[Call]
    other_tools: bool
    message: dict[str, Any] | None


def _ours(tool: Any) -> bool:
    """A tool definition named ctxgate_expand, in either API's form."""
    return isinstance(tool, dict) and NAME in (tool.get("name"), (tool.get("function") or {}).get("name"))


def offer(route: str, body: dict[str, Any]) -> bool:
    """Add the tool to ``body``; False (nothing added) when the client forbids tools or owns the name."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return False
    choice = body.get("tool_choice")
    if choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none") or "functions" in body:
        return False
    if any(_ours(t) for t in tools or []):
        return False
    if route == "messages":
        tool = {"name": NAME, "description": DESCRIPTION, "input_schema": _PARAMS}
    else:
        tool = {"type": "function", "function": {"name": NAME, "description": DESCRIPTION, "parameters": _PARAMS}}
    body["tools"] = [*(tools or []), tool]
    return True


def read_turn(route: str, raw: bytes, streamed: bool) -> Turn | None:
    """The model's turn in a 200 response body (JSON, or a whole SSE stream); None if unreadable."""
    try:
        if route == "messages":
            msg = _anthropic_stream(raw) if streamed else json.loads(raw)
            return _anthropic_turn(msg)
        msg = _openai_stream(raw) if streamed else (json.loads(raw).get("choices") or [{}])[0].get("message")
        return _openai_turn(msg)
    except (ValueError, AttributeError, TypeError, KeyError, IndexError):
        return None


def _ref(arguments: Any) -> str:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            return ""
    ref = arguments.get("ref") if isinstance(arguments, dict) else None
    return ref if isinstance(ref, str) else ""


def _openai_turn(msg: dict[str, Any] | None) -> Turn | None:
    if not isinstance(msg, dict):
        return None
    calls, other = [], False
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        if fn.get("name") == NAME:
            calls.append(Call(str(tc.get("id") or ""), _ref(fn.get("arguments"))))
        else:
            other = True
    message = {"role": "assistant", "content": msg.get("content"), "tool_calls": msg.get("tool_calls") or []}
    return Turn(calls, other, message)


def _anthropic_turn(msg: dict[str, Any]) -> Turn | None:
    if not isinstance(msg, dict):
        return None
    calls, other = [], False
    blocks = msg.get("content") or []
    for b in blocks:
        if isinstance(b, dict) and b.get("type") == "tool_use":
            if b.get("name") == NAME:
                calls.append(Call(str(b.get("id") or ""), _ref(b.get("input"))))
            else:
                other = True
    return Turn(calls, other, {"role": "assistant", "content": blocks})


def _events(raw: bytes):
    for line in raw.decode("utf-8", "replace").splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                yield json.loads(data)


def _openai_stream(raw: bytes) -> dict[str, Any]:
    """An OpenAI chat stream folded back into one assistant message (content and tool calls)."""
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for ev in _events(raw):
        for ch in ev.get("choices") or []:
            delta = ch.get("delta") or {}
            if delta.get("content"):
                text.append(delta["content"])
            for tc in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    int(tc.get("index", 0)), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        msg["tool_calls"] = [calls[k] for k in sorted(calls)]
    return msg


def _anthropic_stream(raw: bytes) -> dict[str, Any]:
    """An Anthropic messages stream folded back into its content blocks."""
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, list[str]] = {}
    for ev in _events(raw):
        kind = ev.get("type")
        if kind == "content_block_start":
            blocks[int(ev["index"])] = dict(ev["content_block"])
        elif kind == "content_block_delta":
            i, d = int(ev["index"]), ev.get("delta") or {}
            if d.get("type") == "text_delta":
                blocks[i]["text"] = blocks[i].get("text", "") + d.get("text", "")
            elif d.get("type") == "input_json_delta":
                partial.setdefault(i, []).append(d.get("partial_json", ""))
    for i, parts in partial.items():
        blocks[i]["input"] = json.loads("".join(parts) or "{}")
    return {"content": [blocks[k] for k in sorted(blocks)]}


def follow_up(route: str, body: dict[str, Any], turn: Turn, results: list[str]) -> dict[str, Any]:
    """``body`` with the model's turn and the proxy's answers to its calls appended."""
    out = dict(body)
    messages = list(body.get("messages") or [])
    messages.append(turn.message)
    if route == "messages":
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": c.id, "content": r} for c, r in zip(turn.calls, results)
                ],
            }
        )
    else:
        messages.extend({"role": "tool", "tool_call_id": c.id, "content": r} for c, r in zip(turn.calls, results))
    out["messages"] = messages
    return out


@dataclass
class Expansions:
    """What one client request may get back: only the refs its own shortened outputs carry (a ref
    is a content hash: answered for anyone, it handed one tenant's original to another's model),
    each once, and MAX_TOTAL_CHARS in all."""

    refs: frozenset[str]
    answered: set[str] = field(default_factory=set)
    chars: int = 0

    def refusal(self, ref: str) -> str | None:
        """The reply when ``ref`` is not to be looked up; None when it is."""
        if ref not in self.refs:
            return UNKNOWN
        if ref in self.answered:
            return "That ref was expanded above in this conversation; use that."
        if self.chars >= MAX_TOTAL_CHARS:
            return "The expansion budget of this request is spent; answer from what you have."
        return None

    def deliver(self, ref: str, original: str | None) -> str:
        if original is None:
            return UNKNOWN
        self.answered.add(ref)
        room = min(MAX_RESULT_CHARS, MAX_TOTAL_CHARS - self.chars)
        text = original if len(original) <= room else original[:room] + f"\n[… cut at {room} characters]"
        self.chars += len(text)
        return text


def last_round(route: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` for the final follow-up: where our tool is the only one (the client defined none),
    tool_choice none, so the model answers instead of calling it once more and the client is sent
    a call to a tool it never defined (second audit). With tools of the client's own nothing is
    changed: forbidding ours alone is not expressible in either API."""
    if not all(_ours(t) for t in body.get("tools") or []) or "tool_choice" in body:
        return body
    return {**body, "tool_choice": {"type": "none"} if route == "messages" else "none"}
