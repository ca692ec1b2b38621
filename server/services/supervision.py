"""Supervised sessions awaiting a trainer's confirmation: the queue, confirm, reject.

A device may report a supervised session the server did not decide (one it opened offline, or
one decided before decisions named their trainer). Ingestion stores it as hours of use and marks
it pending (``server.services.ingest``); it counts as supervised hours, and may complete a level,
only once a trainer confirms it, in that trainer's name. Who may review: a trainer (or admin) of
the person's site who trains every competency the machine's type requires, never on their own
session. Confirmations and rejections are audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from server.i18n import N_
from server.models import (
    Competency,
    Machine,
    MachineSession,
    Person,
    Qualification,
    Requirement,
    SessionReview,
)
from server.services import audit, training
from server.services.training import TrainingError

QUEUE_LIMIT = 100


def _required(db: Session, machine_type_id: int) -> Sequence[Competency]:
    return db.scalars(
        select(Competency)
        .join(Requirement, Requirement.competency_id == Competency.id)
        .where(Requirement.machine_type_id == machine_type_id)
    ).all()


def trains_type(db: Session, actor: Person, machine_type_id: int, today: date) -> bool:
    """Does ``actor`` train every competency the machine type requires (as supervising at the
    machine asks of a trainer)?"""
    required = _required(db, machine_type_id)
    return bool(required) and all(training.can_train(db, actor, c, today) for c in required)


def pending(db: Session, actor: Person, today: date) -> list[MachineSession]:
    """The ended sessions awaiting confirmation that ``actor`` may review, oldest first."""
    rows = db.scalars(
        select(MachineSession)
        .join(Person, Person.id == MachineSession.person_id)
        .where(
            MachineSession.review == SessionReview.PENDING,
            MachineSession.ended_at.is_not(None),
            Person.site_id == actor.site_id,
            Person.id != actor.id,
        )
        .options(
            selectinload(MachineSession.machine),
            selectinload(MachineSession.person),
            selectinload(MachineSession.claimed_trainer),
        )
        .order_by(MachineSession.started_at, MachineSession.id)
        .limit(QUEUE_LIMIT)
    ).all()
    trains: dict[int, bool] = {}
    out = []
    for row in rows:
        type_id = row.machine.machine_type_id
        if type_id not in trains:
            trains[type_id] = trains_type(db, actor, type_id, today)
        if trains[type_id]:
            out.append(row)
    return out


def _check(db: Session, session: MachineSession, actor: Person, today: date) -> Person:
    """The session's person, when ``actor`` may review it now; TrainingError otherwise."""
    person = session.person
    if session.review != SessionReview.PENDING:
        raise TrainingError("not_pending", N_("This session was confirmed or rejected already."))
    if person is None or person.site_id != actor.site_id:
        raise TrainingError("other_site", N_("This session is not at your site."))
    if person.id == actor.id:
        raise TrainingError("own_training", N_("You cannot confirm or reject your own sessions."))
    if session.ended_at is None:
        raise TrainingError("not_ended", N_("This session has not ended yet. Confirm it when it has."))
    machine: Machine = session.machine
    if not actor.active or not trains_type(db, actor, machine.machine_type_id, today):
        raise TrainingError("not_a_trainer", N_("You are not a trainer for {machine}."), machine=machine.name)
    return person


def _audit(
    db: Session, action: str, session: MachineSession, person: Person, actor: Person, now: datetime
) -> None:
    audit.record(
        db,
        actor,
        action,
        f"person:{person.id}",
        {
            "person": person.name,
            "session": session.id,
            "machine": session.machine.slug,
            "device": session.device_id,
            "unlocked_s": session.unlocked_s,
            "claimed_trainer_id": session.claimed_trainer_id,
        },
        at=now,
    )


def confirm(
    db: Session, session: MachineSession, actor: Person, now: datetime, today: date
) -> list[Qualification]:
    """``actor`` supervised this session: it counts as supervised hours in their name, and
    grants what those hours complete. Returns the levels granted."""
    person = _check(db, session, actor, today)
    session.mode = "supervise"
    session.trainer = actor
    session.review = SessionReview.CONFIRMED
    session.reviewed_by = actor
    session.reviewed_at = now
    _audit(db, "session.supervision_confirmed", session, person, actor, now)
    db.flush()
    return training.advance_after_session(db, session, now, today)


def reject(db: Session, session: MachineSession, actor: Person, now: datetime, today: date) -> None:
    """Nobody supervised this session: it stays hours of use and leaves the queue."""
    person = _check(db, session, actor, today)
    session.review = SessionReview.REJECTED
    session.reviewed_by = actor
    session.reviewed_at = now
    _audit(db, "session.supervision_rejected", session, person, actor, now)
    db.flush()
