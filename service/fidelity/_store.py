"""The local SQLite store of shadow samples, per-request savings, controller changes and the daily budget.

Writes never run on the event loop or on a request's path: ``put`` queues a statement for one writer
thread, which commits in batches: it wakes for the first queued row, then lets rows gather for
``LINGER`` seconds. One wake-up and one commit per row (a traffic row per compressed request) cost
the event loop GIL hand-offs on every request (the writer thread was ~13% of the sidecar's py-spy
samples at 100 streams of cache hits). Reads (``/v1/fidelity``, the dashboard) run in a worker
thread and first wait for the queue to drain, so a reader sees everything queued before it asked. Prompt and
answer text is written only when the caller passes it (``fidelity.store_text``).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ctxgate.compressor import private, private_dir

log = logging.getLogger("ctxgate.service")
LINGER = 0.25  # seconds a batch gathers rows before its commit; a read or close flushes at once

_SCHEMA = """
CREATE TABLE IF NOT EXISTS traffic (
    ts REAL NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL, method TEXT, rate REAL,
    tokens_before INTEGER NOT NULL, tokens_after INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS traffic_ts ON traffic (ts);
CREATE TABLE IF NOT EXISTS samples (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL, method TEXT,
    rate REAL, configured_rate REAL, override INTEGER, stream INTEGER, status TEXT NOT NULL,
    tokens_before INTEGER, tokens_after INTEGER, ratio REAL,
    cosine REAL, f1 REAL, em REAL,
    usage_full TEXT, usage_compressed TEXT, prompt_tokens_full INTEGER, prompt_tokens_compressed INTEGER,
    tokens_saved INTEGER, saved_source TEXT, seconds REAL,
    prompt TEXT, answer_full TEXT, answer_compressed TEXT);
CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);
CREATE TABLE IF NOT EXISTS adjustments (
    ts REAL NOT NULL, route TEXT NOT NULL, model TEXT NOT NULL, old_rate REAL, new_rate REAL NOT NULL,
    reason TEXT NOT NULL, fidelity REAL, samples INTEGER);
CREATE TABLE IF NOT EXISTS budget (day TEXT PRIMARY KEY, calls INTEGER NOT NULL, tokens INTEGER NOT NULL);
"""

SAMPLE_COLUMNS = (
    "ts",
    "route",
    "model",
    "method",
    "rate",
    "configured_rate",
    "override",
    "stream",
    "status",
    "tokens_before",
    "tokens_after",
    "ratio",
    "cosine",
    "f1",
    "em",
    "usage_full",
    "usage_compressed",
    "prompt_tokens_full",
    "prompt_tokens_compressed",
    "tokens_saved",
    "saved_source",
    "seconds",
    "prompt",
    "answer_full",
    "answer_compressed",
)
_INSERT_SAMPLE = f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)}) VALUES ({', '.join('?' * len(SAMPLE_COLUMNS))})"


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        private_dir(path.parent)
        self._read = self._connect()
        self._read.executescript(_SCHEMA)
        self._read_lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, tuple] | None] = queue.Queue()
        self._flush = threading.Event()  # set by readers and close: commit what is queued now
        self._writer = threading.Thread(target=self._write_loop, name="ctxgate-fidelity-store", daemon=True)
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        private(self.path)
        conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    # ------------------------------------------------------------------ writes (any thread, non-blocking)

    def put(self, sql: str, params: tuple) -> None:
        self._queue.put((sql, params))

    def add_traffic(self, *row: Any) -> None:
        self.put("INSERT INTO traffic VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def add_sample(self, sample: dict[str, Any]) -> None:
        self.put(_INSERT_SAMPLE, tuple(sample.get(c) for c in SAMPLE_COLUMNS))

    def add_adjustment(self, *row: Any) -> None:
        self.put("INSERT INTO adjustments VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def set_budget(self, day: str, calls: int, tokens: int) -> None:
        self.put(
            "INSERT INTO budget VALUES (?, ?, ?) ON CONFLICT(day) DO UPDATE SET calls=excluded.calls, "
            "tokens=excluded.tokens",
            (day, calls, tokens),
        )

    def prune(self, before: float) -> None:
        """Drop rows older than ``before`` (epoch seconds): the store's retention period."""
        day = datetime.fromtimestamp(before, UTC).date().isoformat()
        for table in ("traffic", "samples", "adjustments"):
            # the latest adjustment per (route, model) is the controller's state: it is kept
            keep = (
                " AND rowid NOT IN (SELECT MAX(rowid) FROM adjustments GROUP BY route, model)"
                if table == "adjustments"
                else ""
            )
            self.put(f"DELETE FROM {table} WHERE ts < ?{keep}", (before,))
        self.put("DELETE FROM budget WHERE day < ?", (day,))

    def _write_loop(self) -> None:
        conn = self._connect()
        try:
            while True:
                item = self._queue.get()
                if item is not None and self._flush.wait(LINGER):
                    self._flush.clear()
                batch = [item]
                while item is not None and len(batch) < 5000:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    batch.append(item)
                try:
                    with conn:
                        for entry in batch:
                            if entry is not None:
                                conn.execute(*entry)
                except sqlite3.Error as exc:  # a full disk must not take the proxy down; the rows are lost
                    log.warning("fidelity store write failed: %s", type(exc).__name__)
                for _ in batch:
                    self._queue.task_done()
                if batch[-1] is None:
                    return
        finally:
            conn.close()

    # ------------------------------------------------------------------ reads (worker thread)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        self._flush.set()
        self._queue.join()
        with self._read_lock:
            return self._read.execute(sql, params).fetchall()

    def close(self) -> None:
        self._queue.put(None)
        self._flush.set()
        self._writer.join(30)
        with self._read_lock:
            self._read.close()
