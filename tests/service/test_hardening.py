"""Regression tests for the adversarial run's findings (issue 14): no request may freeze, bloat or
crash the sidecar. Each test names its finding. Everything runs through a real sidecar on a real
port in front of the recording test upstream; faults are injected only where a fault is the point."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import httpx
import pytest

PROMPT = "context " * 400 + "\n\nWhat is the context?"
_TWO_SENTENCES = "The river flows through the valley. The river feeds many lakes."


def _chat(content: str, **extra) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture(scope="module")
def hard(test_upstream, tmp_path_factory):
    """One sidecar with short connection limits, an admin token and its state in a temp folder."""
    from ctxgate.service._config import FidelitySettings, Limits
    from tests.helpers.servers import proxy_settings, run_sidecar

    state = tmp_path_factory.mktemp("state")
    s = proxy_settings(
        test_upstream.url,
        compress_timeout=5,
        cache={"backend": "sqlite", "path": str(state / "cache" / "segments.sqlite")},
        fidelity=FidelitySettings(path=str(state / "cache" / "fidelity.sqlite")),
        limits=Limits(header_timeout=1.0, body_timeout=1.0, max_headers=50, max_header_bytes=16 * 1024),
        admin_token="s3cret-admin",
    )
    with run_sidecar(s) as url:
        yield url, state


@pytest.fixture()
def proxy(hard, upstream):
    url, _ = hard
    yield url
    assert httpx.get(url + "/healthz", timeout=5).status_code == 200


# ------------------------------------------------------------------ 1. regex backtracking


def test_markup_parsing_is_linear_even_for_an_unclosed_tag_with_many_attributes():
    from ctxgate.compressor import InvalidRequest, parse_markup

    for k in (24, 40, 4000):
        tag = "<ctxgate:compress" + ' a="x"' * k
        t0 = time.perf_counter()
        assert parse_markup(tag + " and no closing bracket").text.startswith("<ctxgate:compress")
        with pytest.raises(InvalidRequest, match="malformed ctxgate tag at offset 0"):
            parse_markup(tag + " hello > world")
        # exponential backtracking took 25 s at k=24 and doubled per attribute; linear is microseconds
        assert time.perf_counter() - t0 < 1.0, k


@pytest.mark.parametrize(
    ("prefix", "labelled"), [("Document", True), ("Doc #", True), ("Result no.", True), ("[", True), ("", False)]
)
def test_the_document_label_pattern_is_linear_in_a_long_run_of_spaces(prefix, labelled):
    """Client documents reach ``ordinal_span`` on every classifier request; three adjacent ``\\s*``
    once made "Document" + 2,000 spaces take 24 s (cubic), so 200,000 would never finish."""
    from ctxgate.compressor._student import ordinal_span

    t0 = time.perf_counter()
    assert ordinal_span(prefix + " " * 200_000 + "x") is None
    at = len(prefix) + 200_000
    assert ordinal_span(prefix + " " * 200_000 + "7 text") == ((at, at + 1) if labelled else None)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("where", ["user", "system", "tool", "bypass"])
def test_a_k40_tag_request_is_answered_at_once_while_healthz_stays_fast(proxy, upstream, where):
    evil = "<ctxgate:compress" + ' a="x"' * 40
    messages = [{"role": "user", "content": evil}]
    headers = {}
    if where == "system":
        messages = [{"role": "system", "content": evil}, {"role": "user", "content": "hi"}]
    elif where == "tool":
        messages = [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": evil + " >"},
        ]
    elif where == "bypass":
        headers["x-ctxgate-bypass"] = "1"
    done: dict[str, float] = {}

    def send():
        t0 = time.perf_counter()
        r = httpx.post(
            proxy + "/v1/chat/completions", json={"model": "m", "messages": messages}, headers=headers, timeout=30
        )
        done["status"], done["seconds"] = r.status_code, time.perf_counter() - t0

    t = threading.Thread(target=send)
    t.start()
    t0 = time.perf_counter()
    assert httpx.get(proxy + "/healthz", timeout=5).status_code == 200
    health = time.perf_counter() - t0
    t.join(30)
    assert done["status"] in (200, 400) and done["seconds"] < 2.0 and health < 2.0, (done, health)


def _find_protected(text):
    from ctxgate.compressor import find_protected

    return find_protected(text)


def _split(text):
    from ctxgate.compressor.structured import split

    return split(text)


def _title(text):
    from ctxgate.compressor._hops import title_of

    return title_of(text)


def _atoms(text):
    from ctxgate.compressor.structured import Relevance

    return Relevance(text).atoms


def _code(text):
    from ctxgate.compressor import get_counter
    from ctxgate.compressor.structured import Relevance, Tools, crush

    return crush(text, "code", Tools(budget=200, counter=get_counter(), relevance=Relevance("what is f?")), "js")


# Each was quadratic (or worse) in the second audit (2026-12-08): 40 KB of "1." held the GIL for
# 16 s in the e-mail and path patterns, so /healthz stalled and the fail-open timer could not fire.
# Sized so that the old patterns take well over the bound (tens of seconds to minutes) and the
# linear ones milliseconds.
_SCANNER_CASES = {
    "email and path patterns, a run of '1.'": (_find_protected, "1." * 60_000),
    "e-mail pattern, '+_' repeated": (_find_protected, "+_" * 60_000),
    "unclosed code fences": (_find_protected, "```x\n" * 30_000),
    "failed JSON starts on many lines": (_find_protected, "  {\n" * 120_000),
    "unclosed fences in tool output": (_split, "```x\n" * 30_000),
    "a table rule line of spaces": (_split, "| a |\n" + " " * 40_000 + "|x|\n" + "| b |\n" * 10),
    "leading spaces before a title": (_title, " " * 40_000 + "x"),
    "identifier atoms of a long question": (_atoms, "ef" * 60_000),
    "a line of spaces in code": (_code, "function f() {\n" + " " * 40_000 + "\n}\n"),
    "unclosed function bodies": (_code, "function f() {\n" * 20_000),
}


@pytest.mark.parametrize("case", list(_SCANNER_CASES))
def test_text_scanners_are_linear_in_adversarial_text(case):
    fn, text = _SCANNER_CASES[case]
    fn("a warm-up: imports and the tokenizer load outside the timed call")
    t0 = time.perf_counter()
    fn(text)
    assert time.perf_counter() - t0 < 3.0, case


def test_a_run_of_dots_and_digits_neither_stalls_the_loop_nor_overruns_the_budget(proxy, upstream):
    """The audit's request: 40 KB of "1." and a question. /healthz stalled up to 13 s and the
    request failed open after 16 s against a 5 s budget."""
    done: dict[str, object] = {}

    def send():
        t0 = time.perf_counter()
        r = httpx.post(proxy + "/v1/chat/completions", json=_chat("1." * 20_000 + "\n\nWhat is this?"), timeout=60)
        done["status"], done["seconds"] = r.status_code, time.perf_counter() - t0

    t = threading.Thread(target=send)
    t.start()
    stalls = []
    while t.is_alive() and len(stalls) < 50:
        t0 = time.perf_counter()
        assert httpx.get(proxy + "/healthz", timeout=10).status_code == 200
        stalls.append(time.perf_counter() - t0)
        time.sleep(0.1)
    t.join(60)
    assert done["status"] == 200 and done["seconds"] < 5 + 3.0, done
    assert max(stalls, default=0.0) < 1.0, stalls


@pytest.mark.models
def test_a_tool_output_of_one_long_token_reaches_the_upstream_whole(proxy, upstream):
    """The second audit: a 8,000-character hex tool output went upstream as "" (no unit fitted)."""
    key = "0123456789abcdef" * 500
    call = {"id": "c1", "type": "function", "function": {"name": "read_key", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "What is the key in the tool output?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": key},
    ]
    r = httpx.post(proxy + "/v1/chat/completions", json={"model": "gpt-4o", "messages": messages}, timeout=60)
    assert r.status_code == 200
    assert upstream.last("/v1/chat/completions").json["messages"][2]["content"] == key


@pytest.mark.models
def test_markup_on_v1_compress_is_linear_too(proxy):
    evil = "<ctxgate:compress" + ' a="x"' * 40 + " >"
    r = httpx.post(proxy + "/v1/compress", json={"context": [evil, "other"], "question": "q"}, timeout=10)
    assert r.status_code == 400 and "malformed ctxgate tag" in r.json()["error"]["message"]


# ------------------------------------------------------------------ 2. memory amplification


def test_too_many_markup_regions_is_a_clear_400(proxy, upstream):
    from ctxgate.compressor._markup import MAX_REGIONS

    body = "".join(f"word{i} <ctxgate:keep>k{i}</ctxgate:keep> " for i in range(10_000))
    r = httpx.post(proxy + "/v1/chat/completions", json=_chat(body + "\n\nWhich?"), timeout=30)
    assert r.status_code == 400 and f"more than {MAX_REGIONS} ctxgate regions" in r.json()["error"]["message"]
    assert not upstream.requests


@pytest.mark.models
def test_many_protected_spans_and_many_tiny_documents_stay_cheap():
    """find_protected on 20k numbers, and 5,000 one-word documents, in bounded time (was quadratic)."""
    from ctxgate.compressor import Compressor, find_protected

    text = " ".join(str(i) for i in range(20_000))
    t0 = time.perf_counter()
    assert len(find_protected(text)) == 20_000
    assert time.perf_counter() - t0 < 5.0
    out = Compressor(default_method="truncate", cache=None).compress(context=[f"d{i}" for i in range(5000)], rate=0.5)
    assert out.compressed_tokens <= out.original_tokens


def test_deeply_nested_brackets_in_text_are_no_recursion_error():
    from ctxgate.compressor import find_protected

    for text in ("[" * 5000 + "]" * 5000, "{" * 100_000, '{"a":' * 3000):
        assert isinstance(find_protected(text), list)


# ------------------------------------------------------------------ 3. state bounded by bytes


def test_the_token_count_memo_is_bounded_by_bytes():
    from ctxgate.service._rewrite import _CountMemo

    memo = _CountMemo(max_bytes=1024 * 1024)
    for i in range(200):
        memo.set("smollm2", f"{i} " + "x" * 300_000, i)
    assert memo.nbytes <= 1024 * 1024 and len(memo) == 200
    assert memo.get("smollm2", "7 " + "x" * 300_000) == 7
    for i in range(50_000):
        memo.set("smollm2", f"short text {i}", i)
    assert memo.nbytes <= 1024 * 1024 and memo.get("smollm2", "short text 49999") == 49999


@pytest.mark.parametrize("name", ["x" * 100_000, "gpt\r\nx-injected: 1", "model\x00nul", "模型-中文", "a b\tc"])
def test_client_model_strings_are_normalised_before_they_are_kept_or_echoed(proxy, upstream, name):
    r = httpx.post(proxy + "/v1/chat/completions", json={**_chat(PROMPT), "model": name}, timeout=30)
    assert r.status_code == 200, r.text
    assert "x-injected" not in r.headers
    for key, value in r.headers.items():
        if key.startswith("x-ctxgate"):
            assert len(value) <= 256 and value.isascii() and value.isprintable(), (key, value)
    assert upstream.last().json["model"] == name  # what goes upstream is the client's own


def test_model_labels_are_short_distinct_and_safe():
    from ctxgate.service._labels import MAX_LABEL_CHARS, model_label

    a, b = model_label("m" * 100_000 + "a"), model_label("m" * 100_000 + "b")
    assert a != b and len(a) <= MAX_LABEL_CHARS and len(b) <= MAX_LABEL_CHARS
    assert model_label("gpt-4o-mini") == "gpt-4o-mini" and model_label("a\r\nb") == "a__b"
    assert model_label(5) == "" and model_label(None) == ""


def test_the_fidelity_store_has_a_retention_period(tmp_path):
    from ctxgate.service.fidelity._store import Store

    store = Store(tmp_path / "f.sqlite")
    now = time.time()
    for ts in (now - 40 * 86400, now - 10):
        store.add_traffic(ts, "chat", "m", "truncate", 0.3, 100, 30)
    store.add_adjustment(now - 50 * 86400, "chat", "m", 0.3, 0.4, "low_fidelity", 0.5, 5)
    store.prune(now - 30 * 86400)
    assert [r[0] for r in store.query("SELECT ts FROM traffic")] == [now - 10]
    assert len(store.query("SELECT * FROM adjustments")) == 1  # the controller's last state stays
    store.close()


# ------------------------------------------------------------------ 4. connection and header limits


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    t0 = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):  # a reset: closed with our bytes unread
        pass
    return data, time.monotonic() - t0


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'content-type: application/json\r\ncontent-length: 1000\r\n\r\n{"mo',
    ],
)
def test_idle_and_half_sent_connections_are_closed(proxy, sent):
    with socket.create_connection(("127.0.0.1", _port(proxy))) as s:
        s.sendall(sent)
        data, waited = _read_until_closed(s, 8)
    assert waited < 6, "the connection was never closed"
    if sent:
        assert data.startswith(b"HTTP/1.1 408"), data[:80]


def test_too_many_headers_are_431_and_never_forwarded(proxy, upstream):
    r = httpx.post(
        proxy + "/v1/chat/completions", json=_chat("hi"), headers={f"x-h{i}": "v" for i in range(200)}, timeout=10
    )
    assert r.status_code == 431
    assert not upstream.requests


@pytest.mark.parametrize("size", [64 * 1024, 1024 * 1024, 5 * 1024 * 1024])
def test_a_huge_header_is_refused_before_it_is_buffered(proxy, upstream, size):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nx-big: "
    with socket.create_connection(("127.0.0.1", _port(proxy))) as s:
        s.settimeout(5)
        try:
            s.sendall(head + b"v" * size + b"\r\ncontent-length: 2\r\n\r\n{}")
        except OSError:
            pass  # refused and closed while we were still sending
        data, _ = _read_until_closed(s, 5)
    assert data.startswith(b"HTTP/1.1 431") or data == b"", data[:80]
    assert not upstream.requests


# ------------------------------------------------------------------ 5. /v1/compress budget and disconnects


@pytest.fixture()
def slow_engine(test_upstream, monkeypatch):
    """A sidecar whose compressor takes 3 s per call (the injected fault), with a 0.5 s budget.
    Yields the URL and the log of calls: ``("start"|"end", first word of the context)``. A context
    starting with "sentinel" is not slowed down."""
    from ctxgate.compressor import Compressor
    from ctxgate.service import CacheSettings, Settings
    from tests.helpers.servers import free_port, run_sidecar

    calls: list[tuple[str, str]] = []
    real = Compressor.compress

    def slow(self, request=None, /, **fields):
        text = str(request.context) if request is not None else ""
        if request is None or "warm up" in text:
            return real(self, request, **fields)
        word = text.strip("[]'\" ").split()[0]
        calls.append(("start", word))
        try:
            if word != "sentinel":
                time.sleep(3)
            return real(self, request, **fields)
        finally:
            calls.append(("end", word))

    monkeypatch.setattr(Compressor, "compress", slow)
    s = Settings(
        upstream=test_upstream.url + "/v1",
        port=free_port(),
        default_method="truncate",
        cache=CacheSettings(backend="off"),
        compress_timeout=0.5,
    )
    with run_sidecar(s) as url:
        yield url, calls


@pytest.mark.models
def test_v1_compress_fails_open_at_its_budget_with_counted_tokens(slow_engine):
    url, calls = slow_engine
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/v1/compress",
        json={"context": ["alpha " * 300, "beta " * 300], "question": "q", "rate": 0.3},
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["x-ctxgate-fail-open"] == "timeout"
    out = r.json()
    assert time.perf_counter() - t0 < 2.5
    assert out["original_tokens"] == out["compressed_tokens"] > 0 and out["ratio"] == 1.0
    assert out["compressed"] == "alpha " * 300 + "\n\n" + "beta " * 300


def _until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.mark.models
def test_abandoned_v1_compress_requests_leave_no_queued_work(slow_engine):
    url, calls = slow_engine
    _until(lambda: sum(e == "start" for e, _ in calls) == sum(e == "end" for e, _ in calls))  # earlier tests' calls
    calls.clear()
    for _ in range(3):
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/compress", json={"context": "gamma " * 500, "rate": 0.3}, timeout=0.2)
    _until(lambda: ("end", "gamma") in calls)
    # One executor, first in first out: once a later call has run, anything queued before it
    # has either run or been dropped.
    r = httpx.post(url + "/v1/compress", json={"context": "sentinel " * 500, "rate": 0.3}, timeout=30)
    assert r.status_code == 200 and "x-ctxgate-fail-open" not in r.headers, r.headers
    assert [w for e, w in calls if e == "start"] == ["gamma", "sentinel"], calls  # the two queued were dropped


# ------------------------------------------------------------------ 6. client errors are 4xx


def _deep(n: int) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "x": ' + b"[" * n + b"]" * n + b"}"


@pytest.mark.parametrize(
    "path,headers",
    [
        ("/v1/chat/completions", {}),
        ("/v1/messages", {}),
        ("/v1/chat/completions", {"x-ctxgate-bypass": "1"}),
        ("/v1/compress", {}),
    ],
)
def test_json_nested_1000_deep_is_400(proxy, upstream, path, headers):
    r = httpx.post(
        proxy + path, content=_deep(1000), headers={"content-type": "application/json", **headers}, timeout=10
    )
    assert r.status_code == 400 and "nested too deeply" in r.text
    assert not upstream.requests


@pytest.mark.models
@pytest.mark.parametrize(
    "body,needle",
    [
        ({"messages": 5}, "messages"),
        ({"messages": [], "config": []}, "config"),
        ({"context": "x " * 50, "tokenizer": "/etc"}, "tokenizer"),
        ({"context": "x " * 50, "tokenizer": "/no/such/path"}, "tokenizer"),
        ({"context": "x " * 50, "tokenizer": "org/model"}, "tokenizer"),
        ({"context": "x " * 500, "method": "random", "rate": 0.2, "options": {"seed": "abc"}}, "seed"),
        ({"context": ["x"] * 3, "options": {"separator": "s" * 10_000}}, "separator"),
        ({"messages": [{"role": "user", "content": "hi"}], "config": {"rate": True}}, "rate"),
        # the second audit: the methods' int()/float() made these 500s, and "inf" was taken as given
        ({"context": _TWO_SENTENCES, "options": {"passage_words": "abc"}}, "passage_words"),
        ({"context": _TWO_SENTENCES, "options": {"coarse_factor": "x"}}, "coarse_factor"),
        ({"context": _TWO_SENTENCES, "options": {"lexical_weight": [1]}}, "lexical_weight"),
        ({"context": _TWO_SENTENCES, "options": {"auto_passage_z": {}}}, "auto_passage_z"),
        ({"context": _TWO_SENTENCES, "options": {"coarse_factor": "inf"}}, "coarse_factor"),
        ({"context": _TWO_SENTENCES, "options": {"passage_words": -5}}, "passage_words"),
        ({"context": _TWO_SENTENCES, "options": {"multi_hop": "sometimes"}}, "multi_hop"),
    ],
)
def test_bad_v1_compress_input_is_400(proxy, body, needle):
    r = httpx.post(proxy + "/v1/compress", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


@pytest.mark.models
def test_v1_compress_fails_open_when_a_method_cannot_load_its_model(test_upstream, tmp_path):
    """The second audit: with the scorer set to a missing folder, /v1/compress answered 500 with
    the operator's path in the message, where the proxy routes fail open."""
    from tests.helpers.servers import proxy_settings, run_sidecar

    missing = str(tmp_path / "no-such-model-dir")
    body = {"context": "The harbor treaty was signed in 1903. " * 60, "question": "When?", "rate": 0.3}
    with run_sidecar(proxy_settings(test_upstream.url, scorer=missing)) as url:
        for extra in ({"method": "hybrid"}, {"tokenizer": missing}):
            r = httpx.post(url + "/v1/compress", json={**body, **extra}, timeout=60)
            assert r.status_code == 200 and r.headers["x-ctxgate-fail-open"] == "error", (extra, r.text[:300])
            assert r.json()["compressed"] == body["context"] and "no-such" not in r.text


