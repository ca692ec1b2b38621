"""The audit log: every grant, revoke, override, remote unlock and data export, with who and when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from server.models import AuditLog, Person, utcnow


def record(
    db: Session,
    actor: Person | None,
    action: str,
    subject: str,
    detail: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
    actor_label: str | None = None,
) -> AuditLog:
    """Append one entry. ``actor`` None means the system (a scheduler job, the bridge)."""
    entry = AuditLog(
        at=at or utcnow(),
        actor_id=actor.id if actor is not None else None,
        actor_label=actor_label or (f"{actor.name} <{actor.email or actor.id}>" if actor else "system"),
        action=action,
        subject=subject,
        detail=detail or {},
    )
    db.add(entry)
    return entry
