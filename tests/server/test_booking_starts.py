"""Which sessions a booking's start locks (server/services/booking_locks.py), once each."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from server.db import Database
from server.models import AuditLog, Booking, BookingStatus, Machine, MachineSession, Person
from server.services import booking_locks
from tests.conftest import PETE, TINA

QUINN = "04A224B2C35E80"
T = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
NAMES = {QUINN: "Quinn Qualified", PETE: "Pete Printtrainer", TINA: "Tina Trainer"}


def _setup(
    db: Database, badge: str, status: BookingStatus = BookingStatus.BOOKED, machine: str = "laser-1"
) -> tuple[str, str]:
    """Quinn's booking 10:00-11:00 UTC and an open session of ``badge`` that started at 09:30."""
    with db.session() as s:
        m = s.scalar(select(Machine).where(Machine.slug == machine))
        assert m is not None and m.device is not None
        quinn = s.scalar(select(Person).where(Person.name == "Quinn Qualified"))
        person = s.scalar(select(Person).where(Person.name == NAMES[badge]))
        assert quinn is not None and person is not None
        booking = Booking(
            machine_id=m.id,
            person_id=quinn.id,
            starts_at=T + timedelta(hours=1),
            ends_at=T + timedelta(hours=2),
            status=status,
        )
        session = MachineSession(
            id=str(uuid.uuid4()),
            machine_id=m.id,
            device_id=m.device.id,
            person_id=person.id,
            badge_uid=badge,
            started_at=T + timedelta(minutes=30),
        )
        s.add_all([booking, session])
        m.live_session_id = session.id
        s.flush()
        return booking.id, session.id


def _due(db: Database, now: datetime) -> list[booking_locks.BookingLock]:
    with db.session() as s:
        return booking_locks.due_locks(s, now)


def test_booking_starts_lock_someone_elses_session_once(trainer_lab: Database) -> None:
    booking_id, session_id = _setup(trainer_lab, PETE)
    assert _due(trainer_lab, T + timedelta(minutes=59)) == [], "not before the start"
    (lock,) = _due(trainer_lab, T + timedelta(hours=1))
    assert (lock.device_id, lock.session_id, lock.booking_id) == ("pi-laser-1", session_id, booking_id)
    assert lock.cmd_id == booking_locks.cmd_id(booking_id, session_id)
    assert _due(trainer_lab, T + timedelta(hours=1, seconds=1)) == [], "once: the audit log says it was sent"
    with trainer_lab.session() as s:
        entry = s.scalar(select(AuditLog).where(AuditLog.action == booking_locks.AUDIT_ACTION))
        assert entry is not None and entry.subject == f"booking:{booking_id}"
        assert entry.detail["session"] == session_id and entry.detail["person"] == "Pete Printtrainer"


def test_booking_starts_a_bridge_that_was_down_catches_up_until_the_end(trainer_lab: Database) -> None:
    _setup(trainer_lab, PETE)
    assert _due(trainer_lab, T + timedelta(hours=2)) == [], "the booking is over"
    assert len(_due(trainer_lab, T + timedelta(minutes=90))) == 1, "still during the booking"


@pytest.mark.parametrize(
    ("badge", "status", "machine"),
    [
        (QUINN, BookingStatus.BOOKED, "laser-1"),  # the holder
        (TINA, BookingStatus.BOOKED, "laser-1"),  # a trainer of the laser
        (PETE, BookingStatus.BOOKED, "printer-1"),  # a trainer of printers, on a printer
        (PETE, BookingStatus.CANCELLED, "laser-1"),
        (PETE, BookingStatus.RELEASED, "laser-1"),
    ],
)
def test_booking_starts_exempt_sessions_and_inactive_bookings(
    trainer_lab: Database, badge: str, status: BookingStatus, machine: str
) -> None:
    _setup(trainer_lab, badge, status, machine)
    assert _due(trainer_lab, T + timedelta(hours=1)) == []
    with trainer_lab.session() as s:
        assert (
            s.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == booking_locks.AUDIT_ACTION))
            == 0
        )


def test_booking_starts_ended_session_is_not_locked(trainer_lab: Database) -> None:
    _booking_id, session_id = _setup(trainer_lab, PETE)
    with trainer_lab.session() as s:
        row = s.get(MachineSession, session_id)
        assert row is not None
        row.ended_at = T + timedelta(minutes=59)
    assert _due(trainer_lab, T + timedelta(hours=1)) == []
