"""The question is found in every common client layout, and the document with the answer survives
4x compression in each (issue 13), through the real sidecar with the official SDKs on real NQ items.

Layouts: the question as its own user message after the documents; an agent's tool result holding
the documents (OpenAI ``role: tool``, Anthropic ``tool_result``); the documents in the system
prompt; a multi-turn chat whose latest user turn is the question. The same requests with
``x-ctxgate-bypass`` show what the upstream would have read. Then the cache: the same documents
under another question are a miss compressed for that question, never a stale hit.
"""

from __future__ import annotations

import json
import os
from functools import cache

import pytest

from tests.helpers.clients import ant, oai
from tests.helpers.data import NQ20, answer_kept, nq_items

RATE = 0.25
# NQ rows 2-3 by default (row 2 is the one the issue found: West Wing, document 19); these rows were
# used while writing the rules. CTXGATE_LAYOUT_ROWS=100-119 runs the reporting rows instead.
_ROWS = os.environ.get("CTXGATE_LAYOUT_ROWS", "2-3")
ITEMS = tuple(range(int(_ROWS.split("-")[0]), int(_ROWS.split("-")[-1]) + 1))


@cache
def _row(i: int) -> dict:
    with open(NQ20, encoding="utf-8") as f:
        return next(json.loads(line) for k, line in enumerate(f) if k == i)


INSTRUCTIONS = "Answer the question using only the provided search results. Be brief."


def _docs(item: dict) -> str:
    return "\n\n".join(f"Document [{i + 1}](Title: {c['title']}) {c['text']}" for i, c in enumerate(item["ctxs"]))


def _openai_layouts(item: dict) -> dict[str, list[dict]]:
    q = item["question"] + "?"
    call = {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    return {
        "question_message": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": _docs(item)},
            {"role": "user", "content": "Question: " + q},
        ],
        "tool_result": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": q},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": _docs(item)},
        ],
        "system_prompt": [
            {"role": "system", "content": INSTRUCTIONS + "\n\n" + _docs(item)},
            {"role": "user", "content": q},
        ],
        "multi_turn": [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": "Hi! I have a question about some search results."},
            {"role": "assistant", "content": "Sure, send them."},
            {"role": "user", "content": _docs(item)},
            {"role": "user", "content": q},
        ],
    }


def _anthropic_layouts(item: dict) -> dict[str, dict]:
    q = item["question"] + "?"
    return {
        "question_block": {
            "system": INSTRUCTIONS,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": _docs(item)}, {"type": "text", "text": q}]}
            ],
        },
        "question_next_turn": {
            "system": INSTRUCTIONS,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": _docs(item)}]},
                {"role": "assistant", "content": "Got them. What is your question?"},
                {"role": "user", "content": q},
            ],
        },
        "tool_result": {
            "system": INSTRUCTIONS,
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "search", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": _docs(item)}]},
            ],
        },
        "system_prompt": {
            "system": [{"type": "text", "text": INSTRUCTIONS + "\n\n" + _docs(item)}],
            "messages": [{"role": "user", "content": q}],
        },
    }


@pytest.fixture(scope="module")
def layout_proxy(test_upstream):
    from ctxgate.service import CacheSettings, Policy, Settings
    from tests.helpers.servers import free_port, run_sidecar

    s = Settings(
        upstream=test_upstream.url + "/v1",
        anthropic_upstream=test_upstream.url,
        port=free_port(),
        policy=Policy(rate=RATE),
        cache=CacheSettings(backend="memory"),
        compress_timeout=300,
    )
    with run_sidecar(s) as url:
        yield url


def _sent_text(body: dict) -> str:
    parts = [body.get("system") if isinstance(body.get("system"), str) else ""]
    if isinstance(body.get("system"), list):
        parts += [b.get("text", "") for b in body["system"]]
    for m in body["messages"]:
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            for b in c:
                parts.append(
                    b.get("text", "")
                    if b.get("type") == "text"
                    else b.get("content", "")
                    if isinstance(b.get("content"), str)
                    else ""
                )
    return "\n".join(p for p in parts if p)


