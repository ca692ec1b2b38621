"""The on-disk outbox: every event is stored here before it is published, until the server acks it.

A broker's PUBACK only says the broker took the message, not that the server stored it
(PROTOCOL.md), so an event leaves this table only when an ``ack`` names its id. SQLite
in WAL mode with ``synchronous=FULL``: a committed ``put`` survives SIGKILL and power loss.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    payload BLOB NOT NULL,
    created REAL NOT NULL
)
"""


class Outbox:
    """Events not yet acknowledged by the server, oldest first. Safe to use from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, so each statement is its own durable transaction.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

    def put(self, event_id: str, payload: bytes) -> None:
        """Store an event (call before publishing it). The same id again is a no-op."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO outbox (id, payload, created) VALUES (?, ?, ?)",
                (event_id, payload, time.time()),
            )

    def ack(self, ids: Iterable[str]) -> int:
        """Forget events the server stored; returns how many were still here."""
        rows = [(i,) for i in ids]
        with self._lock:
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE id = ?", rows)
            return self._db.total_changes - before

    def pending(self, limit: int = 100) -> list[tuple[str, bytes]]:
        """Up to ``limit`` unacknowledged events as ``(id, payload)``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, payload FROM outbox ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [(str(i), bytes(p)) for i, p in rows]

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
