"""Structured tool outputs through the real sidecar, and the ctxgate_expand round trip: official
SDKs as clients, a local upstream that really calls the tool, streaming and not."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest

from tests.helpers.payloads import search_payload
from tests.helpers.upstreams import EXPAND_REF

QUESTION = "When was the Eiffel Tower completed? Use the search results."
BEHAVIOUR = {"x-test-behavior": "expand"}
CLIENT_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "web search",
        "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
    },
}


def _sidecar(test_upstream, **policy):
    from tests.helpers.servers import proxy_settings, run_sidecar

    return run_sidecar(proxy_settings(test_upstream.url, policy={"rate": 0.2, **policy}, compress_timeout=120))


@pytest.fixture(scope="module")
def expand_proxy(test_upstream):
    with _sidecar(test_upstream, expand=True) as url:
        yield url


@pytest.fixture(scope="module")
def proxy(test_upstream):
    with _sidecar(test_upstream) as url:
        yield url


def _openai_messages(payload: str) -> list[dict]:
    return [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "tower"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_c1", "content": payload},
    ]


def _anthropic_messages(payload: str) -> list[dict]:
    return [
        {"role": "user", "content": QUESTION},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_c1", "name": "search", "input": {"q": "tower"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_c1", "content": payload}]},
    ]


def _check_round_trip(upstream, payload: str, anthropic_route: bool) -> None:
    calls = [c for c in upstream.calls if c.path.endswith("/messages" if anthropic_route else "/chat/completions")]
    assert len(calls) == 2
    first, second = calls[0].json, calls[1].json
    names = [t.get("name") or t["function"]["name"] for t in first["tools"]]
    assert names == ["search", "ctxgate_expand"]  # the client's tool first, untouched
    sent = json.dumps(first["messages"])
    assert "ctxgate_expand ref=" in sent and len(sent) < len(payload) / 2
    if anthropic_route:
        result = second["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == "toolu_x1"
        original = result["content"]
        assert second["messages"][-2]["content"][-1]["name"] == "ctxgate_expand"
    else:
        assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "ctxgate_expand"
        original = second["messages"][-1]["content"]
        assert second["messages"][-1]["tool_call_id"] == "call_x1"
    assert json.loads(original) == json.loads(payload)  # the whole original came back


@pytest.mark.models
def test_openai_tool_output_is_crushed_and_expanded_on_demand(expand_proxy, upstream):
    payload, _ = search_payload()
    client = openai.OpenAI(base_url=expand_proxy + "/v1", api_key="sk-test", max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="test-model", messages=_openai_messages(payload), tools=[CLIENT_TOOL], extra_headers=BEHAVIOUR
    )
    msg = r.choices[0].message
    assert msg.tool_calls is None and msg.content.startswith("expanded ")
    _check_round_trip(upstream, payload, anthropic_route=False)
    metrics = httpx.get(expand_proxy + "/metrics").text
    assert 'ctxgate_expansions_total{found="yes",route="chat"}' in metrics


@pytest.mark.models
def test_openai_stream_round_trip(expand_proxy, upstream):
    payload, _ = search_payload()
    client = openai.OpenAI(base_url=expand_proxy + "/v1", api_key="sk-test", max_retries=0, timeout=120)
    text = ""
    with client.chat.completions.create(
        model="test-model",
        messages=_openai_messages(payload),
        tools=[CLIENT_TOOL],
        stream=True,
        extra_headers=BEHAVIOUR,
    ) as stream:
        for chunk in stream:
            for ch in chunk.choices:
                assert not ch.delta.tool_calls
                text += ch.delta.content or ""
    assert text.startswith("expanded ")
    _check_round_trip(upstream, payload, anthropic_route=False)


@pytest.mark.models
@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_round_trip(expand_proxy, upstream, stream):
    payload, _ = search_payload()
    client = anthropic.Anthropic(base_url=expand_proxy, api_key="sk-ant-test", max_retries=0, timeout=120)
    tools = [{"name": "search", "description": "web search", "input_schema": {"type": "object", "properties": {}}}]
    kw = dict(
        model="test-model", max_tokens=64, messages=_anthropic_messages(payload), tools=tools, extra_headers=BEHAVIOUR
    )
    if stream:
        with client.messages.stream(**kw) as s:
            msg = s.get_final_message()
    else:
        msg = client.messages.create(**kw)
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text.startswith("expanded ")
    _check_round_trip(upstream, payload, anthropic_route=True)


@pytest.mark.models
def test_without_expand_no_tool_is_added_and_json_stays_valid(proxy, upstream):
    payload, items = search_payload()
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="sk-test", max_retries=0, timeout=120)
    client.chat.completions.create(model="test-model", messages=_openai_messages(payload), tools=[CLIENT_TOOL])
    body = upstream.last("/chat/completions").json
    assert [t["function"]["name"] for t in body["tools"]] == ["search"]
    sent = json.loads(body["messages"][-1]["content"])  # still JSON, smaller, with the answer
    assert 137 in [x.get("id") for x in sent["results"]] and len(body["messages"][-1]["content"]) < len(payload) / 3
    assert "ctxgate_expand" not in body["messages"][-1]["content"]


def test_tool_output_is_byte_identical_on_the_next_turn(proxy, upstream):
    payload, _ = search_payload()
    client = openai.OpenAI(base_url=proxy + "/v1", api_key="sk-test", max_retries=0, timeout=120)
    msgs = _openai_messages(payload)
    client.chat.completions.create(model="test-model", messages=msgs, tools=[CLIENT_TOOL])
    first = upstream.last("/chat/completions").json["messages"][-1]["content"]
    later = msgs + [
        {"role": "assistant", "content": "It was completed in 1889."},
        {"role": "user", "content": "And who designed it? Answer briefly, please."},
    ]
    client.chat.completions.create(model="test-model", messages=later, tools=[CLIENT_TOOL])
    again = upstream.last("/chat/completions").json["messages"][2]["content"]
    assert again == first


@pytest.mark.models
def test_v1_compress_applies_the_same_compressors(proxy):
    payload, _ = search_payload()
    messages = _openai_messages(payload)
    r = httpx.post(proxy + "/v1/compress", json={"messages": messages, "model": "gpt-4o"}, timeout=120)
    assert r.status_code == 200
    out = r.json()
    sent = json.loads(out["messages"][-1]["content"])
    assert 137 in [x.get("id") for x in sent["results"]] and out["tokens_after"] < out["tokens_before"] / 2
    rag = httpx.post(
        proxy + "/v1/compress", json={"context": payload, "question": QUESTION, "rate": 0.2}, timeout=120
    ).json()
    assert rag["kinds"] == ["json"] and json.loads(rag["compressed"])["total"] == 200


# ------------------------------------------------------------------ the second audit's expand findings


def _calls(upstream, route: str) -> list:
    return [c for c in upstream.calls if c.path.endswith("/messages" if route == "messages" else "/chat/completions")]


def _ask(url: str, route: str, payload: str, behaviour: str, tools: bool = True) -> str:
    """The client's final text, through the official SDK of the route."""
    if route == "messages":
        client = anthropic.Anthropic(base_url=url, api_key="sk-ant-test", max_retries=0, timeout=120)
        extra = {"tools": [{"name": "search", "input_schema": {"type": "object"}}]} if tools else {}
        r = client.messages.create(
            model="test-model",
            max_tokens=64,
            messages=_anthropic_messages(payload),
            extra_headers={"x-test-behavior": behaviour},
            **extra,
        )
        assert [b.type for b in r.content] == ["text"], r.content  # never our tool_use
        return r.content[0].text
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="test-model",
        messages=_openai_messages(payload),
        extra_headers={"x-test-behavior": behaviour},
        **({"tools": [CLIENT_TOOL]} if tools else {}),
    )
    assert r.choices[0].message.tool_calls is None  # never our call
    return r.choices[0].message.content


