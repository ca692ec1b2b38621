"""The decision log: rows written off the reply path, in batches, none lost on an orderly stop."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from server.db import Database
from server.models import AccessDecision
from server.services.decision_log import DecisionLog


def _row(n: int, now: datetime, machine_id: int | None = None) -> dict[str, Any]:
    rid = f"00000000-0000-4000-8000-{n:012d}"
    return {
        "id": rid,
        "device_id": "pi-printer-1",
        "machine_id": machine_id,
        "badge_uid": "04A224B2C35E80",
        "person_id": None,
        "mode": "use",
        "trainer_id": None,
        "decision": "deny",
        "reason": "unknown_badge",
        "session_id": None,
        "decided_at": now,
        "response": {"req": rid, "decision": "deny", "reason": "unknown_badge", "message": {"en": "no"}},
    }


def _ids(db: Database) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(AccessDecision.id)))


class _Held(DecisionLog):
    """A log whose first write waits until released, and which notes each batch's size."""

    def __init__(self, db: Database, counts: Counter[str], **kw: Any) -> None:
        super().__init__(db, lambda key, n: counts.update({key: n}), **kw)
        self.release = threading.Event()
        self.writing = threading.Event()
        self.sizes: list[int] = []

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.writing.set()
        assert self.release.wait(10)
        self.sizes.append(len(rows))
        super()._write(rows)


def test_rows_gather_while_a_write_is_on_its_way_and_go_in_as_one_batch(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    counts: Counter[str] = Counter()
    log = _Held(lab, counts)
    try:
        first = log.add([_row(0, clock())])
        assert log.writing.wait(5)  # the writer holds row 0 now
        marks = [log.add([_row(1 + 3 * k + i, clock()) for i in range(3)]) for k in range(5)]
        assert not log.wait(first, timeout=0.05)  # nothing is written yet, and nobody waited for it
        log.release.set()
        assert log.wait(timeout=5)
        assert log.wait(marks[-1], timeout=0)
        assert log.sizes == [1, 15]  # two commits for six hand-overs
        assert log.batches == 2 and log.rows == 16
        assert _ids(lab) == [_row(n, clock())["id"] for n in range(16)]
        assert not counts
    finally:
        log.release.set()
        log.close()


def test_an_orderly_close_writes_every_row_handed_over(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    counts: Counter[str] = Counter()
    log = DecisionLog(lab, lambda key, n: counts.update({key: n}), max_batch=7)
    for k in range(40):
        log.add([_row(5 * k + i, clock()) for i in range(5)])
    log.close()
    assert len(_ids(lab)) == 200
    assert log.rows == 200 and log.batches >= 200 // 7
    assert not counts
    # Closed: later rows are refused and counted, never waited for.
    log.add([_row(999, clock())])
    assert counts == Counter({"decision_log": 1})
    assert log.wait(timeout=0)


def test_a_row_recorded_already_is_counted_and_the_others_go_in(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    counts: Counter[str] = Counter()
    log = DecisionLog(lab, lambda key, n: counts.update({key: n}))
    try:
        log.add([_row(1, clock())])
        assert log.wait(timeout=5)
        # Another bridge recorded request 1 as well; request 2 names a machine that is gone.
        log.add([_row(0, clock()), _row(1, clock()), _row(2, clock(), machine_id=987654), _row(3, clock())])
        assert log.wait(timeout=5)
        assert _ids(lab) == [_row(n, clock())["id"] for n in (0, 1, 3)]
        assert counts == Counter({"duplicate_decision": 1, "decision_log": 1})
    finally:
        log.close()


def test_a_full_queue_drops_rows_counted_and_never_blocks(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    counts: Counter[str] = Counter()
    log = _Held(lab, counts, max_waiting=10)
    try:
        log.add([_row(0, clock())])
        assert log.writing.wait(5)
        log.add([_row(n, clock()) for n in range(1, 9)])
        log.add([_row(n, clock()) for n in range(9, 14)])  # room for two of these five
        assert counts == Counter({"decision_log": 3})
        log.release.set()
        assert log.wait(timeout=5)
        assert _ids(lab) == [_row(n, clock())["id"] for n in range(11)]
    finally:
        log.release.set()
        log.close()


def test_rows_handed_over_are_there_for_whoever_waited(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    log = DecisionLog(lab, lambda key, n: None)
    try:
        for n in range(50):
            log.add([_row(n, clock())])
            assert log.wait(timeout=5)
            with lab.session() as s:
                assert s.scalar(select(func.count()).select_from(AccessDecision)) == n + 1
    finally:
        log.close()


def test_rows_read_back_as_they_went_in(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """Every column as handed over (on PostgreSQL the rows go in by COPY: moments, JSON, NULLs)."""
    rows = [_row(n, clock()) for n in range(3)]
    rows[1].update(person_id=None, session_id="11111111-2222-4333-8444-555555555555", reason="ok")
    message = {"de": "Hallo Zoë, „bis 14:00“\\n\t"}
    rows[1]["response"] = {"req": rows[1]["id"], "message": message, "until_s": 1.5}
    log = DecisionLog(lab, lambda key, n: None)
    try:
        log.add(rows)
        assert log.wait(timeout=5)
    finally:
        log.close()
    with lab.session() as s:
        stored = {d.id: d for d in s.scalars(select(AccessDecision))}
    for row in rows:
        got = stored[row["id"]]
        assert {name: getattr(got, name) for name in row} == row
