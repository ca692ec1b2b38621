"""The calendar feeds (.ics) of the booking pages: make or replace a person's secret calendar
link, a person's bookings, and a machine's bookings as a calendar.

The routes belong to the ``bookings`` blueprint (under /bookings, endpoints ``bookings.*``);
importing this module adds them to it. Which bookings a feed holds and the iCal text are
:mod:`server.services.ical`'s; here are the words, in the feed owner's language.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import flask_babel  # type: ignore[import-untyped,unused-ignore]
from flask import Response, abort, flash, redirect, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from server.adapters.web.auth import login_required, public
from server.adapters.web.bookings import STATUS_LABELS, ButtonForm, bp, current_actor
from server.adapters.web.l10n import _
from server.extensions import get_db
from server.models import Booking, BookingStatus, Machine, Person
from server.services import audit, ical


def _now() -> datetime:
    return datetime.now(UTC)


@bp.post("/calendar-link")
@login_required
def calendar_link() -> ResponseReturnValue:
    """Make (or, when one exists, replace) the secret link of the person's calendar feed."""
    actor = current_actor()
    db = get_db()
    if not ButtonForm().validate():
        abort(400)
    rotated = actor.person.calendar_token is not None
    actor.person.calendar_token = secrets.token_urlsafe(32)
    audit.record(
        db,
        actor.person,
        "calendar.rotate" if rotated else "calendar.create",
        f"person:{actor.person.id}",
        {},
    )
    db.commit()
    if rotated:
        flash(_("New calendar link made. The old link no longer works."), "success")
    else:
        flash(_("Your calendar link is ready. Add it to your calendar app."), "success")
    return redirect(url_for("bookings.mine", _anchor="calendar"))


def _token_person_or_404(token: str) -> Person:
    person = ical.person_by_token(get_db(), token)
    if person is None:
        abort(404)
    return person


def _ics(text: bytes) -> Response:
    response = Response(text, mimetype="text/calendar")
    response.headers["Content-Disposition"] = "inline; filename=werkbank.ics"
    return response


@bp.get("/feed/<token>.ics")
@public
def person_feed(token: str) -> ResponseReturnValue:
    """A person's bookings as a calendar (public: calendar apps cannot log in; the token is the key)."""
    person = _token_person_or_404(token)
    now = _now()
    found = ical.person_bookings(get_db(), person, now)
    with flask_babel.force_locale(person.language):
        name = _("Werkbank: my bookings")

        def summary(b: Booking) -> str:
            text = _("%(machine)s (Werkbank)", machine=b.machine.name)
            if b.status != BookingStatus.BOOKED:
                text += " \u2013 " + _(STATUS_LABELS[b.status])
            return text

        return _ics(ical.calendar(name, found, summary, now))


@bp.get("/machines/<slug>/feed/<token>.ics")
@public
def machine_feed(slug: str, token: str) -> ResponseReturnValue:
    """A machine's bookings; holders' names only when the token's person is staff."""
    person = _token_person_or_404(token)
    db = get_db()
    machine = db.scalar(select(Machine).where(Machine.slug == slug))
    if machine is None or machine.site_id != person.site_id:
        abort(404)
    now = _now()
    found = ical.machine_bookings(db, machine, now)
    staff = person.is_admin or person.is_trainer
    with flask_babel.force_locale(person.language):
        booked = _("booked")

        def summary(b: Booking) -> str:
            if staff:
                return f"{machine.name}: {b.person.name}"
            if b.person_id == person.id:
                return _("%(machine)s (Werkbank)", machine=machine.name)
            return f"{machine.name}: {booked}"

        return _ics(ical.calendar(_("Werkbank: %(machine)s", machine=machine.name), found, summary, now))
