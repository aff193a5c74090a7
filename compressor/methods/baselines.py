"""Baselines for evals: truncation to the budget and seeded random word drop.

They use the same unit machinery as the real methods, so protected spans stay atomic here too.
"""

from __future__ import annotations

import random

from .._errors import InvalidRequest
from .._select import fit
from ._base import Job, MethodOutput


class Truncate:
    """Keep the first units of the context (documents in order) until the budget is spent."""

    name = "truncate"
    model_id = None
    model_name = None

    def run(self, job: Job) -> MethodOutput:
        scores, n = [], sum(len(d.units) for d in job.docs)
        pos = 0
        for d in job.docs:
            scores.append([float(n - pos - i) for i in range(len(d.units))])
            pos += len(d.units)
        texts = fit(scores, job.docs, job.budget, job.counter)
        return MethodOutput(texts=[t if t.strip() or not d.text.strip() else None for t, d in zip(texts, job.docs)])


class RandomDrop:
    """Drop words uniformly at random (seed fixed by ``options['seed']``, default 0)."""

    name = "random"
    model_id = None
    model_name = None

    def run(self, job: Job) -> MethodOutput:
        seed = job.options.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int | str) or not str(seed).lstrip("-").isdigit():
            raise InvalidRequest(f"option seed must be an integer, got {str(seed)[:40]!r}")
        rng = random.Random(int(seed))
        scores = [[rng.random() for _ in d.units] for d in job.docs]
        texts = fit(scores, job.docs, job.budget, job.counter)
        return MethodOutput(texts=[t if t.strip() or not d.text.strip() else None for t, d in zip(texts, job.docs)])
