"""Each machine's total machine hours (``machines.hours_total_s``) stays the sum of its sessions'
unlocked time through every way sessions change: ingestion (in order, out of order, repeated, a
recovered end replaced by the real one), a rolled-back transaction, deleting and moving sessions,
statements run through the session, and the repair (``werkbank usage rebuild``)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from server.db import Database
from server.models import Device, Machine, MachineSession
from server.services import hours_total, usage
from server.services.ingest import ingest_event
from tests.hours_support import assert_totals_match
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionEnded, SessionStarted

QUINN = "04A224B2C35E80"
START = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
NOW = START + timedelta(hours=6)


def _event(message: type[Any], ts: datetime, **fields: Any) -> Any:
    return message(v=1, id=str(uuid.uuid4()), ts=format_ts(ts), **fields)


def _ingest(db: Database, event: Any, device_id: str = "pi-printer-1") -> None:
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        assert ingest_event(s, device, event, NOW).refused is None


def _session(db: Database, unlocked_s: float, at: datetime = START, device_id: str = "pi-printer-1") -> str:
    """An offline session of Quinn's, started and ended through ingestion."""
    sid = str(uuid.uuid4())
    _ingest(db, _event(SessionStarted, at, session=sid, badge=QUINN, offline=True), device_id)
    end = _event(
        SessionEnded, at + timedelta(seconds=unlocked_s), session=sid, reason="tap_out", unlocked_s=unlocked_s
    )
    _ingest(db, end, device_id)
    return sid


def _totals(db: Database) -> dict[str, float]:
    with db.session() as s:
        return assert_totals_match(s)


def test_hours_total_counts_each_ended_session_once(lab: Database) -> None:
    assert _totals(lab) == {"printer-1": 0.0, "laser-1": 0.0, "printer-2": 0.0}
    sid = _session(lab, 1800.0)
    _session(lab, 600.5, START + timedelta(hours=1))
    _session(lab, 900.0, device_id="pi-laser-1")
    assert _totals(lab) == {"printer-1": 2400.5, "laser-1": 900.0, "printer-2": 0.0}
    # The agent sends the end again (QoS 1 is at least once): a new event id, the same end.
    again = _event(
        SessionEnded, START + timedelta(seconds=1800), session=sid, reason="tap_out", unlocked_s=1800.0
    )
    _ingest(lab, again)
    assert _totals(lab)["printer-1"] == 2400.5


def test_hours_total_takes_the_real_end_instead_of_a_recovered_one(lab: Database) -> None:
    """A restarted agent's ``power_loss_recovered`` end comes first, the real end (sent just before
    it died) later and replaces it: the total moves by the difference, not by both."""
    sid = str(uuid.uuid4())
    _ingest(lab, _event(SessionStarted, START, session=sid, badge=QUINN, offline=True))
    recovered = _event(
        SessionEnded,
        START + timedelta(hours=2),
        session=sid,
        reason="power_loss_recovered",
        unlocked_s=7200.0,
    )
    _ingest(lab, recovered)
    assert _totals(lab)["printer-1"] == 7200.0
    real = _event(SessionEnded, START + timedelta(hours=1), session=sid, reason="tap_out", unlocked_s=3600.0)
    _ingest(lab, real)
    assert _totals(lab)["printer-1"] == 3600.0


def test_hours_total_counts_a_late_offline_session_reported_end_first(lab: Database) -> None:
    """An outbox replayed days later, its end before its start: counted when the end arrives."""
    sid = str(uuid.uuid4())
    old = START - timedelta(days=3)
    _ingest(
        lab,
        _event(SessionEnded, old + timedelta(minutes=45), session=sid, reason="tap_out", unlocked_s=2700.0),
    )
    assert _totals(lab)["printer-1"] == 2700.0
    _ingest(lab, _event(SessionStarted, old, session=sid, badge=QUINN, offline=True))
    assert _totals(lab)["printer-1"] == 2700.0


def test_hours_total_is_unchanged_by_a_rolled_back_end(lab: Database) -> None:
    _session(lab, 1000.0)
    sid = str(uuid.uuid4())
    _ingest(lab, _event(SessionStarted, START + timedelta(hours=1), session=sid, badge=QUINN, offline=True))
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        end = _event(
            SessionEnded, START + timedelta(hours=2), session=sid, reason="tap_out", unlocked_s=3600.0
        )
        ingest_event(s, device, end, NOW)
        s.flush()
        machine = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert machine is not None and machine.hours_total_s == 4600.0  # seen inside the transaction
        s.rollback()
    assert _totals(lab)["printer-1"] == 1000.0


