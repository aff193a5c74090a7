"""``ctxgate serve``: run the sidecar with uvicorn.

    ctxgate serve                                   # embedded SmolLM2 upstream on 127.0.0.1:8340
    ctxgate serve --upstream https://api.openai.com/v1 --anthropic-upstream https://api.anthropic.com
    ctxgate serve --config ctxgate.yaml --port 9000

Settings: defaults < --config file (YAML/TOML, or $CTXGATE_CONFIG) < CTXGATE_* env < these flags.
"""

from __future__ import annotations

import argparse
import logging

from ._config import load_settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ctxgate serve", description="OpenAI/Anthropic-compatible compression sidecar.")
    p.add_argument("--config", help="YAML or TOML settings file (default: $CTXGATE_CONFIG)")
    p.add_argument(
        "--upstream",
        help="OpenAI-style base URL with /v1, e.g. https://api.openai.com/v1 (none: serve the embedded local model)",
    )
    p.add_argument("--anthropic-upstream", help="Anthropic base URL, e.g. https://api.anthropic.com")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8340)")
    p.add_argument("--local-model", help="embedded upstream model when no upstream is set (default smollm2)")
    p.add_argument("--cache", choices=("memory", "sqlite", "redis", "off"), help="cache backend (default sqlite)")
    p.add_argument("--redis-url", help="redis://host:port/db for --cache redis")
    p.add_argument(
        "--workers",
        type=int,
        help="processes serving the port (default 1); each loads its own models "
        "(about 1 GB); share the fidelity state through Redis (state.url)",
    )
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    cache = {k: v for k, v in (("backend", args.cache), ("url", args.redis_url)) if v is not None}
    settings = load_settings(
        args.config,
        overrides={
            "upstream": args.upstream,
            "anthropic_upstream": args.anthropic_upstream,
            "host": args.host,
            "port": args.port,
            "local_model": args.local_model,
            "log_level": args.log_level,
            "workers": args.workers,
            **({"cache": cache} if cache else {}),
        },
    )
    import uvicorn

    from ._app import create_app
    from ._server import server_config

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    mode = (
        "embedded model " + settings.local_model
        if settings.embedded
        else "upstream " + str(settings.upstream or settings.anthropic_upstream)
    )
    logging.getLogger("ctxgate.service").info(
        "ctxgate sidecar on http://%s:%d (%s)", settings.host, settings.port, mode
    )
    if settings.workers > 1:
        from ._workers import run_workers

        return run_workers(settings)
    # access_log off: request lines are noise at 100s of req/s, and prompts never belong in logs anyway
    config = server_config(create_app(settings), settings, log_level=settings.log_level, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
