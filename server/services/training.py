"""Qualifications and training progress: grant, renew, revoke, record steps, compute progress.

The one place that changes a person's competencies; the web pages, the JSON API, the MQTT
bridge (a sign-off at the machine) and the scheduler (expiry) all call it with the
database session they opened, and commit themselves.

Rules (where the issue left room, these are our choices):

* Levels run briefed → supervised → independent → trainer. A competency's training steps
  each lead to one level. The *next level* is the lowest level above the person's current
  one that has steps; trainer level has none and is only granted by hand.
* Progress is computed, never typed in: briefings and sign-offs are :class:`StepRecord`\\ s a
  trainer makes; supervised hours are the unlocked time of the person's ended sessions in
  mode ``supervise`` on machines whose type requires the competency. Only what happened
  after the person's last revocation counts.
* Steps are taken in order of levels: a step for a level beyond the next one is refused,
  and a practical sign-off is refused until every other step of its level is done
  ("3.5 of 5 supervised hours done").
* When the last step of a level is done the level is granted at once, by the trainer who
  recorded that step (for supervised hours: the trainer of the session that completed them).
* Who may train: admins for every competency (someone must grant the first trainer); a
  trainer for a competency they hold, valid, at trainer level (a laser trainer cannot
  certify printers). Only admins grant trainer level.
* The staff rule (:func:`check_staff`), which every change goes through, from the web, the
  API and the machine alike: nobody changes their own qualifications or records their own
  steps (admins included); a trainer acts only on people of their own site and only in the
  competencies above; admins act at every site. Its refusals are audited and counted
  (:func:`audit_refusal`, called by the caller after it rolled back).
* Validity: a grant or renewal is valid for the competency's ``validity_months`` from its
  day; renewal keeps the level; a revoked qualification cannot be renewed (train again).

Every change appends to the qualification history and the audit log; any new history row
marks every allow-list dirty (``allowlists``), so a revoke reaches the machines in seconds.
"""

from __future__ import annotations

import calendar
import logging
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, func, select, true
from sqlalchemy.orm import Session

from server.i18n import N_, CatalogText
from server.models import (
    AccessDecision,
    Competency,
    Level,
    Machine,
    MachineSession,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    StepKind,
    StepRecord,
    TrainingStep,
)
from server.services import audit
from server.services.qualifications import (
    QualificationState,
    newest,
    newest_entries,
    state_of,
)

LEVELS: tuple[Level, ...] = tuple(Level)

LEVEL_LABELS: dict[Level, str] = {
    Level.BRIEFED: N_("Briefed"),
    Level.SUPERVISED: N_("Supervised"),
    Level.INDEPENDENT: N_("Independent"),
    Level.TRAINER: N_("Trainer"),
}

STEP_KIND_LABELS: dict[str, str] = {
    StepKind.BRIEFING: N_("Briefing"),
    StepKind.SUPERVISED_HOURS: N_("Supervised hours"),
    StepKind.SIGNOFF: N_("Practical sign-off"),
}


# Reasons the system writes into the history itself; shown translated (a trainer's own
# reasons are shown as typed).
STEPS_COMPLETE = "training steps complete"
VALIDITY_ENDED = "validity ended"
SYSTEM_REASONS: dict[str, str] = {
    STEPS_COMPLETE: N_("training steps complete"),
    VALIDITY_ENDED: N_("validity ended"),
}
HOURS_MISSING = N_("{done} of {needed} supervised hours done. Sign off when all are done.")


log = logging.getLogger(__name__)

# Refusals of the staff rule: about who asks, not about the person being trained (the API
# answers them 403, the web pages too).
STAFF_RULE_CODES = frozenset({"own_training", "own_records", "other_site", "not_a_trainer", "admin_only"})

# Staff-rule refusals by code in this process (the audit log holds every process's).
REFUSALS: Counter[str] = Counter()
_refusals_lock = threading.Lock()  # web workers may run threads


