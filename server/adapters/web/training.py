"""Trainer pages: find a participant, see their training, record a step, grant, renew or revoke;
confirm or reject supervised sessions a machine reported without the server.

Thin views over :mod:`server.services.training`, which holds every rule; a refusal comes
back as a :class:`TrainingError` and is shown as the form's error, with nothing changed.
The competency cards (:func:`present_progress`) are shared with the participant's own page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session
from wtforms import HiddenField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from server.adapters.web.admin.base import paginate
from server.adapters.web.auth import User, current, trainer_required
from server.adapters.web.bookings import booking_status, span_label
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import (
    LABEL_MAX_HOURS,
    _,
    _l,
    current_language,
    date_label,
    duration_label,
    error_text,
    when_label,
)
from server.adapters.web.session_list import present_session, session_jobs, sessions_page
from server.extensions import get_db
from server.i18n import local_number
from server.models import (
    Badge,
    BadgeStatus,
    BookingStatus,
    Competency,
    Level,
    MachineSession,
    Person,
    Qualification,
    QualificationAction,
    StepKind,
    TrainingStep,
)
from server.services import bookings, supervision, training
from server.services.live import person_hours
from server.services.training import (
    LEVEL_LABELS,
    STEP_KIND_LABELS,
    SYSTEM_REASONS,
    Progress,
    TrainingError,
)

bp = web_blueprint("training", __name__)

SEARCH_LIMIT = 50

ACTION_LABELS: dict[QualificationAction, str] = {
    QualificationAction.GRANTED: _l("granted"),
    QualificationAction.RENEWED: _l("renewed"),
    QualificationAction.EXPIRED: _l("expired"),
    QualificationAction.REVOKED: _l("revoked"),
}


def today_for(user: User) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(user.timezone)).date()


# -- presenting ------------------------------------------------------------------------------------


def level_label(level: Level | None) -> str:
    return _(LEVEL_LABELS[level]) if level is not None else _("Not started")


def present_progress(p: Progress, today: date, *, may_train: bool = False) -> dict[str, Any]:
    """One competency card: where the person stands, what is next, how far along."""
    language = current_language()
    state = p.state
    status = "none"
    status_label = ""
    valid_label = ""
    if state is not None:
        if state.revoked:
            status, status_label = "revoked", _("Revoked")
        elif state.expired:
            status, status_label = "expired", _("Expired")
        elif state.expires_soon(today):
            status, status_label = "soon", _("Expires soon")
        else:
            status, status_label = "valid", _("Valid")
        if state.valid_until is not None:
            if state.expired:
                valid_label = _("Expired on %(date)s", date=date_label(state.valid_until))
            else:
                valid_label = _("Valid until %(date)s", date=date_label(state.valid_until))
        elif not state.revoked:
            valid_label = _("Does not expire")
    steps = []
    for sp in p.steps:
        if sp.step.kind == StepKind.SUPERVISED_HOURS:
            detail = _(
                "%(done)s of %(needed)s h done",
                done=_hours(sp.hours_done or 0.0),
                needed=_hours(sp.hours_needed or 0.0),
            )
        elif sp.record is not None:
            detail = _(
                "Recorded %(when)s by %(trainer)s",
                when=when_label(sp.record.recorded_at, datetime.now(UTC)),
                trainer=sp.record.recorded_by.name if sp.record.recorded_by else _("the system"),
            )
        else:
            detail = ""
        steps.append(
            {
                "id": sp.step.id,
                "name": sp.step.display_name(language),
                "kind": sp.step.kind,
                "kind_label": _(STEP_KIND_LABELS.get(sp.step.kind, sp.step.kind)),
                "done": sp.done,
                "detail": detail,
                # Briefings and sign-offs are recorded by hand; hours are counted at the machine.
                "recordable": may_train and not sp.done and sp.step.kind != StepKind.SUPERVISED_HOURS,
            }
        )
    next_step = p.next_step
    if p.prerequisite_missing is not None and p.level is None:
        next_label = _(
            "First you need: %(competency)s.", competency=p.prerequisite_missing.display_name(language)
        )
    elif next_step is None and p.next_level is None:
        next_label = "" if p.level is not None else _("No training steps are set up yet.")
    elif next_step is None:
        next_label = _("All steps done.")
    elif next_step.step.kind == StepKind.SUPERVISED_HOURS:
        next_label = _(
            "Next: %(step)s. Work at the machine with a trainer: %(left)s h left.",
            step=next_step.step.display_name(language),
            left=_hours(max((next_step.hours_needed or 0.0) - (next_step.hours_done or 0.0), 0.0)),
        )
    else:
        next_label = _("Next: %(step)s. Ask a trainer.", step=next_step.step.display_name(language))
    return {
        "id": p.competency.id,
        "slug": p.competency.slug,
        "name": p.competency.display_name(language),
        "level": p.level.value if p.level else None,
        "level_label": level_label(p.level),
        "status": status,
        "status_label": status_label,
        "valid_label": valid_label,
        "next_level": p.next_level.value if p.next_level else None,
        "next_level_label": level_label(p.next_level) if p.next_level else "",
        "percent": p.percent,
        "steps": steps,
        "next_label": next_label,
        "started": p.entry is not None or any(s["done"] for s in steps),
        "may_train": may_train,
        "renewable": may_train
        and bool(p.competency.validity_months)
        and state is not None
        and not state.revoked,
        "revocable": may_train and state is not None and not state.revoked,
    }


def _hours(value: float) -> str:
    if not math.isfinite(value) or value > LABEL_MAX_HOURS:
        return f"> {LABEL_MAX_HOURS}"  # a broken record stored before issue 11, not a measurement
    return local_number(value, current_language())


def present_history(entries: list[Qualification]) -> list[dict[str, Any]]:
    language = current_language()
    now = datetime.now(UTC)
    return [
        {
            "when": when_label(e.created_at, now),
            "competency": e.competency.display_name(language),
            "action": e.action.value,
            "action_label": str(ACTION_LABELS[e.action]),
            "level_label": level_label(e.level),
            "valid_until": date_label(e.valid_until) if e.valid_until else "",
            "reason": _(SYSTEM_REASONS[e.reason]) if e.reason in SYSTEM_REASONS else (e.reason or ""),
            "by": _granted_by(e),
        }
        for e in entries
    ]


def _granted_by(entry: Qualification) -> str:
    if entry.granted_by_id is None:
        return _("the system")
    person = get_db().get(Person, entry.granted_by_id)
    return person.name if person is not None else ""


# -- forms -----------------------------------------------------------------------------------------


class StepForm(FlaskForm):  # type: ignore[misc]  # Flask-WTF is untyped
    step_id = HiddenField(validators=[DataRequired()])
    note = TextAreaField(_l("Note (optional)"), validators=[Optional(), Length(max=2000)])


class GrantForm(FlaskForm):  # type: ignore[misc]
    competency_id = HiddenField(validators=[DataRequired()])
    level = SelectField(
        _l("Level"),
        choices=[SelectChoice(lv.value, _l(LEVEL_LABELS[lv])) for lv in Level],
        validators=[DataRequired()],
    )
    reason = StringField(_l("Reason"), validators=[DataRequired(), Length(max=500)])


class ReasonForm(FlaskForm):  # type: ignore[misc]  # renew (reason optional) and revoke (required)
    competency_id = HiddenField(validators=[DataRequired()])
    reason = StringField(_l("Reason"), validators=[Optional(), Length(max=500)])


class SearchForm(FlaskForm):  # type: ignore[misc]
    class Meta:
        csrf = False  # a GET search changes nothing

    q = StringField(_l("Name, email, badge or cohort"), validators=[Optional(), Length(max=100)])


# -- views -----------------------------------------------------------------------------------------


def _search(site_id: int, text: str) -> Select[Person]:
    query = (
        select(Person).where(Person.site_id == site_id).order_by(Person.active.desc(), Person.name, Person.id)
    )
    text = text.strip()
    if text:
        like = f"%{text.lower()}%"
        by_badge = select(Badge.person_id).where(Badge.uid == text.upper().replace(":", "").replace(" ", ""))
        query = query.where(
            or_(
                func.lower(Person.name).like(like),
                func.lower(Person.email).like(like),
                func.lower(Person.cohort).like(like),
                Person.id.in_(by_badge),
            )
        )
    else:
        query = query.where(Person.is_participant.is_(True), Person.active.is_(True))
    return query


def present_reviews(rows: list[MachineSession]) -> list[dict[str, Any]]:
    """The queue of supervised sessions awaiting confirmation, for the trainer's page."""
    now = datetime.now(UTC)
    return [
        {
            "id": row.id,
            "person_id": row.person_id,
            "person": row.person.name if row.person else "",
            "machine": row.machine.name,
            "when": when_label(row.started_at or row.ended_at or row.created_at, now),
            "duration": duration_label(row.unlocked_s or 0.0),
            "claimed_trainer": row.claimed_trainer.name if row.claimed_trainer else None,
        }
        for row in rows
    ]


