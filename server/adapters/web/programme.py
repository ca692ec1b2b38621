"""Programme data on a participant's page, under /programme: the values of the programme's fields,
the participant's consent and its withdrawal (trainers of the person's site and admins), and the
special categories of personal data on a page of their own (admins only; every view audited).

Thin views over :mod:`server.services.programme_data`, which holds every rule. A form with a bad
value is shown again with each problem at its field (HTTP 400) and nothing is changed; a refusal
of the staff rule answers 403 and is audited and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import wraps
from typing import Any, ParamSpec

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.adapters.web.auth import ADMIN, current, login_required, trainer_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, current_language, date_label, error_text, local_date, when_label
from server.extensions import get_db
from server.i18n import N_
from server.models import Consent, FieldKind, Person, ProgrammeField
from server.services import programme_data, training
from server.services.programme_data import Answer, Problem, ProgrammeDataError
from server.services.training import Attempt, TrainingError

bp = web_blueprint("programme", __name__)

P = ParamSpec("P")


def _actor() -> Person:
    user = current()
    assert user is not None
    person = get_db().get(Person, user.id)
    assert person is not None
    return person


def special_required(view: Callable[P, ResponseReturnValue]) -> Callable[P, ResponseReturnValue]:
    """Admins only, like ``admin_required``, but a refusal is audited and counted as a refusal
    of the staff rule (``training.refused``, code ``admin_only``): someone who is not an admin
    asked for special categories of a person's data."""

    @wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        user = current()
        if user is not None and not user.is_admin:
            db = get_db()
            person_id = int(str(kwargs.get("person_id", 0)))
            subject = db.get(Person, person_id)
            refused = TrainingError(
                "admin_only",
                programme_data.SPECIAL_ONLY,
                attempt=Attempt("special_view", user.id, person_id, subject.name if subject else "", ""),
            )
            training.audit_refusal(db, refused, source="web")
            db.commit()
            abort(403)
        return view(*args, **kwargs)

    wrapped.access = ADMIN  # type: ignore[attr-defined]  # read by tests/web/test_web_roles.py
    return login_required(wrapped)


# -- presenting ----------------------------------------------------------------------------------


def problem_text(problem: Problem) -> str:
    language = current_language()
    params = {k: programme_data.localised(v, language) for k, v in problem.params.items()}
    return _(problem.message).format(**params)


def value_label(programme_field: ProgrammeField, value: str) -> str:
    """A stored value as the reader reads it."""
    if programme_field.kind == FieldKind.YES_NO:
        return _("yes") if value == programme_data.YES else _("no")
    if programme_field.kind == FieldKind.DATE:
        try:
            return date_label(date.fromisoformat(value))
        except ValueError:
            return value
    return programme_data.option_label(programme_field, value, current_language())


def field_rows(
    fields: list[ProgrammeField],
    stored: dict[int, Answer],
    submitted: dict[str, str] | None,
    errors: dict[str, list[str]],
    has_consent: bool,
    names: dict[int, str],
) -> list[dict[str, Any]]:
    """What the form shows for each field: its input, the value (as sent when the form was
    refused, else as stored), whether it can be filled now, and its errors."""
    language = current_language()
    now = datetime.now(UTC)
    rows = []
    for f in fields:
        name = f"field-{f.id}"
        answer = stored.get(f.id)
        value = submitted.get(name, "") if submitted is not None else (answer.value if answer else "")
        rows.append(
            {
                "field": f,
                "name": name,
                "label": f.display_name(language),
                "kind": f.kind.value,
                "value": value,
                "shown": value_label(f, answer.value) if answer else "",
                "options": [(o["key"], o["de"] if language == "de" else o["en"]) for o in f.options or []],
                "locked": f.needs_consent and not has_consent,
                "errors": errors.get(name, []),
                "recorded": _(
                    "Entered %(when)s by %(name)s",
                    when=when_label(answer.recorded_at, now),
                    name=names.get(answer.recorded_by_id or 0, "?"),
                )
                if answer and answer.recorded_at
                else "",
            }
        )
    return rows


def _names(db: Session, ids: set[int | None]) -> dict[int, str]:
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    return {
        pid: name for pid, name in db.execute(select(Person.id, Person.name).where(Person.id.in_(wanted)))
    }


def _errors(problems: list[Problem]) -> tuple[dict[str, list[str]], list[str]]:
    by_field: dict[str, list[str]] = {}
    general: list[str] = []
    for p in problems:
        (by_field.setdefault(p.field, []) if p.field.startswith("field-") else general).append(
            problem_text(p)
        )
    return by_field, general


