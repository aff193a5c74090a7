"""``classifier``: the trained student (``compressor/_student.py``) in batched passes.

Every document is cut into windows of whole words; the student reads ``question [SEP] window`` and
gives a keep logit per word piece (and a relevance logit per window, used only where there is
nothing to rank). ``fit`` takes the best words to the exact budget, as every unit-scoring method
does, and protected units are always kept.

With a question and several windows (``_ranked``), passages are ranked first and the student
reads only those that can be kept:
1. ``_passages``: z(MiniLM cosine of the question and the window's first PASSAGE_WORDS words, int8
   on CPU) + LEXICAL_WEIGHT x z(BM25). The student's own relevance head ranked NQ passages no better
   than chance once the document labels were hidden from it (see ``_student``).
2. Multi-hop (``options={"multi_hop": ...}``, default ``_hops.MULTI_HOP``): the documents the best
   one leads to by title (``_hops.hops``) are raised right behind it.
3. ``_coarse``: whole passages by that score up to ``coarse_factor`` x the budget; the student
   reads those. A word's score is ``log sigmoid(keep) + log sigmoid(passage score)``.
4. ``_sentences``: whole sentences of those passages, best first (a multi-hop chain's documents
   get one sentence each right after the best), up to the budget; words only in the last one.

One window with a question (a paragraph): the student reads it and the sentence stage picks.
Without a question and with several documents (few-shot demonstrations), whole documents are
ranked by how typical they are (similarity to the mean document) and kept up to
``coarse_factor`` x the budget, as ``hybrid`` does.

``rate="auto"``: keep the passages whose score reaches AUTO_PASSAGE_Z (at least the three best)
and, inside them, the words the student calls worth keeping, whatever the ratio.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._embed import Embedder, centrality, rank
from .._hops import MULTI_HOP, chain_lifted
from .._select import fit, unit_token_counts
from .._student import Encoded, encode, ordinal_span, unit_means
from .._units import Segmented
from ..structured._rank import bm25
from ._base import Job, MethodOutput

BATCH_ROWS = 32
PAD_SLACK = 1.3  # see batches()
COARSE_FACTOR = 1.3
UNSELECTED = -1e6
# passage ranking (_passages): z(MiniLM cosine over a window's first PASSAGE_WORDS words) + LEXICAL_WEIGHT
# x z(BM25). Chosen on NQ dev rows 400-449 (see README, "passage ranking"); PASSAGE_WORDS trades
# MiniLM's cost against its ranking (48 words: gold first in 92% of dev items, all words 96%, at
# about twice the cost).
PASSAGE_WORDS = 48
LEXICAL_WEIGHT = 0.5
# rate="auto": keep passages whose score reaches AUTO_PASSAGE_Z (at least the best AUTO_MIN_PASSAGES)
# and, in them, words whose keep logit reaches AUTO_WORD_LOGIT (0 is the teacher's better half).
# Chosen on NQ rows 400-449, which neither training nor the reported rows use.
AUTO_PASSAGE_Z = 1.5
AUTO_WORD_LOGIT = -1.5
AUTO_MIN_PASSAGES = 3
AUTO_WORD_LOGIT_NO_QUESTION = 0.0  # nothing gates passages without a question: the better half of the words
# sentence stage (fixed rates, with a question; see _sentences): whole sentences up to SENTENCE_FACTOR
# x the budget, best first. Chosen on SQuAD article 3's 81 questions past the training cap and NQ dev
# rows 400-449 (answer kept): SQuAD 2x / 4x 0.56 / 0.23 without the stage, 0.84 / 0.62 with factor
# 1.0 and no tiers, 0.63 / 0.44 with 1.5, 0.98 / 0.88 with tiers and BM25 ranking; NQ 4x / 10x / 20x
# 1.00 / 0.96 / 0.80 without, 0.86 / 0.80 / 0.82 ranking by BM25 alone, 1.00 / 1.00 / 0.90 with the
# window relevance added (weights 1, 3 and 10 alike, beside a small keep-logit term), 1.00 / 1.00 /
# 0.92 as shipped (window relevance + BM25, 1:1, no keep-logit term).
SENTENCE_FACTOR = 1.0
HOP_SENTENCES = True  # see _sentences: a multi-hop chain's documents each get a sentence early
TIER = 100.0  # per rank: larger than any spread of log-probabilities, so fit follows the ranking


def batches(lengths: np.ndarray, max_rows: int = BATCH_ROWS, slack: float = PAD_SLACK) -> list[np.ndarray]:
    """Row indices per forward pass: windows sorted by length (ties by position, so the batches are
    a function of the input alone), cut when a batch is full or when the next window is more than
    ``slack`` x longer than the batch's shortest. Every row of a batch is padded to its longest,
    and attention costs the square of that: one long window must not pad twenty short ones."""
    order = np.lexsort((np.arange(len(lengths)), lengths))
    out: list[np.ndarray] = []
    start = 0
    for i in range(1, len(order) + 1):
        if i == len(order) or i - start >= max_rows or lengths[order[i]] > slack * lengths[order[start]]:
            out.append(order[start:i])
            start = i
    return out


def _z(x: np.ndarray) -> np.ndarray:
    """Standardised over its entries (z-scores), in ``x``'s dtype; all zero when ``x`` is flat."""
    spread = float(x.std())
    return (x - x.mean()) / spread if spread > 0 else np.zeros_like(x)


