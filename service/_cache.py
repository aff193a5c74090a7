"""The sidecar's cache stack: an in-process LRU in front of the configured backend.

memory | sqlite (default, under $CTXGATE_HOME) | redis (shared by instances) | off. The LRU makes a
repeated segment cost a dict lookup on the event loop; the backend makes it survive restarts
(sqlite) or be shared (redis). A backend that fails (redis down, disk full) degrades to a miss and
is counted, never raised: the cache is an optimisation, the request must still go through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ctxgate.compressor import CompressionCache, MemoryCache, SQLiteCache

from ._config import Settings

log = logging.getLogger("ctxgate.service")


class Breaker:
    """A circuit breaker for the backend: after ``failures`` errors in a row the backend is skipped
    for ``cooldown`` seconds (every look-up a miss at once), then one call tries it again.

    A frozen Redis made each request wait for a get and a set timeout in turn; with the breaker open
    an unhealthy backend costs nothing, and a healthy one is found again within ``cooldown``."""

    def __init__(self, failures: int = 3, cooldown: float = 5.0) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._errors = 0
        self._until = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            if self._errors < self.failures:
                return True
            now = time.monotonic()
            if now < self._until:
                return False
            self._until = now + self.cooldown  # half-open: this caller tries, the others wait
            return True

    def ok(self) -> None:
        with self._lock:
            self._errors = 0

    def failed(self) -> None:
        with self._lock:
            self._errors += 1
            if self._errors >= self.failures:
                self._until = time.monotonic() + self.cooldown

    @property
    def open(self) -> bool:
        return self._errors >= self.failures and time.monotonic() < self._until


class TieredCache:
    """``get``/``set`` like every compressor cache; ``get_fast`` only looks at the in-process LRU."""

    def __init__(
        self,
        l1: MemoryCache | None,
        l2: CompressionCache | None,
        on_error: Callable[[str], None] | None = None,
        breaker: Breaker | None = None,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self.name = "+".join(c.name for c in (l1, l2) if c is not None) or "off"
        self._on_error = on_error
        self.breaker = breaker or Breaker()

    @property
    def slow(self) -> bool:
        """True when a miss in the LRU must go to a backend (do that off the event loop)."""
        return self.l2 is not None and self.l2 is not self.l1

    def get_fast(self, key: str) -> bytes | None:
        return self.l1.get(key) if self.l1 is not None else None

    def get(self, key: str) -> bytes | None:
        value = self.get_fast(key)
        if value is not None or not self.slow or not self.breaker.allow():
            return value
        try:
            value = self.l2.get(key)  # type: ignore[union-attr]
        except Exception as exc:  # backend trouble is a miss, not a failed request
            self._error("get", exc)
            return None
        self.breaker.ok()
        if value is not None and self.l1 is not None:
            self.l1.set(key, value)
        return value

    def set(self, key: str, value: bytes) -> None:
        if self.l1 is not None:
            self.l1.set(key, value)
        if self.slow and self.breaker.allow():
            try:
                self.l2.set(key, value)  # type: ignore[union-attr]
            except Exception as exc:
                self._error("set", exc)
                return
            self.breaker.ok()

    def close(self) -> None:
        close = getattr(self.l2, "close", None)
        if close is not None:
            close()

    def _error(self, op: str, exc: Exception) -> None:
        self.breaker.failed()
        log.warning("cache backend %s %s failed: %s", self.name, op, type(exc).__name__)
        if self._on_error is not None:
            self._on_error(op)


def build_cache(settings: Settings, on_error: Callable[[str], None] | None = None) -> TieredCache | None:
    c = settings.cache
    if c.backend == "off":
        return None
    if c.backend == "memory":
        return TieredCache(MemoryCache(max_entries=c.max_entries, ttl=c.ttl), None, on_error)
    l1 = MemoryCache(max_entries=c.memory_entries, ttl=c.ttl) if c.memory_entries > 0 else None
    if c.backend == "sqlite":
        return TieredCache(l1, SQLiteCache(settings.cache_path(), max_entries=c.max_entries, ttl=c.ttl), on_error)
    from ctxgate.compressor import RedisCache

    return TieredCache(
        l1,
        RedisCache(c.url or "", ttl=c.ttl, timeout=c.timeout),
        on_error,
        Breaker(c.breaker_failures, c.breaker_cooldown),
    )
