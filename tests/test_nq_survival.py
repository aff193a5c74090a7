"""The answer must survive question-aware compression: 25 real 20-document NQ items at 4x.

A gold answer string (case-insensitive) must still be in the compressed context in at least 90%
of items. Budgets are checked on the same runs, so this costs one compression per item and method.
"""

import pytest

from ctxgate.compressor import Compressor
from tests._nqdata import answer_kept, nq_docs, nq_items

N_ITEMS = 25
RATE = 0.25


@pytest.fixture(scope="module")
def comp():
    return Compressor()


@pytest.mark.parametrize("method", ["hybrid", "extractive"])
def test_answer_survives_4x_compression(comp, method):
    kept, errors = [], []
    for item in nq_items(N_ITEMS):
        r = comp.compress(context=nq_docs(item), question=item["question"], rate=RATE, method=method)
        kept.append(answer_kept(r.compressed, item["answers"]))
        asked = r.original_tokens * RATE
        errors.append(abs(r.compressed_tokens - asked) / asked)
    assert sum(kept) / N_ITEMS >= 0.9, f"{method}: answer kept in {sum(kept)}/{N_ITEMS}"
    assert max(errors) <= 0.15, f"{method}: budget off by up to {max(errors):.0%}"
