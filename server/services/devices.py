"""Device presence, health and live machine state from ``status`` and ``telemetry``; the admins'
notices about devices (offline while the lab is open, events not arriving, an old allow-list).

A change of ``Device.online`` (a last will, a status, telemetry after silence) opens or closes
the machine's offline downtime period in the usage flush hook (server.services.usage), from
the device's ``last_seen``: nothing here needs to remember it.

Health (docs/deploy.md, "Device health"): agents report in every live ``status`` (at least once a
minute) how many events wait in their outbox, how long the oldest has waited, and how old their
offline allow-list is. :func:`notify_health` turns a report that stays bad into one notice per
episode for the site's admins, and ends the episode when a report is good again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.models import Device, Notification
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import Status, Telemetry

log = logging.getLogger(__name__)

# A device heard of neither by status, telemetry nor event for this long is offline (agents send
# a status at least once a minute).
SILENT_AFTER = timedelta(minutes=5)


def apply_status(db: Session, device: Device, status: Status, now: datetime) -> None:
    machine = device.machine
    if status.machine is not None and (machine is None or status.machine != machine.slug):
        served = machine.slug if machine else "no machine"
        raise ProtocolError(
            "wrong_machine", f"device {device.id!r} serves {served}, but its status names {status.machine!r}"
        )
    device.last_seen = now
    if status.online:
        device.state = status.state
        device.agent_version = status.fw or device.agent_version
        device.config_hash = status.config or device.config_hash
        if status.allowlist_version is not None:
            device.allowlist_version = status.allowlist_version
    set_presence(device, status.online, status.state, now)


def set_presence(device: Device, online: bool, state: str | None, now: datetime) -> None:
    """The one place a device goes online or offline, and its machine's live state with it. The
    usage flush hook opens or closes the machine's offline period from ``device.last_seen``."""
    device.online = online
    machine = device.machine
    if machine is not None:
        machine.live_state = state if online else "offline"
        machine.live_updated_at = max(now, machine.live_updated_at or now)


def mark_silent(db: Session, now: datetime, after: timedelta = SILENT_AFTER) -> int:
    """Devices that said nothing for ``after`` go offline even if their last will got lost (a
    power cut at the switch, a broker restart); their offline period starts when they were last
    heard of. Returns how many."""
    silent = db.scalars(select(Device).where(Device.online.is_(True), Device.last_seen < now - after)).all()
    for device in silent:
        set_presence(device, False, "offline", now)
    return len(silent)


def apply_health(device: Device, status: Status, now: datetime) -> None:
    """Store the health figures of a live ``status`` (the protocol's decoder has checked their
    ranges: a status with a negative or absurd one is refused whole before it gets here). A
    status without them (an older agent) clears them: nothing is known then."""
    device.outbox_depth = status.outbox_depth
    device.outbox_oldest_s = status.outbox_oldest_s
    device.allowlist_age_s = status.allowlist_age_s
    reported = status.outbox_depth is not None or status.allowlist_age_s is not None
    device.health_reported_at = now if reported else None


def apply_telemetry(db: Session, device: Device, telemetry: Telemetry, now: datetime) -> None:
    device.last_seen = now
    device.online = True
    machine = device.machine
    if machine is not None:
        machine.live_running = telemetry.running
        machine.live_power_w = telemetry.power_w
        machine.live_progress = telemetry.progress


# A device silent this long while its lab is open: its site's admins hear of it (app and e-mail).
OFFLINE_NOTICE_AFTER = timedelta(minutes=15)


def notify_offline(db: Session, now: datetime, after: timedelta = OFFLINE_NOTICE_AFTER) -> int:
    """Tell admins about each device offline for longer than ``after`` while its machine's opening
    hours run now; once per outage (the key holds the time it was last seen). Returns how many
    notifications were made."""
    from server.services import notifications
    from server.services.bookings import is_open
    from server.services.reconcile import _admins

    made = 0
    silent = db.scalars(
        select(Device).where(
            Device.machine_id.is_not(None),
            Device.online.is_(False),
            Device.last_seen.is_not(None),
            Device.last_seen < now - after,
        )
    )
    for device in silent:
        machine, seen = device.machine, device.last_seen
        if machine is None or seen is None or not is_open(db, machine, now, now + timedelta(seconds=1)):
            continue
        key = f"device_offline:{device.id}:{seen.isoformat()}"
        local = seen.astimezone(ZoneInfo(machine.site.timezone))
        for admin in _admins(db, machine.site_id):
            if db.scalar(
                select(Notification.id).where(Notification.person_id == admin.id, Notification.key == key)
            ):
                continue
            db.add(
                Notification(
                    person_id=admin.id,
                    kind=notifications.DEVICE_OFFLINE,
                    key=key,
                    params={
                        "machine": machine.name,
                        "date": local.date().isoformat(),
                        "start": local.strftime("%H:%M"),
                    },
                )
            )
            made += 1
    return made


