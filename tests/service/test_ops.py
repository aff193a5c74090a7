"""Operations: health, readiness, metrics, settings, /v1/compress (both forms, and ctxgate.rag's
remote mode against it), the ``serve`` entry point and the Dockerfile."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec
import pytest

from ctxgate.compressor import CompressResult, ConfigError
from tests.helpers.clients import oai, rag_prompt
from tests.helpers.data import ROOT
from tests.helpers.metrics import value


@pytest.mark.models
def test_health_ready_and_metrics(sidecar, upstream, nq_item):
    with sidecar(policy={"rate": 0.25}) as url, sidecar() as other:
        assert httpx.get(url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(url + "/readyz").json() == {"status": "ready"}
        oai(url).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": rag_prompt(nq_item)}]
        )
        oai(url).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": rag_prompt(nq_item)}]
        )
        r = httpx.get(url + "/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        m = r.text
        assert value(m, "ctxgate_requests_total", route="chat", status="200") == 2
        before = value(m, "ctxgate_tokens_before_total", route="chat")
        after = value(m, "ctxgate_tokens_after_total", route="chat")
        assert before > 0 and after < 0.35 * before
        assert value(m, "ctxgate_tokens_saved_total", route="chat") == before - after
        assert (value(m, "ctxgate_cache_hits_total"), value(m, "ctxgate_cache_misses_total")) == (1, 1)
        assert value(m, "ctxgate_compression_seconds_count", route="chat") == 2
        assert value(m, "ctxgate_upstream_seconds_count", route="chat") == 2
        assert value(m, "ctxgate_ready") == 1
        # one registry per app: the other instance counted nothing
        assert value(httpx.get(other + "/metrics").text, "ctxgate_requests_total", route="chat", status="200") == 0


def test_readyz_reports_a_model_that_failed_to_load(sidecar, upstream):
    # embedded mode with a model that is known but not prepared here: not ready, and says why
    with sidecar(upstream=None, anthropic_upstream=None, local_model="no-such-model", warm_up=False) as url:
        r = httpx.get(url + "/readyz")
        assert r.status_code == 503 and r.json()["status"] == "failed" and "no-such-model" in r.json()["error"]
        assert httpx.get(url + "/healthz").status_code == 200


def test_settings_from_yaml_toml_env_and_rules(tmp_path):
    from ctxgate.service import load_settings

    yaml_file = tmp_path / "ctxgate.yaml"
    yaml_file.write_text(
        "upstream: https://llm.example/v1\npolicy:\n  rate: 0.4\n  min_tokens: 100\n"
        "rules:\n  - route: messages\n    rate: 0.2\n  - model: 'gpt-4o*'\n    method: extractive\n"
        "  - model: secret-*\n    enabled: false\ncache:\n  backend: memory\n"
    )
    s = load_settings(
        yaml_file,
        env={
            "CTXGATE_PORT": "9001",
            "CTXGATE_POLICY__MIN_TOKENS": "64",
            "CTXGATE_HOME": "/ignored",
            "CTXGATE_CACHE__TTL": "60",
        },
    )
    assert (s.port, s.policy.min_tokens, s.policy.rate, s.cache.backend, s.cache.ttl) == (9001, 64, 0.4, "memory", 60)
    assert s.upstream_urls() == ("https://llm.example/v1", "https://llm.example")
    assert s.policy_for("messages", "claude-x").rate == 0.2
    assert s.policy_for("chat", "gpt-4o-mini").method == "extractive" and s.policy_for("chat", "x").method == "auto"
    assert s.policy_for("chat", "secret-model").enabled is False
    toml_file = tmp_path / "ctxgate.toml"
    toml_file.write_text('anthropic_upstream = "https://a.example"\n[cache]\nbackend = "sqlite"\npath = "c.db"\n')
    t = load_settings(toml_file, env={}, overrides={"port": 1234, "host": None})
    assert (t.port, t.host, t.cache.path) == (1234, "127.0.0.1", "c.db")
    assert t.upstream_urls() == (None, "https://a.example")
    assert (
        load_settings(env={}).embedded and load_settings(env={}).upstream_urls()[0] == "http://127.0.0.1:8340/local/v1"
    )
    for bad, match in [
        ("policy:\n  rate: 3\n", "rate"),
        ("cache:\n  backend: redis\n", "cache.url"),
        ("upstream: ftp://x\n", "http"),
        ("nonsense_key: 1\n", "nonsense_key"),
    ]:
        yaml_file.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            load_settings(yaml_file, env={})


@pytest.mark.models
def test_compress_rag_form_returns_a_compress_result(sidecar, upstream, nq_item):
    docs = [
        {"text": c["text"], "id": f"d{i}", "metadata": {"title": c["title"]}}
        for i, c in enumerate(nq_item["ctxs"][:10])
    ]
    with sidecar() as url:
        r = httpx.post(
            url + "/v1/compress",
            timeout=60,
            json={"context": docs, "question": nq_item["question"], "rate": 0.3, "method": "truncate"},
        )
        assert r.status_code == 200
        res = msgspec.json.decode(r.content, type=CompressResult)
        assert res.method == "truncate" and res.ratio > 2.5 and res.cache == "miss" and len(res.documents) == 10
        assert [d.id for d in res.documents] == [f"d{i}" for i in range(10)]
        assert res.documents[0].metadata == {"title": nq_item["ctxs"][0]["title"]} and res.documents[-1].dropped
        again = httpx.post(
            url + "/v1/compress",
            timeout=60,
            json={"context": docs, "question": nq_item["question"], "rate": 0.3, "method": "truncate"},
        ).json()
        assert again["cache"] == "hit" and again["compressed"] == res.compressed
        text = httpx.post(url + "/v1/compress", json={"context": "short text", "target_tokens": 100}).json()
        assert text["compressed"] == "short text" and text["ratio"] == 1.0
        bad = httpx.post(url + "/v1/compress", json={"context": ["x"], "rate": 0.5, "target_tokens": 3})
        assert bad.status_code == 400 and "either rate or target_tokens" in bad.json()["error"]["message"]
        bad = httpx.post(url + "/v1/compress", json={"context": [{"txt": "x"}]})
        assert bad.status_code == 400
        assert httpx.post(url + "/v1/compress", json={"nothing": 1}).status_code == 400


@pytest.mark.models
def test_rag_remote_mode_against_the_sidecar(sidecar, upstream, nq_item):
    from ctxgate.rag import RAGCompressor

    docs = [{"text": c["text"], "metadata": {"title": c["title"]}} for c in nq_item["ctxs"][:8]]
    with sidecar() as url:
        result = RAGCompressor(mode="remote", url=url, method="truncate", rate=0.4).compress(
            docs, question=nq_item["question"]
        )
    assert not result.fallback and result.ratio > 2 and result.mode == "remote"
    assert result.documents[0].metadata is docs[0]["metadata"]


@pytest.mark.models
def test_compress_messages_form_is_headroom_compatible(sidecar, upstream, nq_item):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": rag_prompt(nq_item)}]
    with sidecar() as url:
        out = httpx.post(
            url + "/v1/compress", timeout=60, json={"messages": msgs, "model": "gpt-4o-mini", "token_budget": 600}
        ).json()
        assert out["tokens_before"] > 600 and out["tokens_after"] <= 600 * 1.1
        assert out["tokens_saved"] == out["tokens_before"] - out["tokens_after"]
        assert out["compression_ratio"] == pytest.approx(out["tokens_after"] / out["tokens_before"], abs=1e-3)
        assert out["messages"][0] == msgs[0] and out["messages"][1]["content"].endswith("Answer:")
        assert out["transforms_applied"] == ["ctxgate:truncate"]
        same = httpx.post(
            url + "/v1/compress", json={"messages": msgs, "model": "gpt-4o-mini", "token_budget": 100_000}
        ).json()
        assert same["messages"] == msgs and same["tokens_saved"] == 0 and same["transforms_applied"] == []
        cfg = httpx.post(
            url + "/v1/compress", json={"messages": msgs, "model": "gpt-4o-mini", "config": {"rate": 0.2}}
        ).json()
        assert cfg["rate"] == 0.2 and cfg["tokens_after"] < out["tokens_after"]
        bad = httpx.post(url + "/v1/compress", json={"messages": msgs, "config": {"rate": 7}})
        assert bad.status_code == 400 and "config.rate" in bad.json()["error"]["message"]  # the field the client sent
    assert upstream.requests == []  # /v1/compress never calls upstream


def test_serve_entry_point_starts_and_answers(tmp_path, upstream):
    from tests.helpers.servers import free_port

    port = free_port()
    env = {**os.environ, "CTXGATE_HOME": str(tmp_path), "CTXGATE_WARM_UP": "false"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ctxgate.service",
            "--port",
            str(port),
            "--upstream",
            upstream.url + "/v1",
            "--cache",
            "memory",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10)
        assert r.status_code == 200 and r.json()["data"][0]["id"] == "test-model"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "sk-" not in out and "Traceback" not in out


def test_without_prepared_models_the_proxy_still_forwards_every_request(tmp_path, upstream, nq_item):
    """A sidecar started before `ctxgate models prepare` (or with a broken model cache) reports
    failed readiness and fails open: requests reach the upstream unchanged, never a 503."""
    from tests.helpers.clients import ant, oai, rag_prompt
    from tests.helpers.servers import free_port

    port = free_port()
    empty = tmp_path / "no-models"
    empty.mkdir()
    env = {**os.environ, "CTXGATE_HOME": str(tmp_path / "home"), "CTXGATE_MODELS": str(empty)}
    cmd = [sys.executable, "-m", "ctxgate.service", "--port", str(port), "--upstream", upstream.url + "/v1"]
    cmd += ["--anthropic-upstream", upstream.url, "--cache", "memory", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert time.monotonic() < deadline and proc.poll() is None, "the sidecar did not come up"
            try:
                ready = httpx.get(url + "/readyz", timeout=1)
                if ready.json().get("status") == "failed":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert ready.status_code == 503 and "ctxgate models prepare" in ready.json()["error"]
        prompt = rag_prompt(nq_item, 10)
        messages = [{"role": "user", "content": prompt}]
        got = oai(url).chat.completions.with_raw_response.create(model="some-model", messages=messages)
        assert got.http_response.status_code == 200
        assert upstream.last().json["messages"][0]["content"] == prompt  # unchanged
        sent = ant(url).messages.with_raw_response.create(model="claude-x", max_tokens=8, messages=messages)
        assert sent.http_response.status_code == 200
        assert upstream.last().json["messages"][0]["content"] == prompt
        empty_chat = httpx.post(url + "/v1/chat/completions", json={"model": "x", "messages": []}, timeout=10)
        assert empty_chat.status_code == 200  # was 503: counting needed the scorer's tokenizer
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
    assert "Traceback" not in out and "sk-" not in out


def test_dockerfile_lints_clean():
    dockerfile = ROOT / "Dockerfile"
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint:
        proc = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # and what the image must do, whatever the linter: CPU torch, models prepared at build, non-root, serve
    instructions = [line.split(None, 1) for line in _logical_lines(dockerfile.read_text())]
    names = [i[0] for i in instructions]
    assert names[0] == "FROM" and instructions[0][1].startswith("python:3.11-slim")
    known = {"FROM", "ENV", "WORKDIR", "ARG", "RUN", "COPY", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"}
    assert set(names) <= known
    runs = " ".join(i[1] for i in instructions if i[0] == "RUN")
    assert "torch==2.13.0" in runs and "whl/cpu" in dockerfile.read_text() and "models prepare scorer embedder" in runs
    assert ["USER", "10001"] in instructions and ["EXPOSE", "8340"] in instructions
    assert '"ctxgate", "serve"' in dict(instructions)["ENTRYPOINT"]


def _logical_lines(text: str) -> list[str]:
    lines, cur = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            lines.append(cur.strip())
            cur = ""
    return lines


def test_the_example_config_loads():
    from ctxgate.service import load_settings

    s = load_settings(ROOT / "service" / "ctxgate.example.yaml", env={})
    assert s.upstream == "https://api.openai.com/v1" and s.policy_for("messages", "claude-3-5-haiku").rate == 0.4
    assert s.policy_for("chat", "gpt-4o-mini").method == "extractive" and s.cache.backend == "sqlite"


def test_a_removed_setting_is_refused_with_what_to_do_instead(tmp_path):
    from ctxgate.compressor import ConfigError
    from ctxgate.service import load_settings

    cfg = tmp_path / "old.yaml"
    cfg.write_text("compress_workers: 4\n")
    with pytest.raises(ConfigError, match="serve --workers"):
        load_settings(cfg, env={})
    with pytest.raises(ConfigError, match="compress_workers was removed"):
        load_settings(None, env={}, overrides={"compress_workers": 2})
