"""A session's `until` at the agent: booking_end or max_duration, the "ending soon" warning, and
the lock at `until` deferred while a job runs. A hand-moved clock: no waiting for timers.

The server is the real-broker stand-in (Responder); relay, lights and buzzer are gpiozero
devices on MockFactory pins (red LED 27, buzzer 24, relay 17), the machine the
MachineMonitor's own test double.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.hardware.gpio import GpioIndicators
from tests.agent.helpers import ADA, ManualClock, Responder, make_config, relay_closed, wait_until
from tests.agent.monitor_helpers import ControlledMonitor
from werkbank_protocol import format_ts

StartAgent = Callable[..., Agent]
RED, BUZZER = 27, 24


@pytest.fixture(autouse=True)
def quick_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GpioIndicators, "WARN_BLINK_S", 0.02)
    monkeypatch.setattr(GpioIndicators, "PENDING_BLINK_S", 0.05)


def _blinks(pins: MockFactory, pin: int) -> int:
    """How often the pin went on (high) since its states were last cleared."""
    states = [s.state for s in pins.pin(pin).states]
    return sum(1 for before, after in pairwise(states) if after and not before)


def _until_in(seconds: float, clock: ManualClock) -> str:
    return format_ts(clock.now() + timedelta(seconds=seconds))


def _booked_session(
    start_agent: StartAgent, responder: Responder, clock: ManualClock, seconds: float
) -> tuple[Agent, ControlledMonitor, str]:
    """ADA allowed until a booking begins or ends ``seconds`` from now."""
    responder.answers[ADA] = ("allow", "ok", _until_in(seconds, clock))
    responder.until_reasons[ADA] = "booking"
    monitor = ControlledMonitor()
    agent = start_agent(clock=clock, monitor=monitor)
    decision = agent.tap(ADA)
    assert decision.outcome == "unlocked" and decision.session is not None
    return agent, monitor, decision.session


def test_booking_end_until_of_a_booking_warns_once_then_ends_with_booking_end(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    clock = ManualClock()
    agent, _monitor, session = _booked_session(start_agent, responder, clock, 600)
    saved = agent.outbox.open_session()
    assert saved is not None and saved.until_reason == "booking", "kept for a restart"
    time.sleep(0.25)  # the unlock beep is over
    pins.pin(RED).clear_states()
    pins.pin(BUZZER).clear_states()

    clock.advance(290)  # 310 s left: no warning yet (default warn_before_end_s = 300)
    time.sleep(0.2)
    assert _blinks(pins, RED) == 0 and _blinks(pins, BUZZER) == 0

    clock.advance(20)  # 290 s left
    assert wait_until(lambda: _blinks(pins, RED) == 4 and _blinks(pins, BUZZER) == 4)
    assert pins.pin(22).state is True, "green stays on: the machine still has power"
    assert agent.last_message == {
        "de": "Ihre Zeit endet in 5 Min. Bitte zum Ende kommen: Danach sperrt die Maschine.",
        "en": "Your time ends in 5 min. Please finish: then the machine locks.",
    }
    assert relay_closed(pins) and agent.state == "unlocked"
    clock.advance(100)
    time.sleep(0.3)
    assert _blinks(pins, RED) == 4, "the warning is given once"

    clock.advance(200)  # until reached
    (ended,) = responder.wait_event("session_ended")
    assert (ended.session, ended.reason) == (session, "booking_end")
    assert not relay_closed(pins) and agent.state == "locked"


@pytest.mark.parametrize(("warn_s", "warned"), [(0.0, False), (120.0, True)])
def test_booking_end_max_duration_warning_follows_warn_before_end_s(
    tmp_path: Path,
    mqtt_url: str,
    start_agent: StartAgent,
    responder: Responder,
    pins: MockFactory,
    warn_s: float,
    warned: bool,
) -> None:
    clock = ManualClock()
    responder.answers[ADA] = ("allow", "ok", _until_in(600, clock))  # no until_reason: max_duration
    config = make_config(tmp_path, mqtt_url, session={"tap_out_grace_s": 0.2, "warn_before_end_s": warn_s})
    agent = start_agent(config, clock=clock)
    session = agent.tap(ADA).session
    time.sleep(0.25)  # the unlock beep is over
    pins.pin(RED).clear_states()
    pins.pin(BUZZER).clear_states()
    clock.advance(481)  # 119 s left
    if warned:
        assert wait_until(lambda: _blinks(pins, RED) == 4)
    else:
        time.sleep(0.3)
        assert _blinks(pins, RED) == 0 and _blinks(pins, BUZZER) == 0
    clock.advance(120)
    (ended,) = responder.wait_event("session_ended")
    assert (ended.session, ended.reason) == (session, "max_duration")


def test_booking_end_session_starting_inside_the_warning_time_is_warned_at_once(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    # A walk-in 2 minutes before someone's booking.
    clock = ManualClock()
    _agent, _monitor, _session = _booked_session(start_agent, responder, clock, 120)
    assert wait_until(lambda: _blinks(pins, RED) == 4 and _blinks(pins, BUZZER) >= 4)


def test_booking_end_at_until_mid_job_waits_for_the_job(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    clock = ManualClock()
    agent, monitor, session = _booked_session(start_agent, responder, clock, 600)
    monitor.start_job()
    responder.wait_event("job_started")
    clock.advance(601)
    (deferred,) = responder.wait_event("lock_deferred")
    assert deferred.session == session and deferred.why == "job_running"
    time.sleep(0.2)
    assert relay_closed(pins) and agent.state == "draining", "never mid-job"
    monitor.finish_job()
    (ended,) = responder.wait_event("session_ended")
    assert (ended.session, ended.reason) == (session, "booking_end") and not relay_closed(pins)


def test_booking_end_reason_survives_a_restart_mid_job(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    clock = ManualClock()
    config = make_config(tmp_path, mqtt_url)
    responder.answers[ADA] = ("allow", "ok", _until_in(600, clock))
    responder.until_reasons[ADA] = "booking"
    first_monitor = ControlledMonitor()
    first = start_agent(config, clock=clock, monitor=first_monitor)
    session = first.tap(ADA).session
    first_monitor.start_job()
    responder.wait_event("job_started")
    first.stop()

    second_monitor = ControlledMonitor()
    second_monitor.start_job(elapsed_s=5.0)
    second = start_agent(config, clock=clock, monitor=second_monitor)
    assert second.session_id == session and relay_closed(pins)
    clock.advance(601)
    responder.wait_event("lock_deferred")
    second_monitor.finish_job()
    (ended,) = responder.wait_event("session_ended")
    assert (ended.session, ended.reason) == (session, "booking_end") and not relay_closed(pins)
    assert datetime.now(UTC) < clock.now(), "the hand-moved clock, not the real one"