@dataclass(frozen=True)
class Attempt:
    """Who tried which change on whom: plain values, so they outlive the caller's rollback."""

    change: str  # grant, renew, revoke, step
    actor_id: int
    person_id: int
    person: str
    competency: str  # slug


class TrainingError(ValueError):
    """A change to someone's training that the rules refuse.

    ``message`` is a translatable template (``N_``) with ``{name}`` placeholders, so the web
    page, the API and the machine can each show it in their reader's language. ``attempt``
    is set on refusals of the staff rule: what :func:`audit_refusal` writes down.
    """

    def __init__(self, code: str, message: str, *, attempt: Attempt | None = None, **params: Any) -> None:
        self.code = code
        self.message = message
        self.params = params
        self.attempt = attempt
        super().__init__(f"{code}: {message.format(**{k: _plain(v) for k, v in params.items()})}")

    @property
    def forbidden(self) -> bool:
        """Refused for who asks (403), not for the state of the person's training."""
        return self.code in STAFF_RULE_CODES


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_months(day: date, months: int) -> date:
    """``day`` plus ``months``, clamped to the month's end (31 Jan + 1 month = 28/29 Feb)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def valid_until(competency: Competency, day: date) -> date | None:
    return add_months(day, competency.validity_months) if competency.validity_months else None


# -- reading ---------------------------------------------------------------------------------------


def history(db: Session, person_id: int, competency_id: int | None = None) -> Sequence[Qualification]:
    """A person's qualification history, newest first."""
    query = select(Qualification).where(Qualification.person_id == person_id)
    if competency_id is not None:
        query = query.where(Qualification.competency_id == competency_id)
    return db.scalars(query.order_by(Qualification.id.desc())).all()


def can_train(db: Session, actor: Person, competency: Competency, today: date) -> bool:
    """May ``actor`` record steps for, grant, renew and revoke ``competency``?"""
    if not actor.active:
        return False
    if actor.is_admin:
        return True
    if not actor.is_trainer:
        return False
    state = state_of(newest(db, actor.id, competency.id), today)
    return state is not None and state.usable and state.level == Level.TRAINER


def trainable(db: Session, actor: Person, today: date) -> list[Competency]:
    """Every competency ``actor`` may train, by name."""
    competencies = db.scalars(select(Competency).order_by(Competency.name)).all()
    return [c for c in competencies if can_train(db, actor, c, today)]


def _since(db: Session, person_id: int, competency_id: int) -> datetime | None:
    """When the person's last revocation happened: training before it no longer counts."""
    return db.scalar(
        select(func.max(Qualification.created_at)).where(
            Qualification.person_id == person_id,
            Qualification.competency_id == competency_id,
            Qualification.action == QualificationAction.REVOKED,
        )
    )


def supervised_hours(db: Session, person_id: int, competency_id: int, since: datetime | None = None) -> float:
    """Hours of ended supervised sessions on machines whose type requires the competency."""
    types = select(Requirement.machine_type_id).where(Requirement.competency_id == competency_id)
    query = (
        select(func.coalesce(func.sum(MachineSession.unlocked_s), 0.0))
        .join(Machine, Machine.id == MachineSession.machine_id)
        .where(
            MachineSession.person_id == person_id,
            MachineSession.mode == "supervise",
            MachineSession.ended_at.is_not(None),
            Machine.machine_type_id.in_(types),
        )
    )
    if since is not None:
        query = query.where(MachineSession.started_at >= since)
    return float(db.scalar(query) or 0.0) / 3600.0


@dataclass
class StepProgress:
    step: TrainingStep
    done: bool
    hours_done: float | None = None  # supervised-hours steps only
    record: StepRecord | None = None  # briefings and sign-offs: the record that did it

    @property
    def hours_needed(self) -> float | None:
        return self.step.hours if self.step.kind == StepKind.SUPERVISED_HOURS else None


