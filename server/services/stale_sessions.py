"""Sessions left open by a device that will not end them: a Pi that died with its SD card.

The agent is the only one who ends a session (``session_ended``). A Pi that dies for good leaves
its open session open on the server: the machine's hours would count up to now, for ever (up to
``usage.MAX_SPAN``). Such a session is *stale* when its device has been offline for longer than
:data:`STALE_AFTER`, or has no record any more, or a later session has started on the same
machine (the machine was used since: a replacement Pi, provisioned for the same device id, is
online again and never heard of this one).

An admin closes a stale session (:func:`close`) with a reason and an end no later than the last
evidence of it (:func:`last_evidence`: its start, its jobs and events, and, while the device is
offline with the session on its machine, when the device was last heard of). Its hours count up to
that end; the close is audited (``session.closed``). The staff rule applies: admins only, and
never on their own session. If the agent ever comes back with the session's real end (its outbox
copied onto a new card), ingestion keeps the admin's end (``ingest._better_end``): the hours are
not counted twice, and the agent's event is stored in the ledger as every event is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, aliased, selectinload

from server.i18n import N_
from server.models import Device, Job, Machine, MachineSession, Person, StoredEvent
from server.services import audit, energy, training
from server.services.training import Attempt, TrainingError

# A device silent this long with a session open: the session is shown to the admins as stale.
STALE_AFTER = timedelta(minutes=30)
# The end_reason of a session an admin closed (ingestion never replaces it: ingest._better_end).
CLOSED_BY_ADMIN = "closed_by_admin"
MAX_REASON = 500


@dataclass(frozen=True)
class Stale:
    session: MachineSession
    device: Device | None
    last_evidence: datetime
    superseded: bool  # a later session started on the machine


def last_evidence(db: Session, row: MachineSession) -> datetime:
    """The latest moment the server knows the session was still going: its start, its jobs'
    times, its events' times, and the device's last sign of life while the device is offline with
    this session as its machine's live one (the Pi died with it open)."""
    assert row.started_at is not None
    times = [row.started_at]
    times += [
        t
        for t in db.execute(
            select(func.max(Job.started_at), func.max(Job.finished_at)).where(Job.session_id == row.id)
        ).one()
        if t is not None
    ]
    newest_event = db.scalar(select(func.max(StoredEvent.ts)).where(StoredEvent.session_id == row.id))
    if newest_event is not None:
        times.append(newest_event)
    device = db.get(Device, row.device_id)
    machine = row.machine
    if (
        device is not None
        and not device.online
        and device.last_seen is not None
        and machine.live_session_id == row.id
    ):
        times.append(device.last_seen)
    return max(times)


def _superseded(db: Session, row: MachineSession) -> bool:
    assert row.started_at is not None
    return (
        db.scalar(
            select(MachineSession.id)
            .where(
                MachineSession.machine_id == row.machine_id,  # the (machine, started) index
                MachineSession.started_at > row.started_at,
                MachineSession.id != row.id,
            )
            .limit(1)
        )
        is not None
    )


def is_stale(db: Session, row: MachineSession, now: datetime, after: timedelta = STALE_AFTER) -> bool:
    if row.ended_at is not None or row.started_at is None:
        return False
    device = db.get(Device, row.device_id)
    if device is None or device.machine_id != row.machine_id:
        return True
    if not device.online and (device.last_seen is None or device.last_seen < now - after):
        return True
    return _superseded(db, row)


def stale_sessions(db: Session, now: datetime, after: timedelta = STALE_AFTER) -> list[Stale]:
    """Every stale open session, oldest first (for the admin overview)."""
    later = aliased(MachineSession)
    newer_exists = (
        select(later.id)
        .where(
            later.machine_id == MachineSession.machine_id,
            later.started_at > MachineSession.started_at,
            later.id != MachineSession.id,
        )
        .exists()
    )
    rows = db.scalars(
        select(MachineSession)
        .outerjoin(Device, Device.id == MachineSession.device_id)
        .where(
            MachineSession.ended_at.is_(None),
            MachineSession.started_at.is_not(None),
            (
                Device.id.is_(None)
                | (Device.machine_id.is_(None) | (Device.machine_id != MachineSession.machine_id))
                | (Device.online.is_(False) & (Device.last_seen.is_(None) | (Device.last_seen < now - after)))
                | newer_exists
            ),
        )
        .options(selectinload(MachineSession.machine).selectinload(Machine.site))
        .options(selectinload(MachineSession.person))
        .order_by(MachineSession.started_at)
    ).all()
    return [
        Stale(row, db.get(Device, row.device_id), last_evidence(db, row), _superseded(db, row))
        for row in rows
    ]


def close(
    db: Session,
    actor: Person,
    row: MachineSession,
    end: datetime,
    reason: str | None,
    now: datetime,
    after: timedelta = STALE_AFTER,
) -> None:
    """End a stale session at ``end`` for ``reason``, in ``actor``'s name (audited). Refusals
    are :class:`TrainingError`: the staff rule's are ``forbidden`` (and audited by the caller,
    ``training.audit_refusal``); the others say what to change."""
    person = row.person
    attempt = Attempt(
        "close_session", actor.id, person.id if person else 0, person.name if person else "", ""
    )
    if not actor.active or not actor.is_admin:
        raise TrainingError("admin_only", N_("Only admins can close a session."), attempt=attempt)
    if person is not None:
        training.check_records(actor, person, "close_session")
    if row.ended_at is not None or row.started_at is None:
        raise TrainingError("not_open", N_("This session is not open."))
    if not is_stale(db, row, now, after):
        raise TrainingError(
            "not_stale",
            N_(
                "The machine's device is online and will end this session itself. Only a session "
                "whose device has been offline for more than {minutes} minutes can be closed here."
            ),
            minutes=int(after.total_seconds() // 60),
        )
    text = (reason or "").strip()
    if not text:
        raise TrainingError("reason_required", N_("Please give a reason."))
    if len(text) > MAX_REASON:
        raise TrainingError(
            "reason_too_long", N_("Please keep the reason under {count} characters."), count=MAX_REASON
        )
    evidence = last_evidence(db, row)
    if end > evidence:
        raise TrainingError(
            "end_after_evidence",
            N_("The end cannot be later than the last sign of this session."),
        )
    if end < row.started_at:
        raise TrainingError("end_before_start", N_("The end cannot be before the session's start."))
    row.ended_at = end
    row.end_reason = CLOSED_BY_ADMIN
    # Its hours up to that end, in every figure: the dashboards' aggregates count the span, and
    # the machine's total, the person's hours and supervised hours count unlocked_s (none before:
    # the overview and the person's page showed nothing for it). No run time: nobody measured it.
    row.unlocked_s = (end - row.started_at).total_seconds()
    energy.close(row)
    machine = row.machine
    if machine.live_session_id == row.id:
        machine.live_session_id = None
        machine.live_running = False
    audit.record(
        db,
        actor,
        "session.closed",
        f"session:{row.id}",
        {
            "machine": machine.slug,
            "person": person.name if person else None,
            "started": row.started_at.isoformat(),
            "ended": end.isoformat(),
            "last_evidence": evidence.isoformat(),
            "reason": text,
        },
        at=now,
    )
    db.flush()
