"""Booking pages, phone first: a machine's week, a site's day, book in two taps, my bookings
(cancel, move), all bookings for staff, and who is blocked for no-shows.

Thin views over :mod:`server.services.bookings`, which holds every rule: a refusal comes back
as a :class:`BookingError` and is shown in the reader's language (HTTP 400, nothing changed).
The grids only *show* what is free (:mod:`server.services.booking_grid` says what each slot
is; here it gets its words and links); whether a booking may be made is the service's answer.
The calendar feeds (.ics) of this blueprint are in :mod:`server.adapters.web.calendar_feeds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_skeleton, format_time
from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, selectinload

from server.adapters.web.admin.base import paginate
from server.adapters.web.auth import User, current, login_required, safe_next, staff_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, current_language, date_label, duration_label
from server.extensions import get_db
from server.i18n import N_, Localised
from server.models import Booking, BookingStatus, Machine, MachineStatus, Person, Site
from server.services import bookings as service
from server.services import training
from server.services.booking_grid import MachineDays, site_machines, union
from server.services.bookings import BookingError

bp = web_blueprint("bookings", __name__)

RECENT_DAYS = 30

STATUS_LABELS: dict[BookingStatus, str] = {
    BookingStatus.BOOKED: N_("Booked"),
    BookingStatus.CANCELLED: N_("Cancelled"),
    BookingStatus.RELEASED: N_("Released (not used)"),
}


class ButtonForm(FlaskForm):  # type: ignore[misc]  # Flask-WTF is untyped: only the CSRF token
    pass


# -- the reader's words ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def time_label(when: datetime, tz: ZoneInfo) -> str:
    return str(format_time(when.astimezone(tz), "short", locale=current_language()))


def day_label(day: date, *, long: bool = True) -> str:
    """``Mon, Nov 23`` / ``Mo., 23. Nov.`` (short: ``23 Mon`` / ``Mo., 23.``)."""
    return str(format_skeleton("MMMEd" if long else "Ed", day, locale=current_language()))


def span_label(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    """``Mon, Nov 23, 10:00 AM-11:30 AM``: one booking's time, in the site's time zone."""
    return f"{day_label(start.astimezone(tz).date())}, {time_label(start, tz)}\u2013{time_label(end, tz)}"


def error_text(error: BookingError, tz: ZoneInfo) -> str:
    """The refusal in the reader's language."""
    params: dict[str, Any] = {}
    for key, value in error.params.items():
        if isinstance(value, datetime):
            params[key] = f"{day_label(value.astimezone(tz).date())} {time_label(value, tz)}"
        elif isinstance(value, date):
            params[key] = date_label(value)
        elif isinstance(value, Localised):
            params[key] = value.in_language(current_language())
        else:
            params[key] = value
    return _(error.message).format(**params)


def week_code(day: date) -> str:
    year, week, _weekday = day.isocalendar()
    return f"{year}-W{week:02d}"


def parse_week(raw: str | None) -> date | None:
    """The Monday of ``2026-W48`` (None when missing or wrong)."""
    if not raw:
        return None
    try:
        year, week = raw.upper().split("-W")
        return _sane(date.fromisocalendar(int(year), int(week), 1))
    except ValueError:
        return None


def parse_day(raw: str | None) -> date | None:
    try:
        return _sane(date.fromisoformat(raw)) if raw else None
    except ValueError:
        return None


def parse_start(raw: str | None, tz: ZoneInfo) -> datetime | None:
    """A slot's start as the grid links it (``2026-11-23T10:00``, local time of the site)."""
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if _sane(parsed.date()) is None:
        return None
    return parsed.replace(tzinfo=tz) if parsed.tzinfo is None else parsed.astimezone(tz)


def _sane(day: date) -> date | None:
    """Days a lab can mean: far-off years only overflow the prev/next links."""
    return day if 2000 <= day.year <= 2999 else None


