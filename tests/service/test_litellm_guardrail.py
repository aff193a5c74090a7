"""A real LiteLLM proxy process in front of the test upstream, with ctxgate in both places LiteLLM
users put it (issue 13). Run by ``make litellm`` (it installs ``litellm[proxy]`` into its own venv
and points ``CTXGATE_LITELLM`` at its ``litellm`` executable); ``make test`` skips it, because
LiteLLM's proxy extra is a few hundred MB of dependencies that nothing else needs.

1. As LiteLLM's ``headroom`` guardrail (``/v1/compress``). LiteLLM 1.108's guardrail withholds
   the system prompt, the last user message and the last assistant message, and sends neither a
   question nor a config: ``{"messages": [...the rest], "model": ...}``. So ctxgate never sees the
   question there. It compresses the earlier messages without one (never taking the documents' own
   last line for a question) and the question reaches the model verbatim.
2. As the model's ``api_base``: LiteLLM forwards the whole request to ctxgate, which finds the
   question itself and compresses for it. This is the configuration to use for RAG.
"""

from __future__ import annotations

import os
import subprocess
import time

import httpx
import openai
import pytest

from tests.helpers.data import answer_kept, nq_docs, nq_items
from tests.helpers.servers import free_port

LITELLM = os.environ.get("CTXGATE_LITELLM")
pytestmark = [
    pytest.mark.skipif(not LITELLM, reason="run with `make litellm` (needs a litellm[proxy] install)"),
    pytest.mark.models,
]
KEY = "sk-litellm-test"


@pytest.fixture()
def litellm_proxy(upstream, sidecar, tmp_path):
    """(LiteLLM base URL, ctxgate URL): LiteLLM with the guardrail and a model routed via ctxgate."""
    with sidecar(default_method="hybrid", compress_timeout=120, policy={"rate": 0.25}) as ctx_url:
        port = free_port()
        config = tmp_path / "litellm.yaml"
        config.write_text(f"""
model_list:
  - model_name: direct
    litellm_params: {{model: openai/test-model, api_base: "{upstream.url}/v1", api_key: sk-upstream}}
  - model_name: via-ctxgate
    litellm_params: {{model: openai/test-model, api_base: "{ctx_url}/v1", api_key: sk-upstream}}
guardrails:
  - guardrail_name: ctxgate
    litellm_params: {{guardrail: headroom, mode: pre_call, api_base: "{ctx_url}", default_on: false,
                      unreachable_fallback: fail_closed}}
general_settings: {{master_key: {KEY}}}
""")
        env = {**os.environ, "LITELLM_LOG": "ERROR", "NO_DOCS": "True"}
        proc = subprocess.Popen(
            [LITELLM, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(base + "/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("litellm did not start: " + proc.stderr.read().decode()[-2000:])
                time.sleep(0.5)
            yield base, ctx_url
        finally:
            proc.terminate()
            proc.wait(10)


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=180)


def test_as_the_headroom_guardrail_the_question_is_withheld_and_stays_verbatim(litellm_proxy, upstream):
    base, ctx_url = litellm_proxy
    item = nq_items(3)[2]
    docs = "\n\n".join(nq_docs(item))
    question = item["question"] + "?"
    messages = [
        {"role": "system", "content": "Answer from the documents."},
        {"role": "user", "content": docs},
        {"role": "user", "content": question},
    ]
    r = _client(base).chat.completions.create(model="direct", messages=messages, extra_body={"guardrails": ["ctxgate"]})
    assert r.choices[0].message.content
    compress_calls = httpx.get(ctx_url + "/metrics").text
    assert 'ctxgate_requests_total{route="compress",status="200"} 1.0' in compress_calls
    sent = upstream.last("/chat/completions").json["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "user"]
    assert sent[2]["content"] == question and sent[0]["content"] == "Answer from the documents."
    assert len(sent[1]["content"]) < 0.5 * len(docs)  # the documents were compressed


def test_as_the_api_base_ctxgate_compresses_for_the_question(litellm_proxy, upstream):
    base, _ = litellm_proxy
    item = nq_items(3)[2]
    docs = "\n\n".join(nq_docs(item))
    prompt = docs + "\n\nQuestion: " + item["question"] + "?"
    r = _client(base).chat.completions.create(model="via-ctxgate", messages=[{"role": "user", "content": prompt}])
    assert r.choices[0].message.content
    sent = upstream.last("/chat/completions").json["messages"][0]["content"]
    assert sent.endswith("Question: " + item["question"] + "?")
    assert len(sent) < 0.45 * len(prompt) and answer_kept(sent, item["answers"])
