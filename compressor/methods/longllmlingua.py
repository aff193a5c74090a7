"""``longllmlingua``: llmlingua's own LongLLMLingua (``PromptCompressor.compress_prompt``).

The reference implementation, run as published (the settings of the LongLLMLingua paper's NQ
experiments are the defaults), so our own methods have something honest to beat. It is not
structure-aware: llmlingua drops tokens inside identifiers, numbers and JSON (upstream #149), and
its ``force_tokens``/``force_reserve_digit`` only act on the LLMLingua-2 path, so protected spans
(numbers, IDs, URLs: "1901" can come back as "190") and ``<ctxgate:keep>`` regions are *not*
guaranteed here; a warning says so when there are keep regions or code/JSON blocks.

Mapping back to documents: llmlingua drops whole documents, reorders the rest and returns one
decoded string. The compat subclass records which documents it kept and the kept token ids; the
kept ids are a subsequence of the tokenized kept documents, so we align them greedily (leftmost)
and decode each document's tokens. Around document boundaries a common token (",", "the") can be
attributed to the previous document, so per-document texts are approximate; their concatenation
holds the same tokens as llmlingua's output. Documents come back in input order (scores carry the
ranking: higher is more relevant).

Budget: llmlingua counts in its own tokenizer and its rate control misses (upstream #195), so we
ask for ``budget`` converted to its tokenizer, recount in the target tokenizer and, if off by more
than 15%, retry once with the token-level target scaled by the miss (same documents kept), and
return the closer of the two.
"""

from __future__ import annotations

from typing import Any

from .._compat import context_budget, context_budget_expr, prompt_compressor
from .._errors import InvalidRequest
from ._base import Job, MethodOutput

# The LongLLMLingua settings (paper / upstream examples for multi-document QA). Any of them can
# be overridden through CompressRequest.options.
DEFAULTS: dict[str, Any] = {
    "rank_method": "longllmlingua",
    "condition_in_question": "after_condition",
    "reorder_context": "sort",
    "dynamic_context_compression_ratio": 0.3,
    "condition_compare": True,
    "context_budget": "+100",
    "use_sentence_level_filter": False,
    "token_budget_ratio": 1.05,
    "iterative_size": 200,
}
TOLERANCE = 0.15
# a client-set iterative_size of 1 would score the context one token per forward pass
MIN_INT = {"iterative_size": 50}


def _coerce(key: str, value: Any) -> Any:
    """Options may arrive from JSON or headers as strings; give llmlingua the types it expects."""
    default = DEFAULTS[key]
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            n = int(value)
            if key in MIN_INT and n < MIN_INT[key]:
                raise InvalidRequest(f"option {key} must be at least {MIN_INT[key]}, got {n}")
            return n
        if isinstance(default, float):
            return float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"option {key} must be a {type(default).__name__}, got {value!r}") from None
    return str(value)