@dataclass
class Progress:
    """Where a person stands in one competency and what comes next."""

    competency: Competency
    entry: Qualification | None
    state: QualificationState | None
    next_level: Level | None
    steps: list[StepProgress] = field(default_factory=list)  # the steps toward next_level
    prerequisite_missing: Competency | None = None

    @property
    def level(self) -> Level | None:
        return self.state.level if self.state is not None and not self.state.revoked else None

    @property
    def next_step(self) -> StepProgress | None:
        return next((s for s in self.steps if not s.done), None)

    @property
    def ready(self) -> bool:
        return bool(self.steps) and all(s.done for s in self.steps)

    @property
    def percent(self) -> int:
        """Share of the way to the next level; supervised hours count by the hour."""
        if not self.steps:
            return 100 if self.next_level is None and self.level is not None else 0
        parts = 0.0
        for s in self.steps:
            if s.done:
                parts += 1
            elif s.hours_needed:
                parts += min(1.0, (s.hours_done or 0.0) / s.hours_needed)
        return int(100 * parts / len(self.steps))


def _next_level(competency: Competency, current: Level | None) -> Level | None:
    rank = current.rank if current is not None else -1
    levels = sorted({s.leads_to for s in competency.steps}, key=lambda lv: lv.rank)
    return next((lv for lv in levels if lv.rank > rank), None)


def progress(db: Session, person_id: int, competency: Competency, today: date) -> Progress:
    entry = newest(db, person_id, competency.id)
    state = state_of(entry, today)
    current = state.level if state is not None and not state.revoked else None
    target = _next_level(competency, current)
    out = Progress(competency, entry, state, target)
    prerequisite = competency.prerequisite
    if prerequisite is not None:
        pre = state_of(newest(db, person_id, prerequisite.id), today)
        if pre is None or not pre.usable:
            out.prerequisite_missing = prerequisite
    if target is None:
        return out
    since = _since(db, person_id, competency.id)
    records_query = select(StepRecord).where(
        StepRecord.person_id == person_id, StepRecord.competency_id == competency.id
    )
    if since is not None:
        records_query = records_query.where(StepRecord.recorded_at >= since)
    records: dict[int, StepRecord] = {}
    for record in db.scalars(records_query.order_by(StepRecord.id)):
        records.setdefault(record.step_id, record)
    hours: float | None = None
    for step in competency.steps:
        if step.leads_to != target:
            continue
        if step.kind == StepKind.SUPERVISED_HOURS:
            if hours is None:
                hours = supervised_hours(db, person_id, competency.id, since)
            out.steps.append(StepProgress(step, hours >= (step.hours or 0.0), hours_done=hours))
        else:
            found = records.get(step.id)
            out.steps.append(StepProgress(step, found is not None, record=found))
    return out


def all_progress(db: Session, person_id: int, today: date) -> list[Progress]:
    """Progress in every competency the person has started or holds, then the ones they could start."""
    competencies = db.scalars(select(Competency).order_by(Competency.name)).all()
    return [progress(db, person_id, c, today) for c in competencies]


# -- changing --------------------------------------------------------------------------------------


def serves(actor: Person, person: Person) -> bool:
    """Is ``person`` one of the people ``actor`` may train: of the trainer's own site (admins: any)?"""
    return actor.is_admin or person.site_id == actor.site_id


def serves_site(actor: Person, site_id: SQLColumnExpression[int]) -> ColumnElement[bool]:
    """:func:`serves` as a condition on a site column, for lists: rows of the trainer's own
    site (admins: every row)."""
    return true() if actor.is_admin else site_id == actor.site_id


def check_staff(
    db: Session, actor: Person, person: Person, competency: Competency, today: date, change: str
) -> None:
    """The staff rule: raise a :class:`TrainingError` (``forbidden``) unless ``actor`` may
    make ``change`` (grant, renew, revoke, step) to ``person``'s ``competency``."""
    attempt = Attempt(change, actor.id, person.id, person.name, competency.slug)
    if person.id == actor.id:
        raise TrainingError(
            "own_training",
            N_("You cannot change your own qualifications or training. Ask another trainer."),
            attempt=attempt,
        )
    if not serves(actor, person):
        raise TrainingError(
            "other_site", N_("This person belongs to another site. Ask a trainer there."), attempt=attempt
        )
    if not can_train(db, actor, competency, today):
        raise TrainingError(
            "not_a_trainer",
            N_("You are not a trainer for {competency}."),
            attempt=attempt,
            competency=competency.local_name,
        )


