"""Remote mode: the same API against a real sidecar process (``python -m ctxgate.service``), and fail-open
when the sidecar is down, silent, or answers badly (faults injected with real sockets)."""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ctxgate.compressor import Compressor, InvalidRequest
from ctxgate.rag import RAGCompressor, SidecarError
from tests.helpers.data import ROOT
from tests.helpers.rag import METHOD, nq_passages, question
from tests.helpers.servers import free_port

STARTUP_S = 120


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    """A real sidecar on a free port. Fails (never skips) when it cannot start: remote mode is untested then."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("sidecar") / "sidecar.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ctxgate.service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, log_path)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _wait_ready(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"the sidecar (python -m ctxgate.service) exited with {proc.returncode}:\n"
                f"{log_path.read_text(errors='replace')[-2000:]}"
            )
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(
        f"the sidecar was not ready at {url}/readyz within {STARTUP_S}s:\n"
        f"{log_path.read_text(errors='replace')[-2000:]}"
    )


@pytest.fixture(scope="module")
def docs():
    return [dict(p, metadata=dict(p["metadata"])) for p in nq_passages(1)[:8]]


# ------------------------------------------------------------------ real sidecar


@pytest.mark.models
def test_remote_mode_matches_local_mode(sidecar, docs):
    q, _ = question()
    local = RAGCompressor(method=METHOD, rate=0.4, compressor=Compressor(default_method=METHOD)).compress(docs, q)
    with RAGCompressor(mode="remote", url=sidecar, method=METHOD, rate=0.4) as rag:
        remote = rag.compress(docs, q)
        again = asyncio.run(rag.acompress(docs, q))
    assert not remote.fallback, remote.warnings  # e.g. "sidecar answered HTTP 500": see the sidecar's log
    assert remote.mode == "remote" and not remote.warnings
    for r in (remote, again):
        assert [(d.index, d.text, d.compressed_tokens) for d in r.documents] == [
            (d.index, d.text, d.compressed_tokens) for d in local.documents
        ]
        assert [d.index for d in r.dropped] == [d.index for d in local.dropped]
        assert (r.original_tokens, r.compressed_tokens, r.method) == (
            local.original_tokens,
            local.compressed_tokens,
            METHOD,
        )
        assert all(d.metadata is docs[d.index]["metadata"] for d in r.documents + r.dropped)


@pytest.mark.models
def test_metadata_never_leaves_the_process(sidecar):
    marker = object()  # not JSON-serialisable: the request would fail if metadata were sent
    r = RAGCompressor(mode="remote", url=sidecar, method=METHOD, rate=0.5).compress(
        [{"text": "alpha beta gamma delta " * 40, "metadata": {"obj": marker}, "id": "d1"}]
    )
    assert not r.fallback, r.warnings
    assert r.documents[0].metadata["obj"] is marker and r.documents[0].id == "d1"


@pytest.mark.models
def test_langchain_retriever_in_remote_mode(sidecar):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.vectorstores import InMemoryVectorStore

    from ctxgate.langchain import CtxgateDocumentCompressor
    from tests.helpers.rag import langchain_embeddings

    q, _ = question()
    store = InMemoryVectorStore(langchain_embeddings())
    store.add_documents(
        [Document(page_content=p["text"], metadata=dict(p["metadata"]), id=p["id"]) for p in nq_passages(1)]
    )
    base = store.as_retriever(search_kwargs={"k": 6})
    retriever = ContextualCompressionRetriever(
        base_compressor=CtxgateDocumentCompressor(mode="remote", url=sidecar, method=METHOD, rate=0.4),
        base_retriever=base,
    )
    raw, out, aout = base.invoke(q), retriever.invoke(q), asyncio.run(retriever.ainvoke(q))
    assert [(d.id, d.page_content) for d in out] == [(d.id, d.page_content) for d in aout]
    assert 0 < len(out) < len(raw)
    by_id = {d.id: d for d in raw}
    for d in out:
        info = d.metadata.pop("ctxgate")
        assert d.metadata == by_id[d.id].metadata and info["fallback"] is False and info["method"] == METHOD
    assert sum(len(d.page_content) for d in out) < 0.6 * sum(len(d.page_content) for d in raw)


@pytest.mark.models
def test_llamaindex_postprocessor_in_remote_mode(sidecar):
    from llama_index.core.schema import NodeWithScore, TextNode

    from ctxgate.llamaindex import CtxgateNodePostprocessor

    nodes = [
        NodeWithScore(node=TextNode(text=p["text"], id_=p["id"], metadata=dict(p["metadata"])), score=1 - i / 10)
        for i, p in enumerate(nq_passages(1)[:6])
    ]
    out = CtxgateNodePostprocessor(mode="remote", url=sidecar, method=METHOD, rate=0.4).postprocess_nodes(nodes)
    assert 0 < len(out) < len(nodes)
    for n in out:
        src = next(x for x in nodes if x.node.node_id == n.node.node_id)
        assert n.score == src.score and n.node.metadata["ctxgate"]["fallback"] is False
        assert {k: v for k, v in n.node.metadata.items() if k != "ctxgate"} == src.node.metadata


# ------------------------------------------------------------- fail-open paths

SECRET = "The launch code is Zebra-Orchid-7731 and must never appear in logs."


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"  # bound, then released: connection refused


def check_fallback(r, docs, reason: str, caplog):
    assert r.fallback and r.method == "passthrough" and r.ratio == 1.0 and r.tokens_estimated
    assert [d.text for d in r.documents] == [d["text"] for d in docs] and not r.dropped
    assert [d.metadata for d in r.documents] == [d["metadata"] for d in docs]
    assert any(reason in w for w in r.warnings)
    records = [rec for rec in caplog.records if rec.name == "ctxgate.rag"]
    assert records and all(rec.levelno == logging.WARNING for rec in records)
    logged = " ".join(rec.getMessage() for rec in records)
    assert reason in logged and "uncompressed" in logged
    assert "Zebra" not in logged and "launch code" not in logged  # no document text in logs
    assert KEY not in logged and "Bearer" not in logged  # nor the credentials sent


KEY = "sk-remote-must-never-be-logged"
AUTH = {"authorization": f"Bearer {KEY}"}
FALLBACK_DOCS = [{"text": SECRET * 5, "metadata": {"source": "vault"}}, {"text": "second doc " * 30, "metadata": {}}]


def test_sidecar_down_fails_open_sync_and_async(caplog):
    caplog.set_level(logging.WARNING, logger="ctxgate.rag")
    rag = RAGCompressor(mode="remote", url=closed_port_url(), method=METHOD, rate=0.3, timeout=2, headers=AUTH)
    check_fallback(rag.compress(FALLBACK_DOCS, "what is the code?"), FALLBACK_DOCS, "unreachable", caplog)
    caplog.clear()
    check_fallback(asyncio.run(rag.acompress(FALLBACK_DOCS, "q")), FALLBACK_DOCS, "unreachable", caplog)


def test_sidecar_down_with_strict_raises_a_clear_error():
    rag = RAGCompressor(mode="remote", url=closed_port_url(), rate=0.3, strict=True, timeout=2)
    with pytest.raises(SidecarError, match=r"unreachable \(ConnectError\).*strict=True"):
        rag.compress(FALLBACK_DOCS)
    with pytest.raises(SidecarError, match="unreachable"):
        asyncio.run(rag.acompress(FALLBACK_DOCS))


def test_silent_sidecar_times_out_and_fails_open(caplog):
    caplog.set_level(logging.WARNING, logger="ctxgate.rag")
    with socket.socket() as s:  # listens (the kernel completes the handshake) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
        t0 = time.monotonic()
        r = RAGCompressor(mode="remote", url=url, rate=0.3, timeout=0.5, headers=AUTH).compress(FALLBACK_DOCS)
        assert time.monotonic() - t0 < 5
        check_fallback(r, FALLBACK_DOCS, "timed out", caplog)
        with pytest.raises(SidecarError, match="timed out"):
            RAGCompressor(mode="remote", url=url, rate=0.3, timeout=0.5, strict=True).compress(FALLBACK_DOCS)


class _Faulty(http.server.BaseHTTPRequestHandler):
    """Answers by path prefix: /503 overloaded, /garbage not a CompressResult, /422 a rejected request,
    /short a CompressResult with the wrong number of documents."""

    def do_POST(self):  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        kind = self.path.split("/")[1]
        status, body = {
            "503": (503, b'{"detail": "models loading"}'),
            "garbage": (200, b"<html>" + SECRET.encode() + b"</html>"),
            "422": (422, b'{"detail": "rate must be in (0, 1]"}'),
            "short": (
                200,
                json.dumps(
                    {
                        "compressed": "",
                        "documents": [],
                        "original_tokens": 0,
                        "compressed_tokens": 0,
                        "ratio": 1.0,
                        "rate": 1.0,
                        "method": "x",
                        "model": None,
                        "seconds": 0.0,
                        "cache": "off",
                        "tokenizer": "t",
                    }
                ).encode(),
            ),
        }[kind]
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def faulty():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "path, reason", [("503", "HTTP 503"), ("garbage", "not a CompressResult"), ("short", "answered 0 documents for 2")]
)
def test_bad_answers_fail_open(faulty, caplog, path, reason):
    caplog.set_level(logging.WARNING, logger="ctxgate.rag")
    r = RAGCompressor(mode="remote", url=f"{faulty}/{path}", rate=0.3, headers=AUTH).compress(FALLBACK_DOCS)
    check_fallback(r, FALLBACK_DOCS, reason, caplog)


def test_rejected_request_raises_like_local_mode_even_when_not_strict(faulty):
    with pytest.raises(InvalidRequest, match=r"HTTP 422\): rate must be in"):
        RAGCompressor(mode="remote", url=f"{faulty}/422", rate=0.3).compress(FALLBACK_DOCS)