class LongLLMLingua:
    """The Method protocol around a CompatPromptCompressor holding the ``scorer`` causal LM."""

    name = "longllmlingua"

    def __init__(self, scorer: str = "smollm2", device: str | None = None) -> None:
        self._pc, resolved = prompt_compressor(scorer, device)
        self.model_name = resolved.name
        self._fingerprint = resolved.fingerprint

    @property
    def model_id(self) -> str | None:
        return self._fingerprint

    def settings(self, options: dict[str, Any], question: str) -> dict[str, Any]:
        out = {k: _coerce(k, options[k]) if k in options else v for k, v in DEFAULTS.items()}
        if not question:
            # question-agnostic LLMLingua: perplexity ranking without a condition
            out.update(rank_method="llmlingua", condition_in_question="none", condition_compare=False)
        return out

    def run(self, job: Job) -> MethodOutput:
        texts = [d.text for d in job.docs]
        live = [i for i, t in enumerate(texts) if t.strip()]
        out: list[str | None] = [t if not t.strip() else None for t in texts]
        if not live:
            return MethodOutput(texts=list(out))
        if job.budget <= 0:  # protected content elsewhere used the whole budget
            return MethodOutput(texts=out, warnings=["no budget left for longllmlingua; documents dropped"])
        question = (job.question or "").strip()
        settings = self.settings(job.options, question)
        instruction = str(job.options.get("instruction") or "")
        warnings = []
        if any(u.kind == "keep" for d in job.docs for u in d.units):
            warnings.append("longllmlingua does not preserve protected spans or keep regions (reference method)")

        context = [texts[i] for i in live]
        own = sum(self._pc.get_token_length(t, add_special_tokens=False) for t in context)
        ours = sum(job.doc_tokens[i] for i in live) or 1
        target = job.budget * own / ours  # the budget in llmlingua's tokenizer
        # the document-level budget stays the one llmlingua derives from the first target, so a
        # retry keeps the same documents and only corrects the token-level filter's miss
        doc_budget = context_budget(settings["context_budget"], target)

        best: tuple[float, list[str | None], list[float | None]] | None = None
        for _attempt in range(2):
            settings["context_budget"] = context_budget_expr(doc_budget, target)
            kept, scores = self._compress(context, question, instruction, target, settings)
            achieved = sum(job.counter.count_many([t for t in kept if t])) or 1
            miss = abs(achieved - job.budget) / job.budget
            if best is None or miss < best[0]:
                best = (miss, kept, scores)
            if miss <= TOLERANCE:
                break
            target *= job.budget / achieved
        assert best is not None
        _, kept, scores = best
        all_scores: list[float | None] = [None] * len(texts)
        for j, i in enumerate(live):
            out[i] = kept[j]
            all_scores[i] = scores[j]
        return MethodOutput(texts=out, scores=all_scores, warnings=warnings)

    def _compress(
        self, context: list[str], question: str, instruction: str, target: float, settings: dict[str, Any]
    ) -> tuple[list[str | None], list[float | None]]:
        pc = self._pc
        pc.compress_prompt(
            context,
            instruction=instruction,
            question=question,
            target_token=max(1.0, target),
            concate_question=False,
            **settings,
        )
        if len(context) > 1 and pc.last_ranking:
            # longllmlingua ranks by conditional perplexity, ascending (lower = more relevant);
            # question-agnostic llmlingua keeps high-perplexity documents first
            sign = 1.0 if settings["condition_in_question"] == "none" else -1.0
            scores: list[float | None] = [None] * len(context)
            for i, s in pc.last_ranking:
                if i < len(context):
                    scores[i] = sign * s
            used = pc.last_used
        else:
            scores, used = [None] * len(context), list(range(len(context)))
        return self._per_document(context, used), scores

    def _per_document(self, context: list[str], used: list[int]) -> list[str | None]:
        """Split llmlingua's kept token ids into the kept documents they came from."""
        pc = self._pc
        out: list[str | None] = [None] * len(context)
        if pc.last_tokens is None:  # token-level filter off: whole documents were kept
            for i in used:
                out[i] = context[i]
            return out
        parts, start, kept_ids = pc.last_tokens
        joined = "\n\n".join(parts)
        enc = pc.tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"][start:], enc["offset_mapping"][start:]
        # parts are [question prefix, if conditioned] + the kept documents in llmlingua's order
        first = len(parts) - len(used)
        spans, pos = [], 0
        for k, part in enumerate(parts):
            if k >= first:
                spans.append((pos, pos + len(part), used[k - first]))
            pos += len(part) + 2

        def owner(a: int, b: int) -> int | None:
            for s, e, doc in spans:
                if a < e and b > s:
                    return doc
            return None

        pieces: dict[int, list[int]] = {}
        p = 0
        for tok in kept_ids:
            while p < len(ids) and ids[p] != tok:
                p += 1
            if p == len(ids):  # not a subsequence of the input: cannot happen with 0.2.2's filter
                break
            doc = owner(*offsets[p])
            if doc is not None:
                pieces.setdefault(doc, []).append(tok)
            p += 1
        for doc, toks in pieces.items():
            text = pc.tokenizer.decode(toks).strip()
            out[doc] = text or None
        return out
