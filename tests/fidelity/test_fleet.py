"""Replicas that share their fidelity state through one real redis-server: an atomic shadow budget,
one adaptive rate for the fleet, fleet-wide reports, and failing open when Redis is gone.

The last test runs two real sidecar processes (``python -m ctxgate.service``) in front of ``NeedleUpstream``
and drives them with the official openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import httpx
import openai
import pytest
import yaml

from ctxgate.service._config import FidelitySettings, StateSettings
from ctxgate.service.fidelity._controller import SharedController
from ctxgate.service.fidelity._fleet import FleetState
from tests.helpers.needle import NEEDLE, NeedleUpstream, context
from tests.helpers.servers import free_port, serve

pytestmark = [pytest.mark.replicas, pytest.mark.models]
DAY = "2026-12-02"


@pytest.fixture()
def redis_url(redis_url) -> str:
    """The session's redis-server, database 1: the cache tests count the keys of database 0."""
    return redis_url.rsplit("/", 1)[0] + "/1"


def _state(**kw) -> StateSettings:
    return StateSettings(prefix=f"test-{uuid.uuid4().hex[:8]}:", **kw)


def test_the_budget_is_one_atomic_count_for_the_fleet(redis_url):
    async def go():
        st = _state()
        cfg = FidelitySettings(daily_max_calls=5)
        a, b = FleetState(st, redis_url, cfg), FleetState(st, redis_url, cfg)
        granted = await asyncio.gather(*[(a, b)[i % 2].reserve(DAY) for i in range(40)])
        assert granted.count(True) == 5 and granted.count(False) == 35
        assert await a.budget(DAY) == (5, 0) == await b.budget(DAY)
        # the token cap: spent tokens are sent with the next flush, and then hold for every replica
        st2 = _state()
        cfg2 = FidelitySettings(daily_max_calls=0, daily_max_tokens=100)
        c, d = FleetState(st2, redis_url, cfg2), FleetState(st2, redis_url, cfg2)
        assert await c.reserve(DAY) is True
        c.spend(DAY, 120)
        await c.flush()
        assert await d.reserve(DAY) is False and await d.budget(DAY) == (1, 120)
        for f in (a, b, c, d):
            await f.close()

    asyncio.run(go())


def test_concurrent_samples_from_two_replicas_step_the_shared_rate_once(redis_url):
    """Ten low scores at once from two replicas: the first two (min_samples) step 0.3 -> 0.4; the rest
    were taken at 0.3 and are stale by then. Without the transaction each replica would step alone."""

    async def go():
        st = _state()
        cfg = FidelitySettings(threshold=0.8, min_samples=2, window=20, step_up=0.1)
        changes: list = []
        fa, fb = FleetState(st, redis_url, cfg), FleetState(st, redis_url, cfg)
        ca = SharedController(cfg, changes.append, fa, asyncio.ensure_future)
        cb = SharedController(cfg, changes.append, fb, asyncio.ensure_future)
        await asyncio.gather(*[(ca, cb)[i % 2].observe_shared("chat", "m", 0.3, 0.3, False, 0.1) for i in range(10)])
        assert [(c.reason, c.new) for c in changes if c.reason != "start"] == [("low_fidelity", 0.4)]
        assert sum(c.reason == "start" for c in changes) == 1
        for c, f in ((ca, fa), (cb, fb)):  # what every replica reads back
            c.mirror(await f.states())
            assert c.rate("chat", "m", 0.3) == pytest.approx(0.4)
            assert c.rate("chat", "m", 0.5) == 0.5  # never below a replica's configured rate
        for f in (fa, fb):
            await f.close()

    asyncio.run(go())


def test_a_redis_outage_fails_open():
    async def go():
        port = free_port()  # nothing listens there
        cfg = FidelitySettings(daily_max_calls=5)
        f = FleetState(_state(timeout=0.5), f"redis://127.0.0.1:{port}/0", cfg)
        c = SharedController(cfg, lambda change: None, f, asyncio.ensure_future)
        assert await f.reserve(DAY) is None  # no shadow call while the budget is unknown
        assert await c.observe_shared("chat", "m", 0.3, 0.3, False, 0.1) is None
        assert c.rate("chat", "m", 0.3) == 0.3
        f.count_traffic(time.time(), "chat", "m", 100, 30)
        await f.flush()  # kept for a later flush, not lost
        assert f._pending and not f.healthy
        await f.redis.aclose()

    asyncio.run(go())


