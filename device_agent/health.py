"""What the agent tells the server about itself and its machine: ``status`` and ``telemetry``.

``status`` carries the machine's state and the agent's health (docs/protocol.md): the outbox's
depth and its oldest event's wait, and the held allow-list's version and age. The allow-list's age
is taken from the wall clock once, when the list arrives (:class:`AllowlistAge`), and grows on the
boot clock from there, so a wall-clock step later does not move it. ``telemetry`` carries the
monitor's readings (power, the smart plug's energy, progress, temperatures). Every figure is kept
within the protocol's ceilings, which the server refuses beyond.
"""

from __future__ import annotations

from datetime import datetime

from device_agent.clock import Clock, mono_s
from device_agent.hardware.base import MonitorReadings
from werkbank_protocol import format_ts, parse_ts
from werkbank_protocol.messages import MAX_HEALTH_AGE_S, MAX_OUTBOX_DEPTH, MachineState, Status, Telemetry


class AllowlistAge:
    """The held allow-list's age: the wall clock read once when it is taken, then the boot clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        # The held allow-list's `issued`, and (boot clock, its age) when it was taken.
        self._issued: str | None = None
        self._taken: tuple[float, float] = (0.0, 0.0)

    def note(self, issued: str | None) -> None:
        """Remember when the held allow-list was taken (at start, and whenever a new one is)."""
        if issued is None or issued == self._issued:
            return
        self._issued = issued
        # Its age at this moment: the one reading of the wall clock, never below 0 (a Pi whose
        # clock is behind the server's); from here on the boot clock counts.
        age = (self.clock.now() - parse_ts(issued)).total_seconds()
        self._taken = (self.clock.monotonic(), max(0.0, age))

    def seconds(self, mono: float) -> float | None:
        """Seconds since the held allow-list's ``issued``; None when none is held."""
        if self._issued is None:
            return None
        taken_mono, age = self._taken
        return max(0.0, age + mono - taken_mono)


def status_message(
    *,
    state: MachineState,
    machine: str,
    fw: str,
    config_hash: str,
    allowlist_version: int | None,
    now: datetime,
    boot: str | None,
    mono: float,
    outbox_health: tuple[int, float | None],
    allowlist_age_s: float | None,
) -> Status:
    """The ``status`` of a connected agent."""
    depth, oldest_s = outbox_health
    return Status(
        v=1,
        online=True,
        state=state,
        machine=machine,
        fw=fw,
        config=config_hash,
        allowlist_version=allowlist_version,
        ts=format_ts(now),
        boot=boot,
        mono_s=mono_s(mono),
        # Within the protocol's ceilings, which the server refuses beyond.
        outbox_depth=min(depth, MAX_OUTBOX_DEPTH),
        outbox_oldest_s=None if oldest_s is None else round(min(oldest_s, MAX_HEALTH_AGE_S), 3),
        allowlist_age_s=None if allowlist_age_s is None else round(min(allowlist_age_s, MAX_HEALTH_AGE_S), 3),
    )


def telemetry_message(
    *,
    now: datetime,
    running: bool,
    session: str | None,
    readings: MonitorReadings,
    plug_power_w: float | None,
    plug_energy_wh: float | None,
) -> Telemetry:
    """The machine's readings; the power is the monitor's, else the smart plug's (a printer
    monitor measures none)."""
    power = readings.power_w if readings.power_w is not None else plug_power_w
    return Telemetry(
        v=1,
        ts=format_ts(now),
        running=running,
        session=session,
        power_w=None if power is None else max(power, 0.0),
        energy_wh=None if plug_energy_wh is None else max(plug_energy_wh, 0.0),
        progress=None if readings.progress is None else min(max(readings.progress, 0.0), 100.0),
        temps=readings.temps,
    )
