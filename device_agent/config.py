"""The agent's configuration: a TOML file checked at start against :data:`SCHEMA`.

The schema is a plain list of keys (section, name, type, default, required, a one-line
doc and an optional check). Loading reports every problem of a file at once in one
:class:`ConfigError`, and ``python -m device_agent.config --docs`` writes the reference
(firmware_config/agent-config.md) from the same list, so docs and checks cannot drift.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent import AgentError
from werkbank_protocol import ProtocolError
from werkbank_protocol.allowlist import key_bytes
from werkbank_protocol.mqtt import parse_mqtt_url
from werkbank_protocol.topics import DEVICE_ID_RE

# The machine's slug on the server (the allow-list names its machine by it).
MACHINE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
# Pin factories gpiozero 2.0 ships (its entry point names).
PIN_FACTORIES = ("mock", "lgpio", "rpigpio", "pigpio", "native")
# BCM numbers of the 40-pin header's GPIOs.
BCM_PINS = range(28)


class ConfigError(AgentError, ValueError):
    """A config file with problems; ``errors`` lists every one, each naming its key and the fix."""

    def __init__(self, errors: list[str], source: str = "config") -> None:
        self.errors = errors
        self.source = source
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"{source} has {len(errors)} problem(s):\n{lines}")


Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Key:
    """One config key. ``check`` returns what is wrong with a value (None when it is fine)."""

    section: str
    name: str
    type: type
    doc: str
    default: Any = None
    required: bool = False
    check: Check | None = None
    # A file or folder, resolved against the config file's folder when relative.
    path: bool = False
    # Left out of the config hash (a hash of a short password could be brute-forced).
    secret: bool = False

    @property
    def label(self) -> str:
        return f"[{self.section}] {self.name}"

    @property
    def attr(self) -> str:
        return f"{self.section}_{self.name}"


def _matches(pattern: re.Pattern[str], hint: str) -> Check:
    def check(value: str) -> str | None:
        return None if pattern.match(value) else hint

    return check


def _between(low: float, high: float, unit: str = "") -> Check:
    def check(value: float) -> str | None:
        if low <= value <= high:
            return None
        return f"is {value}{unit}; use a value from {low:g} to {high:g}{unit}"

    return check


def _one_of(choices: Callable[[], list[str]] | tuple[str, ...]) -> Check:
    def check(value: str) -> str | None:
        allowed = list(choices() if callable(choices) else choices)
        return None if value in allowed else f"is {value!r}; use one of: {', '.join(allowed)}"

    return check


def _mqtt_url(value: str) -> str | None:
    try:
        address = parse_mqtt_url(value)
    except ValueError as exc:
        return f"{exc}; for example mqtt://werkbank.local:1883"
    if address.username or address.password:
        return "must not carry a user or password: the agent logs in as [device] id with [device] password"
    return None


def _allowlist_key(value: str) -> str | None:
    try:
        key_bytes(value)
    except ProtocolError as exc:
        return f"{exc.detail}; copy it from the machine's device page on the server"
    return None


def _existing_file(value: str) -> str | None:
    return None if Path(value).is_file() else f"file {value} does not exist; fix the path or remove the key"


def _storage_dir(value: str) -> str | None:
    try:
        Path(value).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create folder {value} ({exc.strerror}); pick a folder the agent may write"
    return None


def _pin(value: int) -> str | None:
    return None if value in BCM_PINS else f"is {value}; use a BCM GPIO number from 0 to 27"


def _reader_backends() -> list[str]:
    from device_agent.hardware import reader_backends

    return reader_backends()


SCHEMA: tuple[Key, ...] = (
    Key(
        "device",
        "id",
        str,
        "This device's id on the server; also its MQTT user and client id.",
        required=True,
        check=_matches(
            DEVICE_ID_RE, "must be 3-40 characters of a-z, 0-9 and '-', as on the server's device page"
        ),
    ),
    Key(
        "device",
        "machine",
        str,
        "Slug of the machine this device serves, as on the server.",
        required=True,
        check=_matches(
            MACHINE_RE, "must be the machine's slug: up to 40 characters of a-z, 0-9, '-' and '_'"
        ),
    ),
    Key("device", "password", str, "MQTT password of this device (or use password_file).", secret=True),
    Key(
        "device",
        "password_file",
        str,
        "File holding the MQTT password (read at start, surrounding spaces dropped).",
        path=True,
        check=_existing_file,
    ),
    Key(
        "mqtt",
        "url",
        str,
        "Broker address: mqtt://host:1883, or mqtts://host:8883 for TLS.",
        required=True,
        check=_mqtt_url,
    ),
    Key(
        "mqtt",
        "ca_file",
        str,
        "CA certificate that signed the broker's TLS certificate (mqtts only).",
        path=True,
        check=_existing_file,
    ),
    Key(
        "mqtt",
        "keepalive_s",
        int,
        "Seconds between MQTT keep-alive pings; the broker sends the will after 1.5x.",
        default=30,
        check=_between(5, 3600, " s"),
    ),
    Key(
        "server",
        "auth_timeout_s",
        float,
        "How long a tap waits for the server before deciding from the allow-list.",
        default=1.5,
        check=_between(0.1, 10, " s"),
    ),
    Key(
        "allowlist",
        "key",
        str,
        "The machine's allow-list key (hex, at least 32 characters) from the server.",
        required=True,
        check=_allowlist_key,
        secret=True,
    ),
    Key(
        "storage",
        "dir",
        str,
        "Folder for outbox.sqlite, allowlist.json and state.json; created if missing.",
        default="/var/lib/werkbank-agent",
        path=True,
        check=_storage_dir,
    ),
    Key(
        "reader",
        "backend",
        str,
        'Badge reader backend (see Reader backends); "simulated" for demos and tests.',
        required=True,
        check=_one_of(_reader_backends),
    ),
    Key(
        "reader",
        "poll_hz",
        float,
        "How often the reader is asked for a badge, per second.",
        default=10.0,
        check=_between(1, 100, " Hz"),
    ),
    Key(
        "reader",
        "spi_bus",
        int,
        "mfrc522: SPI bus of the RC522; 0 is SPI0 (header pins 19, 21, 23), as /dev/spidev0.*.",
        default=0,
        check=_between(0, 6),
    ),
    Key(
        "reader",
        "spi_device",
        int,
        "mfrc522: chip select of the RC522 on that bus: 0 = CE0 (header pin 24), 1 = CE1 (pin 26).",
        default=0,
        check=_between(0, 2),
    ),
    Key(
        "reader",
        "reset_pin",
        int,
        "mfrc522: pin wired to the RC522's RST, numbered as pin_mode says (header pin 22 = GPIO25).",
        default=22,
        check=_between(0, 40),
    ),
    Key(
        "reader",
        "pin_mode",
        str,
        'mfrc522: how reset_pin is numbered: "BOARD" (header pin) or "BCM" (GPIO number).',
        default="BOARD",
        check=_one_of(("BOARD", "BCM")),
    ),
    Key("relay", "pin", int, "BCM GPIO number driving the relay board's IN.", default=17, check=_pin),
    Key(
        "relay",
        "active_high",
        bool,
        "true if the relay closes on a high pin; most boards close on low (false).",
        default=False,
    ),
    Key(
        "indicators",
        "green_pin",
        int,
        "BCM GPIO of the green LED (unlocked); leave out if not fitted.",
        check=_pin,
    ),
    Key(
        "indicators",
        "red_pin",
        int,
        "BCM GPIO of the red LED (denied, fault); leave out if not fitted.",
        check=_pin,
    ),
    Key(
        "indicators",
        "amber_pin",
        int,
        "BCM GPIO of the amber LED (offline mode); leave out if not fitted.",
        check=_pin,
    ),
    Key(
        "indicators", "buzzer_pin", int, "BCM GPIO of an active buzzer; leave out if not fitted.", check=_pin
    ),
    Key(
        "session",
        "idle_timeout_s",
        float,
        "Lock after the machine has not run for this long (0 = never).",
        default=0.0,
        check=_between(0, 86400, " s"),
    ),
    Key(
        "session",
        "tap_out_grace_s",
        float,
        "Ignore the same badge again for this long after unlocking.",
        default=2.0,
        check=_between(0, 60, " s"),
    ),
    Key(
        "gpio",
        "pin_factory",
        str,
        'gpiozero pin factory; "mock" simulates the pins. Default: gpiozero\'s choice.',
        check=_one_of(PIN_FACTORIES),
    ),
)

_TYPE_NAMES: dict[type, str] = {str: "text", int: "whole number", float: "number", bool: "true/false"}
_WANTED: dict[type, str] = {
    str: "text in quotes",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
}


@dataclass(frozen=True)
class AgentConfig:
    """A checked config. Attributes are ``<section>_<key>``; paths are absolute."""

    device_id: str
    device_machine: str
    device_password: str | None
    device_password_file: str | None
    mqtt_url: str
    mqtt_ca_file: str | None
    mqtt_keepalive_s: int
    server_auth_timeout_s: float
    allowlist_key: str
    storage_dir: str
    reader_backend: str
    reader_poll_hz: float
    reader_spi_bus: int
    reader_spi_device: int
    reader_reset_pin: int
    reader_pin_mode: str
    relay_pin: int
    relay_active_high: bool
    indicators_green_pin: int | None
    indicators_red_pin: int | None
    indicators_amber_pin: int | None
    indicators_buzzer_pin: int | None
    session_idle_timeout_s: float
    session_tap_out_grace_s: float
    gpio_pin_factory: str | None

    @property
    def password(self) -> str | None:
        """The MQTT password, from ``password`` or read from ``password_file``."""
        if self.device_password_file:
            return Path(self.device_password_file).read_text(encoding="utf-8").strip()
        return self.device_password

    @property
    def hash(self) -> str:
        """First 16 hex characters of the sha256 of the canonical config (secrets left out)."""
        values = {k.label: getattr(self, k.attr) for k in SCHEMA if not k.secret}
        canonical = json.dumps(values, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return hashlib.sha256(canonical).hexdigest()[:16]

    def replace(self, **changes: Any) -> AgentConfig:
        return dataclasses.replace(self, **changes)


def _convert(key: Key, value: Any) -> tuple[Any, str | None]:
    """The value as the key's type, or an error. TOML already typed it; we only widen int → float."""
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value), None
    # bool is a subclass of int: `pin = true` must not pass as pin 1.
    if isinstance(value, key.type) and not (key.type is int and isinstance(value, bool)):
        return value, None
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    hint = " (write it without quotes)" if isinstance(value, str) else ""
    return None, f"{key.label}: is {shown}; it must be {_WANTED[key.type]}{hint}"


