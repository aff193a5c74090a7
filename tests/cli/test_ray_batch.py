"""``ctxgate compress --input ... --ray ADDRESS`` on a real local Ray cluster (``ray start --head`` on
127.0.0.1, two CPUs, so two compressor actors): the output equals the single-process CLI byte for
byte, a worker killed mid-run is replaced and its rows retried, and a resumed run only does the rest.
The rows are real NQ questions with their Wikipedia passages, compressed by the default method."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.data import DATA
from tests.helpers.servers import free_port

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.models]
BIN = Path(sys.executable).parent
ROWS = 16


def _cli(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    p = subprocess.run([str(BIN / "ctxgate"), "compress", *map(str, args)], capture_output=True, timeout=300, **kw)
    if check:
        assert p.returncode in (0, 1), p.stderr.decode()[-2000:]
    return p


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A Ray head node on 127.0.0.1 with two CPUs; stopped at the end of the module."""
    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--object-store-memory",
            str(300 * 2**20),
            "--temp-dir",
            str(tmp / "t"),
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        env=env,
    )
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> tuple[Path, bytes]:
    """An input of NQ rows (plus a row that is not JSON) and the single-process CLI's output for it."""
    tmp = tmp_path_factory.mktemp("batch")
    src = tmp / "in.jsonl"
    with (DATA / "nq" / "nq-open-20docs-derived_first500.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(ROWS), f)]
    lines = [
        json.dumps({"id": f"q{i}", "question": r["question"], "context": [c["text"] for c in r["ctxs"][:8]]})
        for i, r in enumerate(rows)
    ]
    lines.insert(5, "{not json")
    src.write_text("\n".join(lines) + "\n")
    out = tmp / "local.jsonl"
    assert _cli("--input", src, "--output", out, "--rate", "0.25").returncode == 1  # the bad row
    return src, out.read_bytes()


def test_ray_output_equals_the_single_process_cli_byte_for_byte(cluster, batch, tmp_path):
    src, local = batch
    out = tmp_path / "ray.jsonl"
    p = _cli("--input", src, "--output", out, "--rate", "0.25", "--ray", cluster, "--ray-batch", "4")
    assert p.returncode == 1 and "1 row(s) failed" in p.stderr.decode()
    assert "on Ray (2 actor(s))" in p.stderr.decode()
    assert out.read_bytes() == local
    got = [json.loads(line) for line in local.splitlines()]
    assert [g["row"] for g in got] == list(range(ROWS + 1))
    assert "invalid JSON" in got[5]["error"] and all("compressed" in g for g in got if g["row"] != 5)


def _actors() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::MapWorker"], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out]


def test_a_worker_killed_mid_run_is_replaced_and_its_rows_retried(cluster, batch, tmp_path):
    src, local = batch
    out = tmp_path / "ray.jsonl"
    proc = subprocess.Popen(
        [
            str(BIN / "ctxgate"),
            "compress",
            "--input",
            str(src),
            "--output",
            str(out),
            "--rate",
            "0.25",
            "--ray",
            cluster,
            "--ray-batch",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= 2 and _actors():
            break
        time.sleep(0.1)
    victims = _actors()
    assert proc.poll() is None and victims, "the run ended before a worker could be killed"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err.decode()[-2000:]
    assert out.read_bytes() == local


def test_a_resumed_run_does_only_the_rows_left(cluster, batch, tmp_path):
    src, local = batch
    out = tmp_path / "ray.jsonl"
    done = local.splitlines(keepends=True)[:6]
    out.write_bytes(b"".join(done) + b'{"row": 6, "compre')  # a crash mid-line
    p = _cli("--input", src, "--output", out, "--rate", "0.25", "--resume", "--ray", cluster)
    assert p.returncode == 0, p.stderr.decode()[-2000:]  # the bad row was already done
    assert f"{ROWS + 1 - 6} row(s)" in p.stderr.decode()
    assert out.read_bytes() == local
    again = _cli("--input", src, "--output", out, "--rate", "0.25", "--resume", "--ray", cluster)
    assert "nothing left to do" in again.stderr.decode() and out.read_bytes() == local


def test_without_the_ray_extra_the_error_says_how_to_install_it(batch, tmp_path):
    shim = tmp_path / "shim" / "ray"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('no ray here')\n")  # fault: the extra is missing
    env = {**os.environ, "PYTHONPATH": f"{shim.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    p = _cli("--input", batch[0], "--output", tmp_path / "o.jsonl", "--ray", check=False, env=env)
    assert p.returncode == 2 and "pip install 'ctxgate[ray]'" in p.stderr.decode()
    assert "Traceback" not in p.stderr.decode()


class _Cluster:
    """What ``_pool`` reads of a cluster: its resources (a stand-in for ``ray``, no fault injected)."""

    def __init__(self, **resources: float) -> None:
        self.resources = resources

    def cluster_resources(self) -> dict[str, float]:
        return self.resources


def test_the_actor_pool_follows_the_cluster():
    from ctxgate._ray_batch import _pool
    from ctxgate.compressor import CtxgateError

    assert _pool(_Cluster(CPU=8), None, None) == (8, 0.0, 1.0)  # one single-threaded actor per CPU
    assert _pool(_Cluster(CPU=16, GPU=2), None, None) == (2, 1.0, 0.5)  # one per GPU
    assert _pool(_Cluster(CPU=16, GPU=2), None, 0.5) == (4, 0.5, 0.5)  # fractional GPUs
    assert _pool(_Cluster(CPU=16, GPU=2), 3, 0) == (3, 0, 1.0)  # CPU actors on a GPU cluster
    with pytest.raises(CtxgateError, match="has 0 GPU"):
        _pool(_Cluster(CPU=4), None, 1)
    with pytest.raises(CtxgateError, match="at least 1"):
        _pool(_Cluster(CPU=4), 0, None)
