"""The ``power`` monitor: busy detection from a metering plug's watts (a laser cutter on a Shelly
Pro 1PM, a plotter on a Tasmota plug), against the plug peers, alone and in the agent."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import ConfigError, parse_config
from device_agent.hardware.base import MonitorFault, MonitorJobFinished, MonitorJobStarted, MonitorReadings
from device_agent.hardware.monitors import create_monitor
from device_agent.hardware.power import PowerMonitor
from device_agent.hardware.shelly import ShellyPlug
from device_agent.hardware.tasmota import TasmotaPlug
from tests.agent.helpers import ADA, Responder, make_config, wait_until
from tests.agent.monitor_helpers import EventLog
from tests.agent.peers import PeerProcess
from tests.agent.test_config import minimal

FAST: dict[str, Any] = {
    "poll_s": 0.1,
    "min_on_s": 0.2,
    "min_off_s": 0.3,
    "job_gap_s": 0.8,
    "threshold_w": 200.0,
    "release_w": 60.0,
    "retry_max_s": 0.3,
}


@pytest.fixture
def plug() -> Iterator[PeerProcess]:
    peer = PeerProcess("plugs", "shelly").start()
    peer.get("/rpc/Switch.Set?id=0&on=true")  # the laser has power (a session runs)
    peer.control("load?w=35")  # idle: fans and the chiller
    yield peer
    peer.stop()


def test_power_monitor_a_cut_over_two_passes_is_one_job(plug: PeerProcess) -> None:
    monitor = PowerMonitor(ShellyPlug(plug.url), **FAST)
    log = EventLog(monitor)
    try:
        assert monitor.wait_ready(3)
        log.wait(MonitorReadings)
        assert not monitor.running()
        plug.control("load?w=120")  # above release, below threshold: still idle
        time.sleep(0.5)
        assert not monitor.running() and log.of(MonitorJobStarted) == []

        started = time.monotonic()
        plug.control("load?w=850")  # the tube fires
        log.wait_running(True, timeout=3)
        (job,) = log.wait(MonitorJobStarted)
        assert job.kind == "cut" and time.monotonic() - started < 1.0
        assert log.of(MonitorReadings)[-1].power_w == 850.0
        plug.control("load?w=100")  # between release and threshold: hysteresis keeps it running
        time.sleep(0.5)
        assert monitor.running()
        plug.control("load?w=35")
        log.wait_running(False, timeout=3)
        plug.control("load?w=850")  # the second pass, within job_gap_s
        log.wait_running(True, timeout=3)
        plug.control("load?w=35")
        (finished,) = log.wait(MonitorJobFinished, timeout=5)
        assert finished.status == "completed" and len(log.of(MonitorJobStarted)) == 1
        assert 0.6 < finished.duration_s < 5
    finally:
        monitor.close()


def test_power_monitor_plug_gone_is_a_fault(plug: PeerProcess) -> None:
    monitor = PowerMonitor(TasmotaPlug(plug.url, timeout_s=0.3), **FAST)  # a Shelly is no Tasmota
    try:
        (fault,) = EventLog(monitor).wait(MonitorFault, timeout=3)
        assert fault.code == "power_meter_failed"
    finally:
        monitor.close()


def test_power_monitor_config(tmp_path: Path, plug: PeerProcess) -> None:
    data = minimal(tmp_path)
    data["monitor"] = {"backend": "power"}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any('"power" reads the smart plug of [switch]' in e for e in info.value.errors)
    data["switch"] = {"backend": "shelly", "url": plug.url}
    data["monitor"] = {"backend": "power", "threshold_w": 40, "release_w": 40}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.errors == [
        "[monitor] release_w: is 40 W; it must be below threshold_w (40 W), or the machine would flap "
        "between running and stopped"
    ]
    data["monitor"] = {"backend": "power", "threshold_w": 300, "release_w": 80}
    monitor = create_monitor(parse_config(data))
    try:
        assert isinstance(monitor, PowerMonitor) and monitor.threshold == 300 and monitor.release == 80
        assert monitor.wait_ready(3) and not monitor.running()
    finally:
        monitor.close()


def test_power_monitor_laser_session_defers_the_lock_until_the_cut_ends(
    tmp_path: Path,
    mqtt_url: str,
    plug: PeerProcess,
    start_agent: Callable[..., Agent],
    responder: Responder,
) -> None:
    plug.get("/rpc/Switch.Set?id=0&on=false")
    config = make_config(
        tmp_path,
        mqtt_url,
        switch={"backend": "shelly", "url": plug.url, "poll_s": 0.5},
        monitor={"backend": "power", **FAST},
    )
    agent = start_agent(config)
    agent.tap(ADA)
    assert wait_until(lambda: plug.control("state")["output"] == [True], 1.0)
    reported = time.monotonic()
    plug.control("load?w=900")
    (started,) = responder.wait_event("job_started", timeout=5)
    assert started.kind == "cut" and time.monotonic() - reported < 5
    time.sleep(0.3)
    assert agent.tap(ADA).outcome == "deferred"
    responder.wait_event("lock_deferred")
    time.sleep(1.0)
    assert plug.control("state")["output"] == [True], "never off mid-cut"
    plug.control("load?w=30")
    ended_cut = time.monotonic()
    (finished,) = responder.wait_event("job_finished", timeout=5)
    assert finished.status == "completed" and time.monotonic() - ended_cut < 5
    (ended,) = responder.wait_event("session_ended", timeout=5)
    assert ended.reason == "tap_out" and ended.run_s > 0.5
    assert wait_until(lambda: plug.control("state")["output"] == [False], 1.0)
