"""Content-addressed cache of compression results: memory LRU, SQLite, (Redis in _cache_redis).

Why it matters: provider prompt caches only hit on byte-identical prefixes. Keying on the
content hash plus method, options and model fingerprint makes a segment, once compressed,
come back as exactly the same bytes on every later turn, and a hit does no model work.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import msgspec

from ._files import private


class CompressionCache(Protocol):
    name: str

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes) -> None: ...


def cache_key(payload: object) -> str:
    """SHA-256 of a canonical msgpack encoding (msgspec sorts nothing, so callers pass ordered data)."""
    return hashlib.sha256(msgspec.msgpack.encode(payload)).hexdigest()


class MemoryCache:
    """Thread-safe LRU bounded by entry count, with an optional TTL in seconds from the last write or
    read (the same sliding expiry as ``SQLiteCache`` and ``RedisCache``: entries in use never expire)."""

    name = "memory"

    def __init__(self, max_entries: int = 10_000, ttl: float | None = None) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            now = time.time()
            if self.ttl is not None and now - item[0] > self.ttl:
                del self._data[key]
                return None
            self._data[key] = (now, item[1])  # a read refreshes the TTL, as in SQLite and Redis
            self._data.move_to_end(key)
            return item[1]

    def set(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = (time.time(), value)
            self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class SQLiteCache:
    """Persistent across restarts; bounded by entry count and TTL; safe across threads and
    processes (WAL mode, one connection per thread)."""

    name = "sqlite"

    def __init__(self, path: str | Path, max_entries: int = 100_000, ttl: float | None = 7 * 86400) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            private(self.path)  # holds compressed prompt text: owner-only (0600, dir 0700)
        self.max_entries = max_entries
        self.ttl = ttl
        self._local = threading.local()
        self._writes = 0
        with self._conn() as c:
            c.execute(
                "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value BLOB NOT NULL, used REAL NOT NULL)"
            )
            c.execute("CREATE INDEX IF NOT EXISTS entries_used ON entries(used)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> bytes | None:
        c = self._conn()
        row = c.execute("SELECT value, used FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        now = time.time()
        if self.ttl is not None and now - row[1] > self.ttl:
            c.execute("DELETE FROM entries WHERE key = ?", (key,))
            return None
        c.execute("UPDATE entries SET used = ? WHERE key = ?", (now, key))
        return bytes(row[0])

    def set(self, key: str, value: bytes) -> None:
        c = self._conn()
        c.execute("INSERT OR REPLACE INTO entries (key, value, used) VALUES (?, ?, ?)", (key, value, time.time()))
        self._writes += 1
        if self._writes % 100 == 0:
            self.prune()

    def prune(self) -> None:
        c = self._conn()
        if self.ttl is not None:
            c.execute("DELETE FROM entries WHERE used < ?", (time.time() - self.ttl,))
        c.execute(
            "DELETE FROM entries WHERE key IN (SELECT key FROM entries ORDER BY used DESC LIMIT -1 OFFSET ?)",
            (self.max_entries,),
        )

    def __len__(self) -> int:
        return self._conn().execute("SELECT COUNT(*) FROM entries").fetchone()[0]