def people_page(*, error: str | None = None, status: int = 200) -> ResponseReturnValue:
    actor = _actor()
    form = SearchForm(request.args)
    text = str(form.q.data or "") if form.validate() else ""
    db = get_db()
    page = paginate(db, _search(actor.user.site_id, text), per_page=SEARCH_LIMIT)
    reviews = present_reviews(supervision.pending(db, actor.person, today_for(actor.user)))
    return (
        render_template(
            "training/people.html",
            form=form,
            people=page.items,
            page=page,
            searched=bool(text.strip()),
            reviews=reviews,
            error=error,
        ),
        status,
    )


@bp.get("/people")
@trainer_required
def people() -> ResponseReturnValue:
    return people_page()


@dataclass
class _Actor:
    user: User
    person: Person


def _actor() -> _Actor:
    user = current()
    assert user is not None
    person = get_db().get(Person, user.id)
    assert person is not None  # login loads only existing, active people
    return _Actor(user, person)


def _person_or_404(person_id: int, actor: _Actor) -> Person:
    """The person, if the staff rule lets ``actor`` train them at all: others' people are not
    even shown (the service refuses their changes too, for callers that skip this page)."""
    person = get_db().get(Person, person_id)
    if person is None or not training.serves(actor.person, person):
        abort(404)
    return person


