"""``Context``: what the handlers reach through ``app.state.ctx``, in its own module so that the
handlers and the app factory both import it and neither imports the other."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ctxgate.compressor import Compressor

from ._cache import TieredCache
from ._config import Settings
from ._local import LocalModel
from ._metrics import Metrics
from ._rewrite import Rewriter
from ._upstream import Upstream
from ._windows import Windows
from .fidelity import Fidelity


@dataclass
class Context:
    """What handlers reach through ``app.state.ctx``."""

    settings: Settings
    metrics: Metrics
    compressor: Compressor
    rewriter: Rewriter
    upstream: Upstream
    executor: ThreadPoolExecutor
    cache: TieredCache | None
    fidelity: Fidelity
    local: LocalModel | None = None
    windows: Windows | None = None
    load_error: str | None = None
    loaded: threading.Event = field(default_factory=threading.Event)

    @property
    def ready(self) -> bool:
        return self.rewriter.ready.is_set() and (self.local is None or self.local.ready.is_set())
