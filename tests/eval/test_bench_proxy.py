"""``ctxgate bench proxy``: the load generator's arrival patterns, and a tiny real run end to end
(upstream, sidecar and client processes, JSON with every row)."""

import asyncio
import json
import time

import pytest

from ctxgate.eval import bench_proxy
from tests.helpers.servers import serve

CHUNKS, CHUNK_MS = 10, 20  # a 0.2 s stream


def _recording_upstream(arrivals: list[float]):
    inner = bench_proxy.make_upstream(CHUNKS, CHUNK_MS)

    async def app(scope, receive, send):
        if scope["type"] == "http":
            arrivals.append(time.perf_counter())
        await inner(scope, receive, send)

    return app


def _first_round_spread(arrival_mode: str, concurrency: int = 5) -> tuple[float, dict]:
    """Seconds between the first and the last of the first ``concurrency`` requests after warm-up."""
    arrivals: list[float] = []
    with serve(_recording_upstream(arrivals)) as url:
        expected = b"".join(bench_proxy._events(CHUNKS))
        res = asyncio.run(
            bench_proxy._run(
                url + "/v1/chat/completions", b"{}", {}, concurrency, 40, 1.0, expected, warmup=1, arrivals=arrival_mode
            )
        )
    after_warmup = sorted(arrivals[concurrency : concurrency * 2])
    return after_warmup[-1] - after_warmup[0], res


def test_staggered_arrivals_spread_streams_over_one_stream_length():
    spread, res = _first_round_spread("staggered")
    assert res["errors"] == 0 and res["requests"] > 0
    # five streams of ~0.2 s: starts 0.04 s apart, the fifth ~0.16 s after the first
    assert 0.1 < spread < 0.4, spread


def test_burst_arrivals_start_together():
    spread, res = _first_round_spread("burst")
    assert res["errors"] == 0 and res["requests"] > 0
    assert spread < 0.05, spread


@pytest.mark.models
def test_a_tiny_run_reports_every_scenario(tmp_path):
    out = tmp_path / "bench_proxy.json"
    rc = bench_proxy.main(
        [
            "--requests",
            "6",
            "--seconds",
            "2",
            "--concurrency",
            "1,3",
            "--chunks",
            "3",
            "--chunk-ms",
            "5",
            "--warmup",
            "1",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["settings"]["arrivals"] == "staggered"
    assert report["settings"]["cache_status_of_hit_run"] == "hit"
    rows = {(r["scenario"], r["concurrency"]): r for r in report["results"]}
    assert set(rows) == {(s, c) for s in ("direct", "bypass", "hit") for c in (1, 3)}
    for (scenario, _), r in rows.items():
        assert r["errors"] == 0 and r["requests"] > 0, r
        assert r["ttfb_p50_ms"] > 0 and r["total_p50_ms"] >= r["ttfb_p50_ms"]
        assert ("added_ttfb_p50_ms" in r) == (scenario != "direct")
        assert ("sidecar_cpu_ms_per_request" in r) == (scenario != "direct")
        assert r["served"] >= r["requests"] + 1  # the warm-up request counts for CPU, not for latency
    assert report["machine"]["cores"] >= 1
    assert report["settings"]["pin"] is None


@pytest.mark.models
def test_pin_puts_the_sidecar_and_the_upstream_on_their_own_cpus(tmp_path):
    import os

    before = os.sched_getaffinity(0)
    if len(before) < 2:
        pytest.skip("needs 2 CPUs")
    out = tmp_path / "bench_proxy.json"
    try:
        assert (
            bench_proxy.main(
                [
                    "--requests",
                    "3",
                    "--seconds",
                    "1",
                    "--concurrency",
                    "1",
                    "--chunks",
                    "2",
                    "--chunk-ms",
                    "5",
                    "--warmup",
                    "1",
                    "--pin",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        os.sched_setaffinity(0, before)  # the load generator pinned this process
    cpus = sorted(before)
    pin = json.loads(out.read_text())["settings"]["pin"]
    assert pin["sidecar"] == [cpus[0]] and pin["upstream"] == [cpus[1]]
    assert pin["client"] == (cpus[2:] or [cpus[1]])


def test_staggered_arrivals_without_a_warm_up_are_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        bench_proxy.main(["--warmup", "0"])
    assert exc.value.code == 2 and "needs --warmup 1 or more" in capsys.readouterr().err


def test_cpu_seconds_reads_a_process_own_cpu_time():
    import os

    before = bench_proxy._cpu_seconds(os.getpid())
    t_end = time.process_time() + 0.3
    while time.process_time() < t_end:
        pass
    after = bench_proxy._cpu_seconds(os.getpid())
    assert before is not None and 0.2 <= after - before <= 2.0
    assert bench_proxy._cpu_seconds(2**22 + 12345) is None  # no such process
