"""Fidelity state shared by every replica through Redis: the daily budget, the controller's rates,
and the counters that ``/v1/fidelity`` and the dashboard report for the whole fleet.

Each replica keeps its own SQLite store too, with rows, texts (``store_text``) and its own view.
Shared here:
- **budget**: ``reserve`` is one Lua script (check both caps, then count the call), so N replicas
  together spend at most ``daily_max_calls``. Tokens spent are added as each check finishes.
- **controller**: one hash field per (route, model) holds the rate and its sample window, updated by
  optimistic transactions (``transact``); replicas read it back every ``refresh`` seconds.
- **counters**: traffic and sample sums per (route, model) in minute, hour and day buckets, and a
  capped stream of rate changes. They are kept in memory and sent once per ``refresh`` in one
  pipeline, so a request costs no Redis round trip.

A Redis outage fails open: requests are served, each replica keeps the rates it last read, shadow
checks pause (the budget cannot be checked), and unsent counters are retried later (bounded by
``MAX_PENDING_KEYS``, oldest dropped first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from .._config import FidelitySettings, StateSettings
from ._controller import Change, _State, decode_state, encode_state

log = logging.getLogger("ctxgate.service")

MAX_PENDING_KEYS = 2000  # bucket hashes waiting to be sent during an outage
MAX_CHANGES = 10_000  # rate changes kept in the stream
MINUTE_DAYS = 2  # minute buckets are kept this long; longer series use hour buckets
GRAINS = {"m": 60, "h": 3600, "d": 86400}
# KEYS[1] budget hash; ARGV: max calls, max tokens (0 = no cap), ttl. Returns {granted, calls, tokens}.
_RESERVE = """
local calls = tonumber(redis.call('HGET', KEYS[1], 'calls') or '0')
local tokens = tonumber(redis.call('HGET', KEYS[1], 'tokens') or '0')
local max_calls, max_tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
if (max_calls > 0 and calls >= max_calls) or (max_tokens > 0 and tokens >= max_tokens) then
  return {0, calls, tokens}
