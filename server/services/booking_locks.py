"""Booking locks: when a booking begins, the walk-in session still running on its machine is
locked, so the machine is free for the booking's holder.

The decision already lets a walk-in in only until the next booking starts, but a booking made
*after* the walk-in tapped (or a session the agent opened offline from its allow-list, which
knows no bookings) can still be running when the booking begins. The bridge asks
:func:`due_locks` every second or so and sends each answer as a ``lock`` command with reason
``booking_end`` and the session's id: not forced, so the agent waits for a running job
(``lock_deferred``) and never cuts power mid-job.

Exempt, as in the decision: the booking's holder, and a trainer of the machine type.

Each lock is sent once per (booking, session). What was sent is recorded in the audit log in the
same transaction (action :data:`AUDIT_ACTION`), so a restarted bridge, or a second one, does not
send it again; the command id is derived from the pair, so a copy that slips through anyway (a
crash between sending and committing) is one the agent recognises and ignores.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import AuditLog, Booking, BookingStatus, Device, Machine, MachineSession, Person
from server.services import audit
from server.services.decision import check_trainer, load_badges, load_requirements

AUDIT_ACTION = "booking.lock_session"
# uuid5 namespace of the lock commands' ids (any fixed UUID would do; this one is ours).
_CMD_NAMESPACE = uuid.UUID("6a0d3c57-54a4-4f0e-9b0c-2f0b7e6c1d42")


@dataclass(frozen=True)
class BookingLock:
    """A ``lock`` command to send: ``session`` at ``device_id`` must end for ``booking_id``."""

    device_id: str
    session_id: str
    booking_id: str
    cmd_id: str


def cmd_id(booking_id: str, session_id: str) -> str:
    """The same command id for the same (booking, session), whoever sends it and how often."""
    return str(uuid.uuid5(_CMD_NAMESPACE, f"{booking_id}/{session_id}"))


def due_locks(db: Session, now: datetime, skip: set[tuple[str, str]] | None = None) -> list[BookingLock]:
    """The locks due now, each recorded in the audit log in ``db``'s transaction.

    A booking is due from its start to its end (a bridge that was down at the start catches up);
    its machine's open session (``Machine.live_session_id``) is locked unless it belongs to the
    holder or to a trainer of the machine type. ``skip``: (booking id, session id) pairs known to
    be sent already (the caller's memory; spares the audit query).
    """
    rows = db.execute(
        select(Booking, MachineSession, Device.id)
        .join(Machine, Machine.id == Booking.machine_id)
        .join(MachineSession, MachineSession.id == Machine.live_session_id)
        .join(Device, Device.machine_id == Machine.id)
        .where(
            Booking.status == BookingStatus.BOOKED,
            Booking.starts_at <= now,
            Booking.ends_at > now,
            MachineSession.ended_at.is_(None),
        )
        .order_by(Booking.starts_at)
    ).all()
    due: list[BookingLock] = []
    for booking, session, device_id in rows:
        if skip is not None and (booking.id, session.id) in skip:
            continue
        if session.person_id is not None and session.person_id == booking.person_id:
            continue  # the holder (also an early tap inside the guard time)
        if _trainer_of_type(db, booking.machine, session, now):
            continue
        if _sent(db, booking.id, session.id):
            continue
        person = db.get(Person, session.person_id) if session.person_id is not None else None
        audit.record(
            db,
            None,
            AUDIT_ACTION,
            f"booking:{booking.id}",
            {
                "session": session.id,
                "machine": booking.machine.slug,
                "person": person.name if person is not None else session.badge_uid,
                "holder": booking.person.name,
                "starts_at": booking.starts_at.isoformat(),
            },
            at=now,
            actor_label="bridge",
        )
        due.append(BookingLock(device_id, session.id, booking.id, cmd_id(booking.id, session.id)))
    if due:
        db.flush()
    return due


def _sent(db: Session, booking_id: str, session_id: str) -> bool:
    subject = f"booking:{booking_id}"
    details = db.scalars(
        select(AuditLog.detail).where(AuditLog.action == AUDIT_ACTION, AuditLog.subject == subject)
    )
    return any(detail.get("session") == session_id for detail in details)


def _trainer_of_type(db: Session, machine: Machine, session: MachineSession, now: datetime) -> bool:
    """Is the session's person (use mode) a trainer of this machine type, as the decision counts it?"""
    if session.mode != "use" or session.badge_uid is None:
        return False
    badge = load_badges(db, [session.badge_uid])[session.badge_uid.upper()]
    today = now.astimezone(ZoneInfo(machine.site.timezone)).date()
    return check_trainer(load_requirements(db, machine.machine_type_id), badge, today) is not None
