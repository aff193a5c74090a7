"""``Compressor.compress(request) -> CompressResult``: the one public entry point of the engine.

It does what every method shares: markup, protected spans, token accounting in the target
tokenizer, budgets, the content-addressed cache and timing. Methods only decide what to keep.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from ._cache import CompressionCache, cache_key
from ._errors import InputTooLarge, InvalidRequest
from ._hops import MULTI_HOP
from ._markup import Markup, parse_markup
from ._route import Routed, route
from ._tokens import TokenCounter, get_counter
from ._types import CompressRequest, CompressResult, Document, DocumentResult
from ._units import segment
from .methods import METHOD_NAMES, make_method
from .methods._base import Job, Method
from .structured import Relevance, Tools

CACHE_VERSION = 7  # 3: structured parts routed to their compressors; 4: multi-hop hops, classifier BM25 fusion;
# 5: structured re-rank without opaque ids, int8 re-ranker on CPU;
# 6: student v2 (document labels hidden), classifier ranks passages with MiniLM;
# 7: a JSON record too long for the budget is kept with its prose pruned to fit
EXPAND_PREFIX = "expand:"
DEFAULT_RATE = 0.5
MAX_SEPARATOR_CHARS = 64
# no tokenizer packs more than this many characters into a token on average; past it the input is
# over max_input_tokens without counting (tokenizing 32 MB would take the worker for many seconds)
MAX_CHARS_PER_TOKEN = 32


def default_for(method: str, device: str | None = None) -> str:
    """``auto``: ``classifier`` on CPU, where it is the only method fast enough to cost less than
    the prefill it saves; ``hybrid`` on a GPU, where its causal-LM scorer is cheap. Anything else
    is returned as given."""
    if (method or "auto").strip().lower() not in ("auto", "default", ""):
        return method
    from .models import pick_device

    return "hybrid" if (device or pick_device()).startswith("cuda") else "classifier"


class Compressor:
    """Holds the loaded models and the cache; safe to share between threads.

    ``scorer`` and ``embedder`` are model names (embedded names, HF ids or local folders);
    ``student`` is the classifier's network (``student`` or a ``.safetensors`` file from ``ctxgate train``).
    ``tokenizer`` is the default target tokenizer for token accounting.
    """

    def __init__(
        self,
        *,
        scorer: str = "smollm2",
        embedder: str = "minilm",
        student: str = "student",
        tokenizer: str | None = None,
        default_method: str = "auto",
        cache: CompressionCache | None = None,
        max_input_tokens: int = 1_000_000,
        device: str | None = None,
    ) -> None:
        default_method = default_for(default_method, device)
        if default_method not in METHOD_NAMES:
            raise InvalidRequest(f"unknown method {default_method!r}; choose one of auto, {', '.join(METHOD_NAMES)}")
        self.scorer = scorer
        self.embedder = embedder
        self.student = student
        self.tokenizer = tokenizer
        self.default_method = default_method
        self.cache = cache
        self.max_input_tokens = max_input_tokens
        self.device = device
        self._methods: dict[str, Method] = {}
        self._lock = threading.Lock()  # one model call at a time: 2 cores, no oversubscription
        self._build_lock = threading.Lock()
        self._embedder: Any = None  # an Embedder, built on first use
        self._rerank: tuple[str, str] | None = None

    # ------------------------------------------------------------------ public

    def compress(self, request: CompressRequest | None = None, /, **fields: Any) -> CompressResult:
        """Compress ``request`` (or build one from keyword fields, e.g. ``context=..., rate=0.25``)."""
        if request is None:
            try:
                request = CompressRequest(**fields)
            except TypeError as exc:
                raise InvalidRequest(str(exc)) from None
        elif fields:
            raise InvalidRequest("pass either a CompressRequest or keyword fields, not both")
        t0 = time.perf_counter()
        method_name = self._method_name(request.method)
        counter = get_counter(request.tokenizer or self.tokenizer)
        docs = request.documents()
        markups = [parse_markup(d.text) for d in docs]
        chars = sum(len(m.text) for m in markups)
        if chars > self.max_input_tokens * MAX_CHARS_PER_TOKEN:  # surely too large: do not tokenize it
            raise InputTooLarge(
                f"input is {chars} characters, over the limit of {self.max_input_tokens} tokens (max_input_tokens)"
            )
        doc_tokens = counter.count_many([m.text for m in markups])
        total = sum(doc_tokens)
        if total > self.max_input_tokens:
            raise InputTooLarge(
                f"input is {total} tokens, over the limit of {self.max_input_tokens} (max_input_tokens)"
            )
        budget = self._budget(request, total)
        separator = request.options.get("separator", "\n\n")
        if not isinstance(separator, str) or len(separator) > MAX_SEPARATOR_CHARS:
            # joined between every pair of documents: a long one would multiply the output
            raise InvalidRequest(f"option separator must be a string of at most {MAX_SEPARATOR_CHARS} characters")

        if total == 0 or (total <= budget and not request.auto and not any(m.has_compress_regions for m in markups)):
            return self._unchanged(request, docs, markups, doc_tokens, counter, method_name, separator, t0)

        method = self.method(method_name)
        if request.auto and not getattr(method, "supports_auto", False):
            raise InvalidRequest(
                f"rate 'auto' needs a method that decides how much to keep (classifier); {method_name} needs a number"
            )
        key = None
        if self.cache is not None:
            key = self._key(request, method, method_name, counter, budget, markups, separator)
            hit = self.cache.get(key)
            if hit is not None:
                result = msgspec.msgpack.decode(hit, type=CompressResult)
                result.cache = "hit"
                result.seconds = time.perf_counter() - t0
                for dr, d in zip(result.documents, docs):
                    # the caller's own: a hit is keyed by the texts alone, so another caller's ids
                    # (another tenant's record ids) were returned with it (second audit)
                    dr.id, dr.metadata = d.id, d.metadata
                return result

        texts, scores, warnings, routed = self._run(method, request, markups, doc_tokens, budget, counter)
        result = self._result(request, docs, texts, scores, doc_tokens, counter, method, separator, warnings, t0)
        result.kinds = sorted({k for r in routed for k in r.kinds})
        result.expand_refs = list(dict.fromkeys(ref for r in routed for ref in r.refs))
        result.cache = "miss" if self.cache is not None else "off"
        if self.cache is not None and key is not None:
            stored = msgspec.structs.replace(
                result, documents=[msgspec.structs.replace(d, metadata={}) for d in result.documents]
            )
            self.cache.set(key, msgspec.msgpack.encode(stored))
        return result

    def unchanged(self, request: CompressRequest, reason: str) -> CompressResult:
        """``request``'s context as it is (markup stripped), counted: the fail-open answer when
        compression did not finish in time. ``reason`` goes into the warnings."""
        t0 = time.perf_counter()
        counter = get_counter(request.tokenizer or self.tokenizer)
        docs = request.documents()
        markups = [parse_markup(d.text) for d in docs]
        doc_tokens = counter.count_many([m.text for m in markups])
        separator = request.options.get("separator", "\n\n")
        result = self._unchanged(
            request,
            docs,
            markups,
            doc_tokens,
            counter,
            self._method_name(request.method),
            separator if isinstance(separator, str) else "\n\n",
            t0,
        )
        result.warnings = [f"not compressed ({reason}); returned as given"]
        return result

    def expand(self, ref: str) -> str | None:
        """The original of a structured part that an omission marker's ``ref`` names, while the
        cache still holds it; None otherwise (or with no cache)."""
        if self.cache is None or not isinstance(ref, str) or not ref.isalnum() or len(ref) > 64:
            return None
        raw = self.cache.get(EXPAND_PREFIX + ref)
        return raw.decode("utf-8", "surrogatepass") if raw is not None else None

    def method(self, name: str) -> Method:
        """The (lazily built, then reused) method object; loads its models on first use."""
        name = self._method_name(name)
        with self._build_lock:
            if name not in self._methods:
                self._methods[name] = make_method(
                    name, scorer=self.scorer, embedder=self.embedder, student=self.student, device=self.device
                )
            return self._methods[name]

    def warm_up(self, methods: tuple[str, ...] = ()) -> None:
        """Load the models behind ``methods`` (default: the default method) ahead of traffic, and the
        structured re-ranker, so that a first tool output does not wait for it either."""
        for name in methods or (self.default_method,):
            self.compress(context="warm up " * 64, question="warm up?", rate=0.5, method=name)
        self._dense(["warm up"], "warm up?")

    # ----------------------------------------------------------------- helpers

    def _method_name(self, name: str | None) -> str:
        name = (name or "auto").strip().lower()
        if name in ("auto", "default", ""):
            return self.default_method
        if name not in METHOD_NAMES:
            raise InvalidRequest(f"unknown method {name!r}; choose one of auto, {', '.join(METHOD_NAMES)}")
        return name

    @staticmethod
    def _budget(request: CompressRequest, total: int) -> int:
        if request.target_tokens is not None:
            return request.target_tokens
        if request.auto:
            return max(1, total)  # an upper bound: the method decides
        rate = request.rate if request.rate is not None else DEFAULT_RATE
        assert not isinstance(rate, str)  # "auto" is request.auto, handled above
        return max(1, math.ceil(total * rate))

    def _key(self, request, method, method_name, counter, budget, markups, separator) -> str:
        opts = sorted((k, repr(v)) for k, v in request.options.items())
        return cache_key(
            [
                CACHE_VERSION,
                method_name,
                method.model_id,
                self.embedder,
                self._rerank_setup()[1],  # structured items' ranking depends on it
                counter.name,
                budget,
                request.rate,
                request.target_tokens,
                request.question,
                request.instruction,
                opts,
                separator,
                request.is_documents,
                [m.text for m in markups],
                [[(r.start, r.end) for r in m.keep] for m in markups],
                [[(r.start, r.end, r.rate) for r in m.compress] for m in markups],
            ]
        )

    def _run(
        self,
        method: Method,
        request: CompressRequest,
        markups: list[Markup],
        doc_tokens: list[int],
        budget: int,
        counter: TokenCounter,
    ) -> tuple[list[str | None], list[float | None] | None, list[str], list[Routed]]:
        warnings: list[str] = []
        texts: list[str | None] = [None] * len(markups)
        free: list[int] = []
        fixed_tokens = 0
        for i, m in enumerate(markups):
            if m.has_compress_regions:
                texts[i] = self._compress_regions(method, request, m, counter)
                fixed_tokens += counter.count(texts[i] or "")
            else:
                free.append(i)
        # structured parts first: each within its share of the budget, then fixed for the method
        routed: dict[int, Routed] = {}
        if free and request.options.get("structured", True) is not False:
            rate = None if request.auto else min(1.0, budget / max(1, sum(doc_tokens)))
            for i in free:
                r = route(
                    markups[i],
                    doc_tokens[i],
                    rate,
                    counter,
                    lambda text, b: self._tools(request, method, counter, text, b),
                    self._store_original,
                )
                if r is not None:
                    routed[i] = r
                    warnings.extend(r.warnings)
            for i in [i for i in free if i in routed and routed[i].final]:
                final = texts[i] = routed[i].markup.text
                fixed_tokens += counter.count(final)
                free.remove(i)
        scores: list[float | None] | None = None
        if free:
            keep_structures = bool(request.options.get("keep_structures", True))
            segs = [
                segment(routed[i].markup, keep_structures=keep_structures, extra_keep=routed[i].keep)
                if i in routed
                else segment(markups[i], keep_structures=keep_structures)
                for i in free
            ]
            free_tokens = [counter.count(routed[i].markup.text) if i in routed else doc_tokens[i] for i in free]
            free_total = sum(free_tokens)
            free_budget = max(0, budget - fixed_tokens)
            if free_total <= free_budget and not request.auto:
                out_texts: list[str | None] = [s.text for s in segs]
                out_scores = None
            else:
                job = Job(
                    segs,
                    free_tokens,
                    free_budget,
                    counter,
                    question=request.question,
                    options=self._method_options(request),
                )
                with self._lock:
                    out = method.run(job)
                out_texts, out_scores = out.texts, out.scores
                warnings.extend(out.warnings)
                keep_tokens = sum(
                    counter.count(s.text[u.start : u.end]) for s in segs for u in s.units if u.kind == "keep"
                )
                if keep_tokens > free_budget:
                    warnings.append(
                        f"protected content ({keep_tokens} tokens) is larger than the budget ({free_budget}); "
                        "it was kept whole"
                    )
                if all(not (t or "").strip() for t in out_texts) and any(s.text.strip() for s in segs):
                    # nothing fitted: a text that is one protected span larger than the budget (a
                    # hex key, a base64 blob) came back empty, and the proxy sent "" upstream
                    largest = max(
                        (counter.count(s.text[u.start : u.end]) for s in segs for u in s.units if u.kind != "word"),
                        default=0,
                    )
                    warnings.append(
                        f"no part of the context fits the budget ({free_budget} tokens; its largest protected "
                        f"span is {largest}); it was kept whole"
                    )
                    out_texts, out_scores = [s.text for s in segs], None
            for j, i in enumerate(free):
                texts[i] = out_texts[j]
            if out_scores is not None:
                scores = [None] * len(markups)
                for j, i in enumerate(free):
                    scores[i] = out_scores[j]
        return texts, scores, warnings, list(routed.values())

    def _tools(self, request: CompressRequest, method: Method, counter: TokenCounter, text: str, budget: int) -> Tools:
        """What a structured compressor may use: relevance (lexical, re-ranked by the embedder),
        the text method for long prose values, and a reference when originals are kept for expand."""
        dense = self._dense if request.options.get("structured_dense", True) is not False else None
        ref = None
        if request.options.get("expand") and self.cache is not None:
            ref = "cg" + cache_key(["expand", text])[:12]
        return Tools(
            budget,
            counter,
            Relevance(request.question, dense),
            prune=lambda texts, rate: self._prune(method, request, counter, texts, rate),
            ref=ref,
            multi_hop=bool(request.options.get("multi_hop", MULTI_HOP)),
        )

    def _store_original(self, ref: str, text: str) -> None:
        if self.cache is not None:
            self.cache.set(EXPAND_PREFIX + ref, text.encode("utf-8", "surrogatepass"))

    def _rerank_setup(self) -> tuple[str, str]:
        """(device, precision) of the embedder that re-ranks structured items (int8 on CPU)."""
        if self._rerank is None:
            from .models import pick_device, rerank_precision

            device = self.device or pick_device()
            self._rerank = (device, rerank_precision(device))
        return self._rerank

    def _reranker(self):
        from ._embed import Embedder

        device, precision = self._rerank_setup()
        with self._build_lock:
            if self._embedder is None:
                self._embedder = Embedder(self.embedder, device, precision=precision)
        return self._embedder

    def _dense(self, texts, question: str) -> list[float]:
        reranker = self._reranker()
        with self._lock:
            emb = reranker.embed([*texts, question])
        return (emb[:-1] @ emb[-1]).tolist()

    def _prune(self, method: Method, request: CompressRequest, counter: TokenCounter, texts, rate: float) -> list[str]:
        """Long prose values inside structured data, each pruned on its own by the text method."""
        opts = {k: v for k, v in self._method_options(request).items() if k != "auto"}
        opts["is_documents"] = False
        out = []
        for t in texts:
            n = counter.count(t)
            job = Job([segment(t)], [n], max(1, math.ceil(n * rate)), counter, question=request.question, options=opts)
            with self._lock:
                res = method.run(job)
            out.append(res.texts[0] or "")
        return out

    def _method_options(self, request: CompressRequest) -> dict[str, Any]:
        opts = dict(request.options)
        if request.instruction:
            opts.setdefault("instruction", request.instruction)
        opts.setdefault("is_documents", request.is_documents)
        if request.auto:
            opts["auto"] = True
        return opts

    def _compress_regions(self, method: Method, request: CompressRequest, m: Markup, counter: TokenCounter) -> str:
        """Only the <ctxgate:compress> regions of this text are compressed, each at its own rate."""
        parts: list[str] = []
        pos = 0
        default_rate = request.rate if request.rate is not None else DEFAULT_RATE
        for r in m.compress:
            auto = r.rate is None and default_rate == "auto"
            parts.append(m.text[pos : r.start])
            region = Markup(
                m.text[r.start : r.end],
                keep=[
                    type(k)(k.start - r.start, k.end - r.start) for k in m.keep if k.start >= r.start and k.end <= r.end
                ],
            )
            seg = segment(region)
            n = counter.count(region.text)
            rate = r.rate if r.rate is not None else default_rate
            budget = n if auto or isinstance(rate, str) else max(1, math.ceil(n * rate))
            if (n <= budget and not auto) or not seg.units:
                parts.append(region.text)
            else:
                opts = {**self._method_options(request), "is_documents": False}
                if not auto:
                    opts.pop("auto", None)
                job = Job([seg], [n], budget, counter, question=request.question, options=opts)
                with self._lock:
                    out = method.run(job)
                parts.append(out.texts[0] or "")
            pos = r.end
        parts.append(m.text[pos:])
        return "".join(parts)

    def _unchanged(self, request, docs, markups, doc_tokens, counter, method_name, separator, t0) -> CompressResult:
        texts = [m.text for m in markups]
        total = sum(doc_tokens)
        warnings = [] if total == 0 else ["context is within the budget; left unchanged"]
        return CompressResult(
            compressed=separator.join(texts) if request.is_documents else texts[0],
            documents=[
                DocumentResult(index=i, text=t, original_tokens=n, compressed_tokens=n, id=d.id, metadata=d.metadata)
                for i, (d, t, n) in enumerate(zip(docs, texts, doc_tokens))
            ],
            original_tokens=total,
            compressed_tokens=total,
            ratio=1.0,
            rate=1.0,
            method=method_name,
            model=None,
            seconds=time.perf_counter() - t0,
            cache="off",
            tokenizer=counter.name,
            tokens_estimated=counter.estimated,
            warnings=warnings,
        )

    def _result(
        self, request, docs: list[Document], texts, scores, doc_tokens, counter, method, separator, warnings, t0
    ) -> CompressResult:
        kept = [t if t is not None else "" for t in texts]
        out_tokens = counter.count_many(kept)
        doc_results = [
            DocumentResult(
                index=i,
                text=kept[i],
                original_tokens=doc_tokens[i],
                compressed_tokens=out_tokens[i],
                dropped=texts[i] is None or (not kept[i].strip() and bool(docs[i].text.strip())),
                score=None if scores is None else scores[i],
                id=d.id,
                metadata=d.metadata,
            )
            for i, d in enumerate(docs)
        ]
        if request.is_documents:
            compressed = separator.join(dr.text for dr in doc_results if not dr.dropped)
        else:
            compressed = kept[0]
        total = sum(doc_tokens)
        after = counter.count(compressed)
        return CompressResult(
            compressed=compressed,
            documents=doc_results,
            original_tokens=total,
            compressed_tokens=after,
            ratio=round(total / after, 4) if after else float(total),
            rate=round(after / total, 4) if total else 1.0,
            method=method.name,
            model=getattr(method, "model_name", None),
            seconds=time.perf_counter() - t0,
            cache="off",
            tokenizer=counter.name,
            tokens_estimated=counter.estimated,
            warnings=warnings,
        )


def compress(context: str | list[str] | list[Document], /, **fields: Any) -> CompressResult:
    """One-shot helper for scripts: builds a default Compressor (cached) and compresses."""
    return _default()(context=context, **fields)


_DEFAULT: Compressor | None = None


def _default() -> Callable[..., CompressResult]:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Compressor()
    return _DEFAULT.compress
