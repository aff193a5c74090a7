"""Real servers for the tests: uvicorn on a free 127.0.0.1 port in a thread, and the sidecar
waiting for /readyz."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app, port: int | None = None, timeout: float = 60.0) -> Iterator[str]:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a background thread; yields its base URL.
    The lifespan runs (startup before the yield, shutdown after)."""
    import uvicorn

    port = port or free_port()
    opts = dict(host="127.0.0.1", port=port, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    settings = getattr(getattr(app, "state", None), "settings", None)
    if settings is not None:  # the sidecar: with its own connection limits, as `ctxgate serve` runs it
        from ctxgate.service._server import server_config

        config = server_config(app, settings, **opts)
    else:
        config = uvicorn.Config(app, access_log=False, **opts)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def run_sidecar(settings, ready_timeout: float = 120.0) -> Iterator[str]:
    """A ctxgate sidecar (service.create_app) on ``settings.port``; waits for /readyz unless it reports failure."""
    import httpx

    from ctxgate.service import create_app

    with serve(create_app(settings), port=settings.port) as url:
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            r = httpx.get(url + "/readyz", timeout=5)
            if r.status_code == 200 or r.json().get("status") == "failed":
                break
            time.sleep(0.05)
        yield url


def proxy_settings(upstream_url: str, *, policy: dict | None = None, cache: dict | None = None, **kw):
    """Sidecar ``Settings`` in front of a test upstream at ``upstream_url`` (both providers), on a
    free port. Defaults: the deterministic model-free ``truncate`` method, an in-memory cache,
    ``min_tokens=50`` and ``rate=0.3``; ``policy``/``cache`` entries and keywords override them."""
    from ctxgate.service import CacheSettings, Policy, Settings

    kw.setdefault("upstream", upstream_url + "/v1")
    kw.setdefault("anthropic_upstream", upstream_url)
    kw.setdefault("default_method", "truncate")
    kw.setdefault("port", free_port())
    pol = {"min_tokens": 50, "rate": 0.3, **(policy or {})}
    cch = {"backend": "memory", **(cache or {})}
    return Settings(policy=Policy(**pol), cache=CacheSettings(**cch), **kw)
