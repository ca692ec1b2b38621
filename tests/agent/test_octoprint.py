"""The ``octoprint`` monitor against a real OctoPrint 1.11.8 with its bundled Virtual Printer.

OctoPrint runs from ``.venv-octoprint`` (``sh tests/agent/install_octoprint.sh``); without it these
tests fail, naming that command. One OctoPrint serves the whole run (fixture ``octoprint_server``).
"""

from __future__ import annotations

import math
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
from device_agent.hardware.monitors import create_monitor
from device_agent.hardware.octoprint import OctoPrintMonitor
from server.broker import free_port
from tests.agent.helpers import ADA, Responder, make_config, relay_closed, wait_until
from tests.agent.monitor_helpers import EventLog
from tests.agent.octoprint_server import OctoPrintServer, PortProxy, gcode


def make_monitor(url: str, api_key: str, **settings: Any) -> OctoPrintMonitor:
    options: dict[str, Any] = {"poll_s": 0.2, "timeout_s": 2.0, "retry_max_s": 0.8, **settings}
    return OctoPrintMonitor(url=url, api_key=api_key, **options)


@pytest.fixture
def monitor(octoprint: OctoPrintServer) -> Iterator[OctoPrintMonitor]:
    made = make_monitor(octoprint.url, octoprint.api_key)
    yield made
    made.close()


def test_octoprint_print_reports_job_progress_and_completion(
    octoprint: OctoPrintServer, monitor: OctoPrintMonitor
) -> None:
    analysis = octoprint.upload("bracket.gcode", gcode(30))  # about 3 s on the Virtual Printer
    log = EventLog(monitor)
    assert monitor.wait_ready(5) and not monitor.running()
    octoprint.print_file("bracket.gcode")

    (started,) = log.wait(MonitorJobStarted)
    assert started.kind == "print" and started.file == "bracket.gcode"
    assert started.estimated_s == pytest.approx(analysis["estimatedPrintTime"])
    log.wait_running(True)
    deadline = time.monotonic() + 10
    while not any(r.progress and r.temps for r in log.of(MonitorReadings)):
        assert time.monotonic() < deadline, log.events
        time.sleep(0.05)
    reading = next(r for r in log.of(MonitorReadings) if r.progress and r.temps)
    assert 0 < reading.progress <= 100  # type: ignore[operator]
    assert reading.temps is not None and reading.temps["tool0"]["target"] == 200.0

    (finished,) = log.wait(MonitorJobFinished, timeout=20)
    assert finished.status == "completed"
    assert 1.5 < finished.duration_s < 15
    assert finished.filament_mm == 30.0 == analysis["filament"]["tool0"]["length"]
    grams = 30.0 * math.pi * 0.875**2 / 1000 * 1.24
    assert finished.filament_g == pytest.approx(grams, abs=0.01)
    assert not monitor.running()
    assert log.of(MonitorReadings)[-1] == MonitorReadings(), "no progress once the job is over"
    assert log.of(MonitorFault) == []


def test_octoprint_cancelled_print(octoprint: OctoPrintServer, monitor: OctoPrintMonitor) -> None:
    octoprint.upload("long.gcode", gcode(200))  # about 20 s: cancelled long before
    log = EventLog(monitor)
    octoprint.print_file("long.gcode")
    log.wait(MonitorJobStarted)
    log.wait_running(True)
    time.sleep(1.0)
    octoprint.client.cancel()
    (finished,) = log.wait(MonitorJobFinished, timeout=15)
    assert finished.status == "cancelled"
    assert finished.filament_mm is not None and 0 < finished.filament_mm < 200
    assert 0.8 < finished.duration_s < 10
    assert not monitor.running()


def test_octoprint_unreachable_is_a_fault_and_the_job_survives_it(octoprint: OctoPrintServer) -> None:
    proxy = PortProxy(octoprint.port, free_port()).up()
    monitor = make_monitor(proxy.url, octoprint.api_key)
    try:
        log = EventLog(monitor)
        octoprint.upload("hook.gcode", gcode(40))  # about 4 s
        octoprint.print_file("hook.gcode")
        log.wait(MonitorJobStarted)
        log.wait_running(True)

        proxy.down()  # OctoPrint's port refuses connections from now on
        (fault,) = log.wait(MonitorFault, timeout=10)
        assert fault.code == "octoprint_unreachable" and proxy.url in fault.detail
        assert monitor.running(), "the print counts as running while OctoPrint cannot be asked"
        time.sleep(1.0)
        assert len(log.of(MonitorFault)) == 1, "one fault, then quiet retries with back-off"

        proxy.up()
        (cleared,) = log.wait(MonitorFaultCleared, timeout=10)
        assert cleared.code == "octoprint_unreachable"
        (finished,) = log.wait(MonitorJobFinished, timeout=20)
        assert finished.status == "completed" and len(log.of(MonitorJobStarted)) == 1
    finally:
        monitor.close()
        proxy.down()


