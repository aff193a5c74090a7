"""Every workaround ctxgate needs to run ``llmlingua==0.2.2`` offline on current transformers.

One place, each with its reason, so that upgrading llmlingua means reading one file. Only
``methods/longllmlingua.py`` uses it. Nothing here touches the network.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from ._errors import InvalidRequest, ModelError

# llmlingua's ranking methods other than its own perplexity ranking download a model
# (sentbert, bge*, jinza) or call a paid API (openai, voyageai, cohere). "llmlingua" is the same
# perplexity ranking without the question, used when there is no question.
OFFLINE_RANK_METHODS = ("longllmlingua", "llmlingua")


def check_device_map(device: str | None) -> str:
    """The device string llmlingua gets. Its ``load_model`` only honours strings containing
    "cuda", "cpu" or "mps"; anything else ("auto", "balanced") silently becomes "cuda", which
    crashes on a CPU-only machine. So "auto"/None means our own pick, and other strings fail."""
    if device is None or device.strip().lower() in ("", "auto"):
        from .models import pick_device

        return pick_device()
    device = device.strip().lower()
    if not any(k in device for k in ("cuda", "cpu", "mps")):
        raise InvalidRequest(f"device must be cpu, cuda, cuda:N or mps for longllmlingua, got {device!r}")
    return device


def check_rank_method(rank_method: str) -> str:
    """Only llmlingua's perplexity ranking runs offline; say so instead of hanging on a download."""
    if rank_method not in OFFLINE_RANK_METHODS:
        raise InvalidRequest(
            f"rank_method {rank_method!r} needs a download or an API; use one of {', '.join(OFFLINE_RANK_METHODS)}"
        )
    return rank_method


_BUDGET = re.compile(r"^\s*([+\-*])\s*(\d+(?:\.\d+)?)\s*$")


def context_budget(expr: str, target: float) -> float:
    """llmlingua computes the document-level budget as ``eval("target_token" + context_budget)``.
    Options reach us from HTTP requests, so never let a string near that eval: accept only
    "+N", "-N" or "*N" and compute the budget here."""
    m = _BUDGET.match(str(expr))
    if not m:
        raise InvalidRequest(f"context_budget must look like +100, -50 or *1.5, got {expr!r}")
    op, n = m.group(1), float(m.group(2))
    return target + n if op == "+" else target - n if op == "-" else target * n


def context_budget_expr(budget: float, target: float) -> str:
    """The ``context_budget`` string that makes llmlingua's eval give ``budget`` for ``target``."""
    return f"{budget - target:+.4f}"


@functools.cache
def sentence_filter_available() -> bool:
    """``use_sentence_level_filter`` calls ``nltk.sent_tokenize``, which needs the ``punkt_tab``
    data package; nltk would try to download it and the download is blocked here."""
    try:
        import nltk

        nltk.data.find("tokenizers/punkt_tab")
        return True
    except (ImportError, LookupError):
        return False


def offline_cl100k():
    """A tiktoken-compatible cl100k_base encoding with no network. llmlingua's constructor calls
    ``tiktoken.encoding_for_model("gpt-3.5-turbo")``, which downloads the BPE table on first use;
    ``bpe-openai`` bundles the same table. llmlingua only uses it for the token counts it reports."""
    try:
        import bpe_openai
    except ImportError as exc:  # pragma: no cover - bpe-openai is a core dependency
        raise ModelError("longllmlingua needs the bpe-openai package (pip install bpe-openai)") from exc
    return bpe_openai.get_encoding("cl100k_base")


def to_dynamic_cache(past_key_values: Any):
    """llmlingua slices the KV cache as a list of [key, value] pairs and passes that list back to
    the model; transformers >= 4.45 warns on it and 5.x only takes ``Cache`` objects
    (llmlingua issues #210, #215)."""
    if past_key_values is None:
        return None
    from transformers import DynamicCache

    if isinstance(past_key_values, DynamicCache):
        return past_key_values
    pairs = [(k, v) for k, v in past_key_values]
    if hasattr(DynamicCache, "from_legacy_cache"):  # transformers 4.x
        return DynamicCache.from_legacy_cache(tuple(pairs))
    return DynamicCache(pairs)  # transformers 5.x: the constructor takes the pairs


def to_legacy_cache(cache: Any):
    """The other direction: llmlingua reads ``past_key_values[0][0].shape[2]`` and slices
    ``k[..., :s, :]`` per layer, so it must get ((key, value), ...) back."""
    if cache is None or isinstance(cache, (tuple, list)):
        return cache
    if hasattr(cache, "to_legacy_cache"):  # transformers 4.x
        return cache.to_legacy_cache()
    return tuple((layer.keys, layer.values) for layer in cache.layers)  # transformers 5.x


