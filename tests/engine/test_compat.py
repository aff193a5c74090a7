"""The llmlingua==0.2.2 workarounds in compressor/_compat.py, each against the real library and model."""

import os

# Busy-waiting OpenMP threads make torch ~7x slower when the 2 cores are shared with other jobs
# (measured: 15 s vs 1.6 s per 141-token forward at load 6); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json

import pytest

from ctxgate.compressor import InvalidRequest
from ctxgate.compressor import _compat as compat
from tests.helpers.data import DATA


@pytest.fixture(scope="module")
def pc():
    # fp32 whatever the machine's default: the cache test checks exactness, which bf16 cannot give
    from dataclasses import replace

    from ctxgate.compressor import runtime, set_runtime

    previous = set_runtime(replace(runtime(), dtype="fp32"))
    try:
        return compat.prompt_compressor("smollm2", "cpu")[0]
    finally:
        set_runtime(previous)


@pytest.fixture(scope="module")
def text():
    row = json.loads((DATA / "nq" / "nq-open-20docs-derived_first500.jsonl").open().readline())
    return row["ctxs"][0]["text"][:600]


@pytest.mark.models
def test_constructor_never_calls_tiktoken(monkeypatch, pc):
    # tiktoken.encoding_for_model downloads its BPE table; the constructor must not need it
    import tiktoken

    def no_network(*_a, **_k):
        raise AssertionError("tiktoken.encoding_for_model would download")

    monkeypatch.setattr(tiktoken, "encoding_for_model", no_network)
    fresh = compat._compressor_class()(pc.model, pc.tokenizer, "cpu")
    import bpe_openai

    assert fresh.oai_tokenizer.encode("Fuel Dilution 42") == bpe_openai.get_encoding("cl100k_base").encode(
        "Fuel Dilution 42"
    )
    assert fresh.device == "cpu" and fresh.max_position_embeddings == pc.model.config.max_position_embeddings


@pytest.mark.models
def test_constructor_leaves_the_shared_tokenizer_alone(pc):
    # upstream load_model switches padding to the left; the tokenizer is shared with our counters
    from ctxgate.compressor.models import load_tokenizer

    assert pc.tokenizer is load_tokenizer("smollm2")
    assert pc.tokenizer.padding_side == "right"


@pytest.mark.models
def test_get_ppl_with_cache_matches_a_plain_forward(pc, text):
    import torch

    enc = pc.tokenizer(text, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    n = ids.shape[1]
    k = n // 2
    full = pc.get_ppl("", "token", ids, mask)  # one forward, no cache
    first, kv = pc.get_ppl("", "token", ids, mask, return_kv=True, end=k)
    assert isinstance(kv, tuple) and len(kv[0]) == 2 and kv[0][0].shape[2] == k  # legacy pairs back
    kv = [[key[..., :k, :], val[..., :k, :]] for key, val in kv]  # what llmlingua does with it
    second = pc.get_ppl("", "token", ids, mask, past_key_values=kv)
    assert torch.allclose(first, full[: k - 1], atol=1e-4)
    assert torch.allclose(second, full[k:], atol=1e-4)
    cached = torch.cat([first, second]).mean().exp()
    plain = torch.cat([full[: k - 1], full[k:]]).mean().exp()
    assert abs(cached.item() - plain.item()) < 1e-3 * plain.item()


@pytest.mark.models
def test_upstream_get_ppl_breaks_on_this_transformers(pc, text):
    # the reason for the override (#210/#215): legacy tuples are rejected by transformers 5.x
    import transformers
    from llmlingua import PromptCompressor

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("transformers 4.x still accepts legacy tuples")
    enc = pc.tokenizer(text, return_tensors="pt")
    _, kv = pc.get_ppl("", "token", enc["input_ids"], enc["attention_mask"], return_kv=True, end=8)
    with pytest.raises(AttributeError, match="get_seq_length"):  # a legacy list is not a Cache
        PromptCompressor.get_ppl(
            pc,
            "",
            "token",
            enc["input_ids"],
            enc["attention_mask"],
            past_key_values=[list(p) for p in kv],
            return_kv=True,
        )


def test_cache_conversion_round_trip():
    import torch

    pairs = [(torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 4)) for _ in range(2)]
    cache = compat.to_dynamic_cache(pairs)
    assert cache.get_seq_length() == 5
    back = compat.to_legacy_cache(cache)
    assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(pairs, back))
    assert compat.to_dynamic_cache(None) is None and compat.to_legacy_cache(None) is None


@pytest.mark.parametrize("device, expected", [("cpu", "cpu"), ("CUDA:1", "cuda:1"), ("mps", "mps")])
def test_device_map_accepts_what_llmlingua_honours(device, expected):
    assert compat.check_device_map(device) == expected


def test_device_map_auto_means_our_pick_not_cuda():
    from ctxgate.compressor.models import pick_device

    assert compat.check_device_map("auto") == pick_device() == compat.check_device_map(None)


@pytest.mark.parametrize("device", ["balanced", "sequential", "gpu"])
def test_device_map_that_llmlingua_would_turn_into_cuda_is_refused(device):
    with pytest.raises(InvalidRequest, match="device must be"):
        compat.check_device_map(device)


def test_context_budget_is_parsed_never_evaluated():
    assert compat.context_budget("+100", 50) == 150
    assert compat.context_budget("-20", 50) == 30
    assert compat.context_budget("*1.5", 50) == 75
    expr = compat.context_budget_expr(180.0, 50.0)
    assert eval("target_token" + expr, {}, {"target_token": 50.0}) == pytest.approx(180.0)  # llmlingua's eval
    for bad in ["+__import__('os').getpid()", "", "+1e9;x", "/2"]:
        with pytest.raises(InvalidRequest, match="context_budget"):
            compat.context_budget(bad, 1)


@pytest.mark.models
def test_compress_prompt_rejects_online_and_unsafe_settings_before_any_work(pc, text):
    with pytest.raises(InvalidRequest, match="rank_method"):
        pc.compress_prompt([text, text], question="q?", rank_method="sentbert")
    with pytest.raises(InvalidRequest, match="context_budget"):
        pc.compress_prompt(
            [text, text], question="q?", rank_method="longllmlingua", context_budget="+__import__('os').getpid()"
        )


@pytest.mark.models
def test_sentence_level_filter_is_a_clear_error_without_punkt_tab(pc, text):
    if compat.sentence_filter_available():
        pytest.skip("nltk punkt_tab data is installed here")
    with pytest.raises(InvalidRequest, match="punkt_tab"):
        pc.compress_prompt([text], question="q?", rank_method="longllmlingua", use_sentence_level_filter=True)


@pytest.mark.models
def test_compress_prompt_runs_offline_end_to_end(pc, text):
    out = pc.compress_prompt(
        [text],
        question="Who won the first Nobel Prize in Physics?",
        rate=0.5,
        rank_method="longllmlingua",
        condition_in_question="after_condition",
        condition_compare=True,
        iterative_size=64,
    )
    assert 0 < out["compressed_tokens"] < out["origin_tokens"]
    assert pc.last_tokens is not None and len(pc.last_tokens[2]) > 0
