"""The fidelity store's writer: rows queued close together share one commit, and a read still sees
every row queued before it (it flushes at once instead of waiting out the batch window)."""

import sqlite3
import time

from ctxgate.service.fidelity import _store
from ctxgate.service.fidelity._store import Store


class _CountingStore(Store):
    """Counts the COMMITs of the writer thread's connection (the second one opened)."""

    def __init__(self, path):
        self.commits = 0
        self._opened = 0
        super().__init__(path)

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        self._opened += 1
        if self._opened == 2:

            def trace(sql: str) -> None:
                if sql.strip().upper() == "COMMIT":
                    self.commits += 1

            conn.set_trace_callback(trace)
        return conn


def test_rows_queued_within_the_window_share_one_commit_and_reads_flush(tmp_path):
    store = _CountingStore(tmp_path / "fidelity.sqlite")
    try:
        for i in range(60):  # a request every millisecond, well inside one window
            store.add_traffic(time.time(), "chat", "m", "hybrid", 0.25, 1000 + i, 250)
            time.sleep(0.001)
        t0 = time.perf_counter()
        rows = store.query("SELECT COUNT(*), SUM(tokens_before) FROM traffic")
        waited = time.perf_counter() - t0
        assert rows == [(60, sum(1000 + i for i in range(60)))]
        assert store.commits <= 3, store.commits  # one per row before batching: 60
        assert waited < _store.LINGER + 0.5
    finally:
        store.close()


def test_close_commits_what_is_queued(tmp_path):
    path = tmp_path / "fidelity.sqlite"
    store = Store(path)
    store.add_traffic(time.time(), "messages", "claude", "extractive", 0.5, 800, 400)
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT route, tokens_after FROM traffic").fetchall() == [("messages", 400)]
