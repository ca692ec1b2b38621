"""Is the server ready? The database, the broker, a bridge and the scheduler, checked for /readyz.

The bridge and the scheduler write a heartbeat row (:class:`ProcessHeartbeat`) every
:data:`BEAT_S` seconds; the web reads them, so one check sees every process whatever host it runs
on. A process whose last beat is older than :data:`STALE_S` counts as gone.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from server.db import Database
from server.models import ProcessHeartbeat
from werkbank_protocol.mqtt import parse_mqtt_url

log = logging.getLogger(__name__)

BEAT_S = 10.0
STALE_S = 60.0
BROKER_TIMEOUT_S = 2.0


def beat(
    database: Database, name: str, kind: str, detail: Mapping[str, Any], now: datetime | None = None
) -> None:
    """Record that process ``name`` runs (a failed write is logged: the next beat tries again)."""
    try:
        with database.session() as session:
            row = session.get(ProcessHeartbeat, name)
            if row is None:
                row = ProcessHeartbeat(name=name, kind=kind, host="", pid=0, seen_at=now or datetime.now(UTC))
                session.add(row)
            row.kind = kind
            row.host = socket.gethostname()[:255]
            row.pid = os.getpid()
            row.seen_at = now or datetime.now(UTC)
            row.detail = dict(detail)
    except SQLAlchemyError:
        log.warning("heartbeat of %s not written: the database is unreachable", name, exc_info=True)


def broker_reachable(mqtt_url: str, timeout: float = BROKER_TIMEOUT_S) -> bool:
    """Whether the broker of ``mqtt_url`` accepts a TCP connection."""
    if not mqtt_url:
        return False
    try:
        address = parse_mqtt_url(mqtt_url)
    except ValueError:
        return False
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout):
            return True
    except OSError:
        return False


def readiness(session: Session, mqtt_url: str, now: datetime | None = None) -> dict[str, Any]:
    """Each check's result; ``ready`` is true when all pass. Jobs that failed their last run are
    listed but do not make the server unready (the next run may succeed; alerts watch them)."""
    now = now or datetime.now(UTC)
    checks: dict[str, bool] = {}
    try:
        session.execute(text("SELECT 1"))
        checks["database"] = True
    except SQLAlchemyError:
        checks["database"] = False
    checks["broker"] = broker_reachable(mqtt_url)
    beats: list[ProcessHeartbeat] = []
    if checks["database"]:
        beats = list(session.scalars(select(ProcessHeartbeat)))
    fresh = [b for b in beats if now - b.seen_at <= timedelta(seconds=STALE_S)]
    checks["bridge"] = any(b.kind == "bridge" and b.detail.get("connected") for b in fresh)
    checks["scheduler"] = any(b.kind == "scheduler" for b in fresh)
    failed_jobs = sorted(
        job
        for b in fresh
        if b.kind == "scheduler"
        for job, run in (b.detail.get("jobs") or {}).items()
        if not run.get("ok", True)
    )
    return {"ready": all(checks.values()), "checks": checks, "failed_jobs": failed_jobs}
