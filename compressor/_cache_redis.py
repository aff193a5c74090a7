"""Redis backend for the compression cache: shared by every sidecar instance, bounded by TTL.

Same ``get``/``set`` interface as ``MemoryCache`` and ``SQLiteCache``. Values are content-addressed
and deterministic, so two instances writing the same key write the same bytes and need no locking.
Needs the ``redis`` package (the ``redis`` extra).
"""

from __future__ import annotations

from ._errors import CtxgateError


class RedisCache:
    """Entries expire ``ttl`` seconds after their last write or read (reads refresh the TTL)."""

    name = "redis"

    def __init__(self, url: str, ttl: float = 7 * 86400, prefix: str = "ctxgate:c:", timeout: float = 2.0) -> None:
        try:
            import redis
        except ImportError:
            raise CtxgateError("the redis cache needs the redis package: pip install 'ctxgate[redis]'") from None
        if ttl <= 0:
            raise CtxgateError(f"redis cache ttl must be positive seconds, got {ttl}")
        self.url = url
        self.ttl = int(max(1, round(ttl)))
        self.prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)

    def get(self, key: str) -> bytes | None:
        # GETEX refreshes the TTL in the same round trip: entries in use never expire
        value = self._client.getex(self.prefix + key, ex=self.ttl)
        return value if value is None or isinstance(value, bytes) else value.encode()

    def set(self, key: str, value: bytes) -> None:
        self._client.set(self.prefix + key, value, ex=self.ttl)

    def ping(self) -> bool:
        return bool(self._client.ping())

    def close(self) -> None:
        self._client.close()
