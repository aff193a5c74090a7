"""Shared fixtures: per-test state, the test upstream, a sidecar factory, a real redis-server, and
real NQ documents. Code that is not a fixture lives in tests/helpers. Keep each fixture small and
documented; add new ones below the existing ones."""

from __future__ import annotations

import os

# Before torch is imported: the servers, the tests and torch share two cores, and busy-waiting
# OpenMP workers (the default policy) slow everything else down by several times.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.helpers.data import DATA
from tests.helpers.servers import free_port, proxy_settings, run_sidecar, serve

# Environment a test run may take from the shell: where data, models and optional tools are.
# Every other CTXGATE_* variable (a policy override, a cache URL) would change what is tested.
_KEEP_ENV = {
    "CTXGATE_DATA",
    "CTXGATE_MODELS",
    "CTXGATE_LAYOUT_ROWS",
    "CTXGATE_LITELLM",
    "CTXGATE_DEVICE",
    "CTXGATE_CHROMIUM",
}


def _models_dir() -> str:
    from ctxgate.compressor import Runtime

    return str(Runtime.from_env().models)


_MODELS = _models_dir()  # resolved once, before any test moves CTXGATE_HOME


@pytest.fixture(scope="session", autouse=True)
def real_state_untouched(tmp_path_factory):
    """Fails the session if any test wrote into the real state directory (the shell's
    ``$CTXGATE_HOME``, default ``~/.cache/ctxgate``) outside the shared model cache."""
    from pathlib import Path

    from ctxgate.compressor import Runtime, set_runtime

    real = Runtime.from_env()
    models = Path(_MODELS).resolve()
    start = time.time()
    # Module- and session-scoped fixtures (shared sidecars, sidecar processes) start before any
    # test's own isolated_state: they get a session-wide empty home, never the shell's.
    with pytest.MonkeyPatch.context() as mp:
        _isolate(mp, tmp_path_factory.mktemp("ctxgate-session-home"))
        yield
    set_runtime(None)

    def written(root: Path) -> list[str]:
        if not root.is_dir():
            return []
        out = []
        for path in root.rglob("*"):
            resolved = path.resolve()
            if resolved == models or models in resolved.parents:
                continue
            if path.is_file() and path.stat().st_mtime >= start:
                out.append(str(path))
        return out

    touched = written(real.home)
    assert not touched, f"tests wrote into the real state directory: {touched[:5]}"


@pytest.fixture(autouse=True)
def isolated_state(monkeypatch, tmp_path_factory):
    """Each test gets its own empty ``$CTXGATE_HOME`` (segment cache, fidelity store) over the one
    shared model cache, and no ``CTXGATE_*`` setting from the shell."""
    from ctxgate.compressor import set_runtime

    _isolate(monkeypatch, tmp_path_factory.mktemp("ctxgate-home"))
    yield
    set_runtime(None)


def _isolate(mp: pytest.MonkeyPatch, home) -> None:
    """No CTXGATE_* setting from the shell but the kept ones; the shared models; ``home`` as state."""
    from ctxgate.compressor import set_runtime

    for key in [k for k in os.environ if k.startswith("CTXGATE_") and k not in _KEEP_ENV]:
        mp.delenv(key)
    mp.setenv("CTXGATE_MODELS", _MODELS)
    mp.setenv("CTXGATE_HOME", str(home))
    set_runtime(None)  # the library reads the variables above once, on first use


@pytest.fixture()
def runtime_with():
    """Factory: ``runtime_with(dtype="fp32")`` gives this test a runtime with those fields changed
    (the typed object the library reads instead of ``CTXGATE_*`` variables); undone afterwards."""
    from dataclasses import replace

    from ctxgate.compressor import runtime, set_runtime

    def change(**fields):
        set_runtime(replace(runtime(), **fields))

    return change


@pytest.fixture(scope="session")
def test_upstream():
    """The recording, fault-injecting upstream of tests/helpers/upstreams.py, shared by the session."""
    from tests.helpers.upstreams import TestUpstream

    up = TestUpstream()
    with serve(up) as url:
        up.url = url
        yield up


@pytest.fixture()
def upstream(test_upstream):
    """``test_upstream`` with its request log cleared for this test."""
    test_upstream.clear()
    return test_upstream


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A real redis-server on a free port (no persistence), stopped at the end of the session."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def nq_item() -> dict:
    """The first NQ 20-document item: question, answers and 20 real Wikipedia passages."""
    with (DATA / "nq" / "nq-open-20docs-derived_first500.jsonl").open(encoding="utf-8") as f:
        return json.loads(f.readline())


@pytest.fixture()
def sidecar(upstream, tmp_path):
    """Factory: ``with sidecar(**settings) as url`` runs a sidecar in front of the test upstream.
    Defaults: the deterministic model-free ``truncate`` method, an in-memory cache, min_tokens=50."""

    def make(**kw):
        return run_sidecar(proxy_settings(upstream.url, **kw))

    return make


@pytest.fixture(scope="session")
def nq_items() -> list[dict]:
    """The first five NQ 20-document items (different questions, different passages)."""
    with (DATA / "nq" / "nq-open-20docs-derived_first500.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(5))]
