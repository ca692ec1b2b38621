"""Competencies (validity, prerequisite) and the training steps that lead to them."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from server.adapters.web.admin.base import (
    acting_admin,
    apply_changes,
    bp,
    form_page,
    kind_names,
    level_names,
    refused_form,
    text_or_none,
)
from server.adapters.web.admin.forms import ButtonForm, CompetencyForm, StepForm, choice
from server.adapters.web.auth import admin_required
from server.adapters.web.l10n import _, current_language
from server.extensions import get_db
from server.models import Competency, Level, TrainingStep
from server.services import audit, competencies


def _competency_or_404(competency_id: int) -> Competency:
    competency = get_db().get(Competency, competency_id)
    if competency is None:
        abort(404)
    return competency


def _step_or_404(step_id: int) -> TrainingStep:
    step = get_db().get(TrainingStep, step_id)
    if step is None:
        abort(404)
    return step


@bp.get("/competencies")
@admin_required
def competencies_list() -> ResponseReturnValue:
    rows = get_db().scalars(
        select(Competency)
        .options(selectinload(Competency.steps), selectinload(Competency.prerequisite))
        .order_by(Competency.name)
    )
    return render_template("admin/competencies.html", competencies=rows.all(), language=current_language())


def _competency_form(competency: Competency | None) -> CompetencyForm:
    db = get_db()
    language = current_language()
    form = CompetencyForm(obj=competency)
    others = db.scalars(select(Competency).order_by(Competency.name))
    form.prerequisite_id.choices = [choice("", _("None"))] + [
        choice(c.id, c.display_name(language)) for c in others if competency is None or c.id != competency.id
    ]
    return form


def _save_competency(form: CompetencyForm, competency: Competency | None) -> Competency | None:
    """The saved competency, or None when the view must show the form's errors."""
    db = get_db()
    slug = form.slug.data.strip()
    taken = db.scalar(select(Competency.id).where(Competency.slug == slug))
    ok = True
    if taken is not None and (competency is None or taken != competency.id):
        form.add_error("slug", _("Another competency already has this short name."))
        ok = False
    prerequisite_id = form.prerequisite_id.data
    if competency is not None and competencies.creates_cycle(db, competency.id, prerequisite_id):
        form.add_error(
            "prerequisite_id",
            _("This would make a circle: the chosen competency already needs this one first."),
        )
        ok = False
    if not ok:
        return None
    values: dict[str, Any] = {
        "slug": slug,
        "name": form.name.data.strip(),
        "name_de": text_or_none(form.name_de.data),
        "validity_months": form.validity_months.data,
        "prerequisite_id": prerequisite_id,
    }
    if competency is None:
        competency = Competency(**values)
        db.add(competency)
        db.flush()
        audit.record(db, acting_admin(), "competency.create", f"competency:{competency.id}", values)
    else:
        changes = apply_changes(competency, values)
        if changes:
            audit.record(db, acting_admin(), "competency.update", f"competency:{competency.id}", changes)
    db.commit()
    flash(_("Competency %(name)s saved.", name=competency.display_name(current_language())), "info")
    return competency


@bp.route("/competencies/new", methods=["GET", "POST"])
@admin_required
def competency_new() -> ResponseReturnValue:
    form = _competency_form(None)
    if form.validate_on_submit():
        saved = _save_competency(form, None)
        if saved is not None:
            return redirect(url_for("admin.competency", competency_id=saved.id))
    return form_page(
        "admin/form.html", form, title=_("New competency"), back=url_for("admin.competencies_list")
    )


@bp.route("/competencies/<int:competency_id>", methods=["GET", "POST"])
@admin_required
def competency(competency_id: int) -> ResponseReturnValue:
    competency = _competency_or_404(competency_id)
    form = _competency_form(competency)
    if form.validate_on_submit():
        saved = _save_competency(form, competency)
        if saved is not None:
            return redirect(url_for("admin.competency", competency_id=saved.id))
    return _competency_page(competency, form)


