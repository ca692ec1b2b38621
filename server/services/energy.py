"""Energy (kWh) per session from the telemetry of a machine's device (docs/dashboards.md, "Energy").

The bridge hands every telemetry sample of a device to :class:`Meter` in the order the device
sent them; the meter integrates them in memory, and at the end of the telemetry window
(server.adapters.bridge) :func:`settle` adds what the window measured to the machine's open session in
the same transaction that writes the live state: no extra transaction per message.

Per interval between two readings of the same device (their own timestamps):

* both carry the plug's energy counter (``energy_wh``) and it grew: the difference counts;
* the counter went back (the plug was reset or replaced): the interval counts by power instead;
* otherwise power (``power_w``) counts by the trapezoid rule;
* an interval longer than :data:`MAX_GAP_S` counts nothing: its length is added to the
  session's ``energy_gap_s``, which the dashboard shows, so a gap is never silently filled.

Nothing from the device is trusted beyond its own machine: a reading whose power is above
:data:`MAX_POWER_W`, whose counter is absurd, or whose counter grew faster than
:data:`MAX_POWER_W` could have made it, is refused (logged and counted by the bridge).
Raw readings are kept nowhere: the last one of an open session is stored on the session row,
which is all the next window needs (also after a bridge restart, or with two bridges), and
:func:`close` forgets it when the session ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from server.models import MachineSession
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import Telemetry

# No machine of a maker space draws more (a large three-phase laser or kiln is 10-30 kW).
MAX_POWER_W = 50_000.0
# A plug's counter above this (1 GWh) is not a plug's.
MAX_COUNTER_WH = 1_000_000_000.0
# Readings further apart than this are a gap: nothing is counted between them.
MAX_GAP_S = 300.0
# A counter that moves by its resolution between two quick readings is no jump (Shelly and
# Tasmota round to 1 mWh to 10 Wh).
COUNTER_SLACK_WH = 10.0

Source = Literal["counter", "power"]


class Reading(NamedTuple):  # tuples: made once per telemetry message, so cheap to make
    """One sample: when the device took it (its own clock), power and counter if it had them."""

    at: datetime
    power_w: float | None
    counter_wh: float | None


class Step(NamedTuple):
    """What the interval between two readings counts."""

    wh: float
    gap_s: float
    source: Source | None
    implausible: bool = False


def reading_of(telemetry: Telemetry, at: datetime) -> Reading:
    """The reading of one telemetry message, or ProtocolError when a value is absurd (the
    decoder has refused negative ones already)."""
    if telemetry.power_w is not None and telemetry.power_w > MAX_POWER_W:
        raise ProtocolError(
            "implausible_power", f"power_w {telemetry.power_w} W is above {MAX_POWER_W:.0f} W"
        )
    if telemetry.energy_wh is not None and telemetry.energy_wh > MAX_COUNTER_WH:
        raise ProtocolError(
            "implausible_energy", f"energy_wh {telemetry.energy_wh} Wh is above {MAX_COUNTER_WH:.0f} Wh"
        )
    return Reading(at, telemetry.power_w, telemetry.energy_wh)


def step(prev: Reading, cur: Reading) -> Step:
    """The energy between two readings of one device, ``cur`` not older than ``prev``."""
    dt = (cur.at - prev.at).total_seconds()
    if dt <= 0:
        return Step(0.0, 0.0, None)
    if dt > MAX_GAP_S:
        return Step(0.0, dt, None)
    if prev.counter_wh is not None and cur.counter_wh is not None and cur.counter_wh >= prev.counter_wh:
        grown = cur.counter_wh - prev.counter_wh
        if grown > MAX_POWER_W * dt / 3600 + COUNTER_SLACK_WH:
            return Step(0.0, 0.0, None, implausible=True)
        return Step(grown, 0.0, "counter")
    # No counter, or it went back (a reset): power by the trapezoid rule, the missing end
    # taken as the one that is there.
    if prev.power_w is None and cur.power_w is None:
        return Step(0.0, 0.0, None)
    p0 = prev.power_w if prev.power_w is not None else cur.power_w
    p1 = cur.power_w if cur.power_w is not None else prev.power_w
    assert p0 is not None and p1 is not None
    return Step((p0 + p1) / 2 * dt / 3600, 0.0, "power")


@dataclass(slots=True)
class Window:
    """What one device's readings of the current telemetry window add up to."""

    first: Reading
    last: Reading
    wh: float = 0.0
    gap_s: float = 0.0
    counter: bool = False
    power: bool = False

    def take(self, cur: Reading) -> Step:
        s = step(self.last, cur)
        if s.implausible:
            return s
        self.add(s)
        self.last = cur
        return s

    def add(self, s: Step) -> None:
        self.wh += s.wh
        self.gap_s += s.gap_s
        self.counter |= s.source == "counter"
        self.power |= s.source == "power"


def source_of(old: str | None, window: Window) -> str | None:
    """The session's method after this window: counter, power, or mixed."""
    seen = {old} if old else set()
    if window.counter:
        seen.add("counter")
    if window.power:
        seen.add("power")
    if len(seen) > 1 or "mixed" in seen:
        return "mixed"
    return next(iter(seen), None)


def settle(session: MachineSession, window: Window) -> Step | None:
    """Add one device's window to its machine's open session; the window's last reading becomes
    the session's. Returns the step from the session's stored reading when it was implausible:
    then nothing of the window is stored. Else None.

    When the window starts at or before the stored reading (two bridges share the devices'
    messages, or a message came twice), only the stretch after the stored reading counts,
    so no interval is counted twice."""
    if session.energy_last_at is not None:
        stored = Reading(session.energy_last_at, session.energy_last_w, session.energy_last_wh)
        if window.last.at <= stored.at:
            return None
        if window.first.at <= stored.at:
            window = Window(window.last, window.last)
            start = step(stored, window.last)
        else:
            start = step(stored, window.first)
        if start.implausible:
            # Refused whole: the stored reading stays, so the next plausible one counts from
            # it (a plug really swapped for one with a higher counter shows up as a gap once
            # MAX_GAP_S has passed, and counts from then on).
            return start
        window.add(start)
    session.energy_wh = (session.energy_wh or 0.0) + window.wh
    session.energy_gap_s = (session.energy_gap_s or 0.0) + window.gap_s
    session.energy_source = source_of(session.energy_source, window)
    session.energy_last_at = window.last.at
    session.energy_last_w = window.last.power_w
    session.energy_last_wh = window.last.counter_wh
    return None


def close(session: MachineSession) -> None:
    """The session ended: its energy is final, and its last reading, the only raw reading
    kept anywhere, is forgotten (docs/dashboards.md, "Energy": retention)."""
    session.energy_last_at = None
    session.energy_last_w = None
    session.energy_last_wh = None