def test_shutdown_is_bounded_when_a_refresh_swallows_its_cancel(redis_url, tmp_path, monkeypatch):
    """A cancel() that lands inside a Redis call may come back as that call's error (the injected
    fault: a refresh that catches it). Found in CI: a replica hung in shutdown for minutes,
    refreshing, after SIGTERM. Shutdown must end anyway, within the Redis timeout."""
    from ctxgate.service import Settings
    from ctxgate.service._metrics import Metrics
    from ctxgate.service.fidelity import Fidelity

    refreshes = []
    real = Fidelity._refresh

    async def swallowing(self):
        refreshes.append(time.monotonic())
        try:
            await asyncio.sleep(0.3)  # "in a Redis call"
        except asyncio.CancelledError:
            pass  # what a library that turns the cancel into its own error amounts to
        await real(self)

    monkeypatch.setattr(Fidelity, "_refresh", swallowing)

    async def go():
        s = Settings(
            state=_state(backend="redis", url=redis_url, refresh=0.05, timeout=0.5),
            fidelity=FidelitySettings(path=str(tmp_path / "f.sqlite")),
        )
        async with httpx.AsyncClient() as client:
            fid = Fidelity(s, Metrics(), client, lambda provider, path: None)
            await fid.start()
            await asyncio.sleep(0.5)  # several refreshes, one in flight now
            t0 = time.monotonic()
            await asyncio.wait_for(fid.close(), 10)
            assert time.monotonic() - t0 < 5
        n = len(refreshes)
        await asyncio.sleep(0.3)
        assert len(refreshes) == n  # and the loop stopped: no refresh after close

    # in a thread of its own: the regression hangs its event loop for good, and must fail, not hang
    errors: list[BaseException] = []
    runner = threading.Thread(target=lambda: _capture(errors, lambda: asyncio.run(go())), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "Fidelity.close() did not return: shutdown hangs"
    if errors:
        raise errors[0]


def _capture(errors: list[BaseException], fn) -> None:
    try:
        fn()
    except BaseException as exc:  # handed to the test's thread
        errors.append(exc)


def test_a_sidecar_with_redis_down_still_serves(sidecar, upstream):
    port = free_port()
    with sidecar(
        state=StateSettings(backend="redis", url=f"redis://127.0.0.1:{port}/0", timeout=0.5),
        fidelity=FidelitySettings(sample_rate=1.0),
    ) as url:
        r = openai.OpenAI(
            base_url=url + "/v1", api_key="sk-x", max_retries=0
        ).chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "word " * 400}])
        assert r.http_response.status_code == 200 and int(r.headers["x-ctxgate-tokens-after"]) < 400
        rep = httpx.get(url + "/v1/fidelity", timeout=10)
        assert rep.status_code == 503 and "shared state" in rep.json()["error"]["message"]


# ----------------------------------------------------------------------------- two real processes


def _start(cfg: dict, tmp_path, name: str) -> tuple[subprocess.Popen, str]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxgate.service", "--config", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / f"{name}.log", "wb"),
        env=os.environ,
    )
    return proc, f"http://127.0.0.1:{port}"


def _ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "sidecar exited"
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("sidecar not ready")


def _ask(url: str, item: dict):
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-fleet", max_retries=0, timeout=60)
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": context(item, "end")}]
    )


