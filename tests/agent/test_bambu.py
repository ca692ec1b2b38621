"""The ``bambu`` monitor against a Bambu printer's LAN MQTT: a private Mosquitto with a TLS
listener and a test CA (the certificate names the serial, as the printer's does) and a peer of
the printer's firmware publishing reports (tests/agent/peers/bambu.py), each its own process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import ConfigError, parse_config
from device_agent.hardware.bambu import BambuMonitor
from device_agent.hardware.base import (
    MonitorFault,
    MonitorFaultCleared,
    MonitorJobFinished,
    MonitorJobStarted,
    MonitorReadings,
)
from device_agent.hardware.monitors import create_monitor
from tests.agent.bambu_printer import ACCESS_CODE, SERIAL, BambuPrinter
from tests.agent.helpers import ADA, Responder, make_config, wait_until
from tests.agent.monitor_helpers import EventLog
from tests.agent.peers import PeerProcess
from tests.agent.test_config import minimal


@pytest.fixture
def printer() -> Iterator[BambuPrinter]:
    made = BambuPrinter().start()
    yield made
    made.stop()


def make_monitor(printer: BambuPrinter, **settings: Any) -> BambuMonitor:
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": printer.port,
        "serial": SERIAL,
        "access_code": ACCESS_CODE,
        "ca_file": str(printer.ca_file),
        "poll_s": 0.2,
        "timeout_s": 3.0,
        "retry_max_s": 0.8,
    }
    return BambuMonitor(**{**options, **settings})


@pytest.mark.parametrize("full_reports", [False, True], ids=["p1-deltas", "x1-full"])
def test_bambu_print_reports_job_progress_temperatures_and_completion(full_reports: bool) -> None:
    printer = BambuPrinter(full_reports=full_reports).start()
    monitor = make_monitor(printer)
    log = EventLog(monitor)
    try:
        assert monitor.wait_ready(5)
        time.sleep(0.5)
        assert log.of(MonitorFault) == [] and not monitor.running()
        printer.send("print Cube_PLA_0.2mm 3")
        reported = time.monotonic()
        (started,) = log.wait(MonitorJobStarted)
        assert time.monotonic() - reported < 1.5
        assert (
            started.kind == "print" and started.file == "Cube_PLA_0.2mm" and started.estimated_s is not None
        )
        log.wait_running(True)
        assert wait_until(lambda: any(r.progress and r.temps for r in log.of(MonitorReadings)), 5)
        reading = next(r for r in log.of(MonitorReadings) if r.progress and r.temps)
        assert reading.temps is not None
        assert reading.temps["tool0"] == {"actual": 219.6, "target": 220.0}
        assert reading.temps["bed"] == {"actual": 54.8, "target": 55.0}
        assert reading.temps["chamber"]["actual"] == 24.0
        (finished,) = log.wait(MonitorJobFinished, timeout=10)
        assert finished.status == "completed" and 2 < finished.duration_s < 6
        assert finished.filament_mm is None, "the printer does not report filament"
        assert not monitor.running()
    finally:
        monitor.close()
        printer.stop()


def test_bambu_pause_stop_and_failure(printer: BambuPrinter) -> None:
    monitor = make_monitor(printer)
    log = EventLog(monitor)
    try:
        printer.send("print Bracket 60")
        log.wait(MonitorJobStarted)
        log.wait_running(True)
        time.sleep(0.5)  # past PREPARE (heating, levelling): pausing needs a running print
        printer.send("pause")
        log.wait_running(False)
        time.sleep(0.5)
        assert log.of(MonitorJobFinished) == []
        printer.send("resume")
        log.wait_running(True)
        printer.send("stop")  # stopped at the printer's screen
        (cancelled,) = log.wait(MonitorJobFinished, timeout=5)
        assert cancelled.status == "cancelled"
        printer.send("print Vase 60")
        log.wait(MonitorJobStarted, count=2)
        printer.send("fail")
        failed = log.wait(MonitorJobFinished, count=2, timeout=5)[-1]
        assert failed.status == "failed"
    finally:
        monitor.close()


def test_bambu_agent_restart_mid_print_gets_the_full_state_by_pushall(printer: BambuPrinter) -> None:
    printer.send("print Long_Print 60")
    time.sleep(1.0)  # the printer has sent its deltas already; a new client needs pushall
    monitor = make_monitor(printer)
    try:
        (started,) = EventLog(monitor).wait(MonitorJobStarted, timeout=5)
        assert started.file == "Long_Print" and started.elapsed_s >= 0.5
    finally:
        monitor.close()


def test_bambu_wrong_access_code_and_foreign_certificate_are_faults(
    printer: BambuPrinter, tmp_path: Path
) -> None:
    from tests.agent.bambu_printer import make_ca

    other_ca, _, _ = make_ca(tmp_path / "other", "Some Other CA", SERIAL)
    wrong_code = make_monitor(printer, access_code="87654321")
    foreign = make_monitor(printer, ca_file=str(other_ca))
    other_printer = make_monitor(printer, serial="01P00A999999999")
    try:
        (fault,) = EventLog(wrong_code).wait(MonitorFault, timeout=5)
        assert fault.code == "bambu_access_code_rejected" and "bambu_access_code" in fault.detail
        (fault,) = EventLog(foreign).wait(MonitorFault, timeout=5)
        assert fault.code == "bambu_certificate_rejected"
        (fault,) = EventLog(other_printer).wait(MonitorFault, timeout=5)
        assert fault.code == "bambu_certificate_rejected" and SERIAL in fault.detail
    finally:
        for monitor in (wrong_code, foreign, other_printer):
            monitor.close()


def test_bambu_printer_off_the_network_is_a_fault_and_the_job_survives(printer: BambuPrinter) -> None:
    monitor = make_monitor(printer)
    log = EventLog(monitor)
    try:
        printer.send("print Gear 8")
        log.wait(MonitorJobStarted)
        printer.stop_broker()
        (fault,) = log.wait(MonitorFault, timeout=5)
        assert fault.code == "bambu_unreachable" and monitor.running()
        printer.start_broker()
        (cleared,) = log.wait(MonitorFaultCleared, timeout=15)
        assert cleared.code == "bambu_unreachable"
        (finished,) = log.wait(MonitorJobFinished, timeout=15)
        assert finished.status == "completed" and len(log.of(MonitorJobStarted)) == 1
    finally:
        monitor.close()


def test_bambu_config(tmp_path: Path, printer: BambuPrinter) -> None:
    data = minimal(tmp_path)
    data["monitor"] = {"backend": "bambu", "bambu_serial": "01s00c1"}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    labels = [e.split(":")[0] for e in info.value.errors]
    assert labels == ["[monitor] bambu_serial", "[monitor] bambu_host", "[monitor] bambu_access_code"], (
        info.value.errors
    )
    (tmp_path / "code").write_text(ACCESS_CODE + "\n")
    data["monitor"] = {
        "backend": "bambu",
        "bambu_host": "127.0.0.1",
        "bambu_port": printer.port,
        "bambu_serial": SERIAL,
        "bambu_access_code_file": str(tmp_path / "code"),
        "bambu_ca_file": str(printer.ca_file),
    }
    monitor = create_monitor(parse_config(data))
    try:
        assert isinstance(monitor, BambuMonitor) and monitor.wait_ready(5)
        time.sleep(0.3)
        assert EventLog(monitor).of(MonitorFault) == []
    finally:
        monitor.close()


def test_bambu_printer_on_a_shelly_plug_in_a_session(
    tmp_path: Path,
    mqtt_url: str,
    printer: BambuPrinter,
    start_agent: Callable[..., Agent],
    responder: Responder,
) -> None:
    plug = PeerProcess("plugs", "shelly").start()
    try:
        plug.control("load?w=140")
        config = make_config(
            tmp_path,
            mqtt_url,
            switch={"backend": "shelly", "url": plug.url},
            monitor={
                "backend": "bambu",
                "bambu_host": "127.0.0.1",
                "bambu_port": printer.port,
                "bambu_serial": SERIAL,
                "bambu_access_code": ACCESS_CODE,
                "bambu_ca_file": str(printer.ca_file),
            },
        )
        agent = start_agent(config)
        agent.tap(ADA)
        assert wait_until(lambda: plug.control("state")["output"] == [True], 1.0)
        printer.send("print Phone_Stand 4")
        at_printer = time.monotonic()
        (started,) = responder.wait_event("job_started", timeout=10)
        assert time.monotonic() - at_printer < 5.0 and started.file == "Phone_Stand"
        assert agent.tap(ADA).outcome == "deferred"
        (finished,) = responder.wait_event("job_finished", timeout=15)
        assert finished.status == "completed"
        (ended,) = responder.wait_event("session_ended", timeout=5)
        assert ended.reason == "tap_out"
        assert wait_until(lambda: plug.control("state")["output"] == [False], 1.0)
    finally:
        plug.stop()
