"""Exits and follow-ups on a participant's page, and the programmes' yearly targets (admins).

Thin views over :mod:`server.services.outcomes`; the funder report shows the figures.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from server.adapters.web.auth import admin_required, current, trainer_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, date_label, error_text
from server.extensions import get_db
from server.models import ExitReason, FollowUpStatus, Person
from server.services import outcomes, training
from server.services.outcomes import FOLLOW_UP_LABELS, REASON_LABELS
from server.services.training import TrainingError

bp = web_blueprint("outcomes", __name__)


def _actor() -> Person:
    user = current()
    assert user is not None
    person = get_db().get(Person, user.id)
    assert person is not None
    return person


def person_page(subject: Person, *, error: str | None = None, status: int = 200) -> ResponseReturnValue:
    entry = outcomes.exit_of(get_db(), subject.id)
    return (
        render_template(
            "outcomes/person.html",
            person=subject,
            entry=entry,
            reasons=[(r.value, _(label)) for r, label in REASON_LABELS.items()],
            statuses=[(s.value, _(label)) for s, label in FOLLOW_UP_LABELS.items()],
            reason_label=_(REASON_LABELS[entry.reason]) if entry else "",
            status_label=_(FOLLOW_UP_LABELS[entry.follow_up_status])
            if entry and entry.follow_up_status
            else "",
            left_on=date_label(entry.left_on) if entry else "",
            due=date_label(entry.follow_up_due) if entry else "",
            today=datetime.now(UTC).date().isoformat(),
            error=error,
        ),
        status,
    )


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    subject = get_db().get(Person, person_id)
    if subject is None or not training.serves(_actor(), subject):
        abort(404)
    return person_page(subject)


def _apply(person_id: int, change: str) -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    subject = db.get(Person, person_id) or abort(404)
    now = datetime.now(UTC)
    try:
        day = date.fromisoformat(request.form.get("on", ""))
    except ValueError:
        if not training.serves(actor, subject):
            abort(404)
        return person_page(subject, error=_("Give the date."), status=400)
    try:
        if change == "exit":
            try:
                reason = ExitReason(request.form.get("reason", ""))
            except ValueError:
                abort(400)
            outcomes.record_exit(db, actor, subject, day, reason, request.form.get("note"), now)
            message = _("Exit recorded.")
        else:
            try:
                status = FollowUpStatus(request.form.get("status", ""))
            except ValueError:
                abort(400)
            outcomes.record_follow_up(db, actor, subject, status, day, now)
            message = _("Follow-up recorded.")
    except TrainingError as refused:
        db.rollback()
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        code = 403 if refused.forbidden else 400
        if not training.serves(actor, subject):
            return render_template("error.html", code=code, message=error_text(refused)), code
        return person_page(subject, error=error_text(refused), status=code)
    db.commit()
    flash(message, "success")
    return redirect(url_for("outcomes.person", person_id=subject.id))


@bp.post("/people/<int:person_id>/exit")
@trainer_required
def record_exit(person_id: int) -> ResponseReturnValue:
    return _apply(person_id, "exit")


@bp.post("/people/<int:person_id>/follow-up")
@trainer_required
def record_follow_up(person_id: int) -> ResponseReturnValue:
    return _apply(person_id, "follow_up")


@bp.route("/targets", methods=["GET", "POST"])
@admin_required
def targets() -> ResponseReturnValue:
    db = get_db()
    error = None
    if request.method == "POST":
        try:
            outcomes.set_target(
                db,
                _actor(),
                request.form.get("programme", ""),
                int(request.form.get("year", "")),
                int(request.form.get("integrations", "")),
            )
        except (ValueError, TrainingError) as exc:
            db.rollback()
            error = (
                error_text(exc)
                if isinstance(exc, TrainingError)
                else _("Give a programme, a year and a number.")
            )
        else:
            db.commit()
            flash(_("Target saved."), "success")
            return redirect(url_for("outcomes.targets"))
    return (
        render_template(
            "outcomes/targets.html", targets=outcomes.targets(db), error=error, year=datetime.now(UTC).year
        ),
        400 if error else 200,
    )
