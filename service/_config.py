"""One settings object for the sidecar: defaults < config file (YAML or TOML) < ``CTXGATE_*`` env < flags.

Env vars: ``CTXGATE_<FIELD>`` for a top-level field (``CTXGATE_UPSTREAM``, ``CTXGATE_PORT``) and
``CTXGATE_<SECTION>__<FIELD>`` for a nested one (``CTXGATE_CACHE__BACKEND=redis``,
``CTXGATE_POLICY__RATE=0.3``). Env vars that name no field (``CTXGATE_HOME``, ``CTXGATE_DEVICE``...)
belong to other layers and are ignored here.

The upstreams are fixed here; nothing in a request can point the proxy at another host.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from ctxgate.compressor import ConfigError, InvalidRequest, checked_options

CacheBackend = Literal["memory", "sqlite", "redis", "off"]
Route = Literal["chat", "messages", "compress"]


class Policy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the proxy compresses and how hard. ``rate`` is the fraction of tokens to keep."""

    enabled: bool = True
    method: str = "auto"  # "auto" = the Compressor's default method (hybrid)
    rate: float | Literal["auto"] = 0.5  # "auto": the classifier keeps what it judges relevant
    min_tokens: int = 200  # texts shorter than this (target tokenizer) are left alone
    tool_results: bool = True  # OpenAI role=tool messages, Anthropic tool_result blocks
    user_messages: bool = True  # user text (the trailing question paragraph always stays verbatim)
    system_prompt: bool = True  # long system prompts: all but the first paragraph (documents, typically)
    tokenizer: str | None = None  # token accounting; default: the request's model when we know it
    # a prompt that would overflow its model's context window (with its max_tokens) is compressed
    # harder until it fits; see service/_windows.py for where the window comes from
    fit_context: bool = True
    # a segment that went upstream uncompressed (fail-open) stays uncompressed on later turns with
    # the same conversation prefix, so the provider's prompt cache keeps hitting
    sticky_uncompressed: bool = True
    # structured tool outputs keep their originals in the cache and the proxy offers the model a
    # ctxgate_expand tool to get omitted items back (each use costs a second upstream call)
    expand: bool = False
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class Rule(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Overrides for requests matching ``route`` and ``model`` (shell globs); later rules win."""

    route: str = "*"  # chat | messages | compress | *
    model: str = "*"
    enabled: bool | None = None
    method: str | None = None
    rate: float | Literal["auto"] | None = None
    min_tokens: int | None = None
    tool_results: bool | None = None
    user_messages: bool | None = None
    system_prompt: bool | None = None
    tokenizer: str | None = None
    fit_context: bool | None = None
    sticky_uncompressed: bool | None = None
    expand: bool | None = None
    options: dict[str, Any] | None = None

    def matches(self, route: str, model: str) -> bool:
        return fnmatch.fnmatchcase(route, self.route) and fnmatch.fnmatchcase(model or "", self.model)


class CacheSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    backend: CacheBackend = "sqlite"
    path: str | None = None  # sqlite file; default $CTXGATE_HOME/cache/segments.sqlite
    url: str | None = None  # redis://host:port/db
    max_entries: int = 100_000  # sqlite / memory bound (redis is bounded by ttl)
    ttl: float = 7 * 86400.0  # seconds
    memory_entries: int = 4096  # in-process LRU in front of sqlite/redis (0 disables it)
    timeout: float = 0.25  # redis: seconds per connect / command (then the look-up is a miss)
    breaker_failures: int = 3  # backend errors in a row that open the circuit breaker
    breaker_cooldown: float = 5.0  # seconds the backend is skipped before it is tried again


class FidelitySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Shadow checks and the adaptive rate (``service.fidelity``): a sample of compressed chat/messages
    requests also goes upstream uncompressed, off the client's path; the answers are compared and the
    keep-rate of a (route, model) goes up when fidelity drops below ``threshold``."""

    sample_rate: float = 0.0  # fraction of compressed requests shadowed (0 = off: they cost money)
    daily_max_calls: int = 1000  # shadow calls per UTC day (0 = no cap)
    daily_max_tokens: int = 0  # upstream tokens (prompt + completion) of shadow calls per UTC day (0 = no cap)
    max_concurrency: int = 2  # shadow calls in flight
    max_pending: int = 16  # waiting for a slot; beyond that a sample is skipped ("busy")
    timeout: float = 120.0  # seconds per shadow call
    store_text: bool = False  # keep prompts and both answers in the store (off: scores and counts only)
    path: str | None = None  # sqlite file; default $CTXGATE_HOME/cache/fidelity.sqlite
    record_traffic: bool = True  # one row per compressed request (tokens before/after) for the dashboard
    adaptive: bool = True  # let the controller change the rate
    metric: Literal["cosine", "f1", "em"] = "cosine"
    threshold: float = 0.8  # rolling mean of `metric` below this: compress less
    window: int = 20  # samples in the rolling mean; a step down needs a full window
    min_samples: int = 5  # samples before a step up
    step_up: float = 0.1  # keep-rate added on low fidelity (bounded at 1.0)
    step_down: float = 0.02  # keep-rate removed when fidelity holds (down to the configured rate)
    retention_days: float = 30.0  # rows older than this are deleted (at start and daily; 0 = keep all)
    probe_after: int = 200  # at rate 1.0 nothing is compressed or sampled: step down after N requests


class StateSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """State shared by replicas (``service.fidelity._fleet``): the shadow budget, the adaptive rates and
    the fleet's fidelity counters. ``auto``: shared in Redis when ``url`` is set or the cache is Redis."""

    backend: Literal["auto", "local", "redis"] = "auto"
    url: str | None = None  # redis://host:port/db; default: cache.url when the cache is Redis
    prefix: str = "ctxgate:s:"  # key prefix: fleets sharing one Redis need different prefixes
    refresh: float = 1.0  # seconds between sending counters and reading the shared rates
    timeout: float = 2.0  # seconds per Redis call


class Limits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Connection limits of the HTTP server (``service/_server.py``), as nginx and Envoy have them."""

    header_timeout: float = 10.0  # seconds to receive a request's whole header block (slowloris)
    body_timeout: float = 30.0  # seconds of silence allowed while a request body arrives
    keepalive_timeout: float = 30.0  # an idle keep-alive connection is closed after this
    max_header_bytes: int = 64 * 1024  # all request headers together; over it: 431
    max_headers: int = 100  # header lines per request; over it: 431
    max_concurrency: int = 2000  # connections + tasks; beyond it new ones get 503


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8340
    # OpenAI-style base URL as the openai SDK takes it (with /v1), e.g. https://api.openai.com/v1
    upstream: str | None = None
    # Anthropic-style base URL as the anthropic SDK takes it (no /v1), e.g. https://api.anthropic.com.
    # Unset with `upstream` set: `upstream` minus a trailing /v1 (vLLM, llama.cpp serve both APIs).
    anthropic_upstream: str | None = None
    # Embedded local upstream, used when no upstream is configured (served under /local on this port)
    local_model: str = "smollm2"
    local_max_tokens: int = 256  # hard cap on generated tokens per request
    scorer: str = "smollm2"
    embedder: str = "minilm"
    default_method: str = "auto"  # classifier on CPU, hybrid on a GPU (compressor.default_for)
    device: str | None = None
    warm_up: bool = True  # load the default method's models at start-up (readyz waits)
    policy: Policy = msgspec.field(default_factory=Policy)
    rules: list[Rule] = msgspec.field(default_factory=list)
    compress_timeout: float = 10.0  # seconds: the compression time budget per request (then fail open)
    workers: int = 1  # processes serving the port (ctxgate serve --workers)
    max_input_tokens: int = 200_000  # per text; bigger texts go upstream uncompressed
    upstream_timeout: float = 600.0  # seconds between bytes from upstream (read/write/pool)
    connect_timeout: float = 10.0
    max_connections: int = 1000
    max_body_bytes: int = 32 * 1024 * 1024
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    fidelity: FidelitySettings = msgspec.field(default_factory=FidelitySettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    log_level: str = "info"
    # Host names the sidecar answers to (DNS-rebinding protection). Empty: the loopback names when it
    # listens on loopback, any name otherwise. Entries: "api.internal", "*.example.com", "*".
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    # Bearer token for /metrics, /v1/fidelity* and /dashboard (none: those are open like the rest)
    admin_token: str | None = None
    limits: Limits = msgspec.field(default_factory=lambda: Limits())
    # model glob -> context window in tokens; beats the upstream's /v1/models and the built-in table
    context_windows: dict[str, int] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy.rate != "auto" and not 0 < self.policy.rate <= 1:
            raise ConfigError(
                f"policy.rate must be in (0, 1] (fraction of tokens kept) or auto, got {self.policy.rate}"
            )
        for i, r in enumerate(self.rules):
            if r.rate is not None and r.rate != "auto" and not 0 < r.rate <= 1:
                raise ConfigError(f"rules[{i}].rate must be in (0, 1] or auto, got {r.rate}")
        for where, options in [("policy", self.policy.options)] + [
            (f"rules[{i}]", r.options) for i, r in enumerate(self.rules)
        ]:
            try:
                checked_options(options or {})
            except InvalidRequest as exc:
                raise ConfigError(f"{where}.options: {exc}") from None
        for glob, n in self.context_windows.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"context_windows[{glob!r}] must be a positive number of tokens, got {n!r}")
        for name in ("compress_timeout", "upstream_timeout", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive seconds")
        if self.state.backend == "redis" and not self.state_url():
            raise ConfigError("state.backend=redis needs state.url or a redis cache (cache.url)")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if not self.state.refresh > 0 or not self.state.timeout > 0:
            raise ConfigError("state.refresh and state.timeout must be positive seconds")
        if self.cache.backend == "redis" and not self.cache.url:
            raise ConfigError("cache.backend=redis needs cache.url (e.g. redis://127.0.0.1:6379/0)")
        f = self.fidelity
        if not (0 <= f.sample_rate <= 1 and 0 <= f.threshold <= 1 and 0 < f.step_up <= 1 and 0 < f.step_down <= 1):
            raise ConfigError("fidelity.sample_rate, threshold must be in [0, 1]; step_up, step_down in (0, 1]")
        if f.window < 1 or not 1 <= f.min_samples <= f.window or f.max_concurrency < 1 or f.timeout <= 0:
            raise ConfigError("fidelity: window >= min_samples >= 1, max_concurrency >= 1, timeout > 0")
        for name in ("upstream", "anthropic_upstream"):
            url = getattr(self, name)
            if url is not None and not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")

    # ------------------------------------------------------------- derived

    @property
    def embedded(self) -> bool:
        """No upstream configured: the local model answers, behind the proxy."""
        return not self.upstream and not self.anthropic_upstream

    def upstream_urls(self) -> tuple[str | None, str | None]:
        """(OpenAI base with /v1, Anthropic base without /v1)."""
        if self.embedded:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            local = f"http://{host}:{self.port}/local"
            return local + "/v1", local
        openai = self.upstream.rstrip("/") if self.upstream else None
        anthropic = self.anthropic_upstream.rstrip("/") if self.anthropic_upstream else None
        if anthropic is None and openai is not None:
            anthropic = openai.removesuffix("/v1")
        return openai, anthropic

    def policy_for(self, route: str, model: str) -> Policy:
        """The default policy with every matching rule applied in order."""
        fields = msgspec.structs.asdict(self.policy)
        for rule in self.rules:
            if rule.matches(route, model):
                for key, value in msgspec.structs.asdict(rule).items():
                    if key not in ("route", "model") and value is not None:
                        fields[key] = value
        return Policy(**fields)

    def allowed_hosts_for(self) -> list[str]:
        """``allowed_hosts``, or its default for the bind address."""
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        if self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127."):
            return ["localhost", "127.0.0.1", "::1", self.host]
        return ["*"]

    def configured_tokenizers(self) -> set[str]:
        """Tokenizer names the operator chose (policy, rules, the scorer): a request may name these."""
        names = {self.scorer, self.policy.tokenizer, *(r.tokenizer for r in self.rules)}
        return {n for n in names if n}

    def state_url(self) -> str | None:
        """The Redis URL of the shared state, or None when state is per replica."""
        if self.state.backend == "local":
            return None
        if self.state.url:
            return self.state.url
        return self.cache.url if self.cache.backend == "redis" else None

    def fidelity_path(self) -> Path:
        if self.fidelity.path:
            return Path(self.fidelity.path).expanduser()
        from ctxgate.compressor.models import home

        return home() / "cache" / "fidelity.sqlite"

    def cache_path(self) -> Path:
        if self.cache.path:
            return Path(self.cache.path).expanduser()
        from ctxgate.compressor.models import home

        return home() / "cache" / "segments.sqlite"


def _read_file(path: str | Path) -> dict[str, Any]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # yaml and toml raise their own kinds; one clear line either way
        raise ConfigError(f"config file {p}: {type(exc).__name__}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level")
    return data


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    top = {f.encode_name for f in msgspec.structs.fields(Settings)}
    nested: dict[str, type[msgspec.Struct]] = {
        "policy": Policy,
        "cache": CacheSettings,
        "fidelity": FidelitySettings,
        "limits": Limits,
        "state": StateSettings,
    }
    out: dict[str, Any] = {}
    for key, value in env.items():
        if not key.startswith("CTXGATE_"):
            continue
        name = key[len("CTXGATE_") :].lower()
        section, _, field = name.partition("__")
        if field and section in nested:
            if field in {f.encode_name for f in msgspec.structs.fields(nested[section])}:
                out.setdefault(section, {})[field] = value
        elif name in top and name not in nested and name != "rules":
            out[name] = value
    return out


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_REMOVED = {
    "compress_workers": "compress_workers was removed: every compression takes the models' one lock, so more "
    "threads never compressed in parallel; run more processes with ctxgate serve --workers N",
}


def load_settings(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings from a file (``CTXGATE_CONFIG`` when ``path`` is None), env vars and overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get("CTXGATE_CONFIG")
    if path:
        data = _read_file(path)
    data = _merge(data, _env_overrides(env))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    if "compress_workers" in data:
        raise ConfigError(_REMOVED["compress_workers"])
    try:
        # strict=False: env values are strings ("8340", "true") and convert to the field types
        return msgspec.convert(data, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad setting: {exc}") from None
