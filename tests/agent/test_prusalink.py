"""The ``prusalink`` monitor against a faithful PrusaLink peer (tests/agent/peers/prusalink.py,
built from PrusaLink's OpenAPI description; digest login) run as its own process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.config import ConfigError, parse_config
from device_agent.hardware.base import (
    MonitorFault,
    MonitorFaultCleared,
    MonitorJobFinished,
    MonitorJobStarted,
    MonitorReadings,
)
from device_agent.hardware.monitors import create_monitor
from device_agent.hardware.prusalink import PrusaLinkMonitor
from tests.agent.helpers import ADA, Responder, make_config, relay_closed, wait_until
from tests.agent.monitor_helpers import EventLog
from tests.agent.peers import PeerProcess
from tests.agent.test_config import minimal

PASSWORD = "aBcD3fGh1jKlMn"


@pytest.fixture
def printer() -> Iterator[PeerProcess]:
    peer = PeerProcess("prusalink", "--password", PASSWORD, "--api-key", "k3y-0f-old-firmware").start()
    yield peer
    peer.stop()


def make_monitor(url: str, **settings: Any) -> PrusaLinkMonitor:
    options: dict[str, Any] = {"password": PASSWORD, "poll_s": 0.2, "timeout_s": 2.0, "retry_max_s": 0.8}
    return PrusaLinkMonitor(url=url, **{**options, **settings})


def test_prusalink_print_reports_file_estimate_progress_and_filament(printer: PeerProcess) -> None:
    monitor = make_monitor(printer.url)
    log = EventLog(monitor)
    try:
        assert monitor.wait_ready(5) and not monitor.running() and log.of(MonitorFault) == []
        printer.send("print Spice_Harvester_0.4n_PETG_MK4.bgcode 3 1200 36.5")
        seen = time.monotonic()
        (started,) = log.wait(MonitorJobStarted)
        assert time.monotonic() - seen < 1.0
        assert started.file == "Spice_Harvester_0.4n_PETG_MK4.bgcode" and started.estimated_s == 3
        log.wait_running(True)
        assert wait_until(lambda: any(r.progress and r.temps for r in log.of(MonitorReadings)), 5)
        reading = next(r for r in log.of(MonitorReadings) if r.progress and r.temps)
        assert reading.temps == {
            "tool0": {"actual": 229.6, "target": 230.0},
            "bed": {"actual": 84.9, "target": 85.0},
        }
        (finished,) = log.wait(MonitorJobFinished, timeout=10)
        assert finished.status == "completed"
        assert finished.filament_mm == 1200.0 and finished.filament_g == 36.5
        assert 2 <= finished.duration_s <= 5
        assert not monitor.running()
        printer.send("clear")  # the sheet is taken off: IDLE, and no second job
        time.sleep(0.5)
        assert len(log.of(MonitorJobStarted)) == 1 and len(log.of(MonitorJobFinished)) == 1
    finally:
        monitor.close()


def test_prusalink_runout_pause_and_stop(printer: PeerProcess) -> None:
    monitor = make_monitor(printer.url)
    log = EventLog(monitor)
    try:
        printer.send("print benchy.bgcode 30 4000 120")
        log.wait(MonitorJobStarted)
        log.wait_running(True)
        printer.send("attention")  # the filament ran out: the printer waits for someone
        log.wait_running(False)
        time.sleep(0.5)
        assert log.of(MonitorJobFinished) == [], "a print waiting for someone is still a job"
        printer.send("resume")
        log.wait_running(True)
        time.sleep(0.6)
        printer.send("stop")
        (finished,) = log.wait(MonitorJobFinished, timeout=5)
        assert finished.status == "cancelled"
        assert finished.filament_mm is not None and 0 < finished.filament_mm < 4000 * 0.5
        assert finished.filament_g is not None and 0 < finished.filament_g < 120 * 0.5
    finally:
        monitor.close()


def test_prusalink_error_is_a_failed_job(printer: PeerProcess) -> None:
    monitor = make_monitor(printer.url)
    log = EventLog(monitor)
    try:
        printer.send("print clip.bgcode 30 400 12")
        log.wait(MonitorJobStarted)
        printer.send("error")
        (finished,) = log.wait(MonitorJobFinished, timeout=5)
        assert finished.status == "failed"
    finally:
        monitor.close()


def test_prusalink_api_key_and_wrong_password(printer: PeerProcess) -> None:
    by_key = make_monitor(printer.url, password=None, api_key="k3y-0f-old-firmware")
    wrong = make_monitor(printer.url, password="guess")
    try:
        assert by_key.wait_ready(5) and wrong.wait_ready(5)
        assert EventLog(by_key).of(MonitorFault) == []
        (fault,) = EventLog(wrong).wait(MonitorFault)
        assert fault.code == "prusalink_auth_rejected" and "401" in fault.detail
    finally:
        by_key.close()
        wrong.close()


def test_prusalink_hung_printer_is_a_fault_and_comes_back(printer: PeerProcess) -> None:
    monitor = make_monitor(printer.url, timeout_s=0.5)
    log = EventLog(monitor)
    try:
        printer.send("print hook.bgcode 4 300 9")
        log.wait(MonitorJobStarted)
        printer.pause()
        (fault,) = log.wait(MonitorFault, timeout=5)
        assert fault.code == "prusalink_unreachable" and monitor.running()
        printer.resume()
        log.wait(MonitorFaultCleared, timeout=5)
        (finished,) = log.wait(MonitorJobFinished, timeout=10)
        assert finished.status == "completed" and len(log.of(MonitorJobStarted)) == 1
    finally:
        monitor.close()


def test_prusalink_config(tmp_path: Path, printer: PeerProcess) -> None:
    data = minimal(tmp_path)
    data["monitor"] = {"backend": "prusalink"}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert [e.split(":")[0] for e in info.value.errors] == [
        "[monitor] prusalink_url",
        "[monitor] prusalink_password",
    ]
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    data["monitor"] = {
        "backend": "prusalink",
        "prusalink_url": printer.url,
        "prusalink_password_file": str(tmp_path / "pw"),
    }
    monitor = create_monitor(parse_config(data))
    try:
        assert isinstance(monitor, PrusaLinkMonitor) and monitor.wait_ready(5)
        assert EventLog(monitor).of(MonitorFault) == []
    finally:
        monitor.close()


def test_prusalink_session_on_a_relay_defers_the_lock(
    tmp_path: Path,
    mqtt_url: str,
    printer: PeerProcess,
    start_agent: Callable[..., Agent],
    responder: Responder,
    pins: MockFactory,
) -> None:
    monitor = {
        "backend": "prusalink",
        "prusalink_url": printer.url,
        "prusalink_password": PASSWORD,
        "poll_s": 0.5,
    }
    agent = start_agent(make_config(tmp_path, mqtt_url, monitor=monitor, session={"idle_timeout_s": 2.0}))
    agent.tap(ADA)
    printer.send("print bracket.bgcode 6 800 24")
    at_printer = time.monotonic()
    (started,) = responder.wait_event("job_started", timeout=10)
    assert time.monotonic() - at_printer < 5.0 and started.file == "bracket.bgcode"
    time.sleep(2.5)
    assert relay_closed(pins), "the idle timeout waits: the printer prints"
    (finished,) = responder.wait_event("job_finished", timeout=15)
    assert finished.status == "completed" and finished.filament_g == 24.0
    (ended,) = responder.wait_event("session_ended", timeout=5)
    assert ended.reason == "idle_timeout"
    assert wait_until(lambda: not relay_closed(pins))
