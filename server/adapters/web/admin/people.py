"""People: the list with search and filters, create and edit, deactivate, badges, CSV import."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, or_, select
from sqlalchemy.orm import selectinload

from server.adapters.web.admin.base import (
    acting_admin,
    apply_changes,
    bp,
    form_page,
    paginate,
    site_choices,
    text_or_none,
)
from server.adapters.web.admin.forms import (
    BadgeForm,
    BlockForm,
    ButtonForm,
    EnrolForm,
    ImportForm,
    PersonForm,
    TokenForm,
    choice,
)
from server.adapters.web.auth import admin_required, current
from server.adapters.web.l10n import _, when_label
from server.extensions import get_db
from server.i18n import N_
from server.models import ApiToken, Badge, BadgeEnrolment, BadgeStatus, Device, Person
from server.security import hash_password
from server.services import audit, badges, cards, people_import, privacy, tokens

ROLES = ("participant", "trainer", "admin")


@bp.get("/people")
@admin_required
def people() -> ResponseReturnValue:
    db = get_db()
    q = request.args.get("q", "").strip()
    role = request.args.get("role", "")
    active = request.args.get("active", "yes")
    query = select(Person).options(selectinload(Person.badges)).order_by(Person.name, Person.id)
    if q:
        like = f"%{q.lower()}%"
        with_badge = select(Badge.person_id).where(func.upper(Badge.uid).like(f"%{q.upper()}%"))
        query = query.where(
            or_(
                func.lower(Person.name).like(like),
                func.lower(Person.email).like(like),
                func.lower(Person.cohort).like(like),
                func.lower(Person.external_id).like(like),
                Person.id.in_(with_badge),
            )
        )
    if role in ROLES:
        query = query.where(getattr(Person, f"is_{role}").is_(True))
    if active == "yes":
        query = query.where(Person.active.is_(True))
    elif active == "no":
        query = query.where(Person.active.is_(False))
    page = paginate(db, query)
    return render_template("admin/people.html", page=page, q=q, role=role, active=active)


@bp.route("/people/new", methods=["GET", "POST"])
@admin_required
def person_new() -> ResponseReturnValue:
    db = get_db()
    user = current()
    assert user is not None
    form = PersonForm(
        data=None if request.method == "POST" else {"site_id": user.site_id, "is_participant": True}
    )
    form.site_id.choices = site_choices(db)
    if form.validate_on_submit() and _unique(form, None):
        person = Person(password_hash=None)
        values = _values(form)
        for name, value in values.items():
            setattr(person, name, value)
        if form.password.data:
            person.password_hash = hash_password(form.password.data)
        db.add(person)
        db.flush()
        detail = {**values, "password_set": bool(form.password.data)}
        audit.record(db, acting_admin(), "person.create", f"person:{person.id}", detail)
        db.commit()
        flash(_("%(name)s added.", name=person.name), "info")
        return redirect(url_for("admin.person", person_id=person.id))
    return form_page("admin/form.html", form, title=_("New person"), back=url_for("admin.people"))


def _person_or_404(person_id: int) -> Person:
    person = get_db().get(Person, person_id)
    if person is None:
        abort(404)
    return person


def _values(form: PersonForm) -> dict[str, Any]:
    return {
        "name": form.name.data.strip(),
        "email": (text_or_none(form.email.data) or "").lower() or None,
        "is_participant": bool(form.is_participant.data),
        "is_trainer": bool(form.is_trainer.data),
        "is_admin": bool(form.is_admin.data),
        "language": form.language.data,
        "site_id": form.site_id.data,
        "cohort": text_or_none(form.cohort.data),
        "programme": text_or_none(form.programme.data),
        "external_id": text_or_none(form.external_id.data),
        "active": bool(form.active.data),
    }


def _unique(form: PersonForm, person: Person | None) -> bool:
    """Email and external ID belong to one person each (checked here, with a message, not by
    the database's refusal)."""
    db = get_db()
    ok = True
    email = (text_or_none(form.email.data) or "").lower()
    if email:
        other = db.scalar(select(Person).where(func.lower(Person.email) == email))
        if other is not None and other is not person:
            form.add_error("email", _("%(name)s already has this email address.", name=other.name))
            ok = False
    external_id = text_or_none(form.external_id.data)
    if external_id:
        other = db.scalar(select(Person).where(Person.external_id == external_id))
        if other is not None and other is not person:
            form.add_error("external_id", _("%(name)s already has this external ID.", name=other.name))
            ok = False
    user = current()
    if person is not None and user is not None and person.id == user.id:
        # An admin who takes their own admin role away cannot undo it.
        if not form.is_admin.data:
            form.add_error("is_admin", _("You cannot take away your own admin role."))
            ok = False
        if not form.active.data:
            form.add_error("active", _("You cannot deactivate yourself."))
            ok = False
    return ok


@bp.route("/people/<int:person_id>", methods=["GET", "POST"])
@admin_required
def person(person_id: int) -> ResponseReturnValue:
    db = get_db()
    person = _person_or_404(person_id)
    form = PersonForm(obj=person)
    form.site_id.choices = site_choices(db)
    if form.validate_on_submit() and _unique(form, person):
        changes = apply_changes(person, _values(form))
        if form.password.data:
            person.password_hash = hash_password(form.password.data)
            changes["password"] = ["…", "…"]
        if changes:
            audit.record(db, acting_admin(), "person.update", f"person:{person.id}", changes)
        db.commit()
        flash(_("%(name)s saved.", name=person.name), "info")
        return redirect(url_for("admin.person", person_id=person.id))
    return _person_page(person, form)


def _person_page(person: Person, form: PersonForm | None = None, **failed: Any) -> ResponseReturnValue:
    """The person page; ``failed`` holds the one badge form that was refused, by its prefix."""
    db = get_db()
    if form is None:
        form = PersonForm(obj=person, formdata=None)
        form.site_id.choices = site_choices(db)
    badge_forms: dict[str, Any] = {}
    for badge in person.badges:
        if badge.status == BadgeStatus.ACTIVE:
            badge_forms[f"block-{badge.id}"] = BlockForm(prefix=f"block-{badge.id}", formdata=None)
            badge_forms[f"replace-{badge.id}"] = BadgeForm(prefix=f"replace-{badge.id}", formdata=None)
    badge_forms["assign"] = BadgeForm(prefix="assign", formdata=None)
    badge_forms["enrol"] = _enrol_form(person, formdata=None)
    badge_forms["token"] = TokenForm(prefix="token", formdata=None)
    new_token = failed.pop("new_token", None)
    badge_forms.update(failed)
    refused = form.is_submitted() or bool(failed)
    html = render_template(
        "admin/person.html",
        person=person,
        form=form,
        badges=sorted(person.badges, key=lambda b: (b.status != BadgeStatus.ACTIVE, -b.id)),
        badge_forms=badge_forms,
        enrolments=cards.pending_enrolments(db, person),
        button=ButtonForm(formdata=None),
        api_tokens=db.scalars(
            select(ApiToken).where(ApiToken.person_id == person.id).order_by(ApiToken.id.desc())
        ).all(),
        new_token=new_token,
        when=when_label,
        now=datetime.now(UTC),
    )
    if new_token is not None:
        # The token is on this page once and nowhere else: never cache it.
        return html, 200, {"Cache-Control": "no-store"}
    return html, 400 if refused else 200


@bp.post("/people/<int:person_id>/active")
@admin_required
def person_active(person_id: int) -> ResponseReturnValue:
    """Deactivate (or reactivate) a person. People are never deleted: their history stays."""
    db = get_db()
    person = _person_or_404(person_id)
    user = current()
    if not ButtonForm().validate_on_submit():
        abort(400)
    make_active = request.form.get("active") == "1"
    if user is not None and person.id == user.id and not make_active:
        flash(_("You cannot deactivate yourself."), "error")
        return redirect(url_for("admin.person", person_id=person.id))
    if person.active != make_active:
        person.active = make_active
        action = "person.activate" if make_active else "person.deactivate"
        audit.record(db, acting_admin(), action, f"person:{person.id}", {"person": person.name})
        db.commit()
    if make_active:
        flash(_("%(name)s is active again.", name=person.name), "info")
    else:
        flash(
            _("%(name)s is deactivated: no login, no machine. The history stays.", name=person.name), "info"
        )
    return redirect(url_for("admin.person", person_id=person.id))


# -- personal data (GDPR) ------------------------------------------------------------------------


@bp.post("/people/<int:person_id>/export")
@admin_required
def person_export(person_id: int) -> ResponseReturnValue:
    """Everything stored about the person, as a JSON download (audited)."""
    db = get_db()
    person = _person_or_404(person_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    data = privacy.export(db, person, acting_admin(), datetime.now(UTC))
    db.commit()
    body = json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True)
    return Response(
        body,
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="werkbank-person-{person.id}.json"'},
    )


@bp.post("/people/<int:person_id>/erase")
@admin_required
def person_erase(person_id: int) -> ResponseReturnValue:
    """Erase the person's personal data; the admin confirms by typing the person's name."""
    db = get_db()
    person = _person_or_404(person_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    if person.erased_at is not None:
        flash(_("This person's personal data was erased already."), "info")
        return redirect(url_for("admin.person", person_id=person.id))
    if request.form.get("confirm", "").strip() != person.name:
        flash(_("Nothing was erased: type the person's name exactly to confirm."), "error")
        return redirect(url_for("admin.person", person_id=person.id)), 303
    try:
        label = privacy.erase(db, person, acting_admin(), datetime.now(UTC))
    except privacy.PrivacyError:
        db.rollback()
        flash(_("You cannot erase yourself. Ask another admin."), "error")
        return redirect(url_for("admin.person", person_id=person.id)), 303
    db.commit()
    flash(_("Personal data erased. The hours stay under the name %(label)s.", label=label), "info")
    return redirect(url_for("admin.person", person_id=person.id))


# -- API tokens ----------------------------------------------------------------------------------


@bp.post("/people/<int:person_id>/tokens")
@admin_required
def token_create(person_id: int) -> ResponseReturnValue:
    """Make an API token that acts as this person; the token is shown on the answer, once."""
    db = get_db()
    person = _person_or_404(person_id)
    form = TokenForm(prefix="token")
    if not form.validate_on_submit():
        return _person_page(person, **{"token": form})
    if not person.active or person.erased_at is not None:
        flash(_("Only an active person can have API tokens."), "error")
        return redirect(url_for("admin.person", person_id=person.id)), 303
    _token, secret = tokens.create_for(
        db,
        person,
        form.name.data.strip(),
        datetime.now(UTC),
        expires_days=form.expires_days.data,
        actor=acting_admin(),
    )
    db.commit()
    return _person_page(person, new_token=secret)


@bp.post("/people/<int:person_id>/tokens/<int:token_id>/revoke")
@admin_required
def token_revoke(person_id: int, token_id: int) -> ResponseReturnValue:
    db = get_db()
    token = db.get(ApiToken, token_id)
    if token is None or token.person_id != person_id:
        abort(404)
    if not ButtonForm().validate_on_submit():
        abort(400)
    if tokens.revoke_token(db, token, datetime.now(UTC), acting_admin()):
        db.commit()
        flash(_("Token %(prefix)s revoked: it no longer works.", prefix=token.prefix), "info")
    return redirect(url_for("admin.person", person_id=person_id))


# -- badges --------------------------------------------------------------------------------------


def _badge_or_404(badge_id: int) -> Badge:
    badge = get_db().get(Badge, badge_id)
    if badge is None:
        abort(404)
    return badge


@bp.post("/people/<int:person_id>/badges")
@admin_required
def badge_assign(person_id: int) -> ResponseReturnValue:
    db = get_db()
    person = _person_or_404(person_id)
    form = BadgeForm(prefix="assign")
    if form.validate_on_submit():
        try:
            badge = badges.assign(db, person, form.uid.data, acting_admin(), text_or_none(form.note.data))
        except badges.BadgeError as error:
            db.rollback()
            form.add_error("uid", _(error.message, **error.params))
        else:
            db.commit()
            flash(_("Badge %(uid)s assigned to %(name)s.", uid=badge.uid, name=person.name), "info")
            return redirect(url_for("admin.person", person_id=person.id))
    return _person_page(person, **{"assign": form})


def _enrol_form(person: Person, **kwargs: Any) -> EnrolForm:
    form = EnrolForm(prefix="enrol", **kwargs)
    stations = cards.enrolment_stations(get_db(), person.site)
    form.device_id.choices = [
        choice(d.id, f"{d.id} ({d.machine.name})" if d.machine else d.id) for d in stations
    ]
    return form


@bp.post("/people/<int:person_id>/enrolments")
@admin_required
def enrolment_start(person_id: int) -> ResponseReturnValue:
    """Order a secure badge for the person at an enrolment station (services/cards.start_enrolment)."""
    db = get_db()
    person = _person_or_404(person_id)
    form = _enrol_form(person)
    if form.validate_on_submit():
        device = db.get(Device, form.device_id.data)
        try:
            if device is None:
                raise cards.CardError(
                    N_("%(device)s is not an enrolment station."), device=form.device_id.data
                )
            cards.start_enrolment(db, person, device, acting_admin())
        except cards.CardError as error:
            db.rollback()
            form.add_error("device_id", _(error.message, **error.params))
        else:
            db.commit()
            flash(_("Now lay a new card on the reader of %(device)s.", device=device.id), "info")
            return redirect(url_for("admin.person", person_id=person.id))
    return _person_page(person, **{"enrol": form})


@bp.post("/enrolments/<enrolment_id>/cancel")
@admin_required
def enrolment_cancel(enrolment_id: str) -> ResponseReturnValue:
    db = get_db()
    enrolment = db.get(BadgeEnrolment, enrolment_id)
    if enrolment is None:
        abort(404)
    try:
        cards.cancel_enrolment(db, enrolment, acting_admin())
    except cards.CardError as error:
        db.rollback()
        flash(_(error.message, **error.params), "error")
    else:
        db.commit()
        flash(_("The secure badge was cancelled."), "info")
    return redirect(url_for("admin.person", person_id=enrolment.person_id))


@bp.post("/badges/<int:badge_id>/replace")
@admin_required
def badge_replace(badge_id: int) -> ResponseReturnValue:
    db = get_db()
    badge = _badge_or_404(badge_id)
    person = badge.person
    form = BadgeForm(prefix=f"replace-{badge.id}")
    if badge.status != BadgeStatus.ACTIVE:
        flash(_("Only an active badge can be replaced."), "error")
        return redirect(url_for("admin.person", person_id=person.id))
    if form.validate_on_submit():
        try:
            new = badges.replace(db, badge, form.uid.data, acting_admin(), text_or_none(form.note.data))
        except badges.BadgeError as error:
            db.rollback()
            form.add_error("uid", _(error.message, **error.params))
        else:
            db.commit()
            flash(_("Badge %(old)s is marked lost; %(new)s is active.", old=badge.uid, new=new.uid), "info")
            return redirect(url_for("admin.person", person_id=person.id))
    return _person_page(person, **{f"replace-{badge.id}": form})


@bp.post("/badges/<int:badge_id>/block")
@admin_required
def badge_block(badge_id: int) -> ResponseReturnValue:
    db = get_db()
    badge = _badge_or_404(badge_id)
    person = badge.person
    form = BlockForm(prefix=f"block-{badge.id}")
    if badge.status != BadgeStatus.ACTIVE:
        flash(_("Only an active badge can be blocked."), "error")
        return redirect(url_for("admin.person", person_id=person.id))
    if form.validate_on_submit():
        badges.block(db, badge, acting_admin(), form.note.data.strip())
        db.commit()
        flash(_("Badge %(uid)s is blocked. It opens no machine from now on.", uid=badge.uid), "info")
        return redirect(url_for("admin.person", person_id=person.id))
    return _person_page(person, **{f"block-{badge.id}": form})


@bp.post("/badges/<int:badge_id>/unblock")
@admin_required
def badge_unblock(badge_id: int) -> ResponseReturnValue:
    db = get_db()
    badge = _badge_or_404(badge_id)
    if not ButtonForm().validate_on_submit():
        abort(400)
    try:
        badges.unblock(db, badge, acting_admin())
    except badges.BadgeError as error:
        db.rollback()
        flash(_(error.message, **error.params), "error")
    else:
        db.commit()
        flash(_("Badge %(uid)s is active again.", uid=badge.uid), "info")
    return redirect(url_for("admin.person", person_id=badge.person_id))


# -- CSV import ----------------------------------------------------------------------------------

FORMAT_DOC = Path(__file__).resolve().parents[4] / "docs" / "csv-import.md"
EXAMPLE = (
    "name;email;language;cohort;programme;external_id;badge\r\n"
    "Jürgen Müller;juergen@example.org;de;2026-A;Digitale Werkstatt;TN-0001;04B1C2D3E4F501\r\n"
    "Jonas Weber;;en;2026-A;Digitale Werkstatt;TN-0002;\r\n"
)


@bp.get("/people/import/format")
@admin_required
def csv_format() -> ResponseReturnValue:
    """docs/csv-import.md, shown as it is (English), next to the import form."""
    if not FORMAT_DOC.exists():  # an installed package without the docs folder
        abort(404)
    return render_template("admin/csv_format.html", text=FORMAT_DOC.read_text(encoding="utf-8"))


@bp.get("/people/import/example.csv")
@admin_required
def csv_example() -> ResponseReturnValue:
    # With a byte order mark, so Excel opens the umlauts right.
    body = "\ufeff" + EXAMPLE
    return Response(
        body.encode("utf-8"),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=werkbank-people-example.csv"},
    )


@bp.route("/people/import", methods=["GET", "POST"])
@admin_required
def people_import_page() -> ResponseReturnValue:
    db = get_db()
    user = current()
    assert user is not None
    form = ImportForm(data=None if request.method == "POST" else {"site_id": user.site_id})
    form.site_id.choices = site_choices(db)
    if not form.validate_on_submit():
        return form_page("admin/import.html", form)
    upload = form.file.data
    filename = upload.filename or "upload.csv"
    # One byte more than allowed tells "too large" apart without reading a huge file.
    data = upload.stream.read(people_import.MAX_BYTES + 1)
    checked = people_import.parse(db, data)
    if not checked.ok:
        db.rollback()
        problems = [
            {"row": p.row, "column": p.column, "message": _(p.message, **p.params)} for p in checked.problems
        ]
        html = render_template(
            "admin/import.html", form=form, problems=problems, filename=filename, rows=len(checked.rows)
        )
        return html, 400
    result = people_import.apply(db, checked, form.site_id.data, acting_admin(), filename)
    db.commit()
    return render_template("admin/import_done.html", result=result, filename=filename)
