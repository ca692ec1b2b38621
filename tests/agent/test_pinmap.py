"""The pin map (werkbank_protocol/pinmap.toml): its data, the config check built on it, its docs."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from device_agent.config import ConfigError, load_config
from tests.agent.helpers import make_config
from werkbank_protocol.pinmap import (
    PinMapError,
    check_pins,
    load_pinmap,
    parse_pinmap,
    render_header,
    render_table,
)

ROOT = Path(__file__).resolve().parents[2]


def test_pinmap_lists_every_header_pin_and_gpio_once() -> None:
    pinmap = load_pinmap()
    assert [p.header for p in pinmap.pins] == list(range(1, 41))
    assert sorted(p.bcm for p in pinmap.pins if p.bcm is not None) == list(range(28))
    # The wiring of hardware/README.md, spot-checked against the Pi's pinout.
    assert pinmap.by_header(24).bcm == 8 and pinmap.by_header(24).function == "spi0_ce0"
    assert pinmap.by_header(26).bcm == 7 and pinmap.by_header(26).function == "spi0_ce1"
    assert pinmap.by_header(22).bcm == 25 and pinmap.by_header(22).policy == "reserved"
    assert pinmap.by_header(11).bcm == 17 and pinmap.by_header(1).function == "3v3"


def test_pinmap_defaults_are_the_example_configs_pins() -> None:
    defaults = load_pinmap().defaults()
    assert defaults == {
        "relay": {"pin": 17},
        "indicators": {"red_pin": 27, "green_pin": 22, "amber_pin": 23, "buzzer_pin": 24},
    }
    example = tomllib.loads((ROOT / "firmware_config/examples/simulated-printer.toml").read_text())
    assert example["relay"]["pin"] == defaults["relay"]["pin"]
    assert {k: v for k, v in example["indicators"].items() if k in defaults["indicators"]} == (
        defaults["indicators"]
    )


def test_pinmap_defaults_pass_the_config_check(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    defaults = load_pinmap().defaults()
    with caplog.at_level(logging.WARNING, logger="werkbank_protocol.pinmap"):
        config = make_config(tmp_path, "mqtt://127.0.0.1:1883", **defaults)
    assert config.relay_pin == 17 and config.indicators_buzzer_pin == 24
    assert caplog.records == []


@pytest.mark.parametrize(
    ("bcm", "why"),
    [(7, "SPI0 CE1"), (8, "SPI0 CE0"), (9, "MISO"), (10, "MOSI"), (11, "SCLK"), (25, "reset line")],
)
def test_pinmap_spi_and_reader_reset_pins_are_refused(tmp_path: Path, bcm: int, why: str) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, "mqtt://127.0.0.1:1883", relay={"pin": bcm})
    (problem,) = err.value.errors
    assert problem.startswith(f"[relay] pin: GPIO {bcm} (header pin ") and "is reserved" in problem
    assert why in problem and "free GPIOs: 4, 5, 6" in problem


def test_pinmap_reserved_pin_on_an_led_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_config(tmp_path, "mqtt://127.0.0.1:1883", indicators={"buzzer_pin": 25})
    assert any(
        e.startswith("[indicators] buzzer_pin: GPIO 25 (header pin 22) is reserved") for e in err.value.errors
    )


@pytest.mark.parametrize(
    ("bcm", "what"),
    [(2, "I2C1 SDA"), (3, "I2C1 SCL"), (14, "TXD"), (15, "RXD"), (0, "ID EEPROM"), (1, "ID EEPROM")],
)
def test_pinmap_i2c_uart_and_id_pins_only_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, bcm: int, what: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="werkbank_protocol.pinmap"):
        config = make_config(tmp_path, "mqtt://127.0.0.1:1883", relay={"pin": bcm})
    assert config.relay_pin == bcm
    (record,) = caplog.records
    assert (
        record.getMessage().startswith(f"[relay] pin: GPIO {bcm} (header pin ")
        and what in record.getMessage()
    )


def test_pinmap_counts_pin_keys_a_backend_adds() -> None:
    # A key the schema does not know yet (say a reader backend's reset pin) is checked by name.
    report = check_pins({"relay.pin": 17, "reader.reset_pin": 17, "monitor.alert_pin": 8})
    assert (
        report.errors[0]
        == "[reader] reset_pin: GPIO 17 is already used by [relay] pin; give each part its own pin"
    )
    assert report.errors[1].startswith("[monitor] alert_pin: GPIO 8 (header pin 24) is reserved")


def test_pinmap_a_broken_map_is_refused() -> None:
    good = tomllib.loads((ROOT / "werkbank_protocol/pinmap.toml").read_text())
    twice = {"pin": [*good["pin"], good["pin"][0]]}
    with pytest.raises(PinMapError, match="each header pin 1-40 exactly once"):
        parse_pinmap(twice)
    unexplained = {"pin": [dict(p, why="") if p["header"] == 24 else p for p in good["pin"]]}
    with pytest.raises(PinMapError, match="header pin 24: a reserved pin needs a `why`"):
        parse_pinmap(unexplained)


def test_pinmap_a_config_file_is_checked_against_it(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nid = "pi-x"\nmachine = "x"\n[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n'
        f'[allowlist]\nkey = "{"ab" * 32}"\n[storage]\ndir = "state"\n[reader]\nbackend = "simulated"\n'
        "[relay]\npin = 11\n[indicators]\ngreen_pin = 11\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.errors == [
        "[relay] pin: GPIO 11 (header pin 23) is reserved: it is SPI0 SCLK, wired to the RC522 reader and "
        "the MCP3008; free GPIOs: 4, 5, 6, 12, 13, 16, 18, 19, 20, 21, 26",
        "[indicators] green_pin: GPIO 11 is already used by [relay] pin; give each part its own pin",
    ]


def test_pinmap_docs_in_hardware_readme_are_current() -> None:
    readme = (ROOT / "hardware" / "README.md").read_text()
    assert render_table() in readme, "regenerate with: python -m werkbank_protocol.pinmap --table"
    assert render_header() in readme, "regenerate with: python -m werkbank_protocol.pinmap --header"


def test_pinmap_ships_inside_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "pinmap.toml" in pyproject["tool"]["setuptools"]["package-data"]["werkbank_protocol"]