def person_page(
    subject: Person,
    *,
    problems: list[Problem] | None = None,
    error: str | None = None,
    submitted: dict[str, str] | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    db = get_db()
    actor = _actor()
    programme = subject.programme
    fields = programme_data.fields_of(db, programme, special=False)
    stored = programme_data.values_of(db, subject.id, special=False)
    consent = programme_data.active_consent(db, subject.id, programme)
    current_text = programme_data.current_text(db, programme)
    history = programme_data.consents_of(db, subject.id)
    names = _names(
        db,
        {a.recorded_by_id for a in stored.values()}
        | {c.recorded_by_id for c in history}
        | {c.withdrawn_by_id for c in history},
    )
    by_field, general = _errors(problems or [])
    if error:
        general.insert(0, error)
    try:
        training.check_records(actor, subject, "check")
        may_edit = True
    except TrainingError:
        may_edit = False
    language = current_language()
    text_language, text = current_text.in_language(subject.language) if current_text else ("", "")
    special_count = len(programme_data.fields_of(db, programme, special=True)) if actor.is_admin else 0
    return (
        render_template(
            "programme/person.html",
            person=subject,
            programme=programme,
            rows=field_rows(fields, stored, submitted, by_field, consent is not None, names),
            consent=consent,
            consent_agreed=date_label(flask_local_date(consent.agreed_at)) if consent else "",
            current_text=current_text,
            text=text,
            text_language=text_language,
            languages=[
                (code, label)
                for code, label in (("de", _("German")), ("en", _("English")))
                if current_text and (current_text.text_de if code == "de" else current_text.text)
            ],
            history=[_consent_row(c, names, programme) for c in history],
            outdated=consent is not None
            and current_text is not None
            and (consent.version or 0) < current_text.version,
            errors=general,
            may_edit=may_edit,
            special_count=special_count,
            today=datetime.now(UTC).date().isoformat(),
            language=language,
        ),
        status,
    )


def _consent_row(consent: Consent, names: dict[int, str], current: str | None) -> dict[str, Any]:
    return {
        "programme": consent.programme,
        # A consent for an earlier programme that still stands: withdrawn from the list itself.
        "withdrawable": consent.withdrawn_at is None and consent.programme != current,
        "version": consent.version,
        "language": {"de": _("German"), "en": _("English")}.get(consent.language or "", ""),
        "agreed": date_label(flask_local_date(consent.agreed_at)),
        "by": names.get(consent.recorded_by_id or 0, ""),
        "withdrawn": date_label(flask_local_date(consent.withdrawn_at)) if consent.withdrawn_at else "",
        "withdrawn_by": names.get(consent.withdrawn_by_id or 0, ""),
        "text": consent.text,
    }


def flask_local_date(when: datetime) -> date:
    """The day of ``when`` in the site's time zone."""
    return date.fromisoformat(local_date(when))


def _subject(person_id: int) -> Person:
    subject = get_db().get(Person, person_id)
    if subject is None:
        abort(404)
    return subject


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    subject = _subject(person_id)
    if not training.serves(_actor(), subject):
        abort(404)
    return person_page(subject)


def _refused(
    subject: Person,
    refused: TrainingError | ProgrammeDataError,
    render: Callable[..., ResponseReturnValue],
    **context: Any,
) -> ResponseReturnValue:
    """The answer to a refused change, after the rollback: a staff-rule refusal audited (403), bad
    input (400) shown at its fields; nobody sees the page of a person they do not serve."""
    db = get_db()
    db.rollback()
    actor = _actor()
    if isinstance(refused, TrainingError):
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        code = 403 if refused.forbidden else 400
        message = error_text(refused)
        if not training.serves(actor, subject):
            return render_template("error.html", code=code, message=message), code
        return render(subject, error=message, status=code)
    if not training.serves(actor, subject):
        abort(404)
    return render(subject, problems=refused.problems, status=400, **context)


def _stale(subject: Person, render: Callable[..., ResponseReturnValue]) -> ResponseReturnValue | None:
    """A form made for another programme than the person's now (changed meanwhile, or a form
    posted by hand) changes nothing: 400, counted."""
    if request.form.get("programme") is not None and request.form["programme"] == (subject.programme or ""):
        return None
    error = programme_data.refuse(
        [
            Problem(
                "",
                N_(
                    "The person's programme changed since the page was loaded. Nothing was saved: "
                    "check and enter again."
                ),
            )
        ],
        "stale_form",
        f"person {subject.id}",
    )
    if not training.serves(_actor(), subject):
        abort(404)
    return render(subject, problems=error.problems, status=400)


def _submitted() -> dict[str, str]:
    return {k: v for k, v in request.form.items() if k.startswith("field-")}


@bp.post("/people/<int:person_id>/values")
@trainer_required
def save_values(person_id: int) -> ResponseReturnValue:
    return _save(person_id, special=False)


def _save(person_id: int, *, special: bool) -> ResponseReturnValue:
    """Store the submitted answers (ordinary, or the special categories), or show the form again
    with what the rules refused; the callers' decorators have checked the role."""
    subject = _subject(person_id)
    page = special_page if special else person_page
    stale = _stale(subject, page)
    if stale is not None:
        return stale
    db = get_db()
    try:
        changed = programme_data.save_values(
            db, _actor(), subject, _submitted(), datetime.now(UTC), special=special
        )
    except (TrainingError, ProgrammeDataError) as refused:
        return _refused(subject, refused, page, submitted=_submitted())
    db.commit()
    saved = _("Special categories saved.") if special else _("Programme data saved.")
    flash(saved if changed else _("Nothing changed."), "success" if changed else "info")
    return redirect(url_for("programme.special" if special else "programme.person", person_id=subject.id))


@bp.post("/people/<int:person_id>/consent")
@trainer_required
def record_consent(person_id: int) -> ResponseReturnValue:
    subject = _subject(person_id)
    try:
        text_id = int(request.form.get("consent_text_id", ""))
        agreed_on = date.fromisoformat(request.form.get("agreed_on", ""))
    except ValueError:
        error = programme_data.refuse(
            [Problem("", N_("Give the consent text and the day the person agreed."))],
            "consent_form",
            f"person {subject.id}",
        )
        if not training.serves(_actor(), subject):
            abort(404)
        return person_page(subject, problems=error.problems, status=400)
    db = get_db()
    try:
        programme_data.record_consent(
            db, _actor(), subject, text_id, request.form.get("language", ""), agreed_on, datetime.now(UTC)
        )
    except (TrainingError, ProgrammeDataError) as refused:
        return _refused(subject, refused, person_page)
    db.commit()
    flash(_("Consent recorded."), "success")
    return redirect(url_for("programme.person", person_id=subject.id))


@bp.post("/people/<int:person_id>/consent/withdraw")
@trainer_required
def withdraw_consent(person_id: int) -> ResponseReturnValue:
    """Withdraw the person's consent for the programme the form names: their current one, or an
    earlier one whose consent still stands (listed under "Consents so far")."""
    subject = _subject(person_id)
    programme = (request.form.get("programme") or "").strip()
    if request.form.get("confirm") != "1" or not programme:
        error = programme_data.refuse(
            [Problem("", N_("Tick the box to confirm: the answers that need the consent are erased."))],
            "withdrawal_unconfirmed",
            f"person {subject.id}",
        )
        if not training.serves(_actor(), subject):
            abort(404)
        return person_page(subject, problems=error.problems, status=400)
    db = get_db()
    try:
        programme_data.withdraw_consent(db, _actor(), subject, programme, datetime.now(UTC))
    except (TrainingError, ProgrammeDataError) as refused:
        return _refused(subject, refused, person_page)
    db.commit()
    flash(_("Consent withdrawn. The answers that needed it are erased."), "success")
    return redirect(url_for("programme.person", person_id=subject.id))


# -- special categories (admins) -----------------------------------------------------------------


def special_page(
    subject: Person,
    *,
    problems: list[Problem] | None = None,
    error: str | None = None,
    submitted: dict[str, str] | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    """The special categories of the person: every rendering is a view of them, audited."""
    db = get_db()
    actor = _actor()
    stored = programme_data.view_special(db, actor, subject, datetime.now(UTC))
    db.commit()
    fields = programme_data.fields_of(db, subject.programme, special=True)
    consent = programme_data.active_consent(db, subject.id, subject.programme)
    by_field, general = _errors(problems or [])
    if error:
        general.insert(0, error)
    names = _names(db, {a.recorded_by_id for a in stored.values()})
    return (
        render_template(
            "programme/special.html",
            person=subject,
            programme=subject.programme,
            rows=field_rows(fields, stored, submitted, by_field, consent is not None, names),
            consent=consent,
            errors=general,
            may_edit=actor.id != subject.id,
        ),
        status,
    )


@bp.get("/people/<int:person_id>/special")
@special_required
def special(person_id: int) -> ResponseReturnValue:
    return special_page(_subject(person_id))


@bp.post("/people/<int:person_id>/special")
@special_required
def save_special(person_id: int) -> ResponseReturnValue:
    return _save(person_id, special=True)