def local_iso(when: datetime, tz: ZoneInfo) -> str:
    return when.astimezone(tz).strftime("%Y-%m-%dT%H:%M")


# -- who is asking -------------------------------------------------------------------------------------


@dataclass
class Actor:
    user: User
    person: Person


def current_actor() -> Actor:
    user = current()
    assert user is not None  # login_required
    person = get_db().get(Person, user.id)
    assert person is not None  # login loads only existing, active people
    return Actor(user, person)


def _machine_or_404(slug: str, user: User) -> Machine:
    machine = get_db().scalar(select(Machine).where(Machine.slug == slug))
    if machine is None or machine.site_id != user.site_id or machine.status == MachineStatus.DISABLED:
        abort(404)
    return machine


def _booking_or_404(booking_id: str, user: User) -> Booking:
    """The holder's own booking, or any booking of the site for staff; else 404 (not 403: a
    participant learns nothing about other people's booking ids)."""
    booking = get_db().get(Booking, booking_id)
    if booking is None:
        abort(404)
    if booking.person_id != user.id and not (user.is_staff and booking.machine.site_id == user.site_id):
        abort(404)
    return booking


def _block_text(actor: Actor, now: datetime) -> str | None:
    """The no-show block that stops a participant from booking, in their words (staff: none)."""
    if actor.user.is_staff:
        return None
    refusal = service.block_refusal(get_db(), actor.person, now)
    if refusal is None:
        return None
    return error_text(refusal, ZoneInfo(actor.person.site.timezone))


def _unlinked(table: list[tuple[str, list[Cell]]]) -> list[tuple[str, list[Cell]]]:
    """The grid for someone who cannot book now: free slots shown, but leading nowhere."""
    for _label, cells in table:
        for c in cells:
            if c.state == "free":
                c.href = None
    return table


# -- the grid ------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One slot of one machine: what the reader sees and where a tap leads."""

    state: str  # free | mine | booked | past | closed | later
    label: str = ""
    title: str = ""
    href: str | None = None
    start: str = ""  # local ISO, for tests and scripts
    first: bool = True  # the first slot of a booking carries its label


def _cell(
    grid: MachineDays, day: date, minute: int, actor: Actor, now: datetime, moving: Booking | None
) -> Cell:
    """The grid's slot in the reader's words, linked to booking it (or moving a booking there)."""
    staff = actor.user.is_staff
    slot = grid.slot(day, minute, actor.user.id, staff, now, moving)
    iso = local_iso(slot.start, grid.tz)
    when = f"{day_label(day)} {time_label(slot.start, grid.tz)}"
    if slot.state == "closed":
        return Cell("closed", _("closed"), _("%(when)s: closed", when=when), start=iso)
    if slot.state == "mine":
        return Cell(
            "mine",
            _("Mine") if slot.first else "",
            _("%(when)s: your booking", when=when),
            url_for("bookings.mine"),
            iso,
            slot.first,
        )
    if slot.state == "booked":
        assert slot.booking is not None
        if staff:
            return Cell(
                "booked",
                slot.booking.person.first_name if slot.first else "",
                _("%(when)s: booked by %(name)s", when=when, name=slot.booking.person.name),
                start=iso,
                first=slot.first,
            )
        return Cell(
            "booked",
            _("booked") if slot.first else "",
            _("%(when)s: booked", when=when),
            start=iso,
            first=slot.first,
        )
    if slot.state == "past":
        return Cell("past", "", _("%(when)s: past", when=when), start=iso)
    if slot.state == "later":
        return Cell("later", "", _("%(when)s: not bookable yet", when=when), start=iso)
    if moving is not None:
        href = url_for("bookings.move", booking_id=moving.id, start=iso)
        title = _("%(when)s: move here", when=when)
    else:
        href = url_for("bookings.book", slug=grid.machine.slug, start=iso)
        title = _("%(when)s: free, book now", when=when)
    return Cell("free", _("free"), title, href, iso)


