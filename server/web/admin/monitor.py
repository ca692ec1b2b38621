"""Devices (online, last seen, agent version, allow-list version) and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from server import get_db
from server.models import AuditLog, Device, Machine
from server.services import clocks
from server.web.admin.base import bp, paginate
from server.web.auth import admin_required
from server.web.l10n import _, ago_label, span_label, when_label


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
    db = get_db()
    now = datetime.now(UTC)
    action = request.args.get("action", "")
    actions = list(db.scalars(select(AuditLog.action).distinct().order_by(AuditLog.action)))
    query = select(AuditLog).order_by(AuditLog.at.desc(), AuditLog.id.desc())
    if action:
        query = query.where(AuditLog.action == action)
    page = paginate(db, query)
    entries = [{"entry": e, "when": when_label(e.at, now)} for e in page.items]
    return render_template("admin/audit.html", page=page, entries=entries, actions=actions, action=action)
