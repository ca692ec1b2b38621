"""The ``[monitor]`` config keys: defaults, checks, and the example configs for a printer and a laser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from device_agent.config import ConfigError, load_config, parse_config
from device_agent.hardware.monitors import NoMonitor, create_monitor
from tests.agent.test_config import ROOT, minimal


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def test_monitor_config_defaults_to_no_monitor(tmp_path: Path) -> None:
    config = parse_config(minimal(tmp_path))
    assert config.monitor_backend == "none" and config.monitor_poll_s == 2.0
    assert config.monitor_retry_max_s == 60.0 and config.monitor_lost_hold_s == 300.0
    assert config.option("monitor_octoprint_url") == "http://127.0.0.1:5000"
    assert config.octoprint_api_key is None
    current = ("monitor_adc_device", "monitor_threshold_a", "monitor_release_a")
    assert [config.option(k) for k in current] == [1, 0.5, 0.3]
    assert isinstance(create_monitor(config), NoMonitor)


def test_monitor_config_octoprint_needs_one_api_key(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["monitor"] = {"backend": "octoprint"}
    (error,) = errors_of(data)
    assert error.startswith("[monitor] octoprint_api_key: missing") and "Application Keys" in error

    (tmp_path / "key").write_text("abc\n")
    data["monitor"] = {
        "backend": "octoprint",
        "octoprint_api_key": "abc",
        "octoprint_api_key_file": str(tmp_path / "key"),
    }
    (error,) = errors_of(data)
    assert error.startswith("[monitor] octoprint_api_key_file: set either")

    del data["monitor"]["octoprint_api_key"]
    config = parse_config(data)
    assert config.octoprint_api_key == "abc"
    data["monitor"]["octoprint_api_key"] = "changed"
    del data["monitor"]["octoprint_api_key_file"]
    assert (
        parse_config(data).hash
        == parse_config({**data, "monitor": {**data["monitor"], "octoprint_api_key": "x"}}).hash
    ), "the key is a secret: not in the config hash"


@pytest.mark.parametrize(
    ("monitor", "fragment"),
    [
        (
            {"backend": "printer"},
            "[monitor] backend: is 'printer'; use one of: none, bambu, current, gpio_input, moonraker,"
            " octoprint, power, prusalink",
        ),
        ({"octoprint_url": "127.0.0.1:5000"}, "[monitor] octoprint_url: must be OctoPrint's address"),
        ({"adc_device": 2}, "[monitor] adc_device: is 2; use a value from 0 to 1"),
        ({"adc_channel": 8}, "[monitor] adc_channel: is 8; use a value from 0 to 7"),
        (
            {"threshold_a": 0.5, "release_a": 0.5},
            "[monitor] release_a: is 0.5 A; it must be below threshold_a",
        ),
        ({"poll_s": 0}, "[monitor] poll_s: is 0.0 s"),
        ({"mains_v": "230"}, '[monitor] mains_v: is "230"; it must be a number'),
    ],
)
def test_monitor_config_bad_values(tmp_path: Path, monitor: dict[str, Any], fragment: str) -> None:
    data = minimal(tmp_path)
    data["monitor"] = monitor
    errors = errors_of(data)
    assert any(e.startswith(fragment) for e in errors), errors


def test_monitor_config_example_files_are_valid() -> None:
    printer = load_config(ROOT / "firmware_config" / "examples" / "octoprint-printer.toml")
    assert printer.monitor_backend == "octoprint" and printer.octoprint_api_key
    assert printer.session_idle_timeout_s == 900
    laser = load_config(ROOT / "firmware_config" / "examples" / "laser-current.toml")
    assert laser.monitor_backend == "current" and laser.option("monitor_adc_device") == 1
    assert laser.option("monitor_release_a") < laser.option("monitor_threshold_a")


def test_monitor_config_smart_plug_and_printer_examples_are_valid() -> None:
    bambu = load_config(ROOT / "firmware_config" / "examples" / "bambu-on-shelly.toml")
    assert (bambu.switch_backend, bambu.monitor_backend) == ("shelly", "bambu")
    assert bambu.option("monitor_bambu_serial") and bambu.option("switch_url").startswith("http://")
    prusa = load_config(ROOT / "firmware_config" / "examples" / "prusa-on-relay.toml")
    assert (prusa.switch_backend, prusa.monitor_backend, prusa.relay_pin) == ("gpio", "prusalink", 17)
    laser = load_config(ROOT / "firmware_config" / "examples" / "laser-shelly-pro.toml")
    assert (laser.switch_backend, laser.monitor_backend) == ("shelly", "power")
    assert laser.option("monitor_release_w") < laser.option("monitor_threshold_w")
