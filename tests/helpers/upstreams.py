"""A real local upstream for the sidecar tests: a small ASGI app speaking just enough OpenAI and
Anthropic, which records every request it receives and misbehaves on demand.

The behaviour comes from the ``x-test-behavior`` request header (the proxy passes unknown headers
through), so concurrent tests never share state:
    ok (default) | error500 | slow:<seconds> | reset (breaks the stream after two events, or the
    body half-way) | garbage (200 with a body that is not JSON) | drip (streams one event every
    0.1 s for 20 s, and records whether the proxy hung up on it) | ctype:<content-type> (a plain reply
    with that content-type)
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .sse import sse


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class TestUpstream:
    """``requests`` holds what arrived, in order; ``aborted`` the paths of streams the client dropped."""

    __test__ = False  # not a pytest class

    requests: list[Received] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last(self, path_suffix: str = "") -> Received:
        with self.lock:
            for r in reversed(self.requests):
                if r.path.endswith(path_suffix):
                    return r
        raise AssertionError(f"upstream received no request ending in {path_suffix!r}")

    @property
    def calls(self) -> list[Received]:
        """What arrived, less the proxy's own ``GET /models`` look-ups (context windows)."""
        with self.lock:
            return [r for r in self.requests if not (r.method == "GET" and r.path.endswith("/models"))]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()
            self.aborted.clear()

    # ------------------------------------------------------------------- ASGI

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rec = Received(scope["method"], scope["path"], scope.get("query_string", b"").decode(), headers, raw)
        with self.lock:
            self.requests.append(rec)
        behavior = headers.get("x-test-behavior", "ok")
        anthropic = scope["path"].endswith("/messages")
        if behavior.startswith("slow:"):
            await asyncio.sleep(float(behavior.split(":", 1)[1]))
        if behavior == "error500":
            body = (
                {"type": "error", "error": {"type": "api_error", "message": "upstream exploded"}}
                if anthropic
                else {"error": {"message": "upstream exploded", "type": "server_error", "param": None, "code": "boom"}}
            )
            return await _send(send, 500, json.dumps(body).encode(), extra=[(b"x-request-id", b"req-500")])
        if behavior == "garbage":
            return await _send(send, 200, b"<html>definitely not json", ctype=b"text/html")
        if behavior.startswith("ctype:"):  # a reply with exactly this content-type
            return await _send(send, 200, b"plain reply", ctype=behavior.split(":", 1)[1].encode())
        if behavior == "long-header":
            return await _send(send, 200, b"{}", extra=[(b"x-long", b"v" * 20_000)])
        if scope["path"].endswith("/models"):
            return await _send(
                send,
                200,
                json.dumps(
                    {
                        "object": "list",
                        "data": [
                            {"id": "test-model", "object": "model", "created": 0, "owned_by": "tests"},
                            {
                                "id": SMALL_MODEL,
                                "object": "model",
                                "created": 0,
                                "owned_by": "tests",
                                "max_model_len": SMALL_WINDOW,
                            },
                        ],
                    }
                ).encode(),
            )
        body = json.loads(raw or b"{}")
        if body.get("model") == SMALL_MODEL:
            used = prompt_tokens(body) + int(body.get("max_tokens") or 0)
            if used > SMALL_WINDOW:
                return await _send(send, 400, json.dumps(_too_long(anthropic, used)).encode())
        if behavior == "expand" or behavior.startswith("expand:"):  # see expand_turn for the modes
            events, reply = expand_turn(body, anthropic, behavior.partition(":")[2] or "once")
            if body.get("stream"):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
                    }
                )
                for ev in events:
                    await send({"type": "http.response.body", "body": ev, "more_body": True})
                return await send({"type": "http.response.body", "body": b"", "more_body": False})
            return await _send(send, 200, json.dumps(reply).encode())
        if body.get("stream"):
            return await self._stream(send, receive, scope["path"], anthropic, body, behavior)
        reply = _anthropic_message(body) if anthropic else _openai_completion(body)
        payload = json.dumps(reply).encode()
        if behavior == "reset":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": payload[: len(payload) // 2], "more_body": True})
            raise ConnectionResetError("test upstream: reset half-way through the body")
        await _send(send, 200, payload, extra=[(b"x-request-id", b"req-ok"), (b"openai-processing-ms", b"7")])

    async def _stream(self, send, receive, path, anthropic, body, behavior) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"x-request-id", b"req-sse")],
            }
        )
        events = stream_events(body, anthropic)
        if behavior == "drip":
            events = events[:1] + [events[1]] * 200
        for i, ev in enumerate(events):
            if behavior == "reset" and i == 2:
                raise ConnectionResetError("test upstream: reset mid-stream")
            if behavior.startswith("stall:") and i == 2:  # two events, then silence
                await asyncio.sleep(float(behavior.split(":", 1)[1]))
            if behavior == "drip" and i:
                # the proxy closing its upstream connection shows up here as a disconnect
                try:
                    msg = await asyncio.wait_for(receive(), 0.1)
                except TimeoutError:
                    msg = None
                if msg is not None and msg["type"] == "http.disconnect":
                    with self.lock:
                        self.aborted.append(path)
                    return
            await send({"type": "http.response.body", "body": ev, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send(send, status: int, body: bytes, ctype: bytes = b"application/json", extra=()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra],
        }
    )
    await send({"type": "http.response.body", "body": body})


