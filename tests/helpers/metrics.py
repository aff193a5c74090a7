"""Reading Prometheus text in tests: one parser for every test module.

``value`` tells a series that has not been counted yet (0.0: its family is exposed, with its
``# TYPE`` line, but not this label set) from a metric that does not exist at all (an
AssertionError): a renamed metric must fail the tests that check it is zero, not pass them."""

from __future__ import annotations

import re

import httpx

_SAMPLE = re.compile(r"(\w+)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def text_of(url: str) -> str:
    r = httpx.get(url + "/metrics", timeout=10)
    assert r.status_code == 200, r.status_code
    return r.text


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly these labels (in any order)."""
    families = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            families.add(line.split()[2])
            continue
        m = _SAMPLE.fullmatch(line)
        if m and m[1] == name and dict(_LABEL.findall(m[2] or "")) == labels:
            return float(m[3])
    family = re.sub(r"_(count|sum|bucket)$", "", name)  # a histogram's samples
    assert name in families or family in families, f"no metric {name} in /metrics"
    return 0.0


def metric(url: str, name: str, **labels: str) -> float:
    """``value`` of a live sidecar's /metrics."""
    return value(text_of(url), name, **labels)
