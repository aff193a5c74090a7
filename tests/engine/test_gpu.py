"""GPU smoke test (marker ``gpu``): skipped without a CUDA device, so CI never depends on one. On a
lent GPU machine it checks that every model-backed method runs there, keeps the answer and the
budget, is deterministic, and that ``auto`` picks ``hybrid``, the GPU default."""

from __future__ import annotations

import pytest

from tests.helpers.data import answer_kept, nq_docs, nq_items

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.models]
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)


@pytest.mark.parametrize("method", ["classifier", "hybrid", "extractive", "longllmlingua"])
def test_model_methods_run_on_cuda(method):
    from ctxgate.compressor import Compressor

    comp = Compressor(device="cuda")
    items = nq_items(8)
    kept = 0
    for item in items:
        r = comp.compress(context=nq_docs(item), question=item["question"], rate=0.25, method=method)
        assert r.method == method and 0.15 * r.original_tokens <= r.compressed_tokens <= 0.35 * r.original_tokens
        kept += answer_kept(r.compressed, item["answers"])
    assert kept >= 6, f"{method}: answer kept in {kept}/8 on CUDA"
    again = comp.compress(context=nq_docs(items[0]), question=items[0]["question"], rate=0.25, method=method)
    first = comp.compress(context=nq_docs(items[0]), question=items[0]["question"], rate=0.25, method=method)
    assert again.compressed == first.compressed


def test_auto_means_hybrid_on_a_gpu():
    from ctxgate.compressor import Compressor

    assert Compressor(device="cuda").default_method == "hybrid"
