"""``create_app(settings) -> Litestar`` and the lifespan that owns every long-lived resource.

Nothing is created at import time. The lifespan opens the cache, the Compressor, the compression
executor and the upstream session, and starts loading the models in a thread: the
server accepts connections (``/healthz`` answers) at once, ``/readyz`` turns 200 once the models are
loaded, and until then the proxy forwards uncompressed (fail-open reason ``not_ready``).
"""

from __future__ import annotations

import gc
import logging
import threading
import traceback
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import httpx
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from ctxgate.compressor import Compressor, CtxgateError

from ._access import ADMIN_PREFIXES, Hosts, admin_ok, path_of
from ._cache import build_cache
from ._config import Settings, load_settings
from ._context import Context
from ._errors import ProxyError, error_body, provider_for, status_for
from ._local import LocalModel
from ._metrics import Metrics
from ._rewrite import Rewriter
from ._upstream import Upstream
from ._windows import Windows
from .fidelity import Fidelity

log = logging.getLogger("ctxgate.service")


def _load(ctx: Context) -> None:
    try:
        if ctx.local is not None:
            ctx.local.load()
        if ctx.settings.warm_up:
            ctx.rewriter.warm()
        else:
            ctx.rewriter.ready.set()
        # The models leave ~350k long-lived objects that every full collection would rescan: 200-400 ms
        # pauses of the event loop under load (measured at 100 streams). Freeze them out of the GC.
        gc.collect()
        gc.freeze()
        ctx.metrics.ready.set(1)
        log.info("ctxgate models loaded; ready")
    except Exception as exc:  # surfaced by /readyz; the proxy keeps failing open meanwhile
        ctx.load_error = f"{type(exc).__name__}: {exc}"
        log.error("loading models failed: %s", ctx.load_error)
    finally:
        ctx.loaded.set()


@asynccontextmanager
async def _lifespan(app: Litestar) -> AsyncIterator[None]:
    s: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    cache = build_cache(s, on_error=lambda op: metrics.cache_errors.labels(op).inc())
    compressor = Compressor(
        scorer=s.scorer,
        embedder=s.embedder,
        default_method=s.default_method,
        cache=cache,
        max_input_tokens=s.max_input_tokens,
        device=s.device,
    )
    # one thread: the models take one call at a time (compressor's lock); parallelism is serve --workers
    executor = ThreadPoolExecutor(1, thread_name_prefix="ctxgate-compress")
    rewriter = Rewriter(compressor, cache, executor, metrics, timeout=s.compress_timeout)
    openai_base, anthropic_base = s.upstream_urls()
    upstream = Upstream.open(
        timeout=s.upstream_timeout,
        connect_timeout=s.connect_timeout,
        max_connections=s.max_connections,
        env_proxy=not s.embedded,
        openai_base=openai_base,
        anthropic_base=anthropic_base,
        metrics=metrics,
    )
    # shadow checks are background, non-streaming calls with their own bounded concurrency
    shadow_client = httpx.AsyncClient(
        timeout=httpx.Timeout(s.upstream_timeout, connect=s.connect_timeout),
        follow_redirects=False,
        trust_env=not s.embedded,
    )
    ctx = Context(
        s,
        metrics,
        compressor,
        rewriter,
        upstream,
        executor,
        cache,
        Fidelity(s, metrics, shadow_client, upstream.url),
        LocalModel(s.local_model, s.local_max_tokens, s.device) if s.embedded else None,
    )
    ctx.windows = Windows(s.context_windows, upstream)
    await ctx.fidelity.start()
    app.state.ctx = ctx
    threading.Thread(target=_load, args=(ctx,), name="ctxgate-load", daemon=True).start()
    try:
        yield
    finally:
        await ctx.fidelity.close()  # cancels shadow checks in flight, then flushes the store
        await upstream.close()
        await shadow_client.aclose()
        executor.shutdown(wait=False, cancel_futures=True)
        if ctx.local is not None:
            ctx.local.close()
        if cache is not None:
            cache.close()


