"""``NeedleUpstream`` and its clients: a local OpenAI + Anthropic upstream (JSON and SSE) that answers correctly only
when a fact (the needle) is in the prompt it gets, so a shadow check of a prompt compressed without
the needle scores low and one with it scores high. Used by the fidelity tests and the fleet tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx
import openai

from . import clients
from .sse import sse

NEEDLE = "The vault code is 7421."
RIGHT = "The vault code is 7421."
WRONG = "Sorry, I have no idea what you mean."
QUESTION = "Question: What is the vault code?"


@dataclass
class NeedleUpstream:
    """Just enough OpenAI and Anthropic (JSON and SSE) to answer one question; records every request.
    Header ``x-needle-slow: S`` makes the answer to a prompt holding the needle take S seconds."""

    __test__ = False
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["body"] for r in self.requests]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while (msg := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            return await send({"type": "lifespan.shutdown.complete"})
        raw = b""
        while True:
            msg = await receive()
            raw += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        body = json.loads(raw)
        with self.lock:
            self.requests.append(
                {
                    "path": scope["path"],
                    "query": scope.get("query_string", b"").decode("latin-1"),
                    "headers": headers,
                    "body": body,
                }
            )
        prompt = json.dumps([body.get("system"), body.get("messages")])
        full = NEEDLE in prompt
        if full and "x-needle-slow" in headers:
            await asyncio.sleep(float(headers["x-needle-slow"]))
        answer = RIGHT if full else WRONG
        n_in, n_out = len(prompt.split()), len(answer.split())
        anthropic_api = scope["path"].endswith("/messages")
        if body.get("stream"):
            events = (
                anthropic_sse(answer, n_in, n_out)
                if anthropic_api
                else openai_sse(answer, n_in, n_out, bool((body.get("stream_options") or {}).get("include_usage")))
            )
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for ev in events:
                await send({"type": "http.response.body", "body": ev, "more_body": True})
            return await send({"type": "http.response.body", "body": b""})
        if anthropic_api:
            out = {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": answer}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out},
            }
        else:
            out = {
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
            }
        data = json.dumps(out).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": data})


def openai_sse(answer: str, n_in: int, n_out: int, usage: bool) -> list[bytes]:
    base = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "m"}
    words = answer.split(" ")
    evs = [
        sse({**base, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}]})
        for i, w in enumerate(words)
    ]
    evs.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if usage:
        evs.append(
            sse(
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
                }
            )
        )
    return [*evs, b"data: [DONE]\n\n"]


def anthropic_sse(answer: str, n_in: int, n_out: int) -> list[bytes]:
    msg = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": n_in, "output_tokens": 1},
    }
    evs = [
        sse({"type": "message_start", "message": msg}, "message_start"),
        sse(
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            "content_block_start",
        ),
    ]
    evs += [
        sse(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": w if i == 0 else " " + w},
            },
            "content_block_delta",
        )
        for i, w in enumerate(answer.split(" "))
    ]
    return evs + [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n_out},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]


def context(item: dict, needle_at: str | None, n_docs: int = 6) -> str:
    docs = [f"Document [{i + 1}] {c['text']}" for i, c in enumerate(item["ctxs"][:n_docs])]
    if needle_at == "start":
        docs.insert(0, NEEDLE)
    elif needle_at == "end":
        docs.append(NEEDLE)
    return "\n".join(docs) + "\n\n" + QUESTION


# ----------------------------------------------------------------------------- clients and polling


def oai(url: str) -> openai.OpenAI:
    """An SDK client with its own key, so a test can tell the fidelity traffic's auth apart."""
    return clients.oai(url, api_key="sk-fid-secret")


def ant(url: str) -> anthropic.Anthropic:
    return clients.ant(url, api_key="sk-ant-fid-secret")


def ask(url: str, item: dict, needle_at: str | None = "end", model: str = "gpt-4o-mini", **kw):
    return oai(url).chat.completions.with_raw_response.create(
        model=model, temperature=0, messages=[{"role": "user", "content": context(item, needle_at)}], **kw
    )


def report(url: str) -> dict:
    r = httpx.get(url + "/v1/fidelity", timeout=30)
    assert r.status_code == 200
    return r.json()


def settled(url: str, timeout: float = 60) -> dict:
    """/v1/fidelity once no shadow check is in flight: every drawn sample has been run or refused
    (a non-streaming request's check is counted before its response is sent)."""
    deadline = time.monotonic() + timeout
    while (rep := report(url))["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rep["in_flight"] == 0
    return rep


def wait_samples(url: str, n: int, timeout: float = 90) -> dict:
    """/v1/fidelity once ``n`` shadow checks (ok or failed) have been stored."""
    deadline = time.monotonic() + timeout
    while True:
        rep = report(url)
        done = sum(r["samples"] + r["errors"] for r in rep["routes"])
        if done >= n or time.monotonic() > deadline:
            assert done == n, f"expected {n} shadow samples, got {done}"
            return rep
        time.sleep(0.05)
