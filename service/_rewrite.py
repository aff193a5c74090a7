"""Prefix-stable rewriting of a request's texts, with a time budget and fail-open.

Each compressible text (a ``Slot``) is looked up in the segment cache by a key made of its full
text, its kind, the method, the rate and options, the target tokenizer and the model fingerprint --
deliberately *not* the question. On a miss it is compressed (question-aware, with the current
question) and the rendered text is stored; on every later turn the same message comes back as the
same bytes, whatever the question is then, so provider prompt caches stay warm. Question-aware
compression therefore applies only to context the proxy has not seen before.

Three steps, cheapest first:
1. on the event loop: in-process LRU hits and memoised token counts (the common repeat-turn case);
2. in a worker thread: backend (sqlite/redis) lookups and counting of new texts;
3. in the compression executor, under the remaining time budget: model work for what is left.
If step 2 or 3 fails or runs out of time, the texts still missing go upstream uncompressed (markup
stripped) and the reason is counted; cached texts are still applied, so earlier turns keep their
bytes. A compression that overruns the budget still finishes in its thread and fills the cache,
so the next turn gets it.

``service`` holds no scoring logic: all compression goes through ``Compressor.compress``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass, field

import msgspec

from ctxgate.compressor import (
    Compressor,
    CompressRequest,
    InputTooLarge,
    cache_key,
    content_kind,
    get_counter,
    has_markup,
    parse_markup,
    strip_markup,
)
from ctxgate.compressor.models import lookup

from ._cache import TieredCache
from ._config import Policy
from ._metrics import Metrics
from ._policy import Plan, Slot, parts

log = logging.getLogger("ctxgate.service")

SEGMENT_VERSION = 3  # 2: keyed by the segment's question too; 3: structured tool outputs, expand
# memo look-ups on the event loop hash the text: past this length they wait for the worker thread
FAST_COUNT_CHARS = 64 * 1024
MAX_TOKENIZER_NAMES = 256
_COMPRESS_TAG = re.compile(r"<ctxgate:compress\b", re.I)
_OPENAI = ("gpt-", "o1", "o3", "o4", "chatgpt", "text-embedding", "davinci", "babbage")
_ESTIMATED = ("claude", "gemini", "anthropic")


class Entry(msgspec.Struct, array_like=True):
    """A rendered slot: what goes upstream, and its size before/after in the target tokenizer."""

    text: str
    before: int
    after: int
    compressed: bool
    refs: list[str] = []  # stored originals its omission markers name (ctxgate_expand)


@dataclass
class Outcome:
    tokens_before: int | None = None
    tokens_after: int | None = None
    cache: str = "off"  # hit | miss | partial | off
    fail_open: str | None = None  # reason, when some text went upstream uncompressed
    seconds: float = 0.0
    tokenizer: str | None = None  # what the counts are in
    estimated: bool = False  # True when that tokenizer is only an estimate (e.g. Claude models)
    fit: str | None = None  # fitted | too_long: the prompt overflowed its model's context window
    window: int | None = None  # that window, when fit is set
    # segments by what happened to them: hit (from the cache, no model work waited for), miss
    # (compressed for this request, or waited for while another request compressed it),
    # failed_open (sent uncompressed: timeout/error), kept_uncompressed (sent uncompressed on an
    # earlier turn with this prefix, so kept that way), unchanged (under min_tokens, or no smaller)
    segments: dict[str, int] = field(default_factory=dict)
    expand_refs: list[str] = field(default_factory=list)  # what ctxgate_expand can return for this request


@dataclass(frozen=True)
class Fit:
    """The context window a request must fit: ``window`` tokens for prompt and answer, ``reserve``
    of them for the answer (its max_tokens)."""

    window: int
    reserve: int

    def limit(self, exact: bool) -> int:
        """Prompt tokens allowed. ``exact``: counted in the model's own tokenizer; otherwise a 10%
        margin covers the difference between tokenizers."""
        room = self.window - self.reserve
        return int(room * (FIT_MARGIN_EXACT if exact else FIT_MARGIN_ESTIMATED))


@dataclass
class _Item:
    slot: Slot
    segment: bool  # through the segment cache and, on a miss, the compressor
    key: str | None = None
    entry: Entry | None = None  # segments: set once, as the last step (read across threads)
    status: str | None = None  # hit | miss
    text: str | None = None  # non-segments: the markup-stripped text
    count: int | None = None  # non-segments: its tokens
    prefix: bytes = b""  # digest of the slots before this one: the conversation so far
    pinned: bool = False  # went upstream uncompressed before under this prefix: stays so


@dataclass
class _Job:
    method: str
    tokenizer: str | None  # requested tokenizer name (None: the compressor's default)
    policy: Policy
    explicit_question: str | None
    deadline: float
    reasons: list[str] = field(default_factory=list)
    # set by the request when it stops waiting; from then on the executor only fills the cache and
    # never touches the items the request is already forwarding
    abandoned: bool = False
    # set when nobody will ever use the result (the client hung up): queued model work is skipped
    cancelled: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class _CountMemo:
    """LRU of token counts keyed by (tokenizer, text): system prompts and old turns repeat.

    Bounded by bytes, not only entries: a text longer than ``INLINE_CHARS`` is keyed by its
    BLAKE2b digest, so an entry never holds more than ~1 KB of client text, and the whole memo
    stays under ``max_bytes`` (200 unique 300 KB prompts held 61 MB when whole texts were keys)."""

    INLINE_CHARS = 1024
    ENTRY_OVERHEAD = 160  # tuple, int, OrderedDict node: measured ~150 bytes on CPython 3.11

    def __init__(self, max_entries: int = 20_000, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._data: OrderedDict[tuple[str, str | bytes], int] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def _key(cls, tok: str, text: str) -> tuple[str, str | bytes]:
        if len(text) <= cls.INLINE_CHARS:
            return tok, text
        return tok, hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    @classmethod
    def _size(cls, key: tuple[str, str | bytes]) -> int:
        return cls.ENTRY_OVERHEAD + len(key[0]) + len(key[1]) * (1 if isinstance(key[1], bytes) else 4)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def get(self, tok: str, text: str) -> int | None:
        key = self._key(tok, text)
        with self._lock:
            n = self._data.get(key)
            if n is not None:
                self._data.move_to_end(key)
            return n

    def set(self, tok: str, text: str, n: int) -> None:
        key = self._key(tok, text)
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return
            self._data[key] = n
            self._bytes += self._size(key)
            while len(self._data) > self._max_entries or self._bytes > self._max_bytes:
                old, _ = self._data.popitem(last=False)
                self._bytes -= self._size(old)


MIN_DOCUMENTS = 3


def _documents(context: str) -> list[str] | None:
    """A context of several paragraphs split by blank lines as a document list, so the methods rank
    documents first and prune within the kept ones (as for a RAG pipeline's list); None for one
    block of text. The kept documents are joined with blank lines again."""
    if content_kind(context) != "prose":  # one JSON body, log or table: never cut at its blank lines
        return None
    parts = [p for p in context.split("\n\n") if p.strip()]
    return parts if len(parts) >= MIN_DOCUMENTS else None


def _strip(text: str) -> str:
    return strip_markup(text) if has_markup(text) else text


FIT_MARGIN_EXACT = 0.98
FIT_MARGIN_ESTIMATED = 0.90
FIT_MIN_RATE = 0.02  # below this a fit is not attempted: the upstream's error goes back
FIT_MIN_TOKENS = 64  # the last attempt compresses every message at least this long


class Rewriter:
    def __init__(
        self, compressor: Compressor, cache: TieredCache | None, executor: Executor, metrics: Metrics, *, timeout: float
    ) -> None:
        self.compressor = compressor
        self.cache = cache
        self.executor = executor
        self.metrics = metrics
        self.timeout = timeout
        self.ready = threading.Event()
        self._fingerprints: dict[str, str | None] = {}
        self._counters: dict[str | None, str] = {}  # requested tokenizer -> a name get_counter accepts
        self._memo = _CountMemo()

    # --------------------------------------------------------------- public

    def method_name(self, name: str | None) -> str:
        name = (name or "auto").strip().lower()
        return self.compressor.default_method if name in ("", "auto", "default") else name

    def warm(self) -> None:
        """Load the default method's models (runs in a thread at start-up)."""
        self.compressor.warm_up()
        self._fingerprint(self.compressor.default_method)
        self.ready.set()

    def prepare(self, plan: Plan, policy: Policy) -> list[_Item]:
        """The plan's slots as work items, markup validated and stripped: the CPU-bound part of a
        rewrite, which the caller may run off the event loop. Raises InvalidRequest on bad markup."""
        items = [self._item(s, policy) for s in plan.slots]
        h = hashlib.blake2b(digest_size=16)
        for it in items:
            it.prefix = h.copy().digest()
            h.update(f"{it.slot.kind}\x00{len(it.slot.text)}\x00".encode())
            h.update(it.slot.text.encode("utf-8", "surrogatepass"))
            if not it.segment:
                it.text = _strip(it.slot.text)
        return items

    async def rewrite(
        self,
        route: str,
        plan: Plan,
        policy: Policy,
        *,
        tokenizer: str | None,
        explicit_question: str | None,
        items: list[_Item] | None = None,
        fit: Fit | None = None,
    ) -> Outcome:
        """``items``: from ``prepare(plan, policy)`` when the caller already ran it. ``fit``: the
        context window to fit, compressing harder when the prompt would overflow it."""
        t0 = time.perf_counter()
        job = _Job(
            self.method_name(policy.method), tokenizer, policy, explicit_question, time.monotonic() + self.timeout
        )
        if items is None:
            items = self.prepare(plan, policy)
        await self._run(items, job)
        fitted = None
        if fit is not None:
            items, job, fitted = await self._fit(plan, policy, items, job, fit)
            if fitted is not None:
                self.metrics.fit_context.labels(route, fitted).inc()
        assert fitted is None or fit is not None
        outcome = self._finish(route, items, job, t0)
        if fitted is not None and fit is not None:
            outcome.fit, outcome.window = fitted, fit.window
        if outcome.segments.get("failed_open") and self.cache is not None and policy.sticky_uncompressed:
            # fire and forget, off the loop (keys hash whole segments): a lost pin costs one
            # provider-cache miss
            asyncio.get_running_loop().run_in_executor(None, self.pin_failed_open, items, job)
        return outcome

    async def _run(self, items: list[_Item], job: _Job) -> None:
        self._fast(items, job)
        if not self._resolved(items):
            try:
                await self._slow(items, job)
            except asyncio.CancelledError:  # the caller went away: drop the work not yet started
                job.cancelled = True
                self._abandon(job)
                raise

    async def _fit(
        self, plan: Plan, policy: Policy, items: list[_Item], job: _Job, fit: Fit
    ) -> tuple[list[_Item], _Job, str | None]:
        """Over the window: compress the compressible segments harder; if that is not enough,
        every message of FIT_MIN_TOKENS or more. The first attempt that fits is used. When none
        fits (or the first result is incomplete), the original items go on and the upstream says
        why it refuses them."""
        total = self._total(items)
        tok = self._counter_name(job.tokenizer)
        limit = fit.limit(exact=job.tokenizer is not None and tok == job.tokenizer and not get_counter(tok).estimated)
        if total is None or total <= limit:
            return items, job, None
        if limit <= 0:
            return items, job, "too_long"
        compressed_before = sum(it.entry.before for it in items if it.segment and it.entry and it.entry.compressed)
        compressed_after = sum(it.entry.after for it in items if it.segment and it.entry and it.entry.compressed)
        fixed = total - compressed_after
        everything = msgspec.structs.replace(
            policy,
            user_messages=True,
            system_prompt=True,
            tool_results=True,
            min_tokens=min(policy.min_tokens, FIT_MIN_TOKENS),
        )
        # the rate the prompt has now: the policy's, or what "auto" achieved
        rate_now = _numeric_rate(policy) or (compressed_after / compressed_before if compressed_before else 1.0)
        attempts: list[tuple[Policy, float | None]] = []
        if compressed_before and limit > fixed:
            attempts.append((policy, (limit - fixed) / compressed_before * 0.95))
        attempts.append((everything, None))
        last_rate, last_total = rate_now, total
        for p, rate in attempts:
            if rate is None:  # scale the last rate by how far off that attempt still was
                rate = last_rate * limit / last_total * 0.9
            rate = min(rate, rate_now)
            if rate < FIT_MIN_RATE or time.monotonic() >= job.deadline:
                break
            harder = msgspec.structs.replace(p, rate=round(rate, 4))
            j = _Job(job.method, job.tokenizer, harder, job.explicit_question, job.deadline)
            its = await asyncio.to_thread(self.prepare, plan, harder)
            await self._run(its, j)
            got = self._total(its)
            if got is None:
                break
            if got <= limit:
                return its, j, "fitted"
            last_rate, last_total = rate, got
        return items, job, "too_long"

    @staticmethod
    def _total(items: list[_Item]) -> int | None:
        """Tokens of the prompt as it would go upstream; None when some part is not counted."""
        total = 0
        for it in items:
            if it.segment:
                if it.entry is None:
                    return None
                total += it.entry.after
            elif it.count is None:
                return None
            else:
                total += it.count
        return total

    def count_plan(self, plan: Plan, policy: Policy, tokenizer: str | None) -> tuple[int, int]:
        """(all tokens, compressible tokens) of a plan in the target tokenizer; blocking."""
        counter = get_counter(self._counter_name(tokenizer))
        total = compressible = 0
        for slot in plan.slots:
            total += counter.count(_strip(slot.text))
            if self._item(slot, policy).segment:
                n = counter.count(_strip(parts(slot).context))
                if n >= policy.min_tokens:
                    compressible += n
        return total, compressible

    # ---------------------------------------------------------------- steps

    def _item(self, slot: Slot, policy: Policy) -> _Item:
        text = slot.text
        regions = False
        if has_markup(text):
            parse_markup(text)  # bad markup is the client's error (400), found before any work
            regions = bool(_COMPRESS_TAG.search(text))
        wanted = (
            (slot.kind == "tool" and policy.tool_results)
            or (slot.kind == "user" and policy.user_messages)
            or (slot.kind == "system" and policy.system_prompt)
        )
        # tokens <= UTF-8 bytes for byte-level BPE: short texts never reach min_tokens, skip the cache
        small = len(text) < policy.min_tokens and len(text.encode("utf-8")) < policy.min_tokens
        return _Item(slot, segment=regions or (wanted and not small))

    def _fast(self, items: list[_Item], job: _Job) -> None:
        tok = self._counters.get(job.tokenizer)
        fp_known = job.method in self._fingerprints
        for it in items:
            if it.segment:
                if fp_known and tok is not None and self.cache is not None:
                    it.key = self._key(it.slot, job, tok)
                    if job.policy.sticky_uncompressed and self.cache.get_fast(_pin_key(it)) is not None:
                        self._unpin_as_plain(it)
                        it.count = self._memo.get(tok, it.text or "")
                        continue
                    raw = self.cache.get_fast(it.key)
                    if raw is not None:
                        it.entry, it.status = msgspec.msgpack.decode(raw, type=Entry), "hit"
            elif tok is not None and it.text is not None and len(it.text) <= FAST_COUNT_CHARS:
                it.count = self._memo.get(tok, it.text)

    async def _slow(self, items: list[_Item], job: _Job) -> None:
        try:
            await asyncio.wait_for(asyncio.to_thread(self._lookup_and_count, items, job), self._left(job))
        except TimeoutError:
            self._abandon(job)
            return
        except Exception as exc:
            log.warning("token counting failed: %s", type(exc).__name__)
            job.reasons.append("error")
            return
        if all(it.entry is not None for it in items if it.segment):
            return
        if not self.ready.is_set():
            job.reasons.append("not_ready")
            return
        future = asyncio.get_running_loop().run_in_executor(self.executor, self._compress_missing, items, job)
        try:
            # shielded: on timeout the executor job keeps running and caches its result for later turns
            await asyncio.wait_for(asyncio.shield(future), self._left(job))
        except TimeoutError:
            self._abandon(job)
        except Exception as exc:
            log.warning("compression failed: %s", type(exc).__name__)
            job.reasons.append("error")

    def _lookup_and_count(self, items: list[_Item], job: _Job) -> None:
        """Worker thread: backend lookups for segments, counts for everything else."""
        tok = self._counter_name(job.tokenizer)
        counter = get_counter(tok)
        fp_known = job.method in self._fingerprints
        for it in items:
            if (
                it.segment
                and it.entry is None
                and fp_known
                and self.cache is not None
                and job.policy.sticky_uncompressed
            ):
                it.key = it.key or self._key(it.slot, job, tok)
                if self.cache.get(_pin_key(it)) is not None:
                    with job.lock:
                        if job.abandoned:
                            return
                        self._unpin_as_plain(it)
            if it.segment:
                if it.entry is None and fp_known and self.cache is not None:
                    it.key = it.key or self._key(it.slot, job, tok)
                    raw = self.cache.get(it.key)
                    if raw is not None:
                        if not self._settle(job, it, status="hit", entry=msgspec.msgpack.decode(raw, type=Entry)):
                            return
                        continue
                if it.entry is None:
                    # short user turns need no model work: settle them here, not behind compressions
                    entry = self._cheap_entry(it.slot, job, counter)
                    if entry is not None:
                        if it.key is not None and self.cache is not None:
                            self.cache.set(it.key, msgspec.msgpack.encode(entry))
                        if not self._settle(job, it, entry=entry):
                            return
            elif it.count is None:
                text = it.text if it.text is not None else _strip(it.slot.text)
                count = self._memo.get(tok, text)
                if count is None:
                    count = counter.count(text)
                self._memo.set(tok, text, count)
                if not self._settle(job, it, text=text, count=count):
                    return

    @staticmethod
    def _unpin_as_plain(it: _Item) -> None:
        """A pinned segment goes on as plain text (counted, never compressed) for this prefix."""
        it.segment, it.pinned = False, True
        it.text = _strip(it.slot.text)

    def pin_failed_open(self, items: list[_Item], job: _Job) -> None:
        """Remember, per prefix, the segments that went upstream uncompressed (worker thread): the
        provider has cached them that way, so later turns keep them byte-identical. A segment
        without a key yet (the models never loaded) cannot be keyed, and is not pinned."""
        if self.cache is None or not job.policy.sticky_uncompressed:
            return
        tok = self._counter_name(job.tokenizer)
        for it in items:
            if it.segment and it.entry is None and it.key is None and job.method in self._fingerprints:
                it.key = self._key(it.slot, job, tok)
            if it.segment and it.entry is None and it.key is not None:
                try:
                    self.cache.set(_pin_key(it), b"1")
                except Exception as exc:  # a cache failure costs one provider-cache miss, no more
                    log.warning("could not pin a segment: %s", type(exc).__name__)

    def _compress_missing(self, items: list[_Item], job: _Job) -> None:
        """Compression executor: model work for the segments still missing, until the deadline."""
        tok = self._counter_name(job.tokenizer)
        counter = get_counter(tok)
        self._fingerprint(job.method)
        for it in items:
            if not it.segment or it.entry is not None:
                continue
            if time.monotonic() > job.deadline or job.cancelled:
                return  # the caller has given up; later turns retry with a fresh budget
            it.key = it.key or self._key(it.slot, job, tok)
            raw = self.cache.get(it.key) if self.cache is not None else None
            if raw is not None:
                # cached by another request while this one waited for the executor: it paid the
                # wait, so it is reported as a miss, not as a free hit
                if not self._settle(job, it, status="miss", entry=msgspec.msgpack.decode(raw, type=Entry)):
                    return
                continue
            try:
                entry = self._compress(it.slot, job, tok, counter)
            except InputTooLarge:
                job.reasons.append("too_large")
                continue
            except Exception as exc:  # a failing method must not fail the request
                log.warning("method %s failed: %s", job.method, type(exc).__name__)
                job.reasons.append("error")
                continue
            if self.cache is not None:
                self.cache.set(it.key, msgspec.msgpack.encode(entry))
            if not self._settle(job, it, status="miss" if entry.compressed else None, entry=entry):
                self.metrics.background_compressions.inc()  # went upstream uncompressed; the next one hits

    @staticmethod
    def _cheap_entry(slot: Slot, job: _Job, counter) -> Entry | None:
        """The slot unchanged when its compressible part is under ``min_tokens``; None when it needs a model."""
        text = slot.text
        if _COMPRESS_TAG.search(text):
            return None
        context = parts(slot, job.explicit_question).context
        if len(context) > 32 * job.policy.min_tokens:  # surely long enough: skip counting it twice
            return None
        if counter.count(parse_markup(context).text) >= job.policy.min_tokens:
            return None
        full = parse_markup(text).text
        n = counter.count(full)
        return Entry(full, n, n, compressed=False)

    def _compress(self, slot: Slot, job: _Job, tok: str, counter) -> Entry:
        text = slot.text
        full = parse_markup(text).text
        marked = bool(_COMPRESS_TAG.search(text))
        if marked:
            head, context, tail = "", text, ""  # explicit markup: only the marked regions change
        else:
            p = parts(slot, job.explicit_question)
            head, context, tail = p.head, p.context, p.tail
        plain = parse_markup(context).text
        n_context = counter.count(plain)
        rendered = full
        refs: list[str] = []
        if context and (marked or n_context >= job.policy.min_tokens):
            docs = None if marked else _documents(context)
            options = dict(job.policy.options)
            if job.policy.expand:
                options["expand"] = True
            if docs is not None:  # ranked as documents, as a RAG pipeline would pass them
                options.setdefault("separator", "\n\n")
            result = self.compressor.compress(
                CompressRequest(
                    context=docs if docs is not None else context,
                    question=slot.question,
                    rate=job.policy.rate,
                    method=job.method,
                    tokenizer=tok,
                    options=options,
                )
            )
            if result.compressed_tokens < n_context:
                rendered = parse_markup(head).text + result.compressed + parse_markup(tail).text
                refs = result.expand_refs
        before, after = counter.count_many([full, rendered]) if rendered != full else [counter.count(full)] * 2
        return Entry(rendered, before, after, compressed=rendered != full, refs=refs if rendered != full else [])

    def _finish(self, route: str, items: list[_Item], job: _Job, t0: float) -> Outcome:
        before = after = 0
        known = True
        statuses = set()
        segments: dict[str, int] = {}
        refs: list[str] = []
        for it in items:
            entry = it.entry
            if it.segment and entry is not None:
                it.slot.write(entry.text)
                refs.extend(entry.refs)
                before += entry.before
                after += entry.after
                if it.status:
                    statuses.add(it.status)
                    (self.metrics.cache_hits if it.status == "hit" else self.metrics.cache_misses).inc()
                kind = it.status or "unchanged"
                segments[kind] = segments.get(kind, 0) + 1
                continue
            if it.pinned:
                segments["kept_uncompressed"] = segments.get("kept_uncompressed", 0) + 1
            if it.segment:
                segments["failed_open"] = segments.get("failed_open", 0) + 1
                known = False  # failed open: uncounted
            text = it.text if it.text is not None else _strip(it.slot.text)
            if text != it.slot.text:
                it.slot.write(text)
            if it.count is None:
                known = False
            else:
                before += it.count
                after += it.count
        if any(it.segment and it.entry is None for it in items) and not job.reasons:
            job.reasons.append("timeout")
        reason = job.reasons[0] if job.reasons else None
        if reason:
            self.metrics.fail_open.labels(reason).inc()
        seconds = time.perf_counter() - t0
        self.metrics.compression_seconds.labels(route).observe(seconds)
        cache = "partial" if len(statuses) > 1 else statuses.pop() if statuses else "off"
        refs = list(dict.fromkeys(refs))
        if not known:
            return Outcome(cache=cache, fail_open=reason, seconds=seconds, segments=segments, expand_refs=refs)
        self.metrics.tokens_before.labels(route).inc(before)
        self.metrics.tokens_after.labels(route).inc(after)
        self.metrics.tokens_saved.labels(route).inc(max(0, before - after))
        counter = get_counter(self._counter_name(job.tokenizer))
        return Outcome(
            before,
            after,
            cache,
            reason,
            seconds,
            tokenizer=counter.name,
            estimated=counter.estimated,
            segments=segments,
            expand_refs=refs,
        )

    # -------------------------------------------------------------- helpers

    @staticmethod
    def _abandon(job: _Job) -> None:
        """The request stops waiting: from now on workers leave its items alone (see ``_settle``)."""
        with job.lock:
            job.abandoned = True
        job.reasons.append("timeout")

    @staticmethod
    def _settle(job: _Job, it: _Item, **values) -> bool:
        """Write a worker's result into ``it``, unless the request has stopped waiting (False):
        it is already forwarding what it had, and must not see items change under it."""
        with job.lock:
            if job.abandoned:
                return False
            for name, value in values.items():
                setattr(it, name, value)
            return True

    @staticmethod
    def _resolved(items: list[_Item]) -> bool:
        return all((it.entry is not None) if it.segment else (it.count is not None) for it in items)

    def _left(self, job: _Job) -> float:
        return max(0.0, job.deadline - time.monotonic())

    def _key(self, slot: Slot, job: _Job, tok: str) -> str:
        """The segment and the question it is compressed for: on later turns of a conversation that
        question is still the same one (it precedes or follows the segment in the history), so they
        hit; the same documents under another question miss and get their own compression."""
        p = job.policy
        return cache_key(
            [
                SEGMENT_VERSION,
                "segment",
                slot.kind,
                slot.split,
                job.method,
                self._fingerprints.get(job.method),
                tok,
                p.rate,
                p.min_tokens,
                p.expand,
                sorted((k, repr(v)) for k, v in p.options.items()),
                slot.question,
                slot.text,
            ]
        )

    def _fingerprint(self, method: str) -> None:
        if method not in self._fingerprints:
            self._fingerprints[method] = self.compressor.method(method).model_id

    def _counter_name(self, requested: str | None) -> str:
        """The tokenizer name to count in: the model's own when we can load it, else the default."""
        name = self._counters.get(requested)
        if name is not None:
            return name
        name = requested or self.compressor.tokenizer or "smollm2"
        try:
            get_counter(name)
        except Exception:  # unknown model name or an HF id we cannot reach: count in the default
            name = self.compressor.tokenizer or "smollm2"
            try:
                get_counter(name)
            except Exception:  # the default's own files are missing (models not prepared): estimate,
                name = "estimate"  # so the proxy still forwards (fails open) instead of answering 503
        if len(self._counters) >= MAX_TOKENIZER_NAMES:  # names come from clients' model strings
            self._counters.clear()
        self._counters[requested] = name
        return name


def resolve_tokenizer(model: str | None) -> str | None:
    """A tokenizer name for a request's ``model``, or None when we have no tokenizer for it."""
    if not model:
        return None
    m = model.strip().lower()
    if m.startswith(_OPENAI) or m.startswith(_ESTIMATED) or m in ("cl100k_base", "o200k_base", "estimate"):
        return model
    if lookup(m) is not None:
        return model
    return None


def _numeric_rate(policy: Policy) -> float | None:
    return policy.rate if isinstance(policy.rate, (int, float)) else None


def _pin_key(it: _Item) -> str:
    return cache_key(["pinned-uncompressed", it.key, it.prefix.hex()])
