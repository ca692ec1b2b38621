"""Device presence and live machine state from ``status`` and ``telemetry``.

A change of ``Device.online`` (a last will, a status, telemetry after silence) opens or closes
the machine's offline downtime period in the usage flush hook (server.services.usage), from
the device's ``last_seen``: nothing here needs to remember it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import Device, Notification
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import Status, Telemetry


def apply_status(db: Session, device: Device, status: Status, now: datetime) -> None:
    machine = device.machine
    if status.machine is not None and (machine is None or status.machine != machine.slug):
        served = machine.slug if machine else "no machine"
        raise ProtocolError(
            "wrong_machine", f"device {device.id!r} serves {served}, but its status names {status.machine!r}"
        )
    device.online = status.online
    device.last_seen = now
    if status.online:
        device.state = status.state
        device.agent_version = status.fw or device.agent_version
        device.config_hash = status.config or device.config_hash
        if status.allowlist_version is not None:
            device.allowlist_version = status.allowlist_version
    if machine is not None:
        machine.live_state = status.state if status.online else "offline"
        machine.live_updated_at = max(now, machine.live_updated_at or now)


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
