"""Shared pieces of the RAG plugin tests: real NQ passages, MiniLM embeddings for LangChain and
LlamaIndex, and a small SmolLM2 reader for LlamaIndex."""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from .data import DATA

NQ = DATA / "nq" / "nq-open-20docs-derived_first500.jsonl"

# Deterministic and model-free: the plugin tests are about plumbing, not about which method wins.
METHOD = "truncate"


@functools.cache
def nq_rows(n: int = 3) -> tuple[dict[str, Any], ...]:
    rows = []
    with NQ.open(encoding="utf-8") as f:
        for line, _ in zip(f, range(n)):
            rows.append(json.loads(line))
    return tuple(rows)


@functools.cache
def nq_passages(n_rows: int = 3) -> tuple[dict[str, Any], ...]:
    """Unique passages of the first NQ 20-document items, with real metadata."""
    seen, out = set(), []
    for row in nq_rows(n_rows):
        for c in row["ctxs"]:
            if c["text"] in seen:
                continue
            seen.add(c["text"])
            out.append(
                {
                    "id": f"nq-{len(out)}",
                    "text": c["text"],
                    "metadata": {
                        "title": c["title"],
                        "hasanswer": c["hasanswer"],
                        "source_question_idx": c["source_question_idx"],
                    },
                }
            )
    return tuple(out)


def question() -> tuple[str, list[str]]:
    row = nq_rows()[0]
    return row["question"], row["answers"]


@functools.cache
def _encoder():
    from ctxgate.compressor.models import load_embedder

    return load_embedder("minilm")[0]


_cached: dict[str, list[float]] = {}


def embed(texts: list[str]) -> list[list[float]]:
    """MiniLM embeddings (normalised), memoised per text so each test file pays once."""
    missing = [t for t in dict.fromkeys(texts) if t not in _cached]
    if missing:
        vecs = _encoder().encode(missing, batch_size=32).astype(np.float64)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)  # in float64: the model may run in bf16
        for t, v in zip(missing, vecs):
            _cached[t] = [float(x) for x in v]
    return [_cached[t] for t in texts]


def langchain_embeddings():
    from langchain_core.embeddings import Embeddings

    class MiniLMEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return embed(list(texts))

        def embed_query(self, text: str) -> list[float]:
            return embed([text])[0]

    return MiniLMEmbeddings()


def llamaindex_embedding():
    from llama_index.core.embeddings import BaseEmbedding

    class MiniLMEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            return embed([query])[0]

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return embed([query])[0]

        def _get_text_embedding(self, text: str) -> list[float]:
            return embed([text])[0]

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embed(list(texts))

    return MiniLMEmbedding(model_name="minilm", embed_batch_size=64)


def smollm2_llm(max_new_tokens: int = 12):
    """SmolLM2 as a LlamaIndex LLM: a real (weak, fast) reader, greedy."""
    from llama_index.core.llms import CompletionResponse, CustomLLM, LLMMetadata
    from llama_index.core.llms.callbacks import llm_completion_callback

    class SmolLM2(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(context_window=8192, num_output=max_new_tokens, model_name="smollm2")

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            import torch

            from ctxgate.compressor.models import load_causal_lm

            model, tok, _ = load_causal_lm("smollm2")
            ids = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.inference_mode():
                out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
            return CompletionResponse(text=tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any):
            yield self.complete(prompt, formatted=formatted, **kwargs)

    return SmolLM2()
