"""What ``GET /v1/fidelity`` and ``GET /v1/fidelity/series`` return, read from the store (worker thread).

Tokens saved come in two kinds, always labelled: ``usage`` (the shadow call's prompt tokens minus the
compressed call's, both as the upstream reported them) and ``estimate`` (our token counts in the
target tokenizer, for every compressed request, or for samples where the upstream gave no usage).
"""

from __future__ import annotations

import math
import time
from typing import Any

from .._config import FidelitySettings
from ._shadow import Fidelity

MAX_POINTS = 120


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


def blank(route: str, model: str) -> dict[str, Any]:
    """One (route, model) row of ``/v1/fidelity`` before anything is counted (shared with the fleet report)."""
    return {
        "route": route,
        "model": model,
        "requests": 0,
        "samples": 0,
        "errors": 0,
        "mean_cosine": None,
        "mean_f1": None,
        "mean_em": None,
        "rolling": None,
        "tokens_before": 0,
        "tokens_after": 0,
        "achieved_ratio": None,
        "tokens_saved": {"usage": 0, "usage_samples": 0, "estimate": 0},
        "configured_rate": None,
        "rate": None,
        "adjustments": 0,
    }


def settings_of(cfg: FidelitySettings) -> dict[str, Any]:
    return {
        "sample_rate": cfg.sample_rate,
        "metric": cfg.metric,
        "threshold": cfg.threshold,
        "window": cfg.window,
        "adaptive": cfg.adaptive,
        "store_text": cfg.store_text,
    }


def aggregates(fid: Fidelity) -> dict[str, Any]:
    assert fid.store is not None
    q = fid.store.query
    keys: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(route: str, model: str) -> dict[str, Any]:
        return keys.setdefault((route, model), blank(route, model))

    for route, model, n, before, after in q(
        "SELECT route, model, COUNT(*), SUM(tokens_before), SUM(tokens_after) FROM traffic GROUP BY route, model"
    ):
        e = entry(route, model)
        e.update(
            requests=n, tokens_before=before, tokens_after=after, achieved_ratio=_r(before / after) if after else None
        )
        e["tokens_saved"]["estimate"] = before - after
    for route, model, n, ok, cos, f1, em, saved, nsaved in q(
        "SELECT route, model, COUNT(*), SUM(status = 'ok'), AVG(cosine), AVG(f1), AVG(em), "
        "SUM(CASE WHEN saved_source = 'usage' THEN tokens_saved END), SUM(saved_source = 'usage') "
        "FROM samples GROUP BY route, model"
    ):
        e = entry(route, model)
        e.update(samples=ok, errors=n - ok, mean_cosine=_r(cos), mean_f1=_r(f1), mean_em=_r(em))
        e["tokens_saved"].update(usage=saved or 0, usage_samples=nsaved or 0)
    for route, model, n in q(
        "SELECT route, model, COUNT(*) FROM adjustments WHERE reason != 'start' GROUP BY route, model"
    ):
        entry(route, model)["adjustments"] = n
    for (route, model), st in fid.controller.states.items():
        e = entry(route, model)
        e.update(configured_rate=st.configured, rate=st.rate, rolling=_r(fid.controller.rolling(route, model)))
    cfg = fid.cfg
    return {
        "scope": "replica",
        "routes": sorted(keys.values(), key=lambda e: (e["route"], e["model"])),
        "budget": {
            "day": fid.day,
            "calls": fid.calls,
            "tokens": fid.tokens,
            "max_calls": cfg.daily_max_calls or None,
            "max_tokens": cfg.daily_max_tokens or None,
        },
        "in_flight": fid.pending,
        "config": settings_of(cfg),
    }


def series(fid: Fidelity, since_seconds: float, bucket: float | None) -> dict[str, Any]:
    """Per (route, model): bucketed savings and ratio (all compressed requests), fidelity (samples), and
    the controller's rate as steps."""
    assert fid.store is not None
    q = fid.store.query
    now = time.time()
    since = now - since_seconds
    if not bucket:
        first = q(
            "SELECT MIN(t) FROM (SELECT MIN(ts) t FROM traffic WHERE ts >= ?1 "
            "UNION ALL SELECT MIN(ts) FROM samples WHERE ts >= ?1)",
            (since,),
        )[0][0]
        span = now - (first if first is not None else now)
        bucket = max(1, math.ceil(span / MAX_POINTS))
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(route: str, model: str) -> dict[str, Any]:
        return out.setdefault(
            (route, model), {"route": route, "model": model, "traffic": [], "fidelity": [], "rate": []}
        )

    for route, model, b, n, before, after in q(
        "SELECT route, model, CAST(ts / ?1 AS INTEGER) * ?1 b, COUNT(*), SUM(tokens_before), SUM(tokens_after) "
        "FROM traffic WHERE ts >= ?2 GROUP BY route, model, b ORDER BY b",
        (bucket, since),
    ):
        entry(route, model)["traffic"].append(
            {
                "t": b,
                "requests": n,
                "tokens_saved_estimate": before - after,
                "ratio": _r(before / after) if after else None,
            }
        )
    for route, model, b, n, cos, f1, em, saved in q(
        "SELECT route, model, CAST(ts / ?1 AS INTEGER) * ?1 b, COUNT(*), AVG(cosine), AVG(f1), AVG(em), "
        "SUM(CASE WHEN saved_source = 'usage' THEN tokens_saved END) "
        "FROM samples WHERE ts >= ?2 AND status = 'ok' GROUP BY route, model, b ORDER BY b",
        (bucket, since),
    ):
        entry(route, model)["fidelity"].append(
            {"t": b, "samples": n, "cosine": _r(cos), "f1": _r(f1), "em": _r(em), "tokens_saved_usage": saved}
        )
    for route, model, rate in q(  # where each rate stood when the window opens
        "SELECT route, model, new_rate FROM adjustments WHERE rowid IN "
        "(SELECT MAX(rowid) FROM adjustments WHERE ts < ? GROUP BY route, model)",
        (since,),
    ):
        entry(route, model)["rate"].append({"t": round(since, 3), "rate": rate, "reason": "before"})
    for route, model, ts, rate, reason in q(
        "SELECT route, model, ts, new_rate, reason FROM adjustments WHERE ts >= ? ORDER BY ts", (since,)
    ):
        entry(route, model)["rate"].append({"t": round(ts, 3), "rate": rate, "reason": reason})
    for (route, model), st in fid.controller.states.items():
        if (route, model) in out:
            out[(route, model)]["rate"].append({"t": round(now, 3), "rate": st.rate, "reason": "now"})
    return {
        "scope": "replica",
        "now": round(now, 3),
        "since": round(since, 3),
        "bucket": bucket,
        "metric": fid.cfg.metric,
        "threshold": fid.cfg.threshold,
        "series": sorted(out.values(), key=lambda e: (e["route"], e["model"])),
    }