@pytest.mark.parametrize("words", [150_000, 250_000])
def test_a_million_characters_counted_with_an_openai_tokenizer_is_no_500(proxy, words):
    """The second audit: bpe-openai refuses 1,000,000+ characters, and /v1/compress answered 500."""
    r = httpx.post(
        proxy + "/v1/compress",
        json={"context": "word " * words + "end", "tokenizer": "gpt-4o", "rate": 0.5},
        timeout=120,
    )
    # 250,001 tokens is over the default max_input_tokens (200,000): a clear 413, never a 500
    assert r.status_code == (200 if words + 1 <= 200_000 else 413), r.text[:300]
    if r.status_code == 200:
        assert r.json()["original_tokens"] == words + 1


def test_openai_counts_in_pieces_add_up_exactly():
    from ctxgate.compressor import get_counter
    from ctxgate.compressor._tokens import _pieces

    text = ("The river, 1,000 km long, feeds ünïcode lakes; 漢字 😀 don't.\n  " * 4000)[:200_000]
    enc = get_counter("gpt-4o")._enc
    pieces = _pieces(text, 5_000)
    assert len(pieces) > 30 and "".join(pieces) == text
    assert sum(len(enc.encode(p)) for p in pieces) == len(enc.encode(text))
    assert get_counter("gpt-4o").count("a" * 1_200_000) > 0


