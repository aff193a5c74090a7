"""Prefix stability: a conversation re-sent with one more turn sends byte-identical bytes for every
earlier message, even though the latest question changed: each segment is compressed for the
question of its own turn, and the cache is keyed by it.

Uses the question-aware ``extractive`` method (MiniLM): with a method that ignores the question
this test could not fail. The control case proves it can: a sidecar with an empty cache compresses
the same earlier message differently under the new question.
"""

from __future__ import annotations

import json

import openai
import pytest

from tests.helpers.clients import SYSTEM, rag_prompt

pytestmark = pytest.mark.models  # every test here loads a prepared model


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=120)


def _turns(items: list[dict]) -> list[list[dict]]:
    docs = "\n\n".join(c["text"] for c in items[2]["ctxs"][:6])
    t1 = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": rag_prompt(items[0], 10)}]
    t2 = t1 + [
        {"role": "assistant", "content": "Wilhelm Conrad Röntgen."},
        {"role": "user", "content": rag_prompt(items[1], 10)},
    ]
    t3 = t2 + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": docs},
        {"role": "user", "content": items[2]["question"] + "?"},
    ]
    return [t1, t2, t3]


def test_earlier_turns_keep_their_exact_bytes(sidecar, upstream, nq_items):
    turns = _turns(nq_items)
    sent = []
    with sidecar(default_method="extractive", compress_timeout=300, policy={"rate": 0.4}) as url:
        for msgs in turns:
            r = _client(url).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
            assert r.headers["x-ctxgate-cache"] in ("miss", "partial") and "x-ctxgate-fail-open" not in r.headers
            sent.append(upstream.last().json["messages"])
        # every earlier message went out byte for byte as before
        for i in range(1, len(sent)):
            prev, cur = sent[i - 1], sent[i]
            assert [json.dumps(m, ensure_ascii=False) for m in cur[: len(prev)]] == [
                json.dumps(m, ensure_ascii=False) for m in prev
            ]
        # and every new context message was compressed when it first appeared
        assert len(sent[0][1]["content"]) < 0.6 * len(turns[0][1]["content"])
        assert len(sent[1][3]["content"]) < 0.6 * len(turns[1][3]["content"])
        assert len(sent[2][5]["content"]) < 0.6 * len(turns[2][5]["content"])
        assert sent[2][4] == turns[2][4] and sent[2][6] == turns[2][6]  # tool call and short question
        # the raw request bytes share the prefix too (what provider prompt caches hash)
        raw3 = upstream.last().raw
        first = json.dumps(sent[0][1], ensure_ascii=False, separators=(",", ":")).encode()
        assert first in raw3
    with sidecar(default_method="extractive", compress_timeout=300, policy={"rate": 0.4}) as fresh:
        # each segment is compressed for the question of its own turn, so even an empty cache gives
        # the earlier message the same bytes on a later turn
        _client(fresh).chat.completions.create(model="gpt-4o-mini", messages=turns[1])
        assert upstream.last().json["messages"][1]["content"] == sent[0][1]["content"]
        # control: forced to turn 2's question, the same first message compresses differently
        _client(fresh).chat.completions.create(
            model="gpt-4o-mini", messages=turns[1], extra_body={"ctxgate": {"question": turns[1][3]["content"]}}
        )
        assert upstream.last().json["messages"][1]["content"] != sent[0][1]["content"]
