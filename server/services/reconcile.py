"""Offline sessions checked when they reach the server: was the person allowed when it began?

An agent that cannot reach the server decides from its allow-list, which can be days old: a
qualification revoked since, a badge blocked since, are still on it. When such a session's
``session_started`` is ingested, :func:`check_offline_session` asks whether the person could
have been let in at the session's start, from what the server knew then: the badge (its status
and when that changed), the person (deactivated when), and the qualification history (append-
only; each entry carries the time it was made). If not, the session is flagged
``not_allowed_offline`` with the reason, the audit log records it, and the site's admins are told
(in the app, and by e-mail through the notifications they already get).

A flagged session that still runs is ended: the bridge asks :func:`due_locks` every second or so
and sends each a ``lock`` command (not forced: the agent waits for a running job, as for every
lock), once per session, recorded in the audit log in the same transaction; the command id is
derived from the session id, so a copy that slips through is one the agent ignores.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from server.models import (
    AuditLog,
    Badge,
    BadgeStatus,
    Competency,
    Level,
    MachineSession,
    Notification,
    Person,
)
from server.services import audit, notifications, qualifications, training
from server.services.decision import STALE_SESSION, load_requirements

log = logging.getLogger(__name__)

FLAG = "not_allowed_offline"
FLAG_ACTION = "session.not_allowed_offline"
LOCK_ACTION = "session.lock_not_allowed"
LOCK_REASON = "not_allowed_offline"
# uuid5 namespace of the lock commands' ids (a fixed UUID of ours).
_CMD_NAMESPACE = uuid.UUID("0b7f3a52-9d61-4c1e-8a57-6e2d1f4c9b83")


@dataclass(frozen=True)
class Refusal:
    """Why a badge could not have been let in: a reason code (notifications.OFFLINE_REASONS)
    and the competency it concerns, when one does."""

    reason: str
    competency: Competency | None = None


@dataclass(frozen=True)
class SessionLock:
    """A ``lock`` command to send: ``session_id`` at ``device_id`` must end."""

    device_id: str
    session_id: str
    cmd_id: str


def refusal_at(db: Session, session: MachineSession, at: datetime) -> Refusal | None:
    """Why the session's badge could not have unlocked its machine at ``at``, or None.

    The offline rules, as the allow-list applies them: an active badge of an active person who
    holds every competency the machine type requires, usable, at the required level.
    """
    badge = db.scalar(select(Badge).where(Badge.uid == (session.badge_uid or "").upper()))
    if badge is None:
        return Refusal("unknown_badge")
    if badge.status != BadgeStatus.ACTIVE and (
        badge.status_changed_at is None or badge.status_changed_at <= at
    ):
        return Refusal("badge_blocked")
    person = badge.person
    if not person.active and _inactive_since(db, person) <= at:
        return Refusal("person_inactive")
    machine = session.machine
    day = at.astimezone(ZoneInfo(machine.site.timezone)).date()
    for req in load_requirements(db, machine.machine_type_id):
        made = [q for q in training.history(db, person.id, req.competency_id) if q.created_at <= at]
        entry = max(made, key=lambda q: (q.created_at, q.id)) if made else None
        state = qualifications.state_of(entry, day)
        competency = db.get(Competency, req.competency_id)
        if state is None or state.level is None:
            return Refusal("not_qualified", competency)
        if state.revoked:
            return Refusal("qualification_revoked", competency)
        if state.expired:
            return Refusal("qualification_expired", competency)
        if state.level.rank < Level(req.min_level).rank:
            return Refusal("trainer_required", competency)
    return None


def _inactive_since(db: Session, person: Person) -> datetime:
    """When an inactive person was deactivated (or erased), as the audit log has it; the
    earliest possible time when it does not say (a person loaded as inactive)."""
    since = db.scalar(
        select(func.max(AuditLog.at)).where(
            AuditLog.action.in_(("person.deactivate", "person.erase")),
            AuditLog.subject == f"person:{person.id}",
        )
    )
    return since or datetime.min.replace(tzinfo=UTC)


def check_offline_session(db: Session, session: MachineSession, now: datetime) -> Refusal | None:
    """Flag ``session`` (an offline one, just reported) when its person was not allowed at its
    start; audit it and tell the site's admins. Does nothing for a session checked before."""
    if not session.offline or session.started_at is None or session.flag is not None:
        return None
    refusal = refusal_at(db, session, session.started_at)
    if refusal is None:
        return None
    session.flag, session.flag_reason = FLAG, refusal.reason
    person = db.get(Person, session.person_id) if session.person_id is not None else None
    who = person.name if person is not None else (session.badge_uid or "?")
    machine = session.machine
    audit.record(
        db,
        None,
        FLAG_ACTION,
        f"session:{session.id}",
        {
            "machine": machine.slug,
            "person": who,
            "badge": session.badge_uid,
            "reason": refusal.reason,
            "competency": refusal.competency.slug if refusal.competency else None,
            "started_at": session.started_at.isoformat(),
        },
        at=now,
        actor_label="bridge",
    )
    tz = ZoneInfo(machine.site.timezone)
    local = session.started_at.astimezone(tz)
    params: dict[str, Any] = {
        "person": who,
        "person_id": person.id if person is not None else None,
        "machine": machine.name,
        "date": local.date().isoformat(),
        "start": local.strftime("%H:%M"),
        "reason": refusal.reason,
        "session_id": session.id,
    }
    if refusal.competency is not None:
        params["competency"] = {"en": refusal.competency.name, "de": refusal.competency.display_name("de")}
    key = f"{notifications.OFFLINE_NOT_ALLOWED}:{session.id}"
    for admin in _admins(db, machine.site_id):
        if db.scalar(
            select(Notification.id).where(Notification.person_id == admin.id, Notification.key == key)
        ):
            continue
        db.add(
            Notification(
                person_id=admin.id,
                kind=notifications.OFFLINE_NOT_ALLOWED,
                key=key,
                params=params,
                created_at=now,
            )
        )
    db.flush()
    log.warning(
        "offline session %s on %s: %s was not allowed at its start (%s)",
        session.id,
        machine.slug,
        who,
        refusal.reason,
    )
    return refusal