def check_records(actor: Person, person: Person, change: str) -> None:
    """The staff rule for a person's records outside their qualifications (a day's attendance,
    a certificate, an exit): raise a :class:`TrainingError` (``forbidden``) unless ``actor`` is
    an active trainer or admin, not ``person``, and (unless an admin) of ``person``'s site."""
    attempt = Attempt(change, actor.id, person.id, person.name, "")
    if not actor.active or not (actor.is_trainer or actor.is_admin):
        raise TrainingError(
            "not_a_trainer", N_("Only trainers and admins can do this."), attempt=attempt, competency=""
        )
    if person.id == actor.id:
        raise TrainingError(
            "own_records", N_("You cannot change your own records. Ask another trainer."), attempt=attempt
        )
    if not serves(actor, person):
        raise TrainingError(
            "other_site", N_("This person belongs to another site. Ask a trainer there."), attempt=attempt
        )


def may_change(db: Session, actor: Person, person: Person, competency: Competency, today: date) -> bool:
    """Whether the staff rule lets ``actor`` change ``person``'s ``competency`` (for pages
    that offer only the buttons that would work)."""
    try:
        check_staff(db, actor, person, competency, today, "check")
    except TrainingError:
        return False
    return True


def audit_refusal(db: Session, error: TrainingError, *, source: str) -> bool:
    """Audit and count a refusal of the staff rule, in ``db``'s transaction (the caller
    commits, after rolling back the refused change). Other refusals (a missing reason, a
    step out of order) are the person's state, not a breach of rights: nothing is written.
    Returns whether it wrote an entry."""
    attempt = error.attempt
    if attempt is None or not error.forbidden:
        return False
    with _refusals_lock:
        REFUSALS[error.code] += 1
    log.warning(
        "training change refused: %s by person %s on person %s (%s): %s",
        attempt.change,
        attempt.actor_id,
        attempt.person_id,
        attempt.competency,
        error.code,
    )
    audit.record(
        db,
        db.get(Person, attempt.actor_id),
        "training.refused",
        f"person:{attempt.person_id}",
        {
            "change": attempt.change,
            "code": error.code,
            "person": attempt.person,
            "competency": attempt.competency,
            "source": source,
        },
    )
    db.flush()
    return True


def _require_reason(reason: str | None) -> str:
    if reason is None or not reason.strip():
        raise TrainingError("reason_required", N_("Please give a reason."))
    return reason.strip()


def _append(
    db: Session,
    person: Person,
    competency: Competency,
    action: QualificationAction,
    level: Level,
    until: date | None,
    actor: Person | None,
    reason: str | None,
    now: datetime,
) -> Qualification:
    entry = Qualification(
        person_id=person.id,
        competency_id=competency.id,
        action=action,
        level=level,
        valid_until=until,
        granted_by_id=actor.id if actor is not None else None,
        reason=reason,
        created_at=now,
    )
    db.add(entry)
    if level == Level.TRAINER and action in (QualificationAction.GRANTED, QualificationAction.RENEWED):
        person.is_trainer = True
    audit.record(
        db,
        actor,
        f"qualification.{action.value}",
        f"person:{person.id}",
        {
            "person": person.name,
            "competency": competency.slug,
            "level": level.value,
            "valid_until": until.isoformat() if until else None,
            "reason": reason,
        },
        at=now,
    )
    db.flush()
    return entry


