"""``policy.fit_context``: a prompt that would overflow its model's context window is compressed
harder until it fits, and only a prompt that cannot fit reaches the upstream's own error.

The upstream is real and strict: ``small-window`` reports ``max_model_len: 1024`` in its
``/v1/models`` (as vLLM does) and answers 400 ``context_length_exceeded`` to any prompt whose
tokens plus ``max_tokens`` exceed it. The prompts are real NQ documents.
"""

from __future__ import annotations

import anthropic
import openai
import pytest

from ctxgate.service._windows import builtin_window, reported_windows, request_reserve
from tests.helpers.clients import ant, oai
from tests.helpers.data import nq_docs, nq_items
from tests.helpers.metrics import metric
from tests.helpers.upstreams import SMALL_MODEL, SMALL_WINDOW, prompt_tokens


def _docs(row: int = 0, n: int = 20) -> str:
    return "\n\n".join(nq_docs(nq_items(row + 1)[row])[:n])


def _metric(url: str, outcome: str) -> float:
    return metric(url, "ctxgate_fit_context_total", route="chat", outcome=outcome)


@pytest.mark.models
def test_a_prompt_over_the_window_is_compressed_until_it_fits(sidecar, upstream):
    item = nq_items(1)[0]
    question = item["question"] + "?"
    messages = [{"role": "user", "content": _docs() + "\n\n" + question}]
    with sidecar(policy={"rate": 0.6}) as url:
        # what the rate alone would send: still over the window, so the upstream refuses it
        with pytest.raises(openai.BadRequestError) as refused:
            oai(url).chat.completions.create(
                model=SMALL_MODEL, messages=messages, max_tokens=64, extra_body={"ctxgate": {"fit_context": False}}
            )
        assert "maximum context length" in str(refused.value)
        raw = oai(url).chat.completions.with_raw_response.create(model=SMALL_MODEL, messages=messages, max_tokens=64)
        assert raw.headers["x-ctxgate-fit-context"] == "fitted"
        assert raw.headers["x-ctxgate-context-window"] == str(SMALL_WINDOW)
        sent = upstream.last("/chat/completions").json
        assert prompt_tokens(sent) + 64 <= SMALL_WINDOW
        assert sent["messages"][0]["content"].endswith(question)  # the question stays verbatim
        assert int(raw.headers["x-ctxgate-tokens-after"]) < int(raw.headers["x-ctxgate-tokens-before"]) * 0.4
        assert _metric(url, "fitted") == 1


@pytest.mark.models
def test_anthropic_fits_too(sidecar, upstream):
    docs = _docs(1)
    with sidecar(policy={"rate": 0.8}) as url:
        raw = ant(url).messages.with_raw_response.create(
            model=SMALL_MODEL,
            max_tokens=100,
            system=docs,
            messages=[{"role": "user", "content": nq_items(2)[1]["question"] + "?"}],
        )
        assert raw.headers["x-ctxgate-fit-context"] == "fitted"
        assert prompt_tokens(upstream.last("/messages").json) + 100 <= SMALL_WINDOW


@pytest.mark.models
def test_a_prompt_that_cannot_fit_gets_the_upstreams_own_error(sidecar, upstream):
    # forty short turns: no message is long enough to compress, together far over the window
    turns = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"Turn {i}: " + "ok then, " * 12} for i in range(80)
    ]
    with sidecar() as url:
        with pytest.raises(openai.BadRequestError) as err:
            oai(url).chat.completions.create(model=SMALL_MODEL, messages=turns, max_tokens=10)
        assert err.value.code == "context_length_exceeded"
        assert err.value.response.headers["x-ctxgate-fit-context"] == "too-long"
        assert _metric(url, "too_long") == 1
        # the turns went upstream as the client sent them
        assert upstream.last("/chat/completions").json["messages"] == turns


@pytest.mark.models
def test_the_config_window_beats_the_upstream_report(sidecar):
    messages = [{"role": "user", "content": _docs(2) + "\n\nWhich document answers this?"}]
    with sidecar(policy={"rate": 0.6}, context_windows={"small-*": 100_000}) as url:
        with pytest.raises(openai.BadRequestError):  # we believed the config; the upstream knows better
            oai(url).chat.completions.create(model=SMALL_MODEL, messages=messages, max_tokens=64)
    with sidecar(policy={"rate": 0.6}, context_windows={"small-*": 900}) as url:
        raw = oai(url).chat.completions.with_raw_response.create(model=SMALL_MODEL, messages=messages, max_tokens=64)
        assert raw.headers["x-ctxgate-context-window"] == "900"


@pytest.mark.models
def test_a_prompt_that_fits_is_left_to_the_rate(sidecar):
    with sidecar() as url:
        raw = oai(url).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": _docs(3)}], max_tokens=64
        )
        assert "x-ctxgate-fit-context" not in raw.headers
        assert raw.headers["x-ctxgate-cache"] == "miss"


def test_window_sources():
    assert builtin_window("gpt-4") == 8192 and builtin_window("gpt-4-32k-0613") == 32768
    assert builtin_window("claude-sonnet-4-5") == 200_000 and builtin_window("my-local-model") is None
    body = {
        "data": [
            {"id": "a", "max_model_len": 4096},
            {"id": "b", "context_length": 32000},
            {"id": "c", "context_window": True},
            {"id": 5, "max_model_len": 9},
            "junk",
        ]
    }
    assert reported_windows(body) == {"a": 4096, "b": 32000}
    assert reported_windows({"data": "nope"}) == {} and reported_windows([1, 2]) == {}
    assert request_reserve("chat", {"max_completion_tokens": 50, "max_tokens": 10}) == 50
    assert request_reserve("messages", {"max_tokens": 300}) == 300
    assert request_reserve("chat", {"max_tokens": "lots"}) == 0


@pytest.mark.models
def test_anthropic_sdk_error_type_is_kept(sidecar):
    with sidecar() as url:
        with pytest.raises(anthropic.BadRequestError) as err:
            ant(url).messages.create(
                model=SMALL_MODEL,
                max_tokens=10,
                messages=[
                    {"role": "user" if i % 2 == 0 else "assistant", "content": "short turn " * 10} for i in range(120)
                ],
            )
        assert err.value.response.headers["x-ctxgate-fit-context"] == "too-long"
