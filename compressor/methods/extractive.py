"""``extractive``: keep whole sentences (chunks) most similar to the question, in original order.

No language model reads the text: MiniLM embeds each chunk, faiss ranks chunks by cosine
similarity to the question (or, without one, to the mean of all chunks: centrality), and
near-duplicates of better-ranked chunks are dropped. Chunks are taken greedily in rank order
while they fit; the best chunk that did not fit then fills what is left with its first words,
so the output lands on the budget instead of a chunk's length below it. With a question over
several documents, the multi-hop hops (``_hops``) are raised right behind the best first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._embed import Embedder, centrality, near_duplicates, rank, similarities
from .._hops import MULTI_HOP, lifted
from .._select import fit_measured, unit_token_counts
from .._tokens import TokenCounter
from .._units import Segmented
from ._base import Job, MethodOutput

MIN_CHUNK_TOKENS = 16  # shorter sentences ("Fig. 3.", list items) are merged with the next ones
MAX_CHUNK_TOKENS = 96  # longer ones are split: MiniLM reads 256 word pieces, and finer is fairer
DOC_WEIGHT = 0.3  # how much a chunk's document similarity adds to its own (documents input)


@dataclass(frozen=True)
class Chunk:
    doc: int
    first: int  # unit range [first, last)
    last: int
    cost: int  # tokens in the target tokenizer (sum of unit estimates)
    keep: bool  # holds a keep unit: always kept

    def text(self, docs: Sequence[Segmented]) -> str:
        seg = docs[self.doc]
        return seg.text[seg.units[self.first].start : seg.units[self.last - 1].end]


def chunk_sentences(
    docs: Sequence[Segmented],
    costs: Sequence[Sequence[int]],
    *,
    min_tokens: int = MIN_CHUNK_TOKENS,
    max_tokens: int = MAX_CHUNK_TOKENS,
) -> list[Chunk]:
    """Sentences merged up to ``min_tokens`` and split at ``max_tokens``; keep units stand alone."""
    chunks: list[Chunk] = []
    for d, seg in enumerate(docs):
        start, acc = None, 0

        def close(end: int) -> None:
            nonlocal start, acc
            if start is not None and end > start:
                chunks.append(Chunk(d, start, end, acc, False))  # noqa: B023  # called inside this loop
            start, acc = None, 0

        for first, last in seg.sentences:
            if any(seg.units[i].kind == "keep" for i in range(first, last)):
                close(first)
                chunks.append(Chunk(d, first, last, sum(costs[d][first:last]), True))
                continue
            for i in range(first, last):
                if start is None:
                    start = i
                acc += costs[d][i]
                if acc >= max_tokens:
                    close(i + 1)
            if acc >= min_tokens:
                close(last)
        close(len(seg.units))
    return chunks


def select_chunks(
    chunks: Sequence[Chunk],
    order: Sequence[int],
    skip: set[int],
    costs: Sequence[Sequence[int]],
    budget: int,
    n_docs: int,
) -> list[set[int]]:
    """Unit indices per doc: keep chunks, then whole chunks in rank order while they fit, then
    the first words of the best chunk left out, up to ``budget`` tokens."""
    chosen: list[set[int]] = [set() for _ in range(n_docs)]
    used = 0
    for c in chunks:
        if c.keep:
            chosen[c.doc].update(range(c.first, c.last))
            used += c.cost
    left_out: int | None = None
    for k in order:
        c = chunks[k]
        if c.keep or k in skip:
            continue
        if used + c.cost <= budget:
            chosen[c.doc].update(range(c.first, c.last))
            used += c.cost
        elif left_out is None:
            left_out = k
    if left_out is not None:
        c = chunks[left_out]
        for i in range(c.first, c.last):
            if used + costs[c.doc][i] > budget:
                break
            chosen[c.doc].add(i)
            used += costs[c.doc][i]
    return chosen


def fit_chunks(
    chunks: Sequence[Chunk],
    order: Sequence[int],
    skip: set[int],
    docs: Sequence[Segmented],
    costs: Sequence[Sequence[int]],
    budget: int,
    counter: TokenCounter,
    *,
    rounds: int = 3,
    tolerance: float = 0.05,
) -> list[str]:
    """``select_chunks`` with the budget corrected by the measured size of the rendering."""
    return fit_measured(
        lambda target: select_chunks(chunks, order, skip, costs, target, len(docs)),
        docs,
        budget,
        counter,
        rounds=rounds,
        tolerance=tolerance,
    )


class Extractive:
    """Sentence/chunk selection by embedding similarity; see the module docstring."""

    name = "extractive"

    def __init__(self, embedder: str = "minilm", device: str | None = None) -> None:
        self.embedder = Embedder(embedder, device)

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    def run(self, job: Job) -> MethodOutput:
        docs = job.docs
        costs = [unit_token_counts(d, job.counter) for d in docs]
        chunks = chunk_sentences(docs, costs)
        if not chunks:
            return MethodOutput(texts=[d.text for d in docs])
        vecs = self.embedder.embed([c.text(docs) for c in chunks])
        scores, doc_scores = chunk_scores(
            self.embedder, chunks, vecs, len(docs), job.question, bool(job.options.get("is_documents"))
        )
        ranking = scores
        if job.question and job.options.get("is_documents") and job.options.get("multi_hop", MULTI_HOP):
            ranking = lifted(scores, [c.doc for c in chunks], [d.text for d in docs], job.question)
        order = [int(i) for i in rank(ranking)]
        skip = near_duplicates(vecs, order)
        texts = fit_chunks(chunks, order, skip, docs, costs, job.budget, job.counter)
        out = [t if t.strip() or not d.text.strip() else None for t, d in zip(texts, docs)]
        return MethodOutput(texts=out, scores=[None if s is None else float(s) for s in doc_scores])


def chunk_scores(
    embedder: Embedder, chunks: Sequence[Chunk], vecs: np.ndarray, n_docs: int, question: str | None, is_documents: bool
) -> tuple[np.ndarray, list[float | None]]:
    """Per chunk: similarity to the question (else centrality); for documents input, blended
    with the similarity of the chunk's document (the mean of its chunk vectors).
    Also per document: that document similarity (None for documents without chunks)."""
    if question and question.strip():
        query = embedder.embed([question])[0]
        sims = similarities(query, vecs)
    else:
        query = None
        sims = centrality(vecs)
    doc_of = np.array([c.doc for c in chunks])
    doc_vecs = np.zeros((n_docs, vecs.shape[1]), dtype=np.float32)
    np.add.at(doc_vecs, doc_of, vecs)
    present = np.linalg.norm(doc_vecs, axis=1) > 0
    doc_vecs[present] /= np.linalg.norm(doc_vecs[present], axis=1, keepdims=True)
    doc_sims = similarities(query, doc_vecs) if query is not None else centrality(doc_vecs[present])
    if query is None:
        full = np.zeros(n_docs, dtype=np.float32)
        full[present] = doc_sims
        doc_sims = full
    scores = sims
    if is_documents and n_docs > 1:
        scores = (1 - DOC_WEIGHT) * sims + DOC_WEIGHT * doc_sims[doc_of]
    return scores, [float(doc_sims[d]) if present[d] else None for d in range(n_docs)]