def grant(
    db: Session,
    person: Person,
    competency: Competency,
    level: Level,
    actor: Person,
    reason: str | None,
    now: datetime,
    today: date,
) -> Qualification:
    """Grant ``level`` by hand (prior learning, or trainer level), with a reason."""
    check_staff(db, actor, person, competency, today, "grant")
    reason = _require_reason(reason)
    if level == Level.TRAINER and not actor.is_admin:
        raise TrainingError(
            "admin_only",
            N_("Only an admin can grant the trainer level."),
            attempt=Attempt("grant", actor.id, person.id, person.name, competency.slug),
        )
    if competency.prerequisite is not None:
        pre = state_of(newest(db, person.id, competency.prerequisite.id), today)
        if pre is None or not pre.usable:
            raise TrainingError(
                "prerequisite_missing",
                N_("{person} needs {competency} first."),
                person=person.name,
                competency=competency.prerequisite.local_name,
            )
    return _append(
        db,
        person,
        competency,
        QualificationAction.GRANTED,
        level,
        valid_until(competency, today),
        actor,
        reason,
        now,
    )


def _held(db: Session, person: Person, competency: Competency, code: str, message: str) -> Qualification:
    """The person's newest entry in ``competency`` unless there is none or it is a revocation."""
    entry = newest(db, person.id, competency.id)
    if entry is None or entry.action == QualificationAction.REVOKED:
        raise TrainingError(code, message, person=person.name, competency=competency.local_name)
    return entry


def renew(
    db: Session,
    person: Person,
    competency: Competency,
    actor: Person,
    reason: str | None,
    now: datetime,
    today: date,
) -> Qualification:
    """Extend a held (or expired, but not revoked) qualification from today, at its level."""
    check_staff(db, actor, person, competency, today, "renew")
    if not competency.validity_months:
        raise TrainingError(
            "does_not_expire", N_("{competency} does not expire."), competency=competency.local_name
        )
    entry = _held(
        db,
        person,
        competency,
        "nothing_to_renew",
        N_("{person} does not hold {competency}. Train and grant it first."),
    )
    return _append(
        db,
        person,
        competency,
        QualificationAction.RENEWED,
        entry.level,
        valid_until(competency, today),
        actor,
        (reason or "").strip() or None,
        now,
    )


def revoke(
    db: Session,
    person: Person,
    competency: Competency,
    actor: Person,
    reason: str | None,
    now: datetime,
    today: date,
) -> Qualification:
    """Take a qualification away at once (allow-lists follow within seconds), with a reason."""
    check_staff(db, actor, person, competency, today, "revoke")
    reason = _require_reason(reason)
    entry = _held(db, person, competency, "nothing_to_revoke", N_("{person} does not hold {competency}."))
    return _append(
        db,
        person,
        competency,
        QualificationAction.REVOKED,
        entry.level,
        entry.valid_until,
        actor,
        reason,
        now,
    )


def check_step(db: Session, person: Person, step: TrainingStep, actor: Person, today: date) -> None:
    """Raise the TrainingError :func:`record_step` would raise for this step; change nothing.

    Lets a caller that records several steps at once (a sign-off at a machine whose type
    requires several competencies) check them all before it writes any.
    """
    competency = step.competency
    check_staff(db, actor, person, competency, today, "step")
    if step.kind == StepKind.SUPERVISED_HOURS:
        raise TrainingError(
            "hours_are_counted",
            N_("Supervised hours are counted from supervised sessions at the machine."),
        )
    if not person.active:
        raise TrainingError("person_inactive", N_("{person} is not active."), person=person.name)
    now_progress = progress(db, person.id, competency, today)
    if now_progress.prerequisite_missing is not None:
        raise TrainingError(
            "prerequisite_missing",
            N_("{person} needs {competency} first."),
            person=person.name,
            competency=now_progress.prerequisite_missing.local_name,
        )
    if now_progress.next_level is None or step.leads_to != now_progress.next_level:
        if now_progress.level is not None and step.leads_to.rank <= now_progress.level.rank:
            raise TrainingError(
                "already_done",
                N_("{person} already holds {competency} at this level."),
                person=person.name,
                competency=competency.local_name,
            )
        raise TrainingError(
            "out_of_order",
            N_("Finish the steps for the level {level} first."),
            level=CatalogText(LEVEL_LABELS[now_progress.next_level]) if now_progress.next_level else "",
        )
    mine = next(s for s in now_progress.steps if s.step.id == step.id)
    if mine.done:
        raise TrainingError("step_done", N_("This step is already recorded."))
    if step.kind == StepKind.SIGNOFF:
        for other in now_progress.steps:
            if other.step.id == step.id or other.done:
                continue
            if other.step.kind == StepKind.SUPERVISED_HOURS:
                raise TrainingError(
                    "hours_missing",
                    HOURS_MISSING,
                    done=round(other.hours_done or 0.0, 1),
                    needed=other.step.hours or 0.0,
                )
            raise TrainingError(
                "step_missing",
                N_("First record: {step}."),
                step=other.step.local_name,
            )


