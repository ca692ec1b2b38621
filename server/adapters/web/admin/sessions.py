"""A session left open by a device that will not end it (a Pi that died with its SD card): its
page, where an admin closes it with a reason and an end (server.services.stale_sessions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from server.adapters.web.admin.base import acting_admin, bp
from server.adapters.web.auth import admin_required
from server.adapters.web.l10n import _, ago_label, duration_label, error_text, when_label
from server.extensions import get_db
from server.models import Device, MachineSession
from server.services import stale_sessions, training
from server.services.training import TrainingError


def now_utc() -> datetime:
    return datetime.now(UTC)


def local_input(when: datetime, tz: ZoneInfo) -> str:
    """``when`` for a ``datetime-local`` field in the site's time zone, to the second (rounded
    down, so that the last evidence itself is a valid end)."""
    return when.astimezone(tz).replace(tzinfo=None, microsecond=0).isoformat()


def stale_rows(now: datetime) -> list[dict[str, Any]]:
    """The stale open sessions as the admin start page lists them."""
    rows: list[dict[str, Any]] = []
    for found in stale_sessions.stale_sessions(get_db(), now):
        row, device = found.session, found.device
        assert row.started_at is not None
        rows.append(
            {
                "id": row.id,
                "machine": row.machine.name,
                "person": row.person.name if row.person else row.badge_uid or _("unknown"),
                "started": when_label(row.started_at, now),
                "open_for": duration_label((now - row.started_at).total_seconds()),
                "last_seen": ago_label(device.last_seen, now) if device and device.last_seen else None,
                "superseded": found.superseded,
            }
        )
    return rows


@bp.get("/sessions/<session_id>")
@admin_required
def session_page(session_id: str) -> ResponseReturnValue:
    return _page(session_id)


@bp.post("/sessions/<session_id>/close")
@admin_required
def session_close(session_id: str) -> ResponseReturnValue:
    db = get_db()
    row = db.get(MachineSession, session_id) or abort(404)
    tz = ZoneInfo(row.machine.site.timezone)
    now = now_utc()
    raw = request.form.get("end", "")
    try:
        end = datetime.fromisoformat(raw).replace(tzinfo=tz).astimezone(UTC)
    except ValueError:
        return _page(session_id, error=_("Give the end as a date and time."), status=400, end=raw)
    try:
        stale_sessions.close(db, acting_admin(), row, end, request.form.get("reason"), now)
    except TrainingError as refused:
        db.rollback()
        if training.audit_refusal(db, refused, source="web"):
            db.commit()
        status = 403 if refused.forbidden else 400
        return _page(session_id, error=error_text(refused), status=status, end=raw)
    db.commit()
    flash(_("The session on %(machine)s is closed.", machine=row.machine.name), "success")
    return redirect(url_for("admin.session_page", session_id=row.id))


def _page(
    session_id: str, error: str | None = None, status: int = 200, end: str | None = None
) -> ResponseReturnValue:
    db = get_db()
    row = db.get(MachineSession, session_id) or abort(404)
    if row.started_at is None:
        abort(404)  # only its end has arrived (an outbox replayed out of order): nothing to show
    now = now_utc()
    tz = ZoneInfo(row.machine.site.timezone)
    device = db.get(Device, row.device_id)
    stale = stale_sessions.is_stale(db, row, now)
    evidence = stale_sessions.last_evidence(db, row) if row.ended_at is None else None
    context = {
        "row": row,
        "device": device,
        "stale": stale,
        "started": when_label(row.started_at, now),
        "ended": when_label(row.ended_at, now) if row.ended_at else None,
        "closed_by_admin": row.end_reason == stale_sessions.CLOSED_BY_ADMIN,
        "last_seen": when_label(device.last_seen, now) if device and device.last_seen else None,
        "evidence": when_label(evidence, now) if evidence else None,
        "evidence_input": local_input(evidence, tz) if evidence else None,
        "start_input": local_input(row.started_at, tz),
        "end_input": end if end is not None else (local_input(evidence, tz) if evidence else ""),
        "minutes": int(stale_sessions.STALE_AFTER.total_seconds() // 60),
        "error": error,
    }
    return render_template("admin/session.html", **context), status
