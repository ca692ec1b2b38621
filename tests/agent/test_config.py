"""The agent's config: schema checks (all errors at once), docs generated from the schema, the hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from device_agent.config import (
    CORE_KEY_COUNT,
    SCHEMA,
    AgentConfig,
    ConfigError,
    load_config,
    parse_config,
)
from device_agent.config.__main__ import main
from device_agent.config.reference import render_docs
from tests.agent.helpers import KEY_HEX

ROOT = Path(__file__).resolve().parents[2]


def minimal(tmp_path: Path) -> dict[str, dict[str, Any]]:
    return {
        "device": {"id": "printer-dev-1", "machine": "printer-1"},
        "mqtt": {"url": "mqtt://broker.local:1883"},
        "allowlist": {"key": KEY_HEX},
        "storage": {"dir": str(tmp_path / "store")},
        "reader": {"backend": "simulated"},
    }


def errors_of(data: dict[str, Any], base: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, base)
    return info.value.errors


def test_config_minimal_gets_documented_defaults(tmp_path: Path) -> None:
    config = parse_config(minimal(tmp_path))
    assert config.mqtt_keepalive_s == 30
    assert config.server_auth_timeout_s == 1.5
    assert config.relay_pin == 17 and config.relay_active_high is False
    assert config.reader_poll_hz == 10.0
    assert config.session_idle_timeout_s == 0 and config.session_tap_out_grace_s == 2
    assert config.indicators_green_pin is None and config.gpio_pin_factory is None
    assert (tmp_path / "store").is_dir(), "the storage folder is created"


def test_config_reports_all_errors_at_once(tmp_path: Path) -> None:
    data = {
        "device": {"id": "Bad_ID"},  # bad id, machine missing
        "mqtt": {"url": "http://broker"},
        "allowlist": {"key": "xyz"},
        "relay": {"pin": 40, "active_high": "yes"},
        "reader": {"backend": "nfc-magic", "poll_hz": "10"},
        "indicators": {"green_pin": 17},
        "sesion": {"idle_timeout_s": 5},
    }
    errors = errors_of(data)
    expected = [
        "[device] id:",
        "[device] machine: missing",
        "[mqtt] url:",
        "[allowlist] key:",
        "[relay] pin: is 40",
        "[relay] active_high:",
        "[reader] backend: is 'nfc-magic'",
        "[reader] poll_hz:",
        "[sesion]: unknown section",
    ]
    for start in expected:
        assert any(e.startswith(start) for e in errors), f"no error starting {start!r} in {errors}"
    assert len(errors) == len(expected)
    # The one exception's text lists them all, for the console.
    text = str(ConfigError(errors, "agent.toml"))
    assert "agent.toml has 9 problem(s)" in text and all(e in text for e in errors)


def test_config_unknown_key_is_an_error_naming_the_known_ones(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["session"] = {"idle_timout_s": 60}
    (error,) = errors_of(data)
    assert error.startswith("[session] idle_timout_s: unknown key")
    assert "idle_timeout_s" in error


@pytest.mark.parametrize(
    ("indicators", "relay", "fragment"),
    [
        ({"red_pin": 28}, {}, "[indicators] red_pin: is 28; use a BCM GPIO number from 0 to 27"),
        ({"green_pin": 17}, {}, "[indicators] green_pin: GPIO 17 is already used by [relay] pin"),
        ({"amber_pin": 5, "buzzer_pin": 5}, {}, "[indicators] buzzer_pin: GPIO 5 is already used by"),
        ({}, {"pin": True}, "[relay] pin: is True; it must be a whole number"),
        ({}, {"pin": "17"}, '[relay] pin: is "17"; it must be a whole number (write it without quotes)'),
    ],
)
def test_config_bad_pins(
    tmp_path: Path, indicators: dict[str, Any], relay: dict[str, Any], fragment: str
) -> None:
    data = minimal(tmp_path)
    data["indicators"] = indicators
    data["relay"] = relay
    errors = errors_of(data)
    assert any(e.startswith(fragment) for e in errors), errors


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://broker:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt://", "has no host"),
        ("mqtt://broker:notaport", "bad port"),
        ("mqtt://dev:secret@broker:1883", "must not carry a user or password"),
    ],
)
def test_config_bad_url(tmp_path: Path, url: str, fragment: str) -> None:
    data = minimal(tmp_path)
    data["mqtt"]["url"] = url
    (error,) = errors_of(data)
    assert error.startswith("[mqtt] url:") and fragment in error


def test_config_tls_url_and_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    data = minimal(tmp_path)
    data["mqtt"] = {"url": "mqtts://broker.local", "ca_file": "ca.pem"}
    config = parse_config(data, tmp_path)
    assert config.mqtt_ca_file == str(ca)
    data["mqtt"] = {"url": "mqtt://broker.local", "ca_file": "missing.pem"}
    errors = errors_of(data, tmp_path)
    assert any("missing.pem does not exist" in e for e in errors)
    assert any(e.startswith("[mqtt] ca_file: only used with TLS") for e in errors)


def test_config_password_from_file_and_not_both(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("  s3cret\n")
    data = minimal(tmp_path)
    data["device"]["password_file"] = "password"
    assert parse_config(data, tmp_path).password == "s3cret"
    data["device"]["password"] = "other"
    (error,) = errors_of(data, tmp_path)
    assert error.startswith("[device] password_file: set either password or password_file")


def test_config_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    data = minimal(tmp_path)
    data["storage"]["dir"] = "state"
    text = "\n".join(
        f"[{section}]\n" + "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in body.items())
        for section, body in data.items()
    )
    (folder / "agent.toml").write_text(text)
    config = load_config(folder / "agent.toml")
    assert config.storage_dir == str(folder / "state")


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("[device\nid = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_config_hash_is_stable_and_leaves_secrets_out(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    first = parse_config(data)
    assert len(first.hash) == 16 and first.hash == parse_config(data).hash
    data["device"]["password"] = "changed"
    assert parse_config(data).hash == first.hash
    data["relay"] = {"pin": 5}
    assert parse_config(data).hash != first.hash


def test_config_schema_and_dataclass_list_the_same_keys() -> None:
    fields = [f.name for f in dataclasses.fields(AgentConfig)]
    assert [k.attr for k in SCHEMA[:CORE_KEY_COUNT]] == fields[:-1] and fields[-1] == "options"
    plugin_attrs = [k.attr for k in SCHEMA[CORE_KEY_COUNT:]]
    assert plugin_attrs and len(set(plugin_attrs)) == len(plugin_attrs), "each plug-in key once"
    assert all(k.doc and k.doc.endswith(".") and "\n" not in k.doc for k in SCHEMA)


def test_config_docs_file_is_generated_from_the_schema() -> None:
    committed = (ROOT / "firmware_config" / "agent-config.md").read_text(encoding="utf-8")
    assert committed == render_docs(), (
        "run: python -m device_agent.config --docs > firmware_config/agent-config.md"
    )
    for key in SCHEMA:
        assert f"| `{key.name}` |" in committed


def test_config_example_file_is_valid() -> None:
    config = load_config(ROOT / "firmware_config" / "examples" / "simulated-printer.toml")
    assert config.reader_backend == "simulated" and config.gpio_pin_factory == "mock"


def test_config_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.toml").write_text('[device]\nid = "x"\n')
    assert main(["--check", str(tmp_path / "bad.toml")]) == 2
    err = capsys.readouterr().err
    assert "[device] id:" in err and "[mqtt] url: missing" in err and "[allowlist] key: missing" in err