def _until(url: str, check, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rep = httpx.get(url + "/v1/fidelity", timeout=10).json()
        if check(rep) or time.monotonic() > deadline:
            return rep
        time.sleep(0.1)


def _samples(rep: dict) -> int:
    return sum(r["samples"] + r["errors"] for r in rep["routes"])


def _rate(rep: dict) -> float | None:
    return next((r["rate"] for r in rep["routes"] if r["route"] == "chat"), None)


def test_two_sidecar_processes_share_one_budget_and_one_rate(redis_url, nq_items, tmp_path):
    up = NeedleUpstream()
    with serve(up) as up_url:
        up.url = up_url
        base = {
            "upstream": up_url + "/v1",
            "anthropic_upstream": up_url,
            "default_method": "truncate",
            "warm_up": False,
            "policy": {"min_tokens": 50, "rate": 0.3},
            "cache": {"backend": "redis", "url": redis_url},
            "state": {"prefix": f"fleet-{uuid.uuid4().hex[:8]}:", "refresh": 0.2},
            "fidelity": {
                "sample_rate": 1.0,
                "daily_max_calls": 4,
                "threshold": 0.8,
                "min_samples": 2,
                "window": 3,
                "step_up": 0.3,
            },
        }
        procs = [
            _start({**base, "fidelity": {**base["fidelity"], "path": str(tmp_path / f"{n}.sqlite")}}, tmp_path, n)
            for n in ("a", "b")
        ]
        try:
            for proc, url in procs:
                _ready(url, proc)
            (_, a), (_, b) = procs
            # one wrong compressed answer on each replica: two low samples step the fleet's rate once
            first = _ask(a, nq_items[0])
            _ask(b, nq_items[1])
            for url in (a, b):
                rep = _until(url, lambda r: _samples(r) == 2 and _rate(r) == pytest.approx(0.6))
                assert rep["scope"] == "fleet" and rep["replicas"] == 2
                assert _samples(rep) == 2 and _rate(rep) == pytest.approx(0.6), rep
            # replica b applies the rate that samples on both replicas set
            later = _ask(b, nq_items[0])
            assert int(later.headers["x-ctxgate-tokens-after"]) > 1.6 * int(first.headers["x-ctxgate-tokens-after"])
            _ask(a, nq_items[1])
            rep = _until(b, lambda r: _rate(r) == pytest.approx(0.9))
            assert _rate(rep) == pytest.approx(0.9)
            assert _rate(_until(a, lambda r: _rate(r) == pytest.approx(0.9))) == pytest.approx(0.9)
            # the budget (4 calls a day) is spent; more traffic on either replica makes no shadow call
            for url in (a, b, a, b):
                _ask(url, nq_items[2])
            rep = _until(a, lambda r: r["routes"][0]["requests"] == 8)
            assert rep["routes"][0]["requests"] == 8 and rep["budget"]["calls"] == 4
            for url in (a, b):  # every check has been decided: refused ones too
                assert _until(url, lambda r: r["in_flight"] == 0)["in_flight"] == 0
            shadows = [
                body for body in up.bodies() if NEEDLE in json.dumps(body) and "Document [6]" in json.dumps(body)
            ]
            assert len(shadows) == 4
            assert _samples(_until(b, lambda r: _samples(r) >= 4)) == 4  # a's last counters: one refresh away
            # the dashboard's series is the fleet's too: both replicas' traffic, the shared rate's steps
            series = httpx.get(b + "/v1/fidelity/series?since=600", timeout=10).json()
            (chat,) = [x for x in series["series"] if x["route"] == "chat"]
            assert series["scope"] == "fleet" and sum(p["requests"] for p in chat["traffic"]) == 8
            assert sum(p["samples"] for p in chat["fidelity"]) == 4
            steps = [(p["reason"], p["rate"]) for p in chat["rate"] if p["reason"] != "now"]
            assert steps == [("start", 0.3), ("low_fidelity", pytest.approx(0.6)), ("low_fidelity", pytest.approx(0.9))]
        finally:
            for proc, _ in procs:
                proc.terminate()
            for proc, _ in procs:
                proc.wait(20)


# ----------------------------------------------------------------------------- serve --workers


def _cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:  # gone between pgrep and here
        return b""


def _workers(pid: int) -> set[int]:
    """The worker processes under a ``serve --workers`` supervisor."""
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out if b"spawn_main" in _cmdline(p)}


def _requests_total(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('ctxgate_requests_total{route="chat",status="200"}')
    ]
    assert len(values) == 1, "the series is missing or not merged across workers"
    return values[0]


def test_serve_workers_share_one_port_and_one_metrics_view_and_replace_a_dead_worker(upstream, tmp_path):
    cfg = {
        "upstream": upstream.url + "/v1",
        "default_method": "truncate",
        "warm_up": False,
        "policy": {"min_tokens": 50, "rate": 0.3},
        "fidelity": {"path": str(tmp_path / "fid.sqlite")},
    }
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(cfg))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ctxgate.service", "--config", str(path), "--port", str(port), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "w.log", "wb"),
    )
    url = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=url + "/v1", api_key="sk-w", max_retries=0, timeout=30)
    try:
        _ready(url, proc)
        deadline = time.monotonic() + 60
        while len(_workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = _workers(proc.pid)
        assert len(first) == 2
        for _ in range(12):
            r = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "word " * 300}]
            )
            assert r.http_response.status_code == 200 and int(r.headers["x-ctxgate-tokens-after"]) < 300
        assert _requests_total(url) == 12  # summed over both workers, whichever answers
        os.kill(min(first), 9)
        deadline = time.monotonic() + 60
        while (len(_workers(proc.pid)) < 2 or min(first) in _workers(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_workers(proc.pid)) == 2 and min(first) not in _workers(proc.pid)  # replaced
        for _ in range(4):
            ok = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "word " * 300}]
            )
            assert ok.http_response.status_code == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert not _workers(proc.pid)


def test_a_fleet_series_reads_at_most_the_retention_period(sidecar, redis_url):
    """since= is the client's: a century (or inf) must not become a million bucket reads."""
    state = StateSettings(backend="redis", url=redis_url, prefix=f"span-{uuid.uuid4().hex[:8]}:")
    with sidecar(state=state, fidelity=FidelitySettings(retention_days=30)) as url:
        for since in ("3153600000", "inf", "86400"):
            r = httpx.get(url + f"/v1/fidelity/series?since={since}", timeout=30)
            assert r.status_code == 200 and r.json()["scope"] == "fleet", (since, r.text)
            assert r.json()["now"] - r.json()["since"] <= 30 * 86400 + 1
    with sidecar() as url:  # the replica report takes the same values
        assert httpx.get(url + "/v1/fidelity/series?since=inf", timeout=30).status_code in (200, 400)