def record_step(
    db: Session,
    person: Person,
    step: TrainingStep,
    actor: Person,
    now: datetime,
    today: date,
    *,
    source: str = "web",
    session_id: str | None = None,
    note: str | None = None,
) -> tuple[StepRecord, Qualification | None]:
    """Record that ``person`` did ``step``; grant the level when it was the level's last step.

    Returns the record and the new qualification entry, if the step completed a level.
    """
    competency = step.competency
    check_step(db, person, step, actor, today)
    record = StepRecord(
        person_id=person.id,
        competency_id=competency.id,
        step_id=step.id,
        recorded_by_id=actor.id,
        source=source,
        session_id=session_id,
        note=(note or "").strip() or None,
        recorded_at=now,
    )
    db.add(record)
    audit.record(
        db,
        actor,
        "training.step",
        f"person:{person.id}",
        {
            "person": person.name,
            "competency": competency.slug,
            "step": step.name,
            "kind": step.kind,
            "source": source,
            "session": session_id,
        },
        at=now,
    )
    db.flush()
    return record, advance(db, person, competency, actor, now, today)


def pending_signoff(db: Session, person_id: int, competency: Competency, today: date) -> TrainingStep | None:
    """The practical sign-off toward the person's next level in ``competency``, if not recorded yet."""
    current = progress(db, person_id, competency, today)
    return next((s.step for s in current.steps if s.step.kind == StepKind.SIGNOFF and not s.done), None)


def advance(
    db: Session, person: Person, competency: Competency, actor: Person | None, now: datetime, today: date
) -> Qualification | None:
    """Grant the next level if every step toward it is done; None if not (yet)."""
    current = progress(db, person.id, competency, today)
    if not current.ready or current.next_level is None or current.prerequisite_missing is not None:
        return None
    return _append(
        db,
        person,
        competency,
        QualificationAction.GRANTED,
        current.next_level,
        valid_until(competency, today),
        actor,
        STEPS_COMPLETE,
        now,
    )


def advance_after_session(
    db: Session, session: MachineSession, now: datetime, today: date
) -> list[Qualification]:
    """After a supervised session ended: grant what its hours completed, in the trainer's name.

    Only with a trainer the server vouches for (its decision, or the trainer who confirmed the
    session), only in competencies that trainer trains, never for the trainer themselves.
    """
    person, trainer = session.person, session.trainer
    if session.mode != "supervise" or person is None or session.ended_at is None:
        return []
    if trainer is None or trainer.id == person.id:
        return []
    competencies = db.scalars(
        select(Competency)
        .join(Requirement, Requirement.competency_id == Competency.id)
        .where(Requirement.machine_type_id == session.machine.machine_type_id)
    ).all()
    granted = []
    for competency in competencies:
        if not can_train(db, trainer, competency, today):
            continue
        entry = advance(db, person, competency, trainer, now, today)
        if entry is not None:
            granted.append(entry)
    return granted


