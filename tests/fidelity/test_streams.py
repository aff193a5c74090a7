"""The SSE tee under faults (broken stream, client gone: nothing is compared, upstream is still hung
up on at once) and the fidelity settings (config file, env, validation)."""

from __future__ import annotations

import time

import httpx
import pytest

from ctxgate.compressor import ConfigError
from tests.helpers.metrics import metric


def long_prompt(item: dict) -> str:
    docs = "\n".join(c["text"] for c in item["ctxs"][:6])
    return f"{docs}\n\nQuestion: {item['question']}"


@pytest.fixture()
def shadowing(sidecar, tmp_path):
    from ctxgate.service._config import FidelitySettings

    return sidecar(fidelity=FidelitySettings(sample_rate=1.0, path=str(tmp_path / "fid.sqlite")))


@pytest.mark.models
def test_a_broken_stream_is_not_compared(shadowing, upstream, nq_item):
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": long_prompt(nq_item)}]}
    with shadowing as url:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, timeout=30, headers={"x-test-behavior": "reset"}
        ) as r:
            got = b"".join(r.iter_raw())
        assert b"broke off" in got  # the client saw the proxy's error event
        assert int(r.headers["x-ctxgate-tokens-after"]) < int(
            r.headers["x-ctxgate-tokens-before"]
        )  # numbers, not strings
        deadline = time.monotonic() + 30  # the relay's end is recorded just after the client's last byte
        while not metric(url, "ctxgate_fidelity_shadow_total", route="chat", result="incomplete"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert metric(url, "ctxgate_fidelity_shadow_total", route="chat", result="incomplete") == 1
        assert httpx.get(url + "/v1/fidelity", timeout=10).json()["budget"]["calls"] == 0
    assert len(upstream.calls) == 1  # no shadow call


@pytest.mark.models
def test_a_client_that_hangs_up_still_cancels_upstream_and_is_not_compared(shadowing, upstream, nq_item):
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": long_prompt(nq_item)}]}
    with shadowing as url:
        with httpx.stream(
            "POST", url + "/v1/chat/completions", json=body, timeout=30, headers={"x-test-behavior": "drip"}
        ) as r:
            it = r.iter_raw()
            next(it)
            next(it)
        deadline = time.monotonic() + 3  # at once, not when the generator is garbage-collected
        while not upstream.aborted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.aborted == ["/v1/chat/completions"]
        deadline = time.monotonic() + 3
        while metric(url, "ctxgate_fidelity_shadow_total", route="chat", result="incomplete") < 1:
            assert time.monotonic() < deadline, "the dropped stream was never counted as incomplete"
            time.sleep(0.05)
        assert httpx.get(url + "/v1/fidelity", timeout=10).json()["budget"]["calls"] == 0
    assert len(upstream.calls) == 1


def test_fidelity_settings_from_file_and_env(tmp_path):
    from ctxgate.service import load_settings

    cfg = tmp_path / "ctxgate.yaml"
    cfg.write_text("fidelity:\n  sample_rate: 0.05\n  threshold: 0.7\n  daily_max_tokens: 200000\n")
    s = load_settings(
        cfg,
        env={
            "CTXGATE_FIDELITY__STORE_TEXT": "true",
            "CTXGATE_FIDELITY__METRIC": "f1",
            "CTXGATE_FIDELITY__PATH": str(tmp_path / "f.sqlite"),
        },
    )
    f = s.fidelity
    assert (f.sample_rate, f.threshold, f.daily_max_tokens, f.store_text, f.metric) == (0.05, 0.7, 200000, True, "f1")
    assert s.fidelity_path() == tmp_path / "f.sqlite"
    assert load_settings(env={}).fidelity.sample_rate == 0.0  # off unless asked: shadow calls cost money
    for bad in (
        {"CTXGATE_FIDELITY__SAMPLE_RATE": "1.5"},
        {"CTXGATE_FIDELITY__MIN_SAMPLES": "50"},
        {"CTXGATE_FIDELITY__METRIC": "bleu"},
    ):
        with pytest.raises(ConfigError, match="fidelity"):
            load_settings(env=bad)
