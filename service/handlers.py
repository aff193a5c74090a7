"""Every HTTP route of the sidecar. Handlers decide WHAT to compress (policy) and call the engine;
all scoring lives in ``compressor``.

Proxy:    POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic), GET /v1/models
Engine:   POST /v1/compress (headroom-compatible messages form, and the RAG form)
Ops:      GET /healthz, GET /readyz, GET /metrics
Fidelity: GET /v1/fidelity, GET /v1/fidelity/series, GET /dashboard (handlers in ``fidelity/_routes.py``)
Embedded: POST /local/v1/chat/completions, POST /local/v1/messages, GET /local/v1/models
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST

from ctxgate.compressor import CompressRequest, InputTooLarge, InvalidRequest

from . import _expand, _local
from ._config import Policy
from ._context import Context
from ._control import Control, parse_control
from ._errors import ProxyError
from ._labels import header_value, model_label
from ._policy import Plan, plan_for, strip_slots, strip_tags
from ._rewrite import Fit, Outcome, resolve_tokenizer
from ._upstream import ClientGone, until_disconnect
from ._windows import request_reserve
from .fidelity import ROUTES as FIDELITY_ROUTES
from .fidelity import Candidate

log = logging.getLogger("ctxgate.service")

JSON = "application/json"


# Bodies past this size are decoded, planned and re-encoded in a worker thread: a 32 MiB body takes
# ~100 ms of CPU, which on the event loop would stall every other request. Below it the thread hop
# (~50 us) costs more than the work.
OFFLOAD_BYTES = 64 * 1024
MAX_DEPTH_MESSAGE = "the request body is nested too deeply"


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


def _json(obj: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(obj), status_code=status, media_type=JSON)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProxyError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:  # msgspec's own guard, at ~1,000 levels
        raise ProxyError(400, MAX_DEPTH_MESSAGE) from None
    if not isinstance(body, dict):
        raise ProxyError(400, "the request body must be a JSON object")
    return body


async def _off_loop(size: int, fn, *args):
    """``fn(*args)`` on the loop for small inputs, in a worker thread for big ones."""
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _outcome_headers(o: Outcome) -> dict[str, str]:
    h = {"x-ctxgate-cache": o.cache}
    if o.tokens_before is not None and o.tokens_after is not None:
        h["x-ctxgate-tokens-before"] = str(o.tokens_before)
        h["x-ctxgate-tokens-after"] = str(o.tokens_after)
        h["x-ctxgate-ratio"] = f"{o.tokens_before / o.tokens_after:.4f}" if o.tokens_after else "1.0000"
        if o.tokenizer:
            h["x-ctxgate-tokenizer"] = header_value(o.tokenizer)
        if o.estimated:
            h["x-ctxgate-tokens-estimated"] = "true"
    if o.fail_open:
        h["x-ctxgate-fail-open"] = o.fail_open
    if o.segments:
        h["x-ctxgate-segments"] = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in sorted(o.segments.items()))
        h["x-ctxgate-compress-seconds"] = f"{o.seconds:.3f}"
    if o.fit is not None:
        h["x-ctxgate-fit-context"] = o.fit.replace("_", "-")  # fitted | too-long
        h["x-ctxgate-context-window"] = str(o.window)
    return h


@dataclass
class _Prepared:
    """A proxied request after the CPU-bound part: decoded, validated, planned."""

    body: dict[str, Any]
    forward: bytes | None  # set when nothing is compressed: the bytes to send as they are
    ctl: Control | None = None
    model: str = ""
    configured: Policy | None = None
    policy: Policy | None = None
    plan: Plan | None = None
    items: list | None = None


def _prepare(ctx: Context, route: str, raw: bytes, headers) -> _Prepared:
    body = _decode(raw)
    had_field = "ctxgate" in body
    ctl = parse_control(headers, body)
    model = model_label(body.get("model"))
    configured = ctx.settings.policy_for(route, model)
    policy = ctl.apply(ctx.fidelity.policy(route, model, configured))  # a request's own rate beats the controller
    if ctl.bypass or not policy.enabled:
        if strip_tags(route, body, raw) or had_field:
            return _Prepared(body, msgspec.json.encode(body))
        return _Prepared(body, raw)  # byte-for-byte: nothing of ours inside
    plan = plan_for(route, body, ctl.question)
    return _Prepared(body, None, ctl, model, configured, policy, plan, ctx.rewriter.prepare(plan, policy))


async def _rewrite_body(
    ctx: Context, route: str, raw: bytes, headers
) -> tuple[bytes, dict[str, str], Candidate | None, tuple[dict[str, Any], _expand.Expansions] | None]:
    """The body to forward (compressed per policy, ctxgate field and tags removed), our headers,
    the shadow-check candidate when this request was drawn for one, and, when the ctxgate_expand
    tool was added, the decoded body and what its calls may get back (the proxy answers them)."""
    prep: _Prepared = await _off_loop(len(raw), _prepare, ctx, route, raw, headers)
    if prep.forward is not None:
        return prep.forward, {"x-ctxgate-cache": "bypass"}, None, None
    assert prep.ctl is not None and prep.policy is not None and prep.plan is not None and prep.configured
    policy, ctl = prep.policy, prep.ctl
    fit = None
    if policy.fit_context and ctx.windows is not None:
        window = await ctx.windows.window("anthropic" if route == "messages" else "openai", prep.model, headers)
        if window is not None:
            fit = Fit(window.tokens, request_reserve(route, prep.body))
    outcome = await ctx.rewriter.rewrite(
        route,
        prep.plan,
        policy,
        explicit_question=ctl.question,
        tokenizer=policy.tokenizer or resolve_tokenizer(prep.model),
        items=prep.items,
        fit=fit,
    )
    cand = ctx.fidelity.candidate(
        route,
        prep.model,
        ctx.rewriter.method_name(policy.method),
        policy,
        prep.configured.rate,
        ctl.rate is not None,
        outcome.tokens_before,
        outcome.tokens_after,
    )
    expanding = None
    if policy.expand and outcome.expand_refs and _expand.offer(route, prep.body):
        expanding = (prep.body, _expand.Expansions(frozenset(outcome.expand_refs)))
    content = await _off_loop(len(raw), msgspec.json.encode, prep.body)
    headers = _outcome_headers(outcome)
    headers["x-ctxgate-question"] = prep.plan.question_source  # explicit | found | none
    return content, headers, cand, expanding


async def _proxy(request: Request, route: str, provider: str, path: str) -> Response:
    """Client errors raise (rendered once, by the app's exception handlers, in the route's format)."""
    ctx = _ctx(request)
    raw = await request.body()
    content, extra, cand, expanding = await _rewrite_body(ctx, route, raw, request.headers)
    try:
        if expanding is not None:
            response = await _with_expand(ctx, request, route, provider, path, *expanding, content, extra)
        else:
            response = await ctx.upstream.forward(
                request, route=route, provider=provider, path=path, content=content, extra_headers=extra
            )
    except ClientGone:
        return Response(b"", status_code=499)
    if cand is not None:
        response = ctx.fidelity.watch(
            cand, request.headers, request.scope.get("query_string", b"").decode("latin-1"), raw, response
        )
    return response


async def _with_expand(
    ctx: Context,
    request: Request,
    route: str,
    provider: str,
    path: str,
    body: dict[str, Any],
    allowed: _expand.Expansions,
    content: bytes,
    extra: dict[str, str],
) -> Response:
    """Upstream calls until the model stops calling ctxgate_expand (at most MAX_ROUNDS answered).
    Each response is read whole (a stream too: it is then returned as one buffered body, so the
    client still parses an ordinary stream), which is the latency this option costs."""
    streamed = body.get("stream") is True
    for round_ in range(_expand.MAX_ROUNDS + 1):
        response = await ctx.upstream.fetch(
            request, route=route, provider=provider, path=path, content=content, extra_headers=extra
        )
        if response.status_code != 200 or round_ == _expand.MAX_ROUNDS:
            return response
        raw = response.content if isinstance(response.content, bytes) else b""
        turn = await _off_loop(len(raw), _expand.read_turn, route, raw, streamed)
        if turn is None or not turn.calls or turn.other_tools:
            return response
        results = []
        for call in turn.calls:
            reply = allowed.refusal(call.ref)
            if reply is None:
                original = await asyncio.to_thread(ctx.compressor.expand, call.ref)
                reply = allowed.deliver(call.ref, original)
            found = reply is not _expand.UNKNOWN
            ctx.metrics.expansions.labels(route, "yes" if found else "no").inc()
            results.append(reply)
        body = _expand.follow_up(route, body, turn, results)
        if round_ == _expand.MAX_ROUNDS - 1:
            body = _expand.last_round(route, body)
        content = await _off_loop(len(content), msgspec.json.encode, body)
    return response


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response:
    return await _proxy(request, "chat", "openai", "/chat/completions")


@post("/v1/messages", status_code=200)
async def messages(request: Request) -> Response:
    return await _proxy(request, "messages", "anthropic", "/v1/messages")


@get("/v1/models")
async def models(request: Request) -> Response:
    ctx = _ctx(request)
    anthropic = "anthropic-version" in request.headers
    provider, path = ("anthropic", "/v1/models") if anthropic else ("openai", "/models")
    try:
        response = await ctx.upstream.forward(request, route="models", provider=provider, path=path, method="GET")
    except ClientGone:
        return Response(b"", status_code=499)
    return response


# ------------------------------------------------------------------------ /v1/compress


@post("/v1/compress", status_code=200)
async def compress(request: Request) -> Response:
    """RAG form ``{context, question?, rate?|target_tokens?, method?, tokenizer?, options?}`` -> CompressResult;
    messages form ``{messages, model, token_budget?, config?}`` -> ``{messages, tokens_before, ...}``.

    Same time budget as the proxy (``compress_timeout``; then the input comes back uncompressed, with
    ``fail_open``), and a client that hangs up takes its queued work with it."""
    ctx = _ctx(request)
    raw = await request.body()
    body = await _off_loop(len(raw), _decode, raw)
    if "context" in body:
        work = _compress_rag(ctx, body)
    elif "messages" in body:
        work = _compress_messages(ctx, body)
    else:
        raise ProxyError(400, "give either 'context' (RAG form) or 'messages' (headroom form)")
    try:
        return await until_disconnect(request, work)
    except ClientGone:
        return Response(b"", status_code=499)


def _allowed_tokenizer(ctx: Context, name: str | None, param: str) -> str | None:
    """A tokenizer a request may name: an embedded model, a known provider name, or one the config
    names. Never a local path or a Hub id: those would load files the client picks."""
    if name is None:
        return None
    if resolve_tokenizer(name) is not None or name in ctx.settings.configured_tokenizers():
        return name
    raise ProxyError(
        400,
        f"{param} must be an embedded model, an OpenAI/Anthropic model or encoding name, or one the config names",
        param=param,
    )


async def _compress_rag(ctx: Context, body: dict[str, Any]) -> Response:
    try:
        req = msgspec.convert(body, CompressRequest)  # __post_init__ validates the budget
    except msgspec.ValidationError as exc:
        raise ProxyError(400, f"bad RAG compress request: {exc}") from None
    _allowed_tokenizer(ctx, req.tokenizer, "tokenizer")
    if not ctx.rewriter.ready.is_set():
        raise ProxyError(503, "models are still loading; see /readyz")
    run = _Once(ctx.compressor.compress, req)
    future = asyncio.get_running_loop().run_in_executor(ctx.executor, run)
    try:
        result = await asyncio.wait_for(asyncio.shield(future), ctx.settings.compress_timeout)
    except TimeoutError:
        run.cancel()
        result = await asyncio.to_thread(ctx.compressor.unchanged, req, "timeout")
        ctx.metrics.fail_open.labels("timeout").inc()
        return Response(msgspec.json.encode(result), media_type=JSON, headers={"x-ctxgate-fail-open": "timeout"})
    except asyncio.CancelledError:
        run.cancel()
        raise
    except (InvalidRequest, InputTooLarge):
        raise  # the client's to fix: a 4xx
    except Exception as exc:
        # a method whose model cannot load: the input back, as the proxy routes do, and not a 500
        # quoting the operator's model path (second audit); the log names the type only
        log.warning("/v1/compress failed open: %s", type(exc).__name__)
        result = await asyncio.to_thread(_unchanged, ctx, req)
        ctx.metrics.fail_open.labels("error").inc()
        return Response(msgspec.json.encode(result), media_type=JSON, headers={"x-ctxgate-fail-open": "error"})
    if result.cache != "hit" and result.original_tokens:
        ctx.metrics.tokens_before.labels("compress").inc(result.original_tokens)
        ctx.metrics.tokens_after.labels("compress").inc(result.compressed_tokens)
        ctx.metrics.tokens_saved.labels("compress").inc(max(0, result.original_tokens - result.compressed_tokens))
    ctx.metrics.compression_seconds.labels("compress").observe(result.seconds)
    return Response(msgspec.json.encode(result), media_type=JSON)


def _unchanged(ctx: Context, req: CompressRequest):
    """The fail-open answer, counted with the request's tokenizer or, when that is what cannot
    load, with the engine's default (the result's tokenizer field says which)."""
    try:
        return ctx.compressor.unchanged(req, "error")
    except Exception:
        return ctx.compressor.unchanged(msgspec.structs.replace(req, tokenizer=None), "error")


class _Once:
    """A call for the compression executor that is skipped if cancelled before it starts."""

    def __init__(self, fn, *args) -> None:
        self._fn, self._args = fn, args
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def __call__(self):
        if self._cancelled.is_set():
            return None
        return self._fn(*self._args)


async def _compress_messages(ctx: Context, body: dict[str, Any]) -> Response:
    config = body.get("config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ProxyError(400, "config must be an object", param="config")
    if not isinstance(body.get("messages"), list):
        raise ProxyError(400, "messages must be a list", param="messages")
    config = dict(config)
    provider = config.pop("provider", None) or _guess_provider(body)
    if provider not in ("openai", "anthropic"):
        raise ProxyError(400, "config.provider must be 'openai' or 'anthropic'", param="config.provider")
    budget = body.get("token_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ProxyError(
            400, f"token_budget must be a positive integer, got {str(budget)[:40]!r}", param="token_budget"
        )
    asked = config.pop("tokenizer", None)
    if asked is not None and not isinstance(asked, str):
        raise ProxyError(400, "config.tokenizer must be a string", param="config.tokenizer")
    ctl = parse_control({}, {"ctxgate": config}, prefix="config") if config else Control()
    route = "messages" if provider == "anthropic" else "chat"
    model = model_label(body.get("model"))
    policy = ctl.apply(ctx.settings.policy_for("compress", model))
    tokenizer = (
        _allowed_tokenizer(ctx, asked, "config.tokenizer")
        or _allowed_tokenizer(ctx, policy.tokenizer, "policy.tokenizer")
        or resolve_tokenizer(model)
    )
    doc = {"messages": body.get("messages"), **({"system": body["system"]} if "system" in body else {})}

    # a long message's last paragraph is never taken for the question here: LiteLLM's guardrail, for
    # one, withholds the user's question and sends only the documents
    def planned() -> tuple[Plan, list]:
        plan = plan_for(route, doc, ctl.question, guess_tail=False)
        return plan, ctx.rewriter.prepare(plan, policy)  # validates markup

    plan, items = await asyncio.to_thread(planned)
    if budget is not None and not ctl.bypass:
        total, compressible = await asyncio.to_thread(ctx.rewriter.count_plan, plan, policy, tokenizer)
        if total <= budget:
            ctl.bypass = True
        else:
            rate = (budget - (total - compressible)) / compressible if compressible else 1.0
            policy = msgspec.structs.replace(policy, rate=min(1.0, max(0.01, rate)))
    if ctl.bypass or not policy.enabled:
        strip_slots(plan.slots)
        outcome = Outcome()
    else:
        outcome = await ctx.rewriter.rewrite(
            "compress", plan, policy, tokenizer=tokenizer, explicit_question=ctl.question, items=items
        )
    if outcome.tokens_before is None or outcome.tokens_after is None:
        # bypassed, or failed open (some text went back uncompressed): count what is returned
        total, _ = await asyncio.to_thread(ctx.rewriter.count_plan, plan, policy, tokenizer)
        outcome.tokens_before = outcome.tokens_after = total
    before, after = outcome.tokens_before, outcome.tokens_after
    out: dict[str, Any] = {
        "messages": doc["messages"],
        "tokens_before": before,
        "tokens_after": after,
        "tokens_saved": before - after,
        # headroom's convention: after / before (0.25 = 4x smaller); `ratio` is ours, before / after
        "compression_ratio": round(after / before, 4) if before else 1.0,
        "ratio": round(before / after, 4) if before and after else 1.0,
        "transforms_applied": []
        if ctl.bypass or outcome.cache == "off"
        else [f"ctxgate:{ctx.rewriter.method_name(policy.method)}"],
        "method": ctx.rewriter.method_name(policy.method),
        "rate": policy.rate,
        "cache": outcome.cache,
        "fail_open": outcome.fail_open,
        "seconds": round(outcome.seconds, 6),
        "question": plan.question_source,
    }
    if "system" in doc:
        out["system"] = doc["system"]
    if budget is not None and after > budget:
        out["warnings"] = [
            f"{after} tokens is over token_budget={budget}: the system prompt, questions and "
            "short messages are never compressed"
        ]
    return _json(out)


def _guess_provider(body: dict[str, Any]) -> str:
    if "system" in body:
        return "anthropic"
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") in ("tool_result", "tool_use") for b in content
        ):
            return "anthropic"
    return "openai"


# ------------------------------------------------------------------------------ ops


@get("/healthz")
async def healthz() -> Response:
    return _json({"status": "ok"})


@get("/readyz")
async def readyz(request: Request) -> Response:
    ctx = _ctx(request)
    if ctx.ready:
        return _json({"status": "ready"})
    if ctx.load_error:
        return _json({"status": "failed", "error": ctx.load_error}, 503)
    return _json({"status": "loading"}, 503)


@get("/metrics")
async def metrics(request: Request) -> Response:
    # Litestar appends "; charset=utf-8" to text/* types: without the constant's own, it has one
    return Response(_ctx(request).metrics.render(), media_type=CONTENT_TYPE_LATEST.replace("; charset=utf-8", ""))


# -------------------------------------------------------------------- embedded upstream


def _local_model(request: Request, provider: str) -> _local.LocalModel:
    local = _ctx(request).local
    if local is None:
        raise ProxyError(404, "the embedded model is only served when no upstream is configured")
    if not local.ready.is_set():
        raise ProxyError(503, f"the local model {local.name} is still loading; see /readyz")
    return local


async def _local_generate(request: Request, provider: str) -> Response:
    local = _local_model(request, provider)
    body = _decode(await request.body())
    msgs = _local.anthropic_messages(body) if provider == "anthropic" else _local.openai_messages(body)
    requested = (
        body.get("max_tokens") if provider == "anthropic" else body.get("max_completion_tokens", body.get("max_tokens"))
    )
    max_new = local.budget(requested)
    ids = await asyncio.to_thread(local.prompt_ids, msgs, max_new)
    stop = threading.Event()
    if body.get("stream") is True:
        pieces = local.stream(ids, max_new, stop)
        if provider == "anthropic":
            gen = _local.anthropic_stream(pieces, local.name, len(ids))
        else:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            gen = _local.openai_stream(pieces, local.name, usage)
        return Stream(gen, media_type="text/event-stream", headers={"cache-control": "no-cache"})
    try:
        result = await until_disconnect(request, local.run(ids, max_new, stop))
    except ClientGone:
        stop.set()
        return Response(b"", status_code=499)
    out = (
        _local.anthropic_response(result, local.name)
        if provider == "anthropic"
        else _local.openai_response(result, local.name)
    )
    return _json(out)


@post("/local/v1/chat/completions", status_code=200)
async def local_chat(request: Request) -> Response:
    return await _local_generate(request, "openai")


@post("/local/v1/messages", status_code=200)
async def local_messages(request: Request) -> Response:
    return await _local_generate(request, "anthropic")


@get("/local/v1/models")
async def local_models(request: Request) -> Response:
    local = _ctx(request).local
    if local is None:
        raise ProxyError(404, "no embedded model: an upstream is configured")
    if "anthropic-version" in request.headers:
        return _json(
            {
                "data": [
                    {
                        "type": "model",
                        "id": local.name,
                        "display_name": local.name,
                        "created_at": "2024-11-01T00:00:00Z",
                    }
                ],
                "has_more": False,
                "first_id": local.name,
                "last_id": local.name,
            }
        )
    return _json(
        {"object": "list", "data": [{"id": local.name, "object": "model", "created": 0, "owned_by": "ctxgate-local"}]}
    )


ROUTES = [
    chat_completions,
    messages,
    models,
    compress,
    healthz,
    readyz,
    metrics,
    local_chat,
    local_messages,
    local_models,
    *FIDELITY_ROUTES,
]
