"""The agent's safety rules: never cut power mid-job unless forced; restarts never interrupt a job.

The machine is the MachineMonitor interface's own test double (``ControlledMonitor``); relay
and lights are gpiozero devices on MockFactory pins, the server is a real MQTT client on the
real broker. The same rules over real monitors: test_current.py and test_octoprint.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device_agent.agent import LOCAL_MESSAGES, Agent
from device_agent.hardware.gpio import GpioIndicators
from tests.agent.helpers import (
    ADA,
    BOB,
    ManualClock,
    Responder,
    make_config,
    relay_closed,
    session_on_disk,
    wait_until,
)
from tests.agent.monitor_helpers import ControlledMonitor
from werkbank_protocol import format_ts, parse_ts

StartAgent = Callable[..., Agent]


@pytest.fixture(autouse=True)
def quick_blink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GpioIndicators, "PENDING_BLINK_S", 0.05)


def started_job(agent: Agent, monitor: ControlledMonitor, responder: Responder, **job: object) -> object:
    monitor.start_job(**job)  # type: ignore[arg-type]
    (started,) = responder.wait_event("job_started")
    assert wait_until(lambda: agent.job_id == started.job)
    return started


def test_safety_tap_out_during_a_job_waits_for_its_end(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    monitor = ControlledMonitor()
    agent = start_agent(monitor=monitor)
    device = agent.config.device_id
    session = agent.tap(ADA).session
    started = started_job(agent, monitor, responder)
    assert started.session == session and started.kind == "print"  # type: ignore[attr-defined]
    assert started.file == "bracket.gcode" and started.estimated_s == 600  # type: ignore[attr-defined]
    assert wait_until(lambda: agent.state == "running")
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1].get("state") == "running")

    time.sleep(0.25)  # past the tap-out grace
    decision = agent.tap(ADA)
    assert (decision.outcome, decision.reason) == ("deferred", "job_running")
    assert decision.message == {
        "de": "Auftrag läuft: Die Maschine sperrt, sobald er fertig ist.",
        "en": "Job running: the machine locks when it ends.",
    }
    (deferred,) = responder.wait_event("lock_deferred")
    assert deferred.session == session and deferred.why == "job_running"
    assert relay_closed(pins) and agent.state == "draining"
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1].get("state") == "draining")
    green = pins.pin(22)
    green.clear_states()
    assert wait_until(lambda: [s.state for s in green.states].count(True) >= 2), "green blinks: lock pending"

    assert agent.tap(ADA).outcome == "deferred", "tapping again changes nothing"
    time.sleep(0.2)
    assert relay_closed(pins) and len(responder.events_of("lock_deferred")) == 1, "lock_deferred once"

    monitor.finish_job(duration_s=42.0)
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.session == session
    assert not relay_closed(pins) and agent.state == "locked"
    (finished,) = responder.wait_event("job_finished")
    assert finished.job == started.job and finished.session == session  # type: ignore[attr-defined]
    assert (finished.status, finished.duration_s, finished.filament_mm) == ("completed", 42.0, 1234.5)
    assert parse_ts(finished.ts) <= parse_ts(ended.ts), "the job ends before the session"
    assert wait_until(lambda: green.state is False), "lights: locked"


def test_safety_idle_timeout_counts_from_the_end_of_the_last_job(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    monitor = ControlledMonitor()
    agent = start_agent(make_config(tmp_path, mqtt_url, session={"idle_timeout_s": 0.4}), monitor=monitor)
    agent.tap(ADA)
    started_job(agent, monitor, responder)
    time.sleep(0.6)
    monitor.pause()  # a paused print is mid-job: not idle
    time.sleep(0.6)
    assert relay_closed(pins) and agent.session_id is not None
    assert responder.events_of("lock_deferred") == [], "a running job keeps the session active"
    monitor.resume()
    time.sleep(0.1)
    monitor.finish_job()
    finished_at = time.monotonic()
    (ended,) = responder.wait_event("session_ended", timeout=3)
    # Counted from the last loop tick that saw the job (up to one reader poll, 10 ms, before).
    assert ended.reason == "idle_timeout" and time.monotonic() - finished_at >= 0.38
    assert 0.6 <= ended.run_s < ended.unlocked_s, "run_s counts working time, not the pause"
    assert not relay_closed(pins)


def test_safety_idle_unlocked_machine_locks_after_its_idle_timeout(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent(
        make_config(tmp_path, mqtt_url, session={"idle_timeout_s": 0.3}), monitor=ControlledMonitor()
    )
    agent.tap(ADA)
    (ended,) = responder.wait_event("session_ended", timeout=3)
    assert ended.reason == "idle_timeout" and 0.3 <= ended.unlocked_s < 1.5 and ended.run_s == 0
    assert not relay_closed(pins) and responder.events_of("lock_deferred") == []


def test_safety_until_passing_mid_job_locks_after_the_job(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    until = datetime.now(UTC) + timedelta(seconds=0.5)
    responder.answers[ADA] = ("allow", "ok", format_ts(until))
    monitor = ControlledMonitor()
    agent = start_agent(monitor=monitor)
    session = agent.tap(ADA).session
    started_job(agent, monitor, responder)
    (deferred,) = responder.wait_event("lock_deferred", timeout=3)
    assert deferred.session == session and datetime.now(UTC) >= until
    time.sleep(0.3)
    assert relay_closed(pins) and agent.state == "draining"
    monitor.finish_job()
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "max_duration" and not relay_closed(pins)


def test_safety_remote_lock_waits_for_the_job_and_only_force_cuts_power(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    monitor = ControlledMonitor()
    agent = start_agent(monitor=monitor)
    device = agent.config.device_id
    session = agent.tap(ADA).session
    started = started_job(agent, monitor, responder)
    responder.cmd(device, "lock", session=session, reason="closing time")
    (deferred,) = responder.wait_event("lock_deferred")
    assert deferred.session == session and relay_closed(pins)

    responder.cmd(device, "lock", session=session, reason="emergency stop", force=True)
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "remote_lock" and not relay_closed(pins), "force cuts the power mid-job"
    (finished,) = responder.wait_event("job_finished")
    assert finished.job == started.job and finished.status == "cancelled"  # type: ignore[attr-defined]

    monitor.finish_job(status="failed")  # the printer noticed the power cut
    time.sleep(0.2)
    assert len(responder.events_of("job_finished")) == 1, "the job was reported ended already"
    assert agent.state == "locked"


def test_safety_booking_end_lock_uses_its_reason(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    monitor = ControlledMonitor()
    agent = start_agent(monitor=monitor)
    session = agent.tap(ADA).session
    started_job(agent, monitor, responder)
    responder.cmd(agent.config.device_id, "lock", session=session, reason="booking_end")
    responder.wait_event("lock_deferred")
    monitor.finish_job()
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "booking_end" and not relay_closed(pins)


def test_safety_job_without_a_session_is_a_fault(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    monitor = ControlledMonitor()
    agent = start_agent(monitor=monitor)
    monitor.start_job(file="from-the-printer-screen.gcode")
    (fault,) = responder.wait_event("fault")
    assert fault.code == "job_without_session" and "from-the-printer-screen.gcode" in fault.detail
    assert fault.session is None and agent.state == "fault" and not relay_closed(pins)
    monitor.finish_job()
    assert wait_until(lambda: agent.state == "locked")
    time.sleep(0.1)
    assert responder.events_of("job_started") == [] and responder.events_of("job_finished") == []
    assert agent.tap(BOB).outcome == "unlocked"


def test_safety_telemetry_carries_the_monitor_readings(
    start_agent: StartAgent, responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Agent, "TELEMETRY_S", 0.1)
    monitor = ControlledMonitor()
    agent = start_agent(monitor=monitor)
    session = agent.tap(ADA).session
    started_job(agent, monitor, responder)
    assert responder.wait_for(lambda: any(t.get("progress") == 1.0 for t in responder.telemetry), timeout=3)
    reading = next(t for t in responder.telemetry if t.get("progress") == 1.0)
    assert reading["session"] == session and reading["running"] is True
    assert reading["temps"] == {"tool0": {"actual": 200.0, "target": 200.0}}


def test_safety_restart_mid_job_resumes_the_session_and_never_toggles_the_relay(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    config = make_config(tmp_path, mqtt_url)
    first_monitor = ControlledMonitor()
    first = start_agent(config, monitor=first_monitor)
    tapped = time.monotonic()
    session = first.tap(ADA).session
    started = started_job(first, first_monitor, responder)
    relay_pin = pins.pin(17)

    first.stop()  # what SIGTERM does (werkbank-agent's signal handler calls stop())
    assert relay_pin.function == "output" and relay_pin.state is False, "relay still closed"
    # And what gpiozero does when the interpreter exits: close every device and pin it knows.
    from gpiozero.devices import _devices_shutdown

    _devices_shutdown()
    Device.pin_factory = pins
    assert relay_pin.function == "output" and relay_pin.state is False, "gpiozero's exit leaves it"
    assert [s.state for s in relay_pin.states].count(True) == 1, "opened once (at start), never since"
    saved = session_on_disk(config)
    assert saved is not None and saved.job is not None and saved.job.id == started.job  # type: ignore[attr-defined]

    # The next process: the printer is still printing, and its monitor says so on the first reading.
    second_monitor = ControlledMonitor()
    second_monitor.start_job(elapsed_s=5.0)
    second = start_agent(config, monitor=second_monitor)
    new_pin = pins.pin(17)
    assert [s.state for s in new_pin.states] == [False], "made closed: the pin never went high (open)"
    assert second.session_id == session and second.job_id == started.job  # type: ignore[attr-defined]
    assert second.state == "running" and relay_closed(pins)
    assert pins.pin(22).state is True, "green: unlocked"
    time.sleep(0.3)
    assert responder.events_of("session_ended") == [], "no power_loss_recovered"

    second_monitor.finish_job(duration_s=5.0)
    (finished,) = responder.wait_event("job_finished")
    assert finished.job == started.job and finished.status == "completed"  # type: ignore[attr-defined]
    assert finished.duration_s >= 5.0
    assert second.tap(ADA).outcome == "locked"
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.session == session
    assert ended.unlocked_s >= time.monotonic() - tapped - 0.5, "unlocked time spans both processes"
    assert len(responder.events_of("session_started")) == 1 and len(responder.events_of("job_started")) == 1
    assert not relay_closed(pins)


def test_safety_restart_keeps_a_deferred_lock(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    config = make_config(tmp_path, mqtt_url)
    first_monitor = ControlledMonitor()
    first = start_agent(config, monitor=first_monitor)
    first.tap(ADA)
    started_job(first, first_monitor, responder)
    time.sleep(0.25)
    assert first.tap(ADA).outcome == "deferred"
    responder.wait_event("lock_deferred")
    first.stop()

    second_monitor = ControlledMonitor()
    second_monitor.start_job()
    second = start_agent(config, monitor=second_monitor)
    assert second.state == "draining" and relay_closed(pins)
    second_monitor.finish_job()
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and not relay_closed(pins)
    assert len(responder.events_of("lock_deferred")) == 1


def test_safety_reboot_when_the_job_is_gone_reports_the_loss(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    config = make_config(tmp_path, mqtt_url)
    clock = ManualClock()
    first_monitor = ControlledMonitor()
    first = start_agent(config, monitor=first_monitor, clock=clock)
    session = first.tap(ADA).session
    started = started_job(first, first_monitor, responder)
    first.stop()
    saved = session_on_disk(config)
    assert saved is not None

    # The Pi lost power meanwhile (a new boot id), and so did the printer: nothing runs.
    clock.boot = "after-the-power-cut"
    second = start_agent(config, monitor=ControlledMonitor(), clock=clock)
    (lost,) = responder.wait_event("job_finished")
    assert lost.job == started.job and lost.status == "failed" and lost.ts == saved.heartbeat  # type: ignore[attr-defined]
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "power_loss_recovered" and ended.session == session
    assert not relay_closed(pins) and second.state == "locked"


def test_safety_restart_when_the_job_ended_meanwhile_carries_on_the_session(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    config = make_config(tmp_path, mqtt_url)
    first_monitor = ControlledMonitor()
    first = start_agent(config, monitor=first_monitor)
    session = first.tap(ADA).session
    started = started_job(first, first_monitor, responder)
    first.stop()

    # Same boot: the relay held, the print ended while no agent watched. The person is still there.
    second = start_agent(config, monitor=ControlledMonitor())
    (lost,) = responder.wait_event("job_finished")
    assert lost.job == started.job and lost.status == "failed", "its end was not seen"  # type: ignore[attr-defined]
    assert second.session_id == session and second.job_id is None and relay_closed(pins)
    assert second.state == "unlocked"
    time.sleep(0.25)  # past the tap-out grace, counted from the session's real start
    assert second.tap(ADA).outcome == "locked"
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.session == session and not relay_closed(pins)


def test_safety_stop_without_a_session_releases_the_relay(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent(monitor=ControlledMonitor())
    agent.tap(ADA)
    time.sleep(0.25)
    agent.tap(ADA)
    relay_pin = pins.pin(17)
    agent.stop()
    assert relay_pin.function == "input", "no session: the pin is freed as usual"
    assert uuid.UUID(responder.wait_event("session_ended")[0].session)
    assert LOCAL_MESSAGES["job_running"]["en"].startswith("Job running")
