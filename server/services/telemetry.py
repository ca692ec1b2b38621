"""Telemetry at fleet scale: held per device, the newest state written per window
(docs/performance.md, "Telemetry").

Three steps, each cheap where it runs:

1. :class:`Buffer` (paho's network thread, once per message): the raw payload is appended to its
   device's list under a lock, nothing is parsed. The buffer holds at most ``limit`` messages;
   past that one is dropped and counted (``busy``): the bridge is not keeping up.
2. :func:`coalesce` (the ingest thread, once per window): every message is decoded, every
   reading goes through the energy meter in the order the device took them, and per device
   the newest state (by its ``ts``) wins.
3. :func:`write` (the ingest thread, one transaction per window): one read of the devices,
   then the live state of every machine heard from with one ``executemany`` and the devices'
   ``last_seen`` with another, in one lock order (sorted ids) for every bridge. The ORM is
   used only where its flush hooks matter: a device coming back online (its offline downtime
   ends, server.services.usage_tracking), a clock offset to record, and the open sessions that
   get the window's energy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from server.db import one_of
from server.models import Device, Machine, MachineSession
from server.services import clocks, energy
from werkbank_protocol import ProtocolError, parse_ts
from werkbank_protocol.messages import Telemetry, decode_as

# Raw telemetry messages held between two windows, at most (at 10,000 messages/s, 10 s).
MAX_WAITING = 100_000

_DEVICES = cast(Table, Device.__table__)
_MACHINES = cast(Table, Machine.__table__)
_SEEN = update(_DEVICES).where(_DEVICES.c.id == bindparam("b_id")).values(last_seen=bindparam("b_seen"))
_LIVE = (
    update(_MACHINES)
    .where(_MACHINES.c.id == bindparam("b_id"))
    .values(
        live_running=bindparam("b_running"),
        live_power_w=bindparam("b_power"),
        live_progress=bindparam("b_progress"),
    )
)


class Raw(NamedTuple):
    """One message as the network thread took it."""

    payload: bytes
    arrived: float  # seconds since the epoch, on the bridge's clock
    retained: bool
    seq: int  # the order of arrival among all telemetry (see Buffer.mark)


class Buffer:
    """Telemetry waiting for its window, per device in the order it arrived. Thread-safe."""

    def __init__(self, limit: int = MAX_WAITING) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Raw]] = {}
        self._count = 0
        self._seq = 0
        # When the oldest message held arrived (monotonic), None while none is: the window's start.
        self.first_at: float | None = None
        # Since the start: messages taken in, and dropped because the buffer was full.
        self.received = 0
        self.dropped = 0

    def add(self, device_id: str, payload: bytes, arrived: float, retained: bool) -> bool:
        """Hold one message; False (and counted) when the buffer is full."""
        with self._lock:
            if self._count >= self.limit:
                self.dropped += 1
                return False
            if not self._count:
                self.first_at = time.monotonic()
            self._seq += 1
            self._count += 1
            self.received += 1
            raw = Raw(payload, arrived, retained, self._seq)
            held = self._waiting.get(device_id)
            if held is None:
                self._waiting[device_id] = [raw]
            else:
                held.append(raw)
            return True

    def mark(self) -> int:
        """The sequence number reached: a message that is not telemetry notes it as it arrives,
        so that the telemetry before it (and only that) can be written first."""
        with self._lock:
            return self._seq

    def take(self) -> dict[str, list[Raw]]:
        """Everything waiting; the buffer starts empty."""
        with self._lock:
            taken, self._waiting, self._count = self._waiting, {}, 0
            self.first_at = None
            return taken

    def take_device(self, device_id: str, upto: int) -> dict[str, list[Raw]]:
        """The messages of one device that arrived up to sequence ``upto``; the rest stay."""
        with self._lock:
            held = self._waiting.get(device_id)
            if not held or held[0].seq > upto:
                return {}
            if held[-1].seq <= upto:
                del self._waiting[device_id]
                self._count -= len(held)
                if not self._count:
                    self.first_at = None
                return {device_id: held}
            cut = next(i for i, raw in enumerate(held) if raw.seq > upto)
            self._waiting[device_id] = held[cut:]
            self._count -= cut
            return {device_id: held[:cut]}

    def __len__(self) -> int:
        with self._lock:
            return self._count


@dataclass(slots=True)
class Latest:
    """A device's newest telemetry of the window, how many messages it stands for, and the
    energy its readings measured."""

    telemetry: Telemetry
    sent: datetime
    arrived: float
    retained: bool
    messages: int
    energy: energy.Window | None = None


Reject = Callable[[str, ProtocolError], None]


def coalesce(
    taken: dict[str, list[Raw]], reject: Reject, carried: dict[str, Latest] | None = None
) -> dict[str, Latest]:
    """Per device the newest state of the window, with every reading through the meter. A
    garbled or absurd message is refused on its own (``reject(device_id, error)``).
    ``carried``: states an earlier window could not write (:attr:`Written.deferred`); the
    window goes on from them as if it had begun with theirs (they are used up)."""
    found: dict[str, Latest] = dict(carried) if carried else {}
    for device_id, raws in taken.items():
        held: Latest | None = found.pop(device_id, None)
        for raw in raws:
            try:
                telemetry = decode_as(Telemetry, raw.payload)
                sent = parse_ts(telemetry.ts)
                reading = energy.reading_of(telemetry, sent)
            except ProtocolError as exc:
                reject(device_id, exc)
                continue
            window = held.energy if held is not None else None
            # Every reading counts for energy, in the order the device took them (a retained
            # one is old news: the broker kept it from before).
            if not raw.retained and (reading.power_w is not None or reading.counter_wh is not None):
                if window is None:
                    window = energy.Window(reading, reading)
                elif reading.at >= window.last.at and window.take(reading).implausible:
                    reject(
                        device_id,
                        ProtocolError(
                            "implausible_energy",
                            f"energy_wh went from {window.last.counter_wh} to {reading.counter_wh} Wh "
                            f"in {(reading.at - window.last.at).total_seconds():.1f} s",
                        ),
                    )
                    continue
            if held is None:
                held = Latest(telemetry, sent, raw.arrived, raw.retained, 1, window)
            elif sent >= held.sent:
                held = Latest(telemetry, sent, raw.arrived, raw.retained, held.messages + 1, window)
            else:  # overtaken by a newer one of this window
                held.messages += 1
                held.energy = window
        if held is not None:
            found[device_id] = held
    return found


@dataclass
class Written:
    """What :func:`write` did: messages of known devices written, what it refused, and the
    states it left for the next window (their rows were locked by another transaction)."""

    messages: int = 0
    devices: int = 0
    refused: list[tuple[str, ProtocolError]] = field(default_factory=list)
    deferred: dict[str, Latest] = field(default_factory=dict)


def write(
    db: Session,
    latest: dict[str, Latest],
    now: datetime,
    offsets: clocks.ClockOffsets,
    settle_s: float,
    arrival_shift_s: float = 0.0,
    skip_locked: bool = False,
) -> Written:
    """Write one window in ``db``'s transaction (the caller commits). An unknown device is
    refused alone. ``arrival_shift_s`` turns the arrival times (epoch seconds) into the
    bridge's clock.

    ``skip_locked`` (PostgreSQL; SQLite locks the whole file instead): a device whose row, its
    machine's row or its machine's open session is locked by another transaction (an
    allow-list round, a booking, an event, the other bridge's window) is not waited for but
    left in :attr:`Written.deferred` for the next window; the others are written at once. A
    window never waits for a lock then, so none can hold up the rest or time out."""
    done = Written()
    if not latest:
        return done
    ids = sorted(latest)
    rows = {
        row.id: row
        for row in db.execute(
            select(
                Device.id, Device.machine_id, Device.online, Device.clock_offset_s, Device.clock_measured_at
            ).where(one_of(db, Device.id, ids))
        )
    }
    for device_id in ids:
        if device_id not in rows:
            done.refused.append(
                (
                    device_id,
                    ProtocolError(
                        "unknown_device", f"device {device_id!r} is not registered; provision it first"
                    ),
                )
            )
    known = [i for i in ids if i in rows]
    if skip_locked:
        free, sessions = _lock_free(db, known, rows, latest)
        done.deferred = {i: latest[i] for i in set(known) - set(free)}
        known = free
    else:
        sessions = _open_sessions(db, (rows[i].machine_id for i in known if latest[i].energy is not None))
    # Live state first, in the order of the ids (one lock order for every bridge).
    seen = [{"b_id": i, "b_seen": now} for i in known if rows[i].online]
    if seen:
        db.execute(_SEEN, seen)
    live = sorted(
        (
            {
                "b_id": rows[i].machine_id,
                "b_running": latest[i].telemetry.running,
                "b_power": latest[i].telemetry.power_w,
                "b_progress": latest[i].telemetry.progress,
            }
            for i in known
            if rows[i].machine_id is not None
        ),
        key=lambda r: cast(int, r["b_id"]),
    )
    if live:
        db.execute(_LIVE, live)
    # Clock offsets: noted for every device, stored only where the estimate is news.
    record: dict[str, float] = {}
    for device_id in known:
        row, held = rows[device_id], latest[device_id]
        if held.retained:
            continue
        arrived = datetime.fromtimestamp(held.arrived + arrival_shift_s, UTC)
        estimate = offsets.add(device_id, arrived, held.sent)
        settled = offsets.settled(device_id, settle_s)
        # Stored once it stands (clocks.SETTLE_S); a device never measured takes its first
        # estimate at once (as for every other message, server.adapters.bridge).
        value = settled if settled is not None else estimate if row.clock_offset_s is None else None
        if value is not None and clocks.needs_record(row.clock_offset_s, row.clock_measured_at, value, now):
            record[device_id] = value
    # Through the ORM, loaded in one query: a device coming back online (its machine's offline
    # downtime ends) and one whose clock offset is stored (a clock_skew fault may go with it).
    orm = sorted({i for i in known if not rows[i].online} | set(record))
    if orm:
        with db.no_autoflush:
            for device in db.scalars(select(Device).where(one_of(db, Device.id, orm)).order_by(Device.id)):
                if not device.online:
                    device.online = True
                    device.last_seen = now
                if device.id in record:
                    clocks.record(db, device, record[device.id], now)
    for device_id in known:
        row, held = rows[device_id], latest[device_id]
        session = sessions.get(row.machine_id) if row.machine_id is not None else None
        if held.energy is not None and session is not None:
            refused = energy.settle(session, held.energy)
            if refused is not None:
                done.refused.append(
                    (
                        device_id,
                        ProtocolError(
                            "implausible_energy",
                            f"energy_wh jumped to {held.energy.first.counter_wh} Wh since "
                            f"session {session.id}'s last reading: nothing of its window counted",
                        ),
                    )
                )
        done.messages += held.messages
        done.devices += 1
    return done


def _open_sessions(db: Session, machine_ids: Iterable[int | None]) -> dict[int, MachineSession]:
    """The open session of each machine whose device measured energy in this window, locked
    (PostgreSQL) so that two bridges add their windows one after the other."""
    machines = sorted({m for m in machine_ids if m is not None})
    if not machines:
        return {}
    found: dict[int, MachineSession] = {}
    for session in db.scalars(
        select(MachineSession)
        .where(one_of(db, MachineSession.machine_id, machines), MachineSession.ended_at.is_(None))
        .order_by(MachineSession.machine_id, MachineSession.started_at)
        .with_for_update()
    ):
        found[session.machine_id] = session  # the newest, should a lost one still be open
    return found


def _lock_free(
    db: Session, known: list[str], rows: dict[str, Any], latest: dict[str, Latest]
) -> tuple[list[str], dict[int, MachineSession]]:
    """Lock, without waiting, the rows a window writes for ``known`` devices: theirs, their
    machines' and, where energy was measured, the machines' open sessions (each in the order of
    the ids). Returns the devices all of whose rows are now held, and those sessions."""
    locked_devices = set(
        db.scalars(
            select(Device.id)
            .where(one_of(db, Device.id, known))
            .order_by(Device.id)
            .with_for_update(skip_locked=True)
        )
    )
    machines = sorted({rows[i].machine_id for i in known if i in locked_devices} - {None})
    locked_machines = (
        set(
            db.scalars(
                select(Machine.id)
                .where(one_of(db, Machine.id, machines))
                .order_by(Machine.id)
                .with_for_update(skip_locked=True)
            )
        )
        if machines
        else set()
    )
    free = [
        i
        for i in known
        if i in locked_devices and (rows[i].machine_id is None or rows[i].machine_id in locked_machines)
    ]
    metering = sorted({rows[i].machine_id for i in free if latest[i].energy is not None} - {None})
    if not metering:
        return free, {}
    # Each machine's open session (the newest, should a lost one still be open) read without
    # a lock, then locked: one not returned is held by another transaction (or has just
    # ended), and its machine's energy waits for the next window.
    newest: dict[int, str] = {}
    for machine_id, session_id in db.execute(
        select(MachineSession.machine_id, MachineSession.id)
        .where(one_of(db, MachineSession.machine_id, metering), MachineSession.ended_at.is_(None))
        .order_by(MachineSession.machine_id, MachineSession.started_at)
    ):
        newest[machine_id] = session_id
    sessions: dict[int, MachineSession] = {}
    if newest:
        for session in db.scalars(
            select(MachineSession)
            .where(one_of(db, MachineSession.id, sorted(newest.values())), MachineSession.ended_at.is_(None))
            .order_by(MachineSession.id)
            .with_for_update(skip_locked=True)
        ):
            sessions[session.machine_id] = session
    waiting = set(newest) - set(sessions)
    return [i for i in free if latest[i].energy is None or rows[i].machine_id not in waiting], sessions
