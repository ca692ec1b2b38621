"""Device presence and live machine state from ``status`` and ``telemetry``.

A change of ``Device.online`` (a last will, a status, telemetry after silence) opens or closes
the machine's offline downtime period in the usage flush hook (server.services.usage), from
the device's ``last_seen``: nothing here needs to remember it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from server.models import Device
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
