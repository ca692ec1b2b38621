"""The start pages (blueprint ``web``): the live overview for trainers and admins
(``/``, ``/live.json``), "my training and sessions" for everyone (``/me``) and which machines
are free now (``/machines/now``). The process's health and metrics endpoints are in
:mod:`server.adapters.web.health`.

Each page's data is turned into plain dicts of display text once (``present_*``), and the
same dicts feed the HTML templates and ``/live.json``, so a tile updated by the
polling script reads exactly like a freshly loaded page.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_time
from flask import jsonify, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.adapters.web.auth import User, current, login_required, staff_required
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import (
    _,
    ago_label,
    clock_label,
    current_language,
    duration_label,
    start_of_today,
)
from server.adapters.web.session_list import iso, present_session, session_jobs, sessions_page
from server.adapters.web.training import present_progress, today_for
from server.extensions import get_db
from server.i18n import N_, local_time
from server.models import Booking, Machine, MachineType, Site, in_language
from server.services import bookings, decision, training
from server.services.live import (
    LiveState,
    MachineLive,
    person_hours,
    recent_sessions,
    site_machines,
)

bp = web_blueprint("web", __name__)

# How often the overview asks for fresh state (the script reads it from the page).
REFRESH_S = 3
UTC_ZONE = ZoneInfo("UTC")
SESSIONS_ON_OVERVIEW = 20

STATE_LABELS: dict[LiveState, str] = {
    LiveState.AVAILABLE: N_("Available"),
    LiveState.IN_USE: N_("In use"),
    LiveState.OFFLINE: N_("Offline"),
    LiveState.MAINTENANCE: N_("Maintenance"),
    LiveState.DISABLED: N_("Disabled"),
    LiveState.FAULT: N_("Fault"),
}


def _now() -> datetime:
    return datetime.now(UTC)


def closed_now(db: Session, machines: list[MachineLive], now: datetime) -> dict[int, datetime | None]:
    """The machines outside their opening hours now, each with when it next opens (None: never).
    Free but closed is not free: the machine refuses every badge then. One rule for the staff
    overview and the participants' page."""
    rows = db.scalars(select(Machine).where(Machine.id.in_([m.id for m in machines]))).all()
    windows = decision.opening_windows(db, rows, now)
    return {machine_id: opens for machine_id, (is_open, _closes, opens) in windows.items() if not is_open}


def opens_label(opens: datetime | None, now: datetime, tz: ZoneInfo) -> str:
    """ "Opens at 9:00" (today), "Opens on Mon, 23 Nov, 9:00", or nothing when it never opens."""
    if opens is None:
        return ""
    if opens.astimezone(tz).date() == now.astimezone(tz).date():
        clock = format_time(opens.astimezone(tz), "short", locale=current_language())
        return _("Opens at %(time)s", time=clock)
    return _("Opens on %(when)s", when=local_time(opens, current_language(), str(tz)))


