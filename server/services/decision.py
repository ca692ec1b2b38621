"""The decision: may this badge unlock this machine now? One function, every rule, one reason code.

A tap is allowed when the badge is active, the person is active, the machine is
available and open, the person holds every competency the machine type requires
(valid, not expired, not revoked) or a trainer supervises, and the person's limits
hold. Bookings join the rules in a later issue.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.models import (
    Badge,
    BadgeStatus,
    Level,
    Machine,
    MachineSession,
    MachineStatus,
    OpeningHours,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
)
from server.services import messages

# Sessions older than this no longer count toward a person's limit even if their end was never
# reported (a Pi that died for good must not lock its last user out forever).
STALE_SESSION = timedelta(hours=24)


@dataclass
class Decision:
    allowed: bool
    reason: str
    message: dict[str, str]
    person: Person | None = None
    trainer: Person | None = None
    session_id: str | None = None
    until: datetime | None = None
    detail: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QualificationState:
    """A person's current standing in one competency, derived from the newest history entry."""

    level: Level | None
    valid_until: date | None
    revoked: bool
    expired: bool

    @property
    def usable(self) -> bool:
        return self.level is not None and not self.revoked and not self.expired


def current_qualifications(
    db: Session, person_id: int, competency_ids: list[int], today: date
) -> dict[int, QualificationState]:
    """The newest history entry per competency decides (history is append-only)."""
    if not competency_ids:
        return {}
    rows = db.scalars(
        select(Qualification)
        .where(Qualification.person_id == person_id, Qualification.competency_id.in_(competency_ids))
        .order_by(Qualification.id.desc())
    )
    states: dict[int, QualificationState] = {}
    for row in rows:
        if row.competency_id in states:
            continue
        revoked = row.action == QualificationAction.REVOKED
        expired = row.action == QualificationAction.EXPIRED or (
            row.valid_until is not None and row.valid_until < today
        )
        states[row.competency_id] = QualificationState(row.level, row.valid_until, revoked, expired)
    return states


def opening_window(db: Session, machine: Machine, now: datetime) -> tuple[bool, datetime | None, datetime | None]:
    """(open now, closes at, next opening) in UTC. No hours configured means always open."""
    rows = list(
        db.scalars(select(OpeningHours).where(OpeningHours.machine_id == machine.id))
    ) or list(
        db.scalars(
            select(OpeningHours).where(OpeningHours.site_id == machine.site_id, OpeningHours.machine_id.is_(None))
        )
    )
    if not rows:
        return True, None, None
    tz = ZoneInfo(machine.site.timezone)
    local = now.astimezone(tz)
    next_open: datetime | None = None
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        for row in sorted((r for r in rows if r.weekday == day.weekday()), key=lambda r: r.opens):
            opens = datetime.combine(day, row.opens, tz)
            closes = datetime.combine(day, row.closes, tz)
            if offset == 0 and opens <= local < closes:
                return True, closes.astimezone(UTC), None
            if opens > local and next_open is None:
                next_open = opens.astimezone(UTC)
        if next_open is not None:
            break
    return False, None, next_open


def _deny(reason: str, tz: str, key: str | None = None, person: Person | None = None, **params: object) -> Decision:
    return Decision(False, reason, messages.render(key or reason, tz, **params), person=person)


def decide(
    db: Session,
    machine: Machine,
    badge_uid: str,
    now: datetime,
    mode: str = "use",
    trainer_badge: str | None = None,
    max_open_sessions: int = 2,
) -> Decision:
    """Decide one tap. Reads only; the caller records the decision."""
    tz = machine.site.timezone
    badge = db.scalar(select(Badge).where(Badge.uid == badge_uid.upper()))
    if badge is None:
        return _deny("unknown_badge", tz)
    person = badge.person
    if badge.status != BadgeStatus.ACTIVE:
        return _deny("badge_blocked", tz, person=person)
    if not person.active:
        return _deny("person_inactive", tz, person=person)
    if machine.status != MachineStatus.AVAILABLE:
        return _deny("machine_maintenance", tz, person=person)

    is_open, closes_at, next_open = opening_window(db, machine, now)
    if not is_open:
        if next_open is None:
            return _deny("outside_opening_hours", tz, "outside_opening_hours_unknown", person=person)
        return _deny("outside_opening_hours", tz, person=person, opens=next_open)

    today = now.astimezone(ZoneInfo(tz)).date()
    requirements = list(db.scalars(select(Requirement).where(Requirement.machine_type_id == machine.machine_type_id)))
    trainer: Person | None = None
    if mode in ("supervise", "certify"):
        trainer = _check_trainer(db, machine, requirements, trainer_badge, today)
        if trainer is None:
            return _deny("trainer_required", tz, "trainer_not_qualified", person=person)
    else:
        refusal = _check_qualified(db, machine, person, requirements, today)
        if refusal is not None:
            return refusal

    open_sessions = db.scalar(
        select(func.count())
        .select_from(MachineSession)
        .where(
            MachineSession.person_id == person.id,
            MachineSession.ended_at.is_(None),
            MachineSession.started_at > now - STALE_SESSION,
        )
    ) or 0
    if open_sessions >= max_open_sessions:
        return _deny("session_limit", tz, person=person, count=open_sessions)

    until = now + timedelta(minutes=machine.max_session_min)
    if closes_at is not None:
        until = min(until, closes_at)
    return Decision(
        True,
        "ok",
        messages.render("ok", tz, name=person.first_name, until=until),
        person=person,
        trainer=trainer,
        session_id=str(uuid.uuid4()),
        until=until,
    )


def _check_qualified(
    db: Session, machine: Machine, person: Person, requirements: list[Requirement], today: date
) -> Decision | None:
    tz = machine.site.timezone
    states = current_qualifications(db, person.id, [r.competency_id for r in requirements], today)
    needs_trainer = False
    for req in requirements:
        state = states.get(req.competency_id)
        if state is None or state.level is None or state.revoked:
            return _deny("not_qualified", tz, person=person, machine=machine.machine_type.name)
        if state.expired:
            return _deny(
                "qualification_expired",
                tz,
                person=person,
                competency=lambda lang, c=req.competency: c.display_name(lang),
                date=state.valid_until or today,
            )
        if state.level.rank < Level(req.min_level).rank:
            needs_trainer = True
    if needs_trainer:
        return _deny("trainer_required", tz, person=person)
    return None


def _check_trainer(
    db: Session, machine: Machine, requirements: list[Requirement], trainer_badge: str | None, today: date
) -> Person | None:
    """The supervising trainer, if their badge is valid and they are qualified on this machine type."""
    if trainer_badge is None:
        return None
    badge = db.scalar(select(Badge).where(Badge.uid == trainer_badge.upper()))
    if badge is None or badge.status != BadgeStatus.ACTIVE:
        return None
    trainer = badge.person
    if not (trainer.active and trainer.is_trainer):
        return None
    states = current_qualifications(db, trainer.id, [r.competency_id for r in requirements], today)
    for req in requirements:
        state = states.get(req.competency_id)
        if state is None or not state.usable or state.level is None:
            return None
        if state.level.rank < Level(req.min_level).rank:
            return None
    return trainer
