"""The answer must survive question-aware compression: real 20-document NQ items at 4x (25 for
``extractive``; 12 for ``hybrid``, whose LM scorer costs about 4 minutes for 25 on the AVX2-only CI
machines; its full figures are in ``ctxgate eval``).

A gold answer string (case-insensitive) must still be in the compressed context in at least 90%
of items. Budgets are checked on the same runs, so this costs one compression per item and method.
"""

import pytest

from ctxgate.compressor import Compressor
from tests.helpers.data import answer_kept, nq_docs, nq_items

pytestmark = pytest.mark.models  # every test here loads a prepared model

N_ITEMS = {"hybrid": 12, "extractive": 25}
RATE = 0.25


@pytest.fixture(scope="module")
def comp():
    return Compressor()


@pytest.mark.parametrize("method", ["hybrid", "extractive"])
def test_answer_survives_4x_compression(comp, method):
    kept, errors = [], []
    n = N_ITEMS[method]
    for item in nq_items(n):
        r = comp.compress(context=nq_docs(item), question=item["question"], rate=RATE, method=method)
        kept.append(answer_kept(r.compressed, item["answers"]))
        asked = r.original_tokens * RATE
        errors.append(abs(r.compressed_tokens - asked) / asked)
    assert sum(kept) / n >= 0.9, f"{method}: answer kept in {sum(kept)}/{n}"
    assert max(errors) <= 0.15, f"{method}: budget off by up to {max(errors):.0%}"
