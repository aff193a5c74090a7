"""Property-based tests (hypothesis, bounded examples): random markup, text, JSON bodies, headers and
Unicode through the parsers and the real routes. Invariants: a client error is never a 5xx, every
request gets a response, /healthz stays fast, and a bypassed body reaches the upstream unchanged."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctxgate.compressor import InvalidRequest, find_protected, parse_markup

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)
HTTP_FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)

# pieces that make markup parsing and span finding work hard
_PIECES = [
    "<ctxgate:keep>",
    "</ctxgate:keep>",
    "<ctxgate:compress",
    "</ctxgate:compress>",
    " rate=0.5",
    ' a="x"',
    " rate='0.2'",
    ">",
    "<",
    "/",
    '"',
    "'",
    "=",
    " ",
    "\n\n",
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "`",
    "```\n",
    "https://x.io/a",
    "1,000.5",
    "snake_case",
    "CamelCase",
    "é",
    "中文",
    "\u200b",
    "\x00",
    "word",
]
texts = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=60).map("".join)


@FUZZ
@given(texts)
def test_markup_parses_or_raises_invalid_request_in_linear_time(text):
    t0 = time.perf_counter()
    try:
        m = parse_markup(text)
    except InvalidRequest:
        pass
    else:
        for r in m.keep + m.compress:
            assert 0 <= r.start <= r.end <= len(m.text)
    assert time.perf_counter() - t0 < 0.5


@FUZZ
@given(texts)
def test_protected_spans_are_sorted_disjoint_and_inside_the_text(text):
    spans = find_protected(text)
    for a, b in zip(spans, spans[1:]):
        assert a.end <= b.start
    assert all(0 <= s.start < s.end <= len(text) for s in spans)


# ------------------------------------------------------------------ through the real routes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "system", "assistant", "tool", "x", 5]),
            "content": st.one_of(texts, json_values),
        }
    ),
    max_size=4,
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"model": st.one_of(st.text(max_size=40), json_values), "messages": messages},
        optional={
            "ctxgate": json_values,
            "stream": st.booleans(),
            "max_tokens": json_values,
            "system": st.one_of(texts, json_values),
        },
    ),
    st.fixed_dictionaries(
        {"context": st.one_of(texts, st.lists(texts, max_size=5), json_values)},
        optional={
            "question": json_values,
            "rate": json_values,
            "method": json_values,
            "target_tokens": json_values,
            "tokenizer": json_values,
            "options": json_values,
        },
    ),
    st.fixed_dictionaries(
        {"messages": st.one_of(messages, json_values)},
        optional={"config": json_values, "token_budget": json_values, "model": json_values},
    ),
)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
control_headers = st.dictionaries(
    st.sampled_from(["x-ctxgate-rate", "x-ctxgate-method", "x-ctxgate-bypass", "x-ctxgate-question", "x-anything"]),
    header_values,
    max_size=3,
)


@pytest.fixture(scope="module")
def fuzz_proxy(test_upstream):
    from tests.helpers.servers import proxy_settings, run_sidecar

    s = proxy_settings(test_upstream.url, policy={"min_tokens": 20}, compress_timeout=5)
    with run_sidecar(s) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def _healthy(client: httpx.Client) -> None:
    t0 = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    assert time.perf_counter() - t0 < 2.0


@pytest.mark.models
@HTTP_FUZZ
@given(
    body=bodies, headers=control_headers, path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/compress"])
)
def test_random_bodies_and_headers_never_get_a_5xx(fuzz_proxy, upstream, body, headers, path):
    r = fuzz_proxy.post(
        path, content=json.dumps(body).encode(), headers={"content-type": "application/json", **headers}
    )
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        err = r.json()
        assert "error" in err  # the provider's own error shape
    for key, value in r.headers.items():
        assert value.isascii() and "\n" not in value, key
    _healthy(fuzz_proxy)


@HTTP_FUZZ
@given(raw=st.binary(max_size=200), path=st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1/compress"]))
def test_random_bytes_are_a_4xx(fuzz_proxy, upstream, raw, path):
    r = fuzz_proxy.post(path, content=raw, headers={"content-type": "application/json"})
    try:
        json.loads(raw)
        valid = True
    except ValueError:
        valid = False
    assert r.status_code < 500 and (valid or r.status_code == 400), (raw, r.status_code)


@HTTP_FUZZ
@given(
    content=st.text(max_size=300).filter(lambda t: "ctxgate:" not in t.lower()),
    model=st.text(max_size=20),
    extra=st.dictionaries(st.text(min_size=1, max_size=6).map(lambda k: "x_" + k), json_values, max_size=3),
)
def test_bypassed_bodies_reach_the_upstream_byte_for_byte(fuzz_proxy, upstream, content, model, extra):
    raw = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": content}], **extra}, ensure_ascii=False
    ).encode()
    upstream.clear()
    r = fuzz_proxy.post(
        "/v1/chat/completions", content=raw, headers={"content-type": "application/json", "x-ctxgate-bypass": "1"}
    )
    assert r.status_code == 200 and r.headers["x-ctxgate-cache"] == "bypass"
    assert upstream.last().raw == raw
