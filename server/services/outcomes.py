"""Outcomes for the funder: how participants left (exits), where they stood six months later
(follow-ups), and integrations against a programme's yearly target.

An *integration* is an exit into employment or an apprenticeship (the figure Jobcenter
programmes count); further training and other exits are counted but are no integration.
An exit is recorded once per person by staff under the staff rule (``training.check_records``);
recording it again corrects it (audited either way). Six months after the exit the scheduler
asks the site's admins for the follow-up (:func:`prompt_follow_ups`, once per exit).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import (
    ExitReason,
    FollowUpStatus,
    Notification,
    ParticipantExit,
    Person,
    ProgrammeTarget,
)
from server.services import audit, notifications, training
from server.services.training import TrainingError, add_months

INTEGRATION_REASONS = frozenset({ExitReason.EMPLOYMENT, ExitReason.APPRENTICESHIP})
FOLLOW_UP_MONTHS = 6

REASON_LABELS: dict[ExitReason, str] = {
    ExitReason.EMPLOYMENT: N_("Employment"),
    ExitReason.APPRENTICESHIP: N_("Apprenticeship"),
    ExitReason.FURTHER_TRAINING: N_("Further training"),
    ExitReason.OTHER: N_("Other"),
}
FOLLOW_UP_LABELS: dict[FollowUpStatus, str] = {
    FollowUpStatus.EMPLOYED: N_("Employed"),
    FollowUpStatus.APPRENTICESHIP: N_("In an apprenticeship"),
    FollowUpStatus.FURTHER_TRAINING: N_("In further training"),
    FollowUpStatus.UNEMPLOYED: N_("Unemployed"),
    FollowUpStatus.UNKNOWN: N_("Unknown"),
}


def exit_of(db: Session, person_id: int) -> ParticipantExit | None:
    return db.scalar(select(ParticipantExit).where(ParticipantExit.person_id == person_id))


def record_exit(
    db: Session,
    actor: Person,
    person: Person,
    left_on: date,
    reason: ExitReason,
    note: str | None,
    now: datetime,
) -> ParticipantExit:
    """Record (or correct) how ``person`` left the programme."""
    training.check_records(actor, person, "exit")
    if not person.is_participant:
        raise TrainingError("not_a_participant", N_("Only participants leave a programme."))
    entry = exit_of(db, person.id)
    action = "exit.corrected" if entry is not None else "exit.recorded"
    if entry is None:
        entry = ParticipantExit(person_id=person.id, site_id=person.site_id)
        db.add(entry)
    entry.programme = person.programme
    entry.left_on = left_on
    entry.reason = reason
    entry.note = (note or "").strip() or None
    entry.recorded_by_id = actor.id
    entry.recorded_at = now
    entry.follow_up_due = add_months(left_on, FOLLOW_UP_MONTHS)
    audit.record(
        db,
        actor,
        action,
        f"person:{person.id}",
        {"person": person.name, "left_on": left_on.isoformat(), "reason": reason.value},
        at=now,
    )
    db.flush()
    return entry


def record_follow_up(
    db: Session, actor: Person, person: Person, status: FollowUpStatus, on: date, now: datetime
) -> ParticipantExit:
    training.check_records(actor, person, "follow_up")
    entry = exit_of(db, person.id)
    if entry is None:
        raise TrainingError("no_exit", N_("Record the exit first."))
    entry.follow_up_status = status
    entry.follow_up_on = on
    entry.follow_up_by_id = actor.id
    audit.record(
        db,
        actor,
        "exit.follow_up",
        f"person:{person.id}",
        {"person": person.name, "status": status.value, "on": on.isoformat()},
        at=now,
    )
    db.flush()
    return entry


def prompt_follow_ups(db: Session, today: date) -> int:
    """Tell the active admins of each exit's site that its follow-up is due (once each)."""
    made = 0
    due = db.scalars(
        select(ParticipantExit).where(
            ParticipantExit.follow_up_due <= today, ParticipantExit.follow_up_status.is_(None)
        )
    ).all()
    for entry in due:
        admins = db.scalars(
            select(Person).where(
                Person.site_id == entry.site_id, Person.is_admin.is_(True), Person.active.is_(True)
            )
        ).all()
        key = f"follow_up:{entry.id}"
        for admin in admins:
            exists = db.scalar(
                select(Notification.id).where(Notification.person_id == admin.id, Notification.key == key)
            )
            if exists is None:
                db.add(
                    Notification(
                        person_id=admin.id,
                        kind=notifications.FOLLOW_UP_DUE,
                        key=key,
                        params={"person": entry.person.name, "date": entry.left_on.isoformat()},
                    )
                )
                made += 1
    db.flush()
    return made