def test_hours_total_follows_sessions_deleted_and_moved(lab: Database) -> None:
    first, second = _session(lab, 1000.0), _session(lab, 200.0, START + timedelta(hours=1))
    with lab.session() as s:
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        row = s.get(MachineSession, second)
        assert laser is not None and row is not None
        row.machine = laser  # through the relationship: machine_id is set only in the flush
    assert _totals(lab) == {"printer-1": 1000.0, "laser-1": 200.0, "printer-2": 0.0}
    with lab.session() as s:
        row = s.get(MachineSession, first)
        s.expire(row)  # its values unloaded: the hook reads them before the row goes
        s.delete(row)
    assert _totals(lab)["printer-1"] == 0.0


def test_hours_total_follows_statements_run_through_the_session(lab: Database) -> None:
    """UPDATE and DELETE statements pass no flush: the totals of the machines they touch are
    summed again after them, in their transaction."""
    keep, change = _session(lab, 1000.0), _session(lab, 200.0, START + timedelta(hours=1))
    gone = _session(lab, 50.0, device_id="pi-laser-1")
    with lab.session() as s:
        s.execute(update(MachineSession).where(MachineSession.id == change).values(unlocked_s=500.0))
        s.execute(delete(MachineSession).where(MachineSession.id == gone))
    assert _totals(lab) == {"printer-1": 1500.0, "laser-1": 0.0, "printer-2": 0.0}
    with lab.session() as s:
        s.execute(delete(MachineSession))
    assert _totals(lab) == {"printer-1": 0.0, "laser-1": 0.0, "printer-2": 0.0}
    assert keep


def test_hours_total_is_repaired_by_the_usage_rebuild(lab: Database) -> None:
    """A total wrong by a write past every hook (a statement on a bare connection, an edit in
    psql): ``werkbank usage rebuild`` sums the sessions again."""
    _session(lab, 1000.0)
    with lab.engine.begin() as conn:
        conn.execute(update(Machine.__table__).values(hours_total_s=12345.0))
    with lab.session() as s:
        assert s.scalar(select(Machine.hours_total_s).where(Machine.slug == "printer-1")) == 12345.0
    usage.rebuild(lab, now=NOW)
    assert _totals(lab) == {"printer-1": 1000.0, "laser-1": 0.0, "printer-2": 0.0}
    with lab.engine.begin() as conn:
        hours_total.add(conn, {1: 0.0})  # nothing to add: no statement, nothing changed
    assert _totals(lab)["printer-1"] == 1000.0


def test_hours_total_counts_a_new_machines_first_session_in_the_same_flush(lab: Database) -> None:
    with lab.session() as s:
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None
        machine = Machine(
            slug="printer-3",
            name="Printer 3",
            site_id=printer.site_id,
            machine_type_id=printer.machine_type_id,
        )
        s.add(MachineSession(id=str(uuid.uuid4()), machine=machine, device_id="x", unlocked_s=60.0))
        s.flush()
        assert machine.hours_total_s == 60.0
    assert _totals(lab)["printer-3"] == 60.0


@pytest.mark.parametrize("unlocked_s", [None, 0.0])
def test_hours_total_ignores_sessions_without_unlocked_time(lab: Database, unlocked_s: float | None) -> None:
    with lab.session() as s:
        machine_id = s.scalar(select(Machine.id).where(Machine.slug == "laser-1"))
        s.add(
            MachineSession(id=str(uuid.uuid4()), machine_id=machine_id, device_id="x", unlocked_s=unlocked_s)
        )
    assert _totals(lab)["laser-1"] == 0.0


def test_hours_total_two_bridges_ending_sessions_of_one_machine_at_once_both_count(lab: Database) -> None:
    """Two bridges end two sessions of one machine at the same moment: the second waits for the
    first's row of the machine and adds to what the first committed (an add in SQL, not a value
    read before and written back)."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    for sid, at in ((a, START), (b, START + timedelta(minutes=1))):
        _ingest(lab, _event(SessionStarted, at, session=sid, badge=QUINN, offline=True))
    first = lab.new_session()
    device = first.get(Device, "pi-printer-1")
    assert device is not None
    end_a = _event(SessionEnded, START + timedelta(hours=1), session=a, reason="tap_out", unlocked_s=3600.0)
    assert ingest_event(first, device, end_a, NOW).new
    first.flush()  # the machine's row is the first's now
    ended = threading.Event()
    failed: list[BaseException] = []

    def second() -> None:
        try:
            end_b = _event(
                SessionEnded, START + timedelta(hours=2), session=b, reason="tap_out", unlocked_s=900.0
            )
            _ingest(lab, end_b)
        except BaseException as exc:  # reported by the test below
            failed.append(exc)
        ended.set()

    thread = threading.Thread(target=second)
    thread.start()
    try:
        assert not ended.wait(0.5), "the second bridge waits for the first's transaction"
    finally:
        first.commit()
        first.close()
        thread.join(10)
    assert not failed and ended.is_set()
    assert _totals(lab)["printer-1"] == 4500.0
