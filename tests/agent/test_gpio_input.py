"""The ``gpio_input`` monitor (one file: device_agent/hardware/gpio_input.py): a machine's busy
signal on a gpiozero mock pin, its config keys and checks, and a laser session that waits for it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.config import ConfigError
from device_agent.hardware.base import MonitorJobFinished, MonitorJobStarted
from device_agent.hardware.gpio_input import GpioInputMonitor
from device_agent.hardware.monitors import create_monitor
from tests.agent.helpers import ADA, Responder, make_config, relay_closed, wait_until
from tests.agent.monitor_helpers import EventLog

BUSY_PIN = 5  # BCM 5, header pin 29: free in the pin map
FAST: dict[str, Any] = {"poll_s": 0.05, "min_on_s": 0.1, "min_off_s": 0.2, "job_gap_s": 0.6}


@pytest.fixture
def monitor(pins: MockFactory) -> Iterator[GpioInputMonitor]:
    made = GpioInputMonitor(BUSY_PIN, **FAST)
    yield made
    made.close()


def test_gpio_input_busy_signal_is_a_job_from_first_run_to_the_gap(
    pins: MockFactory, monitor: GpioInputMonitor
) -> None:
    signal = pins.pin(BUSY_PIN)
    assert monitor.wait_ready(5)
    log = EventLog(monitor)
    time.sleep(0.2)
    assert not monitor.running(), "the pull-up holds an idle line high"

    signal.drive_low()  # the optocoupler conducts: the machine works
    (started,) = log.wait(MonitorJobStarted)
    assert started.kind == "cut" and monitor.running()
    signal.drive_high()  # a short pause between two passes
    time.sleep(0.3)
    signal.drive_low()
    time.sleep(0.2)
    assert log.of(MonitorJobFinished) == [], "a pause shorter than job_gap_s stays one job"

    signal.drive_high()
    (finished,) = log.wait(MonitorJobFinished, timeout=5)
    assert finished.status == "completed" and finished.duration_s >= 0.5
    assert not monitor.running()


def test_gpio_input_active_high_line_and_job_kind(pins: MockFactory) -> None:
    made = GpioInputMonitor(BUSY_PIN, active="high", job_kind="print", **FAST)
    try:
        assert made.wait_ready(5)
        log = EventLog(made)
        time.sleep(0.2)
        assert not made.running(), "pulled down: idle while low"
        pins.pin(BUSY_PIN).drive_high()
        (started,) = log.wait(MonitorJobStarted)
        assert started.kind == "print"
    finally:
        made.close()


def test_gpio_input_config_needs_a_free_pin(tmp_path: Path, pins: MockFactory) -> None:
    with pytest.raises(ConfigError) as missing:
        make_config(tmp_path, "mqtt://127.0.0.1:1", monitor={"backend": "gpio_input"})
    assert '[monitor] busy_pin: "gpio_input" needs the GPIO' in str(missing.value)

    with pytest.raises(ConfigError) as spi:
        make_config(tmp_path, "mqtt://127.0.0.1:1", monitor={"backend": "gpio_input", "busy_pin": 8})
    assert "[monitor] busy_pin: GPIO 8" in str(spi.value) and "reserved" in str(spi.value)

    with pytest.raises(ConfigError) as twice:
        make_config(tmp_path, "mqtt://127.0.0.1:1", monitor={"backend": "gpio_input", "busy_pin": 22})
    assert "already used" in str(twice.value), "GPIO 22 is the green LED's"

    with pytest.raises(ConfigError) as level:
        make_config(
            tmp_path,
            "mqtt://127.0.0.1:1",
            monitor={"backend": "gpio_input", "busy_pin": 5, "busy_active": "up"},
        )
    assert "[monitor] busy_active" in str(level.value) and "low, high" in str(level.value)

    config = make_config(tmp_path, "mqtt://127.0.0.1:1", monitor={"backend": "gpio_input", "busy_pin": 5})
    made = create_monitor(config)
    try:
        assert isinstance(made, GpioInputMonitor) and made.pin == 5
    finally:
        made.close()


def test_gpio_input_laser_session_locks_only_when_the_machine_is_idle(
    tmp_path: Path,
    mqtt_url: str,
    start_agent: Callable[..., Agent],
    responder: Responder,
    pins: MockFactory,
) -> None:
    config = make_config(tmp_path, mqtt_url, monitor={"backend": "gpio_input", "busy_pin": BUSY_PIN, **FAST})
    agent = start_agent(config)
    session = agent.tap(ADA).session
    pins.pin(BUSY_PIN).drive_low()
    (started,) = responder.wait_event("job_started")
    assert started.session == session and started.kind == "cut"
    time.sleep(0.25)
    assert agent.tap(ADA).outcome == "deferred", "never cut the power mid-job"
    responder.wait_event("lock_deferred")

    pins.pin(BUSY_PIN).drive_high()
    (finished,) = responder.wait_event("job_finished", timeout=5)
    assert finished.job == started.job and finished.status == "completed"
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.run_s > 0.1
    assert wait_until(lambda: not relay_closed(pins))
