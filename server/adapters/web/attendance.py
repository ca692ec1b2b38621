"""Attendance pages for trainers and admins: a month's sheet per cohort (page, print view and
PDF for the Jobcenter or funder), one person's month with corrections, and cohort timetables.

Thin views over :mod:`server.services.attendance`; a trainer sees the people of their own
site (admins: of the site they choose). Every print and PDF is audited (it leaves the lab).
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Response, abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from server.adapters.web.auth import admin_required, current, trainer_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, current_language, date_label, error_text
from server.extensions import get_db
from server.models import Person, Site
from server.services import attendance, audit, documents, opening_hours, training
from server.services.training import TrainingError

bp = web_blueprint("attendance", __name__)
log = logging.getLogger(__name__)


def now_utc() -> datetime:
    return datetime.now(UTC)


def _actor() -> Person:
    user = current()
    assert user is not None
    person = get_db().get(Person, user.id)
    assert person is not None
    return person


def _site(actor: Person) -> Site:
    """The site the page is about: the trainer's own; an admin may pick another (?site=)."""
    db = get_db()
    if actor.is_admin and request.args.get("site"):
        try:
            site = db.get(Site, int(request.args["site"]))
        except ValueError:
            site = None
        if site is None:
            abort(404)
        return site
    return actor.site


def parse_month(text: str | None, tz: str, now: datetime) -> date | None:
    """``2026-11`` as its first day; empty: this month; anything else None."""
    if not text:
        return now.astimezone(ZoneInfo(tz)).date().replace(day=1)
    try:
        return datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        return None


def hours_text(seconds: float) -> str:
    """``7,5`` / ``7.5`` hours with one decimal, as the sheets show them."""
    from flask_babel import format_decimal  # type: ignore[import-untyped,unused-ignore]

    return str(format_decimal(round(seconds / 3600.0, 1), format="0.0"))


def month_label(month: date) -> str:
    from flask_babel import format_date  # type: ignore[import-untyped,unused-ignore]

    return str(format_date(month, "MMMM yyyy"))


def weekday_letter(day: date) -> str:
    from flask_babel import format_date  # type: ignore[import-untyped,unused-ignore]

    return str(format_date(day, "EEEEE"))


def cell(entry: attendance.Day | None) -> dict[str, Any]:
    """One day of one person on the sheet: hours, A (absent), E (excused), marks."""
    if entry is None:
        return {"text": "", "kind": "none"}
    if entry.present:
        mark = "*" if entry.auto_closed and entry.corrected is None else ""
        mark += "†" if entry.corrected is not None else ""
        return {"text": hours_text(entry.present_s) + mark, "kind": "present"}
    if entry.excused:
        return {"text": _("E"), "kind": "excused"}
    if entry.absent:
        return {"text": _("A"), "kind": "absent"}
    return {"text": "", "kind": "none"}


def sheet_context(sheet: attendance.MonthSheet, now: datetime) -> dict[str, Any]:
    rows = []
    for row in sheet.rows:
        rows.append(
            {
                "id": row.person.id,
                "name": row.person.name,
                "external_id": row.person.external_id or "",
                "cells": [cell(row.days.get(d)) for d in sheet.dates],
                "days": row.days_present,
                "hours": hours_text(row.hours * 3600),
                "absences": row.absences,
                "excused": row.excused,
            }
        )
    return {
        "sheet": sheet,
        "site": sheet.site,
        "month_label": month_label(sheet.month),
        "dates": [
            {
                "day": d.day,
                "weekday": weekday_letter(d),
                "weekend": d.weekday() >= 5,
                "closed": d in sheet.closed,
                "expected": d.weekday() in sheet.expected_weekdays,
            }
            for d in sheet.dates
        ],
        "rows": rows,
        "totals": attendance.summary(sheet),
        "made_on": date_label(now.astimezone(ZoneInfo(sheet.site.timezone)).date()),
        "total_hours": hours_text(sum(r.hours for r in sheet.rows) * 3600),
    }


def _sheet_from_args(actor: Person, now: datetime) -> tuple[attendance.MonthSheet | None, list[str]]:
    site = _site(actor)
    month = parse_month(request.args.get("month"), site.timezone, now)
    cohort = request.args.get("cohort") or None
    errors = []
    if month is None:
        errors.append(_("Give the month as YYYY-MM, e.g. 2026-11."))
    if cohort is not None and cohort not in attendance.cohorts(get_db(), site.id):
        errors.append(_("There is no cohort %(cohort)s at this site.", cohort=cohort))
    if errors or month is None:
        return None, errors
    return attendance.month_sheet(get_db(), site, month, now, cohort=cohort), []