def _admins(db: Session, site_id: int) -> list[Person]:
    """The site's active admins; every active admin when the site has none."""
    admins = db.scalars(
        select(Person).where(Person.is_admin.is_(True), Person.active.is_(True)).order_by(Person.id)
    ).all()
    here = [p for p in admins if p.site_id == site_id]
    return here or list(admins)


def cmd_id(session_id: str) -> str:
    """The same command id for the same session, whoever sends it and how often."""
    return str(uuid.uuid5(_CMD_NAMESPACE, session_id))


def due_locks(db: Session, now: datetime, skip: set[str] | None = None) -> list[SessionLock]:
    """Locks for flagged sessions still running (started within a day: an end never reported
    must not keep a lock pending for ever), each recorded in the audit log in ``db``'s
    transaction. ``skip``: session ids known to be locked already (spares the audit query)."""
    rows = db.execute(
        select(MachineSession.id, MachineSession.device_id).where(
            MachineSession.flag == FLAG,
            MachineSession.ended_at.is_(None),
            or_(MachineSession.started_at.is_(None), MachineSession.started_at > now - STALE_SESSION),
        )
    ).all()
    due: list[SessionLock] = []
    for session_id, device_id in rows:
        if skip is not None and session_id in skip:
            continue
        subject = f"session:{session_id}"
        if db.scalar(select(AuditLog.id).where(AuditLog.action == LOCK_ACTION, AuditLog.subject == subject)):
            continue
        audit.record(db, None, LOCK_ACTION, subject, {"device": device_id}, at=now, actor_label="bridge")
        due.append(SessionLock(device_id, session_id, cmd_id(session_id)))
    if due:
        db.flush()
    return due
