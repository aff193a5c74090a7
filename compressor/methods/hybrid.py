"""``hybrid``: the question-aware default. LongLLMLingua's recipe, with the expensive half made cheap.

1. Coarse (only with a question): MiniLM ranks documents (or, for one text, sentence chunks) by
   similarity to the question, and the best are kept up to ``coarse_factor`` x the budget.
   LongLLMLingua ranks with the causal LM itself, which costs a forward pass over everything;
   an embedder reads the same text about 15x faster here, and the LM then only sees what is kept.
2. Fine: one batched causal-LM pass over the kept text gives each token's self-information
   (LLMLingua); a word's score is the mean over its tokens. Protected atoms (numbers, IDs) and
   words of the question get a boost, and higher-ranked documents a bonus that falls linearly
   with rank (LongLLMLingua's dynamic compression ratio: the best documents keep more words).
   ``fit`` then takes the best words to the exact budget.

Without a question, several documents (few-shot demonstrations, say) are ranked by how typical
they are: MiniLM similarity to the mean of all documents. The most typical that fit in
``coarse_factor`` x the budget are kept (always at least one) and pruned from there, as
LLMLingua's budget controller keeps whole demonstrations. Spreading a 10x budget over every
document instead left a few words of each: on GSM8K's 8-shot prompt, word salad where one intact
worked example is what a reader needs. One text without a question is pruned by self-information
alone.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from .._embed import Embedder, centrality, near_duplicates, rank, similarities
from .._hops import MULTI_HOP, lifted
from .._scorer import LMScorer, TokenScores
from .._select import fit, unit_token_counts
from .._units import Segmented
from ._base import Job, MethodOutput
from .extractive import Chunk, chunk_sentences

COARSE_FACTOR = 1.3  # the LM sees about this many times the budget (tuned on nq, 25 items)
RANK_BONUS = 4.0  # nats added to the best kept document's words, falling to 0 for the last
ATOM_BOOST = 2.0  # nats: numbers, IDs, URLs are rarely worth dropping
QUESTION_BOOST = 2.0  # nats: words that also appear in the question
DOC_CHUNK_TOKENS = (64, 200)  # chunks that stand for a document when ranking documents
SENT_BONUS = 10.0  # nats per unit of cosine similarity between a word's sentence and the question
UNSELECTED = -1e6  # units outside the kept documents/chunks: only if nothing else fits

_WORD = re.compile(r"\w+", re.UNICODE)
_STOP = frozenset(
    "a an the of in on at to for from by with and or not no is are was were be been being do does did "
    "what which who whom whose when where why how that this these those it its as if than then there "
    "their they them he she his her we you your our i me my us can could would should will shall may "
    "might must has have had about into over under after before between during s t".split()
)


class Hybrid:
    """Embedding ranking, then LM token pruning inside what is kept; see the module docstring."""

    name = "hybrid"

    def __init__(self, scorer: str = "smollm2", embedder: str = "minilm", device: str | None = None) -> None:
        self.scorer = LMScorer(scorer, device)
        self.embedder = Embedder(embedder, device)

    @property
    def model_id(self) -> str:
        return f"{self.scorer.model_id}+{self.embedder.model_id}"

    @property
    def model_name(self) -> str:
        return f"{self.scorer.model_name}+{self.embedder.model_name}"

    def run(self, job: Job) -> MethodOutput:
        docs, opts = job.docs, job.options
        costs = [unit_token_counts(d, job.counter) for d in docs]
        question = (job.question or "").strip() or None
        factor = float(opts.get("coarse_factor", COARSE_FACTOR))
        doc_scores: list[float | None] | None = None
        # selected unit ranges (doc, first, last) with the bonus their words get
        if opts.get("is_documents") and len(docs) > 1:
            ranges, doc_scores = self._coarse_documents(
                docs, costs, question, job.budget * factor, bool(opts.get("multi_hop", MULTI_HOP))
            )
        elif question is None:
            ranges = [(d, 0, len(seg.units), 0.0) for d, seg in enumerate(docs) if seg.units]
        else:
            ranges = self._coarse_chunks(docs, costs, question, job.budget * factor)

        scores = self._fine(docs, costs, ranges, question)
        texts = fit([s.tolist() for s in scores], docs, job.budget, job.counter, costs=costs)
        out = [t if t.strip() or not d.text.strip() else None for t, d in zip(texts, docs)]
        return MethodOutput(texts=out, scores=doc_scores)

    # ------------------------------------------------------------------ coarse

    def _coarse_documents(
        self, docs: Sequence[Segmented], costs, question: str | None, allowance: float, multi_hop: bool = MULTI_HOP
    ):
        """Whole documents up to ``allowance`` tokens: with a question, by their best chunk's
        similarity to it (the multi-hop hops right behind the best, ``_hops``); without one, by their similarity
        to the mean document (most typical first)."""
        chunks = chunk_sentences(docs, costs, min_tokens=DOC_CHUNK_TOKENS[0], max_tokens=DOC_CHUNK_TOKENS[1])
        head = [question] if question is not None else []
        vecs = self.embedder.embed(head + [c.text(docs) for c in chunks])
        chunk_vecs = vecs[len(head) :]
        best = np.full(len(docs), -np.inf)
        doc_vecs = np.zeros((len(docs), vecs.shape[1]), dtype=np.float32)
        for c, v in zip(chunks, chunk_vecs):
            doc_vecs[c.doc] += v
        norms = np.linalg.norm(doc_vecs, axis=1, keepdims=True)
        unit = doc_vecs / np.where(norms > 0, norms, 1)
        if question is not None:
            for c, s in zip(chunks, similarities(vecs[0], chunk_vecs)):
                best[c.doc] = max(best[c.doc], float(s))
        else:
            present = sorted({c.doc for c in chunks})
            best[present] = centrality(unit[present])
        ranking = best
        if question is not None and multi_hop:
            ranking = lifted(best, range(len(docs)), [d.text for d in docs], question)
        order = [int(d) for d in rank(ranking) if np.isfinite(ranking[d])]
        dup = near_duplicates(unit, order)
        must = {d for d, seg in enumerate(docs) if seg.must_keep}
        chosen: list[int] = []
        used = 0
        for d in order:
            if d in dup and d not in must:
                continue
            if used >= allowance and d not in must:
                continue
            cost = sum(costs[d])
            # without a question, a document that would overshoot is left out rather than shredded
            if question is None and chosen and used + cost > allowance and d not in must:
                continue
            chosen.append(d)
            used += cost
        bonus = _rank_bonus(len(chosen))
        ranges = [(d, 0, len(docs[d].units), b) for d, b in zip(chosen, bonus)]
        ranges.sort()
        return ranges, [float(s) if np.isfinite(s) else None for s in best]

    def _coarse_chunks(self, docs: Sequence[Segmented], costs, question: str, allowance: float):
        """Sentence chunks of one text by similarity, up to ``allowance`` tokens."""
        chunks = [c for c in chunk_sentences(docs, costs) if c.last > c.first]
        if not chunks:
            return []
        vecs = self.embedder.embed([question] + [c.text(docs) for c in chunks])
        sims = similarities(vecs[0], vecs[1:])
        order = [int(k) for k in rank(sims)]
        dup = near_duplicates(vecs[1:], order)
        chosen: list[Chunk] = [c for c in chunks if c.keep]
        used = sum(c.cost for c in chosen)
        for k in order:
            if used >= allowance:
                break
            c = chunks[k]
            if c.keep or k in dup:
                continue
            chosen.append(c)
            used += c.cost
        ranked = [c for c in chosen if not c.keep]
        bonus = dict(zip(ranked, _rank_bonus(len(ranked))))
        return sorted((c.doc, c.first, c.last, bonus.get(c, 0.0)) for c in chosen)

    # -------------------------------------------------------------------- fine

    def unit_scores(self, docs: Sequence[Segmented], question: str | None, counter) -> list[np.ndarray]:
        """The fine stage's score of every unit of every document, with no coarse selection and
        no rank bonus: what the ``classifier`` student is trained to imitate (``ctxgate train``)."""
        costs = [unit_token_counts(d, counter) for d in docs]
        ranges = [(d, 0, len(seg.units), 0.0) for d, seg in enumerate(docs) if seg.units]
        return self._fine(docs, costs, ranges, (question or "").strip() or None)

    def _fine(self, docs, costs, ranges, question: str | None) -> list[np.ndarray]:
        """Per unit: LM self-information + boosts + range bonus + sentence similarity; units
        outside ``ranges`` get UNSELECTED."""
        scores = [np.full(len(seg.units), UNSELECTED, dtype=np.float64) for seg in docs]
        spans = [(d, first, last) for d, first, last, _ in ranges]
        lm = self._unit_nll(docs, spans)
        qwords = _question_words(question)
        sent = self._sentence_bonus(docs, costs, spans, question) if question else None
        for (d, first, last, bonus), values in zip(ranges, lm):
            boost = np.array([_boost(docs[d], i, qwords) for i in range(first, last)])
            extra = sent[d][first:last] if sent is not None else 0.0
            scores[d][first:last] = values + boost + bonus + extra
        return scores

    def _sentence_bonus(self, docs, costs, spans, question):
        """Per unit: SENT_BONUS x its sentence's similarity to the question (kept spans only)."""
        kept = [np.zeros(len(seg.units)) for seg in docs]
        inside = [np.zeros(len(seg.units), dtype=bool) for seg in docs]
        for d, a, b in spans:
            inside[d][a:b] = True
        chunks = [c for c in chunk_sentences(docs, costs) if not c.keep and inside[c.doc][c.first]]
        if not chunks or not SENT_BONUS:
            return kept
        vecs = self.embedder.embed([question] + [c.text(docs) for c in chunks])
        sims = similarities(vecs[0], vecs[1:])
        for c, s in zip(chunks, sims):
            kept[c.doc][c.first : c.last] = SENT_BONUS * max(0.0, float(s))
        return kept

    def _unit_nll(self, docs: Sequence[Segmented], spans: list[tuple[int, int, int]]) -> list[np.ndarray]:
        """Mean token NLL per unit for each span of units, from one batched LM pass.

        Adjacent spans of one document are scored as one text, so the LM keeps its context.
        """
        pieces: list[tuple[int, int, int]] = []  # doc, first, last (merged runs)
        for d, first, last in sorted(spans):
            if pieces and pieces[-1][0] == d and pieces[-1][2] == first:
                pieces[-1] = (d, pieces[-1][1], last)
            else:
                pieces.append((d, first, last))
        texts = [docs[d].text[docs[d].units[a].start : docs[d].units[b - 1].end] for d, a, b in pieces]
        token_scores = self.scorer.score(texts)
        per_doc: dict[int, np.ndarray] = {}
        for (d, a, b), ts in zip(pieces, token_scores):
            arr = per_doc.setdefault(d, np.full(len(docs[d].units), np.nan))
            arr[a:b] = _aggregate(docs[d], a, b, ts)
        return [per_doc[d][first:last] for d, first, last in spans]