def _chain_first(order: list[int], span_doc: Sequence[int], chain: Sequence[int]) -> list[int]:
    """``order`` (sentence indices, best first) with the best sentence of each ``chain`` document,
    in chain order, moved right behind the first sentence; the rest keep their order."""
    lead = order[:1]
    for d in chain:
        first = next((i for i in order if span_doc[i] == d), None)
        if first is not None and first not in lead:
            lead.append(first)
    taken = set(lead)
    return lead + [i for i in order if i not in taken]


def _window_texts(docs: Sequence[Segmented], enc: Encoded) -> list[str]:
    out = []
    for win in enc.windows:
        units = docs[win.doc].units
        out.append(docs[win.doc].text[units[win.first].start : units[win.last - 1].end] if win.last > win.first else "")
    return out


def _unlabelled(text: str) -> str:
    """``text`` without its ordinal label's digits: no ranker reads where a document sits."""
    span = ordinal_span(text)
    return text if span is None else text[: span[0]] + text[span[1] :]


def _logsigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


class Classifier:
    """The ``classifier`` method; see the module docstring."""

    name = "classifier"
    supports_auto = True

    def __init__(self, student: str = "student", device: str | None = None, embedder: str = "minilm") -> None:
        self.student = student
        self.device = device
        self.embedder_name = embedder
        self._loaded = None
        self._embedder: Embedder | None = None

    def _ranker(self) -> Embedder:
        """The embedder that ranks passages: the shipped MiniLM, int8 on CPU (``rerank_precision``)."""
        if self._embedder is None:
            from ..models import pick_device, rerank_precision

            device = self.device or pick_device()
            self._embedder = Embedder(self.embedder_name, device, precision=rerank_precision(device))
        return self._embedder

    def _load(self):
        if self._loaded is None:
            from ..models import load_student

            self._loaded = load_student(self.student, self.device)
        return self._loaded

    @property
    def model_id(self) -> str:
        return f"{self._load().fingerprint}+{self._ranker().model_id}"

    @property
    def model_name(self) -> str:
        return f"{self.student} ({self._load().precision})"

    # ------------------------------------------------------------------ scoring

    def encode(self, docs: Sequence[Segmented], question: str | None) -> Encoded:
        st = self._load()
        return encode(st.tokenizer, docs, question, st.max_len)

    def score(
        self,
        docs: Sequence[Segmented],
        question: str | None,
        enc: Encoded | None = None,
        rows: np.ndarray | None = None,
    ) -> tuple[Encoded, np.ndarray, np.ndarray, np.ndarray]:
        """(encoding, keep logit per unit, relevance logit per window, unit-length mean hidden
        state per window), from batched forward passes over length-sorted windows. With ``rows``
        (a mask over windows) only those are read; the others' logits are 0."""
        import torch

        st = self._load()
        enc = enc if enc is not None else encode(st.tokenizer, docs, question, st.max_len)
        n = len(enc.windows)
        lengths = enc.lengths()
        read = np.arange(n) if rows is None else np.flatnonzero(rows)
        piece_logits = np.zeros(enc.input_ids.shape, dtype=np.float32)
        rel = np.zeros(n, dtype=np.float32)
        vecs = np.zeros((n, 0), dtype=np.float32)
        device = next(st.net.parameters()).device if st.precision != "int8" else torch.device("cpu")
        with torch.inference_mode():
            for part in batches(lengths[read]):
                idx = read[part]
                width = int(lengths[idx].max())
                t = lambda a: torch.from_numpy(np.ascontiguousarray(a[idx, :width])).to(device)  # noqa: E731, B023  # used at once
                tok, doc, hidden = st.net(t(enc.input_ids), t(enc.attention), t(enc.types))
                piece_logits[idx, :width] = tok.float().cpu().numpy()
                rel[idx] = doc.float().cpu().numpy()
                inside = torch.from_numpy(enc.piece_unit[idx, :width] >= 0).to(device).unsqueeze(-1)
                pooled = (hidden.float() * inside).sum(1) / inside.sum(1).clamp(min=1)
                pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
                if vecs.shape[1] == 0:
                    vecs = np.zeros((n, pooled.shape[1]), dtype=np.float32)
                vecs[idx] = pooled
        unit_logit, count = unit_means(piece_logits, enc.piece_unit, enc.n_units)
        if (count == 0).any() and (count > 0).any():
            unit_logit[count == 0] = float(np.median(unit_logit[count > 0]))  # pieces the tokenizer dropped
        return enc, unit_logit, rel, vecs

    # ------------------------------------------------------------------ method

    def run(self, job: Job) -> MethodOutput:
        docs = job.docs
        question = (job.question or "").strip() or None
        enc = self.encode(docs, question)
        window_of_unit = np.full(enc.n_units, -1, dtype=np.int64)
        for w, win in enumerate(enc.windows):
            a = enc.unit_offset[win.doc]
            window_of_unit[a + win.first : a + win.last] = w
        auto = bool(job.options.get("auto"))
        if question is not None and len(enc.windows) > 1:
            return self._ranked(job, enc, window_of_unit, question, auto)

        enc, unit_logit, rel, vecs = self.score(docs, question, enc)
        doc_scores = self._doc_scores(enc, rel, len(docs)) if question is not None else None
        if auto:
            every = np.ones(len(enc.windows), dtype=bool) if question is not None else None
            return MethodOutput(texts=self._auto(job, enc, unit_logit, every, window_of_unit), scores=doc_scores)
        costs = [unit_token_counts(seg, job.counter) for seg in docs]  # counted once, for every stage
        score = _logsigmoid(unit_logit)
        if question is not None:
            score = score + self._sentences(job, enc, score, rel, window_of_unit, costs, question)
        elif job.options.get("is_documents") and len(docs) > 1:
            score = score + self._typical(job, enc, vecs, costs)
        return MethodOutput(texts=self._fit(job, enc, score, costs), scores=doc_scores)

    def _ranked(self, job: Job, enc: Encoded, window_of_unit: np.ndarray, question: str, auto: bool) -> MethodOutput:
        """Several passages and a question: rank the passages first (``_passages``), then read only
        the ones that can be kept with the student."""
        docs = job.docs
        rel = self._passages(job, enc, question)
        doc_scores = self._doc_scores(enc, rel, len(docs))
        chain: list[int] = []
        if job.options.get("multi_hop", MULTI_HOP):
            rel, chain = chain_lifted(rel, [w.doc for w in enc.windows], [d.text for d in docs], question)
        if auto:
            relevant = rel >= float(job.options.get("auto_passage_z", AUTO_PASSAGE_Z))
            relevant[rank(rel)[:AUTO_MIN_PASSAGES]] = True
            _, unit_logit, _, _ = self.score(docs, question, enc, rows=relevant)
            return MethodOutput(texts=self._auto(job, enc, unit_logit, relevant, window_of_unit), scores=doc_scores)
        costs = [unit_token_counts(seg, job.counter) for seg in docs]
        chosen = self._coarse(job, enc, rel, window_of_unit, costs)
        _, unit_logit, _, _ = self.score(docs, question, enc, rows=chosen)
        inside = chosen[np.clip(window_of_unit, 0, None)] & (window_of_unit >= 0)
        score = _logsigmoid(unit_logit) + _logsigmoid(rel)[np.clip(window_of_unit, 0, None)]
        score = np.where(inside, score, score + UNSELECTED)
        score = score + self._sentences(job, enc, score, rel, window_of_unit, costs, question, chain)
        return MethodOutput(texts=self._fit(job, enc, score, costs), scores=doc_scores)

    @staticmethod
    def _fit(job: Job, enc: Encoded, score: np.ndarray, costs: list[list[int]]) -> list[str | None]:
        docs = job.docs
        per_doc = [
            score[enc.unit_offset[d] : enc.unit_offset[d] + len(seg.units)].tolist() for d, seg in enumerate(docs)
        ]
        fitted = fit(per_doc, docs, job.budget, job.counter, costs=costs)
        return [t if t.strip() or not d.text.strip() else None for t, d in zip(fitted, docs)]

    def _passages(self, job: Job, enc: Encoded, question: str) -> np.ndarray:
        """A relevance score per window: z(MiniLM cosine of the question and the window's first
        PASSAGE_WORDS words) + lexical_weight x z(BM25). Why not the student's relevance head: with
        the document labels hidden it ranked NQ dev gold passages first in 6% of items, against
        MiniLM's 92% (first 48 words, int8) and BM25's 80%; its 3 blocks and ~450 training
        questions do not learn passage ranking, and the labels had stood in for it."""
        texts = _window_texts(job.docs, enc)
        words = int(job.options.get("passage_words", PASSAGE_WORDS))
        heads = [" ".join(_unlabelled(t).split()[:words]) for t in texts]
        vecs = self._ranker().embed([question, *heads])
        dense = _z((vecs[1:] @ vecs[0]).astype(np.float64))
        weight = float(job.options.get("lexical_weight", LEXICAL_WEIGHT))
        if not weight:
            return dense
        return dense + weight * _z(np.asarray(bm25(question, texts), dtype=np.float64))

    @staticmethod
    def _coarse(
        job: Job, enc: Encoded, rel: np.ndarray, window_of_unit: np.ndarray, costs: list[list[int]]
    ) -> np.ndarray:
        """The windows (a mask) that, most relevant first, fill ``coarse_factor`` x the budget:
        whole passages are kept or left, as in ``hybrid``, rather than a few words of every passage."""
        flat = np.concatenate([np.asarray(c, dtype=np.int64) for c in costs]) if costs else np.zeros(0, np.int64)
        window_cost = np.bincount(
            window_of_unit[window_of_unit >= 0], weights=flat[window_of_unit >= 0], minlength=len(enc.windows)
        )
        allowance = job.budget * float(job.options.get("coarse_factor", COARSE_FACTOR))
        chosen = np.zeros(len(enc.windows), dtype=bool)
        used = 0.0
        for w in rank(rel):
            if used >= allowance:
                break
            chosen[w] = True
            used += window_cost[w]
        return chosen

    @staticmethod
    def _sentences(
        job: Job,
        enc: Encoded,
        score: np.ndarray,
        rel: np.ndarray,
        window_of_unit: np.ndarray,
        costs: list[list[int]],
        question: str,
        chain: Sequence[int] = (),
    ) -> np.ndarray:
        """The sentence stage, added to the unit scores: sentences of the passages the coarse stage
        kept are ranked by z(relevance of their window) + z(their BM25 against the question); the
        best that reach ``sentence_factor`` x the budget get a tier bonus in rank order (so whole
        sentences are kept best first, and only the last one is cut to words), the rest UNSELECTED.

        Why: with one paragraph there is no passage to drop, and pruning words evenly over it lost
        the answer (SQuAD answer kept 0.56 at 2x). The student's mean keep logit ranks sentences
        worse than BM25 does, so it only picks the words of the sentence that is cut.

        With a multi-hop ``chain`` (the best document and the documents it leads to by title), the
        best sentence of each chain document comes right after the best sentence overall: a bridge
        document's sentence shares few words with the question, and without this the best
        document's second and third sentences filled a 10x budget before it."""
        extra = np.zeros(len(score))
        factor = float(job.options.get("sentence_factor", SENTENCE_FACTOR))
        if factor <= 0:
            return extra
        spans: list[tuple[int, int]] = []
        texts: list[str] = []
        cost: list[int] = []
        span_doc: list[int] = []
        for d, seg in enumerate(job.docs):
            a = enc.unit_offset[d]
            for first, last in seg.sentences:
                if last <= first or (score[a + first : a + last] <= UNSELECTED / 2).all():
                    continue
                spans.append((a + first, a + last))
                texts.append(seg.text[seg.units[first].start : seg.units[last - 1].end])
                cost.append(sum(costs[d][first:last]))
                span_doc.append(d)
        allowance = job.budget * factor
        if len(spans) < 2 or sum(cost) <= allowance:
            return extra
        window = window_of_unit[np.asarray([f for f, _ in spans])]
        passage = np.where(window >= 0, rel[np.clip(window, 0, None)], rel.min() if len(rel) else 0.0)
        total = _z(passage.astype(np.float64)) + _z(np.asarray(bm25(question, texts), dtype=np.float64))
        order = [int(i) for i in rank(total)]
        if len(chain) > 1 and job.options.get("hop_sentences", HOP_SENTENCES):
            order = _chain_first(order, span_doc, chain)
        used = 0.0
        for r, i in enumerate(order):
            f, b = spans[i]
            if used >= allowance:
                extra[f:b] = UNSELECTED
            else:
                extra[f:b] = TIER * (len(order) - r)
                used += cost[i]
        return extra

    @staticmethod
    def _doc_scores(enc: Encoded, rel: np.ndarray, n_docs: int) -> list[float | None]:
        best = np.full(n_docs, -np.inf)
        for w, win in enumerate(enc.windows):
            best[win.doc] = max(best[win.doc], float(rel[w]))
        return [float(b) if np.isfinite(b) else None for b in best]

    def _typical(self, job: Job, enc: Encoded, vecs: np.ndarray, costs: list[list[int]]) -> np.ndarray:
        """UNSELECTED for documents outside the most typical ones that fit COARSE_FACTOR x budget."""
        docs = job.docs
        doc_vec = np.zeros((len(docs), vecs.shape[1]), dtype=np.float32)
        for w, win in enumerate(enc.windows):
            doc_vec[win.doc] += vecs[w]
        norms = np.linalg.norm(doc_vec, axis=1, keepdims=True)
        present = [d for d in range(len(docs)) if norms[d, 0] > 0]
        unit = doc_vec / np.where(norms > 0, norms, 1)
        cen = np.full(len(docs), -np.inf)
        cen[present] = centrality(unit[present])
        allowance = job.budget * float(job.options.get("coarse_factor", COARSE_FACTOR))
        chosen: set[int] = set()
        used = 0
        for d in (int(i) for i in rank(cen)):
            if not np.isfinite(cen[d]):
                continue
            must = bool(docs[d].must_keep)
            cost = sum(costs[d])
            if chosen and used + cost > allowance and not must:
                continue
            chosen.add(d)
            used += cost
        extra = np.zeros(enc.n_units)
        for d, seg in enumerate(docs):
            if d not in chosen:
                extra[enc.unit_offset[d] : enc.unit_offset[d] + len(seg.units)] = UNSELECTED
        return extra

    @staticmethod
    def _auto(
        job: Job,
        enc: Encoded,
        unit_logit: np.ndarray,
        relevant: np.ndarray | None,
        window_of_unit: np.ndarray,
    ) -> list[str | None]:
        """Words whose keep logit reaches the threshold, in the ``relevant`` windows (None: no
        question, so every window and the no-question threshold)."""
        default = AUTO_WORD_LOGIT if relevant is not None else AUTO_WORD_LOGIT_NO_QUESTION
        keep_unit = unit_logit >= float(job.options.get("auto_word_logit", default))
        if relevant is not None and len(enc.windows):
            keep_unit &= relevant[np.clip(window_of_unit, 0, None)]
        out: list[str | None] = []
        for d, seg in enumerate(job.docs):
            a = enc.unit_offset[d]
            kept = sorted(set(np.flatnonzero(keep_unit[a : a + len(seg.units)]).tolist()) | set(seg.must_keep))
            text = seg.render(kept)
            out.append(text if text.strip() or not seg.text.strip() else None)
        return out
