"""Offline evals: datasets, readers (local model or OpenAI-compatible endpoint), metrics, reports.

    from ctxgate.eval import EvalConfig, run_eval
    results = run_eval(EvalConfig(dataset="nq20", limit=25, reader="smollm2", out="eval-results/nq20"))

``run_eval`` is the one entry point; ``ctxgate eval`` builds its config from argv.
"""

from __future__ import annotations

from ._types import EvalConfig, Item, Row


def run_eval(config: EvalConfig):
    """Run (or resume) ``config``'s matrix and write report.md; see ``eval.runner``."""
    from .runner import run_eval as _run

    return _run(config)


__all__ = ["EvalConfig", "Item", "Row", "run_eval"]
