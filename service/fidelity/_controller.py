"""The adaptive keep-rate, per (route, model): compress less when sampled fidelity drops, recover slowly.

- A step up (``step_up``) needs ``min_samples`` samples whose mean is under ``threshold``.
- A step down (``step_down``, never below the configured rate) needs a full ``window`` at or above it.
- After any change the window starts again, so the next decision rests only on samples taken at the
  new rate. Samples taken at another rate (a per-request override, or from before a change) are
  stored but do not steer the controller.
- At rate 1.0 nothing is compressed, so nothing is sampled: after ``probe_after`` requests the
  controller steps down once to measure again.

Runs on the event loop only (no locks). Rate changes alter the segment cache key, so the next turn
of a conversation is compressed afresh once per change: provider prompt caches miss once.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field

from .._config import FidelitySettings

MAX_KEYS = 1024  # (route, model) pairs tracked; models are client-chosen strings


@dataclass
class Change:
    route: str
    model: str
    old: float
    new: float
    reason: str  # low_fidelity | recovered | probe
    fidelity: float | None
    samples: int
    ts: float = field(default_factory=time.time)


@dataclass
class _State:
    configured: float
    rate: float
    scores: deque[float]
    idle: int = 0  # requests seen at rate 1.0 since the last change


class Controller:
    def __init__(self, cfg: FidelitySettings, on_change) -> None:
        self.cfg = cfg
        self.on_change = on_change  # called with each Change (metrics + store)
        self.states: dict[tuple[str, str], _State] = {}

    def restore(self, rates: dict[tuple[str, str], float]) -> None:
        """Rates left by the previous run (from the store); rebased on the first request."""
        for key, rate in list(rates.items())[:MAX_KEYS]:
            self.states[key] = _State(rate, rate, deque(maxlen=self.cfg.window))

    def rate(self, route: str, model: str, configured: float) -> float:
        """The keep-rate for the next request of this (route, model)."""
        st = self.states.get((route, model))
        if st is None:
            return configured
        if st.configured != configured:  # config changed (or restored state): never below it
            st.configured = configured
            st.rate = max(st.rate, configured)
        if st.rate >= 1.0 and st.rate > configured and self.cfg.adaptive:
            st.idle += 1
            if st.idle >= self.cfg.probe_after:
                self._set(route, model, st, max(configured, st.rate - self.cfg.step_down), "probe", None)
        return st.rate

    def observe(
        self, route: str, model: str, configured: float, asked: float, overridden: bool, score: float
    ) -> Change | None:
        """One sample's score; returns the change it caused, if any."""
        key = (route, model)
        st = self.states.get(key)
        if st is None:
            if len(self.states) >= MAX_KEYS:
                return None
            st = self.states[key] = self.fresh(configured)
            self.on_change(Change(route, model, configured, configured, "start", None, 0))
        change = self.step(route, model, st, asked, overridden, score)
        if change is not None:
            self.on_change(change)
        return change

    def fresh(self, configured: float) -> _State:
        return _State(configured, configured, deque(maxlen=self.cfg.window))

    def step(self, route: str, model: str, st: _State, asked: float, overridden: bool, score: float) -> Change | None:
        """Apply one sample to ``st`` (no side effects beyond it); the change it makes, if any."""
        if overridden or abs(asked - st.rate) > 1e-9 or not self.cfg.adaptive:
            return None
        st.scores.append(score)
        mean = sum(st.scores) / len(st.scores)
        n = len(st.scores)
        if mean < self.cfg.threshold and n >= self.cfg.min_samples and st.rate < 1.0:
            return _change(route, model, st, min(1.0, st.rate + self.cfg.step_up), "low_fidelity", mean)
        if mean >= self.cfg.threshold and n >= self.cfg.window and st.rate > st.configured:
            return _change(route, model, st, max(st.configured, st.rate - self.cfg.step_down), "recovered", mean)
        return None

    def rolling(self, route: str, model: str) -> float | None:
        st = self.states.get((route, model))
        return sum(st.scores) / len(st.scores) if st is not None and st.scores else None

    def _set(self, route: str, model: str, st: _State, new: float, reason: str, mean: float | None) -> Change:
        change = _change(route, model, st, new, reason, mean)
        self.on_change(change)
        return change


def _change(route: str, model: str, st: _State, new: float, reason: str, mean: float | None) -> Change:
    """Move ``st`` to ``new``; the window starts again."""
    change = Change(route, model, st.rate, round(new, 6), reason, mean, len(st.scores))
    st.rate = change.new
    st.scores.clear()
    st.idle = 0
    return change


def encode_state(st: _State) -> str:
    return json.dumps({"configured": st.configured, "rate": st.rate, "scores": list(st.scores)})


def decode_state(raw: bytes | str, window: int) -> _State:
    d = json.loads(raw)
    return _State(float(d["configured"]), float(d["rate"]), deque(map(float, d["scores"]), maxlen=window))


class SharedController(Controller):
    """The same rules, with the state of every (route, model) held in Redis for all replicas.

    ``states`` is a local mirror that the fleet refresher replaces every ``state.refresh`` seconds,
    so ``rate`` stays a dict lookup on the event loop. A sample is applied in one optimistic Redis
    transaction (``fleet.transact``: WATCH, read, ``step``, write), so two replicas' samples never
    overwrite each other and every replica steps the rate at the same sample. The requests counted
    for a probe from 1.0 are per replica; the probe itself is a transaction too.
    """

    def __init__(self, cfg: FidelitySettings, on_change, fleet, spawn) -> None:
        super().__init__(cfg, on_change)
        self.fleet = fleet
        self.spawn = spawn  # runs a coroutine as a background task
        self.idle: dict[tuple[str, str], int] = {}

    def mirror(self, states: dict[tuple[str, str], _State]) -> None:
        self.states = states

    def rate(self, route: str, model: str, configured: float) -> float:
        key = (route, model)
        st = self.states.get(key)
        if st is None or not self.cfg.adaptive:
            return configured
        rate = max(st.rate, configured)
        if rate >= 1.0 and rate > configured:
            self.idle[key] = self.idle.get(key, 0) + 1
            if self.idle[key] >= self.cfg.probe_after:
                self.idle[key] = 0
                self.spawn(self._transact(route, model, configured, None))
        return rate

    async def observe_shared(
        self, route: str, model: str, configured: float, asked: float, overridden: bool, score: float
    ) -> Change | None:
        return await self._transact(route, model, configured, (asked, overridden, score))

    async def _transact(
        self, route: str, model: str, configured: float, sample: tuple[float, bool, float] | None
    ) -> Change | None:
        """A sample (or, with ``sample`` None, a probe down from 1.0) applied to the shared state."""

        def mutate(st: _State | None, count: int) -> tuple[_State, list[Change]] | None:
            changes: list[Change] = []
            if st is None:
                if sample is None or count >= MAX_KEYS:
                    return None
                st = self.fresh(configured)
                changes.append(Change(route, model, configured, configured, "start", None, 0))
            if st.configured != configured:
                st.configured, st.rate = configured, max(st.rate, configured)
            if sample is None:
                if not (self.cfg.adaptive and st.rate >= 1.0 and st.rate > configured):
                    return None
                changes.append(_change(route, model, st, max(configured, st.rate - self.cfg.step_down), "probe", None))
            elif (change := self.step(route, model, st, *sample)) is not None:
                changes.append(change)
            return st, changes

        done = await self.fleet.transact(route, model, mutate)
        if done is None:
            return None
        st, changes = done
        self.states = {**self.states, (route, model): st}
        for change in changes:
            self.on_change(change)
        return next((c for c in changes if c.reason != "start"), None)
