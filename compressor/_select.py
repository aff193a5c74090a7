"""Choosing units under a token budget: shared by every unit-scoring method.

Scores are per unit (higher = more worth keeping). Keep units always stay. The rest are taken in
score order (ties broken by position, so results are deterministic) until the budget is met.
Unit token counts are estimated per unit in the target tokenizer; the final rendering is
re-counted and the selection is re-run with a corrected budget, so the achieved size lands
close to the asked one even where a tokenizer merges across word boundaries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from ._tokens import TokenCounter
from ._units import Segmented


def unit_token_counts(doc: Segmented, counter: TokenCounter) -> list[int]:
    return [max(1, c) for c in counter.count_many(doc.unit_texts_with_space())] if doc.units else []


def pick(
    scores: Sequence[Sequence[float]],
    costs: Sequence[Sequence[int]],
    docs: Sequence[Segmented],
    budget: int,
) -> list[set[int]]:
    """Highest-scoring units across all docs until ``budget`` tokens are used."""
    chosen: list[set[int]] = [set() for _ in docs]
    used = 0
    order: list[tuple[float, int, int]] = []
    for d, doc in enumerate(docs):
        for i, u in enumerate(doc.units):
            if u.kind == "keep":
                chosen[d].add(i)
                used += costs[d][i]
            else:
                order.append((-scores[d][i], d, i))
    order.sort()
    for _neg, d, i in order:
        c = costs[d][i]
        if used + c > budget:
            continue  # a smaller unit later may still fit
        chosen[d].add(i)
        used += c
        if used >= budget:
            break
    return chosen


def fit(
    scores: Sequence[Sequence[float]],
    docs: Sequence[Segmented],
    budget: int,
    counter: TokenCounter,
    *,
    rounds: int = 3,
    tolerance: float = 0.05,
    costs: Sequence[Sequence[int]] | None = None,
) -> list[str]:
    """Render the best selection whose *measured* size is within ``tolerance`` of ``budget``.
    ``costs``: the ``unit_token_counts`` of each document, when the caller has them already."""
    if costs is None:
        costs = [unit_token_counts(doc, counter) for doc in docs]
    return fit_measured(
        lambda target: pick(scores, costs, docs, target), docs, budget, counter, rounds=rounds, tolerance=tolerance
    )


def fit_measured(
    choose: Callable[[int], Sequence[Iterable[int]]],
    docs: Sequence[Segmented],
    budget: int,
    counter: TokenCounter,
    *,
    rounds: int = 3,
    tolerance: float = 0.05,
) -> list[str]:
    """Render ``choose(target)`` (kept unit indices per document), count the rendering, and rerun
    with ``target`` scaled by budget / measured until within ``tolerance``; the closest one wins."""
    target = budget
    best: tuple[float, list[str]] | None = None
    for _ in range(rounds):
        texts = [doc.render(list(c)) for doc, c in zip(docs, choose(target))]
        got = sum(counter.count_many(texts))
        err = abs(got - budget) / max(budget, 1)
        if best is None or err < best[0]:
            best = (err, texts)
        if err <= tolerance or got == 0:
            break
        target = max(1, math.floor(target * budget / got))
    assert best is not None
    return best[1]
