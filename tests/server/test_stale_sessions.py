"""A session left open by a Pi that died with its SD card: shown to the admins as stale, closed by
an admin with a reason and an end no later than its last evidence (audited), counted up to that
end, and never counted twice when the agent comes back with the session's real end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from server.db import Database
from server.models import AuditLog, Device, Machine, MachineSession, Person, StoredEvent, UsageDaily
from server.services import stale_sessions, usage
from server.services.ingest import ingest_event
from server.services.training import TrainingError
from tests.hours_support import assert_totals_match
from werkbank_protocol import format_ts
from werkbank_protocol.messages import JobStarted, SessionEnded, SessionStarted

QUINN, TINA = "04A224B2C35E80", "A1B2C3D4"
START = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)  # 10:00 in Berlin
DIED = START + timedelta(hours=2)  # the Pi's last status
NOW = START + timedelta(hours=5)
LATER = datetime(2026, 11, 30, 12, tzinfo=UTC)


def _event(message: type[Any], ts: datetime, **fields: Any) -> Any:
    return message(v=1, id=str(uuid.uuid4()), ts=format_ts(ts), **fields)


def _ingest(db: Database, event: Any, now: datetime) -> None:
    with db.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        assert ingest_event(s, device, event, now).refused is None
        s.commit()


def _died_with_a_session(db: Database, badge: str = QUINN) -> str:
    """The Pi of printer-1 reports a session and a job, then goes silent at DIED for good."""
    sid = str(uuid.uuid4())
    _ingest(db, _event(SessionStarted, START, session=sid, badge=badge, offline=True), START)
    job = _event(JobStarted, START + timedelta(minutes=20), session=sid, job=str(uuid.uuid4()), kind="print")
    _ingest(db, job, START + timedelta(minutes=20))
    with db.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None and device.machine is not None
        device.online, device.last_seen = False, DIED
        device.machine.live_session_id = sid  # as the tap left it
        s.commit()
    return sid


def _person(s: Any, email: str) -> Person:
    person = s.scalar(select(Person).where(Person.email == email))
    assert person is not None
    return person


def _admin(s: Any) -> Person:
    """An admin who is not Quinn (Tina is trainer and admin in lab.yaml)."""
    return _person(s, "tina@test.local")


def _hours(db: Database, machine_id: int) -> float:
    with db.session() as s:
        rows = s.scalars(select(UsageDaily).where(UsageDaily.machine_id == machine_id)).all()
        return sum(r.unlocked_s for r in rows) / 3600


def test_a_session_of_a_dead_pi_is_stale_with_its_last_evidence(lab: Database) -> None:
    sid = _died_with_a_session(lab)
    with lab.session() as s:
        # Not yet: the device went quiet only minutes ago.
        assert stale_sessions.stale_sessions(s, DIED + timedelta(minutes=10)) == []
        [found] = stale_sessions.stale_sessions(s, NOW)
        assert found.session.id == sid and found.last_evidence == DIED and not found.superseded
        # Without the device's last status (another session became the machine's live one), the
        # last evidence is the session's own: its job's start.
        row = s.get(MachineSession, sid)
        assert row is not None
        row.machine.live_session_id = None
        assert stale_sessions.last_evidence(s, row) == START + timedelta(minutes=20)


def test_a_session_on_a_device_that_is_online_is_not_stale_and_cannot_be_closed(lab: Database) -> None:
    sid = _died_with_a_session(lab)
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        device.online, device.last_seen = True, NOW
        s.flush()
        assert stale_sessions.stale_sessions(s, NOW) == []
        row = s.get(MachineSession, sid)
        assert row is not None
        with pytest.raises(TrainingError) as refused:
            stale_sessions.close(s, _admin(s), row, DIED, "Pi dead", NOW)
        assert refused.value.code == "not_stale"
        # ...until the machine is used again: a replacement Pi with the same device id.
        later = str(uuid.uuid4())
        s.add(MachineSession(id=later, machine_id=row.machine_id, device_id=device.id, started_at=NOW))
        s.flush()
        [found] = stale_sessions.stale_sessions(s, NOW)
        assert found.session.id == sid and found.superseded
        # The device's last_seen is the new Pi's: the evidence is the session's own.
        assert found.last_evidence == START + timedelta(minutes=20)


def test_closing_a_stale_session_counts_its_hours_up_to_the_end_and_is_audited(lab: Database) -> None:
    sid = _died_with_a_session(lab)
    with lab.session() as s:
        machine_id = s.scalar(select(Machine.id).where(Machine.slug == "printer-1"))
        assert machine_id is not None
        row = s.get(MachineSession, sid)
        assert row is not None
        admin = _admin(s)
        for end, reason, code in (
            (DIED + timedelta(seconds=1), "Pi dead", "end_after_evidence"),
            (START - timedelta(seconds=1), "Pi dead", "end_before_start"),
            (DIED, "   ", "reason_required"),
        ):
            with pytest.raises(TrainingError) as refused:
                stale_sessions.close(s, admin, row, end, reason, NOW)
            assert refused.value.code == code and not refused.value.forbidden
        assert row.ended_at is None
        stale_sessions.close(s, admin, row, DIED, "SD card of the Pi died", NOW)
        s.commit()
    with lab.session() as s:
        row = s.get(MachineSession, sid)
        assert row is not None and row.ended_at == DIED and row.end_reason == "closed_by_admin"
        assert row.machine.live_session_id is None
        [entry] = s.scalars(select(AuditLog).where(AuditLog.action == "session.closed")).all()
        assert entry.subject == f"session:{sid}" and entry.actor_id == _admin(s).id
        assert entry.detail["reason"] == "SD card of the Pi died"
        assert entry.detail["ended"] == DIED.isoformat() and entry.detail["machine"] == "printer-1"
        assert stale_sessions.stale_sessions(s, NOW) == []
        # Its hours up to the admin's end in every figure: the machine's total (the overview's)
        # as in the dashboards below.
        assert row.unlocked_s == 7200.0 and row.run_s is None
        assert assert_totals_match(s)["printer-1"] == 7200.0
    usage.refresh(lab, LATER)
    assert _hours(lab, machine_id) == pytest.approx(2.0)

    # The agent comes back (its outbox on a new card) with the real end, an hour after the Pi's
    # last status: stored once in the ledger, but the admin's end stands: no hours twice, none more.
    real_end = _event(
        SessionEnded, DIED + timedelta(hours=1), session=sid, reason="tap_out", unlocked_s=10800.0
    )
    _ingest(lab, real_end, LATER)
    recovered = _event(
        SessionEnded,
        DIED + timedelta(hours=2),
        session=sid,
        reason="power_loss_recovered",
        unlocked_s=14400.0,
    )
    _ingest(lab, recovered, LATER)
    with lab.session() as s:
        row = s.get(MachineSession, sid)
        assert row is not None and row.ended_at == DIED and row.end_reason == "closed_by_admin"
        assert s.get(StoredEvent, real_end.id) is not None
        assert len(s.scalars(select(MachineSession)).all()) == 1
        assert assert_totals_match(s)["printer-1"] == 7200.0  # the agent's ends were not taken
    usage.refresh(lab, LATER)
    assert _hours(lab, machine_id) == pytest.approx(2.0)


def test_only_admins_close_a_session_and_never_their_own(trainer_lab: Database) -> None:
    """The staff rule: a trainer who is not an admin may not; an admin may not on their own
    session. Both refusals are the forbidden kind (audited by the page)."""
    mine = _died_with_a_session(trainer_lab, badge=TINA)
    with trainer_lab.session() as s:
        row = s.get(MachineSession, mine)
        assert row is not None and row.person_id == _admin(s).id
        with pytest.raises(TrainingError) as refused:
            stale_sessions.close(s, _admin(s), row, DIED, "my own", NOW)
        assert refused.value.code == "own_records" and refused.value.forbidden
        pete = _person(s, "pete@test.local")
        assert pete.is_trainer and not pete.is_admin
        with pytest.raises(TrainingError) as refused:
            stale_sessions.close(s, pete, row, DIED, "not mine", NOW)
        assert refused.value.code == "admin_only" and refused.value.forbidden
        assert row.ended_at is None
