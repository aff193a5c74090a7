"""The MiniLM embeddings the RAG plugin tests use rank real NQ passages sensibly."""

from __future__ import annotations

import numpy as np

from tests.helpers.rag import embed, nq_passages, question


def test_embeddings_rank_the_gold_passage_first_and_are_normalised():
    q, _ = question()
    passages = nq_passages()
    vecs = np.array(embed([p["text"] for p in passages]))
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    best = int(np.argmax(vecs @ np.array(embed([q])[0])))
    assert passages[best]["metadata"]["hasanswer"] is True