def _aggregate(seg: Segmented, first: int, last: int, ts: TokenScores) -> np.ndarray:
    """Mean NLL of the tokens ending inside each unit (a token's leading space is not the unit's)."""
    base = seg.units[first].start
    starts = np.array([u.start - base for u in seg.units[first:last]])
    ends = np.array([u.end - base for u in seg.units[first:last]])
    n = last - first
    if len(ts.nll) == 0:
        return np.zeros(n)
    key = ts.offsets[:, 1] - 1
    idx = np.searchsorted(starts, key, side="right") - 1
    ok = (idx >= 0) & (key < ends[np.clip(idx, 0, n - 1)])
    total = np.bincount(idx[ok], weights=ts.nll[ok], minlength=n)
    count = np.bincount(idx[ok], minlength=n)
    mean = np.divide(total, count, out=np.zeros(n), where=count > 0)
    fill = float(ts.nll.mean())
    return np.where(count > 0, mean, fill)


def _rank_bonus(k: int) -> list[float]:
    if k <= 1:
        return [RANK_BONUS] * k
    return [RANK_BONUS * (1 - i / (k - 1)) for i in range(k)]


def _question_words(question: str | None) -> frozenset[str]:
    if not question:
        return frozenset()
    return frozenset(w for w in (m.group(0).lower() for m in _WORD.finditer(question)) if w not in _STOP)


def _boost(seg: Segmented, i: int, qwords: frozenset[str]) -> float:
    u = seg.units[i]
    b = ATOM_BOOST if u.kind == "atom" else 0.0
    if qwords and any(m.group(0).lower() in qwords for m in _WORD.finditer(seg.text, u.start, u.end)):
        b += QUESTION_BOOST
    return b
