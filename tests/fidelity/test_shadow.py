"""Online fidelity: shadow sampling, budget, comparison and storage, the adaptive rate, /v1/fidelity.

A real sidecar on a real port, real SDK clients, the real MiniLM embedder, and ``NeedleUpstream``: a
local upstream that answers correctly only when a fact (the needle) is in the prompt it gets. With
the needle at the end of the context, the model-free ``truncate`` method cuts it away, so the
compressed answer is wrong and the uncompressed shadow answer right; with the needle at the start
both are right.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import pytest

from tests.helpers.metrics import metric
from tests.helpers.needle import (
    NEEDLE,
    RIGHT,
    WRONG,
    NeedleUpstream,
    ant,
    anthropic_sse,
    ask,
    context,
    oai,
    report,
    settled,
    wait_samples,
)
from tests.helpers.servers import free_port, run_sidecar, serve

pytestmark = pytest.mark.models  # every test here loads a prepared model

# ----------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def needle_upstream():
    up = NeedleUpstream()
    with serve(up) as url:
        up.url = url
        yield up


@pytest.fixture()
def needle(needle_upstream):
    needle_upstream.clear()
    return needle_upstream


@pytest.fixture()
def fid_sidecar(needle, tmp_path):
    """Factory: a sidecar in front of NeedleUpstream with ``fidelity`` settings; truncate method, rate 0.3."""
    from ctxgate.service import CacheSettings, Policy, Settings
    from ctxgate.service._config import FidelitySettings

    def make(*, port: int | None = None, **fid):
        fid.setdefault("path", str(tmp_path / "fidelity.sqlite"))
        s = Settings(
            upstream=needle.url + "/v1",
            anthropic_upstream=needle.url,
            port=port or free_port(),
            default_method="truncate",
            cache=CacheSettings(backend="memory"),
            policy=Policy(min_tokens=50, rate=0.3),
            fidelity=FidelitySettings(**fid),
        )
        return run_sidecar(s)

    return make


def rows(path, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def shadows(up: NeedleUpstream) -> list[dict]:
    """Requests that reached upstream with the full, uncompressed context (the shadow calls)."""
    return [b for b in up.bodies() if NEEDLE in json.dumps(b) and "Document [6]" in json.dumps(b)]


# ----------------------------------------------------------------------------- sampling and storage


def test_every_compressed_request_is_shadowed_and_stored_without_text(fid_sidecar, needle, nq_items, tmp_path):
    with fid_sidecar(sample_rate=1.0) as url:
        raw = ask(url, nq_items[0])
        assert raw.parse().choices[0].message.content == WRONG  # the client got the compressed answer
        assert int(raw.headers["x-ctxgate-tokens-after"]) < int(raw.headers["x-ctxgate-tokens-before"])
        ant(url).messages.create(
            model="claude-3-5-haiku-latest",
            max_tokens=32,
            messages=[{"role": "user", "content": context(nq_items[1], "end")}],
        )
        short = oai(url).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi?"}])
        assert short.choices[0].message.content == WRONG
        rep = wait_samples(url, 2)
    # 3 client requests + 2 shadows: the short one was not compressed, so there was nothing to check
    assert len(needle.requests) == 5
    full_chat, full_msgs = [
        r
        for r in needle.requests
        if NEEDLE in json.dumps(r["body"]["messages"]) and "Document [6]" in json.dumps(r["body"]["messages"])
    ]
    assert full_chat["body"] == {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "stream": False,
        "messages": [{"role": "user", "content": context(nq_items[0], "end")}],
    }
    assert full_chat["headers"]["authorization"] == "Bearer sk-fid-secret"  # the client's auth, reused
    assert full_msgs["path"] == "/v1/messages" and full_msgs["body"]["max_tokens"] == 32
    assert "sk-ant-fid-secret" in (
        full_msgs["headers"].get("x-api-key", "") + full_msgs["headers"].get("authorization", "")
    )
    assert not any(k.startswith("x-ctxgate") for r in needle.requests for k in r["headers"])

    stored = rows(tmp_path / "fidelity.sqlite", "SELECT * FROM samples ORDER BY route")
    assert [r["route"] for r in stored] == ["chat", "messages"]
    for r in stored:
        assert r["status"] == "ok" and r["em"] == 0.0 and r["f1"] < 0.3 and r["cosine"] < 0.5
        assert r["rate"] == pytest.approx(0.3) and r["method"] == "truncate" and r["override"] == 0
        assert r["ratio"] > 2 and r["tokens_before"] > r["tokens_after"]
        assert r["saved_source"] == "usage"
        assert r["tokens_saved"] == r["prompt_tokens_full"] - r["prompt_tokens_compressed"] > 0
        assert json.loads(r["usage_full"]) and json.loads(r["usage_compressed"])
        assert r["prompt"] is None and r["answer_full"] is None and r["answer_compressed"] is None
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("fidelity.sqlite*"))
    assert b"vault" not in blob and b"sk-fid-secret" not in blob and b"sk-ant-fid-secret" not in blob

    chat = next(r for r in rep["routes"] if r["route"] == "chat")
    assert chat["model"] == "gpt-4o-mini" and chat["requests"] == 1 and chat["samples"] == 1
    assert chat["mean_em"] == 0.0 and chat["achieved_ratio"] > 2
    assert chat["tokens_saved"]["usage"] == stored[0]["tokens_saved"] and chat["tokens_saved"]["estimate"] > 0
    assert chat["rate"] == 0.3 and chat["configured_rate"] == 0.3
    assert rep["budget"]["calls"] == 2 and rep["config"]["sample_rate"] == 1.0


def test_streaming_answers_are_teed_unchanged_and_text_kept_when_asked(fid_sidecar, needle, nq_items, tmp_path):
    with fid_sidecar(sample_rate=1.0, store_text=True) as url:
        stream = oai(url).chat.completions.create(
            model="gpt-4o-mini",
            stream=True,
            stream_options={"include_usage": True},
            messages=[{"role": "user", "content": context(nq_items[0], "start")}],
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == RIGHT
        with ant(url).messages.stream(
            model="claude-3-5-haiku-latest",
            max_tokens=16,
            messages=[{"role": "user", "content": context(nq_items[1], "end")}],
        ) as s:
            assert "".join(s.text_stream) == WRONG
        # the bytes relayed are exactly the upstream's
        body = {
            "model": "m",
            "stream": True,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": context(nq_items[2], "end")}],
        }
        with httpx.stream("POST", url + "/v1/messages", json=body, timeout=30) as r:
            got = b"".join(r.iter_raw())
        n_in = len(json.dumps([None, next(b for b in needle.bodies()[::-1] if b.get("stream"))["messages"]]).split())
        assert got == b"".join(anthropic_sse(WRONG, n_in, len(WRONG.split())))
        wait_samples(url, 3)
    stored = rows(tmp_path / "fidelity.sqlite", "SELECT * FROM samples ORDER BY id")
    by_answer = {r["answer_compressed"]: r for r in stored}
    assert set(by_answer) == {RIGHT, WRONG} and all(r["stream"] == 1 for r in stored)
    good = by_answer[RIGHT]
    assert good["cosine"] > 0.99 and good["f1"] == 1.0 and good["em"] == 1.0 and good["answer_full"] == RIGHT
    assert good["saved_source"] == "usage"  # include_usage: the stream reported its usage
    assert NEEDLE in json.loads(good["prompt"])["messages"][0]["content"]
    bad = [r for r in stored if r["route"] == "messages"]
    assert len(bad) == 2 and all(r["answer_full"] == RIGHT and r["em"] == 0.0 for r in bad)
    assert all(r["prompt_tokens_compressed"] is not None for r in bad)  # message_start carries input_tokens


def test_a_key_in_the_query_string_never_reaches_the_log(fid_sidecar, needle, nq_items, caplog):
    """The second audit: httpx logged each shadow call's URL, with the client's ``?key=``, at INFO."""
    with caplog.at_level("INFO"), fid_sidecar(sample_rate=1.0) as url:
        raw = ask(url, nq_items[0], extra_query={"api-version": "2024-06-01", "key": "sk-QUERYSECRET"})
        assert int(raw.headers["x-ctxgate-tokens-after"]) < int(raw.headers["x-ctxgate-tokens-before"])
        wait_samples(url, 1)
    assert any("key=sk-QUERYSECRET" in r["query"] for r in needle.requests), "the query went upstream"
    # the sidecar's records (its thread); the test's own client logs its request line in this one
    server = [r.getMessage() for r in caplog.records if r.threadName != threading.current_thread().name]
    assert server and not [m for m in server if "QUERYSECRET" in m], server


def test_sample_rate_zero_shadows_nothing(fid_sidecar, needle, nq_items, tmp_path):
    with fid_sidecar(sample_rate=0.0) as url:
        for item in nq_items[:3]:
            ask(url, item)
        rep = settled(url)
    assert len(needle.requests) == 3 and shadows(needle) == []
    assert rep["routes"][0]["requests"] == 3 and rep["routes"][0]["samples"] == 0 and rep["budget"]["calls"] == 0
    assert rows(tmp_path / "fidelity.sqlite", "SELECT COUNT(*) n FROM samples")[0]["n"] == 0
    assert rows(tmp_path / "fidelity.sqlite", "SELECT COUNT(*) n FROM traffic")[0]["n"] == 3


def test_daily_call_cap_holds_and_survives_a_restart(fid_sidecar, needle, nq_items):
    port = free_port()
    with fid_sidecar(sample_rate=1.0, daily_max_calls=2, port=port) as url:
        for item in nq_items[:4]:
            ask(url, item)
        rep = wait_samples(url, 2)
        assert metric(url, "ctxgate_fidelity_shadow_total", route="chat", result="budget") == 2
    assert len(shadows(needle)) == 2 and rep["budget"]["calls"] == 2 and rep["budget"]["max_calls"] == 2
    with fid_sidecar(sample_rate=1.0, daily_max_calls=2, port=port) as url:  # same store: today's count is kept
        ask(url, nq_items[4])
        assert settled(url)["budget"]["calls"] == 2
    assert len(shadows(needle)) == 2


def test_daily_token_cap_stops_after_the_budget_is_spent(fid_sidecar, needle, nq_items):
    with fid_sidecar(sample_rate=1.0, daily_max_tokens=10) as url:
        ask(url, nq_items[0])
        wait_samples(url, 1)
        ask(url, nq_items[1])
        rep = settled(url)
    assert len(shadows(needle)) == 1
    assert rep["budget"]["tokens"] > 10 and rep["budget"]["calls"] == 1


def test_the_client_never_waits_for_the_shadow_call(fid_sidecar, needle, nq_items):
    with fid_sidecar(sample_rate=1.0) as url:
        t0 = time.perf_counter()
        raw = oai(url).chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": context(nq_items[0], "end")}],
            extra_headers={"x-needle-slow": "3"},
        )
        took = time.perf_counter() - t0
        assert raw.parse().choices[0].message.content == WRONG
        assert took < 2.0, f"the client waited {took:.2f}s: the shadow call (3 s) was on its path"
        assert report(url)["in_flight"] == 1
        rep = wait_samples(url, 1)
    assert rep["routes"][0]["samples"] == 1


# ----------------------------------------------------------------------------- the controller


def test_controller_compresses_less_on_low_fidelity_and_recovers(fid_sidecar, needle, nq_items, tmp_path):
    fid = dict(sample_rate=1.0, threshold=0.8, min_samples=2, window=3, step_up=0.3, step_down=0.2)
    with fid_sidecar(**fid) as url:
        labels = {"route": "chat", "model": "gpt-4o-mini"}
        first = ask(url, nq_items[0], "end")
        ask(url, nq_items[1], "end")
        rep = wait_samples(url, 2)
        chat = rep["routes"][0]
        assert chat["rate"] == pytest.approx(0.6) and chat["adjustments"] == 1  # two wrong answers: step up
        assert metric(url, "ctxgate_fidelity_rate", **labels) == pytest.approx(0.6)
        assert metric(url, "ctxgate_fidelity_adjustments_total", **labels, direction="up") == 1
        # the new rate reaches the next request's compression ...
        later = ask(url, nq_items[0], "start")  # (needle kept at 0.6: a good sample)
        ratio_before, ratio_after = float(first.headers["x-ctxgate-ratio"]), float(later.headers["x-ctxgate-ratio"])
        assert ratio_after < ratio_before * 0.7
        assert float(later.headers["x-ctxgate-tokens-after"]) > 1.6 * float(first.headers["x-ctxgate-tokens-after"])
        # ... but a request's own rate still wins, and its sample does not steer the controller
        own = ask(url, nq_items[0], "end", extra_headers={"x-ctxgate-rate": "0.3"})
        assert own.headers["x-ctxgate-tokens-after"] == first.headers["x-ctxgate-tokens-after"]
        wait_samples(url, 4)
        # recovery: answers agree again (needle kept), one slow step per full window, down to the configured rate
        for item in nq_items[:3]:
            ask(url, item, "start")
        rep = wait_samples(url, 7)
        assert rep["routes"][0]["rate"] == pytest.approx(0.4)
        for item in nq_items[:3]:
            ask(url, item, "start")
        rep = wait_samples(url, 10)
        chat = rep["routes"][0]
        assert chat["rate"] == pytest.approx(0.3) and chat["adjustments"] == 3
        assert metric(url, "ctxgate_fidelity_adjustments_total", **labels, direction="down") == 2
        assert metric(url, "ctxgate_fidelity_rate", **labels) == pytest.approx(0.3)
        for item in nq_items[:3]:  # at the configured rate, good samples change nothing
            ask(url, item, "start")
        assert wait_samples(url, 13)["routes"][0]["adjustments"] == 3
    changes = rows(tmp_path / "fidelity.sqlite", "SELECT * FROM adjustments ORDER BY rowid")
    assert [(c["reason"], c["old_rate"], c["new_rate"]) for c in changes] == [
        ("start", 0.3, 0.3),
        ("low_fidelity", 0.3, pytest.approx(0.6)),
        ("recovered", pytest.approx(0.6), pytest.approx(0.4)),
        ("recovered", pytest.approx(0.4), 0.3),
    ]
    assert changes[1]["fidelity"] < 0.8 and changes[2]["fidelity"] > 0.99
    override = rows(tmp_path / "fidelity.sqlite", "SELECT * FROM samples WHERE override = 1")
    assert len(override) == 1 and override[0]["rate"] == 0.3 and override[0]["configured_rate"] == 0.3


def test_adapted_rate_survives_a_restart_and_series_reports_it(fid_sidecar, needle, nq_items):
    port = free_port()
    fid = dict(sample_rate=1.0, min_samples=1, window=2, step_up=0.5)
    with fid_sidecar(port=port, **fid) as url:
        ask(url, nq_items[0], "end")
        assert wait_samples(url, 1)["routes"][0]["rate"] == pytest.approx(0.8)
    with fid_sidecar(port=port, **fid) as url:
        raw = ask(url, nq_items[1], "start")
        assert float(raw.headers["x-ctxgate-ratio"]) < 1.5  # compressed at 0.8, not 0.3
        wait_samples(url, 2)  # both runs' samples: one store
        # millisecond buckets: a fast restart can put both samples in the same default (1 s) bucket
        series = httpx.get(url + "/v1/fidelity/series", params={"since": 600, "bucket": 0.001}, timeout=30).json()
        bad = httpx.get(url + "/v1/fidelity/series", params={"since": -1}, timeout=30)
    assert bad.status_code == 400
    (s,) = series["series"]
    assert (s["route"], s["model"]) == ("chat", "gpt-4o-mini") and series["threshold"] == 0.8
    assert [p["rate"] for p in s["rate"]] == [0.3, pytest.approx(0.8), pytest.approx(0.8)]
    assert sum(p["requests"] for p in s["traffic"]) == 2 and all(p["ratio"] > 1 for p in s["traffic"])
    assert sum(p["samples"] for p in s["fidelity"]) == 2
    assert s["fidelity"][0]["em"] == 0.0 and s["fidelity"][-1]["em"] == 1.0


def test_traffic_past_the_model_cap_is_recorded_as_other(fid_sidecar, needle, nq_items, monkeypatch):
    """Models are client-chosen strings: /v1/fidelity (a row per route and model) grew to 853 KB
    over 2,000 made-up names (second audit). Past the cap their traffic is one "(other)" row."""
    from ctxgate.service.fidelity import _shadow

    monkeypatch.setattr(_shadow, "MAX_KEYS", 3)  # the cap itself (1,024) would take 1,024 requests
    with fid_sidecar(sample_rate=0.0) as url:
        for i in range(6):
            ask(url, nq_items[0], model=f"made-up-{i}")
        ask(url, nq_items[0], model="made-up-0")  # a known pair keeps its own row
        rows = {r["model"]: r["requests"] for r in report(url)["routes"]}
    assert rows == {"made-up-0": 2, "made-up-1": 1, "made-up-2": 1, "(other)": 3}, rows
