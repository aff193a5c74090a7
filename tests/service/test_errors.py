"""Faults and bad input: every error reaches the client in the provider's own format and status,
the proxy fails open when compression cannot finish, and the server stays healthy afterwards."""

from __future__ import annotations

import contextlib
import json
import time

import anthropic
import httpx
import openai
import pytest

from tests.helpers.clients import ant, oai, rag_prompt
from tests.helpers.metrics import value
from tests.helpers.servers import free_port


@pytest.fixture(scope="module")
def shared(test_upstream):
    from tests.helpers.servers import proxy_settings, run_sidecar

    s = proxy_settings(test_upstream.url, upstream_timeout=1.0, max_body_bytes=256 * 1024, compress_timeout=120)
    with run_sidecar(s) as url:
        yield url


@pytest.fixture()
def proxy(shared, upstream):
    yield shared
    assert httpx.get(shared + "/healthz").status_code == 200  # still healthy after each fault


def test_malformed_json_is_400_in_each_provider_format(proxy, upstream):
    r = httpx.post(
        proxy + "/v1/chat/completions",
        content=b'{"model": "x", "messages": [',
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(proxy + "/v1/messages", content=b"[1, 2]", timeout=10)
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


def test_body_over_the_limit_is_413(proxy, upstream):
    big = {"model": "x", "messages": [{"role": "user", "content": "word " * 100_000}]}
    with pytest.raises(openai.APIStatusError) as exc:
        oai(proxy).chat.completions.create(**big)
    assert exc.value.status_code == 413 and "size limit" in exc.value.message
    with pytest.raises(anthropic.APIStatusError) as exc2:
        ant(proxy).messages.create(max_tokens=5, **big)
    assert exc2.value.status_code == 413 and exc2.value.body["error"]["type"] == "request_too_large"
    assert upstream.requests == []


@pytest.mark.parametrize(
    "header,value",
    [("x-ctxgate-rate", "2"), ("x-ctxgate-rate", "lots"), ("x-ctxgate-method", "magic"), ("x-ctxgate-bypass", "maybe")],
)
def test_bad_control_headers_are_400_naming_the_header(proxy, upstream, header, value):
    with pytest.raises(openai.BadRequestError) as exc:
        oai(proxy).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], extra_headers={header: value}
        )
    assert header in exc.value.message and exc.value.body["param"] == header
    with pytest.raises(anthropic.BadRequestError, match=header):
        ant(proxy).messages.create(
            model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}], extra_headers={header: value}
        )
    with pytest.raises(openai.BadRequestError, match="ctxgate.rate"):
        oai(proxy).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], extra_body={"ctxgate": {"rate": 0}}
        )
    assert upstream.requests == []


@pytest.mark.models
def test_unknown_fields_empty_messages_and_non_text_parts_pass_untouched(proxy, upstream, nq_item):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}}
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": rag_prompt(nq_item, 5)}, image], "x_meta": 7},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_9", "content": '{"a": 1}'},
    ]
    oai(proxy).chat.completions.create(model="x", messages=msgs, extra_body={"future_param": {"deep": [None]}})
    sent = upstream.last().json
    assert sent["future_param"] == {"deep": [None]} and sent["messages"][0]["x_meta"] == 7
    assert sent["messages"][0]["content"][1] == image and sent["messages"][1:] == msgs[1:]
    assert len(sent["messages"][0]["content"][0]["text"]) < len(rag_prompt(nq_item, 5))
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "x", "messages": []}, timeout=10)
    assert r.status_code == 200 and upstream.last().json["messages"] == []


def test_upstream_500_reaches_the_client_as_is(proxy, upstream):
    with pytest.raises(openai.InternalServerError) as exc:
        oai(proxy).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-test-behavior": "error500"}
        )
    assert exc.value.status_code == 500 and exc.value.body["code"] == "boom"
    assert exc.value.response.headers["x-request-id"] == "req-500"
    with pytest.raises(anthropic.InternalServerError, match="upstream exploded"):
        ant(proxy).messages.create(
            model="x",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-behavior": "error500"},
        )


