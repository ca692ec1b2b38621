"""Bookings at the machine, end to end: a real broker, the real bridge on a real database, a real
agent on mock pins (relay, LEDs, buzzer), bookings made and cancelled through the booking service.

The bridge and the agent share one hand-moved clock (tests/agent/helpers.ManualClock): a booking's
start and end, the warning before it and the bridge's lock come without any waiting for them.
On the laser, Quinn holds the bookings; Pete (independent on the laser, no trainer there) is the
other qualified person.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta
from itertools import pairwise

import pytest
from sqlalchemy import func, select

from device_agent.agent import Agent
from device_agent.config import load_config
from device_agent.hardware.base import MachineMonitor
from device_agent.hardware.gpio import GpioIndicators
from server.adapters.bridge import Bridge
from server.models import (
    AccessDecision,
    AuditLog,
    Booking,
    Device,
    Machine,
    MachineSession,
    Person,
    StoredEvent,
)
from server.services import booking_locks, bookings
from server.services.provisioning import agent_config
from tests.agent.helpers import ManualClock
from tests.agent.monitor_helpers import ControlledMonitor
from tests.conftest import PETE
from tests.e2e.conftest import System, eventually
from werkbank_protocol import format_ts

QUINN = "04A224B2C35E80"
LASER = "pi-laser-1"
RELAY, GREEN, RED, BUZZER = 27, 5, 6, 13


@pytest.fixture(autouse=True)
def quick_lights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GpioIndicators, "WARN_BLINK_S", 0.02)
    monkeypatch.setattr(GpioIndicators, "PENDING_BLINK_S", 0.05)


# -- helpers -------------------------------------------------------------------------------------
def _start(system: System, clock: ManualClock, monitor: MachineMonitor | None = None) -> Agent:
    """The bridge (if not running) and the laser's agent with LEDs and a buzzer, on ``clock``."""
    if system.bridge is None:
        _start_bridge(system, clock)
    with system.db.session() as s:
        row = s.get(Device, LASER)
        assert row is not None
        text = agent_config(
            row,
            system.mqtt_url,
            system.tmp / LASER,
            sections={
                "relay": {"pin": RELAY},
                "indicators": {"green_pin": GREEN, "red_pin": RED, "buzzer_pin": BUZZER},
                "session": {"tap_out_grace_s": 0, "warn_before_end_s": 300},
            },
        )
    path = system.tmp / f"{LASER}.toml"
    path.write_text(text)
    agent = Agent(load_config(path), clock=clock, monitor=monitor)
    agent.start()
    assert agent.wait_connected(5)
    system.agents[LASER] = agent
    return agent


def _start_bridge(system: System, clock: ManualClock) -> Bridge:
    system.bridge = Bridge(
        system.db,
        system.mqtt_url,
        client_id=f"bridge-{uuid.uuid4().hex[:6]}",
        clock=clock.now,
        booking_interval=0.1,
    ).start()
    return system.bridge


def _grid_start(clock: ManualClock, lead_min: int = 60) -> datetime:
    """A start on the booking grid (every 30 minutes) at least ``lead_min`` from now."""
    now = clock.now().replace(second=0, microsecond=0)
    return now + timedelta(minutes=30 - now.minute % 30 + lead_min)


def _go(clock: ManualClock, when: datetime) -> None:
    clock.advance((when - clock.now()).total_seconds())


def _book(system: System, name: str, start: datetime, end: datetime, clock: ManualClock) -> str:
    """Book the laser for ``name`` through the booking service (Tina, a trainer, books it)."""
    with system.db.session() as s:
        person = s.scalar(select(Person).where(Person.name == name))
        tina = s.scalar(select(Person).where(Person.name == "Tina Trainer"))
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert person is not None and tina is not None and laser is not None
        return bookings.create(s, person, laser, start, end, actor=tina, now=clock.now()).id


def _cancel(system: System, booking_id: str, clock: ManualClock) -> None:
    with system.db.session() as s:
        booking = s.get(Booking, booking_id)
        tina = s.scalar(select(Person).where(Person.name == "Tina Trainer"))
        assert booking is not None and tina is not None
        bookings.cancel(s, booking, tina, clock.now())


