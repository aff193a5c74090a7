"""Sentence embeddings (MiniLM) and faiss similarity search: what question-aware ranking needs.

Embeddings are L2-normalised, so inner product is cosine similarity and one faiss ``IndexFlatIP``
serves both ranking (chunks against a query) and near-duplicate search (chunks against each
other). Ties are broken by position so that rankings, and with them outputs, are deterministic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

DUPLICATE_THRESHOLD = 0.95


class Embedder:
    """A lazily loaded sentence-transformer; ``embed`` dedupes identical texts within a call.
    ``precision`` (fp32, bf16, fp16, or int8 on CPU) defaults to the LMs' dtype."""

    def __init__(
        self, name: str = "minilm", device: str | None = None, *, batch_size: int = 32, precision: str | None = None
    ) -> None:
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.precision = precision
        self._model = None
        self._resolved: Any = None  # a ResolvedModel once known

    def _load(self):
        if self._model is None:
            from .models import load_embedder

            self._model, self._resolved = load_embedder(self.name, self.device, self.precision)
        return self._model

    @property
    def model_id(self) -> str:
        if self._resolved is None:
            from .models import resolve

            self._resolved = resolve(self.name)
        return self._resolved.fingerprint

    @property
    def model_name(self) -> str:
        return self._resolved.name if self._resolved is not None else self.name

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32, unit length. Each distinct text is encoded once."""
        model = self._load()
        # sentence-transformers 6 renamed the getter; older versions only have the long name
        dim = (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        slot: dict[bytes, int] = {}
        unique: list[str] = []
        where = np.empty(len(texts), dtype=np.int64)
        for i, t in enumerate(texts):
            key = hashlib.blake2b(t.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if key not in slot:
                slot[key] = len(unique)
                unique.append(t)
            where[i] = slot[key]
        vecs = model.encode(unique, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False).astype(
            np.float32
        )
        # normalized here, in float32: a bf16 model's own normalization leaves norms of 0.999-1.001
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        vecs /= np.where(norms > 0, norms, 1)
        return np.ascontiguousarray(vecs[where])


def similarities(query: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``vecs`` to ``query`` (via faiss, in input order)."""
    import faiss

    n = len(vecs)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), n)
    out = np.empty(n, dtype=np.float32)
    out[ids[0]] = sims[0]
    return out


def rank(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; equal scores keep their input order."""
    return np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))


def centrality(vecs: np.ndarray) -> np.ndarray:
    """Similarity of each row to the (normalised) mean: what to keep when there is no question."""
    if len(vecs) == 0:
        return np.zeros(0, dtype=np.float32)
    mean = vecs.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    return similarities(mean / norm if norm > 0 else mean, vecs)


def near_duplicates(vecs: np.ndarray, order: Sequence[int], threshold: float = DUPLICATE_THRESHOLD) -> set[int]:
    """Rows to drop: each row whose cosine with a row earlier in ``order`` is above ``threshold``.

    The earlier (better-ranked) copy is the one that stays.
    """
    import faiss

    n = len(vecs)
    if n < 2:
        return set()
    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(np.ascontiguousarray(vecs, dtype=np.float32))
    lims, _dist, ids = index.range_search(np.ascontiguousarray(vecs, dtype=np.float32), float(threshold))
    position = np.empty(n, dtype=np.int64)
    position[np.asarray(order, dtype=np.int64)] = np.arange(n)
    dropped: set[int] = set()
    for i in order:
        if i in dropped:
            continue
        for j in ids[lims[i] : lims[i + 1]]:
            j = int(j)
            if j != i and position[j] > position[i]:
                dropped.add(j)
    return dropped
