"""Sessions as the pages list them (overview, "My training", a person's page): one row of
display text per session, its jobs, and one page of a person's sessions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.adapters.web.admin.base import Page, page_number
from server.adapters.web.l10n import _, current_language, duration_label, when_label
from server.i18n import N_, local_number
from server.models import Job
from server.services.live import SessionRow, count_sessions, recent_sessions

SESSIONS_PER_PAGE = 10  # on "My training" and a person's page: a phone scrolls through ten
NO_VALUE = "\u2013"  # an en dash, in cells that have no value yet

JOB_STATUS_LABELS = {
    "completed": N_("completed"),
    "cancelled": N_("cancelled"),
    "failed": N_("failed"),
}


def iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


def present_session(s: SessionRow, now: datetime) -> dict[str, Any]:
    duration = s.duration_s(now)
    person = s.person_name or _("Unknown badge")
    if s.trainer_name and s.trainer_name != s.person_name:
        person = _("%(person)s with %(trainer)s", person=person, trainer=s.trainer_name)
    return {
        "id": s.id,
        "machine": s.machine_name,
        "person": person,
        "started_at": iso(s.started_at),
        "ended_at": iso(s.ended_at),
        "started_label": when_label(s.started_at, now) if s.started_at else NO_VALUE,
        "ended_label": when_label(s.ended_at, now) if s.ended_at else _("still open"),
        "open": s.ended_at is None,
        "duration_s": duration,
        "duration_label": duration_label(duration) if duration is not None else NO_VALUE,
        "offline": s.offline,
        "offline_label": _("offline") if s.offline else "",
        "jobs": s.jobs,
    }


def sessions_page(db: Session, person_id: int) -> Page:
    """One page of a person's sessions, newest first (``?page=``)."""
    total = count_sessions(db, person_id)
    number = page_number(total, SESSIONS_PER_PAGE)
    rows = recent_sessions(
        db, person_id=person_id, limit=SESSIONS_PER_PAGE, offset=(number - 1) * SESSIONS_PER_PAGE
    )
    return Page(list(rows), number, total, SESSIONS_PER_PAGE)


def session_jobs(db: Session, session_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    """Each session's jobs as display text: file, status, duration, material."""
    out: dict[str, list[dict[str, str]]] = {}
    if not session_ids:
        return out
    rows = db.scalars(select(Job).where(Job.session_id.in_(session_ids)).order_by(Job.started_at))
    for job in rows:
        material = ""
        if job.filament_g is not None:
            material = _("%(grams)s g filament", grams=local_number(job.filament_g, current_language(), 0))
        elif job.filament_mm is not None:
            material = _(
                "%(metres)s m filament", metres=local_number(job.filament_mm / 1000, current_language())
            )
        out.setdefault(job.session_id, []).append(
            {
                "file": job.file or _("(no file name)"),
                "status": _(JOB_STATUS_LABELS.get(job.status or "", N_("running"))),
                "duration": duration_label(job.duration_s) if job.duration_s is not None else NO_VALUE,
                "material": material,
            }
        )
    return out
