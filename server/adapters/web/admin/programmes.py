"""Programmes: the fields each asks of its participants and its consent texts in versions.

Thin views over :mod:`server.services.programme_data` (which checks and audits every change); a
refused form is shown again with each problem at its field (HTTP 400) and nothing is changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from server.adapters.web.admin.base import acting_admin, bp
from server.adapters.web.admin.forms import ButtonForm, ConsentTextForm, ProgrammeFieldForm
from server.adapters.web.auth import admin_required
from server.adapters.web.l10n import _, current_language
from server.adapters.web.programme import problem_text
from server.extensions import get_db
from server.models import FieldKind, Person, ProgrammeField
from server.services import programme_data
from server.services.programme_data import FieldSpec, ProgrammeDataError


@bp.get("/programmes")
@admin_required
def programmes() -> ResponseReturnValue:
    db = get_db()
    names = programme_data.programmes(db)
    people: dict[str | None, int] = {
        name: count
        for name, count in db.execute(
            select(Person.programme, func.count())
            .where(Person.programme.is_not(None), Person.is_participant.is_(True), Person.erased_at.is_(None))
            .group_by(Person.programme)
        )
    }
    rows = []
    for name in names:
        fields = programme_data.fields_of(db, name)
        text = programme_data.current_text(db, name)
        rows.append(
            {
                "name": name,
                "people": people.get(name, 0),
                "fields": sum(not f.special for f in fields),
                "special": sum(f.special for f in fields),
                "version": text.version if text else None,
            }
        )
    return render_template("admin/programmes.html", rows=rows)


def _programme_arg() -> str:
    name = (request.values.get("programme") or "").strip()
    if not name or len(name) > programme_data.MAX_PROGRAMME:
        abort(404)
    return name


def _field_or_404(field_id: int) -> ProgrammeField:
    found = get_db().get(ProgrammeField, field_id)
    if found is None:
        abort(404)
    return found


def _spec(form: ProgrammeFieldForm) -> FieldSpec:
    return FieldSpec(
        label=str(form.label.data or ""),
        label_de=str(form.label_de.data or ""),
        kind=FieldKind(form.kind.data),
        options=str(form.options.data or ""),
        required=bool(form.required.data),
        special=bool(form.special.data),
        needs_consent=bool(form.needs_consent.data),
    )


def _place(form: Any, error: ProgrammeDataError) -> list[str]:
    """Put each problem at its form field; return those that belong to no field."""
    general = []
    for problem in error.problems:
        if problem.field and hasattr(form, problem.field):
            form.add_error(problem.field, problem_text(problem))
        else:
            general.append(problem_text(problem))
    return general


def programme_page(
    name: str,
    *,
    field_form: ProgrammeFieldForm | None = None,
    text_form: ConsentTextForm | None = None,
    errors: list[str] | None = None,
) -> ResponseReturnValue:
    db = get_db()
    language = current_language()
    fields = programme_data.fields_of(db, name)
    kinds = {kind.value: _(label) for kind, label in programme_data.KIND_LABELS.items()}
    html = render_template(
        "admin/programme.html",
        programme=name,
        fields=[
            {
                "field": f,
                "label": f.display_name(language),
                "kind": kinds[f.kind.value],
                "answers": programme_data.answers(db, f),
            }
            for f in fields
        ],
        texts=programme_data.consent_texts(db, name),
        field_form=field_form or ProgrammeFieldForm(prefix="field", formdata=None),
        text_form=text_form or ConsentTextForm(prefix="consent", formdata=None),
        button=ButtonForm(formdata=None),
        errors=errors or [],
    )
    refused = bool(errors) or any(f is not None and f.is_submitted() for f in (field_form, text_form))
    return html, 400 if refused else 200


@bp.get("/programmes/setup")
@admin_required
def programme() -> ResponseReturnValue:
    if not (request.args.get("programme") or "").strip():
        return redirect(url_for("admin.programmes"))
    return programme_page(_programme_arg())


@bp.post("/programmes/fields")
@admin_required
def programme_field_add() -> ResponseReturnValue:
    name = _programme_arg()
    db = get_db()
    form = ProgrammeFieldForm(prefix="field")
    if not form.validate_on_submit():
        return programme_page(name, field_form=form)
    try:
        made = programme_data.save_field(db, acting_admin(), name, _spec(form), datetime.now(UTC))
    except ProgrammeDataError as error:
        db.rollback()
        return programme_page(name, field_form=form, errors=_place(form, error))
    db.commit()
    flash(_("Field %(label)s added.", label=made.display_name(current_language())), "info")
    return redirect(url_for("admin.programme", programme=name))


@bp.route("/programmes/fields/<int:field_id>", methods=["GET", "POST"])
@admin_required
def programme_field(field_id: int) -> ResponseReturnValue:
    db = get_db()
    found = _field_or_404(field_id)
    form = ProgrammeFieldForm(obj=found)
    if not form.is_submitted():
        form.kind.data = found.kind.value
        form.options.data = "\n".join(f"{o['en']} | {o['de']}" for o in found.options or [])
    errors: list[str] = []
    if form.validate_on_submit():
        try:
            programme_data.save_field(
                db, acting_admin(), found.programme, _spec(form), datetime.now(UTC), found
            )
        except ProgrammeDataError as error:
            db.rollback()
            db.refresh(found)
            errors = _place(form, error)
        else:
            db.commit()
            flash(_("Field %(label)s saved.", label=found.display_name(current_language())), "info")
            return redirect(url_for("admin.programme", programme=found.programme))
    html = render_template(
        "admin/programme_field.html",
        form=form,
        found=found,
        answers=programme_data.answers(db, found),
        button=ButtonForm(formdata=None),
        errors=errors,
    )
    return html, 400 if form.is_submitted() else 200


@bp.post("/programmes/fields/<int:field_id>/move")
@admin_required
def programme_field_move(field_id: int) -> ResponseReturnValue:
    db = get_db()
    found = _field_or_404(field_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    step = -1 if request.form.get("direction") == "up" else 1
    programme_data.move_field(db, acting_admin(), found, step, datetime.now(UTC))
    db.commit()
    return redirect(url_for("admin.programme", programme=found.programme))


@bp.post("/programmes/fields/<int:field_id>/delete")
@admin_required
def programme_field_delete(field_id: int) -> ResponseReturnValue:
    db = get_db()
    found = _field_or_404(field_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    name, label = found.programme, found.display_name(current_language())
    try:
        deleted = programme_data.delete_field(
            db, acting_admin(), found, request.form.get("confirm") == "1", datetime.now(UTC)
        )
    except ProgrammeDataError as error:
        db.rollback()
        flash(" ".join(problem_text(p) for p in error.problems), "error")
        return redirect(url_for("admin.programme_field", field_id=field_id)), 303
    db.commit()
    flash(_("Field %(label)s deleted with %(count)d answers.", label=label, count=deleted), "info")
    return redirect(url_for("admin.programme", programme=name))


@bp.post("/programmes/consent-texts")
@admin_required
def consent_text_add() -> ResponseReturnValue:
    name = _programme_arg()
    db = get_db()
    form = ConsentTextForm(prefix="consent")
    if not form.validate_on_submit():
        return programme_page(name, text_form=form)
    try:
        made = programme_data.add_consent_text(
            db, acting_admin(), name, form.text.data, form.text_de.data, datetime.now(UTC)
        )
    except ProgrammeDataError as error:
        db.rollback()
        return programme_page(name, text_form=form, errors=_place(form, error))
    db.commit()
    flash(_("Consent text version %(version)d saved.", version=made.version), "info")
    return redirect(url_for("admin.programme", programme=name))