def cache_kwarg(model) -> str:
    """transformers 5.x renamed the forward kwarg ``past_key_values`` to ``cache`` (the old name
    warns and goes away in 5.40); 4.x only knows ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The KV cache of a model output under either name (``cache`` in 5.x)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@functools.cache
def _compressor_class():
    """Built lazily: importing llmlingua pulls in nltk and tiktoken, which most methods never need."""
    import torch
    from llmlingua import PromptCompressor

    class CompatPromptCompressor(PromptCompressor):
        """PromptCompressor around an already-loaded causal LM, offline, on current transformers.

        Also records what ``compress_prompt`` does not return (which documents it kept, in which
        order, their ranking scores, the kept token ids), so results can be mapped back to input
        documents.
        """

        def __init__(self, model, tokenizer, device: str) -> None:
            # Replaces PromptCompressor.__init__, which (1) calls tiktoken.encoding_for_model and
            # so downloads, and (2) calls load_model -> from_pretrained, which may reach the Hub
            # and would load a second copy of weights we already hold. These are the attributes
            # upstream __init__ and load_model set for the non-LLMLingua-2 path (0.2.2).
            self.model_name = getattr(model.config, "_name_or_path", "") or "local"
            self.use_llmlingua2 = False
            self.retrieval_model = None
            self.retrieval_model_name = None
            self.open_api_config: dict[str, Any] = {}
            self.cache_bos_num = 10
            self.prefix_bos_num = 100
            self.oai_tokenizer = offline_cl100k()
            # upstream load_model also sets tokenizer.padding_side = "left" and a pad token; the
            # tokenizer is shared with the rest of ctxgate and this path never pads, so we don't.
            self.tokenizer = tokenizer
            self.model = model
            self.device = check_device_map(device)
            self.context_idxs: list[Any] = []
            self.max_position_embeddings = model.config.max_position_embeddings
            self._cache_kwarg = cache_kwarg(model)
            self._rank_memo: tuple[tuple, list[tuple[int, float]]] | None = None
            self.last_used: list[int] = []
            self.last_ranking: list[tuple[int, float]] = []
            self.last_tokens: tuple[list[str], int, list[int]] | None = None

        def get_ppl(
            self,
            text,
            granularity="sentence",
            input_ids=None,
            attention_mask=None,
            past_key_values=None,
            return_kv=False,
            end=None,
            condition_mode="none",
            condition_pos_id=0,
        ):
            # Upstream 0.2.2 get_ppl, with the KV cache converted to a DynamicCache on the way into
            # the model and back to legacy pairs on the way out (issues #210, #215).
            if input_ids is None:
                tokenized_text = self.tokenizer(text, return_tensors="pt")
                input_ids = tokenized_text["input_ids"].to(self.device)
                attention_mask = tokenized_text["attention_mask"].to(self.device)
            past_length = past_key_values[0][0].shape[2] if past_key_values is not None else 0
            if end is None:
                end = input_ids.shape[1]
            end = min(end, past_length + self.max_position_embeddings)
            with torch.no_grad():
                response = self.model(
                    input_ids[:, past_length:end],
                    attention_mask=attention_mask[:, :end],
                    use_cache=True,
                    **{self._cache_kwarg: to_dynamic_cache(past_key_values)},
                )
                past_key_values = to_legacy_cache(output_cache(response))
            shift_logits = response.logits[..., :-1, :].contiguous()
            shift_labels = input_ids[..., past_length + 1 : end].contiguous()
            active = (attention_mask[:, past_length:end] == 1)[..., :-1].view(-1)
            active_logits = shift_logits.view(-1, shift_logits.size(-1))[active]
            active_labels = shift_labels.view(-1)[active]
            loss = torch.nn.CrossEntropyLoss(reduction="none")(active_logits, active_labels)
            if condition_mode == "before":
                loss = loss[:condition_pos_id]
            elif condition_mode == "after":
                loss = loss[condition_pos_id:]
            res = loss.mean() if granularity == "sentence" else loss
            return (res, past_key_values) if return_kv else res

        def get_rank_results(self, context, question, rank_method, condition_in_question, context_tokens_length):
            # The ranking depends only on these inputs; a budget retry on the same documents
            # reuses it instead of scoring every document again.
            key = (tuple(context), question, rank_method, condition_in_question)
            if self._rank_memo is None or self._rank_memo[0] != key:
                ranking = super().get_rank_results(
                    context, question, rank_method, condition_in_question, context_tokens_length
                )
                self._rank_memo = (key, [(int(i), float(s)) for i, s in ranking])
            self.last_ranking = list(self._rank_memo[1])
            return list(self._rank_memo[1])

        def control_context_budget(self, *args, **kwargs):
            context, dynamic_ratio, used = super().control_context_budget(*args, **kwargs)
            self.last_used = list(used)
            return context, dynamic_ratio, used

        def iterative_compress_prompt(self, context, *args, **kwargs):
            # compress_prompt returns only decoded text; keep the token ids it kept, and what they
            # were taken from, so callers can tell which document each kept token came from.
            ids, mask = super().iterative_compress_prompt(context, *args, **kwargs)
            self.last_tokens = (list(context), int(kwargs.get("start", 0)), ids[0].tolist())
            return ids, mask

        def compress_prompt(self, context, **kwargs):
            self.last_used, self.last_ranking, self.last_tokens = [], [], None
            self.context_idxs = []  # upstream appends to this on every call and never clears it
            if kwargs.get("use_sentence_level_filter") and not sentence_filter_available():
                raise InvalidRequest("use_sentence_level_filter needs nltk's punkt_tab data, which is not installed")
            check_rank_method(kwargs.get("rank_method", "llmlingua"))
            context_budget(kwargs.get("context_budget", "+100"), 0.0)  # reject anything but +N/-N/*N
            return super().compress_prompt(context, **kwargs)

    return CompatPromptCompressor


def prompt_compressor(scorer: str = "smollm2", device: str | None = None):
    """(CompatPromptCompressor, resolved model) for ``scorer``, loaded through ``compressor.models``
    (offline env, checksums, device and dtype choice) instead of llmlingua's own loader."""
    from .models import load_causal_lm

    device = check_device_map(device)
    try:
        cls = _compressor_class()
    except ImportError as exc:
        raise ModelError("the longllmlingua method needs llmlingua (pip install llmlingua==0.2.2)") from exc
    model, tokenizer, resolved = load_causal_lm(scorer, device=device)
    return cls(model, tokenizer, device), resolved