def test_upstream_timeout_is_504(proxy, upstream):
    with pytest.raises(openai.APIStatusError) as exc:
        oai(proxy).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-test-behavior": "slow:3"}
        )
    assert exc.value.status_code == 504 and "timed out" in exc.value.message
    with pytest.raises(anthropic.APIStatusError) as exc2:
        ant(proxy).messages.create(
            model="x",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-behavior": "slow:3"},
        )
    assert exc2.value.status_code == 504 and exc2.value.body["type"] == "error"


def _chunks_until_error(proxy: str, behavior: str, match: str) -> list:
    """The OpenAI SDK's chunks of a stream that must end in an SSE error event matching ``match``."""
    stream = oai(proxy).chat.completions.create(
        model="x",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        extra_headers={"x-test-behavior": behavior},
    )
    got = []
    with pytest.raises(openai.APIError, match=match):
        for chunk in stream:
            got.append(chunk)
    return got


def test_upstream_reset_mid_stream_and_mid_body(proxy, upstream):
    got = _chunks_until_error(proxy, "reset", "broke off")
    assert len(got) == 2  # what arrived before the reset
    with pytest.raises(anthropic.APIError, match="broke off"):
        with ant(proxy).messages.stream(
            model="x",
            max_tokens=5,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-test-behavior": "reset"},
        ) as s:
            list(s.text_stream)
    with pytest.raises(openai.APIStatusError) as exc:
        oai(proxy).chat.completions.create(
            model="x", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-test-behavior": "reset"}
        )
    assert exc.value.status_code == 502
    assert value(httpx.get(proxy + "/metrics").text, "ctxgate_upstream_errors_total", kind="reset", route="chat") >= 2


def test_an_upstream_that_stalls_mid_stream_ends_it_with_a_timeout_event(proxy, upstream):
    before = value(httpx.get(proxy + "/metrics").text, "ctxgate_upstream_errors_total", kind="timeout", route="chat")
    t0 = time.monotonic()
    got = _chunks_until_error(proxy, "stall:4", "broke off.*TimeoutError")
    assert len(got) == 2  # what arrived before the silence
    assert time.monotonic() - t0 < 3.5  # upstream_timeout=1, not the stall's 4 s
    after = value(httpx.get(proxy + "/metrics").text, "ctxgate_upstream_errors_total", kind="timeout", route="chat")
    assert after == before + 1


@pytest.mark.models
def test_a_bad_upstream_answer_is_passed_through_not_rewritten(proxy, upstream):
    r = httpx.post(
        proxy + "/v1/chat/completions",
        json={"model": "x", "messages": []},
        timeout=10,
        headers={"x-test-behavior": "garbage"},
    )
    assert (r.status_code, r.content) == (200, b"<html>definitely not json")
    assert r.headers["content-type"].startswith("text/html")


