"""``ctxgate serve --workers N``: N processes accept on one listening socket (uvicorn's supervisor).

The supervisor spawns the workers, replaces a worker that dies or stops answering its health
ping, and stops them all on SIGINT/SIGTERM. Each worker builds its own app from the same settings,
handed over in ``CTXGATE_WORKER_SETTINGS`` (spawned processes inherit the environment; nothing is
pickled but the uvicorn config), and loads its own models.

What the workers share:
- the segment cache: a SQLite file (WAL, safe across processes) or Redis;
- the fidelity store: one SQLite file, so ``/v1/fidelity`` shows every worker's traffic;
- ``/metrics``: prometheus_client's multiprocess mode, where counters add up across workers;
- with Redis state (``state.url`` or a Redis cache): the shadow budget and the adaptive rates.

Without Redis, each worker gets 1/N of the daily shadow caps, and adapts its own rate.
"""

from __future__ import annotations

import os
import tempfile

import msgspec

from ._config import Settings

ENV = "CTXGATE_WORKER_SETTINGS"


def worker_app():
    """The app factory each worker calls (``uvicorn.Config(factory=True)``)."""
    import logging

    from ._app import create_app
    from ._server import WorkerProtocol

    settings = msgspec.json.decode(os.environ[ENV], type=Settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format=f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s"
    )
    WorkerProtocol.limits = settings.limits  # read by connections, which start after this
    return create_app(settings)


def run_workers(settings: Settings) -> int:
    from uvicorn.supervisors import Multiprocess

    from ._server import WorkerProtocol, server_config

    os.environ[ENV] = msgspec.json.encode(settings).decode()
    # counters from every worker, summed at /metrics; the folder must start empty
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ctxgate-metrics-")
    config = server_config(
        "ctxgate.service._workers:worker_app",
        settings,
        factory=True,
        workers=settings.workers,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        http=WorkerProtocol,
    )
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
    return 0
