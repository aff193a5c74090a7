"""The official SDK clients pointed at a sidecar, and the RAG prompt the proxy tests send."""

from __future__ import annotations

import anthropic
import openai

SYSTEM = "You answer questions about Wikipedia passages. Be brief."


def rag_prompt(item: dict, n_docs: int = 8, question: str | None = None) -> str:
    docs = "\n".join(
        f"Document [{i + 1}](Title: {c['title']}) {c['text']}" for i, c in enumerate(item["ctxs"][:n_docs])
    )
    return (
        "Write a high-quality answer for the given question using only the provided search results.\n\n"
        f"{docs}\n\nQuestion: {question or item['question']}\nAnswer:"
    )


def oai(url: str, api_key: str = "sk-test-secret", **kw) -> openai.OpenAI:
    """The official OpenAI SDK against a sidecar at ``url``: no retries, so a failure shows."""
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kw)


def ant(url: str, api_key: str = "sk-ant-test-secret", **kw) -> anthropic.Anthropic:
    """The official Anthropic SDK against a sidecar at ``url``: no retries."""
    return anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0, timeout=60, **kw)