def test_unreachable_upstream_is_502(sidecar):
    from tests.helpers.servers import free_port

    with sidecar(upstream=f"http://127.0.0.1:{free_port()}/v1", anthropic_upstream=None) as url:
        with pytest.raises(openai.APIStatusError) as exc:
            oai(url).chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
        assert exc.value.status_code == 502 and "unreachable" in exc.value.message
        with pytest.raises(anthropic.APIStatusError) as exc2:  # derived Anthropic base: same dead host
            ant(url).messages.create(model="x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        assert exc2.value.status_code == 502


@pytest.mark.models
def test_fail_open_when_the_time_budget_runs_out(sidecar, upstream, nq_item):
    prompt = rag_prompt(nq_item, 20)
    with sidecar(compress_timeout=0.001) as url:
        r = oai(url).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        assert r.headers["x-ctxgate-fail-open"] == "timeout"
        assert upstream.last().json["messages"][0]["content"] == prompt  # forwarded uncompressed
        assert value(httpx.get(url + "/metrics").text, "ctxgate_fail_open_total", reason="timeout") == 1


@pytest.fixture()
def slow_truncate(monkeypatch):
    """Fault injection: the model-free truncate method takes 1 s, well past a 0.3 s budget."""
    from ctxgate.compressor.methods.baselines import Truncate

    real = Truncate.run

    def slow(self, job):
        time.sleep(1.0)
        return real(self, job)

    monkeypatch.setattr(Truncate, "run", slow)


def _wait_background(url: str, n: int = 1) -> None:
    deadline = time.monotonic() + 60
    while value(httpx.get(url + "/metrics").text, "ctxgate_background_compressions_total") < n:
        assert time.monotonic() < deadline, "the background compression never finished"
        time.sleep(0.05)


@pytest.mark.models
def test_a_compression_that_outlives_its_request_is_cached_but_its_conversation_stays_uncompressed(
    sidecar, upstream, nq_item, slow_truncate
):
    prompt = rag_prompt(nq_item, 20)
    turn1 = [{"role": "user", "content": prompt}]
    with sidecar(compress_timeout=0.3) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": turn1}, timeout=60)
        assert r.headers["x-ctxgate-fail-open"] == "timeout" and r.headers["x-ctxgate-segments"] == "failed-open=1"
        assert upstream.last("/chat/completions").json["messages"] == turn1  # untouched
        _wait_background(url)
        assert value(httpx.get(url + "/metrics").text, "ctxgate_cache_misses_total") == 0  # no request carried it
        # the next turn of that conversation: the provider cached the documents uncompressed, so
        # they go again byte for byte, although a compression is now in the cache
        turn2 = turn1 + [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "And who else?"}]
        r2 = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": turn2}, timeout=60)
        assert "x-ctxgate-fail-open" not in r2.headers
        assert "kept-uncompressed=1" in r2.headers["x-ctxgate-segments"]
        assert upstream.last("/chat/completions").json["messages"][0]["content"] == prompt
        # another conversation (its own system prompt) over the same documents gets the compression
        other = [{"role": "system", "content": "You are terse."}, *turn1]
        r3 = httpx.post(url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": other}, timeout=60)
        assert r3.headers["x-ctxgate-cache"] == "hit" and r3.headers["x-ctxgate-segments"] == "hit=1"
        assert len(upstream.last("/chat/completions").json["messages"][1]["content"]) < len(prompt) / 1.5


@pytest.mark.models
def test_without_sticky_uncompressed_the_next_turn_takes_the_background_result(
    sidecar, upstream, nq_item, slow_truncate
):
    prompt = rag_prompt(nq_item, 20)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    with sidecar(compress_timeout=0.3, policy={"sticky_uncompressed": False}) as url:
        assert (
            httpx.post(url + "/v1/chat/completions", json=body, timeout=60).headers["x-ctxgate-fail-open"] == "timeout"
        )
        _wait_background(url)
        again = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert again.headers["x-ctxgate-cache"] == "hit" and "x-ctxgate-fail-open" not in again.headers
        assert len(upstream.last("/chat/completions").json["messages"][0]["content"]) < len(prompt) / 1.5


@pytest.mark.models
def test_a_request_that_waited_for_another_ones_compression_is_a_miss(sidecar, upstream, nq_item, slow_truncate):
    # two requests with the same documents at once: one compresses, the other waits for it in the
    # queue and takes its result from the cache; it paid the wait, so it is not reported as a hit
    import concurrent.futures

    prompt = rag_prompt(nq_item, 20)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]}
    with sidecar(compress_timeout=10) as url:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            rs = list(pool.map(lambda _: httpx.post(url + "/v1/chat/completions", json=body, timeout=60), range(2)))
        assert sorted(r.headers["x-ctxgate-cache"] for r in rs) == ["miss", "miss"]
        assert all(float(r.headers["x-ctxgate-compress-seconds"]) >= 0.9 for r in rs)
        third = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert third.headers["x-ctxgate-cache"] == "hit" and float(third.headers["x-ctxgate-compress-seconds"]) < 0.5


def test_fail_open_when_the_method_errors(sidecar, upstream, nq_item):
    # a scorer that does not exist: the hybrid method fails when it runs, the request still goes through
    prompt = rag_prompt(nq_item, 5)
    with sidecar(
        default_method="hybrid", scorer="no-such-model", embedder="no-such-embedder", warm_up=False, compress_timeout=60
    ) as url:
        r = oai(url).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        assert r.headers["x-ctxgate-fail-open"] == "error" and r.parse().choices[0].message.content.startswith("ok")
        assert upstream.last().json["messages"][0]["content"] == prompt
        assert value(httpx.get(url + "/metrics").text, "ctxgate_fail_open_total", reason="error") == 1