def parse_config(
    data: Mapping[str, Any], base_dir: Path | None = None, source: str = "config"
) -> AgentConfig:
    """Check ``data`` (a parsed TOML document) against SCHEMA; ConfigError listing every problem."""
    base = base_dir or Path.cwd()
    errors: list[str] = []
    known: dict[str, dict[str, Key]] = {}
    for key in SCHEMA:
        known.setdefault(key.section, {})[key.name] = key

    for section, body in data.items():
        if section not in known:
            errors.append(f"[{section}]: unknown section; known sections: {', '.join(known)}")
        elif not isinstance(body, Mapping):
            errors.append(f"[{section}]: must be a table (a [{section}] header followed by keys)")
        else:
            for name in body:
                if name not in known[section]:
                    hint = ", ".join(known[section])
                    errors.append(f"[{section}] {name}: unknown key (a typo?); keys of [{section}]: {hint}")

    values: dict[str, Any] = {}
    for key in SCHEMA:
        body = data.get(key.section)
        raw = body.get(key.name) if isinstance(body, Mapping) else None
        if raw is None:
            if key.required:
                errors.append(f"{key.label}: missing; add it ({key.doc[0].lower()}{key.doc[1:].rstrip('.')})")
            values[key.attr] = key.default
            if key.path and key.default is not None:
                values[key.attr] = str((base / key.default).resolve())
            # Defaults are checked too: the default storage folder must be creatable.
            if key.default is not None and key.check is not None:
                problem = key.check(values[key.attr])
                if problem:
                    errors.append(f"{key.label}: default {problem}")
            continue
        value, problem = _convert(key, raw)
        if problem is None and key.path:
            value = str((base / value).resolve())
        if problem is None and key.check is not None:
            detail = key.check(value)
            if detail:
                problem = f"{key.label}: {detail}"
        if problem:
            errors.append(problem)
        values[key.attr] = value

    errors.extend(_cross_checks(values))
    if errors:
        raise ConfigError(errors, source)
    return AgentConfig(**values)


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Rules that involve more than one key."""
    errors: list[str] = []
    if values["device_password"] is not None and values["device_password_file"] is not None:
        errors.append("[device] password_file: set either password or password_file, not both")
    url = values["mqtt_url"]
    if values["mqtt_ca_file"] is not None and isinstance(url, str) and url.startswith("mqtt://"):
        errors.append("[mqtt] ca_file: only used with TLS; use an mqtts:// URL or remove ca_file")
    errors.extend(_reader_pin_problems(values))
    bcm_values = _pins_in_bcm(values)
    pins: dict[int, str] = {}
    for attr in (
        "relay_pin",
        "indicators_green_pin",
        "indicators_red_pin",
        "indicators_amber_pin",
        "indicators_buzzer_pin",
        "reader_reset_pin",
    ):
        pin = bcm_values.get(attr)
        if not isinstance(pin, int):
            continue
        label = "[{}] {}".format(*attr.split("_", 1))
        if pin in pins:
            errors.append(f"{label}: GPIO {pin} is already used by {pins[pin]}; give each part its own pin")
        else:
            pins[pin] = label
    return errors


def _reset_pin_bcm(values: Mapping[str, Any]) -> int | None:
    """``[reader] reset_pin`` as a BCM number (it is numbered as ``pin_mode`` says); None if no GPIO."""
    from device_agent.hardware.mfrc522 import BOARD_TO_BCM, board_pin

    pin, mode = values["reader_reset_pin"], values["reader_pin_mode"]
    if not isinstance(pin, int) or mode not in ("BOARD", "BCM"):
        return None
    try:
        return BOARD_TO_BCM[board_pin(pin, mode)]
    except ValueError:
        return None


def _reader_pin_problems(values: Mapping[str, Any]) -> list[str]:
    if values["reader_backend"] != "mfrc522" or values["reader_pin_mode"] not in ("BOARD", "BCM"):
        return []
    pin = values["reader_reset_pin"]
    if isinstance(pin, int) and _reset_pin_bcm(values) is None:
        mode = values["reader_pin_mode"]
        hint = "a header pin that is a GPIO, e.g. 22" if mode == "BOARD" else "a GPIO number from 0 to 27"
        return [f"[reader] reset_pin: {mode} pin {pin} is not a GPIO; use {hint}"]
    return []


def _pins_in_bcm(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` as the pin rules compare them: every ``*_pin`` a BCM GPIO number.

    The reader's reset pin may be BOARD-numbered (header pin 22 = GPIO25), so it is converted;
    it is left out without an RC522 (nothing is wired to it).
    """
    bcm = _reset_pin_bcm(values)
    converted = {attr: value for attr, value in values.items() if attr != "reader_reset_pin"}
    if values["reader_backend"] == "mfrc522" and bcm is not None:
        converted["reader_reset_pin"] = bcm
    return converted