def _row_label(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _today(tz: ZoneInfo, now: datetime) -> date:
    return now.astimezone(tz).date()


# -- week per machine, day per site --------------------------------------------------------------------


@bp.get("/machines/<slug>")
@login_required
def machine_week(slug: str) -> ResponseReturnValue:
    actor = current_actor()
    db = get_db()
    machine = _machine_or_404(slug, actor.user)
    tz = ZoneInfo(machine.site.timezone)
    now = _now()
    moving = None
    if request.args.get("move"):
        moving = _booking_or_404(request.args["move"], actor.user)
        if moving.machine_id != machine.id:
            abort(404)
    monday = parse_week(request.args.get("week"))
    if monday is None:
        today = _today(tz, now)
        monday = today - timedelta(days=today.weekday())
    days = [monday + timedelta(days=i) for i in range(7)]
    grid = MachineDays.load(db, machine, days[0], days[-1])
    rows = union(grid.slot_minutes(d) for d in days)
    table = [(_row_label(m), [_cell(grid, d, m, actor, now, moving) for d in days]) for m in rows]
    block = _block_text(actor, now)
    if block is not None:
        table = _unlinked(table)
    move_id = moving.id if moving is not None else None  # None: left out of the URL
    return render_template(
        "bookings/week.html",
        machine=machine,
        type_name=machine.machine_type.display_name(current_language()),
        heads=[
            {"label": day_label(d, long=False), "current": d == _today(tz, now), "href": None} for d in days
        ],
        table=table,
        week_label=_(
            "Week %(week)d: %(first)s to %(last)s",
            week=monday.isocalendar()[1],
            first=date_label(days[0]),
            last=date_label(days[-1]),
        ),
        prev_url=url_for(
            "bookings.machine_week", slug=slug, week=week_code(monday - timedelta(days=7)), move=move_id
        ),
        next_url=url_for(
            "bookings.machine_week", slug=slug, week=week_code(monday + timedelta(days=7)), move=move_id
        ),
        available=machine.status == MachineStatus.AVAILABLE,
        moving=_present(moving, actor, now) if moving is not None else None,
        no_show_block=block,
    )


@bp.get("/site")
@login_required
def site_day() -> ResponseReturnValue:
    """One day of every machine of the site (a week of all machines is too wide for a phone)."""
    actor = current_actor()
    db = get_db()
    site = db.get(Site, actor.user.site_id)
    assert site is not None
    tz = ZoneInfo(site.timezone)
    now = _now()
    day = parse_day(request.args.get("day"))
    if day is None:
        monday = parse_week(request.args.get("week"))
        today = _today(tz, now)
        in_week = monday is not None and monday <= today < monday + timedelta(days=7)
        day = monday if monday is not None and not in_week else today
    grids = [MachineDays.load(db, m, day, day) for m in site_machines(db, site.id)]
    rows = union(g.slot_minutes(day) for g in grids)
    table = [(_row_label(m), [_cell(g, day, m, actor, now, None) for g in grids]) for m in rows]
    # Today's rows that are over everywhere only push the free times down on a phone.
    upcoming = [row for row in table if not all(c.state == "past" for c in row[1])]
    # Nothing left of an open day is not a closed day: say which it is.
    if not table:
        empty = _("Closed on this day.")
    elif day < _today(tz, now):
        empty = _("This day is over.")
    else:
        empty = _("Today's times are over. Book from tomorrow on.")
    table = upcoming
    block = _block_text(actor, now)
    if block is not None:
        table = _unlinked(table)
    return render_template(
        "bookings/site.html",
        no_show_block=block,
        site=site,
        day_title=day_label(day),
        is_today=day == _today(tz, now),
        heads=[
            {
                "label": g.machine.name,
                "current": False,
                "href": url_for("bookings.machine_week", slug=g.machine.slug, week=week_code(day)),
            }
            for g in grids
        ],
        table=table,
        empty=empty,
        prev_url=url_for("bookings.site_day", day=(day - timedelta(days=1)).isoformat()),
        next_url=url_for("bookings.site_day", day=(day + timedelta(days=1)).isoformat()),
        today_url=url_for("bookings.site_day"),
    )


# -- book in two taps ----------------------------------------------------------------------------------


@dataclass
class Choice:
    value: str
    label: str
    selected: bool = False


def _durations(
    grid: MachineDays, start: datetime, exclude: Booking | None, wanted: int | None
) -> list[Choice]:
    """Lengths the policy allows, up to the next booking and the closing time."""
    out = [
        Choice(
            str(minutes),
            _(
                "until %(end)s (%(duration)s)",
                end=time_label(start + timedelta(minutes=minutes), grid.tz),
                duration=duration_label(minutes * 60),
            ),
        )
        for minutes in grid.durations(start, exclude)
    ]
    if out:
        pick = next((c for c in out if c.value == str(wanted)), out[0])
        pick.selected = True
    return out


def _people_choices(db: Session, site_id: int, selected: int) -> list[Choice]:
    people = db.scalars(
        select(Person)
        .where(Person.site_id == site_id, Person.active.is_(True))
        .order_by(Person.is_participant.desc(), Person.name)
    )
    return [Choice(str(p.id), p.name, p.id == selected) for p in people]


def _trainer_choices(db: Session, site_id: int, selected: int | None) -> list[Choice]:
    trainers = db.scalars(
        select(Person)
        .where(Person.site_id == site_id, Person.active.is_(True), Person.is_trainer.is_(True))
        .order_by(Person.name)
    )
    return [Choice("", _("No trainer"), selected is None)] + [
        Choice(str(t.id), t.name, t.id == selected) for t in trainers
    ]


def _int_or_none(raw: str | None) -> int | None:
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    # Database integers are 32 or 64 bits; anything larger is no id and no length.
    return value if value is None or abs(value) < 2**31 else None


def _confirm_page(
    actor: Actor,
    machine: Machine,
    start: datetime,
    *,
    moving: Booking | None = None,
    error: str | None = None,
    status: int = 200,
) -> ResponseReturnValue:
    db = get_db()
    grid = MachineDays.load(
        db, machine, start.astimezone(ZoneInfo(machine.site.timezone)).date(), start.date()
    )
    wanted = _int_or_none(request.form.get("duration_min"))
    if wanted is None and moving is not None:
        wanted = round((moving.ends_at - moving.starts_at).total_seconds() / 60)
    durations = _durations(grid, start, moving, wanted)
    staff = actor.user.is_staff and moving is None
    person_id = _int_or_none(request.form.get("person_id")) or actor.user.id
    trainer_id = _int_or_none(request.form.get("trainer_id"))
    # A participant learns what stops them before tapping "Book" (staff choose whom they book
    # for on this page, so their refusal can only come after).
    stop: str | None = None
    supervisors: list[Choice] = []
    if not actor.user.is_staff and durations:
        refusal = service.precheck(
            db,
            actor.person,
            machine,
            start,
            start + timedelta(minutes=int(durations[0].value)),
            actor.person,
            _now(),
            trainer=moving.trainer if moving is not None else None,
            exclude=moving.id if moving is not None else None,
        )
        if refusal is not None and refusal.code == "trainer_required" and moving is None:
            day = start.astimezone(grid.tz).date()
            supervisors = [
                Choice(str(t.id), t.name, t.id == trainer_id)
                for t in service.supervisors(db, machine, actor.person, day)
            ]
            if not supervisors:
                stop = _("No trainer can supervise you on this machine. Please ask the lab staff.")
        elif refusal is not None:
            stop = error_text(refusal, grid.tz)
    week = week_code(start.astimezone(grid.tz).date())
    back = url_for("bookings.machine_week", slug=machine.slug, week=week, move=moving.id if moving else None)
    return (
        render_template(
            "bookings/confirm.html",
            machine=machine,
            type_name=machine.machine_type.display_name(current_language()),
            start=local_iso(start, grid.tz),
            when=f"{day_label(start.astimezone(grid.tz).date())}, {time_label(start, grid.tz)}",
            durations=durations,
            people=_people_choices(db, machine.site_id, person_id) if staff else [],
            trainers=_trainer_choices(db, machine.site_id, trainer_id) if staff else [],
            moving=_present(moving, actor, _now()) if moving is not None else None,
            action=url_for("bookings.move", booking_id=moving.id)
            if moving is not None
            else url_for("bookings.book", slug=machine.slug),
            back=back,
            error=error,
            stop=stop,
            supervisors=supervisors,
            form=ButtonForm(formdata=None),
        ),
        status,
    )


@bp.route("/machines/<slug>/book", methods=["GET", "POST"])
@login_required
def book(slug: str) -> ResponseReturnValue:
    """Tap one: a free slot opens this page (start chosen, length to pick); tap two: "Book"."""
    actor = current_actor()
    db = get_db()
    machine = _machine_or_404(slug, actor.user)
    tz = ZoneInfo(machine.site.timezone)
    start = parse_start(request.values.get("start"), tz)
    if start is None:
        if request.method == "POST":
            abort(400)
        return redirect(url_for("bookings.machine_week", slug=slug))
    if request.method == "GET":
        return _confirm_page(actor, machine, start)
    form = ButtonForm()
    minutes = _int_or_none(request.form.get("duration_min"))
    if not form.validate() or minutes is None or not 0 < minutes <= 24 * 60:
        return _confirm_page(actor, machine, start, error=_("Please choose how long."), status=400)
    person, trainer = actor.person, None
    trainer_id = _int_or_none(request.form.get("trainer_id"))
    if actor.user.is_staff:
        person_id = _int_or_none(request.form.get("person_id"))
        if person_id is not None:
            person = _site_person_or_400(db, person_id, machine.site_id)
    # A participant who needs a trainer names one too; the service checks they may supervise.
    if trainer_id is not None:
        trainer = _site_person_or_400(db, trainer_id, machine.site_id)
    end = start + timedelta(minutes=minutes)
    try:
        booking = service.create(db, person, machine, start, end, actor.person, _now(), trainer=trainer)
    except BookingError as refused:
        db.rollback()
        return _confirm_page(actor, machine, start, error=error_text(refused, tz), status=400)
    db.commit()
    flash(
        _("Booked: %(machine)s, %(when)s.", machine=machine.name, when=span_label(start, end, tz)), "success"
    )
    if person.id != actor.user.id:
        return redirect(
            url_for("bookings.machine_week", slug=slug, week=week_code(start.astimezone(tz).date()))
        )
    return redirect(url_for("bookings.mine", _anchor=f"booking-{booking.id}"))


def _site_person_or_400(db: Session, person_id: int, site_id: int) -> Person:
    person = db.get(Person, person_id)
    if person is None or person.site_id != site_id:
        abort(400)
    return person


# -- my bookings: cancel, move ---------------------------------------------------------------------------


def booking_status(b: Booking, now: datetime) -> tuple[str, str]:
    """(status, label): a booking whose time is past reads "Over", not "Booked"."""
    if b.status == BookingStatus.BOOKED and b.ends_at <= now:
        return "over", _("Over")
    return b.status.value, _(STATUS_LABELS[b.status])


def _present(b: Booking, actor: Actor, now: datetime) -> dict[str, Any]:
    tz = ZoneInfo(b.machine.site.timezone)
    upcoming = b.status == BookingStatus.BOOKED and b.ends_at > now
    status, status_label = booking_status(b, now)
    return {
        "id": b.id,
        "machine": b.machine.name,
        "machine_slug": b.machine.slug,
        "person": b.person.name,
        "trainer": b.trainer.name if b.trainer else "",
        "when": span_label(b.starts_at, b.ends_at, tz),
        "status": status,
        "status_label": status_label,
        "upcoming": upcoming,
        "changeable": upcoming and b.starts_at > now,
        "mine": b.person_id == actor.user.id,
    }


@bp.get("/mine")
@login_required
def mine() -> ResponseReturnValue:
    actor = current_actor()
    db = get_db()
    now = _now()
    found = service.of_person(db, actor.user.id, now - timedelta(days=RECENT_DAYS), limit=200)
    rows = [_present(b, actor, now) for b in found]
    token = actor.person.calendar_token
    return render_template(
        "bookings/mine.html",
        upcoming=[r for r in rows if r["upcoming"]],
        recent=list(reversed([r for r in rows if not r["upcoming"]])),
        feed_url=url_for("bookings.person_feed", token=token, _external=True) if token else None,
        form=ButtonForm(formdata=None),
        no_show_block=_block_text(actor, now),
    )


def _back(default: str) -> str:
    return safe_next(request.values.get("next")) or default


@bp.route("/<booking_id>/cancel", methods=["GET", "POST"])
@login_required
def cancel(booking_id: str) -> ResponseReturnValue:
    actor = current_actor()
    db = get_db()
    booking = _booking_or_404(booking_id, actor.user)
    tz = ZoneInfo(booking.machine.site.timezone)
    back = _back(url_for("bookings.mine"))
    error = None
    if request.method == "POST":
        if not ButtonForm().validate():
            abort(400)
        try:
            service.cancel(db, booking, actor.person, _now())
        except BookingError as refused:
            db.rollback()
            error = error_text(refused, tz)
        else:
            db.commit()
            flash(
                _(
                    "Booking cancelled: %(machine)s, %(when)s.",
                    machine=booking.machine.name,
                    when=span_label(booking.starts_at, booking.ends_at, tz),
                ),
                "success",
            )
            return redirect(back)
    return (
        render_template(
            "bookings/cancel.html",
            booking=_present(booking, actor, _now()),
            back=back,
            error=error,
            form=ButtonForm(formdata=None),
        ),
        400 if error else 200,
    )


@bp.route("/<booking_id>/move", methods=["GET", "POST"])
@login_required
def move(booking_id: str) -> ResponseReturnValue:
    """Pick a new start in the machine's week (free slots lead back here), then confirm."""
    actor = current_actor()
    db = get_db()
    booking = _booking_or_404(booking_id, actor.user)
    machine = booking.machine
    tz = ZoneInfo(machine.site.timezone)
    start = parse_start(request.values.get("start"), tz)
    if start is None:
        if request.method == "POST":
            abort(400)
        week = week_code(booking.starts_at.astimezone(tz).date())
        return redirect(url_for("bookings.machine_week", slug=machine.slug, week=week, move=booking.id))
    if request.method == "GET":
        return _confirm_page(actor, machine, start, moving=booking)
    minutes = _int_or_none(request.form.get("duration_min"))
    if not ButtonForm().validate() or minutes is None or not 0 < minutes <= 24 * 60:
        return _confirm_page(
            actor, machine, start, moving=booking, error=_("Please choose how long."), status=400
        )
    end = start + timedelta(minutes=minutes)
    try:
        service.move(db, booking, start, end, actor.person, _now())
    except BookingError as refused:
        db.rollback()
        return _confirm_page(actor, machine, start, moving=booking, error=error_text(refused, tz), status=400)
    db.commit()
    flash(
        _("Booking moved: %(machine)s, %(when)s.", machine=machine.name, when=span_label(start, end, tz)),
        "success",
    )
    return redirect(url_for("bookings.mine", _anchor=f"booking-{booking.id}"))


# -- all bookings (staff) ----------------------------------------------------------------------------------


@bp.get("/all")
@staff_required
def all_bookings() -> ResponseReturnValue:
    """Every booking of the site, filtered and paged. Staff, not only admins: trainers plan
    supervised bookings and handle no-shows at the machine, and the service lets them cancel
    at any time."""
    actor = current_actor()
    db = get_db()
    now = _now()
    site = db.get(Site, actor.user.site_id)
    assert site is not None
    tz = ZoneInfo(site.timezone)
    machines = site_machines(db, site.id)
    args = request.args
    machine_slug = args.get("machine", "")
    q = args.get("q", "").strip()[:100]
    status = args.get("status", "")
    first, last = parse_day(args.get("from")), parse_day(args.get("to"))
    query = (
        select(Booking)
        .join(Machine, Booking.machine_id == Machine.id)
        .join(Person, Booking.person_id == Person.id)
        .where(Machine.site_id == site.id)
        .options(selectinload(Booking.machine), selectinload(Booking.person), selectinload(Booking.trainer))
        .order_by(Booking.starts_at.desc(), Booking.id)
    )
    if machine_slug:
        query = query.where(Machine.slug == machine_slug)
    if q:
        like = f"%{q.lower()}%"
        query = query.where(or_(func.lower(Person.name).like(like), func.lower(Person.email).like(like)))
    if status in {s.value for s in BookingStatus}:
        query = query.where(Booking.status == BookingStatus(status))
    elif status == "upcoming":
        query = query.where(Booking.status == BookingStatus.BOOKED, Booking.ends_at > now)
    if first is not None:
        query = query.where(Booking.ends_at > datetime.combine(first, time(0), tzinfo=tz))
    if last is not None:
        query = query.where(
            Booking.starts_at < datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz)
        )
    page = paginate(db, query)
    here = request.full_path if request.query_string else request.path
    return render_template(
        "bookings/all.html",
        page=page,
        rows=[_present(b, actor, now) for b in page.items],
        machines=machines,
        filters={
            "machine": machine_slug,
            "q": q,
            "status": status,
            "from": first.isoformat() if first else "",
            "to": last.isoformat() if last else "",
        },
        statuses=[
            ("", _("All")),
            ("upcoming", _("Upcoming")),
            *((s.value, _(STATUS_LABELS[s])) for s in BookingStatus),
        ],
        here=here,
    )