def test_octoprint_lost_for_too_long_gives_the_job_up(octoprint: OctoPrintServer) -> None:
    proxy = PortProxy(octoprint.port, free_port()).up()
    monitor = make_monitor(proxy.url, octoprint.api_key, lost_hold_s=0.6)
    try:
        log = EventLog(monitor)
        octoprint.upload("long.gcode", gcode(200))
        octoprint.print_file("long.gcode")
        log.wait_running(True)
        proxy.down()
        (finished,) = log.wait(MonitorJobFinished, timeout=10)
        assert finished.status == "failed" and not monitor.running()
        proxy.up()
        # Still printing after all: seen as a job again, with the time it had already run.
        again = log.wait(MonitorJobStarted, count=2, timeout=10)[-1]
        assert again.file == "long.gcode" and again.elapsed_s >= 1
    finally:
        monitor.close()
        proxy.down()


def test_octoprint_dead_port_and_wrong_key_are_faults(octoprint: OctoPrintServer) -> None:
    dead = make_monitor(f"http://127.0.0.1:{free_port()}", octoprint.api_key)
    wrong_key = make_monitor(octoprint.url, "X" * 32)
    try:
        assert dead.wait_ready(5) and wrong_key.wait_ready(5), "a failed first reading counts as one"
        (fault,) = EventLog(dead).wait(MonitorFault)
        assert fault.code == "octoprint_unreachable" and not dead.running()
        (refused,) = EventLog(wrong_key).wait(MonitorFault)
        assert refused.code == "octoprint_api_key_rejected"
    finally:
        dead.close()
        wrong_key.close()


def test_octoprint_monitor_from_config_reads_the_key_file(tmp_path: Path, octoprint: OctoPrintServer) -> None:
    key_file = tmp_path / "octoprint.key"
    key_file.write_text(octoprint.api_key + "\n")
    config = make_config(
        tmp_path,
        "mqtt://127.0.0.1:1",
        monitor={
            "backend": "octoprint",
            "octoprint_url": octoprint.url,
            "octoprint_api_key_file": str(key_file),
        },
    )
    assert config.octoprint_api_key == octoprint.api_key
    monitor = create_monitor(config)
    try:
        assert isinstance(monitor, OctoPrintMonitor) and monitor.wait_ready(5)
        assert EventLog(monitor).of(MonitorFault) == []
    finally:
        monitor.close()


def test_octoprint_session_defers_tap_out_until_the_print_completes(
    tmp_path: Path,
    mqtt_url: str,
    octoprint: OctoPrintServer,
    start_agent: Callable[..., Agent],
    responder: Responder,
    pins: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Agent, "TELEMETRY_S", 0.2)
    octoprint.upload("bracket.gcode", gcode(40))  # about 4 s
    monitor = {
        "backend": "octoprint",
        "octoprint_url": octoprint.url,
        "octoprint_api_key": octoprint.api_key,
        "poll_s": 0.2,
    }
    agent = start_agent(make_config(tmp_path, mqtt_url, monitor=monitor))
    session = agent.tap(ADA).session
    octoprint.print_file("bracket.gcode")
    (started,) = responder.wait_event("job_started", timeout=10)
    assert started.session == session and started.file == "bracket.gcode" and started.kind == "print"
    assert responder.wait_for(
        lambda: any(t["running"] and t.get("progress") for t in responder.telemetry), timeout=5
    ), "progress in telemetry"
    assert agent.tap(ADA).outcome == "deferred"
    responder.wait_event("lock_deferred")
    assert relay_closed(pins)

    (finished,) = responder.wait_event("job_finished", timeout=20)
    assert finished.job == started.job and finished.status == "completed" and finished.filament_mm == 40.0
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.run_s > 1.5
    assert wait_until(lambda: not relay_closed(pins))