def _relay_closed(system: System) -> bool:
    return system.pins.pin(RELAY).state is False  # active-low


def _answer(system: System, session_id: str) -> dict[str, object]:
    """What the bridge answered to the tap that opened ``session_id`` (the decision log is
    written a few milliseconds after the answer went out: docs/performance.md)."""

    def logged() -> AccessDecision | None:
        with system.db.session() as s:
            return s.scalar(select(AccessDecision).where(AccessDecision.session_id == session_id))

    assert eventually(lambda: logged() is not None)
    row = logged()
    assert row is not None
    return dict(row.response)


def _end_reason(system: System, session_id: str) -> str | None:
    with system.db.session() as s:
        row = s.get(MachineSession, session_id)
        return row.end_reason if row is not None else None


def _events(system: System, kind: str, session_id: str) -> int:
    with system.db.session() as s:
        return int(
            s.scalar(
                select(func.count(StoredEvent.id)).where(
                    StoredEvent.type == kind, StoredEvent.session_id == session_id
                )
            )
            or 0
        )


def _locks_sent(system: System) -> int:
    with system.db.session() as s:
        return int(
            s.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == booking_locks.AUDIT_ACTION))
            or 0
        )


def _blinks(system: System, pin: int) -> int:
    states = [s.state for s in system.pins.pin(pin).states]
    return sum(1 for before, after in pairwise(states) if after and not before)


def _live(system: System, session_id: str) -> bool:
    with system.db.session() as s:
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        return laser is not None and laser.live_session_id == session_id


# -- tests ---------------------------------------------------------------------------------------
def test_e2e_booking_only_its_holder_gets_in_warned_and_locked_at_its_end(trainer_system: System) -> None:
    system = trainer_system
    clock = ManualClock()
    agent = _start(system, clock)
    start = _grid_start(clock)
    end = start + timedelta(minutes=60)
    _book(system, "Quinn Qualified", start, end, clock)
    _go(clock, start + timedelta(minutes=1))

    other = agent.tap(PETE)
    assert (other.outcome, other.reason) == ("denied", "booked_by_other")
    assert other.message["en"].startswith("This machine is booked. It is free again at ")
    assert other.message["de"].startswith("Diese Maschine ist gebucht. Wieder frei ab ")
    assert not _relay_closed(system), "the relay stays open"

    holder = agent.tap(QUINN)
    assert holder.outcome == "unlocked" and holder.session is not None and _relay_closed(system)
    answer = _answer(system, holder.session)
    assert (answer["until"], answer["until_reason"]) == (format_ts(end), "booking")

    time.sleep(0.25)  # the unlock beep is over
    system.pins.pin(RED).clear_states()
    system.pins.pin(BUZZER).clear_states()
    _go(clock, end - timedelta(seconds=301))
    time.sleep(0.2)
    assert _blinks(system, RED) == 0, "no warning yet"
    _go(clock, end - timedelta(seconds=299))
    assert eventually(lambda: _blinks(system, RED) == 4 and _blinks(system, BUZZER) == 4), "the warning"
    assert _relay_closed(system)

    _go(clock, end)
    assert eventually(lambda: not _relay_closed(system) and agent.state == "locked")
    assert eventually(lambda: _end_reason(system, holder.session) == "booking_end")
    assert _blinks(system, RED) == 4, "warned once"
    assert _locks_sent(system) == 0, "the holder's own session needs no lock from the bridge"


def test_e2e_booking_end_during_a_job_waits_for_the_job(trainer_system: System) -> None:
    system = trainer_system
    clock = ManualClock()
    monitor = ControlledMonitor()
    agent = _start(system, clock, monitor)
    start = _grid_start(clock)
    end = start + timedelta(minutes=30)
    _book(system, "Quinn Qualified", start, end, clock)
    _go(clock, start)
    holder = agent.tap(QUINN)
    assert holder.outcome == "unlocked" and holder.session is not None
    monitor.start_job(kind="cut", file="sign.svg")
    assert eventually(lambda: agent.job_id is not None)

    _go(clock, end + timedelta(seconds=1))
    assert eventually(lambda: _events(system, "lock_deferred", holder.session) == 1)
    time.sleep(0.2)
    assert _relay_closed(system) and agent.state == "draining", "never cut power mid-job"
    monitor.finish_job()
    assert eventually(lambda: not _relay_closed(system))
    assert eventually(lambda: _end_reason(system, holder.session) == "booking_end")