def _args(sheet: attendance.MonthSheet) -> dict[str, str]:
    args = {"month": sheet.month.strftime("%Y-%m")}
    if sheet.cohort:
        args["cohort"] = sheet.cohort
    if request.args.get("site"):
        args["site"] = request.args["site"]
    return args


def _audit_export(actor: Person, sheet: attendance.MonthSheet, kind: str) -> None:
    db = get_db()
    audit.record(
        db,
        actor,
        "attendance.export",
        f"site:{sheet.site.id}",
        {
            "kind": kind,
            "month": sheet.month.strftime("%Y-%m"),
            "cohort": sheet.cohort,
            "people": len(sheet.rows),
        },
    )
    db.commit()


@bp.get("/")
@trainer_required
def index() -> ResponseReturnValue:
    actor = _actor()
    now = now_utc()
    sheet, errors = _sheet_from_args(actor, now)
    site = _site(actor)
    db = get_db()
    context: dict[str, Any] = {
        "errors": errors,
        "site": site,
        "sites": list(db.scalars(select(Site).order_by(Site.name))) if actor.is_admin else [],
        "cohorts": attendance.cohorts(db, site.id),
        "form": request.args.to_dict(),
    }
    if sheet is not None:
        context.update(sheet_context(sheet, now))
        context["args"] = _args(sheet)
        context["form"].setdefault("month", sheet.month.strftime("%Y-%m"))
    return render_template("attendance/index.html", **context), 400 if errors else 200


def render_sheet(sheet: attendance.MonthSheet, now: datetime, *, paper: bool) -> str:
    return render_template(
        "documents/attendance_sheet.html",
        paper=paper,
        args=_args(sheet),
        letterhead=letterhead(sheet.site),
        **sheet_context(sheet, now),
    )


def letterhead(site: Site) -> dict[str, Any]:
    return {
        "name": site.display_name(current_language()),
        "address": [line for line in (site.address or "").splitlines() if line.strip()],
        "logo": site.logo if site.logo and site.logo.startswith("data:image/") else None,
    }


@bp.get("/sheet/print")
@trainer_required
def sheet_print() -> ResponseReturnValue:
    actor = _actor()
    now = now_utc()
    sheet, errors = _sheet_from_args(actor, now)
    if sheet is None:
        return render_template("error.html", code=400, message=" ".join(errors)), 400
    html = render_sheet(sheet, now, paper=False)
    _audit_export(actor, sheet, "print")
    return html


@bp.get("/sheet.pdf")
@trainer_required
def sheet_pdf() -> ResponseReturnValue:
    actor = _actor()
    now = now_utc()
    sheet, errors = _sheet_from_args(actor, now)
    if sheet is None:
        return render_template("error.html", code=400, message=" ".join(errors)), 400
    name = f"attendance-{sheet.site.slug}-{sheet.cohort or 'all'}-{sheet.month:%Y-%m}.pdf".replace(" ", "_")
    made, response = pdf_or_print_view(
        render_sheet(sheet, now, paper=True),
        name,
        "attendance_sheet",
        url_for("attendance.sheet_print") + same_query(),
    )
    if not made:
        return response
    _audit_export(actor, sheet, "pdf")
    return response


def same_query() -> str:
    """This request's query (``?month=…&cohort=…``), for a link to another view of the document."""
    query = request.query_string.decode()
    return f"?{query}" if query else ""


def pdf_or_print_view(
    html: str, filename: str, document: str, print_url: str
) -> tuple[bool, ResponseReturnValue]:
    """The PDF of ``html`` as a response, or (when WeasyPrint or its system libraries are
    missing) a page that says so and offers the print view instead (the browser prints it or
    saves it as PDF), HTTP 503; logged and counted (``documents.FAILED``). Returns whether the
    PDF was made, and the response."""
    try:
        body = documents.pdf(html)
    except documents.DocumentError as missing:
        documents.FAILED[document] += 1
        log.error("no PDF of %s: %s", document, missing)
        page = render_template(
            "documents/no_pdf.html",
            print_url=print_url,
            message=_("This server cannot make PDFs at the moment."),
            hint=_(
                "Open the print view instead: your browser prints it or saves it as a PDF "
                "(Print, then Save as PDF). Tell the lab's administrator: the server lacks "
                "WeasyPrint or its system libraries (make pdf)."
            ),
        )
        return False, (page, 503)
    return True, pdf_response(body, filename)


def pdf_response(body: bytes, filename: str) -> Response:
    safe = "".join(c for c in filename if c.isalnum() or c in "-_.") or "document.pdf"
    return Response(
        body, mimetype="application/pdf", headers={"Content-Disposition": f'inline; filename="{safe}"'}
    )


