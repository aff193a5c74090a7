"""The embedded local upstream: a prepared causal LM (SmolLM2 by default) behind OpenAI- and
Anthropic-compatible routes, so ``ctxgate serve`` works with no API key and no network.

It is served in-process, by the same server, under ``/local`` (``/local/v1/chat/completions``,
``/local/v1/messages``, ``/local/v1/models``), and the proxy forwards to it over loopback exactly
as it would to a remote API: the same code path, streaming included. Generation is greedy, one
request at a time (2-core machines), capped at ``local_max_tokens`` new tokens, and stops when the
client disconnects. Any ``model`` name in the request is answered by the local model, whose name
the response reports.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec

from ._errors import ProxyError

DEFAULT_MAX_TOKENS = 128


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish: str  # "stop" or "length"


class LocalModel:
    def __init__(self, name: str, max_tokens: int, device: str | None = None) -> None:
        self.name = name
        self.max_tokens = max_tokens
        self.device = device
        self.ready = threading.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="ctxgate-local")
        self._model: Any = None  # loaded by load(), off the event loop
        self._tok: Any = None
        self._context = 2048

    def load(self) -> None:
        from ctxgate.compressor.models import load_causal_lm

        self._model, self._tok, _ = load_causal_lm(self.name, self.device)
        self._context = int(getattr(self._model.config, "max_position_embeddings", 2048) or 2048)
        self.ready.set()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------ prompting

    def prompt_ids(self, messages: list[dict[str, str]], max_new: int) -> list[int]:
        text = self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = self._tok(text, add_special_tokens=False)["input_ids"]
        limit = self._context - max_new
        if len(ids) > limit:
            raise ProxyError(
                400,
                f"the prompt is {len(ids)} tokens; the local model {self.name} takes at most "
                f"{limit} with max_tokens={max_new} (compress harder, e.g. x-ctxgate-rate: 0.2)",
            )
        return ids

    def budget(self, requested: Any) -> int:
        if requested is None:
            return min(DEFAULT_MAX_TOKENS, self.max_tokens)
        if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
            raise ProxyError(400, f"max_tokens must be a positive integer, got {requested!r}", param="max_tokens")
        return min(requested, self.max_tokens)

    # ----------------------------------------------------------- generating

    def generate(
        self, ids: list[int], max_new: int, stop: threading.Event, on_text: Callable[[str], None] | None = None
    ) -> Generation:
        """Greedy decoding in the calling thread; ``on_text`` gets text pieces as they are decoded."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextStreamer

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = None
        if on_text is not None:

            class _Streamer(TextStreamer):
                def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                    if text and on_text is not None:
                        on_text(text)

            streamer = _Streamer(self._tok, skip_prompt=True, skip_special_tokens=True)
        input_ids = torch.tensor([ids], device=self._model.device)
        with torch.inference_mode():
            out = self._model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([_Stop()]),
                streamer=streamer,
                pad_token_id=self._tok.eos_token_id,
            )
        new = out[0, len(ids) :].tolist()
        eos = self._tok.eos_token_id
        finish = "stop" if (new and new[-1] == eos) or len(new) < max_new else "length"
        text = self._tok.decode(new, skip_special_tokens=True)
        return Generation(text, len(ids), len(new), finish)

    async def run(self, ids: list[int], max_new: int, stop: threading.Event) -> Generation:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self.generate, ids, max_new, stop, None)

    async def stream(self, ids: list[int], max_new: int, stop: threading.Event) -> AsyncIterator[str | Generation]:
        """Text pieces as they are generated, then the final Generation. Closing it stops generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | Generation | BaseException] = asyncio.Queue()

        def push(item) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                push(self.generate(ids, max_new, stop, push))
            except BaseException as exc:  # surfaced to the consumer
                push(exc)

        loop.run_in_executor(self.executor, work)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Generation):
                    return
        finally:
            stop.set()


# --------------------------------------------------------------------- API formats


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict):
                continue
            if p.get("type") == "text" and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif p.get("type") == "tool_result":
                parts.append(_text_of(p.get("content")))
        return "\n".join(x for x in parts if x)
    return ""


def openai_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        role = m.get("role")
        role = role if role in ("system", "user", "assistant") else "system" if role == "developer" else "user"
        text = _text_of(m.get("content"))
        if text:
            out.append({"role": role, "content": text})
    if not out:
        raise ProxyError(400, "messages must contain at least one message with text", param="messages")
    return out


def anthropic_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    system = _text_of(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for m in body.get("messages") or []:
        if isinstance(m, dict):
            text = _text_of(m.get("content"))
            if text:
                out.append({"role": "assistant" if m.get("role") == "assistant" else "user", "content": text})
    if len(out) == (1 if system else 0):
        raise ProxyError(400, "messages must contain at least one message with text")
    return out


def _sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + msgspec.json.encode(obj) + b"\n\n"


def openai_response(gen: Generation, model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": gen.text, "refusal": None},
                "logprobs": None,
                "finish_reason": gen.finish,
            }
        ],
        "usage": {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens,
            "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        },
    }


def anthropic_response(gen: Generation, model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": gen.text}],
        "stop_reason": "end_turn" if gen.finish == "stop" else "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": gen.prompt_tokens, "output_tokens": gen.completion_tokens},
    }


async def openai_stream(pieces: AsyncIterator[str | Generation], model: str, usage: bool) -> AsyncIterator[bytes]:
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    async for piece in pieces:
        if isinstance(piece, Generation):
            yield chunk({}, piece.finish)
            if usage:
                yield _sse(
                    {
                        **base,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": piece.prompt_tokens,
                            "completion_tokens": piece.completion_tokens,
                            "total_tokens": piece.prompt_tokens + piece.completion_tokens,
                        },
                    }
                )
        else:
            yield chunk({"content": piece})
    yield b"data: [DONE]\n\n"


async def anthropic_stream(
    pieces: AsyncIterator[str | Generation], model: str, prompt_tokens: int
) -> AsyncIterator[bytes]:
    yield _sse(
        {
            "type": "message_start",
            "message": {
                "id": f"msg_{uuid.uuid4().hex[:24]}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0},
            },
        },
        "message_start",
    )
    yield _sse(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        "content_block_start",
    )
    async for piece in pieces:
        if isinstance(piece, Generation):
            yield _sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
            yield _sse(
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "end_turn" if piece.finish == "stop" else "max_tokens",
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": piece.completion_tokens},
                },
                "message_delta",
            )
            yield _sse({"type": "message_stop"}, "message_stop")
        else:
            yield _sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            )
