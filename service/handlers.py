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
import threading
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST

from compressor import CompressRequest, InputTooLarge, InvalidRequest

from . import _local
from ._app import Context
from ._control import Control, parse_control
from ._errors import ProxyError, error_body
from ._policy import plan_for, strip_slots, strip_tags
from ._rewrite import Outcome, resolve_tokenizer
from ._upstream import ClientGone, until_disconnect
from .fidelity import ROUTES as FIDELITY_ROUTES
from .fidelity import Candidate

JSON = "application/json"


def _ctx(request: Request) -> Context:
    return request.app.state.ctx


def _error(provider: str, exc: ProxyError) -> Response:
    return Response(error_body(provider, exc.status, exc.message, exc.param), status_code=exc.status, media_type=JSON)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(obj), status_code=status, media_type=JSON)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProxyError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ProxyError(400, "the request body must be a JSON object")
    return body


def _outcome_headers(o: Outcome) -> dict[str, str]:
    h = {"x-ctxgate-cache": o.cache}
    if o.tokens_before is not None and o.tokens_after is not None:
        h["x-ctxgate-tokens-before"] = str(o.tokens_before)
        h["x-ctxgate-tokens-after"] = str(o.tokens_after)
        h["x-ctxgate-ratio"] = f"{o.tokens_before / o.tokens_after:.4f}" if o.tokens_after else "1.0000"
        if o.tokenizer:
            h["x-ctxgate-tokenizer"] = o.tokenizer
        if o.estimated:
            h["x-ctxgate-tokens-estimated"] = "true"
    if o.fail_open:
        h["x-ctxgate-fail-open"] = o.fail_open
    return h


async def _rewrite_body(ctx: Context, route: str, raw: bytes,
                        headers) -> tuple[bytes, dict[str, str], Candidate | None]:
    """The body to forward (compressed per policy, ctxgate field and tags removed), our headers, and
    the shadow-check candidate when this request was drawn for one."""
    body = _decode(raw)
    had_field = "ctxgate" in body
    ctl = parse_control(headers, body)
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    configured = ctx.settings.policy_for(route, model)
    policy = ctl.apply(ctx.fidelity.policy(route, model, configured))   # a request's own rate beats the controller
    if ctl.bypass or not policy.enabled:
        if strip_tags(route, body, raw) or had_field:
            return msgspec.json.encode(body), {"x-ctxgate-cache": "bypass"}, None
        return raw, {"x-ctxgate-cache": "bypass"}, None    # byte-for-byte: nothing of ours inside
    plan = plan_for(route, body, ctl.question)
    outcome = await ctx.rewriter.rewrite(route, plan, policy, explicit_question=ctl.question,
                                         tokenizer=policy.tokenizer or resolve_tokenizer(model))
    cand = ctx.fidelity.candidate(route, model, ctx.rewriter.method_name(policy.method), policy, configured.rate,
                                  ctl.rate is not None, outcome.tokens_before, outcome.tokens_after)
    return msgspec.json.encode(body), _outcome_headers(outcome), cand


async def _proxy(request: Request, route: str, provider: str, path: str) -> Response:
    ctx = _ctx(request)
    raw = await request.body()
    try:
        content, extra, cand = await _rewrite_body(ctx, route, raw, request.headers)
    except ProxyError as exc:
        ctx.metrics.requests.labels(route, str(exc.status)).inc()
        return _error(provider, exc)
    except InvalidRequest as exc:  # bad ctxgate markup
        ctx.metrics.requests.labels(route, "400").inc()
        return _error(provider, ProxyError(400, str(exc)))
    try:
        response = await ctx.upstream.forward(request, route=route, provider=provider, path=path, content=content,
                                              extra_headers=extra)
    except ClientGone:
        ctx.metrics.requests.labels(route, "499").inc()
        return Response(b"", status_code=499)
    ctx.metrics.requests.labels(route, str(response.status_code)).inc()
    if cand is not None:
        response = ctx.fidelity.watch(cand, request.headers, request.url.query, raw, response)
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
    ctx.metrics.requests.labels("models", str(response.status_code)).inc()
    return response


# ------------------------------------------------------------------------ /v1/compress


@post("/v1/compress", status_code=200)
async def compress(request: Request) -> Response:
    """RAG form ``{context, question?, rate?|target_tokens?, method?, tokenizer?, options?}`` -> CompressResult;
    messages form ``{messages, model, token_budget?, config?}`` -> ``{messages, tokens_before, ...}``."""
    ctx = _ctx(request)
    try:
        body = _decode(await request.body())
        if "context" in body:
            response = await _compress_rag(ctx, body)
        elif "messages" in body:
            response = await _compress_messages(ctx, body)
        else:
            raise ProxyError(400, "give either 'context' (RAG form) or 'messages' (headroom form)")
    except ProxyError as exc:
        response = _error("openai", exc)
    except InputTooLarge as exc:
        response = _error("openai", ProxyError(413, str(exc)))
    except InvalidRequest as exc:
        response = _error("openai", ProxyError(400, str(exc)))
    ctx.metrics.requests.labels("compress", str(response.status_code)).inc()
    return response


