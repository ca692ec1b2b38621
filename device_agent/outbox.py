"""The on-disk outbox: every event is stored here before it is published, until the server acks it.

A broker's PUBACK only says the broker took the message, not that the server stored it
(PROTOCOL.md), so an event leaves this table only when an ``ack`` names its id. SQLite
in WAL mode with ``synchronous=FULL``: a committed ``put`` survives SIGKILL and power loss.

The same file holds the open session's record (:class:`~device_agent.storage.OpenSession`),
so a session's start or end and its events are one transaction (:meth:`Outbox.record`): a
crash leaves either the session open and no end event, or the end event stored and no session.

Each event is stamped with the boot clock (and the boot) it was stored at, so that the agent can
say how long the oldest unacknowledged one has waited (:meth:`Outbox.health`, sent in ``status``)
without trusting the wall clock, across restarts of the agent within one boot.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
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
        created REAL NOT NULL,
        boot TEXT,
        mono REAL
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


# Added to outbox files of agents before the boot-clock stamps: (column, SQL type).
_ADDED_COLUMNS = (("boot", "TEXT"), ("mono", "REAL"))


class Outbox:
    """Events not yet acknowledged by the server, oldest first, and the open session.

    ``boot`` and ``monotonic`` are the agent's boot id and boot clock (device_agent.clock): each
    event is stored with them. Without them (tools that only read the file) events are stored
    unstamped and count from when the outbox was opened. Safe to use from several threads.
    """

    def __init__(
        self, path: str | Path, boot: str | None = None, monotonic: Callable[[], float] | None = None
    ) -> None:
        self.path = Path(path)
        self._boot = boot
        self._monotonic = monotonic or time.monotonic
        # Events stored before this process started by another boot, or by an agent that did not
        # stamp them, have waited at least since now: their age counts from here (a lower bound).
        self._opened_mono = self._monotonic()
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, so each statement is its own durable transaction;
        # record() opens one explicitly for several.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        for column, kind in _ADDED_COLUMNS:
            if column not in have:
                self._db.execute(f"ALTER TABLE outbox ADD COLUMN {column} {kind}")

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
        mono = self._monotonic() if self._boot is not None else None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO outbox (id, payload, created, boot, mono) VALUES (?, ?, ?, ?, ?)",
                    [(event_id, payload, created, self._boot, mono) for event_id, payload in events],
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

    def health(self) -> tuple[int, float | None]:
        """``(events waiting, seconds the oldest has waited)``; the age is None when none waits.

        The age is measured on the boot clock: exact for an event stored in this boot (also by an
        agent process before this one), and counted from when this outbox was opened for one
        stored in an earlier boot (a power loss) or without a stamp, which have waited longer.
        """
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
            oldest = self._db.execute("SELECT boot, mono FROM outbox ORDER BY seq LIMIT 1").fetchone()
        if oldest is None:
            return int(count), None
        boot, mono = oldest
        stored = mono if boot is not None and boot == self._boot and mono is not None else self._opened_mono
        return int(count), max(0.0, self._monotonic() - stored)

    def __len__(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT count(*) FROM outbox").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self._db.close()