def present_machine(
    m: MachineLive,
    now: datetime,
    *,
    closed: bool = False,
    opens: datetime | None = None,
    tz: ZoneInfo = UTC_ZONE,
) -> dict[str, Any]:
    """One machine as staff see it; ``closed``: outside the opening hours now (an available
    machine then reads "Closed", with when it opens, as on the participants' page)."""
    state = m.state.value
    state_label = _(STATE_LABELS[m.state])
    if m.state == LiveState.IN_USE:
        detail = _("In use by %(name)s", name=m.user_name) if m.user_name else _("In use (badge not known)")
    elif m.state == LiveState.AVAILABLE and closed:
        state = "closed"
        state_label = _(AVAILABILITY_LABELS["closed"])
        detail = opens_label(opens, now, tz)
    else:
        detail = ""
    if m.device_id is None:
        device_label = _("No device assigned")
    elif m.device_online:
        device_label = _("Device online")
    else:
        device_label = _("Device offline")
    if not m.device_online:
        running_label = ""  # unknown: nobody reports it
    elif m.running and m.progress is not None:
        running_label = _("Running, %(percent)d %% done", percent=round(m.progress))
    elif m.running:
        running_label = _("Running")
    else:
        running_label = _("Not running")
    if m.device_id is None:
        last_seen_label = ""
    elif m.device_last_seen is None:
        last_seen_label = _("Never seen")
    else:
        last_seen_label = _("Last seen %(ago)s", ago=ago_label(m.device_last_seen, now))
    return {
        "id": m.id,
        "slug": m.slug,
        "name": m.name,
        "type": m.type_name.in_language(current_language()),
        "state": state,
        "state_label": state_label,
        "detail": detail,
        "user": m.user_name,
        "running": m.running,
        "progress": m.progress,
        "running_label": running_label,
        "device": {
            "id": m.device_id,
            "online": m.device_online,
            "last_seen": iso(m.device_last_seen),
            "label": device_label,
            "last_seen_label": last_seen_label,
        },
        "hours_today_s": m.hours_today_s,
        "hours_total_s": m.hours_total_s,
        "hours_today_label": duration_label(m.hours_today_s),
        "hours_total_label": duration_label(m.hours_total_s),
    }


def overview_data(user: User) -> dict[str, Any]:
    db = get_db()
    now = _now()
    site = db.get(Site, user.site_id)
    machines = site_machines(db, user.site_id, start_of_today(now))
    sessions = recent_sessions(db, site_id=user.site_id, limit=SESSIONS_ON_OVERVIEW)
    opens = closed_now(db, machines, now)
    tz = ZoneInfo(user.timezone)
    return {
        "site": {"name": site.display_name(current_language()) if site else "", "timezone": user.timezone},
        "updated_at": now.isoformat(),
        "updated_label": _("Updated %(time)s", time=clock_label(now)),
        "refresh_s": REFRESH_S,
        "machines": [
            present_machine(m, now, closed=m.id in opens, opens=opens.get(m.id), tz=tz) for m in machines
        ],
        "sessions": [present_session(s, now) for s in sessions],
    }


@bp.get("/")
@login_required
def overview() -> ResponseReturnValue:
    user = current()
    assert user is not None  # login_required
    if not user.is_staff:
        # Participants have one page of their own; "/" is where links and logins land.
        return redirect(url_for("web.me"))
    return render_template("overview.html", data=overview_data(user))


@bp.get("/live.json")
@staff_required
def live_json() -> ResponseReturnValue:
    user = current()
    assert user is not None  # staff_required
    return jsonify(overview_data(user))


@bp.get("/me")
@login_required
def me() -> ResponseReturnValue:
    """The participant's own page, phone first: competencies and what is next, what has expired
    and what expires soon, machine hours, sessions with their jobs."""
    user = current()
    assert user is not None  # login_required
    db = get_db()
    now = _now()
    today = today_for(user)
    cards = [present_progress(p, today) for p in training.all_progress(db, user.id, today)]
    mine = [c for c in cards if c["started"]]
    # Competencies not started yet, but open to this person (prerequisites met): what to ask for.
    open_to_start = [c for c in cards if not c["started"] and c["next_level"] and c["steps"]]
    # Expired and expiring soon are told apart: an ended qualification never "expires soon".
    soon = [c for c in mine if c["status"] == "soon"]
    expired = [c for c in mine if c["status"] == "expired"]
    per_machine = person_hours(db, user.id)
    total = sum(seconds for _name, seconds in per_machine)
    page = sessions_page(db, user.id)
    sessions = page.items
    return render_template(
        "me.html",
        cards=mine,
        open_to_start=open_to_start,
        soon=soon,
        expired=expired,
        total_label=duration_label(total),
        per_machine=[(name, duration_label(seconds)) for name, seconds in per_machine],
        sessions=[present_session(s, now) for s in sessions],
        page=page,
        jobs=session_jobs(db, [s.id for s in sessions]),
    )


# -- machines now, for everyone ----------------------------------------------------------------------