# -- one person's month and corrections ----------------------------------------------------------


def _person(person_id: int, actor: Person) -> Person:
    person = get_db().get(Person, person_id)
    if person is None or not training.serves(actor, person):
        abort(404)
    return person


def person_page(
    person: Person, actor: Person, month: date, *, error: str | None = None, status: int = 200
) -> ResponseReturnValue:
    db = get_db()
    now = now_utc()
    sheet = attendance.month_sheet(db, person.site, month, now, person_ids=[person.id])
    row = sheet.rows[0] if sheet.rows else attendance.PersonMonth(person)
    days = []
    for d in sheet.dates:
        entry = row.days.get(d)
        days.append(
            {
                "date": d,
                "label": date_label(d),
                "cell": cell(entry),
                "first": entry.first if entry else None,
                "last": entry.last if entry else None,
                "expected": bool(entry and entry.expected),
                "correction": entry.corrected if entry else None,
            }
        )
    first, last = attendance.month_bounds(month)
    return (
        render_template(
            "attendance/person.html",
            person=person,
            month=month,
            month_label=month_label(month),
            previous=(first - timedelta(days=1)).strftime("%Y-%m"),
            following=(last + timedelta(days=1)).strftime("%Y-%m"),
            days=days,
            row=row,
            hours=hours_text(row.hours * 3600),
            corrections=attendance.corrections(db, person.id, first, last),
            may_correct=person.id != actor.id,
            error=error,
        ),
        status,
    )


@bp.get("/people/<int:person_id>")
@trainer_required
def person(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    subject = _person(person_id, actor)
    month = parse_month(request.args.get("month"), subject.site.timezone, now_utc())
    if month is None:
        abort(400)
    return person_page(subject, actor, month)


@bp.post("/people/<int:person_id>/correct")
@trainer_required
def correct(person_id: int) -> ResponseReturnValue:
    actor = _actor()
    db = get_db()
    subject = db.get(Person, person_id) or abort(404)
    now = now_utc()
    try:
        day = date.fromisoformat(request.form.get("day", ""))
        hours = float((request.form.get("hours") or "0").replace(",", "."))
    except ValueError:
        day, hours = None, -1.0
    month = (day or now.date()).replace(day=1)
    if day is None or hours < 0:
        if not training.serves(actor, subject):
            abort(404)
        return person_page(
            subject, actor, month, error=_("Give a day and the hours present (0 for absent)."), status=400
        )
    try:
        attendance.correct_day(
            db,
            actor,
            subject,
            day,
            hours * 3600.0,
            request.form.get("excused") == "1",
            request.form.get("reason"),
            now,
        )
    except TrainingError as refused:
        db.rollback()
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        status = 403 if refused.forbidden else 400
        if not training.serves(actor, subject):
            return render_template("error.html", code=status, message=error_text(refused)), status
        return person_page(subject, actor, month, error=error_text(refused), status=status)
    db.commit()
    flash(_("Corrected: %(day)s.", day=date_label(day)), "success")
    return redirect(url_for("attendance.person", person_id=subject.id, month=month.strftime("%Y-%m")))


# -- timetables ---------------------------------------------------------------------------------------


@bp.route("/timetable", methods=["GET", "POST"])
@admin_required
def timetable() -> ResponseReturnValue:
    """A cohort's expected days and hours, in the opening hours' notation (mon-fri 09:00-15:00)."""
    actor = _actor()
    db = get_db()
    site = _site(actor)
    cohort = (request.values.get("cohort") or "").strip()
    error = None
    text = request.form.get("hours", "")
    if request.method == "POST" and cohort:
        try:
            intervals = opening_hours.parse(text)
        except opening_hours.HoursError as exc:
            error = exc.text(_)
        else:
            attendance.set_timetable(db, site.id, cohort, [(i.weekday, i.opens, i.closes) for i in intervals])
            audit.record(
                db, actor, "attendance.timetable", f"site:{site.id}", {"cohort": cohort, "hours": text}
            )
            db.commit()
            flash(_("Timetable of %(cohort)s saved.", cohort=cohort), "success")
            return redirect(url_for("attendance.timetable", cohort=cohort))
    elif cohort:
        text = opening_hours.format_hours(
            opening_hours.Interval(t.weekday, t.starts, t.ends)
            for t in attendance.timetable(db, site.id, cohort)
        )
    return (
        render_template(
            "attendance/timetable.html",
            site=site,
            cohort=cohort,
            cohorts=attendance.cohorts(db, site.id),
            hours=text,
            error=error,
            language=current_language(),
        ),
        400 if error else 200,
    )