# -- the funder's figures ---------------------------------------------------------------------------


@dataclass
class ProgrammeOutcomes:
    """Exits of one programme in a period, and its integrations against the yearly target."""

    programme: str  # "" for participants without a programme
    by_reason: Counter[ExitReason] = field(default_factory=Counter)
    follow_ups: Counter[FollowUpStatus] = field(default_factory=Counter)
    follow_ups_due: int = 0
    target: int | None = None  # integrations the targets of the period's years ask for
    year_integrations: int = 0  # integrations in the target's years (for progress)

    @property
    def exits(self) -> int:
        return sum(self.by_reason.values())

    @property
    def integrations(self) -> int:
        return sum(n for reason, n in self.by_reason.items() if reason in INTEGRATION_REASONS)

    @property
    def progress(self) -> float | None:
        """Share of the target reached (1.0 = met), counting the target years' integrations."""
        if not self.target:
            return None
        return self.year_integrations / self.target


def outcomes(
    db: Session,
    first: date,
    last: date,
    *,
    site_id: int | None = None,
    programme: str | None = None,
    cohort: str | None = None,
    today: date | None = None,
) -> list[ProgrammeOutcomes]:
    """Exits with ``left_on`` in ``first``..``last`` by programme; the target is that of the
    years the period touches, and progress counts the integrations of those whole years."""
    query = select(ParticipantExit, Person.cohort).join(Person, Person.id == ParticipantExit.person_id)
    if site_id is not None:
        query = query.where(ParticipantExit.site_id == site_id)
    if programme is not None:
        query = query.where(ParticipantExit.programme == programme)
    if cohort is not None:
        query = query.where(Person.cohort == cohort)
    years = list(range(first.year, last.year + 1))
    year_first, year_last = date(years[0], 1, 1), date(years[-1], 12, 31)
    rows = db.execute(
        query.where(ParticipantExit.left_on >= min(first, year_first), ParticipantExit.left_on <= year_last)
    ).all()
    out: dict[str, ProgrammeOutcomes] = {}
    for entry, _cohort in rows:
        key = entry.programme or ""
        item = out.setdefault(key, ProgrammeOutcomes(key))
        if entry.reason in INTEGRATION_REASONS:
            item.year_integrations += 1
        if not first <= entry.left_on <= last:
            continue
        item.by_reason[entry.reason] += 1
        if entry.follow_up_status is not None:
            item.follow_ups[entry.follow_up_status] += 1
        elif today is not None and entry.follow_up_due <= today:
            item.follow_ups_due += 1
    targets = db.execute(
        select(ProgrammeTarget.programme, ProgrammeTarget.integrations).where(ProgrammeTarget.year.in_(years))
    ).all()
    for name, integrations in targets:
        if programme is not None and name != programme:
            continue
        item = out.setdefault(name, ProgrammeOutcomes(name))
        item.target = (item.target or 0) + integrations
    for item in out.values():
        if item.target is None:
            item.year_integrations = item.integrations
    return sorted((o for o in out.values() if o.exits or o.target), key=lambda o: o.programme.casefold())


def set_target(db: Session, actor: Person, programme: str, year: int, integrations: int) -> ProgrammeTarget:
    """Set a programme's target of integrations for a year (admins; the caller checks)."""
    name = programme.strip()
    if not name or not 2000 <= year <= 2100 or integrations < 0:
        raise TrainingError("bad_target", N_("Give a programme, a year and a number of integrations."))
    target = db.scalar(
        select(ProgrammeTarget).where(ProgrammeTarget.programme == name, ProgrammeTarget.year == year)
    )
    if target is None:
        target = ProgrammeTarget(programme=name, year=year, integrations=integrations)
        db.add(target)
    target.integrations = integrations
    audit.record(
        db,
        actor,
        "programme.target",
        f"programme:{name}",
        {"year": year, "integrations": integrations},
    )
    db.flush()
    return target


def targets(db: Session) -> list[ProgrammeTarget]:
    return list(
        db.scalars(select(ProgrammeTarget).order_by(ProgrammeTarget.year.desc(), ProgrammeTarget.programme))
    )
