"""Trainer pages: find a participant, see their training, record a step, grant, renew or revoke.

Thin views over :mod:`server.services.training`, which holds every rule; a refusal comes
back as a :class:`TrainingError` and is shown as the form's error, with nothing changed.
The competency cards (:func:`present_progress`) are shared with the participant's own page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from wtforms import HiddenField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, Length, Optional

from server import get_db
from server.i18n import Localised, local_number
from server.models import (
    Badge,
    Competency,
    Level,
    Person,
    Qualification,
    QualificationAction,
    StepKind,
    TrainingStep,
)
from server.services import training
from server.services.training import (
    LEVEL_LABELS,
    STEP_KIND_LABELS,
    SYSTEM_REASONS,
    Progress,
    TrainingError,
)
from server.web.auth import User, current, trainer_required
from server.web.common import web_blueprint
from server.web.l10n import _, _l, current_language, date_label, when_label

bp = web_blueprint("training", __name__)

# What "expires soon" means on every page (the scheduler reminds at the same distance).
EXPIRES_SOON = timedelta(days=30)
SEARCH_LIMIT = 50

ACTION_LABELS: dict[QualificationAction, str] = {
    QualificationAction.GRANTED: _l("granted"),
    QualificationAction.RENEWED: _l("renewed"),
    QualificationAction.EXPIRED: _l("expired"),
    QualificationAction.REVOKED: _l("revoked"),
}


def today_for(user: User) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(user.timezone)).date()


def error_text(error: TrainingError) -> str:
    """The refusal in the reader's language."""
    language = current_language()
    params: dict[str, Any] = {}
    for key, value in error.params.items():
        if isinstance(value, date):
            params[key] = date_label(value)
        elif isinstance(value, Localised):
            params[key] = value.in_language(language)
        elif isinstance(value, float):
            params[key] = local_number(value, language)
        else:
            params[key] = value
    return _(error.message).format(**params)


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
        elif state.valid_until is not None and state.valid_until - today <= EXPIRES_SOON:
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


def _search(db: Session, site_id: int, text: str) -> list[Person]:
    query = select(Person).where(Person.site_id == site_id).order_by(Person.active.desc(), Person.name)
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
    return list(db.scalars(query.limit(SEARCH_LIMIT)))


@bp.get("/people")
@trainer_required
def people() -> ResponseReturnValue:
    user = current()
    assert user is not None
    form = SearchForm(request.args)
    text = str(form.q.data or "") if form.validate() else ""
    found = _search(get_db(), user.site_id, text)
    return render_template("training/people.html", form=form, people=found, searched=bool(text.strip()))


def _person_or_404(person_id: int, user: User) -> Person:
    person = get_db().get(Person, person_id)
    if person is None or person.site_id != user.site_id:
        abort(404)
    return person


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


def person_page(
    person: Person, actor: _Actor, *, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    db = get_db()
    today = today_for(actor.user)
    cards = []
    for p in training.all_progress(db, person.id, today):
        may = training.can_train(db, actor.person, p.competency, today)
        card = present_progress(p, today, may_train=may and person.id != actor.person.id)
        cards.append(card)
    cards.sort(key=lambda c: (not c["started"], not c["may_train"], c["name"]))
    history = present_history(list(training.history(db, person.id))[:50])
    return (
        render_template(
            "training/person.html",
            person=person,
            badges=sorted(person.badges, key=lambda b: b.issued_at, reverse=True),
            cards=cards,
            history=history,
            step_form=StepForm(formdata=None),
            grant_form=GrantForm(formdata=None),
            reason_form=ReasonForm(formdata=None),
            error=error,
            is_admin=actor.user.is_admin,
        ),
        status,
    )


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    return person_page(_person_or_404(person_id, actor.user), actor)


def _competency_or_400(raw: Any) -> Competency:
    try:
        competency = get_db().get(Competency, int(raw))
    except (TypeError, ValueError):
        competency = None
    if competency is None:
        abort(400)
    return competency


def _apply(person_id: int, change: str) -> ResponseReturnValue:
    """Run one change through the service; on refusal re-show the page with the reason (400)."""
    actor = _actor()
    subject = _person_or_404(person_id, actor.user)
    db = get_db()
    now = datetime.now(UTC)
    today = today_for(actor.user)
    form: FlaskForm
    try:
        if change == "step":
            form = StepForm()
            if not form.validate():
                return person_page(subject, actor, error=_("Please check the form."), status=400)
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
                return person_page(subject, actor, error=_("Please give a level and a reason."), status=400)
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
                return person_page(subject, actor, error=_("Please check the form."), status=400)
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
        return person_page(subject, actor, error=error_text(refused), status=400)
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