# A model with a small context window, as vLLM reports one (``max_model_len``): prompts whose
# tokens (SmolLM2's tokenizer, every message text) plus max_tokens exceed it get vLLM's 400.
SMALL_MODEL = "small-window"
SMALL_WINDOW = 1024


def prompt_tokens(body: dict[str, Any]) -> int:
    from ctxgate.compressor.models import load_tokenizer

    tok = load_tokenizer("smollm2")
    texts = [body["system"]] if isinstance(body.get("system"), str) else []
    for m in body.get("messages", []):
        c = m.get("content")
        texts.extend([c] if isinstance(c, str) else [b.get("text", "") for b in c or [] if isinstance(b, dict)])
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 4 for t in texts)


def _too_long(anthropic: bool, used: int) -> dict[str, Any]:
    msg = f"This model's maximum context length is {SMALL_WINDOW} tokens. However, you requested {used} tokens."
    if anthropic:
        return {"type": "error", "error": {"type": "invalid_request_error", "message": msg}}
    return {"error": {"message": msg, "type": "BadRequestError", "param": None, "code": "context_length_exceeded"}}


def _prompt_chars(body: dict[str, Any]) -> int:
    return len(json.dumps(body.get("messages", [])))


def _openai_completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"ok {_prompt_chars(body)}"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        "unknown_vendor_field": {"kept": True},
    }