def _competency_page(
    competency: Competency, form: CompetencyForm | None = None, step_form: StepForm | None = None
) -> ResponseReturnValue:
    db = get_db()
    if form is None:
        form = _competency_form(competency)
        form.process(formdata=None, obj=competency)
    refused = step_form is not None or form.is_submitted()
    steps = list(competency.steps)
    in_use = {s.id for s in steps if competencies.step_in_use(db, s)}
    html = render_template(
        "admin/competency.html",
        competency=competency,
        form=form,
        steps=steps,
        in_use=in_use,
        step_form=step_form or StepForm(prefix="step", formdata=None),
        button=ButtonForm(formdata=None),
        level_names=level_names(),
        kind_names=kind_names(),
    )
    return html, 400 if refused else 200


def _step_values(form: StepForm) -> dict[str, Any]:
    return {
        "kind": form.kind.data,
        "name": form.name.data.strip(),
        "name_de": text_or_none(form.name_de.data),
        "leads_to": Level(form.leads_to.data),
        "hours": form.hours.data,
        "content_version": text_or_none(form.content_version.data),
    }


@bp.post("/competencies/<int:competency_id>/steps")
@admin_required
def step_add(competency_id: int) -> ResponseReturnValue:
    db = get_db()
    competency = _competency_or_404(competency_id)
    form = StepForm(prefix="step")
    if not form.validate_on_submit():
        refused_form(form)
        return _competency_page(competency, step_form=form)
    step = TrainingStep(**_step_values(form))
    competencies.add_step(db, competency, step)
    db.flush()
    detail = {**_step_values(form), "leads_to": step.leads_to.value, "competency": competency.slug}
    audit.record(db, acting_admin(), "step.create", f"step:{step.id}", detail)
    db.commit()
    flash(_("Step %(name)s added.", name=step.display_name(current_language())), "info")
    return redirect(url_for("admin.competency", competency_id=competency.id))


@bp.route("/steps/<int:step_id>", methods=["GET", "POST"])
@admin_required
def step_edit(step_id: int) -> ResponseReturnValue:
    db = get_db()
    step = _step_or_404(step_id)
    form = StepForm(obj=step)
    if not form.is_submitted():
        form.leads_to.data = step.leads_to.value
    if form.validate_on_submit():
        changes = apply_changes(step, _step_values(form))
        if changes:
            audit.record(db, acting_admin(), "step.update", f"step:{step.id}", changes)
        db.commit()
        flash(_("Step %(name)s saved.", name=step.display_name(current_language())), "info")
        return redirect(url_for("admin.competency", competency_id=step.competency_id))
    return form_page(
        "admin/form.html",
        form,
        title=_("Edit step %(name)s", name=step.display_name(current_language())),
        back=url_for("admin.competency", competency_id=step.competency_id),
    )


@bp.post("/steps/<int:step_id>/move")
@admin_required
def step_move(step_id: int) -> ResponseReturnValue:
    db = get_db()
    step = _step_or_404(step_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    offset = -1 if request.form.get("direction") == "up" else 1
    if competencies.move_step(step.competency, step, offset):
        audit.record(
            db,
            acting_admin(),
            "step.move",
            f"step:{step.id}",
            {"competency": step.competency.slug, "position": step.position},
        )
        db.commit()
    return redirect(url_for("admin.competency", competency_id=step.competency_id))


@bp.post("/steps/<int:step_id>/delete")
@admin_required
def step_delete(step_id: int) -> ResponseReturnValue:
    db = get_db()
    step = _step_or_404(step_id)
    competency_id = step.competency_id
    if not ButtonForm().validate_on_submit():
        abort(400)
    if competencies.step_in_use(db, step):
        flash(_("This step is in people's training records and stays. Rename it instead."), "error")
        return redirect(url_for("admin.competency", competency_id=competency_id))
    competency = step.competency
    audit.record(
        db,
        acting_admin(),
        "step.delete",
        f"step:{step.id}",
        {"competency": competency.slug, "name": step.name, "kind": step.kind},
    )
    competency.steps.remove(step)
    db.delete(step)
    for position, each in enumerate(competency.steps):
        each.position = position
    db.commit()
    flash(_("Step %(name)s deleted.", name=step.display_name(current_language())), "info")
    return redirect(url_for("admin.competency", competency_id=competency_id))
