"""The controller's rules on their own (the end-to-end path is in test_fidelity_shadow.py): bounded at
1.0, probing down from 1.0 where nothing can be sampled, ignoring samples taken at another rate."""

from __future__ import annotations

import pytest

from ctxgate.service._config import FidelitySettings
from ctxgate.service.fidelity import Controller


def make(**kw) -> tuple[Controller, list]:
    changes: list = []
    cfg = FidelitySettings(
        **{"threshold": 0.8, "min_samples": 1, "window": 2, "step_up": 0.4, "step_down": 0.25, "probe_after": 3, **kw}
    )
    return Controller(cfg, changes.append), changes


def test_steps_up_to_one_then_probes_down_where_nothing_is_sampled():
    c, changes = make()
    assert c.rate("chat", "m", 0.3) == 0.3  # no state yet: the configured rate
    c.observe("chat", "m", 0.3, 0.3, False, 0.1)
    assert c.rate("chat", "m", 0.3) == pytest.approx(0.7)
    c.observe("chat", "m", 0.3, 0.7, False, 0.1)
    assert c.rate("chat", "m", 0.3) == 1.0  # bounded at 1.0
    assert c.observe("chat", "m", 0.3, 1.0, False, 0.0) is None
    # the third request at 1.0 (the first was asked above) probes one step down
    assert [c.rate("chat", "m", 0.3) for _ in range(3)] == [1.0, 0.75, 0.75]
    assert [(ch.reason, ch.new) for ch in changes] == [
        ("start", 0.3),
        ("low_fidelity", 0.7),
        ("low_fidelity", 1.0),
        ("probe", 0.75),
    ]


def test_samples_at_another_rate_or_overridden_do_not_steer():
    c, changes = make(min_samples=1)
    c.observe("messages", "m", 0.5, 0.5, True, 0.0)  # a request's own rate: stored, not steering
    c.observe("messages", "m", 0.5, 0.2, False, 0.0)  # taken before a change: stale
    assert c.rate("messages", "m", 0.5) == 0.5 and c.rolling("messages", "m") is None
    c.observe("messages", "m", 0.5, 0.5, False, 0.9)  # good at the configured rate: nothing to do
    c.observe("messages", "m", 0.5, 0.5, False, 0.9)
    assert c.rate("messages", "m", 0.5) == 0.5 and [ch.reason for ch in changes] == ["start"]


def test_never_below_the_configured_rate_and_off_when_not_adaptive():
    c, _ = make()
    c.restore({("chat", "m"): 0.2})  # left by a run with a lower configured rate
    assert c.rate("chat", "m", 0.4) == 0.4
    c2, changes = make(adaptive=False)
    for _ in range(5):
        c2.observe("chat", "m", 0.3, 0.3, False, 0.0)
    assert c2.rate("chat", "m", 0.3) == 0.3 and [ch.reason for ch in changes] == ["start"]


def test_an_adapted_rate_is_not_restored_with_adapting_off(tmp_path):
    """A rate adapted in an earlier run came back as 0.9 with fidelity.adaptive off (issue 16)."""
    import asyncio
    import time

    from ctxgate.service import Policy, Settings
    from ctxgate.service._config import FidelitySettings
    from ctxgate.service._metrics import Metrics
    from ctxgate.service.fidelity import Fidelity
    from ctxgate.service.fidelity._store import Store

    path = tmp_path / "f.sqlite"
    store = Store(path)
    store.add_adjustment(time.time(), "chat", "m", 0.3, 0.9, "low_fidelity", 0.5, 20)
    store.close()

    async def rate(adaptive: bool) -> float:
        s = Settings(fidelity=FidelitySettings(path=str(path), adaptive=adaptive, sample_rate=0.0))
        f = Fidelity(s, Metrics(), None, {})
        await f.start()
        try:
            return f.policy("chat", "m", Policy(rate=0.3)).rate
        finally:
            await f.close()

    assert asyncio.run(rate(False)) == 0.3
    assert asyncio.run(rate(True)) == 0.9
