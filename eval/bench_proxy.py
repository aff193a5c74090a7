"""``ctxgate bench proxy``: latency the sidecar adds to streaming requests, over loopback.

Three processes: a minimal SSE upstream (not an LLM, but paced like one: by default 50 events
20 ms apart, a one-second answer at 50 tokens/s; ``--chunk-ms 0`` sends them all at once, a
stress test of request overhead), the sidecar in front of it (``python -m ctxgate.service``, memory
cache), and this client. For each concurrency (default 1 and 100 streams in flight) it runs:

    direct   client -> upstream                               (the baseline)
    bypass   client -> sidecar (x-ctxgate-bypass: 1) -> upstream
    hit      client -> sidecar -> upstream, with a RAG prompt whose compression is a cache hit

and reports p50/p99 of time to first byte and of the whole stream, and the *added* latency
(sidecar minus direct, per percentile) of both. Each run is bounded by a request count and a time limit.
The machine (CPU, cores, load average before and after) goes into the JSON, because on a shared
2-core machine the client, the sidecar and the upstream compete for the same cores.

    ctxgate bench proxy --requests 2000 --concurrency 1,100 --out bench_proxy.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ctxgate.eval._asgi import lifespan, read_body

REPO_ROOT = Path(__file__).resolve().parents[1]


def _events(n: int) -> list[bytes]:
    """An OpenAI chat stream: a role chunk, ``n`` content chunks, a usage chunk and [DONE]."""
    return (
        [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
        + [b'data: {"choices":[{"index":0,"delta":{"content":"tok%d"}}]}\n\n' % i for i in range(n)]
        + [b'data: {"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":%d}}\n\n' % n, b"data: [DONE]\n\n"]
    )


# --------------------------------------------------------------------------- upstream


def make_upstream(chunks: int, chunk_ms: float):
    """A minimal OpenAI-style SSE upstream: reads the body, streams ``chunks`` content events
    ``chunk_ms`` apart (0: all at once)."""
    events = _events(chunks)
    gap = chunk_ms / 1000

    async def upstream(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        await read_body(receive)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        for i, ev in enumerate(events):
            if gap and i:
                await asyncio.sleep(gap)
            await send({"type": "http.response.body", "body": ev, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return upstream


def _serve_upstream(port: int, chunks: int, chunk_ms: float) -> int:
    import uvicorn

    uvicorn.run(make_upstream(chunks, chunk_ms), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    return 0


# ----------------------------------------------------------------------------- client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f}s")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


class _Conn:
    """A minimal keep-alive HTTP/1.1 client for one connection: POST, then read the (chunked or
    sized) response as it arrives. The client must cost less than what it measures; httpx's pool
    costs milliseconds per request at 100 concurrent connections on these machines."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float]:
        """(status, body, seconds to the first body byte)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        t0 = time.perf_counter()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        r = self.reader
        status = int((await r.readline()).split()[1])
        length, chunked = None, False
        while (line := await r.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        first = None
        parts = []
        if chunked:
            while True:
                size = int((await r.readline()).split(b";")[0], 16)
                if size == 0:
                    await r.readline()
                    break
                parts.append(await r.readexactly(size))
                first = first or time.perf_counter() - t0
                await r.readline()
        else:
            parts.append(await r.readexactly(length or 0))
            first = time.perf_counter() - t0
        return status, b"".join(parts), first or 0.0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def _run(
    url: str,
    body: bytes,
    headers: dict[str, str],
    concurrency: int,
    requests: int,
    seconds: float,
    expected: bytes,
    warmup: int = 0,
    arrivals: str = "staggered",
) -> dict[str, Any]:
    """``concurrency`` keep-alive connections, each first warmed with ``warmup`` untimed requests
    (so the timed part is the steady state, not connection setup), then up to ``requests`` timed
    requests in all, within ``seconds``.

    ``arrivals="staggered"``: connection i starts i/concurrency of a stream's length late, so
    ``concurrency`` streams are in flight at every moment and new ones arrive evenly (the steady
    state of many independent clients); requests begun before the last connection started are not
    timed. ``"burst"``: all connections start together, and since every stream lasts as long, they
    stay in lockstep: each round, ``concurrency`` requests arrive at once (a thundering herd)."""
    from urllib.parse import urlsplit

    u = urlsplit(url)
    ttfb: list[float] = []
    total: list[float] = []
    errors = 0
    issued = 0
    served = 0  # every answered request, warm-up and ramp included (for CPU per request)
    conns = [_Conn(u.hostname or "127.0.0.1", u.port or 80) for _ in range(concurrency)]

    warm_s: list[float] = []

    async def warm(conn: _Conn) -> None:
        nonlocal served
        for _ in range(warmup):
            t0 = time.perf_counter()
            await conn.post(u.path, body, headers)
            warm_s.append(time.perf_counter() - t0)
            served += 1

    async def worker(conn: _Conn, delay: float) -> None:
        nonlocal issued, errors, served
        await asyncio.sleep(delay)
        try:
            while issued < requests and time.monotonic() < deadline:
                t0 = time.perf_counter()
                timed = t0 >= timed_from
                issued += timed
                try:
                    status, got, first = await conn.post(u.path, body, headers)
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    errors += 1
                    conn.close()
                    conn = _Conn(u.hostname or "127.0.0.1", u.port or 80)
                    continue
                served += 1
                if status != 200 or got != expected:
                    errors += 1
                    continue
                if timed:
                    ttfb.append(first)
                    total.append(time.perf_counter() - t0)
        finally:
            conn.close()

    await asyncio.gather(*(warm(c) for c in conns))
    # one stream's length (median warm-up request); without a warm-up there is none: burst
    spread = _percentile(warm_s, 50) if warm_s and arrivals == "staggered" else 0.0
    delays = [i * spread / concurrency for i in range(concurrency)]
    ramp = delays[-1] if delays else 0.0  # until the last connection has started
    timed_from = time.perf_counter() + ramp
    deadline = time.monotonic() + ramp + seconds
    await asyncio.gather(*(worker(c, d) for c, d in zip(conns, delays)))
    wall = time.perf_counter() - timed_from
    ms = lambda xs, q: round(_percentile(xs, q) * 1000, 3)  # noqa: E731
    return {
        "requests": len(total),
        "errors": errors,
        "served": served,
        "wall_s": round(wall, 3),
        "req_per_s": round(len(total) / wall, 1) if wall else 0.0,
        "ttfb_p50_ms": ms(ttfb, 50),
        "ttfb_p99_ms": ms(ttfb, 99),
        "total_p50_ms": ms(total, 50),
        "total_p99_ms": ms(total, 99),
    }


def _pins() -> dict[str, set[int]]:
    """CPUs for --pin: the sidecar gets the first allowed CPU, the upstream the second, the load
    generator the rest (on two CPUs it shares the upstream's)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    return {"sidecar": {cpus[0]}, "upstream": {cpus[1]}, "client": set(cpus[2:]) or {cpus[1]}}


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process and its live children (``--workers``), from Linux
    /proc; None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(_cpu_seconds(int(c)) or 0.0 for c in children)


def _machine() -> dict[str, Any]:
    from ctxgate.eval.bench import cpu_name

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "avx2": " avx2" in flags,
        "avx512": " avx512f" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _rag_body(data_dir: str | None) -> bytes:
    """A real NQ 20-document prompt (falls back to a synthetic one when the data is absent)."""
    from ctxgate.eval.bench import NQ20
    from ctxgate.eval.datasets import data_dir as find_data

    try:
        with (find_data(data_dir) / NQ20).open(encoding="utf-8") as f:
            row = json.loads(f.readline())
        docs = "\n".join(f"Document [{i + 1}](Title: {c['title']}) {c['text']}" for i, c in enumerate(row["ctxs"]))
        prompt = f"Answer using the documents.\n\n{docs}\n\nQuestion: {row['question']}\nAnswer:"
    except Exception:  # no data folder: still measure, with a labelled synthetic prompt
        prompt = " ".join(f"synthetic{i}" for i in range(3000)) + "\n\nQuestion: which word comes first?"
    return json.dumps(
        {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": prompt}]}
    ).encode()


def _table(rows: list[dict[str, Any]]) -> str:
    head = (
        f"{'scenario':<8} {'conc':>4} {'n':>6} {'err':>4} {'req/s':>7} {'ttfb p50':>9} {'ttfb p99':>9} "
        f"{'total p50':>9} {'total p99':>9} {'+ttfb p50':>9} {'+ttfb p99':>9} {'+total p50':>10} "
        f"{'+total p99':>10} {'cpu/req':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:

        def added(key: str, width: int = 9) -> str:
            return f"{r[key]:{width}.3f}" if key in r else f"{'-':>{width}}"  # noqa: B023  # called at once

        lines.append(
            f"{r['scenario']:<8} {r['concurrency']:>4} {r['requests']:>6} {r['errors']:>4} "
            f"{r['req_per_s']:>7.1f} {r['ttfb_p50_ms']:>9.3f} {r['ttfb_p99_ms']:>9.3f} "
            f"{r['total_p50_ms']:>9.3f} {r['total_p99_ms']:>9.3f} {added('added_ttfb_p50_ms')} "
            f"{added('added_ttfb_p99_ms')} {added('added_p50_ms', 10)} {added('added_p99_ms', 10)} "
            f"{added('sidecar_cpu_ms_per_request', 7)}"
        )
    lines.append(
        "times in ms; + = sidecar minus direct at the same percentile (time to first byte; whole stream);"
        " cpu/req = the sidecar's CPU time per request it served"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ctxgate bench proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="requests per run, at most (default 2000)")
    p.add_argument("--seconds", type=float, default=30.0, help="time limit per run (default 30)")
    p.add_argument("--concurrency", default="1,100", help="comma-separated concurrent streams (default 1,100)")
    p.add_argument("--warmup", type=int, default=2, help="untimed requests per connection before each run (default 2)")
    p.add_argument("--chunks", type=int, default=50, help="content events per upstream stream (default 50)")
    p.add_argument(
        "--chunk-ms",
        type=float,
        default=20.0,
        help="ms between upstream events (default 20, an LLM at 50 tokens/s; 0 = all at once)",
    )
    p.add_argument(
        "--arrivals",
        choices=("staggered", "burst"),
        default="staggered",
        help="staggered (default): streams start evenly spread, so CONCURRENCY are always in "
        "flight; burst: all start together and stay in lockstep",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the sidecar to the first allowed CPU, the upstream to the second and this load "
        "generator to the rest (Linux), so that on a machine with cores to spare the sidecar's "
        "own cost is measured",
    )
    p.add_argument("--method", default="truncate", help="compression method for the cache-hit run")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="sidecar processes (ctxgate serve --workers; default 1); above 1 they share a SQLite cache",
    )
    p.add_argument("--data-dir", help="shared data folder (default ../shared/data)")
    p.add_argument("--out", default="bench_proxy.json", help="JSON results (default bench_proxy.json)")
    p.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_upstream:
        return _serve_upstream(args.serve_upstream, args.chunks, args.chunk_ms)
    if args.arrivals == "staggered" and args.warmup < 1:
        p.error("--arrivals staggered needs --warmup 1 or more: the warm-up measures a stream's length")
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    up_port, px_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "CTXGATE_CACHE__BACKEND": "memory",
        "CTXGATE_DEFAULT_METHOD": args.method,
        "CTXGATE_POLICY__MIN_TOKENS": "100",
        "CTXGATE_LOG_LEVEL": "warning",
    }
    # a child inherits its parent's CPU affinity (and every thread it starts inherits the child's)
    pins = _pins() if args.pin else None
    if pins:
        os.sched_setaffinity(0, pins["sidecar"])
    if args.workers > 1:  # a cache hit on any worker needs one cache for all of them
        import tempfile

        env.update(
            CTXGATE_CACHE__BACKEND="sqlite",
            CTXGATE_CACHE__PATH=str(Path(tempfile.mkdtemp(prefix="ctxgate-bench-proxy-")) / "segments.sqlite"),
        )
    sidecar = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctxgate.service",
            "--port",
            str(px_port),
            "--upstream",
            f"http://127.0.0.1:{up_port}/v1",
            "--workers",
            str(args.workers),
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    if pins:
        os.sched_setaffinity(0, pins["upstream"])
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctxgate.eval.bench_proxy",
            "--serve-upstream",
            str(up_port),
            "--chunks",
            str(args.chunks),
            "--chunk-ms",
            str(args.chunk_ms),
        ],
        cwd=REPO_ROOT,
        env=env,
    )
    procs = [upstream, sidecar]
    if pins:
        os.sched_setaffinity(0, pins["client"])
        # read back, so the report shows what the kernel applied, not what was asked
        pins = {
            "sidecar": sorted(os.sched_getaffinity(sidecar.pid)),
            "upstream": sorted(os.sched_getaffinity(upstream.pid)),
            "client": sorted(os.sched_getaffinity(0)),
        }
    load_before = os.getloadavg()
    try:
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{px_port}/v1/chat/completions"
        _wait(f"http://127.0.0.1:{px_port}/readyz", 300)
        body = _rag_body(args.data_dir)
        expected = b"".join(_events(args.chunks))
        import httpx

        first = httpx.post(proxied, content=body, timeout=300)  # compresses once; later requests hit
        if first.headers.get("x-ctxgate-cache") != "miss":
            print(f"warning: the priming request was not compressed ({dict(first.headers)})", file=sys.stderr)
        scenarios = [("direct", direct, {}), ("bypass", proxied, {"x-ctxgate-bypass": "1"}), ("hit", proxied, {})]
        rows: list[dict[str, Any]] = []
        for conc in levels:
            base = None
            for name, url, headers in scenarios:
                headers = {"content-type": "application/json", **headers}
                cpu0 = _cpu_seconds(sidecar.pid)
                res = asyncio.run(
                    _run(url, body, headers, conc, args.requests, args.seconds, expected, args.warmup, args.arrivals)
                )
                cpu1 = _cpu_seconds(sidecar.pid)
                row = {"scenario": name, "concurrency": conc, **res}
                if name != "direct" and cpu0 is not None and cpu1 is not None and res["served"]:
                    # the sidecar's whole CPU time (all threads) per request it relayed in this run
                    row["sidecar_cpu_ms_per_request"] = round((cpu1 - cpu0) * 1000 / res["served"], 2)
                if name == "direct":
                    base = res
                elif base is not None:
                    for q in ("p50", "p99"):
                        row[f"added_ttfb_{q}_ms"] = round(res[f"ttfb_{q}_ms"] - base[f"ttfb_{q}_ms"], 3)
                        row[f"added_{q}_ms"] = round(res[f"total_{q}_ms"] - base[f"total_{q}_ms"], 3)
                rows.append(row)
                print(f"  {name} x{conc}: {res['requests']} requests, p50 {res['total_p50_ms']} ms", file=sys.stderr)
        hit_check = httpx.post(proxied, content=body, timeout=30)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
    out = {
        "machine": {
            **_machine(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {
            "requests": args.requests,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "pin": pins,
            "workers": args.workers,
            "arrivals": args.arrivals,
            "chunks": args.chunks,
            "chunk_ms": args.chunk_ms,
            "method": args.method,
            "prompt_bytes": len(body),
            "cache_status_of_hit_run": hit_check.headers.get("x-ctxgate-cache"),
        },
        "targets_ms": {"added_p50": 2.0, "added_p99": 10.0, "at_concurrency": 100},
        "results": rows,
    }
    print(_table(rows))
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
