"""Timed work, in exactly one process: ``werkbank scheduler``.

A database-level lock (PostgreSQL advisory lock, or an exclusive lock file next to a
SQLite database) makes a second scheduler wait instead of running every job twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

from sqlalchemy import text, update

from server.db import Database
from server.models import Device, Machine
from server.services import allowlists

log = logging.getLogger(__name__)
LOCK_KEY = 0x5765726B  # "Werk"
OFFLINE_AFTER = timedelta(minutes=5)


@contextlib.contextmanager
def singleton_lock(database: Database, url: str) -> Iterator[bool]:
    """Yields True when this process holds the scheduler lock, False when another one does."""
    if url.startswith("postgresql"):
        with database.engine.connect() as conn:
            got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar())
            try:
                yield got
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
        return
    path = Path(url.removeprefix("sqlite:///") + ".scheduler.lock") if url.startswith("sqlite:///") else None
    if path is None:  # in-memory database: one process by definition
        yield True
        return
    handle: IO[str] = path.open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(str(os.getpid()))
        handle.flush()
        yield True
    except BlockingIOError:
        yield False
    finally:
        handle.close()


def refresh_allowlists(database: Database) -> None:
    """Offline lists expire (7 days by default) and qualifications lapse at midnight: reissue them."""
    with database.session() as db:
        allowlists.mark_all_dirty(db)
    log.info("allow-lists marked for reissue")


def mark_silent_devices_offline(database: Database, now: datetime | None = None) -> int:
    """A device that said nothing for 5 minutes is shown offline even if its last will got lost."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        result = db.execute(
            update(Device)
            .where(Device.online.is_(True), Device.last_seen < now - OFFLINE_AFTER)
            .values(online=False)
        )
        count = int(getattr(result, "rowcount", 0) or 0)
        if count:
            db.execute(
                update(Machine)
                .where(Machine.id.in_(db.query(Device.machine_id).filter(Device.online.is_(False))))
                .values(live_state="offline")
            )
    return count


def build_scheduler(database: Database) -> object:
    from apscheduler.schedulers.blocking import BlockingScheduler

    scheduler = BlockingScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    scheduler.add_job(
        refresh_allowlists, "cron", hour="*/6", minute=5, args=[database], id="refresh_allowlists"
    )
    scheduler.add_job(
        mark_silent_devices_offline, "interval", minutes=1, args=[database], id="silent_devices"
    )
    return scheduler