end
calls = redis.call('HINCRBY', KEYS[1], 'calls', 1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, calls, tokens}
"""


def _field(route: str, model: str, name: str) -> str:
    return json.dumps([route, model, name], ensure_ascii=False)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _unfield(raw: bytes | str) -> tuple[str, str, str]:
    route, model, name = json.loads(raw)
    return route, model, name


class FleetState:
    def __init__(self, state: StateSettings, url: str, cfg: FidelitySettings) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise RuntimeError("shared state needs the redis package: pip install 'ctxgate[redis]'") from None
        self.cfg = cfg
        self.state = state
        self.p = state.prefix
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self.redis = aioredis.Redis.from_url(url, socket_timeout=state.timeout, socket_connect_timeout=state.timeout)
        self._pending: dict[str, dict[str, float]] = {}
        self._changes: list[Change] = []
        self._reserve = self.redis.register_script(_RESERVE)
        self.healthy = True
        self._warned = 0.0

    # ------------------------------------------------------------------ health

    def _failed(self, what: str, exc: Exception) -> None:
        self.healthy = False
        if time.monotonic() - self._warned > 60:  # one line a minute during an outage
            self._warned = time.monotonic()
            log.warning("shared state (redis) unavailable for %s: %s", what, type(exc).__name__)

    # ------------------------------------------------------------------ budget

    def _budget_key(self, day: str) -> str:
        return f"{self.p}budget:{day}"

    async def reserve(self, day: str) -> bool | None:
        """Take one shadow call from the fleet's budget for ``day``; None when Redis is unreachable."""
        try:
            granted, _, _ = await self._reserve(
                keys=[self._budget_key(day)], args=[self.cfg.daily_max_calls, self.cfg.daily_max_tokens, 3 * 86400]
            )
        except Exception as exc:  # redis errors, timeouts, a closed pool: no shadow call, the proxy goes on
            self._failed("the budget", exc)
            return None
        self.healthy = True
        return bool(granted)

    def spend(self, day: str, tokens: int) -> None:
        self._add(self._budget_key(day), "tokens", tokens)

    async def budget(self, day: str) -> tuple[int, int]:
        raw = await self.redis.hgetall(self._budget_key(day))
        pending = self._pending.get(self._budget_key(day), {})
        return (int(raw.get(b"calls", 0)), int(float(raw.get(b"tokens", 0))) + int(pending.get("tokens", 0)))

    # ------------------------------------------------------------------ counters (event loop, no I/O)

    def _add(self, key: str, field: str, value: float) -> None:
        if key not in self._pending and len(self._pending) >= MAX_PENDING_KEYS:
            self._pending.pop(next(iter(self._pending)))  # a long outage: the oldest bucket goes
        bucket = self._pending.setdefault(key, {})
        bucket[field] = bucket.get(field, 0) + value

    def _bucket(self, kind: str, grain: str, start: int) -> str:
        """The hash of one ``kind`` (t: traffic, f: fidelity) bucket of ``grain`` starting at ``start``."""
        return f"{self.p}{kind}:{grain}:{start}"

    def _count(self, kind: str, ts: float, route: str, model: str, values: dict[str, float]) -> None:
        for grain, seconds in GRAINS.items():
            key = self._bucket(kind, grain, int(ts // seconds) * seconds)
            for name, value in values.items():
                self._add(key, _field(route, model, name), value)

    def count_traffic(self, ts: float, route: str, model: str, before: int, after: int) -> None:
        self._count("t", ts, route, model, {"requests": 1, "before": before, "after": after})

    def count_sample(
        self,
        ts: float,
        route: str,
        model: str,
        status: str,
        scores: tuple[float, float, float] | None,
        saved_usage: int | None,
    ) -> None:
        values: dict[str, float] = {"n": 1}
        if status == "ok" and scores is not None:
            values.update(ok=1, cosine=scores[0], f1=scores[1], em=scores[2])
        if saved_usage is not None:
            values.update(saved=saved_usage, usage_samples=1)
        self._count("f", ts, route, model, values)

    def add_change(self, change: Change) -> None:
        self._changes.append(change)
        if change.reason != "start":
            self._count("f", change.ts, change.route, change.model, {"adjustments": 1})

    # ------------------------------------------------------------------ the refresher (every `refresh` s)

    def _ttl(self, key: str) -> int | None:
        grain = key[len(self.p) :].split(":")[1]
        if grain == "m":
            return MINUTE_DAYS * 86400
        days = self.cfg.retention_days
        return None if days <= 0 else math.ceil(days * 86400) + GRAINS[grain]

    async def flush(self) -> None:
        """Send the counters and changes gathered since the last flush, in one pipeline."""
        pending, changes = self._pending, self._changes
        self._pending, self._changes = {}, []
        if not pending and not changes:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, fields in pending.items():
                    for field, value in fields.items():
                        pipe.hincrbyfloat(key, field, value)
                    if not key.startswith(f"{self.p}budget:") and (ttl := self._ttl(key)) is not None:
                        pipe.expire(key, ttl)
                for c in changes:
                    pipe.xadd(
                        f"{self.p}changes",
                        {
                            "ts": c.ts,
                            "route": c.route,
                            "model": c.model,
                            "old": c.old,
                            "new": c.new,
                            "reason": c.reason,
                            "fidelity": "" if c.fidelity is None else c.fidelity,
                            "samples": c.samples,
                        },
                        maxlen=MAX_CHANGES,
                        approximate=True,
                    )
                await pipe.execute()
        except Exception as exc:  # kept for the next flush; a partial pipeline may count twice (noted in the README)
            self._failed("counters", exc)
            for key, fields in pending.items():
                for field, value in fields.items():
                    self._add(key, field, value)
            self._changes = changes + self._changes
            return
        self.healthy = True

    async def heartbeat(self) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(f"{self.p}replicas", {self.replica: now})
            pipe.zremrangebyscore(f"{self.p}replicas", 0, now - 86400)
            await pipe.execute()

    async def replicas(self) -> int:
        """Replicas heard from in the last three refresh periods (this one included)."""
        return int(await self.redis.zcount(f"{self.p}replicas", time.time() - 3 * max(self.state.refresh, 1.0), "+inf"))

    # ------------------------------------------------------------------ controller state

    async def states(self) -> dict[tuple[str, str], _State]:
        raw = await self.redis.hgetall(f"{self.p}controller")
        out = {}
        for field, value in raw.items():
            route, model = json.loads(field)
            out[(route, model)] = decode_state(value, self.cfg.window)
        return out

    async def transact(
        self, route: str, model: str, mutate: Callable[[_State | None, int], tuple[_State, list[Change]] | None]
    ) -> tuple[_State, list[Change]] | None:
        """Read the (route, model) state, ``mutate`` it, write it back unless another replica wrote first
        (then read again and retry). ``mutate`` gets the state (None if new) and the number of keys."""
        from redis.exceptions import WatchError

        key, field = f"{self.p}controller", json.dumps([route, model], ensure_ascii=False)
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                for _ in range(50):
                    try:
                        await pipe.watch(key)
                        raw = await pipe.hget(key, field)
                        count = await pipe.hlen(key) if raw is None else 0
                        done = mutate(None if raw is None else decode_state(raw, self.cfg.window), count)
                        if done is None:
                            await pipe.unwatch()
                            return None
                        pipe.multi()
                        pipe.hset(key, field, encode_state(done[0]))
                        await pipe.execute()
                        return done
                    except WatchError:
                        await asyncio.sleep(0)
                        continue
        except Exception as exc:  # the sample is dropped; the rate stays where it was
            self._failed("the controller", exc)
        return None

    # ------------------------------------------------------------------ reads for the fleet report

    async def buckets(self, kind: str, grain: str, since: float, until: float) -> list[tuple[int, dict]]:
        """(bucket start, {(route, model, name): value}) for each ``grain`` bucket in [since, until]."""
        seconds = GRAINS[grain]
        starts = list(range(int(since // seconds) * seconds, int(until) + 1, seconds))
        async with self.redis.pipeline(transaction=False) as pipe:
            for b in starts:
                pipe.hgetall(self._bucket(kind, grain, b))
            rows = await pipe.execute()
        out = []
        for b, raw in zip(starts, rows):
            merged = {_unfield(f): float(v) for f, v in raw.items()}
            for f, v in self._pending.get(self._bucket(kind, grain, b), {}).items():  # not yet sent
                name = _unfield(f)
                merged[name] = merged.get(name, 0.0) + v
            if merged:
                out.append((b, merged))
        return out

    async def changes(self) -> list[dict[str, Any]]:
        """Every rate change kept (at most ``MAX_CHANGES``), oldest first."""
        entries = await self.redis.xrange(f"{self.p}changes")
        out = []
        for _, e in entries or []:
            d = {_text(k): _text(v) for k, v in (e or {}).items()}
            out.append(
                {
                    "ts": float(d["ts"]),
                    "route": d["route"],
                    "model": d["model"],
                    "old": float(d["old"]),
                    "new": float(d["new"]),
                    "reason": d["reason"],
                }
            )
        return out

    async def close(self) -> None:
        await self.flush()
        await self.redis.aclose()