@bp.get("/blocked")
@staff_required
def blocked() -> ResponseReturnValue:
    """Who of the site may not book for now because of repeated no-shows; staff lift a block."""
    actor = current_actor()
    db = get_db()
    site = db.get(Site, actor.user.site_id)
    assert site is not None
    tz = ZoneInfo(site.timezone)
    policy = service.policy_for(db, site.id)
    rows = [
        {
            "id": b.person.id,
            "name": b.person.name,
            "cohort": b.person.cohort or "",
            "no_shows": b.no_shows,
            "last": date_label(b.last.astimezone(tz).date()),
            "until": date_label(b.until.astimezone(tz).date()),
            "own": b.person.id == actor.user.id,
        }
        for b in service.blocked_people(db, site.id, _now())
    ]
    return render_template(
        "bookings/blocked.html",
        site=site,
        rows=rows,
        rule=_(
            "%(count)d no-shows within %(window)d days block new bookings for %(days)d days "
            "after the last one.",
            count=policy.no_show_limit,
            window=policy.no_show_window_days,
            days=policy.no_show_block_days,
        ),
        form=ButtonForm(formdata=None),
    )


@bp.post("/blocked/<int:person_id>/lift")
@staff_required
def lift_block(person_id: int) -> ResponseReturnValue:
    actor = current_actor()
    db = get_db()
    if not ButtonForm().validate():
        abort(400)
    person = db.get(Person, person_id)
    # Someone else's site's people are not even found, as on the trainer pages.
    if person is None or not training.serves(actor.person, person):
        abort(404)
    back = _back(url_for("bookings.blocked"))
    try:
        service.lift_block(db, person, actor.person, _now())
    except BookingError as refused:
        db.rollback()
        flash(error_text(refused, ZoneInfo(person.site.timezone)), "error")
        return redirect(back)
    db.commit()
    flash(_("Block lifted: %(name)s can book again.", name=person.name), "success")
    return redirect(back)
