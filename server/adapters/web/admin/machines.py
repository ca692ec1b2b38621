"""Machine types (with the competencies they require) and machines."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from server.adapters.web.admin.base import (
    acting_admin,
    apply_changes,
    bp,
    form_page,
    level_names,
    site_choices,
    status_names,
    text_or_none,
)
from server.adapters.web.admin.forms import MachineForm, choice, machine_type_form
from server.adapters.web.admin.sites import save_hours, site_hours_text
from server.adapters.web.auth import admin_required
from server.adapters.web.l10n import _, current_language
from server.extensions import get_db
from server.models import Competency, Level, Machine, MachineStatus, MachineType, OpeningHours, Requirement
from server.services import audit

# -- machine types -------------------------------------------------------------------------------


@bp.get("/machine-types")
@admin_required
def machine_types() -> ResponseReturnValue:
    rows = get_db().scalars(
        select(MachineType)
        .options(selectinload(MachineType.requirements).selectinload(Requirement.competency))
        .order_by(MachineType.name)
    )
    return render_template(
        "admin/machine_types.html", types=rows.all(), language=current_language(), level_names=level_names()
    )


@bp.route("/machine-types/new", methods=["GET", "POST"])
@admin_required
def machine_type_new() -> ResponseReturnValue:
    return _machine_type_form(None)


@bp.route("/machine-types/<int:type_id>", methods=["GET", "POST"])
@admin_required
def machine_type_edit(type_id: int) -> ResponseReturnValue:
    machine_type = get_db().get(MachineType, type_id)
    if machine_type is None:
        abort(404)
    return _machine_type_form(machine_type)


def _machine_type_form(machine_type: MachineType | None) -> ResponseReturnValue:
    db = get_db()
    language = current_language()
    competencies = list(db.scalars(select(Competency).order_by(Competency.name)))
    current = {r.competency_id: r for r in (machine_type.requirements if machine_type else [])}
    data = {f"req_{cid}": r.min_level.value for cid, r in current.items()}
    form = machine_type_form(
        [
            (c.id, _("%(competency)s: minimum level", competency=c.display_name(language)))
            for c in competencies
        ],
        obj=machine_type,
        data=data,
    )
    if form.validate_on_submit():
        slug = form.slug.data.strip()
        taken = db.scalar(select(MachineType.id).where(MachineType.slug == slug))
        if taken is not None and (machine_type is None or taken != machine_type.id):
            form.add_error("slug", _("Another machine type already has this short name."))
            return form_page(
                "admin/form.html", form, title=_title(machine_type), back=url_for("admin.machine_types")
            )
        values = {
            "slug": slug,
            "name": form.name.data.strip(),
            "name_de": text_or_none(form.name_de.data),
            "job_kind": form.job_kind.data,
        }
        if machine_type is None:
            machine_type = MachineType(**values)
            db.add(machine_type)
            db.flush()
            changes: dict[str, Any] = {k: [None, v] for k, v in values.items()}
            action = "machine_type.create"
        else:
            changes = apply_changes(machine_type, values)
            action = "machine_type.update"
        for competency in competencies:
            wanted: str | None = getattr(form, f"req_{competency.id}").data or None
            requirement = current.get(competency.id)
            before = requirement.min_level.value if requirement else None
            if wanted == before:
                continue
            changes[f"requires:{competency.slug}"] = [before, wanted]
            if wanted is None:
                if requirement is not None:
                    db.delete(requirement)
            elif requirement is not None:
                requirement.min_level = Level(wanted)
            else:
                db.add(Requirement(machine_type=machine_type, competency=competency, min_level=Level(wanted)))
        if changes:
            audit.record(db, acting_admin(), action, f"machine_type:{machine_type.id}", changes)
        db.commit()
        flash(_("Machine type %(name)s saved.", name=machine_type.display_name(current_language())), "info")
        return redirect(url_for("admin.machine_types"))
    return form_page("admin/form.html", form, title=_title(machine_type), back=url_for("admin.machine_types"))


def _title(machine_type: MachineType | None) -> str:
    if machine_type is None:
        return _("New machine type")
    return _("Edit machine type %(name)s", name=machine_type.display_name(current_language()))


# -- machines ------------------------------------------------------------------------------------


@bp.get("/machines")
@admin_required
def machines() -> ResponseReturnValue:
    rows = get_db().scalars(
        select(Machine)
        .options(selectinload(Machine.site), selectinload(Machine.machine_type), selectinload(Machine.device))
        .order_by(Machine.name)
    )
    return render_template("admin/machines.html", machines=rows.all(), status_names=status_names())


@bp.route("/machines/new", methods=["GET", "POST"])
@admin_required
def machine_new() -> ResponseReturnValue:
    return _machine_form(None)


@bp.route("/machines/<int:machine_id>", methods=["GET", "POST"])
@admin_required
def machine_edit(machine_id: int) -> ResponseReturnValue:
    machine = get_db().get(Machine, machine_id)
    if machine is None:
        abort(404)
    return _machine_form(machine)


def _machine_form(machine: Machine | None) -> ResponseReturnValue:
    db = get_db()
    form = MachineForm(obj=machine)
    form.site_id.choices = site_choices(db)
    form.machine_type_id.choices = [
        choice(t.id, t.display_name(current_language()))
        for t in db.scalars(select(MachineType).order_by(MachineType.name))
    ]
    old_hours = "" if machine is None else site_hours_text(machine.site_id, machine.id)
    if not form.is_submitted():
        form.opening_hours.data = old_hours
    if machine is not None and not form.is_submitted():
        form.status.data = machine.status.value
    title = _("New machine") if machine is None else _("Edit machine %(name)s", name=machine.name)
    if form.validate_on_submit():
        slug = form.slug.data.strip()
        taken = db.scalar(select(Machine.id).where(Machine.slug == slug))
        if taken is not None and (machine is None or taken != machine.id):
            form.add_error("slug", _("Another machine already has this short name."))
            return form_page("admin/form.html", form, title=title, back=url_for("admin.machines"))
        values: dict[str, Any] = {
            "slug": slug,
            "name": form.name.data.strip(),
            "site_id": form.site_id.data,
            "machine_type_id": form.machine_type_id.data,
            "status": MachineStatus(form.status.data),
            "max_session_min": form.max_session_min.data,
            "idle_timeout_min": form.idle_timeout_min.data,
            "guard_min": form.guard_min.data,
        }
        actor = acting_admin()
        site_before = machine.site_id if machine is not None else form.site_id.data
        if machine is None:
            machine = Machine(**values)
            db.add(machine)
            db.flush()
            audit.record(
                db, actor, "machine.create", f"machine:{machine.id}", {k: str(v) for k, v in values.items()}
            )
        else:
            changes = apply_changes(machine, values)
            status = changes.pop("status", None)
            if status is not None:
                # Its own entry: "who put the laser into maintenance, and when" is asked often.
                audit.record(db, actor, "machine.status", f"machine:{machine.id}", {"status": status})
            if changes:
                audit.record(db, actor, "machine.update", f"machine:{machine.id}", changes)
        if machine.site_id != site_before:
            # Hours belong to a site and its machines: a machine that moves keeps its own hours.
            db.execute(
                update(OpeningHours)
                .where(OpeningHours.machine_id == machine.id)
                .values(site_id=machine.site_id)
            )
        save_hours(machine.site_id, machine.id, form.opening_hours, old_hours, f"machine:{machine.id}")
        db.commit()
        flash(_("Machine %(name)s saved.", name=machine.name), "info")
        return redirect(url_for("admin.machines"))
    return form_page("admin/form.html", form, title=title, back=url_for("admin.machines"))
