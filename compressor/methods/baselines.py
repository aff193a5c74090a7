"""Baselines for evals: truncation to the budget and seeded random word drop.

They use the same unit machinery as the real methods, so protected spans stay atomic here too.
"""

from __future__ import annotations

import random

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
        rng = random.Random(int(job.options.get("seed", 0)))
        scores = [[rng.random() for _ in d.units] for d in job.docs]
        texts = fit(scores, job.docs, job.budget, job.counter)
        return MethodOutput(texts=[t if t.strip() or not d.text.strip() else None for t, d in zip(texts, job.docs)])
