"""One contract for every segment-cache backend: memory, SQLite, Redis (a real redis-server) and the
sidecar's tiered cache (memory over SQLite, memory over Redis).

- a miss is None; a value comes back byte for byte (any bytes); a write replaces;
- the TTL counts from the last write or read: an entry in use never expires, an idle one does;
- SQLite is shared by processes: what one process writes, another reads, and both can write at once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from ctxgate.compressor import MemoryCache, RedisCache, SQLiteCache
from ctxgate.service._cache import TieredCache

TTL = 1.0  # seconds: Redis's smallest expiry


@pytest.fixture(params=["memory", "sqlite", "redis", "memory+sqlite", "memory+redis"])
def cache(request, tmp_path):
    def redis():
        url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/2"
        return RedisCache(url, ttl=TTL, prefix=f"contract-{uuid.uuid4().hex[:8]}:")

    make = {
        "memory": lambda: MemoryCache(ttl=TTL),
        "sqlite": lambda: SQLiteCache(tmp_path / "c.sqlite", ttl=TTL),
        "redis": redis,
        "memory+sqlite": lambda: TieredCache(MemoryCache(ttl=TTL), SQLiteCache(tmp_path / "t.sqlite", ttl=TTL)),
        "memory+redis": lambda: TieredCache(MemoryCache(ttl=TTL), redis()),
    }
    c = make[request.param]()
    yield c
    close = getattr(c, "close", None)
    if close is not None:
        close()


def test_values_round_trip_and_writes_replace(cache):
    assert cache.get("missing") is None
    raw = bytes(range(256)) * 3 + b"\x00end"
    cache.set("k", raw)
    assert cache.get("k") == raw
    cache.set("k", b"second")
    assert cache.get("k") == b"second"
    cache.set("", b"empty key")
    assert cache.get("") == b"empty key" and cache.get("k") == b"second"


def test_the_ttl_counts_from_the_last_read_or_write(cache):
    cache.set("busy", b"1")
    cache.set("idle", b"2")
    for _ in range(3):  # 1.8 s in all, read every 0.6 s: never idle for a TTL
        time.sleep(0.6 * TTL)
        assert cache.get("busy") == b"1"
    assert cache.get("idle") is None  # not read for 1.8 s


_WRITER = """
import sys
from ctxgate.compressor import SQLiteCache
c = SQLiteCache(sys.argv[1])
for i in range(int(sys.argv[3])):
    c.set(f"{sys.argv[2]}-{i}", f"{sys.argv[2]}:{i}".encode())
print(c.get("parent-0").decode() if c.get("parent-0") else "none")
"""


def test_sqlite_is_shared_by_processes_writing_at_once(tmp_path):
    path = tmp_path / "shared.sqlite"
    parent = SQLiteCache(path)
    parent.set("parent-0", b"from the parent")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), name, "300"], stdout=subprocess.PIPE, text=True, env=os.environ
        )
        for name in ("a", "b")
    ]
    for i in range(300):  # the parent writes too, while both children do
        parent.set(f"p-{i}", b"x")
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and outs == ["from the parent"] * 2
    assert parent.get("a-299") == b"a:299" and parent.get("b-0") == b"b:0"
    assert len(parent) == 1 + 300 + 600
