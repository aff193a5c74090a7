"""The embedded local upstream: with no upstream configured, the sidecar answers with SmolLM2 behind
the proxy, through the official SDKs, streaming included. Short, greedy, real generations."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.clients import ant, oai, rag_prompt

pytestmark = pytest.mark.models  # every test here loads a prepared model


@pytest.fixture(scope="module")
def embedded(test_upstream):
    from ctxgate.service import CacheSettings, Policy, Settings
    from tests.helpers.servers import free_port, run_sidecar

    s = Settings(
        port=free_port(),
        cache=CacheSettings(backend="memory"),
        local_max_tokens=24,
        default_method="hybrid",
        policy=Policy(min_tokens=100, rate=0.3),
        compress_timeout=300,
    )
    with run_sidecar(s, ready_timeout=300) as url:
        assert httpx.get(url + "/readyz").json() == {"status": "ready"}
        yield url


def test_rag_request_is_compressed_and_answered_by_the_local_model(embedded, nq_item):
    prompt = rag_prompt(nq_item, 5)
    raw = oai(embedded).chat.completions.with_raw_response.create(
        model="smollm2", messages=[{"role": "user", "content": prompt}], max_tokens=12
    )
    before, after = int(raw.headers["x-ctxgate-tokens-before"]), int(raw.headers["x-ctxgate-tokens-after"])
    assert after < 0.5 * before and raw.headers["x-ctxgate-cache"] == "miss"
    completion = raw.parse()
    assert completion.model == "smollm2" and completion.choices[0].message.content.strip()
    assert 0 < completion.usage.completion_tokens <= 12
    # the local model saw the compressed prompt (its prompt count includes the chat template)
    assert completion.usage.prompt_tokens < before


def test_streaming_and_the_anthropic_sdk(embedded):
    chunks = list(
        oai(embedded).chat.completions.create(
            model="anything",
            messages=[{"role": "user", "content": "Name a color."}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage.completion_tokens <= 6
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    msg = ant(embedded).messages.create(
        model="smollm2",
        max_tokens=6,
        system="Answer in one word.",
        messages=[{"role": "user", "content": "Name a fruit."}],
    )
    assert msg.content[0].text.strip() and msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.output_tokens <= 6
    with ant(embedded).messages.stream(
        model="smollm2", max_tokens=6, messages=[{"role": "user", "content": "Say hi."}]
    ) as s:
        assert "".join(s.text_stream).strip()
    assert oai(embedded).models.list().data[0].id == "smollm2"