@pytest.mark.models
def test_models_that_fail_to_load_leave_the_proxy_failing_open_and_not_ready(sidecar, upstream, nq_item):
    # warm-up loads the default method's models at start; when that fails, /readyz says why (no
    # traceback), chat traffic still flows uncompressed and is counted, and /v1/compress is a 503
    prompt = rag_prompt(nq_item, 5)
    with sidecar(default_method="hybrid", scorer="no-such-model", embedder="no-such-embedder", warm_up=True) as url:
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "failed"
        assert "no-such" in ready.json()["error"] and "Traceback" not in ready.text
        r = oai(url).chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}]
        )
        assert r.headers["x-ctxgate-fail-open"] == "not_ready"
        assert upstream.last().json["messages"][0]["content"] == prompt
        metrics = httpx.get(url + "/metrics").text
        assert value(metrics, "ctxgate_fail_open_total", reason="not_ready") == 1
        assert value(metrics, "ctxgate_ready") == 0
        rag = httpx.post(url + "/v1/compress", json={"context": ["a document"], "question": "q?", "rate": 0.5})
        assert rag.status_code == 503 and "loading" in rag.json()["error"]["message"]


@pytest.mark.models
def test_a_huge_single_message_is_bounded_by_the_budget(sidecar, upstream, nq_item):
    text = "\n\n".join(c["text"] for c in nq_item["ctxs"]) * 60  # ~1.5 MB of real text
    with sidecar(compress_timeout=2.0, max_input_tokens=100_000, max_body_bytes=8 * 1024 * 1024) as url:
        r = httpx.post(
            url + "/v1/chat/completions",
            timeout=120,
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text + "\n\nWhy?"}]},
        )
        assert r.status_code == 200 and r.headers["x-ctxgate-fail-open"] in ("timeout", "too_large")
        assert len(upstream.last().json["messages"][0]["content"]) == len(text) + len("\n\nWhy?")
        assert httpx.get(url + "/healthz").status_code == 200
        assert json.loads(httpx.get(url + "/readyz").content)["status"] == "ready"


def test_keys_and_prompts_never_reach_the_logs(sidecar, upstream, nq_item, caplog):
    """Every path that logs (upstream 5xx, reset streams, an unreachable upstream, a failing shadow
    check, compression failing open) is driven with a real key and a marked prompt; no log record of
    any logger holds either."""
    import logging

    from ctxgate.service._config import FidelitySettings

    caplog.set_level(logging.DEBUG)
    key, marker = "sk-live-0123456789abcdef", "ZEBRA-CANARY-7731"
    prompt = rag_prompt(nq_item, 8) + f" {marker}"
    with sidecar(fidelity=FidelitySettings(sample_rate=1.0)) as url:
        oai_client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
        ant_client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=30)
        for behavior in ("error500", "reset", "garbage", "ok"):
            with contextlib.suppress(openai.APIError, anthropic.APIError):
                oai_client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": prompt}],
                    extra_headers={"x-test-behavior": behavior},
                )
            with contextlib.suppress(openai.APIError, anthropic.APIError):
                ant_client.messages.create(
                    model="m",
                    max_tokens=8,
                    messages=[{"role": "user", "content": prompt}],
                    extra_headers={"x-test-behavior": behavior},
                )
        deadline = time.monotonic() + 60  # the shadow checks of the "ok" requests
        while httpx.get(url + "/v1/fidelity", timeout=30).json()["in_flight"] and time.monotonic() < deadline:
            time.sleep(0.05)
    closed = f"http://127.0.0.1:{free_port()}"  # bound, then released: connection refused
    with sidecar(upstream=closed + "/v1", anthropic_upstream=closed, compress_timeout=0.001) as url:
        oai_client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)
        with contextlib.suppress(openai.APIError):
            oai_client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}])
    fmt = logging.Formatter()
    # every logger but the test's own SDK clients, which log their request bodies at DEBUG
    records = [r for r in caplog.records if not r.name.startswith(("openai", "anthropic"))]
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {fmt.formatException(r.exc_info) if r.exc_info else ''}" for r in records
    )
    assert any(r.name.startswith("ctxgate") for r in records), "the sidecar logged nothing: the paths did not run"
    assert key not in logged and marker not in logged