def test_the_messages_form_takes_config_tokenizer_and_names_its_own_fields(proxy):
    """The second audit: ``config.tokenizer`` (documented) was always refused as "unknown field
    ctxgate.tokenizer", a name the client never sent."""
    msgs = [{"role": "user", "content": "The 😀 river ünïcode flows. " * 40 + "\n\nWhich river?"}]

    def before(config):
        r = httpx.post(proxy + "/v1/compress", json={"messages": msgs, "config": config}, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["tokens_before"]

    assert before({"tokenizer": "gpt-4o", "rate": 1.0}) != before({"tokenizer": "smollm2", "rate": 1.0})
    r = httpx.post(proxy + "/v1/compress", json={"messages": msgs, "config": {"tokenizer": "/etc/passwd"}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "config.tokenizer"
    r = httpx.post(proxy + "/v1/compress", json={"messages": msgs, "config": {"nope": 1}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "config.nope", r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/compress", {"context": "x", "k" * 1_000_000: 1}),
        ("/v1/compress", {"messages": [{"role": "user", "content": "hi"}], "config": {"k" * 1_000_000: 1}}),
        ("/v1/chat/completions", _chat("hi", ctxgate={"k" * 1_000_000: 1})),
    ],
)
def test_an_error_quoting_client_input_is_bounded(proxy, upstream, path, body):
    """The second audit: a 1 MB unknown key came back as a 1 MB error body (2 MB: message and param)."""
    r = httpx.post(proxy + path, json=body, timeout=30)
    assert r.status_code == 400 and len(r.content) < 2_000, len(r.content)
    assert not upstream.requests
    headers = {"x-ctxgate-rate": "9" * 100_000}
    r = httpx.post(proxy + "/v1/chat/completions", json=_chat("hi"), headers=headers, timeout=30)
    assert r.status_code in (400, 431) and len(r.content) < 2_000


def test_a_boolean_rate_is_rejected_on_the_proxy(proxy, upstream):
    r = httpx.post(proxy + "/v1/chat/completions", json={**_chat(PROMPT), "ctxgate": {"rate": True}}, timeout=10)
    assert r.status_code == 400 and "ctxgate.rate" in r.json()["error"]["message"]
    assert not upstream.requests


# ------------------------------------------------------------------ 8. relayed content types


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages", "/v1/compress"])
def test_an_encoded_request_body_is_a_415_and_identity_is_not_forwarded(proxy, upstream, path):
    """The second audit: a plain body labelled gzip went upstream still labelled gzip, and a real
    gzip body was a 400 'not valid JSON (invalid character (byte 0))'."""
    import gzip
    import json as _json

    plain = _json.dumps(_chat("hi") if path != "/v1/compress" else {"context": "hi"}).encode()
    for body in (plain, gzip.compress(plain)):
        for encoding in ("gzip", "br, gzip"):
            headers = {"content-type": "application/json", "content-encoding": encoding}
            r = httpx.post(proxy + path, content=body, headers=headers, timeout=10)
            assert r.status_code == 415, (encoding, r.status_code, r.text)
    assert not upstream.requests
    chat = _json.dumps(_chat("hi")).encode()
    r = httpx.post(proxy + "/v1/chat/completions", content=chat, headers={"content-encoding": "identity"}, timeout=10)
    assert r.status_code == 200 and "content-encoding" not in upstream.last("/v1/chat/completions").headers


@pytest.mark.parametrize(
    "ctype", ["text/event-stream; charset=utf-8", "text/plain", "text/plain; charset=latin-1", "application/json"]
)
def test_the_upstream_content_type_is_relayed_exactly(proxy, ctype):
    r = httpx.post(
        proxy + "/v1/chat/completions", json=_chat("hi"), headers={"x-test-behavior": "ctype:" + ctype}, timeout=10
    )
    assert r.headers.get_list("content-type") == [ctype]


def test_sse_streams_carry_one_charset(proxy):
    with httpx.stream("POST", proxy + "/v1/chat/completions", json=_chat("hi", stream=True), timeout=10) as r:
        r.read()
    assert r.headers["content-type"] == "text/event-stream; charset=utf-8"


def test_our_own_text_pages_carry_one_charset(proxy):
    """The second audit: /dashboard and /metrics said "charset=utf-8; charset=utf-8"."""
    auth = {"authorization": "Bearer s3cret-admin"}
    for path in ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/metrics"):
        ctype = httpx.get(proxy + path, headers=auth, timeout=10).headers["content-type"]
        assert ctype.count("charset") == 1 and ctype.endswith("charset=utf-8"), (path, ctype)


# ------------------------------------------------------------------ 10. exposure


def test_admin_routes_need_the_admin_token(proxy):
    for path in ("/metrics", "/v1/fidelity", "/v1/fidelity/series", "/dashboard"):
        r = httpx.get(proxy + path, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert httpx.get(proxy + path, headers={"authorization": "Bearer wrong"}, timeout=10).status_code == 401
        assert httpx.get(proxy + path, headers={"authorization": "Bearer s3cret-admin"}, timeout=10).status_code == 200
    assert httpx.get(proxy + "/dashboard?token=s3cret-admin", timeout=10).status_code == 200
    assert httpx.get(proxy + "/healthz", timeout=10).status_code == 200  # probes stay open


def test_an_unknown_host_is_refused_on_loopback(proxy, upstream):
    for host in ("evil.example", "attacker.test:8340", ""):
        r = httpx.post(proxy + "/v1/chat/completions", json=_chat("hi"), headers={"host": host}, timeout=10)
        assert r.status_code == 400, host
    assert not upstream.requests
    assert httpx.get(proxy + "/healthz", headers={"host": "localhost:8340"}, timeout=10).status_code == 200


@pytest.mark.parametrize("host", ["localhost:sk-AUDITSECRET123:1", "localhost:99999", "[::1]:abc", "localhost:0"])
def test_a_malformed_host_port_is_a_400_and_stays_out_of_the_log(proxy, upstream, host, caplog):
    """The second audit: parsing the URL raised on the port, so the Host check's own 400 became a
    500 whose traceback (about 70 log lines per request) quoted the header's value."""
    with caplog.at_level("DEBUG"):
        chat = httpx.post(proxy + "/v1/chat/completions", json=_chat("hi"), headers={"host": host}, timeout=10)
        health = httpx.get(proxy + "/healthz", headers={"host": host}, timeout=10)
    for r in (chat, health):
        assert r.status_code == 400 and "AUDITSECRET" not in r.text, (r.status_code, r.text)
    assert chat.json()["error"]["message"] == "this Host is not allowed (allowed_hosts)"
    assert not upstream.requests
    assert "AUDITSECRET" not in caplog.text and "Traceback" not in caplog.text, caplog.text[-2000:]


def test_allowed_hosts_setting():
    from ctxgate.service import Settings
    from ctxgate.service._access import Hosts

    assert Settings(host="0.0.0.0").allowed_hosts_for() == ["*"]
    h = Hosts(Settings(allowed_hosts=["api.internal", "*.example.com"]).allowed_hosts_for())
    assert h.allows("api.internal:8340") and h.allows("a.b.example.com") and not h.allows("example.com.evil")
    assert Hosts(Settings().allowed_hosts_for()).allows("[::1]:8340")


def test_state_files_are_owner_only(hard, proxy):
    _, state = hard
    httpx.post(proxy + "/v1/chat/completions", json=_chat(PROMPT), timeout=30)
    cache = state / "cache"
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    files = list(cache.glob("*.sqlite*"))
    assert {f.name for f in files} >= {"segments.sqlite", "fidelity.sqlite"}
    for f in files:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f


# ------------------------------------------------------------------ 11. cache backend trouble costs little


class _Frozen:
    """A backend that hangs then fails on every call (the injected fault: a frozen Redis)."""

    name = "frozen"

    def __init__(self) -> None:
        self.calls = 0

    def get(self, key):
        self.calls += 1
        time.sleep(0.2)
        raise TimeoutError("frozen")

    def set(self, key, value):
        self.get(key)


def test_the_circuit_breaker_skips_a_failing_backend_then_retries_it():
    from ctxgate.service._cache import Breaker, TieredCache

    backend = _Frozen()
    cache = TieredCache(None, backend, breaker=Breaker(failures=3, cooldown=0.5))
    for _ in range(10):
        assert cache.get("k") is None
        cache.set("k", b"v")
    assert backend.calls == 3 and cache.breaker.open
    time.sleep(0.6)
    cache.get("k")
    assert backend.calls == 4  # half-open: one trial, which failed: open again
    cache.get("k")
    assert backend.calls == 4


@pytest.mark.models
def test_a_frozen_redis_costs_milliseconds_not_seconds(tmp_path, test_upstream):
    """A real redis-server, stopped with SIGSTOP: after the breaker opens, requests do not wait on it."""
    import shutil
    import signal
    import subprocess

    from ctxgate.service import CacheSettings, Policy, Settings
    from tests.helpers.servers import free_port, run_sidecar

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (make system-deps installs it)")
    port = free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        s = Settings(
            upstream=test_upstream.url + "/v1",
            port=free_port(),
            default_method="truncate",
            policy=Policy(min_tokens=50, rate=0.3),
            cache=CacheSettings(
                backend="redis", url=f"redis://127.0.0.1:{port}/0", memory_entries=0, timeout=0.25, breaker_cooldown=30
            ),
        )
        with run_sidecar(s) as url:
            proc.send_signal(signal.SIGSTOP)
            times = []
            for i in range(6):
                t0 = time.perf_counter()
                r = httpx.post(url + "/v1/chat/completions", json=_chat(f"{i} " + PROMPT), timeout=30)
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
            # the first requests pay the 0.25 s timeouts until 3 errors open the breaker; then none do
            assert max(times[-3:]) < 0.25, times
            metrics = httpx.get(url + "/metrics", timeout=5).text
            assert 'ctxgate_cache_errors_total{op="get"}' in metrics
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait()


@pytest.mark.models
def test_a_text_far_over_max_input_tokens_is_refused_before_it_is_tokenized():
    from ctxgate.compressor import Compressor, InputTooLarge

    c = Compressor(default_method="truncate", cache=None, max_input_tokens=100)
    with pytest.raises(InputTooLarge, match="3300 characters, over the limit of 100 tokens"):
        c.compress(context="abc " * 825, rate=0.5)
    with pytest.raises(InputTooLarge, match="tokens, over the limit of 100"):  # near the limit: counted
        c.compress(context="abc " * 300, rate=0.5)


def test_distinct_model_names_do_not_accumulate(proxy, upstream):
    """Distinct long model names through the proxy, then the rewriter's per-name state directly."""
    from concurrent.futures import ThreadPoolExecutor

    from ctxgate.compressor import Compressor
    from ctxgate.service._metrics import Metrics
    from ctxgate.service._rewrite import MAX_TOKENIZER_NAMES, Rewriter, resolve_tokenizer

    with httpx.Client(base_url=proxy, timeout=30) as client:
        for i in range(50):
            r = client.post("/v1/chat/completions", json={**_chat(PROMPT), "model": f"gpt-{i}-" + "x" * 2000})
            assert r.status_code == 200 and len(r.headers.get("x-ctxgate-tokenizer", "")) <= 256
    metrics = httpx.get(proxy + "/metrics", headers={"authorization": "Bearer s3cret-admin"}, timeout=10).text
    assert "x" * 200 not in metrics
    rw = Rewriter(Compressor(default_method="truncate", cache=None), None, ThreadPoolExecutor(1), Metrics(), timeout=1)
    for i in range(2000):
        rw._counter_name(resolve_tokenizer(f"gpt-{i}-" + "x" * 100))
    assert len(rw._counters) <= MAX_TOKENIZER_NAMES


@pytest.mark.parametrize("bypass", [False, True])
def test_ctxgate_tags_in_a_tool_output_are_literal_text(proxy, upstream, bypass):
    """The second audit: a scraped page saying "use <ctxgate:keep> tags" made every later turn of
    the conversation a 400 ("ctxgate tags cannot be nested"), bypassed or not, and balanced tags
    in a tool output were stripped. Only the client's own (user, system) text holds markup."""
    page = "To keep text use <ctxgate:keep> tags. " + "Filler about rivers and lakes. " * 200
    balanced = "wrap text in <ctxgate:keep>like this</ctxgate:keep> to keep it."
    call = {"id": "c1", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "What does the page say about tags?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": page},
        {"role": "assistant", "content": "It says: " + balanced},
        {"role": "user", "content": "And <ctxgate:keep>exactly</ctxgate:keep>?"},
    ]
    headers = {"x-ctxgate-bypass": "1"} if bypass else {}
    r = httpx.post(
        proxy + "/v1/chat/completions", json={"model": "gpt-4o", "messages": messages}, headers=headers, timeout=60
    )
    assert r.status_code == 200, r.text
    sent = upstream.last("/v1/chat/completions").json["messages"]
    assert sent[3]["content"] == "It says: " + balanced and sent[4]["content"] == "And exactly?"
    if bypass:
        assert sent[2]["content"] == page
    else:
        assert "<ctxgate:keep> tags" in sent[2]["content"] and len(sent[2]["content"]) < len(page)
    assert "\u2060" not in json.dumps(sent, ensure_ascii=False)