AVAILABILITY_LABELS: dict[str, str] = {
    "available": N_("Free"),
    "closed": N_("Closed"),
    "booked": N_("Booked"),
    "in_use": N_("In use"),
    "offline": N_("Offline"),
    "maintenance": N_("Maintenance"),
    "fault": N_("Fault"),
}


def availability_data(user: User) -> dict[str, Any]:
    """Every bookable machine of the person's site and whether it is free now. Names nobody:
    a participant reads "in use" or "booked", and "yours" for their own."""
    db = get_db()
    now = _now()
    tz = ZoneInfo(user.timezone)
    machines = [
        m for m in site_machines(db, user.site_id, start_of_today(now)) if m.state != LiveState.DISABLED
    ]
    end_of_day = datetime.combine(now.astimezone(tz).date() + timedelta(days=1), time(0), tzinfo=tz)
    booked: dict[int, list[Booking]] = {}
    for b in bookings.active(db, [m.id for m in machines], now, end_of_day):
        booked.setdefault(b.machine_id, []).append(b)
    type_names = {
        t.name: in_language(t.name, t.name_de, current_language()) for t in db.scalars(select(MachineType))
    }
    opens = closed_now(db, machines, now)
    return {
        "updated_at": now.isoformat(),
        "updated_label": _("Updated %(time)s", time=clock_label(now)),
        "refresh_s": REFRESH_S,
        "machines": [
            present_availability(
                m,
                booked.get(m.id, []),
                user.id,
                now,
                tz,
                type_names,
                closed=m.id in opens,
                opens=opens.get(m.id),
            )
            for m in machines
        ],
        "sessions": [],
    }


def present_availability(
    m: MachineLive,
    booked: list[Booking],
    viewer_id: int,
    now: datetime,
    tz: ZoneInfo,
    type_names: dict[str, str],
    *,
    closed: bool = False,
    opens: datetime | None = None,
) -> dict[str, Any]:
    """One machine as a participant sees it: free, booked, in use (by you), closed, …;
    ``closed``: outside the opening hours now, ``opens``: when it next opens (if ever)."""

    def clock(when: datetime) -> str:
        return str(format_time(when.astimezone(tz), "short", locale=current_language()))

    state = m.state.value
    detail = ""
    current = next((b for b in booked if b.starts_at <= now), None)
    upcoming = next((b for b in booked if b.starts_at > now), None)
    label = _(AVAILABILITY_LABELS.get(state, N_("Offline")))
    if m.state == LiveState.IN_USE and m.user_id == viewer_id:
        label = _("In use by you")
    elif m.state == LiveState.AVAILABLE and closed:
        state = "closed"
        label = _(AVAILABILITY_LABELS["closed"])
        detail = opens_label(opens, now, tz)
    elif m.state == LiveState.AVAILABLE and current is not None:
        state = "booked"
        mine = current.person_id == viewer_id
        label = _("Your booking") if mine else _(AVAILABILITY_LABELS["booked"])
        detail = _("until %(time)s", time=clock(current.ends_at))
    elif m.state == LiveState.AVAILABLE and upcoming is not None:
        detail = _("Free until %(time)s, then booked", time=clock(upcoming.starts_at))
    elif m.state == LiveState.AVAILABLE:
        detail = _("Free for the rest of the day")
    return {
        "id": m.id,
        "slug": m.slug,
        "name": m.name,
        "type": m.type_name.in_language(current_language()),
        "state": state,
        "state_label": label,
        "detail": detail,
        # A machine in maintenance takes no bookings (the booking service refuses them).
        "book_url": url_for("bookings.machine_week", slug=m.slug) if m.state != LiveState.MAINTENANCE else "",
    }


@bp.get("/machines/now")
@login_required
def availability() -> ResponseReturnValue:
    user = current()
    assert user is not None  # login_required
    return render_template("availability.html", data=availability_data(user))


@bp.get("/machines/now.json")
@login_required
def availability_json() -> ResponseReturnValue:
    user = current()
    assert user is not None  # login_required
    return jsonify(availability_data(user))
