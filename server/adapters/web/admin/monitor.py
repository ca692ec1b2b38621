"""Devices (online, last seen, agent version, allow-list version) and the audit log."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import ColumnElement, String, cast, func, literal, or_, select
from sqlalchemy.orm import selectinload

from server.adapters.web.admin.audit_text import action_label, describe
from server.adapters.web.admin.base import bp, paginate
from server.adapters.web.auth import admin_required, current
from server.adapters.web.l10n import _, ago_label, span_label, when_label
from server.extensions import get_db
from server.models import AuditLog, Badge, Booking, Device, Machine, Person
from server.services import clocks


@bp.get("/devices")
@admin_required
def devices() -> ResponseReturnValue:
    now = datetime.now(UTC)
    rows = get_db().scalars(
        select(Device).options(selectinload(Device.machine).selectinload(Machine.site)).order_by(Device.id)
    )
    devices = [
        {
            "device": d,
            "machine": d.machine,
            "last_seen": ago_label(d.last_seen, now) if d.last_seen else None,
            "last_seen_at": when_label(d.last_seen, now) if d.last_seen else None,
            # The agent runs on an older allow-list than the server last issued for its machine.
            "behind": d.machine is not None and (d.allowlist_version or 0) < d.machine.allowlist_version,
            "clock": _clock_note(d.clock_offset_s),
        }
        for d in rows
    ]
    return render_template("admin/devices.html", devices=devices, tolerance=int(clocks.TOLERANCE_S))


def _clock_note(offset_s: float | None) -> str | None:
    """A tag such as "Clock 1 hour behind" for a device whose clock is off beyond the tolerance
    (its event times are corrected; server.services.clocks), else None."""
    if not clocks.skewed(offset_s):
        return None
    assert offset_s is not None
    span = span_label(abs(offset_s))
    if offset_s > 0:
        return _("Clock %(span)s behind", span=span)
    return _("Clock %(span)s ahead", span=span)


@bp.get("/audit")
@admin_required
def audit_log() -> ResponseReturnValue:
    """The audit log, newest first, filtered by person (name or e-mail: what they did and what
    was done to them, their bookings and badges included), action and local days."""
    db = get_db()
    user = current()
    assert user is not None  # admin_required
    tz = ZoneInfo(user.timezone)
    args = request.args
    action = args.get("action", "")[:64]
    person_text = args.get("person", "").strip()[:100]
    raw_from, raw_to = args.get("from", "")[:10], args.get("to", "")[:10]
    actions = list(db.scalars(select(AuditLog.action).distinct().order_by(AuditLog.action)))
    query = select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc())
    error = None
    try:
        first, last = _day(raw_from), _day(raw_to)
    except ValueError as bad:
        error, first, last = str(bad), None, None
    if action:
        query = query.where(AuditLog.action == action)
    if person_text:
        query = query.where(_about_people(person_text))
    if first is not None:
        query = query.where(AuditLog.at >= datetime.combine(first, time(0), tzinfo=tz))
    if last is not None:
        query = query.where(AuditLog.at < datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz))
    page = paginate(db, query)
    now = datetime.now(UTC)
    entries = [
        {"entry": e, "when": when_label(e.at, now), "line": line}
        for e, line in zip(page.items, describe(db, page.items), strict=True)
    ]
    return (
        render_template(
            "admin/audit.html",
            page=page,
            entries=entries,
            actions=sorted(((a, action_label(a)) for a in actions), key=lambda pair: pair[1].lower()),
            action=action,
            person=person_text,
            filters={"from": raw_from, "to": raw_to},
            error=error,
        ),
        400 if error else 200,
    )


def _day(raw: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValueError(_("“%(value)s” is not a date (YYYY-MM-DD).", value=raw)) from None


def _about_people(text: str) -> ColumnElement[bool]:
    """Entries by or about the people whose name or e-mail holds ``text``."""
    like = f"%{text.lower()}%"
    people = select(Person.id).where(
        or_(func.lower(Person.name).like(like), func.lower(Person.email).like(like))
    )
    return or_(
        AuditLog.actor_id.in_(people),
        AuditLog.subject.in_(
            select(literal("person:") + cast(Person.id, String)).where(Person.id.in_(people))
        ),
        AuditLog.subject.in_(select(literal("booking:") + Booking.id).where(Booking.person_id.in_(people))),
        AuditLog.subject.in_(select(literal("badge:") + Badge.uid).where(Badge.person_id.in_(people))),
        func.lower(AuditLog.actor_label).like(like),
    )