@pytest.mark.models
@pytest.mark.parametrize("layout", ["question_message", "tool_result", "system_prompt", "multi_turn"])
def test_openai_layouts_keep_the_answer_at_4x(layout_proxy, upstream, layout):
    for row in ITEMS:
        item = _row(row)
        messages = _openai_layouts(item)[layout]
        base = oai(layout_proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=messages, extra_headers={"x-ctxgate-bypass": "1"}
        )
        full = _sent_text(upstream.last().json)
        assert answer_kept(full, item["answers"]) and base.headers["x-ctxgate-cache"] == "bypass"
        r = oai(layout_proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
        sent = _sent_text(upstream.last().json)
        assert r.headers["x-ctxgate-question"] == "found", layout
        assert float(r.headers["x-ctxgate-ratio"]) > 2.0, (layout, r.headers["x-ctxgate-ratio"])
        assert answer_kept(sent, item["answers"]), (layout, row, item["answers"])


@pytest.mark.models
@pytest.mark.parametrize("layout", ["question_block", "question_next_turn", "tool_result", "system_prompt"])
def test_anthropic_layouts_keep_the_answer_at_4x(layout_proxy, upstream, layout):
    for row in ITEMS:
        item = _row(row)
        req = _anthropic_layouts(item)[layout]
        ant(layout_proxy).messages.create(
            model="claude-3-5-haiku-latest", max_tokens=16, extra_headers={"x-ctxgate-bypass": "1"}, **req
        )
        assert answer_kept(_sent_text(upstream.last().json), item["answers"])
        r = ant(layout_proxy).messages.with_raw_response.create(model="claude-3-5-haiku-latest", max_tokens=16, **req)
        assert r.headers["x-ctxgate-question"] == "found"
        assert float(r.headers["x-ctxgate-ratio"]) > 2.0, (layout, r.headers["x-ctxgate-ratio"])
        assert answer_kept(_sent_text(upstream.last().json), item["answers"]), (layout, row)


@pytest.mark.models
def test_another_question_over_the_same_documents_is_a_question_correct_miss(layout_proxy, upstream):
    a, b = nq_items(5)[2], nq_items(5)[3]
    docs = _docs(a) + "\n\n" + _docs(b)  # both items' documents, in one message
    first = [{"role": "user", "content": docs}, {"role": "user", "content": a["question"] + "?"}]
    second = [{"role": "user", "content": docs}, {"role": "user", "content": b["question"] + "?"}]
    r1 = oai(layout_proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=first)
    sent1 = upstream.last().json["messages"][0]["content"]
    r2 = oai(layout_proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=second)
    sent2 = upstream.last().json["messages"][0]["content"]
    assert r1.headers["x-ctxgate-cache"] == "miss" and r2.headers["x-ctxgate-cache"] == "miss"
    assert sent1 != sent2
    assert answer_kept(sent1, a["answers"]) and answer_kept(sent2, b["answers"])
    # the first conversation's next turn: its documents still go out byte for byte (a hit)
    later = first + [{"role": "assistant", "content": "..."}, {"role": "user", "content": "And why?"}]
    r3 = oai(layout_proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=later)
    assert upstream.last().json["messages"][0]["content"] == sent1 and r3.headers["x-ctxgate-cache"] == "hit"


def test_no_question_is_reported(layout_proxy, upstream):
    item = nq_items(5)[2]
    r = oai(layout_proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": INSTRUCTIONS}, {"role": "assistant", "content": _docs(item)}],
    )
    assert r.headers["x-ctxgate-question"] == "none"


def test_v1_compress_never_takes_a_document_line_for_the_question(layout_proxy):
    """LiteLLM's guardrail sends the documents without the user's question: no question is guessed."""
    import httpx

    item = nq_items(5)[2]
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": _docs(item)}]}
    out = httpx.post(layout_proxy + "/v1/compress", json=body, timeout=300).json()
    assert out["question"] == "none"
    body["config"] = {"question": item["question"]}
    out = httpx.post(layout_proxy + "/v1/compress", json=body, timeout=300).json()
    assert out["question"] == "explicit" and answer_kept(out["messages"][0]["content"], item["answers"])


def test_question_rules_on_the_layouts_the_issue_found():
    from ctxgate.service._policy import openai_plan

    q = "Why did order ORD-55122 fail? Quote every ERROR line that is relevant."
    log = "\n".join(f"2026-01-01 INFO order ORD-{i} ok" for i in range(300))
    call = {"id": "c", "type": "function", "function": {"name": "logs", "arguments": "{}"}}
    plan = openai_plan(
        {
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": log},
            ]
        }
    )
    assert plan.question == q and plan.slots[-1].question == q  # several sentences, not cut
    bare = "Question: who expanded the West Wing southward in 1909?"
    plan = openai_plan({"messages": [{"role": "user", "content": log}, {"role": "user", "content": bare}]})
    assert plan.slots[0].question == bare and plan.question_source == "found"
    # a later turn's question never re-keys an earlier segment
    plan2 = openai_plan(
        {
            "messages": [
                {"role": "user", "content": log},
                {"role": "user", "content": bare},
                {"role": "assistant", "content": "Taft."},
                {"role": "user", "content": "And who designed it?"},
            ]
        }
    )
    assert plan2.slots[0].question == bare and plan2.question == "And who designed it?"
    # a document's last paragraph is not a question: the next turn's is
    docs = "Intro.\n\n" + log + "\n\nThe West Wing was expanded in 1909 under President Taft."
    plan3 = openai_plan(
        {
            "messages": [
                {"role": "user", "content": docs},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": bare},
            ]
        }
    )
    assert plan3.slots[0].question == bare
    assert openai_plan({"messages": [{"role": "user", "content": docs}]}, guess_tail=False).question is None


def test_a_documents_only_message_compresses_its_last_paragraph_too():
    from ctxgate.service._policy import openai_plan, parts

    docs = "Document [1] The East Wing was built in 1942.\n\nDocument [2] The West Wing was expanded in 1909."
    bare = "Who expanded the West Wing in 1909?"
    plan = openai_plan({"messages": [{"role": "user", "content": docs}, {"role": "user", "content": bare}]})
    p = parts(plan.slots[0])
    assert (p.context, p.tail) == (docs, "")  # the question is the next message
    # the same documents with the question as their last paragraph: that paragraph stays verbatim
    plan = openai_plan({"messages": [{"role": "user", "content": docs + "\n\n" + bare}]})
    assert parts(plan.slots[0]).tail.strip() == bare
