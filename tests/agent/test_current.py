"""The ``current`` monitor: gpiozero's real MCP3008 class over an emulated MCP3008 on mock SPI pins,
with a clamp's 50 Hz signal on its input; and a laser session with it in the agent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.hardware.base import (
    MonitorFault,
    MonitorFaultCleared,
    MonitorJobFinished,
    MonitorJobStarted,
    MonitorReadings,
)
from device_agent.hardware.current import CurrentMonitor
from device_agent.hardware.monitors import create_monitor
from tests.agent.helpers import ADA, Responder, make_config, relay_closed, wait_until
from tests.agent.mcp3008_emulator import MockMCP3008
from tests.agent.monitor_helpers import EventLog

# Fast but faithful: every reading samples 40 ms (two 50 Hz cycles), every 50 ms.
FAST: dict[str, Any] = {
    "poll_s": 0.05,
    "window_s": 0.04,
    "min_on_s": 0.1,
    "min_off_s": 0.2,
    "job_gap_s": 0.6,
    "threshold_a": 0.5,
    "release_a": 0.25,
    "retry_max_s": 0.2,
}


@pytest.fixture
def chip(pins: MockFactory) -> MockMCP3008:
    """The MCP3008 on SPI0 CE1 (GPIO7), as wired next to an RC522 on CE0."""
    return MockMCP3008(device=1)


@pytest.fixture
def monitor(chip: MockMCP3008) -> Iterator[CurrentMonitor]:
    made = CurrentMonitor(**FAST)
    yield made
    made.close()


def test_current_idle_clamp_reads_no_current(chip: MockMCP3008, monitor: CurrentMonitor) -> None:
    assert monitor.wait_ready(5)
    log = EventLog(monitor)
    readings = log.wait(MonitorReadings, count=3)
    assert all(r.power_w is not None and r.power_w < 230 * 0.05 for r in readings)
    assert not monitor.running() and log.of(MonitorJobStarted) == []
    assert chip.reads > 10, "gpiozero's MCP3008 really read the emulated chip"


def test_current_a_cut_is_one_job_over_several_passes(chip: MockMCP3008, monitor: CurrentMonitor) -> None:
    log = EventLog(monitor)
    assert monitor.wait_ready(5)
    started = time.monotonic()
    chip.set_current(2.0)
    log.wait_running(True)
    (job,) = log.wait(MonitorJobStarted)
    assert job.kind == "cut" and job.file is None
    power = log.of(MonitorReadings)[-1].power_w
    assert power is not None and 420 < power < 500, f"230 V x 2 A = 460 W, read {power} W"

    chip.set_current(0.38)  # below threshold_a but above release_a: hysteresis keeps it running
    time.sleep(0.4)
    assert monitor.running()
    chip.set_current(0.0)
    log.wait_running(False)
    chip.set_current(2.0)  # the next pass, within job_gap_s: the same job
    log.wait_running(True)
    chip.set_current(0.0)
    stopped = time.monotonic()
    (finished,) = log.wait(MonitorJobFinished, timeout=5)
    assert time.monotonic() - stopped >= 0.6 - 0.05, "job_gap_s after the current fell"
    assert finished.status == "completed"
    assert 0.5 < finished.duration_s <= stopped - started + 0.1, finished
    assert len(log.of(MonitorJobStarted)) == 1


def test_current_below_threshold_or_a_blip_is_not_running(chip: MockMCP3008, pins: MockFactory) -> None:
    monitor = CurrentMonitor(**{**FAST, "min_on_s": 0.4})
    try:
        log = EventLog(monitor)
        assert monitor.wait_ready(5)
        chip.set_current(0.45)  # under threshold_a
        time.sleep(0.5)
        chip.set_current(3.0)  # a blip shorter than min_on_s
        time.sleep(0.15)
        chip.set_current(0.0)
        time.sleep(0.5)
        assert log.of(MonitorJobStarted) == [] and not monitor.running()
    finally:
        monitor.close()


def test_current_sensor_at_a_rail_is_a_fault_until_it_reads_again(
    chip: MockMCP3008, monitor: CurrentMonitor
) -> None:
    log = EventLog(monitor)
    chip.set_raw(0)  # the bias divider came loose
    (fault,) = log.wait(MonitorFault)
    assert fault.code == "current_sensor_failed" and "bias" in fault.detail
    time.sleep(0.3)
    assert len(log.of(MonitorFault)) == 1, "one fault, retried quietly with back-off"
    chip.set_raw(512)
    (cleared,) = log.wait(MonitorFaultCleared, timeout=5)
    assert cleared.code == "current_sensor_failed"


def test_current_monitor_from_config(tmp_path: Path, chip: MockMCP3008) -> None:
    config = make_config(tmp_path, "mqtt://127.0.0.1:1", monitor={"backend": "current", **FAST})
    monitor = create_monitor(config)
    try:
        assert isinstance(monitor, CurrentMonitor) and monitor.job_gap_s == 0.6
        assert monitor.wait_ready(5)
    finally:
        monitor.close()


def test_current_laser_session_locks_only_when_the_cut_is_over(
    tmp_path: Path,
    mqtt_url: str,
    chip: MockMCP3008,
    start_agent: Callable[..., Agent],
    responder: Responder,
    pins: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Agent, "TELEMETRY_S", 0.1)
    config = make_config(tmp_path, mqtt_url, monitor={"backend": "current", **FAST})
    agent = start_agent(config)  # the agent makes its CurrentMonitor from the config
    session = agent.tap(ADA).session
    chip.set_current(3.0)  # the laser cuts
    (started,) = responder.wait_event("job_started")
    assert started.session == session and started.kind == "cut"
    assert responder.wait_for(
        lambda: any(t["running"] and t.get("power_w", 0) > 600 for t in responder.telemetry), timeout=3
    ), "telemetry: 230 V x 3 A"
    time.sleep(0.25)
    assert agent.tap(ADA).outcome == "deferred"
    responder.wait_event("lock_deferred")

    chip.set_current(0.0)  # the cut is over; the job ends job_gap_s later
    time.sleep(0.3)
    assert relay_closed(pins), "no lock between two passes"
    (finished,) = responder.wait_event("job_finished", timeout=5)
    assert finished.job == started.job and finished.status == "completed"
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.run_s > 0.2
    assert wait_until(lambda: not relay_closed(pins))
