"""The agent's configuration: a TOML file checked at start against :data:`SCHEMA`.

The schema is a plain list of keys (section, name, type, default, required, a one-line
doc and an optional check). Loading reports every problem of a file at once in one
:class:`ConfigError`. The reference (firmware_config/agent-config.md) is rendered from the same
list by :mod:`device_agent.config.reference`, so docs and checks cannot drift; the command
``python -m device_agent.config`` (``__main__.py`` here) prints it or checks a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent import AgentError
from device_agent.hardware.plugins import plugin_keys as _plugin_keys
from device_agent.schema import Key, between, existing_file, matches, one_of, read_secret
from werkbank_protocol import ProtocolError
from werkbank_protocol.allowlist import key_bytes
from werkbank_protocol.mqtt import parse_mqtt_url
from werkbank_protocol.pinmap import check_config_pins
from werkbank_protocol.topics import DEVICE_ID_RE

# The shared checks under the names this module has always used.
_matches, _between, _one_of, _existing_file = matches, between, one_of, existing_file

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


def _monitor_backends() -> list[str]:
    from device_agent.hardware.plugins import plugins

    return ["none", *(p.name for p in plugins("monitor"))]


def _switch_backends() -> list[str]:
    from device_agent.hardware.plugins import plugins

    return [p.name for p in plugins("switch")]


# [monitor]: how the agent learns that the machine works (device_agent/hardware/monitors.py).
# Only the keys every monitor reads are here; each backend declares its own in its module
# (device_agent/hardware/plugins.py), and says so at the start of their doc.
MONITOR_KEYS: tuple[Key, ...] = (
    Key(
        "monitor",
        "backend",
        str,
        "What tells the agent the machine works (see Machine monitors): "
        + ", ".join(f'"{name}"' for name in _monitor_backends())
        + ".",
        default="none",
        check=_one_of(_monitor_backends),
    ),
    Key(
        "monitor",
        "poll_s",
        float,
        "Seconds between two readings of the machine (each in the monitor's own thread).",
        default=2.0,
        check=_between(0.05, 60, " s"),
    ),
    Key(
        "monitor",
        "retry_max_s",
        float,
        "While the machine cannot be read, retries back off from poll_s, doubling up to this.",
        default=60.0,
        check=_between(0.1, 3600, " s"),
    ),
    Key(
        "monitor",
        "lost_hold_s",
        float,
        "How long a running job still counts as running while the machine cannot be read.",
        default=300.0,
        check=_between(0, 86400, " s"),
    ),
)


# [switch]: what switches the machine's power. The keys of each backend come from its plug-in.
SWITCH_KEYS: tuple[Key, ...] = (
    Key(
        "switch",
        "backend",
        str,
        'What switches the machine\'s power: "gpio" (the relay on [relay] pin), "shelly" or "tasmota"'
        " (a smart plug; see Smart plugs).",
        default="gpio",
        check=_one_of(_switch_backends),
    ),
)


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
        "Folder for outbox.sqlite (events and the open session) and allowlist.json; created if missing.",
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
        "mode",
        str,
        '"machine": taps unlock the machine. "checkin": an entrance reader, taps check people in and '
        'out (no relay; the server must know the device as its site\'s entrance). "enrol": this reader '
        "is an enrolment station; it writes the keys of new secure badges (an admin starts each one on "
        "the person's page) and never unlocks; it needs the mfrc522 backend and the device flagged as a "
        "station on the server.",
        default="machine",
        check=_one_of(("machine", "checkin", "enrol")),
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
        "session",
        "trainer_window_s",
        float,
        "After a trainer unlocks: a participant's badge within this time starts a supervised session,"
        " the trainer's own badge arms a practical sign-off for as long again (0 = off).",
        default=30.0,
        check=_between(0, 300, " s"),
    ),
    Key(
        "session",
        "warn_before_end_s",
        float,
        "Warn once on the lights and the buzzer this long before a session's `until` (a booking begins"
        " or ends, the maximum session, closing time) (0 = no warning).",
        default=300.0,
        check=_between(0, 3600, " s"),
    ),
    Key(
        "gpio",
        "pin_factory",
        str,
        'gpiozero pin factory; "mock" simulates the pins. Default: gpiozero\'s choice.',
        check=_one_of(PIN_FACTORIES),
    ),
    *MONITOR_KEYS,
    *SWITCH_KEYS,
)
# Where the plug-ins' keys begin in SCHEMA: the ones before are AgentConfig's own fields.
CORE_KEY_COUNT = len(SCHEMA)
SCHEMA = SCHEMA + _plugin_keys()

_WANTED: dict[type, str] = {
    str: "text in quotes",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
}


@dataclass(frozen=True)
class AgentConfig:
    """A checked config. Attributes are ``<section>_<key>``; paths are absolute.

    The fields are the keys the agent itself reads; a plug-in's keys (a monitor's, a switch's,
    each declared in its module) are in ``options``: ``option("monitor_threshold_a")``. They are
    not attributes, so that the type checker catches a misspelt field."""

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
    reader_mode: str
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
    session_trainer_window_s: float
    session_warn_before_end_s: float
    gpio_pin_factory: str | None
    monitor_backend: str
    monitor_poll_s: float
    monitor_retry_max_s: float
    monitor_lost_hold_s: float
    switch_backend: str
    # The plug-ins' keys (device_agent/hardware/plugins.py), by attribute name: read with option().
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def option(self, attr: str) -> Any:
        """The value of a plug-in's key, e.g. ``option("switch_url")``."""
        try:
            return self.options[attr]
        except KeyError:
            raise KeyError(f"no config key {attr!r}: is its plug-in module missing?") from None

    def value(self, attr: str) -> Any:
        """Any key's value by attribute name, a field's or a plug-in's."""
        return self.options[attr] if attr in self.options else getattr(self, attr)

    def secret(self, attr: str) -> str | None:
        """A secret key's value, given inline (``attr``) or in a file (``attr`` + ``_file``, read now)."""
        return read_secret(self.value(attr), self.value(f"{attr}_file"))

    @property
    def octoprint_api_key(self) -> str | None:
        """OctoPrint's API key (a key of the ``octoprint`` monitor, device_agent/hardware/octoprint.py)."""
        return self.secret("monitor_octoprint_api_key")

    @property
    def password(self) -> str | None:
        """The MQTT password, from ``password`` or read from ``password_file``."""
        return self.secret("device_password")

    @property
    def hash(self) -> str:
        """First 16 hex characters of the sha256 of the canonical config (secrets left out)."""
        values = {k.label: self.value(k.attr) for k in SCHEMA if not k.secret}
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
    core = {key.attr for key in SCHEMA[:CORE_KEY_COUNT]}
    options = {attr: value for attr, value in values.items() if attr not in core}
    return AgentConfig(**{attr: values[attr] for attr in core}, options=options)


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Rules that involve more than one key."""
    errors: list[str] = []
    if values["device_password"] is not None and values["device_password_file"] is not None:
        errors.append("[device] password_file: set either password or password_file, not both")
    url = values["mqtt_url"]
    if values["mqtt_ca_file"] is not None and isinstance(url, str) and url.startswith("mqtt://"):
        errors.append("[mqtt] ca_file: only used with TLS; use an mqtts:// URL or remove ca_file")
    from device_agent.hardware.plugins import all_plugins

    for found in all_plugins():
        if found.check is not None:
            errors.extend(found.check(values))
    # No GPIO twice, none on the SPI or reader-reset pins (werkbank_protocol/pinmap.toml).
    errors.extend(_reader_pin_problems(values))
    errors.extend(check_config_pins(_pins_in_bcm(values)))
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

    The reader's reset pin may be BOARD-numbered (header pin 22 = GPIO25), so it is converted.
    It is left out without an RC522 (nothing is wired to it), and when it is the line the pin
    map keeps for it (header pin 22): there the pin map itself refuses a relay or LED.
    """
    bcm = _reset_pin_bcm(values)
    reserved = _reset_pin_bcm({"reader_reset_pin": 22, "reader_pin_mode": "BOARD"})
    converted = {attr: value for attr, value in values.items() if attr != "reader_reset_pin"}
    if values["reader_backend"] == "mfrc522" and bcm is not None and bcm != reserved:
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