def person_page(
    person: Person, actor: _Actor, *, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    db = get_db()
    today = today_for(actor.user)
    cards = []
    for p in training.all_progress(db, person.id, today):
        may = training.may_change(db, actor.person, person, p.competency, today)
        cards.append(present_progress(p, today, may_train=may))
    cards.sort(key=lambda c: (not c["started"], not c["may_train"], c["name"]))
    history = present_history(list(training.history(db, person.id))[:50])
    return (
        render_template(
            "training/person.html",
            person=person,
            badges=present_badges(person, show_uid=actor.user.is_admin),
            cards=cards,
            history=history,
            **_use_of(db, person, actor),
            step_form=StepForm(formdata=None),
            grant_form=GrantForm(formdata=None),
            reason_form=ReasonForm(formdata=None),
            error=error,
            is_admin=actor.user.is_admin,
        ),
        status,
    )


BADGE_LABELS: dict[BadgeStatus, str] = {
    BadgeStatus.ACTIVE: _l("Active"),
    BadgeStatus.LOST: _l("Lost"),
    BadgeStatus.BLOCKED: _l("Blocked"),
}


def present_badges(person: Person, *, show_uid: bool) -> list[dict[str, str]]:
    """The person's badges, newest first. Trainers see only a UID's last four characters:
    enough to tell two cards apart, not enough to copy one (the whole UID stays with admins)."""
    return [
        {
            "uid": b.uid if show_uid else f"\u2022\u2022\u2022\u2022\u202f{b.uid[-4:]}",
            "status": b.status.value,
            "status_label": str(BADGE_LABELS[b.status]),
            "issued": date_label(b.issued_at.date()),
            "note": (b.note or "") if show_uid else "",
        }
        for b in sorted(person.badges, key=lambda b: b.issued_at, reverse=True)
    ]


def _use_of(db: Session, person: Person, actor: _Actor) -> dict[str, Any]:
    """What a trainer needs besides training: machine hours, sessions (paged), bookings, and a
    no-show block with the button that lifts it."""
    now = datetime.now(UTC)
    tz = ZoneInfo(person.site.timezone)
    per_machine = person_hours(db, person.id)
    page = sessions_page(db, person.id)
    found = bookings.of_person(db, person.id, now - timedelta(days=30), limit=50)
    block = bookings.block_refusal(db, person, now)
    return {
        "hours_total": duration_label(sum(seconds for _name, seconds in per_machine)),
        "hours_per_machine": [(name, duration_label(seconds)) for name, seconds in per_machine],
        "sessions": [present_session(row, now) for row in page.items],
        "sessions_page": page,
        "jobs": session_jobs(db, [row.id for row in page.items]),
        "bookings": [
            {
                "machine": b.machine.name,
                "when": span_label(b.starts_at, b.ends_at, tz),
                "status": status,
                "status_label": label,
                "trainer": b.trainer.name if b.trainer else "",
                "upcoming": b.status == BookingStatus.BOOKED and b.ends_at > now,
            }
            for b in reversed(found)
            for status, label in (booking_status(b, now),)
        ],
        "block": _block_text(block, tz) if block is not None else None,
        "may_lift": block is not None and person.id != actor.person.id,
    }


def _block_text(block: bookings.BookingError, tz: ZoneInfo) -> str:
    """The block as a trainer reads it (the service's own words speak to the blocked person)."""
    until = block.params.get("date")
    return _(
        "Blocked for no-shows: %(count)s missed bookings, may book again from %(date)s.",
        count=block.params.get("count", ""),
        date=date_label(until) if isinstance(until, date) else "",
    )


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    return person_page(_person_or_404(person_id, actor), actor)


def _competency_or_400(raw: Any) -> Competency:
    try:
        competency = get_db().get(Competency, int(raw))
    except (TypeError, ValueError):
        competency = None
    if competency is None:
        abort(400)
    return competency


def _refused(subject: Person, actor: _Actor, error: str, status: int) -> ResponseReturnValue:
    """The person's page with the reason; for someone else's person (whom the pages never
    show) only the reason, or 404 as their page would answer."""
    if training.serves(actor.person, subject):
        return person_page(subject, actor, error=error, status=status)
    if status != 403:
        abort(404)
    return render_template("error.html", code=status, message=error), status


def _apply(person_id: int, change: str) -> ResponseReturnValue:
    """Run one change through the service; on refusal re-show the page with the reason (400,
    or 403 when the staff rule refused: audited by the service)."""
    actor = _actor()
    # Not _person_or_404: a change posted for someone else's person goes to the service,
    # whose staff rule refuses it and audits the attempt.
    subject = get_db().get(Person, person_id) or abort(404)
    db = get_db()
    now = datetime.now(UTC)
    today = today_for(actor.user)
    form: FlaskForm
    try:
        if change == "step":
            form = StepForm()
            if not form.validate():
                return _refused(subject, actor, _("Please check the form."), 400)
            try:
                step = db.get(TrainingStep, int(form.step_id.data))
            except ValueError:
                step = None
            if step is None:
                abort(400)
            _record, granted = training.record_step(
                db, subject, step, actor.person, now, today, note=form.note.data
            )
            message = _("Recorded: %(step)s.", step=step.display_name(current_language()))
            if granted is not None:
                message += " " + _(
                    "%(person)s now holds %(competency)s at level %(level)s.",
                    person=subject.name,
                    competency=granted.competency.display_name(current_language()),
                    level=level_label(granted.level),
                )
        elif change == "grant":
            form = GrantForm()
            if not form.validate():
                return _refused(subject, actor, _("Please give a level and a reason."), 400)
            competency = _competency_or_400(form.competency_id.data)
            entry = training.grant(
                db, subject, competency, Level(form.level.data), actor.person, form.reason.data, now, today
            )
            message = _(
                "%(person)s now holds %(competency)s at level %(level)s.",
                person=subject.name,
                competency=competency.display_name(current_language()),
                level=level_label(entry.level),
            )
        elif change in ("renew", "revoke"):
            form = ReasonForm()
            if not form.validate():
                return _refused(subject, actor, _("Please check the form."), 400)
            competency = _competency_or_400(form.competency_id.data)
            name = competency.display_name(current_language())
            if change == "renew":
                entry = training.renew(db, subject, competency, actor.person, form.reason.data, now, today)
                assert entry.valid_until is not None  # renew refuses competencies that never expire
                message = _(
                    "%(competency)s renewed until %(date)s.",
                    competency=name,
                    date=date_label(entry.valid_until),
                )
            else:
                training.revoke(db, subject, competency, actor.person, form.reason.data, now, today)
                message = _("%(competency)s revoked. The machines know within seconds.", competency=name)
        else:  # pragma: no cover - the routes below name every change
            abort(404)
    except TrainingError as refused:
        db.rollback()
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        return _refused(subject, actor, error_text(refused), 403 if refused.forbidden else 400)
    db.commit()
    flash(message, "success")
    return redirect(url_for("training.person", person_id=subject.id))


@bp.post("/people/<int:person_id>/steps")
@trainer_required
def record_step(person_id: int) -> ResponseReturnValue:
    return _apply(person_id, "step")


@bp.post("/people/<int:person_id>/grant")
@trainer_required
def grant(person_id: int) -> ResponseReturnValue:
    return _apply(person_id, "grant")


@bp.post("/people/<int:person_id>/renew")
@trainer_required
def renew(person_id: int) -> ResponseReturnValue:
    return _apply(person_id, "renew")


@bp.post("/people/<int:person_id>/revoke")
@trainer_required
def revoke(person_id: int) -> ResponseReturnValue:
    return _apply(person_id, "revoke")


def _review(session_id: str, verdict: str) -> ResponseReturnValue:
    """Confirm or reject one supervised session of the queue; a refusal re-shows the page (400)."""
    actor = _actor()
    db = get_db()
    session = db.get(MachineSession, session_id)
    if session is None or session.person is None or session.person.site_id != actor.user.site_id:
        abort(404)
    person, machine = session.person.name, session.machine.name
    now = datetime.now(UTC)
    today = today_for(actor.user)
    try:
        if verdict == "confirm":
            granted = supervision.confirm(db, session, actor.person, now, today)
            message = _(
                "Confirmed: the session of %(person)s on %(machine)s counts as supervised.",
                person=person,
                machine=machine,
            )
            for entry in granted:
                message += " " + _(
                    "%(person)s now holds %(competency)s at level %(level)s.",
                    person=person,
                    competency=entry.competency.display_name(current_language()),
                    level=level_label(entry.level),
                )
        else:
            supervision.reject(db, session, actor.person, now, today)
            message = _(
                "Rejected: the session of %(person)s on %(machine)s does not count as supervised.",
                person=person,
                machine=machine,
            )
    except TrainingError as refused:
        db.rollback()
        return people_page(error=error_text(refused), status=400)
    db.commit()
    flash(message, "success")
    return redirect(url_for("training.people"))


@bp.post("/sessions/<session_id>/confirm")
@trainer_required
def confirm_session(session_id: str) -> ResponseReturnValue:
    return _review(session_id, "confirm")


@bp.post("/sessions/<session_id>/reject")
@trainer_required
def reject_session(session_id: str) -> ResponseReturnValue:
    return _review(session_id, "reject")
