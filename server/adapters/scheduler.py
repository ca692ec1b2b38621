"""Timed work, in exactly one process: ``werkbank scheduler``.

A database-level lock (PostgreSQL advisory lock, or an exclusive lock file next to a
SQLite database) makes a second scheduler wait instead of running every job twice.

Qualifications expire and reminders are made by jobs that run every hour and once at
start (so a restart catches up); each is idempotent, so running more often than daily only
means "shortly after midnight" wherever a site is. Notifications are e-mailed every few
minutes when ``WERKBANK_SMTP_HOST`` is set. Every minute, bookings whose holder did not tap
in are released as no-shows, holders are reminded of bookings that start soon, and admins hear
of devices offline, with events not arriving or with an old allow-list.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections import Counter
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from server.db import Database
from server.models import Site
from server.services import (
    allowlists,
    attendance,
    bookings,
    devices,
    mail,
    notifications,
    outcomes,
    privacy,
    training,
    usage,
)
from server.services.health import BEAT_S, beat

log = logging.getLogger(__name__)
LOCK_KEY = 0x5765726B  # "Werk"
# A waiting scheduler tries the lock this often: when the running one dies (its database
# connection, and with it the lock, goes at once), the next takes over within this time.
LOCK_RETRY_S = 10


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
    with database.session() as db:
        return devices.mark_silent(db, now or datetime.now(UTC))


def refresh_usage(database: Database, now: datetime | None = None) -> int:
    """Recompute the usage aggregates of every dirty (machine, local day); see services.usage."""
    done = usage.refresh(database, now)
    if done:
        log.info("usage aggregates of %d machine-days recomputed", done)
    return done


def day_begun_at_every_site(db: Session, now: datetime) -> date:
    """The calendar day at the site whose midnight comes last (UTC's day when there is no site).

    ``training.expire_due`` takes one day for all sites: the earliest one never expires a
    qualification before its holder's own midnight. At a site further east the history entry
    and the notification come a few hours after its midnight; its machines refuse the
    qualification at midnight all the same (the decision and the offline allow-list check
    ``valid_until`` themselves).
    """
    zones = set(db.scalars(select(Site.timezone).distinct())) or {"UTC"}
    return min(now.astimezone(ZoneInfo(zone)).date() for zone in zones)


def expire_qualifications(database: Database, now: datetime | None = None) -> int:
    """Append ``expired`` to every qualification whose last valid day has passed, and tell
    the holders and their trainers. The new history entries mark every allow-list dirty, so
    the bridge reissues them. Returns how many expired (0 when run again)."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        today = day_begun_at_every_site(db, now)
        expired = training.expire_due(db, now, today)
        notifications.notify_expired(db, expired, today)
    if expired:
        log.info("%d qualifications expired", len(expired))
    return len(expired)


def remind_expiring(database: Database, now: datetime | None = None) -> int:
    """Remind holders and trainers of qualifications that end within 30 days (once each), and
    settle the reminders of qualifications renewed meanwhile."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        today = day_begun_at_every_site(db, now)
        notifications.settle_renewed(db, today, now)
        made = notifications.remind_expiring(db, today)
    if made:
        log.info("%d expiry reminders made", made)
    return made


def purge_personal_data(database: Database, months: int, now: datetime | None = None) -> int:
    """Erase the personal data of participants who ended ``months`` ago (0: never)."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        erased = privacy.purge_ended(db, now, months)
        db.commit()
    if erased:
        log.info("retention: personal data of %d ended participants erased", len(erased))
    return len(erased)


def release_no_shows(database: Database, now: datetime | None = None) -> int:
    """Release bookings whose holder has not tapped in within the site's ``no_show_after_min``,
    count them as no-shows and tell the holders (in the app; by e-mail with the next
    ``email_notifications`` run). Returns how many were released (0 when run again)."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        released = bookings.release_no_shows(db, now)
        bookings.notify_released(db, released, now)
    if released:
        log.info("%d bookings released as no-shows", len(released))
    return len(released)


def remind_bookings(database: Database, now: datetime | None = None) -> int:
    """Remind holders ``reminder_before_min`` before their bookings, once per booking."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        made = bookings.remind_due(db, now)
    if made:
        log.info("%d booking reminders made", made)
    return made


def close_forgotten_checkins(database: Database, now: datetime | None = None) -> int:
    """Close stays at a site still open after its closing time, at that time, marked as closed
    by the system (the person forgot to tap out at the entrance)."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        closed = attendance.close_forgotten(db, now)
    if closed:
        log.info("%d forgotten check-outs closed at closing time", len(closed))
    return len(closed)


def prompt_follow_ups(database: Database, now: datetime | None = None) -> int:
    """Ask the admins of a site for the six-month follow-up of each participant who left six
    months ago (once per exit)."""
    now = now or datetime.now(UTC)
    with database.session() as db:
        made = outcomes.prompt_follow_ups(db, day_begun_at_every_site(db, now))
    if made:
        log.info("%d follow-up prompts made", made)
    return made


def email_notifications(
    database: Database, settings: mail.SmtpSettings, now: datetime | None = None
) -> mail.MailReport:
    """E-mail what is still unsent; SMTP trouble is logged and retried on the next run."""
    return mail.send_pending(database, settings, now)


def notify_offline_devices(database: Database, now: datetime | None = None) -> int:
    """Admins hear of devices offline too long while their lab is open (app; e-mail follows)."""

    with database.session() as db:
        made = devices.notify_offline(db, now or datetime.now(UTC))
    if made:
        log.info("%d notification(s) of offline devices", made)
    return made


def notify_device_health(database: Database, now: datetime | None = None) -> int:
    """Admins hear of devices whose events are not arriving or whose allow-list is old, once per
    episode (app; e-mail follows); a device that recovered ends its episode."""

    with database.session() as db:
        made = devices.notify_health(db, now or datetime.now(UTC))
    if made:
        log.info("%d notification(s) of device health", made)
    return made


def build_scheduler(
    database: Database, config: Mapping[str, Any] | None = None, runs: JobRuns | None = None
) -> Any:
    """The jobs, on a blocking scheduler; ``config`` (the app's) says whether to e-mail."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    scheduler = BlockingScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
    start = datetime.now(UTC)
    scheduler.add_job(
        refresh_allowlists, "cron", hour="*/6", minute=5, args=[database], id="refresh_allowlists"
    )
    scheduler.add_job(
        mark_silent_devices_offline, "interval", minutes=1, args=[database], id="silent_devices"
    )
    scheduler.add_job(
        refresh_usage, "interval", minutes=1, args=[database], id="refresh_usage", next_run_time=start
    )
    scheduler.add_job(
        expire_qualifications,
        "cron",
        minute=1,
        args=[database],
        id="expire_qualifications",
        next_run_time=start,
    )
    scheduler.add_job(
        remind_expiring,
        "cron",
        minute=2,
        args=[database],
        id="remind_expiring",
        next_run_time=start + timedelta(seconds=10),
    )
    scheduler.add_job(notify_offline_devices, "interval", minutes=1, args=[database], id="offline_devices")
    scheduler.add_job(notify_device_health, "interval", minutes=1, args=[database], id="device_health")
    scheduler.add_job(release_no_shows, "interval", minutes=1, args=[database], id="release_no_shows")
    scheduler.add_job(
        close_forgotten_checkins,
        "interval",
        minutes=10,
        args=[database],
        id="close_forgotten_checkins",
        next_run_time=start + timedelta(seconds=20),
    )
    scheduler.add_job(prompt_follow_ups, "cron", hour=7, minute=3, args=[database], id="prompt_follow_ups")
    scheduler.add_job(remind_bookings, "interval", minutes=1, args=[database], id="remind_bookings")
    retention = int((config or {}).get("RETENTION_MONTHS") or 0)
    if retention > 0:
        scheduler.add_job(
            purge_personal_data,
            "cron",
            hour=3,
            minute=17,
            args=[database, retention],
            id="purge_personal_data",
        )
    settings = mail.SmtpSettings.from_config(config or {})
    if settings is not None:
        scheduler.add_job(
            email_notifications,
            "interval",
            minutes=5,
            args=[database, settings],
            id="email_notifications",
            next_run_time=start + timedelta(seconds=30),
        )
    runs = runs if runs is not None else JobRuns()
    scheduler.add_listener(runs.record, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.add_job(
        heartbeat, "interval", seconds=BEAT_S, args=[database, runs], id="heartbeat", next_run_time=start
    )
    return scheduler


class JobRuns:
    """Each job's last run (time, success, error), as APScheduler reports them."""

    def __init__(self) -> None:
        self.last: dict[str, dict[str, Any]] = {}
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()

    def record(self, event: Any) -> None:
        if event.job_id == "heartbeat":
            return
        run: dict[str, Any] = {"at": event.scheduled_run_time.isoformat(), "ok": event.exception is None}
        if event.exception is not None:
            run["error"] = f"{type(event.exception).__name__}: {event.exception}"[:200]
        self.last[event.job_id] = run
        self.counts[event.job_id] += 1
        if event.exception is not None:
            self.failures[event.job_id] += 1


def heartbeat(database: Database, runs: JobRuns, now: datetime | None = None) -> None:
    """Tell the web's /readyz that the scheduler runs, with each job's last run."""
    beat(database, f"scheduler@{socket.gethostname()}", "scheduler", {"jobs": dict(runs.last)}, now)
