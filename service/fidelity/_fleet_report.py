"""``/v1/fidelity`` and ``/v1/fidelity/series`` for a fleet: the same shapes as ``_report``, read from
the shared Redis counters (``_fleet``) instead of this replica's SQLite rows.

Differences, all labelled in the response (``scope: "fleet"``):
- sums come from minute buckets (series up to two days back), hour buckets (up to 60 days) or day
  buckets (longer, up to the retention period); a series bucket is therefore at least a minute;
- aggregates add up the day buckets kept for ``retention_days``;
- ``in_flight`` is this replica's, and ``replicas`` counts those heard from in the last few seconds.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ._fleet import GRAINS, MINUTE_DAYS
from ._report import MAX_POINTS, _r, blank, settings_of
from ._shadow import Fidelity

HOUR_DAYS = 60  # series up to this long read hour buckets, longer ones day buckets
MAX_DAYS = 3650  # how far back a fleet report reads when the retention is unbounded (0)


def _entry(keys: dict, route: str, model: str) -> dict[str, Any]:
    return keys.setdefault((route, model), blank(route, model))


def _sums(buckets: list[tuple[int, dict]]) -> dict[tuple[str, str], dict[str, float]]:
    out: dict[tuple[str, str], dict[str, float]] = {}
    for _, values in buckets:
        for (route, model, name), v in values.items():
            d = out.setdefault((route, model), {})
            d[name] = d.get(name, 0.0) + v
    return out


async def aggregates(fid: Fidelity) -> dict[str, Any]:
    fleet = fid.fleet
    assert fleet is not None
    now = time.time()
    days = fid.cfg.retention_days if fid.cfg.retention_days > 0 else MAX_DAYS
    since = now - days * 86400
    traffic = _sums(await fleet.buckets("t", "d", since, now))
    samples = _sums(await fleet.buckets("f", "d", since, now))
    keys: dict[tuple[str, str], dict[str, Any]] = {}
    for (route, model), t in traffic.items():
        e = _entry(keys, route, model)
        before, after = int(t.get("before", 0)), int(t.get("after", 0))
        e.update(
            requests=int(t.get("requests", 0)),
            tokens_before=before,
            tokens_after=after,
            achieved_ratio=_r(before / after) if after else None,
        )
        e["tokens_saved"]["estimate"] = before - after
    for (route, model), f in samples.items():
        e = _entry(keys, route, model)
        ok = int(f.get("ok", 0))
        e.update(samples=ok, errors=int(f.get("n", 0)) - ok, adjustments=int(f.get("adjustments", 0)))
        if ok:
            e.update(mean_cosine=_r(f["cosine"] / ok), mean_f1=_r(f["f1"] / ok), mean_em=_r(f["em"] / ok))
        e["tokens_saved"].update(usage=int(f.get("saved", 0)), usage_samples=int(f.get("usage_samples", 0)))
    for (route, model), st in fid.controller.states.items():
        e = _entry(keys, route, model)
        e.update(
            configured_rate=st.configured,
            rate=max(st.rate, st.configured),
            rolling=_r(fid.controller.rolling(route, model)),
        )
    calls, tokens = await fleet.budget(fid.day)
    cfg = fid.cfg
    return {
        "scope": "fleet",
        "replicas": await fleet.replicas(),
        "routes": sorted(keys.values(), key=lambda e: (e["route"], e["model"])),
        "budget": {
            "day": fid.day,
            "calls": calls,
            "tokens": tokens,
            "max_calls": cfg.daily_max_calls or None,
            "max_tokens": cfg.daily_max_tokens or None,
        },
        "in_flight": fid.pending,
        "config": settings_of(cfg),
    }


async def series(fid: Fidelity, since_seconds: float, bucket: float | None) -> dict[str, Any]:
    fleet = fid.fleet
    assert fleet is not None
    now = time.time()
    # nothing older than the retention period is kept, and a bucket read is one Redis call: the span
    # and the grain bound the calls (at most 2,880 minutes, 1,440 hours or one a day kept)
    days = fid.cfg.retention_days if fid.cfg.retention_days > 0 else MAX_DAYS
    since_seconds = min(since_seconds, days * 86400)
    since = now - since_seconds
    if since_seconds <= MINUTE_DAYS * 86400 and (bucket or 0) < 3600:
        grain = "m"
    else:
        grain = "h" if since_seconds <= HOUR_DAYS * 86400 and (bucket or 0) < 86400 else "d"
    step = GRAINS[grain]
    if not bucket:
        bucket = math.ceil(since_seconds / MAX_POINTS)
    bucket = max(step, math.ceil(bucket / step) * step)
    out: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(route: str, model: str) -> dict[str, Any]:
        return out.setdefault(
            (route, model), {"route": route, "model": model, "traffic": [], "fidelity": [], "rate": []}
        )

    def rebucket(rows: list[tuple[int, dict]]) -> dict[tuple[str, str, int], dict[str, float]]:
        merged: dict[tuple[str, str, int], dict[str, float]] = {}
        for b, values in rows:
            start = int(b // bucket * bucket)
            for (route, model, name), v in values.items():
                d = merged.setdefault((route, model, start), {})
                d[name] = d.get(name, 0.0) + v
        return merged

    for (route, model, b), t in sorted(
        rebucket(await fleet.buckets("t", grain, since, now)).items(), key=lambda kv: kv[0][2]
    ):
        before, after = t.get("before", 0), t.get("after", 0)
        entry(route, model)["traffic"].append(
            {
                "t": b,
                "requests": int(t.get("requests", 0)),
                "tokens_saved_estimate": int(before - after),
                "ratio": _r(before / after) if after else None,
            }
        )
    for (route, model, b), f in sorted(
        rebucket(await fleet.buckets("f", grain, since, now)).items(), key=lambda kv: kv[0][2]
    ):
        ok = int(f.get("ok", 0))
        if not ok:
            continue
        entry(route, model)["fidelity"].append(
            {
                "t": b,
                "samples": ok,
                "cosine": _r(f["cosine"] / ok),
                "f1": _r(f["f1"] / ok),
                "em": _r(f["em"] / ok),
                "tokens_saved_usage": int(f["saved"]) if "saved" in f else None,
            }
        )
    opening: dict[tuple[str, str], float] = {}
    for c in await fleet.changes():
        if c["ts"] < since:
            opening[(c["route"], c["model"])] = c["new"]  # where each rate stood when the window opens
        else:
            entry(c["route"], c["model"])["rate"].append(
                {"t": round(c["ts"], 3), "rate": c["new"], "reason": c["reason"]}
            )
    for (route, model), rate in opening.items():
        entry(route, model)["rate"].insert(0, {"t": round(since, 3), "rate": rate, "reason": "before"})
    for (route, model), st in fid.controller.states.items():
        if (route, model) in out:
            out[(route, model)]["rate"].append(
                {"t": round(now, 3), "rate": max(st.rate, st.configured), "reason": "now"}
            )
    return {
        "scope": "fleet",
        "now": round(now, 3),
        "since": round(since, 3),
        "bucket": bucket,
        "metric": fid.cfg.metric,
        "threshold": fid.cfg.threshold,
        "series": sorted(out.values(), key=lambda e: (e["route"], e["model"])),
    }
