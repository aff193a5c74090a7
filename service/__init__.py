"""ctxgate's HTTP sidecar (Litestar): OpenAI/Anthropic-compatible proxy routes that compress what the
policy says, ``/v1/compress``, health, readiness and metrics. No scoring logic lives here.

    from ctxgate.service import create_app, load_settings
    app = create_app(load_settings("ctxgate.yaml"))
"""

from ._app import create_app
from ._config import CacheSettings, Policy, Rule, Settings, load_settings

__all__ = ["CacheSettings", "Policy", "Rule", "Settings", "create_app", "load_settings"]