def _http_error(request: Request, exc: HTTPException) -> Response:
    """Litestar's own errors (413 body too large, 404, 405) in the route's provider format."""
    status = exc.status_code
    message = exc.detail if status != 413 else "the request body is over the size limit (max_body_bytes)"
    return Response(
        error_body(provider_for(path_of(request)), status, message), status_code=status, media_type="application/json"
    )


def _client_error(request: Request, exc: Exception) -> Response:
    """ProxyError and the engine's own errors: their status (``status_for``), the route's format."""
    status = status_for(exc)
    if status >= 500:
        log.error("%s on %s", type(exc).__name__, path_of(request))
    return Response(
        error_body(provider_for(path_of(request)), status, str(exc), getattr(exc, "param", None)),
        status_code=status,
        media_type="application/json",
    )


def _internal_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected: a provider-format 500 (the type is logged, never the request)."""
    # the frames, not the message: an exception message may quote request text
    log.error(
        "unhandled %s on %s\n%s", type(exc).__name__, path_of(request), "".join(traceback.format_tb(exc.__traceback__))
    )
    return Response(
        error_body(provider_for(path_of(request)), 500, f"internal error ({type(exc).__name__})"),
        status_code=500,
        media_type="application/json",
    )


_COUNTED = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "messages",
    "/v1/models": "models",
    "/v1/compress": "compress",
}


_JSON_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/messages", "/v1/compress", "/local/v1/chat/completions", "/local/v1/messages"}
)


async def _count(message, scope) -> None:
    """The one place requests are counted, by route and the status actually sent."""
    if message["type"] == "http.response.start" and (route := _COUNTED.get(scope.get("path", ""))):
        scope["app"].state.metrics.requests.labels(route, str(message["status"])).inc()


def _guard(settings: Settings):
    """Host check (DNS rebinding) and the admin token, before any handler runs."""
    hosts = Hosts(settings.allowed_hosts_for())
    token = settings.admin_token.encode() if settings.admin_token else None

    async def guard(request: Request) -> Response | None:
        if not hosts.allows(request.headers.get("host")):
            return Response(
                error_body(provider_for(path_of(request)), 400, "this Host is not allowed (allowed_hosts)"),
                status_code=400,
                media_type="application/json",
            )
        encoding = request.headers.get("content-encoding", "").strip().lower()
        if encoding not in ("", "identity") and request.method == "POST" and path_of(request) in _JSON_ROUTES:
            # the body is parsed and re-encoded here: a gzip body read as JSON was a confusing 400, and
            # a plain one labelled gzip went upstream still labelled gzip (second audit)
            return Response(
                error_body(provider_for(path_of(request)), 415, "send the request body without a content-encoding"),
                status_code=415,
                media_type="application/json",
            )
        if token is not None and path_of(request).startswith(ADMIN_PREFIXES) and not admin_ok(request, token):
            return Response(
                error_body(
                    "openai", 401, "the admin routes need the admin token (Authorization: Bearer <admin_token>)"
                ),
                status_code=401,
                media_type="application/json",
                headers={"www-authenticate": "Bearer"},
            )
        return None

    return guard


# HTTP client libraries that log every request's full URL at INFO: the shadow calls' URLs carry the
# client's query string, which may hold a key (Azure's ?api-key=), so at most their warnings are logged
_URL_LOGGERS = ("httpx", "httpcore")


def _quiet_url_loggers() -> None:
    """Their own level, not the effective one: logging configured after the app (or a test's
    caplog) lowers the root's level, and the child would follow it."""
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


def create_app(settings: Settings | None = None) -> Litestar:
    """The sidecar app. ``settings`` default: ``load_settings()`` (config file and CTXGATE_* env)."""
    from . import handlers

    settings = settings or load_settings()
    _quiet_url_loggers()
    return Litestar(
        route_handlers=handlers.ROUTES,
        lifespan=[_lifespan],
        state=State({"settings": settings, "metrics": Metrics()}),
        request_max_body_size=settings.max_body_bytes,
        exception_handlers={
            HTTPException: _http_error,
            ProxyError: _client_error,
            CtxgateError: _client_error,
            Exception: _internal_error,
        },
        before_request=_guard(settings),
        before_send=[_count],
        openapi_config=None,
        logging_config=None,
    )
