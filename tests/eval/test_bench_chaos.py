"""``ctxgate bench chaos`` end to end, short: real processes (upstream, redis-server, sidecar), real
faults, and a report that counts every request."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.models  # every test here loads a prepared model


def test_a_short_chaos_run_loses_and_mixes_up_nothing(tmp_path):
    from ctxgate.eval import bench_chaos

    out = tmp_path / "chaos.json"
    rc = bench_chaos.main(["--seconds", "12", "--streams", "6", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0, report["outcomes"]
    assert report["mixups"] == 0 and report["hangs"] == 0 and report["unexpected"] == 0
    assert report["sidecar_alive_at_end"] and report["requests"] > 50
    assert [f["action"] for f in report["faults"]][-1] == "sidecar_kill9"
    kinds = {k.split(":")[1] for k in report["outcomes"] if k.startswith("as_expected")}
    assert {"ok", "error500", "reset", "stall"} <= kinds, report["outcomes"]
    assert sum(report["outcomes"].values()) == report["requests"]
