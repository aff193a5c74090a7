"""The sidecar as a proxy: real server, real SDKs, real upstream, real NQ documents.

Most tests use the model-free ``truncate`` method (the plumbing is under test, not the method);
the prefix-stability test uses the question-aware ``extractive`` method, since only a
question-aware method can break prefixes when the question changes.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.helpers.clients import SYSTEM, ant, oai, rag_prompt
from tests.helpers.metrics import value
from tests.helpers.upstreams import stream_events


@pytest.fixture(scope="module")
def shared_proxy(test_upstream):
    """One sidecar for the tests below that need no special settings."""
    from tests.helpers.servers import proxy_settings, run_sidecar

    with run_sidecar(proxy_settings(test_upstream.url, compress_timeout=120)) as url:
        yield url


@pytest.fixture()
def proxy(shared_proxy, upstream):
    return shared_proxy


@pytest.mark.models
def test_openai_rag_prompt_is_compressed_and_the_rest_is_verbatim(proxy, upstream, nq_item):
    prompt = rag_prompt(nq_item)
    raw = oai(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
        temperature=0,
        extra_body={"vendor_extension": {"a": [1, 2]}},
    )
    sent = upstream.last("/chat/completions").json
    user = sent["messages"][1]["content"]
    assert sent["messages"][0] == {"role": "system", "content": SYSTEM}
    assert user.endswith(f"\n\nQuestion: {nq_item['question']}\nAnswer:")  # the question, verbatim
    assert len(user) < 0.5 * len(prompt)
    assert sent["vendor_extension"] == {"a": [1, 2]} and sent["temperature"] == 0 and "ctxgate" not in sent
    before, after = int(raw.headers["x-ctxgate-tokens-before"]), int(raw.headers["x-ctxgate-tokens-after"])
    assert after < 0.5 * before and raw.headers["x-ctxgate-cache"] == "miss"
    assert float(raw.headers["x-ctxgate-ratio"]) == pytest.approx(before / after, rel=1e-3)
    assert "x-ctxgate-tokens-estimated" not in raw.headers  # exact, in the model's tokenizer
    assert raw.headers["x-ctxgate-tokenizer"] == "gpt-4o-mini"
    # the upstream's response comes back as it was: body, unknown fields, its own headers
    assert raw.headers["x-request-id"] == "req-ok" and raw.headers["openai-processing-ms"] == "7"
    completion = raw.parse()
    assert completion.choices[0].message.content == f"ok {len(json.dumps(sent['messages']))}"
    assert completion.model_extra["unknown_vendor_field"] == {"kept": True}
    # credentials pass through to upstream; our control headers do not
    assert upstream.last().headers["authorization"] == "Bearer sk-test-secret"


@pytest.mark.models
def test_repeat_is_a_cache_hit_with_identical_bytes(proxy, upstream, nq_item):
    msgs = [{"role": "user", "content": rag_prompt(nq_item, 6)}]
    first = oai(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
    body1 = upstream.last().raw
    second = oai(proxy).chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
    assert (first.headers["x-ctxgate-cache"], second.headers["x-ctxgate-cache"]) == ("miss", "hit")
    assert upstream.last().raw == body1
    assert second.headers["x-ctxgate-tokens-after"] == first.headers["x-ctxgate-tokens-after"]
    metrics = httpx.get(proxy + "/metrics").text
    assert value(metrics, "ctxgate_cache_hits_total") >= 1


@pytest.mark.models
def test_anthropic_tool_results_are_compressed_and_blocks_kept(proxy, upstream, nq_item):
    docs = "\n\n".join(c["text"] for c in nq_item["ctxs"][:6])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"q": nq_item["question"]}}
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": nq_item["question"]}, image]},
        {"role": "assistant", "content": [tool_use]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": docs}],
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    tools = [{"name": "search", "description": "search Wikipedia", "input_schema": {"type": "object"}}]
    raw = ant(proxy).messages.with_raw_response.create(
        model="claude-3-5-haiku-latest", max_tokens=64, system=SYSTEM, messages=msgs, tools=tools
    )
    assert raw.parse().content[0].text.startswith("ok ")
    sent = upstream.last("/v1/messages").json
    assert sent["system"] == SYSTEM and sent["tools"] == tools
    assert sent["messages"][0]["content"] == msgs[0]["content"]  # short question and image untouched
    assert sent["messages"][1]["content"] == [tool_use]
    result = sent["messages"][2]["content"][0]
    assert result["cache_control"] == {"type": "ephemeral"} and result["tool_use_id"] == "toolu_1"
    assert len(result["content"][0]["text"]) < 0.5 * len(docs)
    got = upstream.last().headers  # anthropic SDK 2.x sends the key as a bearer token
    assert "sk-ant-test-secret" in (got.get("x-api-key", "") + got.get("authorization", ""))
    assert "anthropic-version" in upstream.last().headers
    # Claude has no local tokenizer: counts are labelled estimates but still reported
    assert int(raw.headers["x-ctxgate-tokens-after"]) < int(raw.headers["x-ctxgate-tokens-before"])
    assert raw.headers["x-ctxgate-tokens-estimated"] == "true"


@pytest.mark.parametrize("route", ["chat", "messages"])
def test_streams_pass_through_byte_for_byte(proxy, upstream, route):
    body = {"model": "m", "stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "Say hello"}]}
    path = "/v1/chat/completions" if route == "chat" else "/v1/messages"
    chunks = []
    with httpx.stream("POST", proxy + path, json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"] == "req-sse"
        chunks = list(r.iter_raw())
    assert b"".join(chunks) == b"".join(stream_events(body, anthropic=route == "messages"))
    if route == "chat":
        assert b"".join(chunks).endswith(b"data: [DONE]\n\n") and b'"usage"' in b"".join(chunks)


@pytest.mark.models
def test_sdk_streaming_openai_and_anthropic(proxy, upstream, nq_item):
    stream = oai(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": rag_prompt(nq_item, 4)}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the test upstream"
    assert chunks[-1].usage.completion_tokens == 5
    assert len(upstream.last().json["messages"][0]["content"]) < len(rag_prompt(nq_item, 4))
    with ant(proxy).messages.stream(
        model="claude-3-5-haiku-latest", max_tokens=16, messages=[{"role": "user", "content": "Say hello"}]
    ) as s:
        assert "".join(s.text_stream) == "Hello from the test upstream"
        assert s.get_final_message().stop_reason == "end_turn"


def test_bypass_forwards_the_exact_bytes(proxy, upstream, nq_item):
    payload = json.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": rag_prompt(nq_item)}], "weird": 1.50}
    ).encode()
    r = httpx.post(
        proxy + "/v1/chat/completions",
        content=payload,
        timeout=30,
        headers={"content-type": "application/json", "x-ctxgate-bypass": "1"},
    )
    assert r.status_code == 200 and r.headers["x-ctxgate-cache"] == "bypass"
    assert upstream.last().raw == payload
    assert not any(k.startswith("x-ctxgate") for k in upstream.last().headers)
    # the body field works too, and is removed before forwarding
    c = oai(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": rag_prompt(nq_item)}],
        extra_body={"ctxgate": {"bypass": True}},
    )
    assert c.headers["x-ctxgate-cache"] == "bypass"
    sent = upstream.last().json
    assert "ctxgate" not in sent and sent["messages"][0]["content"] == rag_prompt(nq_item)


def test_bypass_strips_tags_however_the_json_spells_them(proxy, upstream):
    headers = {"content-type": "application/json", "x-ctxgate-bypass": "1"}
    # json.dumps escapes non-ASCII as \u00e9: no tag inside, so still forwarded byte for byte
    plain = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Caf\u00e9 au lait?"}]}).encode()
    assert b"\\u00e9" in plain
    httpx.post(proxy + "/v1/chat/completions", content=plain, headers=headers, timeout=30)
    assert upstream.last().raw == plain
    # a tag with its letters \u-escaped is still a tag once decoded, and must not reach upstream
    escaped = (
        b'{"model": "m", "messages": [{"role": "user", "content": '
        b'"<\\u0063txgate:keep>code 7</\\u0043TXGATE:keep> now?"}]}'
    )
    r = httpx.post(proxy + "/v1/chat/completions", content=escaped, headers=headers, timeout=30)
    assert r.status_code == 200
    assert upstream.last().json["messages"][0]["content"] == "code 7 now?"


@pytest.mark.models
def test_rate_and_method_controls(proxy, upstream, nq_item):
    msgs = [{"role": "user", "content": rag_prompt(nq_item)}]
    sizes = {}
    for rate in ("0.2", "0.6"):
        r = oai(proxy).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=msgs, extra_headers={"x-ctxgate-rate": rate}
        )
        sizes[rate] = int(r.headers["x-ctxgate-tokens-after"])
    assert sizes["0.2"] < 0.6 * sizes["0.6"]
    r = oai(proxy).chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=msgs, extra_body={"ctxgate": {"method": "random", "rate": 0.4}}
    )
    random_text = upstream.last().json["messages"][0]["content"]
    # truncate keeps a prefix of the documents; random drops words all over
    assert not rag_prompt(nq_item).startswith(random_text.split("\n\nQuestion:")[0])
    assert int(r.headers["x-ctxgate-tokens-after"]) < int(r.headers["x-ctxgate-tokens-before"])


@pytest.mark.models
def test_markup_is_honoured_and_never_reaches_upstream(proxy, upstream, nq_item):
    docs = " ".join(c["text"] for c in nq_item["ctxs"][:3])
    keep = "The access code is ZX-4471-QQ."
    content = (
        f"<ctxgate:compress rate=0.2>{docs}</ctxgate:compress>\n\n"
        f"<ctxgate:keep>{keep}</ctxgate:keep>\n\nWhat is the code?"
    )
    system = "Be <ctxgate:keep>brief</ctxgate:keep>."
    oai(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": system},
            {"role": "user", "content": content},
            {"role": "assistant", "content": "Short <ctxgate:keep>reply</ctxgate:keep>"},
            {"role": "user", "content": "and <ctxgate:keep>now</ctxgate:keep>?"},
        ],
    )
    sent = upstream.last().json["messages"]
    # the client's own text is read for markup; a model's (or a tool's) text is literal
    assert [sent[i]["content"] for i in (0, 2, 3)] == [
        "Be brief.",
        "Short <ctxgate:keep>reply</ctxgate:keep>",
        "and now?",
    ]
    assert not any("ctxgate" in sent[i]["content"] for i in (0, 1, 3))
    assert sent[1]["content"].endswith(f"\n\n{keep}\n\nWhat is the code?")
    assert len(sent[1]["content"]) < 0.4 * len(docs)
    with pytest.raises(openai.BadRequestError, match="never closed"):
        oai(proxy).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "<ctxgate:keep>oops"}]
        )


def test_question_field_keeps_that_question_verbatim(proxy, upstream, nq_item):
    question = f"Given all that, {nq_item['question']}? Reply in one line."
    content = rag_prompt(nq_item).rsplit("\n\nQuestion:", 1)[0] + "\n" + question
    oai(proxy).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
        extra_body={"ctxgate": {"question": question}},
    )
    sent = upstream.last().json
    assert sent["messages"][0]["content"].endswith("\n" + question) and "ctxgate" not in sent


def test_models_and_query_strings_are_passed_through_to_the_fixed_host(proxy, upstream):
    models = oai(proxy).models.list()
    assert [m.id for m in models.data] == ["test-model", "small-window"]
    assert upstream.last().path == "/v1/models" and upstream.last().method == "GET"
    seen = len(upstream.calls)
    # on loopback only loopback names are served (DNS rebinding); nothing reaches the upstream
    r = httpx.post(
        proxy + "/v1/chat/completions",
        timeout=10,
        headers={"host": "evil.example"},
        json={"model": "x", "messages": []},
    )
    assert r.status_code == 400 and "allowed_hosts" in r.json()["error"]["message"]
    assert len(upstream.calls) == seen
    r = httpx.post(
        proxy + "/v1/chat/completions?api-version=2024-10-01",
        timeout=10,
        headers={"host": "localhost:1"},
        json={"model": "x", "messages": []},
    )
    assert r.status_code == 200 and upstream.last().query == "api-version=2024-10-01"
    assert upstream.last().headers["host"] == upstream.url.removeprefix("http://")
    # percent-escapes arrive as sent (not double-encoded); a fragment cannot be smuggled in
    r = httpx.post(
        proxy + "/v1/chat/completions?a=b%20c&k=%E2%82%AC&p=%2Fx%23y", timeout=10, json={"model": "x", "messages": []}
    )
    assert r.status_code == 200 and upstream.last().query == "a=b%20c&k=%E2%82%AC&p=%2Fx%23y"
    assert upstream.last().path == "/v1/chat/completions"


def test_long_upstream_headers_pass_through(proxy, upstream):
    r = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "x", "messages": []},
        timeout=10,
        headers={"x-test-behavior": "long-header"},
    )
    assert r.status_code == 200 and r.headers["x-long"] == "v" * 20_000


def test_client_disconnect_cancels_the_upstream_stream(proxy, upstream):
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Say hello"}]}
    with httpx.stream(
        "POST", proxy + "/v1/chat/completions", json=body, timeout=30, headers={"x-test-behavior": "drip"}
    ) as r:
        it = r.iter_raw()
        next(it)
        next(it)
    deadline = time.monotonic() + 10
    while not upstream.aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.aborted == ["/v1/chat/completions"]


def test_concurrent_streams_are_not_mixed_up(proxy, upstream):
    errors: list[str] = []

    def one(i: int) -> None:
        body = {"model": f"m{i}", "stream": True, "messages": [{"role": "user", "content": f"hello {i}"}]}
        with httpx.stream("POST", proxy + "/v1/chat/completions", json=body, timeout=30) as r:
            got = b"".join(r.iter_raw())
        if got != b"".join(stream_events(body, anthropic=False)):
            errors.append(f"stream {i} corrupted")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and len(upstream.calls) == 20


def test_upstream_proxy_comes_from_the_environment_once_and_honours_no_proxy(monkeypatch):
    from ctxgate.service._upstream import _env_proxy

    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp.example")
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert _env_proxy("http://api.example.com/v1") == "http://proxy.internal:3128"
    assert _env_proxy("http://127.0.0.1:8000/v1") is None  # NO_PROXY
    assert _env_proxy("http://llm.corp.example/v1") is None  # NO_PROXY domain suffix
    assert _env_proxy("https://api.example.com/v1") is None  # no HTTPS_PROXY set