def _anthropic_message(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": body.get("model", "test-model"),
        "content": [{"type": "text", "text": f"ok {_prompt_chars(body)}"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 2},
    }


def stream_events(body: dict[str, Any], anthropic: bool, words: list[str] | None = None) -> list[bytes]:
    """The exact bytes the test upstream streams (tests compare what the client got against these)."""
    model = body.get("model", "test-model")
    words = words or ["Hello", " from", " the", " test", " upstream"]
    if anthropic:
        evs = [
            sse(
                {
                    "type": "message_start",
                    "message": {
                        "id": "msg_test",
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 10, "output_tokens": 0},
                    },
                },
                "message_start",
            ),
            sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
        ]
        evs += [
            sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
                "content_block_delta",
            )
            for w in words
        ]
        evs += [
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": 5},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return evs
    base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    evs = [
        sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    ]
    evs += [sse({**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}) for w in words]
    evs += [
        sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
        sse({**base, "choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}),
        b"data: [DONE]\n\n",
    ]
    return evs


EXPAND_REF = re.compile(r"ctxgate_expand ref=(\w+)")


def _tool_results(body: dict[str, Any], anthropic: bool) -> list[str]:
    out = []
    for m in body.get("messages", []):
        if not anthropic and m.get("role") == "tool" and str(m.get("tool_call_id", "")).startswith("call_x"):
            out.append(m.get("content"))
        if anthropic and isinstance(m.get("content"), list):
            out += [
                b.get("content")
                for b in m["content"]
                if isinstance(b, dict)
                and b.get("type") == "tool_result"
                and str(b.get("tool_use_id", "")).startswith("toolu_x")
            ]
    return out


def _tool_result(body: dict[str, Any], anthropic: bool) -> str | None:
    """The first answer to one of our test calls (call_x..., toolu_x...), or None."""
    return next(iter(_tool_results(body, anthropic)), None)


def expand_turn(body: dict[str, Any], anthropic: bool, mode: str = "once") -> tuple[list[bytes], dict[str, Any]]:
    """(stream events, JSON reply): a call to ctxgate_expand with the first ref in the prompt while
    no tool result is there; then a text answer "expanded <length of the tool result>". Modes
    (``x-test-behavior: expand:<mode>``, non-streaming): ``always`` calls again after every result
    unless tool_choice forbids tools; ``ref=<ref>`` calls with that ref; ``many`` makes 50 calls
    with the first ref in one turn. Their answer is "results <lengths of every tool result>"."""
    result = _tool_result(body, anthropic)
    offered = any("ctxgate_expand" in json.dumps(t) for t in body.get("tools") or [])
    refs = EXPAND_REF.findall(json.dumps(body.get("messages", [])))
    model = body.get("model", "test-model")
    choice = body.get("tool_choice")
    if mode != "once":
        forbidden = choice == "none" or (isinstance(choice, dict) and choice.get("type") == "none")
        results = _tool_results(body, anthropic)
        if forbidden or not offered or (mode != "always" and results):
            text = "results " + ",".join(str(len(r or "")) for r in results)
            if anthropic:
                return [], {**_anthropic_message(body), "content": [{"type": "text", "text": text}]}
            reply = _openai_completion(body)
            reply["choices"][0]["message"]["content"] = text
            return [], reply
        ref = mode[4:] if mode.startswith("ref=") else (refs[0] if refs else "cgnone")
        n = 50 if mode == "many" else 1
        k = len(results)
        if anthropic:
            blocks = [
                {"type": "tool_use", "id": f"toolu_x{k}_{i}", "name": "ctxgate_expand", "input": {"ref": ref}}
                for i in range(n)
            ]
            reply = {**_anthropic_message(body), "content": blocks, "stop_reason": "tool_use"}
            return [], reply
        calls = [
            {
                "id": f"call_x{k}_{i}",
                "type": "function",
                "function": {"name": "ctxgate_expand", "arguments": json.dumps({"ref": ref})},
            }
            for i in range(n)
        ]
        reply = _openai_completion(body)
        reply["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": calls}
        reply["choices"][0]["finish_reason"] = "tool_calls"
        return [], reply
    if result is not None or not offered or not refs:
        text = f"expanded {len(result)}" if result is not None else "no expand"
        if anthropic:
            return stream_events(body, True, words=[text]), {
                **_anthropic_message(body),
                "content": [{"type": "text", "text": text}],
            }
        reply = _openai_completion(body)
        reply["choices"][0]["message"]["content"] = text
        return stream_events(body, False, words=[text]), reply
    args = json.dumps({"ref": refs[0]})
    if anthropic:
        reply = {
            "id": "msg_tool",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_x1", "name": "ctxgate_expand", "input": {"ref": refs[0]}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        }
        evs = [
            sse({"type": "message_start", "message": {**reply, "content": [], "stop_reason": None}}, "message_start"),
            sse(
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start",
            ),
            sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me look."}},
                "content_block_delta",
            ),
            sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
            sse(
                {
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {"type": "tool_use", "id": "toolu_x1", "name": "ctxgate_expand", "input": {}},
                },
                "content_block_start",
            ),
        ]
        evs += [
            sse(
                {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": p}},
                "content_block_delta",
            )
            for p in (args[:5], args[5:])
        ]
        evs += [
            sse({"type": "content_block_stop", "index": 1}, "content_block_stop"),
            sse(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                    "usage": {"output_tokens": 5},
                },
                "message_delta",
            ),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return evs, reply
    call = {"id": "call_x1", "type": "function", "function": {"name": "ctxgate_expand", "arguments": args}}
    reply = _openai_completion(body)
    reply["choices"][0]["message"] = {"role": "assistant", "content": None, "tool_calls": [call]}
    reply["choices"][0]["finish_reason"] = "tool_calls"
    base = {"id": "chatcmpl-tool", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    evs = [
        sse(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "call_x1",
                                    "type": "function",
                                    "function": {"name": "ctxgate_expand", "arguments": ""},
                                }
                            ],
                        },
                        "finish_reason": None,
                    }
                ],
            }
        )
    ]
    evs += [
        sse(
            {
                **base,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]},
                        "finish_reason": None,
                    }
                ],
            }
        )
        for p in (args[:5], args[5:])
    ]
    evs += [sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}), b"data: [DONE]\n\n"]
    return evs, reply
