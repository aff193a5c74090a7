"""Prometheus metrics, one registry per app (two apps in one process never share counters).

Under ``serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set) every worker writes its values to that
folder, and ``render`` adds them up, so a scrape that reaches any worker sees the whole host.
Gauges say how to merge: ``ready`` is the highest (1 once any worker is ready), the fidelity
gauges the most recent value written.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("ctxgate_requests", "Requests by route and status", ["route", "status"], registry=r)
        self.tokens_before = Counter("ctxgate_tokens_before", "Prompt tokens before compression", ["route"], registry=r)
        self.tokens_after = Counter("ctxgate_tokens_after", "Prompt tokens after compression", ["route"], registry=r)
        self.tokens_saved = Counter(
            "ctxgate_tokens_saved", "Prompt tokens removed by compression", ["route"], registry=r
        )
        self.compression_seconds = Histogram(
            "ctxgate_compression_seconds",
            "Time spent deciding and compressing",
            ["route"],
            buckets=_LATENCY,
            registry=r,
        )
        self.expansions = Counter(
            "ctxgate_expansions",
            "ctxgate_expand calls answered by the proxy (each one means "
            "a tool output was compressed harder than the model needed)",
            ["route", "found"],
            registry=r,
        )
        self.cache_hits = Counter("ctxgate_cache_hits", "Segment cache hits", registry=r)
        self.cache_misses = Counter("ctxgate_cache_misses", "Segment cache misses (compressed now)", registry=r)
        self.background_compressions = Counter(
            "ctxgate_background_compressions",
            "Segments whose compression finished after their request had "
            "failed open on timeout (cached, so the next request with them hits)",
            registry=r,
        )
        self.cache_errors = Counter(
            "ctxgate_cache_errors", "Cache backend failures (treated as misses)", ["op"], registry=r
        )
        self.fit_context = Counter(
            "ctxgate_fit_context",
            "Prompts over their model's context window: fitted "
            "(compressed harder until they fit) or too_long (sent as they were)",
            ["route", "outcome"],
            registry=r,
        )
        self.fail_open = Counter(
            "ctxgate_fail_open", "Requests forwarded uncompressed because compression failed", ["reason"], registry=r
        )
        self.upstream_seconds = Histogram(
            "ctxgate_upstream_seconds", "Upstream time to response headers", ["route"], buckets=_LATENCY, registry=r
        )
        self.upstream_errors = Counter(
            "ctxgate_upstream_errors", "Upstream transport failures", ["route", "kind"], registry=r
        )
        self.ready = Gauge("ctxgate_ready", "1 once the models are loaded", registry=r, multiprocess_mode="max")
        # service.fidelity: shadow checks and the adaptive rate
        self.fidelity_shadow = Counter(
            "ctxgate_fidelity_shadow",
            "Shadow calls by result (ok, upstream_error, "
            "error, budget, busy, incomplete, unavailable: the shared state could not be reached)",
            ["route", "result"],
            registry=r,
        )
        self.fidelity_score = Gauge(
            "ctxgate_fidelity_score",
            "Rolling fidelity the controller sees",
            ["route", "model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.fidelity_rate = Gauge(
            "ctxgate_fidelity_rate",
            "Keep-rate the controller applies",
            ["route", "model"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.fidelity_adjustments = Counter(
            "ctxgate_fidelity_adjustments", "Controller rate changes", ["route", "model", "direction"], registry=r
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)