@pytest.mark.models
@pytest.mark.parametrize("route", ["chat", "messages"])
def test_a_model_that_keeps_expanding_is_made_to_answer_on_the_last_round(expand_proxy, upstream, route):
    """With our tool the only one, the last follow-up says tool_choice none: the client was sent a
    call to ctxgate_expand, a tool it never defined (second audit)."""
    from ctxgate.service._expand import MAX_ROUNDS

    payload, _ = search_payload()
    text = _ask(expand_proxy, route, payload, "expand:always", tools=False)
    calls = _calls(upstream, route)
    assert len(calls) == MAX_ROUNDS + 1 and text.startswith("results ")
    assert [c.json.get("tool_choice") for c in calls[:-1]] == [None] * MAX_ROUNDS
    assert calls[-1].json["tool_choice"] in ("none", {"type": "none"})
    # one original, then "expanded above" for the same ref
    lengths = [int(n) for n in text.removeprefix("results ").split(",")]
    assert lengths[0] > len(payload) / 2 and all(n < 200 for n in lengths[1:]), lengths


@pytest.mark.models
def test_a_ref_from_another_request_is_not_answered(expand_proxy, upstream):
    """A ref is a content hash: answered for anyone, it handed one tenant's original to another's
    model (second audit). Only the refs of the request's own shortened outputs are answered."""
    from ctxgate.service._expand import UNKNOWN

    payload, _ = search_payload()
    _ask(expand_proxy, "chat", payload, "expand")
    foreign = _calls(upstream, "chat")[0].json
    ref = EXPAND_REF.findall(json.dumps(foreign["messages"]))[0]
    upstream.clear()
    other = payload.replace("Eiffel", "Effel")  # another tenant's output: other refs
    text = _ask(expand_proxy, "chat", other, f"expand:ref={ref}")
    second = _calls(upstream, "chat")[1].json
    assert ref not in json.dumps(_calls(upstream, "chat")[0].json["messages"])
    assert second["messages"][-1]["content"] == UNKNOWN and text == f"results {len(UNKNOWN)}"


@pytest.mark.models
def test_many_calls_for_one_ref_get_the_original_once(expand_proxy, upstream):
    """Fifty calls in one turn were each answered with the full original, and the follow-up
    bodies grew to 4 MB (second audit)."""
    from ctxgate.service._expand import MAX_TOTAL_CHARS

    payload, _ = search_payload()
    _ask(expand_proxy, "chat", payload, "expand:many")
    follow = _calls(upstream, "chat")[1].json["messages"]
    answers = [m["content"] for m in follow if m.get("role") == "tool" and m["tool_call_id"].startswith("call_x")]
    assert len(answers) == 50 and json.loads(answers[0]) == json.loads(payload)
    assert len(set(answers[1:])) == 1 and len(answers[1]) < 200
    assert sum(map(len, answers)) <= MAX_TOTAL_CHARS