def expire_due(db: Session, now: datetime, today: date) -> list[Qualification]:
    """Append an ``expired`` entry for every qualification whose validity ended before today."""
    latest = newest_entries()
    due = db.scalars(
        select(Qualification)
        .join(latest, latest.c.id == Qualification.id)
        .where(
            Qualification.action.in_((QualificationAction.GRANTED, QualificationAction.RENEWED)),
            Qualification.valid_until.is_not(None),
            Qualification.valid_until < today,
        )
    ).all()
    out = []
    for entry in due:
        out.append(
            _append(
                db,
                entry.person,
                entry.competency,
                QualificationAction.EXPIRED,
                entry.level,
                entry.valid_until,
                None,
                VALIDITY_ENDED,
                now,
            )
        )
    return out


def _trainer_session(db: Session, machine_id: int, trainer_id: int) -> str | None:
    """The session the trainer has open at the machine. Its row comes from the device's
    ``session_started``, which another thread or process stores a few milliseconds after the
    answer went out, so a sign-off tapped right after the trainer's unlock may find none yet: then
    the session this server handed the trainer there last, unless its row says it has ended."""
    open_id = db.scalar(
        select(MachineSession.id)
        .where(
            MachineSession.machine_id == machine_id,
            MachineSession.person_id == trainer_id,
            MachineSession.ended_at.is_(None),
        )
        .order_by(MachineSession.started_at.desc())
        .limit(1)
    )
    if open_id is not None:
        return open_id
    handed_out = db.scalar(
        select(AccessDecision.session_id)
        .where(
            AccessDecision.machine_id == machine_id,
            AccessDecision.person_id == trainer_id,
            AccessDecision.decision == "allow",
            AccessDecision.session_id.is_not(None),
        )
        .order_by(AccessDecision.decided_at.desc())
        .limit(1)
    )
    if handed_out is None or db.get(MachineSession, handed_out) is not None:
        return None  # none handed out, or stored and (not being open) ended
    return handed_out


def sign_off_at_machine(
    db: Session,
    person: Person,
    trainer: Person,
    machine_type_id: int,
    machine_id: int,
    now: datetime,
    today: date,
) -> list[Qualification]:
    """The practical sign-off a trainer's ``certify`` tap at a machine stands for: the sign-off step
    of every competency the machine type requires whose next step it is, filed under the session
    the trainer has open there. Returns the qualifications it granted.

    Refuses with :class:`TrainingError`: ``hours_missing`` (a competency still waits for supervised
    hours), ``nothing_to_sign_off``, or the step rules' own refusal (audited, source ``machine``).
    All are checked before anything is written.
    """
    competencies = db.scalars(
        select(Competency)
        .join(Requirement, Requirement.competency_id == Competency.id)
        .where(Requirement.machine_type_id == machine_type_id)
        .order_by(Requirement.id)
    ).all()
    due = [
        (competency, step)
        for competency in competencies
        if (step := pending_signoff(db, person.id, competency, today)) is not None
    ]
    if not due:
        for competency in competencies:
            upcoming = progress(db, person.id, competency, today).next_step
            if upcoming is not None and upcoming.step.kind == StepKind.SUPERVISED_HOURS:
                raise TrainingError(
                    "hours_missing",
                    HOURS_MISSING,
                    done=round(upcoming.hours_done or 0.0, 1),
                    needed=upcoming.step.hours or 0.0,
                )
        raise TrainingError("nothing_to_sign_off", N_("Nothing to sign off here yet."))
    try:
        # Check all before writing any: no savepoint needed (SQLite's driver would commit the
        # outer transaction when one is released).
        for _competency, step in due:
            check_step(db, person, step, trainer, today)
    except TrainingError as exc:
        audit_refusal(db, exc, source="machine")
        raise
    session_id = _trainer_session(db, machine_id, trainer.id)
    granted: list[Qualification] = []
    for _competency, step in due:
        _record, entry = record_step(
            db, person, step, trainer, now, today, source="machine", session_id=session_id
        )
        if entry is not None:
            granted.append(entry)
    db.flush()
    return granted
