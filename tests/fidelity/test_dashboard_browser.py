"""/dashboard in a real headless Chromium (Playwright, the Debian browser: nothing is downloaded), fed by
a short real run: compressed requests, shadow checks against NeedleUpstream, a controller change."""

from __future__ import annotations

import os
import shutil
import time

import httpx
import pytest

from tests.helpers.needle import NeedleUpstream, ask, wait_samples
from tests.helpers.servers import free_port, run_sidecar, serve

pytestmark = pytest.mark.models  # every test here loads a prepared model

CHROMIUM = os.environ.get("CTXGATE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("chromium is not installed (make system-deps installs it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def dashboard_url(tmp_path, nq_items):
    """A sidecar after a short real run: 4 compressed requests about 1 s apart, all shadowed; the
    controller stepped the rate up twice, 0.3 -> 0.5 -> 0.7 (the needle is cut, answers disagree)."""
    from ctxgate.service import CacheSettings, Policy, Settings
    from ctxgate.service._config import FidelitySettings

    up = NeedleUpstream()
    with serve(up) as up_url:
        s = Settings(
            upstream=up_url + "/v1",
            anthropic_upstream=up_url,
            port=free_port(),
            default_method="truncate",
            cache=CacheSettings(backend="memory"),
            policy=Policy(min_tokens=50, rate=0.3),
            fidelity=FidelitySettings(
                sample_rate=1.0, min_samples=2, window=2, step_up=0.2, path=str(tmp_path / "fidelity.sqlite")
            ),
        )
        with run_sidecar(s) as url:
            for i, item in enumerate(nq_items[:4]):
                if i:
                    time.sleep(1.1)  # separate 1 s buckets, so the lines have several points
                ask(url, item, "end")
                wait_samples(url, i + 1)
            yield url


def test_dashboard_renders_real_data_without_console_errors(browser, dashboard_url):
    page = browser.new_page()
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(dashboard_url + "/dashboard")
    page.wait_for_selector("body[data-loaded='1']", timeout=30_000)

    points = {
        c: int(page.get_attribute(f"#chart-{c} svg", "data-points")) for c in ("saved", "ratio", "fidelity", "rate")
    }
    assert points["saved"] >= 4 + 2 and points["ratio"] >= 4, points  # estimate per bucket + usage (dashed)
    assert points["fidelity"] >= 4 and points["rate"] >= 4, points  # start, two steps up, now
    for chart in ("saved", "ratio", "fidelity", "rate"):
        paths = page.locator(f"#chart-{chart} path.series-line")
        assert paths.count() >= 1
        d = paths.first.get_attribute("d")
        assert d.startswith("M") and ("L" in d or "H" in d), (chart, d)
        assert page.locator(f"#chart-{chart} circle.point").count() == points[chart]
    assert page.locator("#chart-saved path.series-line.dashed").count() == 1  # measured from usage
    assert page.locator("#chart-fidelity line.threshold").count() == 1
    # the rate line rises: the steps up drawn as a step (y grows downward in SVG)
    rate_y = [float(page.locator("#chart-rate circle.point").nth(i).get_attribute("cy")) for i in range(points["rate"])]
    assert rate_y[-1] < rate_y[0]

    row = page.locator("#table tbody tr")
    assert row.count() == 1
    cells = row.first.locator("td").all_inner_texts()
    assert cells[:4] == ["chat", "gpt-4o-mini", "4", "4"] and cells[10] == "0.70"
    agg = httpx.get(dashboard_url + "/v1/fidelity", timeout=10).json()["routes"][0]
    assert agg["rate"] == pytest.approx(0.7) and agg["adjustments"] == 2
    assert problems == []
    page.close()
