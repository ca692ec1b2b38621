"""The admin start page and the sites."""

from __future__ import annotations

from typing import Any

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select
from werkzeug.datastructures import FileStorage

from server.adapters.web.admin.base import acting_admin, apply_changes, bp, form_page, text_or_none
from server.adapters.web.admin.forms import SiteForm
from server.adapters.web.admin.sessions import now_utc, stale_rows
from server.adapters.web.auth import admin_required
from server.adapters.web.l10n import _, current_language, error_text
from server.extensions import get_db
from server.models import CardSecurity, Device, Machine, OpeningHours, Person, Site
from server.services import audit, cards, letterhead, opening_hours


@bp.get("/")
@admin_required
def index() -> ResponseReturnValue:
    db = get_db()
    counts = {
        "sites": db.scalar(select(func.count(Site.id))) or 0,
        "people": db.scalar(select(func.count(Person.id)).where(Person.active.is_(True))) or 0,
        "machines": db.scalar(select(func.count(Machine.id))) or 0,
        "offline": db.scalar(select(func.count(Device.id)).where(Device.online.is_(False))) or 0,
    }
    # Sessions a dead device left open: the admin closes each on its page (admin/sessions.py).
    return render_template("admin/index.html", counts=counts, stale=stale_rows(now_utc()))


@bp.get("/sites")
@admin_required
def sites() -> ResponseReturnValue:
    db = get_db()
    rows = db.scalars(select(Site).order_by(Site.name)).all()
    by_site: dict[int, list[OpeningHours]] = {site.id: [] for site in rows}
    for row in db.scalars(select(OpeningHours).where(OpeningHours.machine_id.is_(None))):
        by_site.setdefault(row.site_id, []).append(row)
    hours = {site_id: opening_hours.format_hours(found) for site_id, found in by_site.items()}
    return render_template("admin/sites.html", sites=rows, hours=hours)


@bp.route("/sites/new", methods=["GET", "POST"])
@admin_required
def site_new() -> ResponseReturnValue:
    return _site_form(None)


@bp.route("/sites/<int:site_id>", methods=["GET", "POST"])
@admin_required
def site_edit(site_id: int) -> ResponseReturnValue:
    site = get_db().get(Site, site_id)
    if site is None:
        abort(404)
    return _site_form(site)


def site_hours_text(site_id: int, machine_id: int | None) -> str:
    """The hours of a site (machine_id None) or of one machine, as the form shows them."""
    owner = OpeningHours.machine_id == machine_id if machine_id else OpeningHours.machine_id.is_(None)
    rows = get_db().scalars(select(OpeningHours).where(OpeningHours.site_id == site_id, owner))
    return opening_hours.format_hours(rows)


def save_hours(site_id: int, machine_id: int | None, field: Any, old_text: str, subject: str) -> None:
    """Replace the hours when the form's differ from ``old_text``; audit-logged."""
    if field.name not in request.form:
        return  # a form without the field (a script's post) leaves the hours alone
    intervals = getattr(field, "intervals", [])
    new_text = opening_hours.format_hours(intervals)
    if new_text == old_text:
        return
    db = get_db()
    opening_hours.replace(db, site_id, machine_id, intervals)
    audit.record(db, acting_admin(), "opening_hours.update", subject, {"opening_hours": [old_text, new_text]})


def _letterhead(form: SiteForm, site: Site | None) -> tuple[str | None, str | None] | None:
    """The address and logo the form asks for (the logo: a new upload, removed, or the one there
    was), checked (server.services.letterhead); None, with the reason at the field, when refused."""
    address = site.address if site is not None else None
    if form.address.name in request.form:  # a form without the field (a script's) keeps it
        try:
            address = letterhead.check_address(form.address.data)
        except letterhead.LetterheadError as refused:
            form.add_error("address", error_text(refused))
            return None
    logo = site.logo if site is not None else None
    upload = form.logo_file.data
    if isinstance(upload, FileStorage) and upload.filename:
        try:
            logo = letterhead.check_logo(upload.stream.read(letterhead.MAX_LOGO_BYTES + 1))
        except letterhead.LetterheadError as refused:
            form.add_error("logo_file", error_text(refused))
            return None
    elif form.remove_logo.data:
        logo = None
    return address, logo


def _site_form(site: Site | None) -> ResponseReturnValue:
    db = get_db()
    form = SiteForm(obj=site)
    old_hours = "" if site is None else site_hours_text(site.id, None)
    if not form.is_submitted():
        form.opening_hours.data = old_hours
    if form.validate_on_submit():
        slug = form.slug.data.strip()
        taken = db.scalar(select(Site.id).where(Site.slug == slug))
        checked = _letterhead(form, site)
        if taken is not None and (site is None or taken != site.id):
            form.add_error("slug", _("Another site already has this short name."))
        elif checked is not None:
            address, logo = checked
            values = {
                "slug": slug,
                "name": form.name.data.strip(),
                "name_de": text_or_none(form.name_de.data),
                "timezone": form.timezone.data.strip(),
                "address": address,
            }
            old_logo = site.logo if site is not None else None
            if site is None:
                site = Site(**values, logo=logo)
                db.add(site)
                db.flush()
                detail = {**values, "logo": letterhead.logo_summary(logo)}
                audit.record(db, acting_admin(), "site.create", f"site:{site.id}", detail)
            else:
                changes = apply_changes(site, values)
                if logo != old_logo:
                    site.logo = logo
                    changes["logo"] = [letterhead.logo_summary(old_logo), letterhead.logo_summary(logo)]
                if changes:
                    audit.record(db, acting_admin(), "site.update", f"site:{site.id}", changes)
            cards.set_card_security(db, site, CardSecurity(form.card_security.data), acting_admin())
            save_hours(site.id, None, form.opening_hours, old_hours, f"site:{site.id}")
            db.commit()
            flash(_("Site %(name)s saved.", name=site.display_name(current_language())), "info")
            return redirect(url_for("admin.sites"))
    title = (
        _("New site") if site is None else _("Edit site %(name)s", name=site.display_name(current_language()))
    )
    return form_page(
        "admin/form.html",
        form,
        title=title,
        back=url_for("admin.sites"),
        enctype="multipart/form-data",
        logo=site.logo if site is not None and (site.logo or "").startswith("data:image/") else None,
    )
