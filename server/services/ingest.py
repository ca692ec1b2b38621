"""Ingestion of agent events, exactly once by event id, in any order and however late.

The agent is the source of truth for what the relay did. An event is first written
to the ``events`` ledger (primary key = event id); only a new id changes sessions and
jobs, so a repeated delivery (QoS 1 is at-least-once) changes nothing. A
``session_ended`` may arrive before its ``session_started`` (an outbox replayed out of
order): whichever comes first creates the session row and the other fills it in.
When a supervised session is complete (both ends known), the training service grants
what its hours completed (``training.advance_after_session``), in the trainer's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.models import Badge, Device, Job, Machine, MachineSession, StoredEvent
from server.services import attendance, bookings, training
from werkbank_protocol import ProtocolError, parse_ts
from werkbank_protocol.messages import (
    CheckinTap,
    Event,
    Fault,
    JobFinished,
    JobStarted,
    LockDeferred,
    SessionEnded,
    SessionStarted,
)


@dataclass
class IngestResult:
    event_id: str
    new: bool


def ingest_event(db: Session, device: Device, event: Event, now: datetime | None = None) -> IngestResult:
    """Store ``event`` once and apply it. ProtocolError when it contradicts what is stored.

    ``now`` is when the server learns it (the time of a level a supervised session completes).
    """
    if isinstance(event, CheckinTap):
        return _checkin(db, device, event)
    if device.machine is None:
        raise ProtocolError("unassigned_device", f"device {device.id!r} serves no machine; assign it first")
    if db.get(StoredEvent, event.id) is not None:
        return IngestResult(event.id, new=False)
    ts = parse_ts(event.ts)
    machine = device.machine
    if event.session is not None:
        _check_session_owner(db, device, event.session)
    ledger = StoredEvent(
        id=event.id,
        device_id=device.id,
        type=str(type(event).__struct_config__.tag),
        session_id=event.session,
        ts=ts,
        payload=msgspec.to_builtins(event),
    )
    if db.get_bind().dialect.name == "sqlite":
        # No savepoint on SQLite: pysqlite opens no transaction before a SAVEPOINT, so its
        # RELEASE would commit the ledger row on its own, apart from what the event changes,
        # and a crash in between would lose the event. One bridge per SQLite file, so no race.
        db.add(ledger)
        db.flush()
    else:
        # The ledger row goes in first, in a savepoint: a second bridge racing us on the same
        # id hits the primary key and we report a duplicate instead of applying it twice.
        try:
            with db.begin_nested():
                db.add(ledger)
        except IntegrityError:
            return IngestResult(event.id, new=False)

    match event:
        case SessionStarted():
            _after_supervised(db, _session_started(db, device, machine, event, ts), now)
        case SessionEnded():
            _after_supervised(db, _session_ended(db, device, machine, event, ts), now)
        case JobStarted():
            job = _job(db, device, machine, event.session, event.job)
            job.kind = event.kind
            job.file = event.file
            job.estimated_s = event.estimated_s
            job.started_at = ts
        case JobFinished():
            job = _job(db, device, machine, event.session, event.job)
            job.status = event.status
            job.duration_s = event.duration_s
            job.finished_at = ts
            job.filament_mm = event.filament_mm
            job.filament_g = event.filament_g
        case Fault() | LockDeferred():
            pass  # kept in the ledger; shown on the machine page
    return IngestResult(event.id, new=True)


def _checkin(db: Session, device: Device, event: CheckinTap) -> IngestResult:
    """A tap the entrance reader stored while the server did not answer: check the badge in or
    out at its time, flagged offline. Only an entrance reader may report one."""
    site = attendance.entrance_site(db, device.id)
    if site is None:
        raise ProtocolError(
            "not_an_entrance", f"device {device.id!r} reported a check-in but is no entrance reader"
        )
    if db.get(StoredEvent, event.id) is not None:
        return IngestResult(event.id, new=False)
    ts = parse_ts(event.ts)
    db.add(
        StoredEvent(
            id=event.id,
            device_id=device.id,
            type="checkin",
            session_id=None,
            ts=ts,
            payload=msgspec.to_builtins(event),
        )
    )
    db.flush()
    attendance.tap(db, site, event.badge, ts, device.id, offline=True)
    return IngestResult(event.id, new=True)


def _check_session_owner(db: Session, device: Device, session_id: str) -> None:
    owner = db.scalar(select(MachineSession.device_id).where(MachineSession.id == session_id))
    if owner is not None and owner != device.id:
        raise ProtocolError(
            "foreign_session", f"session {session_id} belongs to device {owner!r}, not {device.id!r}"
        )


def _session(db: Session, device: Device, machine: Machine, session_id: str) -> MachineSession:
    row = db.get(MachineSession, session_id)
    if row is None:
        row = MachineSession(id=session_id, machine_id=machine.id, device_id=device.id)
        db.add(row)
    return row


def _person_of(db: Session, uid: str | None) -> int | None:
    if uid is None:
        return None
    return db.scalar(select(Badge.person_id).where(Badge.uid == uid.upper()))


def _session_started(
    db: Session, device: Device, machine: Machine, event: SessionStarted, ts: datetime
) -> MachineSession:
    row = _session(db, device, machine, event.session)
    row.started_at = ts
    row.badge_uid = event.badge
    row.person_id = _person_of(db, event.badge)
    row.trainer_id = _person_of(db, event.trainer_badge)
    row.offline = event.offline
    row.mode = event.mode
    # The holder tapped in: their booking is not a no-show (late offline sessions count too).
    bookings.check_in(db, machine.id, row.person_id, ts)
    if row.ended_at is None and _is_newest(machine, ts):
        machine.live_session_id = row.id
        machine.live_updated_at = ts
    return row


def _session_ended(
    db: Session, device: Device, machine: Machine, event: SessionEnded, ts: datetime
) -> MachineSession | None:
    row = _session(db, device, machine, event.session)
    if row.ended_at is not None and not _better_end(row.end_reason, event.reason):
        return None  # the end we have is the real one; a recovery guess must not replace it
    row.ended_at = ts
    row.end_reason = event.reason
    row.unlocked_s = event.unlocked_s
    row.run_s = event.run_s
    if machine.live_session_id == row.id:
        machine.live_session_id = None
        machine.live_running = False
        machine.live_updated_at = max(ts, machine.live_updated_at or ts)
    return row


def _after_supervised(db: Session, row: MachineSession | None, now: datetime | None) -> None:
    """A supervised session just became complete: its hours may finish a level."""
    if row is None or row.mode != "supervise" or row.started_at is None or row.ended_at is None:
        return
    now = now or datetime.now(UTC)
    db.flush()  # the hours query must see this session's times
    today = now.astimezone(ZoneInfo(row.machine.site.timezone)).date()
    training.advance_after_session(db, row, now, today)


def _better_end(stored: str | None, incoming: str) -> bool:
    """A real end (tap out, timeout, lock) beats ``power_loss_recovered``, which the agent sends
    when it restarts with the session still in its state file; it may have sent the real end just
    before it died."""
    return stored == "power_loss_recovered" and incoming != "power_loss_recovered"


def _job(db: Session, device: Device, machine: Machine, session_id: str, job_id: str) -> Job:
    _session(db, device, machine, session_id)
    job = db.get(Job, job_id)
    if job is None:
        job = Job(id=job_id, session_id=session_id, machine_id=machine.id)
        db.add(job)
    return job


def _is_newest(machine: Machine, ts: datetime) -> bool:
    """Late events (a replayed outbox) must not overwrite the machine's live state."""
    return machine.live_updated_at is None or ts >= machine.live_updated_at
