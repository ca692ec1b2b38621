"""The decision log (``access_decisions``), written off the reply path, in batches.

A tap's answer goes out before its log row is written (docs/performance.md): the bridge's
decider hands the rows of a batch of taps to :class:`DecisionLog` (a bounded queue, never
blocking) and publishes the answers; a thread of the log's own writes whatever has gathered
in one ``INSERT`` with many rows (a ``COPY`` on PostgreSQL) and one commit, on its own
connection. On PostgreSQL that connection runs with ``synchronous_commit = off``: a commit
does not wait for the disk, so a crash can cost the last few rows (never an event, a session
or an acknowledgement, which are written elsewhere with durable commits).

Who needs a row soon after its answer waits for it: :meth:`DecisionLog.wait` returns once
every row handed over up to then is written (or given up on). An orderly :meth:`close`
writes everything still waiting first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC
from typing import Any, cast

import msgspec
import psycopg
from sqlalchemy import Connection, Table, bindparam, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from server.db import Database
from server.models import AccessDecision

log = logging.getLogger(__name__)

_TABLE = cast(Table, AccessDecision.__table__)
_RECORD = insert(_TABLE)
_RECORDED = select(_TABLE.c.id).where(_TABLE.c.id == bindparam("id"))
# Rows waiting to be written, at most: past it new rows are dropped (counted ``decision_log``),
# never the answer held up. At 1,500 taps/s that is over half a minute of a stalled database.
MAX_WAITING = 50_000
# Rows per INSERT and commit, at most.
MAX_BATCH = 1_000
# Once a row waits, the writer waits this long for more before it writes: one commit for the
# taps of a few milliseconds, not one each (every commit costs the bridge's CPU, which the
# answers share). Whoever waits for a row (a session start) waits this much longer at most.
LINGER_S = 0.005


# The columns of a row, in the order COPY takes them.
_COLUMNS = tuple(column.name for column in _TABLE.columns)
_COPY = f"COPY {_TABLE.name} ({', '.join(_COLUMNS)}) FROM STDIN"
_JSON = msgspec.json.Encoder()


def _copy(db: Connection, rows: list[dict[str, Any]]) -> None:
    """``rows`` in one ``COPY`` on PostgreSQL (inside the connection's transaction): a tenth of
    the CPU of an INSERT per row, on both sides (bench/tap_latency.py). Values go in as the
    column types store them: moments as naive UTC, the response as JSON text. Errors are
    raised as SQLAlchemy's, as from ``Connection.execute``."""
    lines = []
    for row in rows:
        values = []
        for name in _COLUMNS:
            value = row.get(name)
            if name == "decided_at" and value is not None:
                value = value.astimezone(UTC).replace(tzinfo=None)
            elif name == "response":
                value = _JSON.encode(value).decode()
            values.append(value)
        lines.append(values)
    if not db.in_transaction():
        db.begin()  # (the COPY goes past SQLAlchemy: its commit must know there is something to commit)
    try:
        raw = db.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(_COPY) as copy:  # type: ignore[union-attr]
            for values in lines:
                copy.write_row(values)
    except psycopg.errors.IntegrityError as exc:
        raise IntegrityError(_COPY, None, exc) from exc
    except psycopg.Error as exc:
        raise DBAPIError.instance(_COPY, None, exc, psycopg.Error) from exc


class DecisionLog:
    """Writes ``access_decisions`` rows on a thread of its own; thread-safe.

    ``count(key, n)`` is told of rows that could not be written: ``decision_log`` (database
    error, a row refused, or the queue full) and ``duplicate_decision`` (the request id was recorded already,
    by another bridge; that row stands). With an in-memory SQLite database (one connection
    shared by every thread) the rows are written at once by the caller instead.
    """

    def __init__(
        self,
        database: Database,
        count: Callable[[str, int], None],
        max_waiting: int = MAX_WAITING,
        max_batch: int = MAX_BATCH,
        linger_s: float = LINGER_S,
    ) -> None:
        self.db = database
        self.count = count
        self.max_waiting = max_waiting
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._idle = False  # the writer waits for rows: only then does a hand-over wake it
        self._state = threading.Condition()
        self._waiting: deque[tuple[int, dict[str, Any]]] = deque()  # (mark, row)
        self._added = 0  # marks handed out: one per add()
        self._written = 0  # every row of a mark up to this one is written (or given up on)
        self._inflight: int | None = None  # the lowest mark of the rows being written now
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self.batches = 0  # commits made (for tests and the bench)
        self.rows = 0  # rows written

    # -- the caller's side -------------------------------------------------------------------
    def add(self, rows: Sequence[dict[str, Any]]) -> int:
        """Hand over ``rows`` to be written; returns their mark (see :meth:`wait`). Never
        blocks on the database."""
        if isinstance(self.db.engine.pool, StaticPool):
            with self._state:
                self._added += 1
                mark = self._added
                self._write(list(rows))
                self._settle()
            return mark
        with self._state:
            self._added += 1
            mark = self._added
            room = 0 if self._closing else max(0, self.max_waiting - len(self._waiting))
            for row in rows[:room]:
                self._waiting.append((mark, row))
            dropped = len(rows) - min(room, len(rows))
            if self._idle or not self._waiting:
                self._settle()
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
                self._thread.start()
        if dropped > 0:
            self.count("decision_log", dropped)
            log.error("decision log: closed or %d rows waiting; %d row(s) dropped", self.max_waiting, dropped)
        return mark

    @property
    def added(self) -> int:
        """The mark of the rows handed over last."""
        with self._state:
            return self._added

    def wait(self, mark: int | None = None, timeout: float = 1.0) -> bool:
        """Wait until every row handed over up to ``mark`` (default: until now) is written or
        given up on; False when ``timeout`` passed first."""
        with self._state:
            target = self._added if mark is None else mark
            return self._state.wait_for(lambda: self._written >= target, timeout)

    def _settle(self) -> None:
        """Move the written mark up to just below the oldest row still waiting or being
        written, and wake whoever waits (the caller holds ``_state``)."""
        pending = [
            m for m in (self._waiting[0][0] if self._waiting else None, self._inflight) if m is not None
        ]
        self._written = max(self._written, min(pending) - 1 if pending else self._added)
        self._state.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Write every row waiting, then stop the thread (an orderly shutdown loses none)."""
        with self._state:
            self._closing = True
            self._state.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.error("decision log: %d row(s) not written at shutdown", len(self._waiting))
        self._drop_connection()

    # -- the writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._state:
                    self._idle = True
                    self._state.wait_for(lambda: bool(self._waiting) or self._closing)
                    self._idle = False
                    if not self._waiting:
                        return  # closing, nothing left
                    gather = not self._closing and len(self._waiting) < self.max_batch
                if gather and self.linger_s > 0:
                    time.sleep(self.linger_s)
                with self._state:
                    batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
                    self._inflight = batch[0][0]
                try:
                    self._write([row for _mark, row in batch])
                finally:
                    with self._state:
                        self._inflight = None
                        self._settle()
        finally:
            self._drop_connection()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self.db.engine.connect()
            if conn.dialect.name == "postgresql":
                # The commit does not wait for the disk: a crash can cost the last few rows.
                conn.execute(text("SET synchronous_commit = off"))
                conn.commit()
            self._conn = conn
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
            self._conn = None

    def _write(self, rows: list[dict[str, Any]]) -> None:
        """One INSERT of many rows (a COPY on PostgreSQL) and one commit. A row that is there
        already (another bridge recorded the same request id in the same few milliseconds) is
        left as it is, and counted; a database error costs these rows, counted and logged."""
        if not rows:
            return
        try:
            db = self._connection()
            try:
                if db.dialect.name == "postgresql":
                    _copy(db, rows)
                else:
                    db.execute(_RECORD, rows)
                db.commit()
            except IntegrityError:
                db.rollback()
                for row in rows:  # each row on its own: the others still go in
                    try:
                        db.execute(_RECORD, [row])
                        db.commit()
                    except IntegrityError:
                        db.rollback()
                        if db.execute(_RECORDED, {"id": row["id"]}).first() is not None:
                            self.count("duplicate_decision", 1)
                            log.warning(
                                "decision log: request %s was recorded by another bridge too", row["id"]
                            )
                        else:  # e.g. its machine deleted in the meantime
                            self.count("decision_log", 1)
                            log.exception("decision log: the row of request %s was refused", row["id"])
                        db.rollback()
            self.batches += 1
            self.rows += len(rows)
        except SQLAlchemyError:
            if self._conn is not None:
                with contextlib.suppress(SQLAlchemyError):
                    self._conn.invalidate()
            self._drop_connection()
            self.count("decision_log", len(rows))
            log.exception("decision log: %d row(s) could not be written", len(rows))
