"""``ctxgate bench chaos``: the sidecar under faults, over loopback, bounded in time.

Processes: a fault-injecting OpenAI-style upstream, a real ``redis-server`` (when installed) as the
segment cache, the sidecar (``python -m ctxgate.service``) and this client, which keeps ``--streams``
streaming requests in flight for ``--seconds``. Each request asks the upstream for one behaviour:

    ok       a normal stream, which echoes the request's nonce     (expect 200 + that nonce)
    error    a 500 / a 429 from upstream                           (expect that status, relayed)
    reset    the stream breaks after two events                    (expect 200 + an SSE error event)
    stall    no bytes for longer than upstream_timeout             (expect 504, or an SSE error event)

On a schedule the run also freezes Redis (SIGSTOP, then SIGCONT), kills and restarts it, restarts
the upstream, and kills the sidecar with SIGKILL and starts it again. It reports requests, errors
by kind, *mix-ups* (a 200 stream carrying another request's nonce), *hangs* (no answer within the
client timeout), connection errors while the sidecar was down, and the sidecar's RSS over time.

    ctxgate bench chaos --seconds 60 --streams 50 --out chaos.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ctxgate.eval._asgi import lifespan, read_body
from ctxgate.eval.bench_proxy import REPO_ROOT, _free_port, _machine, _wait

STALL_S = 4.0  # the upstream's silence on "stall"; the sidecar's upstream_timeout is below it
UPSTREAM_TIMEOUT = 2.0
BEHAVIOURS = ("ok", "ok", "ok", "ok", "ok", "error500", "error429", "reset", "stall")


# ------------------------------------------------------------------------ the upstream


def make_upstream():
    """An OpenAI-style streaming upstream that misbehaves as each request's ``x-chaos`` asks."""

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        raw = await read_body(receive)
        headers = dict(scope["headers"])
        behaviour = headers.get(b"x-chaos", b"ok").decode()
        if scope["path"].endswith("/models"):
            return await _send(send, 200, b'{"object":"list","data":[]}')
        nonce = json.loads(raw or b"{}").get("metadata", {}).get("nonce", "")
        if behaviour in ("error500", "error429"):
            status = int(behaviour[-3:])
            return await _send(send, status, b'{"error":{"message":"chaos %d","type":"server_error"}}' % status)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        events = [b'data: {"choices":[{"index":0,"delta":{"content":"%s"}}]}\n\n' % nonce.encode()] * 2
        for i, ev in enumerate(events + [b"data: [DONE]\n\n"]):
            if behaviour == "reset" and i == 2:
                raise ConnectionResetError("chaos: reset mid-stream")
            if behaviour == "stall" and i == 1:
                await asyncio.sleep(STALL_S)
            await send({"type": "http.response.body", "body": ev, "more_body": True})
            await asyncio.sleep(0.02)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def _send(send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _serve_upstream(port: int) -> int:
    import uvicorn

    uvicorn.run(make_upstream(), host="127.0.0.1", port=port, log_level="critical", access_log=False)
    return 0


# ------------------------------------------------------------------------ processes


class _Procs:
    """The upstream, redis and sidecar processes, each restartable."""

    def __init__(self, tmp: Path, compress_body: bool) -> None:
        self.tmp = tmp
        self.up_port, self.px_port = _free_port(), _free_port()
        self.redis_port = _free_port()
        self.redis_exe = shutil.which("redis-server")
        self.upstream: subprocess.Popen | None = None
        self.redis: subprocess.Popen | None = None
        self.sidecar: subprocess.Popen | None = None
        self.compress_body = compress_body

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.px_port}"

    def start_upstream(self) -> None:
        self.upstream = subprocess.Popen(
            [sys.executable, "-m", "ctxgate.eval.bench_chaos", "--serve-upstream", str(self.up_port)], cwd=REPO_ROOT
        )
        _wait(f"http://127.0.0.1:{self.up_port}/v1/models", 30)

    def start_redis(self) -> None:
        if self.redis_exe:
            self.redis = subprocess.Popen(
                [
                    self.redis_exe,
                    "--port",
                    str(self.redis_port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.tmp),
                ],
                stdout=subprocess.DEVNULL,
            )
            time.sleep(0.3)

    def start_sidecar(self) -> None:
        env = {
            **os.environ,
            "CTXGATE_DEFAULT_METHOD": "truncate",
            "CTXGATE_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT),
            "CTXGATE_POLICY__MIN_TOKENS": "50",
            "CTXGATE_LOG_LEVEL": "error",
            "CTXGATE_FIDELITY__PATH": str(self.tmp / "fidelity.sqlite"),
        }
        if self.redis_exe:
            env.update(CTXGATE_CACHE__BACKEND="redis", CTXGATE_CACHE__URL=f"redis://127.0.0.1:{self.redis_port}/0")
        else:
            env.update(CTXGATE_CACHE__BACKEND="sqlite", CTXGATE_CACHE__PATH=str(self.tmp / "segments.sqlite"))
        self.sidecar = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ctxgate.service",
                "--port",
                str(self.px_port),
                "--upstream",
                f"http://127.0.0.1:{self.up_port}/v1",
            ],
            cwd=REPO_ROOT,
            env=env,
        )
        _wait(self.url + "/readyz", 120)

    def rss_mb(self) -> float | None:
        if self.sidecar is None:
            return None
        try:
            for line in Path(f"/proc/{self.sidecar.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop_all(self) -> None:
        for p in (self.sidecar, self.upstream, self.redis):
            if p is not None and p.poll() is None:
                with _quiet():
                    p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait(10)


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


# ------------------------------------------------------------------------ the client


class _Tally:
    def __init__(self) -> None:
        self.requests = 0
        self.outcomes: Counter[str] = Counter()
        self.mixups = 0
        self.hangs = 0
        self.sidecar_down = False
        self.upstream_down = False
        self.down_errors = 0

    def unexpected(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k.startswith("unexpected"))


def _body(nonce: str, compress: bool) -> bytes:
    text = ("chaos context " * 120 + f"\n\nWhich nonce is {nonce}?") if compress else f"say {nonce}"
    return json.dumps(
        {
            "model": "chaos-model",
            "stream": True,
            "metadata": {"nonce": nonce},
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()


async def _one(client, url: str, behaviour: str, nonce: str, tally: _Tally, compress: bool, timeout: float) -> None:
    import httpx

    tally.requests += 1
    down_at_start = tally.sidecar_down
    upstream_down = tally.upstream_down
    try:
        async with asyncio.timeout(timeout):
            async with client.stream(
                "POST",
                url + "/v1/chat/completions",
                content=_body(nonce, compress),
                headers={"content-type": "application/json", "x-chaos": behaviour},
            ) as r:
                data = await r.aread()
    except TimeoutError:
        tally.hangs += 1
        tally.outcomes["hang"] += 1
        return
    except httpx.TransportError:
        if down_at_start or tally.sidecar_down:
            tally.down_errors += 1
            tally.outcomes["connection_error_while_sidecar_down"] += 1
        else:
            tally.outcomes["unexpected_connection_error:" + behaviour] += 1
        return
    text = data.decode("utf-8", "replace")
    nonces = {w for w in text.replace('"', " ").split() if w.startswith("n-") and len(w) == 14}
    if nonces - {nonce}:
        tally.mixups += 1
        tally.outcomes["mixup"] += 1
        return
    if (upstream_down or tally.upstream_down) and (r.status_code == 502 or '"error"' in text):
        # refused (502), or cut mid-stream with an error event, while the upstream restarted
        tally.outcomes[f"as_expected:upstream_down:{r.status_code}"] += 1
        return
    if behaviour == "ok":
        ok = r.status_code == 200 and nonce in text and "[DONE]" in text
    elif behaviour.startswith("error"):
        ok = r.status_code == int(behaviour[-3:])
    elif behaviour == "reset":
        ok = r.status_code in (200, 502) and ('"error"' in text or r.status_code == 502)
    else:  # stall
        ok = r.status_code == 504 or (r.status_code == 200 and '"error"' in text)
    tally.outcomes[("as_expected:" if ok else "unexpected:") + f"{behaviour}:{r.status_code}"] += 1


async def _clients(procs: _Procs, tally: _Tally, seconds: float, streams: int, timeout: float, seed: int) -> None:
    import httpx

    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=streams)
    async with httpx.AsyncClient(limits=limits, timeout=None) as client:

        async def worker(w: int) -> None:
            i = 0
            while time.monotonic() < deadline:
                i += 1
                nonce = f"n-{w:04d}-{i:07d}"[:14].ljust(14, "0")
                await _one(
                    client, procs.url, rng.choice(BEHAVIOURS), nonce, tally, procs.compress_body and i % 2 == 0, timeout
                )
                if tally.sidecar_down:
                    await asyncio.sleep(0.05)

        await asyncio.gather(*(worker(w) for w in range(streams)))


async def _faults(
    procs: _Procs, tally: _Tally, seconds: float, log: list[dict[str, Any]], rss: list[tuple[float, float]]
) -> None:
    """The schedule, as fractions of the run: freeze redis, kill redis, restart upstream, kill -9 sidecar."""
    t0 = time.monotonic()
    plan = [
        (0.15, "redis_freeze"),
        (0.25, "redis_thaw"),
        (0.35, "redis_kill"),
        (0.45, "redis_start"),
        (0.55, "upstream_restart"),
        (0.7, "sidecar_kill9"),
    ]
    loop = asyncio.get_running_loop()

    async def sample_until(t: float) -> None:
        while time.monotonic() - t0 < t:
            if (mb := procs.rss_mb()) is not None:
                rss.append((round(time.monotonic() - t0, 1), round(mb, 1)))
            await asyncio.sleep(1.0)

    for frac, action in plan:
        await sample_until(frac * seconds)
        at = round(time.monotonic() - t0, 1)
        if action.startswith("redis") and procs.redis is None and action != "redis_start":
            continue
        if action == "redis_freeze" and procs.redis is not None:
            procs.redis.send_signal(signal.SIGSTOP)
        elif action == "redis_thaw" and procs.redis is not None:
            procs.redis.send_signal(signal.SIGCONT)
        elif action == "redis_kill" and procs.redis is not None:
            procs.redis.kill()
            procs.redis.wait()
        elif action == "redis_start":
            await loop.run_in_executor(None, procs.start_redis)
        elif action == "upstream_restart" and procs.upstream is not None:
            tally.upstream_down = True
            procs.upstream.kill()
            procs.upstream.wait()
            await loop.run_in_executor(None, procs.start_upstream)
            tally.upstream_down = False
        elif action == "sidecar_kill9" and procs.sidecar is not None:
            tally.sidecar_down = True
            procs.sidecar.kill()
            procs.sidecar.wait()
            rss.append((at, -1.0))
            await loop.run_in_executor(None, procs.start_sidecar)
            await asyncio.sleep(UPSTREAM_TIMEOUT + 1)  # requests sent before the restart may still fail
            tally.sidecar_down = False
        log.append({"t": at, "action": action})
    await sample_until(seconds)


def _growth(rss: list[tuple[float, float]]) -> dict[str, Any]:
    """RSS from 25% of the last segment (after the sidecar's restart, once warm) to its end."""
    last = rss[[i for i, (_, mb) in enumerate(rss) if mb < 0][-1] + 1 :] if any(mb < 0 for _, mb in rss) else rss
    first = rss[: next((i for i, (_, mb) in enumerate(rss) if mb < 0), len(rss))]
    out: dict[str, Any] = {}
    for name, seg in (("before_kill", first), ("after_restart", last)):
        seg = [mb for _, mb in seg if mb > 0]
        if len(seg) >= 4:
            warm = seg[len(seg) // 4]
            out[name] = {"warm_mb": warm, "end_mb": seg[-1], "growth_mb": round(seg[-1] - warm, 1), "max_mb": max(seg)}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ctxgate bench chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--streams", type=int, default=50)
    p.add_argument("--timeout", type=float, default=20.0, help="client timeout per request; past it: a hang")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compress", action="store_true", help="only short prompts (no compression work)")
    p.add_argument("--out", help="write the JSON report here")
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_upstream:
        return _serve_upstream(args.serve_upstream)
    tally, log, rss = _Tally(), [], []
    with tempfile.TemporaryDirectory(prefix="ctxgate-chaos-") as tmp:
        procs = _Procs(Path(tmp), compress_body=not args.no_compress)
        try:
            procs.start_upstream()
            procs.start_redis()
            procs.start_sidecar()
            t0 = time.monotonic()

            async def run() -> None:
                await asyncio.gather(
                    _clients(procs, tally, args.seconds, args.streams, args.timeout, args.seed),
                    _faults(procs, tally, args.seconds, log, rss),
                )

            asyncio.run(run())
            wall = time.monotonic() - t0
            alive = procs.sidecar is not None and procs.sidecar.poll() is None
        finally:
            procs.stop_all()
    report = {
        "machine": _machine(),
        "seconds": round(wall, 1),
        "streams": args.streams,
        "redis": procs.redis_exe is not None,
        "requests": tally.requests,
        "mixups": tally.mixups,
        "hangs": tally.hangs,
        "unexpected": tally.unexpected(),
        "connection_errors_while_sidecar_down": tally.down_errors,
        "sidecar_alive_at_end": alive,
        "outcomes": dict(sorted(tally.outcomes.items())),
        "faults": log,
        "rss": _growth(rss),
        "rss_samples": rss,
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(
        f"{tally.requests} requests in {wall:.0f} s at {args.streams} streams: {tally.mixups} mixed up, "
        f"{tally.hangs} hung, {tally.unexpected()} unexpected, {tally.down_errors} refused while the sidecar "
        f"was down (kill -9); RSS {json.dumps(report['rss'])}"
    )
    for k, n in report["outcomes"].items():
        print(f"  {n:7d}  {k}")
    return 0 if tally.mixups == 0 and tally.hangs == 0 and tally.unexpected() == 0 and alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
