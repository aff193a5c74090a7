"""Readers answer a prompt: a local causal LM (greedy, chat template) or an OpenAI-compatible
endpoint (including a running ctxgate sidecar). Both stop early on the item's stop patterns and
report whether the answer hit the max-new-tokens cap, since a capped answer is often cut off in a
preamble rather than wrong.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    new_tokens: int
    hit_cap: bool
    seconds: float  # in a batch, its share of each step it took part in
    batch: int = 1  # answers decoded together (continuous batching: the mean over its steps)


@dataclass
class Ask:
    """One prompt for ``answer_many``."""

    system: str | None
    user: str
    max_new_tokens: int
    stop: list[str]


class Reader(Protocol):
    name: str

    def answer(self, system: str | None, user: str, *, max_new_tokens: int, stop: list[str]) -> Answer: ...

    def answer_many(self, asks: list[Ask], max_batch: int = 8) -> list[Answer]: ...

    def describe(self) -> dict[str, str]: ...


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Text up to the end of the earliest stop-pattern match, and whether one matched."""
    ends = [m.end() for m in (re.search(p, text) for p in stop) if m]
    if not ends:
        return text, False
    return text[: min(ends)], True


def _messages(system: str | None, user: str) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


class LocalReader:
    """A causal LM loaded through ``compressor.models`` (offline, device and dtype picked there).

    ``prefix_cache`` keeps the KV caches of the last ``KEEP`` prompts used, least recently used out,
    and reuses the longest shared token prefix (at least ``MIN_PREFIX`` tokens), as vLLM prefix
    caching would: GSM8K's uncompressed prompts share the whole 8-shot block from item to item
    (2,666 of ~2,730 Qwen tokens), and NQ's ``truncate`` prompts are 97% a prefix of the same
    item's full prompt. A reused cache is refreshed, so it outlives the other conditions of an item
    (``KEEP=4`` in insertion order evicted both before their reuse).
    """

    MIN_PREFIX = 128
    KEEP = 8

    def __init__(self, model: str = "qwen-1.5b", device: str | None = None, prefix_cache: bool = True) -> None:
        from ctxgate.compressor.models import load_causal_lm

        self.model, self.tokenizer, self.resolved = load_causal_lm(model, device=device)
        self.name = self.resolved.name
        self.prefix_cache = prefix_cache
        self._caches: list[tuple[list[int], object]] = []  # (prompt ids, KV cache of exactly those ids)
        self.reused_tokens = 0

    def describe(self) -> dict[str, str]:
        p = next(self.model.parameters())
        return {
            "reader": self.name,
            "reader_kind": "local",
            "device": str(p.device),
            "dtype": str(p.dtype).removeprefix("torch."),
            "prefix_cache": "on" if self.prefix_cache else "off",
        }

    def _cached_prefix(self, ids: list[int]):
        """A private copy of the cache sharing the longest prefix with ``ids`` (None when short)."""
        import copy

        best, best_len = None, 0
        for i, (cached_ids, _) in enumerate(self._caches):
            n = 0
            for a, b in zip(cached_ids, ids):
                if a != b:
                    break
                n += 1
            if n > best_len:
                best, best_len = i, n
        best_len = min(best_len, len(ids) - 1)  # generate needs at least one new token to prefill
        if best is None or best_len < self.MIN_PREFIX:
            return None, 0
        entry = self._caches.pop(best)
        self._caches.append(entry)  # most recently used last
        cache = copy.deepcopy(entry[1])
        _crop_to(cache, best_len)
        return cache, best_len

    def _remember(self, ids: list[int], cache) -> None:
        _crop_to(cache, len(ids))
        self._caches = [(i, c) for i, c in self._caches if i != ids][-(self.KEEP - 1) :] + [(ids, cache)]

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def answer(self, system: str | None, user: str, *, max_new_tokens: int, stop: list[str]) -> Answer:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self.tokenizer
        ids = tok.apply_chat_template(
            _messages(system, user), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        input_ids = ids["input_ids"].to(self.model.device)
        n_in = input_ids.shape[1]

        class _Stop(StoppingCriteria):
            def __call__(self, seq, scores, **kwargs) -> bool:  # decoded-text check: stops are regexes
                return bool(stop) and cut_at_stop(tok.decode(seq[0, n_in:], skip_special_tokens=True), stop)[1]

        prompt_ids = input_ids[0].tolist()
        past, reused = self._cached_prefix(prompt_ids) if self.prefix_cache else (None, 0)
        self.reused_tokens += reused
        t0 = time.perf_counter()
        with torch.inference_mode():
            gen = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                **_cache_kwarg(past),
                stopping_criteria=StoppingCriteriaList([_Stop()]),
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
                return_dict_in_generate=True,
            )
        seconds = time.perf_counter() - t0
        out = gen.sequences
        cache = getattr(gen, "cache", None) or getattr(gen, "past_key_values", None)
        if self.prefix_cache and cache is not None:
            self._remember(prompt_ids, cache)
        return _finish(tok, out[0, n_in:].tolist(), n_in, max_new_tokens, stop, _eos_ids(self.model, tok), seconds)

    # rows x columns of the shared KV cache, all of which every step reads: four 2,700-token NQ
    # prompts share a batch (78 ms a step for SmolLM2 in bf16 on 2 cores; one of 700: 48 ms)
    BATCH_TOKENS = 12288

    def answer_many(self, asks: list[Ask], max_batch: int = 8) -> list[Answer]:
        """Answers in order, up to ``max_batch`` decoded at once with continuous batching (a finished
        row leaves at once and the next prompt joins; see ``eval._batching``). Decoding is
        memory-bound, so a step for a batch costs little more than for one answer. The prefix cache
        is not used here.
        """
        if len(asks) == 1 or max_batch <= 1 or not _layered_cache():
            return answer_each(self, asks)
        from ._batching import decode_many

        tok = self.tokenizer
        eos = _eos_ids(self.model, tok)
        prompts = [
            tok.apply_chat_template(
                _messages(a.system, a.user), add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            for a in asks
        ]

        def done(i: int, new: list[int]) -> bool:
            stop = asks[i].stop
            return new[-1] in eos or bool(stop) and cut_at_stop(tok.decode(new, skip_special_tokens=True), stop)[1]

        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        decoded = decode_many(
            self.model,
            prompts,
            [a.max_new_tokens for a in asks],
            done,
            pad=pad,
            max_batch=max_batch,
            batch_tokens=self.BATCH_TOKENS,
        )
        return [
            _finish(tok, d.new, len(p), a.max_new_tokens, a.stop, eos, d.seconds, d.batch)
            for a, p, d in zip(asks, prompts, decoded)
        ]


def _finish(
    tok, new: list[int], n_in: int, cap: int, stop: list[str], eos: set[int], seconds: float, batch: int = 1
) -> Answer:
    """The answer text (cut at its stop pattern) and whether it hit the cap: neither stopped nor ended."""
    text = tok.decode(new, skip_special_tokens=True)
    text, stopped = cut_at_stop(text, stop) if stop else (text, False)
    ended = bool(new) and new[-1] in eos
    return Answer(text.strip(), n_in, len(new), len(new) >= cap and not stopped and not ended, seconds, batch)


def _layered_cache() -> bool:
    """Continuous batching edits the per-layer tensors of transformers 5's caches."""
    import transformers

    return int(transformers.__version__.split(".")[0]) >= 5


def answer_each(reader, asks: list[Ask]) -> list[Answer]:
    """``answer_many`` for readers that take one prompt at a time (an endpoint batches its own way)."""
    return [reader.answer(a.system, a.user, max_new_tokens=a.max_new_tokens, stop=a.stop) for a in asks]


def _cache_kwarg(cache) -> dict:
    """transformers 5 renamed generate's ``past_key_values`` to ``cache``."""
    if cache is None:
        return {}
    import transformers

    return {"cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values": cache}


def _crop_to(cache, length: int) -> None:
    """Keep the first ``length`` tokens. A negative ``crop`` argument removes tokens from the end
    in transformers 4 and 5 alike (5 rejects the old positive 'new length' form)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _eos_ids(model, tok) -> set[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    if tok.eos_token_id is not None:
        ids.add(tok.eos_token_id)
    return ids


class HTTPReader:
    """Any OpenAI-compatible ``/v1/chat/completions`` endpoint, by base URL (httpx, greedy)."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout: float = 600.0, transport=None
    ) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.name = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def describe(self) -> dict[str, str]:
        return {"reader": self.name, "reader_kind": "http", "reader_url": self.base_url}

    def answer(self, system: str | None, user: str, *, max_new_tokens: int, stop: list[str]) -> Answer:
        body = {"model": self.name, "messages": _messages(system, user), "max_tokens": max_new_tokens, "temperature": 0}
        t0 = time.perf_counter()
        resp = self._client.post("/chat/completions", json=body)
        seconds = time.perf_counter() - t0
        if resp.status_code >= 400:
            raise RuntimeError(f"reader endpoint {self.base_url} answered HTTP {resp.status_code}: {resp.text[:200]}")
        data = resp.json()
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        text, stopped = cut_at_stop(text, stop) if stop else (text, False)
        usage = data.get("usage") or {}
        return Answer(
            text.strip(),
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            choice.get("finish_reason") == "length" and not stopped,
            seconds,
        )

    def answer_many(self, asks: list[Ask], max_batch: int = 8) -> list[Answer]:
        return answer_each(self, asks)  # the endpoint batches its own way

    def close(self) -> None:
        self._client.close()


NO_READER = "none"


class NoReader:
    """``--reader none``: nothing answers, so a run measures compression alone (answer kept,
    both hops kept, valid JSON, ratio, time) in seconds rather than reader-hours."""

    name = NO_READER

    def answer(self, system: str | None, user: str, *, max_new_tokens: int, stop: list[str]) -> Answer:
        return Answer(text="", prompt_tokens=0, new_tokens=0, hit_cap=False, seconds=0.0)

    def answer_many(self, asks: list[Ask], size: int = 1) -> list[Answer]:
        return [self.answer(a.system, a.user, max_new_tokens=a.max_new_tokens, stop=a.stop) for a in asks]

    def describe(self) -> dict[str, str]:
        return {"reader": NO_READER, "reader_kind": "none"}


def make_reader(model: str, url: str | None = None, api_key: str | None = None) -> Reader:
    if model == NO_READER and not url:
        return NoReader()
    return HTTPReader(url, model, api_key) if url else LocalReader(model)
