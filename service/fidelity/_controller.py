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

import time
from collections import deque
from dataclasses import dataclass, field

from .._config import FidelitySettings

MAX_KEYS = 1024                      # (route, model) pairs tracked; models are client-chosen strings


@dataclass
class Change:
    route: str
    model: str
    old: float
    new: float
    reason: str                      # low_fidelity | recovered | probe
    fidelity: float | None
    samples: int
    ts: float = field(default_factory=time.time)


@dataclass
class _State:
    configured: float
    rate: float
    scores: deque[float]
    idle: int = 0                    # requests seen at rate 1.0 since the last change


class Controller:
    def __init__(self, cfg: FidelitySettings, on_change) -> None:
        self.cfg = cfg
        self.on_change = on_change   # called with each Change (metrics + store)
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
        if st.configured != configured:          # config changed (or restored state): never below it
            st.configured = configured
            st.rate = max(st.rate, configured)
        if st.rate >= 1.0 and st.rate > configured and self.cfg.adaptive:
            st.idle += 1
            if st.idle >= self.cfg.probe_after:
                self._set(route, model, st, max(configured, st.rate - self.cfg.step_down), "probe", None)
        return st.rate

    def observe(self, route: str, model: str, configured: float, asked: float, overridden: bool,
                score: float) -> Change | None:
        """One sample's score; returns the change it caused, if any."""
        key = (route, model)
        st = self.states.get(key)
        if st is None:
            if len(self.states) >= MAX_KEYS:
                return None
            st = self.states[key] = _State(configured, configured, deque(maxlen=self.cfg.window))
            self.on_change(Change(route, model, configured, configured, "start", None, 0))
        if overridden or abs(asked - st.rate) > 1e-9 or not self.cfg.adaptive:
            return None
        st.scores.append(score)
        mean = sum(st.scores) / len(st.scores)
        n = len(st.scores)
        if mean < self.cfg.threshold and n >= self.cfg.min_samples and st.rate < 1.0:
            return self._set(route, model, st, min(1.0, st.rate + self.cfg.step_up), "low_fidelity", mean)
        if mean >= self.cfg.threshold and n >= self.cfg.window and st.rate > st.configured:
            return self._set(route, model, st, max(st.configured, st.rate - self.cfg.step_down), "recovered", mean)
        return None

    def rolling(self, route: str, model: str) -> float | None:
        st = self.states.get((route, model))
        return sum(st.scores) / len(st.scores) if st is not None and st.scores else None

    def _set(self, route: str, model: str, st: _State, new: float, reason: str, mean: float | None) -> Change:
        change = Change(route, model, st.rate, round(new, 6), reason, mean, len(st.scores))
        st.rate = change.new
        st.scores.clear()
        st.idle = 0
        self.on_change(change)
        return change
