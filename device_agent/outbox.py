"""The on-disk outbox: every event is stored here before it is published, until the server acks it.

A broker's PUBACK only says the broker took the message, not that the server stored it
(PROTOCOL.md), so an event leaves this table only when an ``ack`` names its id. SQLite
in WAL mode with ``synchronous=FULL``: a committed ``put`` survives SIGKILL and power loss.

The same file holds the open session's record (:class:`~device_agent.storage.OpenSession`),
so a session's start or end and its events are one transaction (:meth:`Outbox.record`): a
crash leaves either the session open and no end event, or the end event stored and no session.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgspec

from device_agent.storage import OpenSession

log = logging.getLogger(__name__)

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        payload BLOB NOT NULL,
        created REAL NOT NULL
    )
    """,
    # At most one row: the open session.
    """
    CREATE TABLE IF NOT EXISTS open_session (
        slot INTEGER PRIMARY KEY CHECK (slot = 1),
        record BLOB NOT NULL
    )
    """,
)


class Outbox:
    """Events not yet acknowledged by the server, oldest first, and the open session.

    Safe to use from several threads.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, so each statement is its own durable transaction;
        # record() opens one explicitly for several.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)

    def put(self, event_id: str, payload: bytes) -> None:
        """Store an event (call before publishing it). The same id again is a no-op."""
        self.record([(event_id, payload)])

    def record(
        self, events: Sequence[tuple[str, bytes]], session: OpenSession | None = None, *, close: bool = False
    ) -> None:
        """In one transaction: store ``events``; then store ``session`` as the open one, or with
        ``close`` forget the open session. Neither: the open session stays as it was."""
        if session is not None and close:
            raise ValueError("record() takes a session to store or close=True, not both")
        created = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO outbox (id, payload, created) VALUES (?, ?, ?)",
                    [(event_id, payload, created) for event_id, payload in events],
                )
                if session is not None:
                    self._db.execute(
                        "INSERT OR REPLACE INTO open_session (slot, record) VALUES (1, ?)",
                        (msgspec.json.encode(session),),
                    )
                elif close:
                    self._db.execute("DELETE FROM open_session")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def open_session(self) -> OpenSession | None:
        """The session that was open when the agent last wrote, or None."""
        with self._lock:
            row = self._db.execute("SELECT record FROM open_session WHERE slot = 1").fetchone()
        if row is None:
            return None
        try:
            return msgspec.json.decode(bytes(row[0]), type=OpenSession)
        except msgspec.MsgspecError as exc:
            # Transactions make this unlikely; a bad record must not keep the machine from starting.
            log.error("ignoring the unreadable open session in %s: %s", self.path, exc)
            return None

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