def test_e2e_booking_walk_in_before_someones_booking_is_locked_at_its_start(trainer_system: System) -> None:
    system = trainer_system
    clock = ManualClock()
    agent = _start(system, clock)
    start = _grid_start(clock)
    _book(system, "Quinn Qualified", start, start + timedelta(minutes=60), clock)
    _go(clock, start - timedelta(minutes=10))

    walk_in = agent.tap(PETE)
    assert walk_in.outcome == "unlocked" and walk_in.session is not None
    answer = _answer(system, walk_in.session)
    assert (answer["until"], answer["until_reason"]) == (format_ts(start), "booking")

    _go(clock, start)
    assert eventually(lambda: not _relay_closed(system))
    assert eventually(lambda: _end_reason(system, walk_in.session) == "booking_end")
    assert agent.tap(QUINN).outcome == "unlocked", "the machine is free for its holder"


def test_e2e_booking_made_after_the_walk_in_tapped_the_bridge_locks_at_its_start(
    trainer_system: System,
) -> None:
    system = trainer_system
    clock = ManualClock()
    monitor = ControlledMonitor()
    agent = _start(system, clock, monitor)
    walk_in = agent.tap(PETE)  # no booking yet: until the laser's maximum session, two hours
    assert walk_in.outcome == "unlocked" and walk_in.session is not None
    assert _answer(system, walk_in.session)["until_reason"] is None
    start = _grid_start(clock, lead_min=30)  # 30 to 60 minutes from now, inside Pete's two hours
    _book(system, "Quinn Qualified", start, start + timedelta(minutes=60), clock)
    assert eventually(lambda: _live(system, walk_in.session))
    monitor.start_job(kind="cut")
    assert eventually(lambda: agent.job_id is not None)

    _go(clock, start - timedelta(seconds=1))
    time.sleep(0.4)
    assert _locks_sent(system) == 0 and agent.state == "running"
    _go(clock, start)
    assert eventually(lambda: _locks_sent(system) == 1), "the bridge sends the lock at the start"
    assert eventually(lambda: _events(system, "lock_deferred", walk_in.session) == 1)
    assert _relay_closed(system) and agent.state == "draining", "not forced: the cut goes on"

    # Once per booking, also across a bridge restart (it checks the audit log, not its memory).
    system.stop_bridge()
    _start_bridge(system, clock)
    time.sleep(0.5)
    assert _locks_sent(system) == 1

    monitor.finish_job()
    assert eventually(lambda: not _relay_closed(system))
    assert eventually(lambda: _end_reason(system, walk_in.session) == "booking_end")
    assert agent.tap(QUINN).outcome == "unlocked"


def test_e2e_booking_cancelled_while_its_holders_session_runs(trainer_system: System) -> None:
    system = trainer_system
    clock = ManualClock()
    agent = _start(system, clock)
    start = _grid_start(clock)
    end = start + timedelta(minutes=60)
    booking_id = _book(system, "Quinn Qualified", start, end, clock)
    _go(clock, start + timedelta(minutes=1))
    holder = agent.tap(QUINN)
    assert holder.outcome == "unlocked" and holder.session is not None

    _cancel(system, booking_id, clock)
    _go(clock, end - timedelta(seconds=1))
    time.sleep(0.3)
    assert _relay_closed(system) and agent.session_id == holder.session, "never cut: it runs to its until"
    assert agent.tap(PETE).reason == "in_use"

    _go(clock, end)
    assert eventually(lambda: not _relay_closed(system))
    assert eventually(lambda: _end_reason(system, holder.session) == "booking_end")
    after = agent.tap(PETE)
    assert after.outcome == "unlocked" and after.session is not None, "free for others after it ends"
    assert _answer(system, after.session)["until_reason"] is None
    assert _locks_sent(system) == 0