def load_config(path: str | Path) -> AgentConfig:
    """Read and check a TOML config file; ConfigError (with every problem) if anything is wrong."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file {file} not found; pass the config with --config FILE"], str(file)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read {file}: {exc}"], str(file)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], str(file)) from None
    return parse_config(data, file.resolve().parent, str(file))


def _default_text(key: Key) -> str:
    if key.required:
        return "required"
    if key.default is None:
        return "not set"
    if isinstance(key.default, bool):
        return f"`{str(key.default).lower()}`"
    if isinstance(key.default, str):
        return f'`"{key.default}"`'
    return f"`{key.default:g}`" if isinstance(key.default, float) else f"`{key.default}`"


def render_docs() -> str:
    """The Markdown reference of every key (firmware_config/agent-config.md)."""
    from device_agent.hardware import reader_backends
    from device_agent.hardware.gpio import INDICATOR_PATTERNS

    lines = [
        "# Device agent configuration",
        "",
        "<!-- Generated by `python -m device_agent.config --docs` (device_agent/config.py); do not edit -->",
        "",
        "The agent reads one TOML file (`werkbank-agent --config FILE`). It checks every key at start and",
        "lists all problems at once; unknown keys are errors, so a typo never goes unnoticed.",
        "Relative paths are taken from the folder of the config file.",
        "`status.config` carries a hash of the checked config (secrets left out), so the server shows",
        "which config a device runs. An example: `firmware_config/examples/simulated-printer.toml`.",
    ]
    section = ""
    for key in SCHEMA:
        if key.section != section:
            section = key.section
            lines += ["", f"## [{section}]", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines.append(f"| `{key.name}` | {_TYPE_NAMES[key.type]} | {_default_text(key)} | {key.doc} |")
    lines += [
        "",
        "`password` and `password_file` are secrets: keep the file readable by the agent's user only.",
        "",
    ]
    lines += ["## Reader backends", ""]
    lines += [f"- `{name}`" for name in reader_backends()]
    lines += [
        "",
        "A backend is one module in `device_agent/hardware/` with a `create_reader(config)` function.",
        "",
        "## What the lights and the buzzer mean",
        "",
        "| state | pattern |",
        "|---|---|",
    ]
    lines += [f"| {state} | {pattern} |" for state, pattern in INDICATOR_PATTERNS]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_agent.config", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--docs", action="store_true", help="print the Markdown reference of every key")
    group.add_argument("--check", metavar="FILE", help="check a config file and print its hash")
    args = parser.parse_args(argv)
    if args.docs:
        sys.stdout.write(render_docs())
        return 0
    try:
        config = load_config(args.check)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.check}: ok (config hash {config.hash})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
