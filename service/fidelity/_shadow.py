"""Shadow checks: a sample of compressed requests goes upstream again, uncompressed, in the background.

Off the client's path: the decision is a dict lookup and a random draw; the shadow call starts as an
``asyncio`` task after the compressed response is in hand (non-streaming) or has been fully relayed
(streaming), so the client's response never waits on it. Concurrency is bounded by a semaphore,
with a bounded queue in front of it, and a daily cap on calls and tokens (UTC days, kept in the
store so a restart does not reset it).

Streaming clients: the compressed answer is taken by teeing the SSE bytes as they are relayed --
each chunk is yielded unchanged before it is copied -- rather than by a second compressed call,
which would double the cost and could differ from what the client actually got. A stream the
client dropped, or that broke, is not compared.

The client's auth headers are reused for the shadow call; they live only in the task's memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import httpx
import msgspec
from litestar import Response
from litestar.response import Stream

from ctxgate.compressor import embedding_cosine

from .._config import Policy, Settings
from .._metrics import Metrics
from .._upstream import forward_headers
from . import _answers
from ._controller import MAX_KEYS, Change, Controller, SharedController
from ._fleet import FleetState
from ._store import Store

log = logging.getLogger("ctxgate.service")

ROUTES = {"chat": ("openai", "/chat/completions"), "messages": ("anthropic", "/v1/messages")}
OTHER_MODEL = "(other)"  # the traffic of models past MAX_KEYS (route, model) pairs
TEE_LIMIT = 8 * 1024 * 1024  # bytes of SSE kept for comparison; a longer stream is not compared


@dataclass
class Candidate:
    """A compressed request picked for a shadow check (decided before it went upstream)."""

    route: str
    provider: str
    path: str
    model: str
    method: str
    rate: float
    configured: float
    overridden: bool
    tokens_before: int
    tokens_after: int
    ts: float


def _day() -> str:
    return datetime.now(UTC).date().isoformat()


class Fidelity:
    def __init__(self, settings: Settings, metrics: Metrics, client: httpx.AsyncClient, urls) -> None:
        self.settings = settings
        self.cfg = settings.fidelity
        self.metrics = metrics
        self.client = client
        self.urls = urls  # (provider, path) -> upstream URL or None
        self.store: Store | None = None
        url = settings.state_url()
        # shared by all replicas through Redis, or this process's own (SQLite-backed) state
        self.fleet = FleetState(settings.state, url, self.cfg) if url else None
        self.controller: Controller = (
            SharedController(self.cfg, self._changed, self.fleet, self._background)
            if self.fleet
            else Controller(self.cfg, self._changed)
        )
        # without shared state, N workers on one host split the daily caps between them
        self._share = 1 if self.fleet else max(1, settings.workers)
        self._refresher: asyncio.Task | None = None
        self._closing = False
        self.day, self.calls, self.tokens = _day(), 0, 0
        self._pairs: set[tuple[str, str]] = set()  # (route, model) pairs on record (read at start); see _recorded_model
        self.pending = 0
        self._slots = asyncio.Semaphore(self.cfg.max_concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._embedder = None
        self._embedder_name = settings.embedder

    # ------------------------------------------------------------------ lifespan

    async def start(self) -> None:
        self.store = await asyncio.to_thread(Store, self.settings.fidelity_path())
        pairs = await asyncio.to_thread(self.store.query, "SELECT DISTINCT route, model FROM traffic")
        self._pairs = {(r, m) for r, m in pairs}
        if self.fleet is not None:
            self._prune()
            await self._refresh()
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
            return
        rows = await asyncio.to_thread(self.store.query, "SELECT calls, tokens FROM budget WHERE day = ?", (self.day,))
        if rows:
            self.calls, self.tokens = rows[0]
        last = await asyncio.to_thread(
            self.store.query,
            "SELECT route, model, new_rate FROM adjustments "
            "WHERE rowid IN (SELECT MAX(rowid) FROM adjustments GROUP BY route, model)",
        )
        if self.cfg.adaptive:  # rates adapted in an earlier run apply only while adapting is on
            self.controller.restore({(r, m): rate for r, m, rate in last})
        self._prune()
        for (route, model), st in self.controller.states.items():
            self.metrics.fidelity_rate.labels(route, model).set(st.rate)

    def _roll_day(self) -> None:
        """A new UTC day: a fresh budget, and rows past the retention period go."""
        if (day := _day()) != self.day:
            self.day, self.calls, self.tokens = day, 0, 0
            self._prune()

    def _prune(self) -> None:
        if self.store is not None and self.cfg.retention_days > 0:
            self.store.prune(time.time() - self.cfg.retention_days * 86400)

    async def _refresh(self) -> None:
        """Send this replica's counters, read the fleet's rates (shared state only)."""
        assert self.fleet is not None and isinstance(self.controller, SharedController)
        try:
            await self.fleet.flush()
            await self.fleet.heartbeat()
            if self.cfg.adaptive:
                self.controller.mirror(await self.fleet.states())
            for (route, model), st in self.controller.states.items():
                self.metrics.fidelity_rate.labels(route, model).set(max(st.rate, st.configured))
        except Exception as exc:  # an outage: keep serving with the rates last read
            self.fleet._failed("the rates", exc)

    async def _refresh_loop(self) -> None:
        assert self.fleet is not None
        while not self._closing:  # a flag as well as cancel(): a cancel that lands inside a Redis
            await asyncio.sleep(self.fleet.state.refresh)  # call can come back as its error
            if not self._closing:
                await self._refresh()

    def _background(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Bounded: a refresher that does not stop within its Redis timeout is left behind."""
        self._closing = True
        if self._refresher is not None:
            self._refresher.cancel()
            assert self.fleet is not None
            done, _ = await asyncio.wait({self._refresher}, timeout=self.fleet.state.timeout + 1.0)
            if not done:
                log.warning("fidelity: the shared-state refresher did not stop; shutting down without it")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
        if self.fleet is not None:
            try:
                await self.fleet.close()  # sends the last counters
            except Exception as exc:
                self.fleet._failed("the last counters", exc)

    async def idle(self, timeout: float = 60.0) -> None:
        """Wait for the shadow checks in flight (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ request path (event loop, cheap)

    def policy(self, route: str, model: str, policy: Policy) -> Policy:
        """The configured policy with the controller's rate for this (route, model)."""
        if route not in ROUTES or not isinstance(policy.rate, (int, float)):
            return policy  # rate "auto": the method decides; nothing to adapt
        rate = self.controller.rate(route, model, policy.rate)
        return policy if rate == policy.rate else msgspec.structs.replace(policy, rate=rate)

    def candidate(
        self,
        route: str,
        model: str,
        method: str,
        policy: Policy,
        configured: float | str,
        overridden: bool,
        tokens_before: int | None,
        tokens_after: int | None,
    ) -> Candidate | None:
        """Record a compressed request's savings; a Candidate when it is drawn for a shadow check."""
        if tokens_before is None or tokens_after is None or tokens_after >= tokens_before:
            return None  # not compressed: nothing to check
        now = time.time()
        if not isinstance(policy.rate, (int, float)) or not isinstance(configured, (int, float)):
            # rate "auto": recorded as the rate it achieved; the controller has nothing to adapt
            achieved = round(tokens_after / tokens_before, 4)
            policy = msgspec.structs.replace(policy, rate=achieved)
            configured, overridden = achieved, True
        if self.cfg.record_traffic and self.store is not None:
            self._roll_day()
            model = self._recorded_model(route, model)
            self.store.add_traffic(now, route, model, method, policy.rate, tokens_before, tokens_after)
            if self.fleet is not None:
                self.fleet.count_traffic(now, route, model, tokens_before, tokens_after)
        if route not in ROUTES or self.cfg.sample_rate <= 0 or random.random() >= self.cfg.sample_rate:
            return None
        provider, path = ROUTES[route]
        assert isinstance(policy.rate, (int, float)) and isinstance(configured, (int, float))
        return Candidate(
            route, provider, path, model, method, policy.rate, configured, overridden, tokens_before, tokens_after, now
        )

    def _recorded_model(self, route: str, model: str) -> str:
        """``model``, or OTHER_MODEL once MAX_KEYS (route, model) pairs are on record: models are
        client-chosen strings, and /v1/fidelity (one row per pair) grew to 853 KB over 2,000
        made-up names (second audit)."""
        if (route, model) in self._pairs:
            return model
        if len(self._pairs) >= MAX_KEYS:
            return OTHER_MODEL
        self._pairs.add((route, model))
        return model

    def watch(
        self, cand: Candidate, headers: Mapping[str, str], query: str, raw: bytes, response: Response
    ) -> Response:
        """Start the shadow check once the compressed answer is known; the response itself is unchanged."""
        if response.status_code != 200:
            return response
        saved = dict(headers)
        if isinstance(response, Stream):
            # relays are async generators (Stream's type is wider)
            response.iterator = self._tee(response.iterator, cand, saved, query, raw)  # type: ignore[arg-type]
        elif isinstance(response.content, bytes):
            self._spawn(cand, saved, query, raw, _answers.from_json(cand.provider, response.content), False)
        return response

    async def _tee(
        self, inner: AsyncGenerator[bytes, None], cand: Candidate, headers: dict[str, str], query: str, raw: bytes
    ) -> AsyncIterator[bytes]:
        buf = bytearray()
        done = False
        try:
            async for chunk in inner:
                yield chunk
                if len(buf) <= TEE_LIMIT:
                    buf += chunk
            done = True
        finally:
            with anyio.CancelScope(shield=True):
                await inner.aclose()  # a dropped client must still hang up on upstream now
            if done and len(buf) <= TEE_LIMIT:
                self._spawn(cand, headers, query, raw, _answers.from_sse(cand.provider, bytes(buf)), True)
            else:
                self.metrics.fidelity_shadow.labels(cand.route, "incomplete").inc()

    def _spawn(
        self,
        cand: Candidate,
        headers: dict[str, str],
        query: str,
        raw: bytes,
        compressed: _answers.Answer,
        stream: bool,
    ) -> None:
        if not compressed.complete:
            self.metrics.fidelity_shadow.labels(cand.route, "incomplete").inc()
            return
        if self.pending >= self.cfg.max_concurrency + self.cfg.max_pending:
            self.metrics.fidelity_shadow.labels(cand.route, "busy").inc()
            return
        self.pending += 1
        self._background(self._check(cand, headers, query, raw, compressed, stream))

    async def _reserve(self) -> str | None:
        """Take one call from today's budget; None when granted, else the reason it was not.

        Shared state: one atomic Redis script for the fleet. Local: this process's counters, on the
        event loop only, so no race between checks; N workers without Redis each get 1/N of the caps."""
        self._roll_day()
        if self.fleet is not None:
            granted = await self.fleet.reserve(self.day)
            return None if granted else ("unavailable" if granted is None else "budget")
        max_calls = self.cfg.daily_max_calls and max(1, self.cfg.daily_max_calls // self._share)
        max_tokens = self.cfg.daily_max_tokens and max(1, self.cfg.daily_max_tokens // self._share)
        if (max_calls and self.calls >= max_calls) or (max_tokens and self.tokens >= max_tokens):
            return "budget"
        self.calls += 1
        self._save_budget()
        return None

    def _spent(self, tokens: int) -> None:
        self.tokens += tokens
        if self.fleet is not None:
            self.fleet.spend(self.day, tokens)
        else:
            self._save_budget()

    def _save_budget(self) -> None:
        if self.store is not None:
            self.store.set_budget(self.day, self.calls, self.tokens)

    # ------------------------------------------------------------------ the check (background task)

    async def _check(
        self,
        cand: Candidate,
        headers: dict[str, str],
        query: str,
        raw: bytes,
        compressed: _answers.Answer,
        stream: bool,
    ) -> None:
        t0 = time.perf_counter()
        try:
            if (refused := await self._reserve()) is not None:
                self.metrics.fidelity_shadow.labels(cand.route, refused).inc()
                return
            async with self._slots:
                status, full, body = await self._call_full(cand, headers, query, raw)
                total = full.total_tokens()
                self._spent(total if total is not None else cand.tokens_before)
                if status != "ok":
                    self.metrics.fidelity_shadow.labels(cand.route, status).inc()
                    self._record(cand, status, stream, full, compressed, None, body, t0)
                    return
                scores = await asyncio.to_thread(self._score, compressed.text, full.text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing check must never disturb the proxy; the type only, never the text
            log.warning("fidelity shadow check failed: %s", type(exc).__name__)
            self.metrics.fidelity_shadow.labels(cand.route, "error").inc()
            return
        finally:
            self.pending -= 1
        self.metrics.fidelity_shadow.labels(cand.route, "ok").inc()
        self._record(cand, "ok", stream, full, compressed, scores, body, t0)
        score = dict(zip(("cosine", "f1", "em"), scores))[self.cfg.metric]
        if isinstance(self.controller, SharedController):
            await self.controller.observe_shared(
                cand.route, cand.model, cand.configured, cand.rate, cand.overridden, score
            )
        else:
            self.controller.observe(cand.route, cand.model, cand.configured, cand.rate, cand.overridden, score)
        rolling = self.controller.rolling(cand.route, cand.model)
        if rolling is not None:
            self.metrics.fidelity_score.labels(cand.route, cand.model).set(rolling)

    async def _call_full(
        self, cand: Candidate, headers: dict[str, str], query: str, raw: bytes
    ) -> tuple[str, _answers.Answer, dict[str, Any] | None]:
        """The same request, uncompressed and non-streaming: (status, answer, the body sent)."""
        url = self.urls(cand.provider, cand.path)
        body = _uncompressed(cand.route, raw)
        if url is None or body is None:
            return "error", _answers.Answer(), None
        try:
            resp = await self.client.post(
                url,
                content=json.dumps(body).encode(),
                headers=forward_headers(headers),
                params=query or None,
                timeout=self.cfg.timeout,
            )
        except httpx.HTTPError as exc:
            log.warning("fidelity shadow call failed: %s", type(exc).__name__)
            return "upstream_error", _answers.Answer(), body
        if resp.status_code != 200:
            return "upstream_error", _answers.Answer(), body
        answer = _answers.from_json(cand.provider, resp.content)
        return ("ok" if answer.complete else "upstream_error"), answer, body

    def _score(self, compressed: str, full: str) -> tuple[float, float, float]:
        """(cosine, token F1, exact agreement); blocking, in a worker thread."""
        f1, em = _answers.agreement_scores(compressed, full)
        if self._embedder is None:
            from ctxgate.compressor.models import load_embedder

            self._embedder, _ = load_embedder(self._embedder_name, self.settings.device)
        return embedding_cosine(self._embedder, compressed, full), f1, em

    def _record(
        self,
        cand: Candidate,
        status: str,
        stream: bool,
        full: _answers.Answer,
        compressed: _answers.Answer,
        scores: tuple[float, float, float] | None,
        body: dict[str, Any] | None,
        t0: float,
    ) -> None:
        if self.store is None:
            return
        p_full, p_comp = full.prompt_tokens(), compressed.prompt_tokens()
        measured = p_full is not None and p_comp is not None
        row: dict[str, Any] = {
            "ts": cand.ts,
            "route": cand.route,
            "model": cand.model,
            "method": cand.method,
            "rate": cand.rate,
            "configured_rate": cand.configured,
            "override": int(cand.overridden),
            "stream": int(stream),
            "status": status,
            "tokens_before": cand.tokens_before,
            "tokens_after": cand.tokens_after,
            "ratio": cand.tokens_before / cand.tokens_after if cand.tokens_after else None,
            "usage_full": json.dumps(full.usage) if full.usage else None,
            "usage_compressed": json.dumps(compressed.usage) if compressed.usage else None,
            "prompt_tokens_full": p_full,
            "prompt_tokens_compressed": p_comp,
            "tokens_saved": (p_full - p_comp)
            if p_full is not None and p_comp is not None
            else cand.tokens_before - cand.tokens_after,
            "saved_source": "usage" if measured else "estimate",
            "seconds": time.perf_counter() - t0,
        }
        if scores is not None:
            row["cosine"], row["f1"], row["em"] = scores
        if self.fleet is not None:
            self.fleet.count_sample(
                cand.ts, cand.route, cand.model, status, scores, row["tokens_saved"] if measured else None
            )
        if self.cfg.store_text and body is not None:
            row["prompt"] = json.dumps({k: body[k] for k in ("system", "messages") if k in body})
            row["answer_full"], row["answer_compressed"] = full.text, compressed.text
        self.store.add_sample(row)

    def _changed(self, change: Change) -> None:
        self.metrics.fidelity_rate.labels(change.route, change.model).set(change.new)
        if change.reason != "start":
            direction = "up" if change.new > change.old else "down"
            self.metrics.fidelity_adjustments.labels(change.route, change.model, direction).inc()
            log.info(
                "fidelity: %s %s keep-rate %.3f -> %.3f (%s)",
                change.route,
                change.model,
                change.old,
                change.new,
                change.reason,
            )
        if self.fleet is not None:
            self.fleet.add_change(change)
        if self.store is not None:
            self.store.add_adjustment(
                change.ts,
                change.route,
                change.model,
                change.old,
                change.new,
                change.reason,
                change.fidelity,
                change.samples,
            )


def _uncompressed(route: str, raw: bytes) -> dict[str, Any] | None:
    """The client's body as it would go upstream with compression bypassed, forced non-streaming."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    body.pop("ctxgate", None)
    from .._policy import strip_tags

    strip_tags(route, body, raw)
    body["stream"] = False
    body.pop("stream_options", None)
    return body
