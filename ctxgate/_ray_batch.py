"""``ctxgate compress --input ... --output ... --ray [ADDRESS]``: the JSONL batch on Ray Data.

The rows go through ``map_batches`` over an actor pool. Each actor loads one ``Compressor`` and
turns lines into output lines with the same ``row_record`` as the local loop, so the output is
byte-identical to a single-process run. The driver writes rows in input order as their blocks
finish (``preserve_order``), line by line. A crash or Ctrl-C loses only unwritten rows, and
``--resume`` skips the rows already in the output. Actors that die (OOM, a killed node) are
restarted and their batches retried; Ray Data does that by default, and it is set here explicitly.
A bad row gets an error line as in local mode; only a bug stops the run.

Ray is an optional extra (``pip install 'ctxgate[ray]'``). Workers need ctxgate and its models
installed where they run. On a local cluster that is this venv and ``$CTXGATE_HOME``.
"""

from __future__ import annotations

import logging
import math
import sys
from typing import Any

from ctxgate.compressor import CtxgateError

from ._batch import RowDefaults, Tally, open_batch, row_record, todo

MAX_BLOCKS = 10_000  # blocks for the whole input; a block is the unit of ordering and resume


class _Worker:
    """One Ray actor: the Compressor is loaded once, then serves many batches."""

    def __init__(self, defaults: RowDefaults, compressor_kwargs: dict[str, Any], threads: int) -> None:
        import torch

        from ctxgate.compressor import Compressor

        torch.set_num_threads(max(1, threads))
        self.defaults = defaults
        self.comp = Compressor(**compressor_kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [row_record(self.comp, self.defaults, int(n), str(line)) for n, line in zip(batch["row"], batch["line"])]
        return {
            "record": [r.record for r in rows],
            "failed": [r.failed for r in rows],
            "tokens": [r.tokens for r in rows],
        }


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError:
        raise CtxgateError("--ray needs Ray Data: pip install 'ctxgate[ray]'") from None
    return ray


def _pool(ray, workers: int | None, gpus: float | None) -> tuple[int, float, float]:
    """(actors, GPUs per actor, CPUs per actor) for this cluster."""
    res = ray.cluster_resources()
    cluster_gpus, cluster_cpus = float(res.get("GPU", 0)), float(res.get("CPU", 1))
    if gpus is None:
        gpus = 1.0 if cluster_gpus >= 1 else 0.0
    if gpus < 0 or (gpus > 0 and cluster_gpus < gpus):
        raise CtxgateError(f"--ray-gpus {gpus}: the cluster has {cluster_gpus:g} GPU(s)")
    if workers is None:
        workers = max(1, int(cluster_gpus // gpus)) if gpus else max(1, int(cluster_cpus))
    if workers < 1:
        raise CtxgateError(f"--ray-workers must be at least 1, got {workers}")
    # a CPU actor takes one core and scores with one thread; a GPU actor needs only a little CPU
    cpus = 0.5 if gpus else 1.0
    return workers, gpus, cpus


def run_on_ray(
    address: str | None,
    defaults: RowDefaults,
    compressor_kwargs: dict[str, Any],
    input_path: str,
    output: str | None,
    resume: bool,
    *,
    workers: int | None = None,
    gpus: float | None = None,
    batch_size: int = 8,
) -> int:
    from tqdm import tqdm

    if batch_size < 1:
        raise CtxgateError(f"--ray-batch must be at least 1, got {batch_size}")
    out, lines, done = open_batch(input_path, output, resume)
    items = [{"row": n, "line": line} for n, line in todo(lines, done)]
    tally = Tally()
    if not items:
        print(tally.summary(out, "Ray (nothing left to do)"), file=sys.stderr)
        return 0
    ray = _import_ray()
    local = {} if address else {"include_dashboard": False}  # start-only settings for a new local Ray
    ray.init(address=address, logging_level=logging.WARNING, ignore_reinit_error=True, **local)
    try:
        actors, per_gpu, per_cpu = _pool(ray, workers, gpus)
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows come back in input order
        ctx.enable_progress_bars = False  # ours counts rows; Ray's count blocks
        blocks = max(1, min(MAX_BLOCKS, math.ceil(len(items) / batch_size)))
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _Worker,
            fn_constructor_kwargs={
                "defaults": defaults,
                "compressor_kwargs": compressor_kwargs,
                "threads": max(1, int(per_cpu)),
            },
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=per_cpu,
            num_gpus=per_gpu or None,
            max_restarts=-1,
            max_task_retries=-1,
        )
        where = f"Ray ({actors} actor(s){f', {per_gpu:g} GPU each' if per_gpu else ''})"
        with (
            open(out, "a", encoding="utf-8", buffering=1) as f,
            tqdm(total=len(lines), initial=len(done), unit="row", file=sys.stderr) as bar,
        ):
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for record, failed, tokens in zip(batch["record"], batch["failed"], batch["tokens"]):
                    f.write(str(record) + "\n")
                    tally.add(bool(failed), int(tokens))
                    bar.update(1)
    finally:
        ray.shutdown()
    print(tally.summary(out, where), file=sys.stderr)
    return 1 if tally.failed else 0
