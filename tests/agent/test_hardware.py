"""Hardware backends on gpiozero's mock pins, the simulated reader and the backend registry."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device_agent.hardware import HardwareError, create_reader, reader_backends
from device_agent.hardware.gpio import GpioIndicators, GpioRelay, configure_pin_factory
from device_agent.hardware.monitors import NoMonitor
from device_agent.hardware.simulated import SimulatedReader
from tests.agent.helpers import make_config, wait_until


@pytest.mark.parametrize(("active_high", "closed_level"), [(False, False), (True, True)])
def test_hardware_relay_starts_open_and_follows_polarity(
    pins: MockFactory, active_high: bool, closed_level: bool
) -> None:
    relay = GpioRelay(17, active_high=active_high)
    assert not relay.is_closed and pins.pin(17).state is (not closed_level)
    relay.close()
    assert relay.is_closed and pins.pin(17).state is closed_level
    relay.open()
    assert not relay.is_closed and pins.pin(17).state is (not closed_level)
    relay.release()


def test_hardware_indicator_patterns(pins: MockFactory) -> None:
    lights = GpioIndicators(green=22, red=27, amber=23, buzzer=24)
    lights.unlocked()
    assert pins.pin(22).state is True
    lights.offline(True)
    assert pins.pin(23).state is True
    lights.offline(False)
    lights.locked()
    assert pins.pin(22).state is False and pins.pin(23).state is False

    pins.pin(27).clear_states()
    lights.denied()
    # Three blinks of the red LED: on/off three times, then it stays off.
    assert wait_until(
        lambda: [s.state for s in pins.pin(27).states].count(True) == 3 and not pins.pin(27).state
    )
    time.sleep(0.3)
    assert [s.state for s in pins.pin(27).states].count(True) == 3, "and no more"

    lights.fault()
    assert wait_until(lambda: [s.state for s in pins.pin(27).states].count(True) >= 5), "keeps blinking"
    lights.locked()
    assert pins.pin(27).state is False

    lights.unlocked()
    pins.pin(22).clear_states()
    lights.identify()
    assert wait_until(lambda: [s.state for s in pins.pin(22).states].count(False) >= 5, timeout=5)
    assert wait_until(lambda: pins.pin(22).state is True), "green steady again after identifying"
    lights.release()


def test_hardware_indicators_without_pins_do_nothing(pins: MockFactory) -> None:
    lights = GpioIndicators()
    for show in (lights.unlocked, lights.denied, lights.fault, lights.identify, lights.locked):
        show()
    lights.offline(True)
    lights.release()
    assert pins.pins == {}


def test_hardware_simulated_reader_reports_each_badge_once_in_order() -> None:
    reader = SimulatedReader()
    assert reader.poll() is None
    assert reader.present("04a1b2c3") == 1
    feeder = threading.Thread(target=reader.present, args=("04B0B0B0",))
    feeder.start()
    feeder.join()
    assert [reader.poll(), reader.poll(), reader.poll()] == ["04A1B2C3", "04B0B0B0", None]


def test_hardware_reader_registry(tmp_path: Path) -> None:
    assert "simulated" in reader_backends()
    config = make_config(tmp_path, "mqtt://127.0.0.1:1")
    assert isinstance(create_reader(config), SimulatedReader)
    with pytest.raises(HardwareError, match="no reader backend 'gpio'"):
        create_reader(config.replace(reader_backend="gpio"))


def test_hardware_pin_factory_set_by_tests_is_kept(pins: MockFactory) -> None:
    configure_pin_factory("lgpio")
    assert Device.pin_factory is pins
    assert NoMonitor().running() is False
