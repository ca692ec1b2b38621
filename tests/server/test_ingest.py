"""Ingestion: one transaction per event, and only what the server can check (issue 11)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from server.db import Database
from server.models import AccessDecision, Device, Job, MachineSession, Qualification, StoredEvent
from server.services.device_claims import UNCHECKED_MAX, UNCHECKED_WINDOW
from server.services.ingest import IngestResult, ingest_event
from werkbank_protocol import ProtocolError, format_ts
from werkbank_protocol.messages import (
    AuthReq,
    Fault,
    JobFinished,
    JobStarted,
    LockDeferred,
    SessionEnded,
    SessionStarted,
)


def test_ingest_rolled_back_event_leaves_no_ledger_row(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """If the caller's transaction fails after ingestion (a crash, a later error), the event
    must not count as stored: the agent re-sends it and it is applied then. A ledger row
    committed on its own would turn that re-send into a "duplicate" and lose the event."""
    event = SessionStarted(
        v=1, id=str(uuid.uuid4()), ts=format_ts(clock()), session=str(uuid.uuid4()), badge="04A224B2C35E80"
    )
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        assert ingest_event(s, device, event).new
        s.rollback()
    with lab.session() as s:
        assert s.get(StoredEvent, event.id) is None
        assert s.scalars(select(MachineSession)).all() == []
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        assert ingest_event(s, device, event).new, "the re-sent event is applied"
        s.commit()
    with lab.session() as s:
        assert s.get(StoredEvent, event.id) is not None
        assert s.get(MachineSession, event.session) is not None


# -- issue 11: a device is believed only what the server can check -------------------------------

QUINN = "04A224B2C35E80"


def _event(message: type[Any], ts: datetime, **fields: Any) -> Any:
    return message(v=1, id=str(uuid.uuid4()), ts=format_ts(ts), **fields)


def _ingest(db: Database, event: Any, now: datetime, device_id: str = "pi-printer-1") -> IngestResult:
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        return ingest_event(s, device, event, now)


def _stored(db: Database) -> dict[str, Any]:
    """Everything an event may change: row counts, sessions' and jobs' columns, the ledger."""
    with db.session() as s:
        return {
            "events": sorted((e.id, e.repeats) for e in s.scalars(select(StoredEvent))),
            "sessions": sorted(
                (r.id, r.device_id, r.person_id, r.mode, r.trainer_id, r.started_at, r.ended_at, r.unlocked_s)
                for r in s.scalars(select(MachineSession))
            ),
            "jobs": sorted(
                (j.id, j.session_id, j.status, j.duration_s, j.filament_mm, j.filament_g)
                for j in s.scalars(select(Job))
            ),
            "qualifications": s.scalar(select(func.count()).select_from(Qualification)),
        }


def _decide(db: Database, device_id: str, badge: str, now: datetime) -> str:
    """A tap in mode use answered (allowed) by the bridge: the session id the server handed out."""
    from server.adapters.bridge import Bridge

    bridge = Bridge(db, "mqtt://127.0.0.1:9", clock=lambda: now)  # never connected
    request = AuthReq(v=1, id=str(uuid.uuid4()), ts=format_ts(now), badge=badge)
    bridge._answer_taps([(device_id, request)])
    assert bridge.wait_for_decision_log(5.0)  # written just after the answer
    bridge.decision_log.close()
    with db.session() as s:
        row = s.get(AccessDecision, request.id)
        assert row is not None and row.session_id is not None, row and row.response
        return row.session_id


def _offline_start(db: Database, at: datetime, now: datetime) -> str:
    session = str(uuid.uuid4())
    result = _ingest(db, _event(SessionStarted, at, session=session, badge=QUINN, offline=True), now)
    assert result.new and result.refused is None
    return session


HOUR = timedelta(hours=1)


def _bad_end(db: Database, now: datetime) -> Any:
    """unlocked_s of 1e300 (the live page showed an 80-digit label)."""
    session = _offline_start(db, now - HOUR, now)
    return _event(SessionEnded, now, session=session, reason="tap_out", unlocked_s=1e300)


def _over_a_week(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - timedelta(days=9), now)
    return _event(SessionEnded, now, session=session, reason="tap_out", unlocked_s=8 * 24 * 3600.0)


def _longer_than_its_span(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - HOUR, now)
    return _event(SessionEnded, now, session=session, reason="tap_out", unlocked_s=36000.0)


def _run_beyond_unlocked(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - HOUR, now)
    return _event(SessionEnded, now, session=session, reason="tap_out", unlocked_s=1800.0, run_s=3000.0)


def _online_with_a_forged_clock(db: Database, now: datetime) -> Any:
    """Decided a minute ago by the server; the device claims ten hours, with times to match."""
    session = _decide(db, "pi-printer-1", QUINN, now - timedelta(minutes=1))
    assert _ingest(db, _event(SessionStarted, now - 10 * HOUR, session=session, badge=QUINN), now).new
    return _event(SessionEnded, now, session=session, reason="tap_out", unlocked_s=36000.0)


def _end_before_a_late_start(db: Database, now: datetime) -> Any:
    """The end came first (a replayed outbox) and says 10 h; the start, when it comes, says 1 h ago."""
    session = str(uuid.uuid4())
    end = _event(SessionEnded, now, session=session, reason="tap_out", unlocked_s=36000.0)
    assert _ingest(db, end, now).new
    return _event(SessionStarted, now - HOUR, session=session, badge=QUINN, offline=True)


def _second_start(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - HOUR, now)
    return _event(SessionStarted, now - HOUR, session=session, badge="DEADBEEF", offline=True)


def _job_too_long(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - HOUR, now)
    return _event(
        JobFinished, now, session=session, job=str(uuid.uuid4()), status="completed", duration_s=1e9
    )


def _job_longer_than_session(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - HOUR, now)
    return _event(
        JobFinished, now, session=session, job=str(uuid.uuid4()), status="completed", duration_s=99999.0
    )


def _too_much_filament(db: Database, now: datetime) -> Any:
    session = _offline_start(db, now - HOUR, now)
    return _event(
        JobFinished,
        now,
        session=session,
        job=str(uuid.uuid4()),
        status="completed",
        duration_s=600.0,
        filament_g=123456789.0,
    )


def _from_the_future(db: Database, now: datetime) -> Any:
    return _event(SessionStarted, now + timedelta(days=3), session=str(uuid.uuid4()), badge=QUINN)


def _no_such_day(db: Database, now: datetime) -> Any:
    event = _event(SessionStarted, now, session=str(uuid.uuid4()), badge=QUINN)
    event.ts = "2026-02-30T10:00:00.000Z"  # matches the pattern, is no date
    return event


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (_bad_end, "implausible_value"),
        (_over_a_week, "implausible_value"),
        (_longer_than_its_span, "implausible_value"),
        (_run_beyond_unlocked, "implausible_value"),
        (_online_with_a_forged_clock, "implausible_value"),
        (_end_before_a_late_start, "implausible_value"),
        (_second_start, "implausible_value"),
        (_job_too_long, "implausible_value"),
        (_job_longer_than_session, "implausible_value"),
        (_too_much_filament, "implausible_value"),
        (_from_the_future, "implausible_value"),
        (_no_such_day, "bad_time"),
    ],
    ids=lambda v: getattr(v, "__name__", v).strip("_"),
)
def test_ingest_implausible_event_is_refused_for_good_and_changes_nothing(
    lab: Database, clock: Any, make: Any, code: str
) -> None:
    now = clock()
    event = make(lab, now)
    before = _stored(lab)
    result = _ingest(lab, event, now)
    assert result.refused is not None and result.refused.code == code, result
    assert not result.new
    assert _stored(lab) == before
    # Sent again (the agent had no ack yet): refused again, still nothing stored.
    again = _ingest(lab, event, now)
    assert again.refused is not None and _stored(lab) == before


def test_ingest_true_values_near_their_bounds_are_kept(lab: Database, clock: Any) -> None:
    now = clock()
    # Almost a week offline, the agent's monotonic clock a little ahead of its wall clock.
    long_session = _offline_start(lab, now - timedelta(days=6, hours=23), now)
    end = _event(
        SessionEnded,
        now,
        session=long_session,
        reason="max_duration",
        unlocked_s=(6 * 24 + 23) * 3600 + 300.0,
        run_s=(6 * 24 + 23) * 3600 + 300.0,
    )
    assert _ingest(lab, end, now).refused is None
    # A decided session reported by a Pi whose clock runs an hour ahead of the server's.
    session = _decide(lab, "pi-printer-1", QUINN, now - timedelta(minutes=30))
    start = _event(SessionStarted, now + timedelta(minutes=30), session=session, badge=QUINN)
    assert _ingest(lab, start, now).refused is None
    job = str(uuid.uuid4())
    finished = _event(
        JobFinished,
        now + HOUR,
        session=session,
        job=job,
        status="completed",
        duration_s=1700.0,
        filament_mm=4321.0,
        filament_g=12.9,
    )
    assert _ingest(lab, finished, now).refused is None
    ended = _event(
        SessionEnded, now + HOUR, session=session, reason="tap_out", unlocked_s=1790.0, run_s=1700.0
    )
    assert _ingest(lab, ended, now).refused is None
    with lab.session() as s:
        long_row = s.get(MachineSession, long_session)
        row = s.get(MachineSession, session)
        stored_job = s.get(Job, job)
        assert long_row is not None and long_row.unlocked_s == (6 * 24 + 23) * 3600 + 300.0
        assert row is not None and (row.unlocked_s, row.run_s, row.offline) == (1790.0, 1700.0, False)
        assert stored_job is not None and (stored_job.duration_s, stored_job.filament_g) == (1700.0, 12.9)


def test_ingest_a_job_stays_with_the_session_that_reported_it(lab: Database, clock: Any) -> None:
    """Printer-1's job cannot be rewritten by the laser's device, nor moved to another session."""
    now = clock()
    session = _offline_start(lab, now - HOUR, now)
    job = str(uuid.uuid4())
    done = _event(JobFinished, now, session=session, job=job, status="completed", duration_s=3000.0)
    assert _ingest(lab, done, now).new
    before = _stored(lab)
    forged = {"job": job, "status": "failed", "duration_s": 300.0, "filament_g": 5.0}
    for device_id in ("pi-laser-1", "pi-printer-1"):  # another device; the same device, another session
        other = _event(JobFinished, now, session=str(uuid.uuid4()), **forged)
        result = _ingest(lab, other, now, device_id)
        assert result.refused is not None and result.refused.code == "foreign_job"
        assert _stored(lab) == before
    started = _event(JobStarted, now, session=str(uuid.uuid4()), job=job, kind="cut")
    assert _ingest(lab, started, now, "pi-laser-1").refused is not None
    assert _stored(lab) == before


def test_ingest_a_session_the_server_handed_to_another_device_is_refused(lab: Database, clock: Any) -> None:
    now = clock()
    session = _decide(lab, "pi-printer-1", QUINN, now)
    before = _stored(lab)
    start = _event(SessionStarted, now, session=session, badge=QUINN)
    result = _ingest(lab, start, now, "pi-laser-1")
    assert result.refused is not None and result.refused.code == "foreign_session"
    assert _stored(lab) == before
    assert _ingest(lab, start, now, "pi-printer-1").refused is None


def test_ingest_an_outbox_replay_of_hundreds_of_sessions_is_stored_whole(lab: Database, clock: Any) -> None:
    """The flood limit is for faults and deferred locks: a Pi back after days offline replays
    hundreds of session and job events at once, and the server checks each of those."""
    now = clock()
    events = []
    for n in range(150):
        start = now - timedelta(days=5) + n * 15 * timedelta(minutes=1)
        session = str(uuid.uuid4())
        events += [
            _event(SessionStarted, start, session=session, badge=QUINN, offline=True),
            _event(JobStarted, start + timedelta(minutes=1), session=session, job=str(uuid.uuid4())),
            _event(
                SessionEnded,
                start + timedelta(minutes=10),
                session=session,
                reason="tap_out",
                unlocked_s=600.0,
            ),
        ]
    events += [_event(LockDeferred, now - timedelta(days=4, minutes=n)) for n in range(20)]
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        results = [ingest_event(s, device, e, now) for e in events]
    assert all(r.new and r.refused is None for r in results)
    with lab.session() as s:
        assert s.scalar(select(func.count()).select_from(MachineSession)) == 150
        assert s.scalar(select(func.sum(MachineSession.unlocked_s))) == 150 * 600.0


def test_ingest_a_repeated_fault_is_counted_onto_one_row(lab: Database, clock: Any) -> None:
    now = clock()
    first = _event(Fault, now, code="reader_failed", detail="SPI read timed out")
    assert _ingest(lab, first, now).new
    for n in range(1, 50):
        assert _ingest(lab, _event(Fault, now + timedelta(seconds=n), code="reader_failed"), now).new
    other = _event(Fault, now, code="octoprint_unreachable")
    assert _ingest(lab, other, now).new
    with lab.session() as s:
        rows = {e.payload["code"]: e for e in s.scalars(select(StoredEvent))}
        assert set(rows) == {"reader_failed", "octoprint_unreachable"}
        assert rows["reader_failed"].repeats == 49
        assert rows["reader_failed"].last_ts == now + timedelta(seconds=49)
        assert rows["reader_failed"].payload["detail"] == "SPI read timed out"
    # Later (after the repeat window) the same fault is a new row again.
    later = now + timedelta(minutes=30)
    assert _ingest(lab, _event(Fault, later, code="reader_failed"), later).new
    with lab.session() as s:
        assert s.scalar(select(func.count()).select_from(StoredEvent)) == 3


def test_ingest_unchecked_events_beyond_a_devices_rate_wait_for_later(lab: Database, clock: Any) -> None:
    now = clock()
    for n in range(UNCHECKED_MAX):
        assert _ingest(lab, _event(Fault, now, code=f"made-up-{n}"), now).new
    before = _stored(lab)
    flood = _event(LockDeferred, now)
    with pytest.raises(ProtocolError) as refused:
        _ingest(lab, flood, now)
    assert refused.value.code == "rate_limited"
    assert _stored(lab) == before
    # Other devices are not held back, nor are this device's session events.
    assert _ingest(lab, _event(Fault, now, code="made-up-0"), now, "pi-laser-1").new
    assert _offline_start(lab, now - HOUR, now)
    # Not acknowledged, so the agent sends it again: once the window has passed, it is stored.
    later = now + UNCHECKED_WINDOW + timedelta(seconds=1)
    assert _ingest(lab, flood, later).new