# The oldest event in a device's outbox has waited this long: the server is not storing its events
# (an agent re-sends every 2-60 s and the bridge acknowledges in milliseconds).
OUTBOX_NOTICE_AFTER_S = 10 * 60.0
# A device's offline allow-list is this old: the server's reissue (every 6 hours) does not reach it.
ALLOWLIST_NOTICE_AFTER_S = 24 * 3600.0
# Only a report this recent counts (agents report every minute while connected): what an offline
# device last said is neither a new episode nor the end of one.
HEALTH_FRESH = timedelta(minutes=5)


def notify_health(db: Session, now: datetime) -> int:
    """Tell admins about devices whose events are not arriving or whose allow-list is old.

    One notice per episode: the first run that finds a device's condition records since when it
    holds (``Device.outbox_stuck_since``, ``allowlist_old_since``) and tells the admins of its site;
    later runs are quiet while it holds. A fresh report without it ends the episode and marks its
    unread notices read (nothing to act on any more; not e-mailed later either), so the next time
    it happens is told again. Returns how many notifications were made."""
    from server.services import notifications

    made = 0
    reporting = db.scalars(
        select(Device)
        .where(Device.online.is_(True), Device.health_reported_at >= now - HEALTH_FRESH)
        .order_by(Device.id)
    )
    for device in reporting:
        machine = device.machine
        site_id = machine.site_id if machine is not None else device.entrance_site_id
        if site_id is None:
            continue
        where = machine.name if machine is not None else device.id
        oldest, depth = device.outbox_oldest_s, device.outbox_depth or 0
        made += _episode(
            db,
            device,
            site_id,
            notifications.DEVICE_OUTBOX_STUCK,
            "outbox_stuck_since",
            oldest is not None and oldest >= OUTBOX_NOTICE_AFTER_S,
            {"machine": where, "count": depth, "minutes": int((oldest or 0) // 60)},
            now,
        )
        age = device.allowlist_age_s
        made += _episode(
            db,
            device,
            site_id,
            notifications.DEVICE_ALLOWLIST_OLD,
            "allowlist_old_since",
            age is not None and age >= ALLOWLIST_NOTICE_AFTER_S,
            {"machine": where, "hours": int((age or 0) // 3600), "version": device.allowlist_version},
            now,
        )
    return made


def _episode(
    db: Session,
    device: Device,
    site_id: int,
    kind: str,
    since_attr: str,
    holds: bool,
    params: dict[str, Any],
    now: datetime,
) -> int:
    """Begin (and tell), keep, or end one device's episode of ``kind``; returns notices made."""
    from server.services.reconcile import _admins

    since: datetime | None = getattr(device, since_attr)
    prefix = f"{kind}:{device.id}:"
    if not holds:
        if since is not None:
            setattr(device, since_attr, None)
            settled = db.execute(
                update(Notification)
                .where(
                    Notification.kind == kind,
                    Notification.key.startswith(prefix, autoescape=True),
                    Notification.read_at.is_(None),
                )
                .values(read_at=now)
                .execution_options(synchronize_session=False)
            )
            log.info(
                "device %s: %s is over (%d unread notice(s) settled)",
                device.id,
                kind,
                int(getattr(settled, "rowcount", 0) or 0),
            )
        return 0
    if since is not None:
        return 0  # told when it began
    setattr(device, since_attr, now)
    key = f"{prefix}{now.isoformat()}"
    made = 0
    for admin in _admins(db, site_id):
        db.add(Notification(person_id=admin.id, kind=kind, key=key, params=dict(params)))
        made += 1
    log.warning("device %s: %s (%s); %d admin(s) told", device.id, kind, params, made)
    return made