async def _compress_rag(ctx: Context, body: dict[str, Any]) -> Response:
    try:
        req = msgspec.convert(body, CompressRequest)              # __post_init__ validates the budget
    except msgspec.ValidationError as exc:
        raise ProxyError(400, f"bad RAG compress request: {exc}") from None
    if not ctx.rewriter.ready.is_set():
        raise ProxyError(503, "models are still loading; see /readyz")
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(ctx.executor, ctx.compressor.compress, req)
    if result.cache != "hit" and result.original_tokens:
        ctx.metrics.tokens_before.labels("compress").inc(result.original_tokens)
        ctx.metrics.tokens_after.labels("compress").inc(result.compressed_tokens)
        ctx.metrics.tokens_saved.labels("compress").inc(max(0, result.original_tokens - result.compressed_tokens))
    ctx.metrics.compression_seconds.labels("compress").observe(result.seconds)
    return Response(msgspec.json.encode(result), media_type=JSON)


async def _compress_messages(ctx: Context, body: dict[str, Any]) -> Response:
    config = body.get("config") or {}
    if not isinstance(config, dict):
        raise ProxyError(400, "config must be an object", param="config")
    config = dict(config)
    provider = config.pop("provider", None) or _guess_provider(body)
    if provider not in ("openai", "anthropic"):
        raise ProxyError(400, "config.provider must be 'openai' or 'anthropic'", param="config.provider")
    budget = body.get("token_budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ProxyError(400, f"token_budget must be a positive integer, got {budget!r}", param="token_budget")
    ctl = parse_control({}, {"ctxgate": config}) if config else Control()
    route = "messages" if provider == "anthropic" else "chat"
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    policy = ctl.apply(ctx.settings.policy_for("compress", model))
    tokenizer = policy.tokenizer or resolve_tokenizer(model)
    doc = {"messages": body.get("messages"), **({"system": body["system"]} if "system" in body else {})}
    plan = plan_for(route, doc, ctl.question)
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
        total, _ = await asyncio.to_thread(ctx.rewriter.count_plan, plan, policy, tokenizer)
        outcome.tokens_before = outcome.tokens_after = total
    else:
        outcome = await ctx.rewriter.rewrite("compress", plan, policy, tokenizer=tokenizer,
                                             explicit_question=ctl.question)
    before, after = outcome.tokens_before, outcome.tokens_after
    out: dict[str, Any] = {
        "messages": doc["messages"], "tokens_before": before, "tokens_after": after,
        "tokens_saved": None if before is None or after is None else before - after,
        # headroom's convention: after / before (0.25 = 4x smaller); `ratio` is ours, before / after
        "compression_ratio": round(after / before, 4) if before and after is not None else 1.0,
        "ratio": round(before / after, 4) if before and after else 1.0,
        "transforms_applied": [] if ctl.bypass or outcome.cache == "off"
        else [f"ctxgate:{ctx.rewriter.method_name(policy.method)}"],
        "method": ctx.rewriter.method_name(policy.method), "rate": policy.rate, "cache": outcome.cache,
        "fail_open": outcome.fail_open, "seconds": round(outcome.seconds, 6),
    }
    if "system" in doc:
        out["system"] = doc["system"]
    if budget is not None and after is not None and after > budget:
        out["warnings"] = [f"{after} tokens is over token_budget={budget}: the system prompt, questions and "
                           "short messages are never compressed"]
    return _json(out)


def _guess_provider(body: dict[str, Any]) -> str:
    if "system" in body:
        return "anthropic"
    for m in body.get("messages") or []:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and any(isinstance(b, dict) and b.get("type") in ("tool_result", "tool_use")
                                             for b in content):
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
    return Response(_ctx(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


# -------------------------------------------------------------------- embedded upstream


def _local_model(request: Request, provider: str) -> _local.LocalModel:
    local = _ctx(request).local
    if local is None:
        raise ProxyError(404, "the embedded model is only served when no upstream is configured")
    if not local.ready.is_set():
        raise ProxyError(503, f"the local model {local.name} is still loading; see /readyz")
    return local


async def _local_generate(request: Request, provider: str) -> Response:
    try:
        local = _local_model(request, provider)
        body = _decode(await request.body())
        msgs = _local.anthropic_messages(body) if provider == "anthropic" else _local.openai_messages(body)
        requested = body.get("max_tokens") if provider == "anthropic" else body.get(
            "max_completion_tokens", body.get("max_tokens"))
        max_new = local.budget(requested)
        ids = await asyncio.to_thread(local.prompt_ids, msgs, max_new)
    except ProxyError as exc:
        return _error(provider, exc)
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
    out = _local.anthropic_response(result, local.name) if provider == "anthropic" else _local.openai_response(
        result, local.name)
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
        return _error("openai", ProxyError(404, "no embedded model: an upstream is configured"))
    if "anthropic-version" in request.headers:
        return _json({"data": [{"type": "model", "id": local.name, "display_name": local.name,
                                "created_at": "2024-11-01T00:00:00Z"}],
                      "has_more": False, "first_id": local.name, "last_id": local.name})
    return _json({"object": "list", "data": [{"id": local.name, "object": "model", "created": 0,
                                              "owned_by": "ctxgate-local"}]})


ROUTES = [chat_completions, messages, models, compress, healthz, readyz, metrics,
          local_chat, local_messages, local_models, *FIDELITY_ROUTES]
