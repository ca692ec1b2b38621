"""Ingestion of agent events, exactly once by event id, in any order and however late.

The agent is the source of truth for what the relay did. An event is first written
to the ``events`` ledger (primary key = event id); only a new id changes sessions and
jobs, so a repeated delivery (QoS 1 is at-least-once) changes nothing. A
``session_ended`` may arrive before its ``session_started`` (an outbox replayed out of
order): whichever comes first creates the session row and the other fills it in.
The device is not believed on its word (``server.services.device_claims`` checks each event
first): a session's person, mode and trainer come from the server's own decision for it. A
supervised session the server did not decide (an offline one) counts as hours of use and waits
for a trainer's confirmation (``server.services.supervision``). When a supervised session is
complete (both ends known), the training service grants what its hours completed
(``training.advance_after_session``), in the trainer's name.
Times are the server's (``clocks.event_time``); an offline session's start is checked against
what the server knew then (``reconcile.check_offline_session``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.models import Badge, Device, Job, Machine, MachineSession, SessionReview, StoredEvent
from server.services import attendance, bookings, cards, clocks, device_claims, energy, reconcile, training
from server.services.device_claims import Decided, Refusal
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import (
    BadgeEnrolled,
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
    # Refused for good: nothing was stored, but the event is acknowledged (device_claims.Refusal).
    refused: ProtocolError | None = None
    # Claims the server overruled with its own facts (the event was applied): counted, logged.
    overruled: list[ProtocolError] = field(default_factory=list)


def ingest_event(db: Session, device: Device, event: Event, now: datetime | None = None) -> IngestResult:
    """Store ``event`` once and apply it, unless the device may not say it.

    ``now`` is when the server learns it (the bound of an online session's span, the time of a
    level a supervised session completes). An event that can never be true comes back with
    ``refused`` set and changes nothing; a ProtocolError means "not now" (an unassigned device,
    a device over its rate): the agent re-sends it later.
    """
    if isinstance(event, CheckinTap):
        return _checkin(db, device, event)
    if device.machine is None:
        raise ProtocolError("unassigned_device", f"device {device.id!r} serves no machine; assign it first")
    if db.get(StoredEvent, event.id) is not None:
        return IngestResult(event.id, new=False)
    now = now or datetime.now(UTC)
    machine = device.machine
    try:
        # The server's clock, not a skewed Pi's (an online session starts at its decision).
        ts, time_corrected = clocks.event_time(db, device, event)
        decided = device_claims.check(db, device, machine, event, ts, now)
    except Refusal as exc:
        return IngestResult(event.id, new=False, refused=exc)
    except ProtocolError as exc:  # a time that matches the pattern but is no date (2026-13-45)
        return IngestResult(event.id, new=False, refused=Refusal(exc.code, exc.detail))
    if isinstance(event, Fault) and device_claims.count_repeat(db, device, event, ts, now):
        return IngestResult(event.id, new=True)
    if isinstance(event, Fault | LockDeferred):
        device_claims.check_rate(db, device, now)
    ledger = StoredEvent(
        id=event.id,
        device_id=device.id,
        type=str(type(event).__struct_config__.tag),
        session_id=event.session,
        ts=ts,
        received_at=now,
        payload=msgspec.to_builtins(event),
        time_corrected=time_corrected,
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

    result = IngestResult(event.id, new=True)
    match event:
        case SessionStarted():
            row = _session_started(db, device, machine, event, ts, decided, result.overruled)
            _after_supervised(db, row, now)
            reconcile.check_offline_session(db, row, now)
        case SessionEnded():
            _after_supervised(db, _session_ended(db, device, machine, event, ts, decided), now)
        case JobStarted():
            job = _job(db, device, machine, event.session, event.job, decided)
            job.kind = event.kind
            job.file = event.file
            job.estimated_s = event.estimated_s
            job.started_at = ts
        case JobFinished():
            job = _job(db, device, machine, event.session, event.job, decided)
            job.status = event.status
            job.duration_s = event.duration_s
            job.finished_at = ts
            job.filament_mm = event.filament_mm
            job.filament_g = event.filament_g
        case Fault() | LockDeferred():
            pass  # kept in the ledger; shown on the machine page
        case BadgeEnrolled():
            # Links the card only if this station was sent the keys of this very card.
            cards.complete_enrolment(db, device, event.enrolment, event.badge, now)
    if time_corrected and isinstance(event, SessionStarted | SessionEnded):
        _session(db, device, machine, event.session, decided).time_corrected = True
    return result


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
    ts, _corrected = clocks.event_time(db, device, event)
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


def _session(
    db: Session, device: Device, machine: Machine, session_id: str, decided: Decided | None
) -> MachineSession:
    row = db.get(MachineSession, session_id)
    if row is None:
        row = MachineSession(id=session_id, machine_id=machine.id, device_id=device.id)
        if decided is not None:
            # Who, in which mode, with which trainer: the server decided it, whichever event comes first.
            row.offline = False
            row.badge_uid = decided.badge_uid or None  # "" once the person's data was erased
            row.person_id = decided.person_id
            row.mode = decided.mode
            row.trainer_id = decided.trainer_id if decided.mode != "use" else None
        else:
            row.offline = True  # no decision of the server stands behind it, whatever the device says
        db.add(row)
    return row


def _person_of(db: Session, uid: str | None) -> int | None:
    if uid is None:
        return None
    return db.scalar(select(Badge.person_id).where(Badge.uid == uid.upper()))


def _session_started(
    db: Session,
    device: Device,
    machine: Machine,
    event: SessionStarted,
    ts: datetime,
    decided: Decided | None,
    overruled: list[ProtocolError],
) -> MachineSession:
    row = _session(db, device, machine, event.session, decided)
    row.started_at = ts
    claimed_trainer = _person_of(db, event.trainer_badge)
    if decided is not None:
        _compare(event, decided, claimed_trainer, overruled)
        if decided.mode == "supervise" and decided.trainer_id is None:
            # Decided before decisions named their trainer (migration 0007): a trainer confirms it.
            _await_review(row, event.mode, claimed_trainer)
    else:
        # Nobody but the device says who, how and with whom: it counts as hours of use, and a
        # supervised session waits for a trainer's confirmation before it counts as training.
        row.badge_uid = event.badge
        row.person_id = _person_of(db, event.badge)
        row.offline = True
        row.mode = "use"
        row.trainer_id = None
        if not event.offline:
            overruled.append(
                ProtocolError("claim_mismatch", f"session {event.session} has no decision of this server")
            )
        if event.mode == "supervise" and row.person_id is not None:
            _await_review(row, event.mode, claimed_trainer)
        elif event.mode != "use":
            overruled.append(
                ProtocolError(
                    "claim_mismatch", f"mode {event.mode!r} of session {event.session} needs the server"
                )
            )
    # The holder tapped in: their booking is not a no-show (late offline sessions count too).
    bookings.check_in(db, machine.id, row.person_id, ts)
    if row.ended_at is None and _is_newest(machine, ts):
        machine.live_session_id = row.id
        machine.live_updated_at = ts
    return row


def _compare(
    event: SessionStarted, decided: Decided, claimed_trainer: int | None, overruled: list[ProtocolError]
) -> None:
    """Note where the device's event says otherwise than the server's decision (which stands)."""
    differences = []
    if event.badge != decided.badge_uid:
        differences.append(f"badge {event.badge}, decided for {decided.badge_uid}")
    if event.mode != decided.mode:
        differences.append(f"mode {event.mode!r}, decided {decided.mode!r}")
    if decided.mode != "use" and decided.trainer_id is not None and claimed_trainer != decided.trainer_id:
        differences.append("another trainer than the decided one")
    if differences:
        overruled.append(
            ProtocolError(
                "claim_mismatch",
                f"session {event.session} reported with {'; '.join(differences)}: stored as decided",
            )
        )


def _await_review(row: MachineSession, claimed_mode: str, claimed_trainer: int | None) -> None:
    row.mode = "use"
    row.trainer_id = None
    row.claimed_mode = claimed_mode
    row.claimed_trainer_id = claimed_trainer
    row.review = SessionReview.PENDING


def _session_ended(
    db: Session, device: Device, machine: Machine, event: SessionEnded, ts: datetime, decided: Decided | None
) -> MachineSession | None:
    row = _session(db, device, machine, event.session, decided)
    if row.ended_at is not None and not _better_end(row.end_reason, event.reason):
        return None  # the end we have is the real one; a recovery guess must not replace it
    row.ended_at = ts
    row.end_reason = event.reason
    row.unlocked_s = event.unlocked_s
    row.run_s = event.run_s
    energy.close(row)
    if machine.live_session_id == row.id:
        machine.live_session_id = None
        machine.live_running = False
        machine.live_updated_at = max(ts, machine.live_updated_at or ts)
    return row


def _after_supervised(db: Session, row: MachineSession | None, now: datetime) -> None:
    """A supervised session just became complete: its hours may finish a level."""
    if row is None or row.mode != "supervise" or row.started_at is None or row.ended_at is None:
        return
    db.flush()  # the hours query must see this session's times
    today = now.astimezone(ZoneInfo(row.machine.site.timezone)).date()
    training.advance_after_session(db, row, now, today)


def _better_end(stored: str | None, incoming: str) -> bool:
    """A real end (tap out, timeout, lock) beats ``power_loss_recovered``, which the agent sends
    when it restarts with the session still in its state file; it may have sent the real end just
    before it died."""
    return stored == "power_loss_recovered" and incoming != "power_loss_recovered"


def _job(
    db: Session, device: Device, machine: Machine, session_id: str, job_id: str, decided: Decided | None
) -> Job:
    _session(db, device, machine, session_id, decided)
    job = db.get(Job, job_id)
    if job is None:
        job = Job(id=job_id, session_id=session_id, machine_id=machine.id)
        db.add(job)
    return job


def _is_newest(machine: Machine, ts: datetime) -> bool:
    """Late events (a replayed outbox) must not overwrite the machine's live state."""
    return machine.live_updated_at is None or ts >= machine.live_updated_at
