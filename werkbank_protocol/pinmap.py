"""The Pi's 40-pin header as Werkbank wires it (data: ``werkbank_protocol/pinmap.toml``) and the pin rules.

Shared by both sides: the agent's config check enforces it, the server's provisioning writes its
default pins into a new device's agent.toml.

The agent's config check calls :func:`check_config_pins`: no GPIO used twice, nothing on
the pins kept for SPI or the reader's reset line, a warning for I2C, UART and ID EEPROM
pins. ``python -m werkbank_protocol.pinmap --table`` / ``--header`` print the pin table and the
header drawing that hardware/README.md carries (a test keeps them in step with the data).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, Literal

log = logging.getLogger(__name__)

Policy = Literal["free", "reserved", "avoid"]
_POLICIES: tuple[Policy, ...] = ("free", "reserved", "avoid")
_FUNCTION_NAMES = {"3v3": "3.3 V", "5v": "5 V", "gnd": "GND"}


class PinMapError(ValueError):
    """The pin map file itself is broken (a packaging or editing mistake, never a user's config)."""


@dataclass(frozen=True)
class HeaderPin:
    """One pin of the 40-pin header."""

    header: int
    function: str
    bcm: int | None = None
    use: str = ""
    # The config key ("section.name") whose default is this pin.
    key: str | None = None
    policy: Policy = "free"
    why: str = ""

    @property
    def label(self) -> str:
        """How the drawing names the pin: ``GPIO17`` or ``3.3 V``/``5 V``/``GND``."""
        return (
            f"GPIO{self.bcm}" if self.bcm is not None else _FUNCTION_NAMES.get(self.function, self.function)
        )


@dataclass(frozen=True)
class PinMap:
    pins: tuple[HeaderPin, ...]

    def by_bcm(self, bcm: int) -> HeaderPin | None:
        return next((p for p in self.pins if p.bcm == bcm), None)

    def by_header(self, header: int) -> HeaderPin:
        return next(p for p in self.pins if p.header == header)

    def defaults(self) -> dict[str, dict[str, int]]:
        """The default pin of each config key, as TOML sections: ``{"relay": {"pin": 17}, …}``."""
        sections: dict[str, dict[str, int]] = {}
        for pin in self.pins:
            if pin.key is not None and pin.bcm is not None:
                section, name = pin.key.split(".", 1)
                sections.setdefault(section, {})[name] = pin.bcm
        return sections

    def free_gpios(self) -> list[int]:
        """GPIOs nothing is wired to and nothing warns about: where a new part should go."""
        return sorted(p.bcm for p in self.pins if p.bcm is not None and p.policy == "free" and not p.use)


def parse_pinmap(data: Mapping[str, Any]) -> PinMap:
    """Build and check a pin map from its parsed TOML; PinMapError names every problem."""
    errors: list[str] = []
    pins: list[HeaderPin] = []
    known = set(HeaderPin.__dataclass_fields__)
    for index, raw in enumerate(data.get("pin", [])):
        unknown = set(raw) - known
        if unknown:
            errors.append(f"pin[{index}]: unknown keys {sorted(unknown)}")
            continue
        try:
            pin = HeaderPin(**raw)
        except TypeError as exc:
            errors.append(f"pin[{index}]: {exc}")
            continue
        if pin.policy not in _POLICIES:
            errors.append(f"header pin {pin.header}: policy {pin.policy!r} is not one of {_POLICIES}")
        if pin.policy != "free" and not pin.why:
            errors.append(f"header pin {pin.header}: a {pin.policy} pin needs a `why`")
        if pin.key is not None and (pin.bcm is None or "." not in pin.key):
            errors.append(f"header pin {pin.header}: `key` needs a GPIO and the form section.name")
        pins.append(pin)
    if sorted(p.header for p in pins) != list(range(1, 41)):
        errors.append("the map must list each header pin 1-40 exactly once")
    gpios = [p.bcm for p in pins if p.bcm is not None]
    if sorted(gpios) != list(range(28)):
        errors.append("the map must list each of GPIO 0-27 exactly once")
    keys = [p.key for p in pins if p.key is not None]
    if len(keys) != len(set(keys)):
        errors.append("a config key is the default of two pins")
    if errors:
        raise PinMapError("pin map: " + "; ".join(errors))
    return PinMap(tuple(sorted(pins, key=lambda p: p.header)))


@cache
def load_pinmap() -> PinMap:
    """The pin map that ships with the agent (read once)."""
    text = resources.files("werkbank_protocol").joinpath("pinmap.toml").read_text(encoding="utf-8")
    return parse_pinmap(tomllib.loads(text))


@dataclass(frozen=True)
class PinReport:
    errors: list[str]
    warnings: list[str]


def check_pins(used: Mapping[str, int], pinmap: PinMap | None = None) -> PinReport:
    """Check which GPIO each config key uses. ``used`` maps ``section.name`` to a BCM number."""
    pinmap = pinmap or load_pinmap()
    errors: list[str] = []
    warnings: list[str] = []
    taken: dict[int, str] = {}
    free = ", ".join(str(n) for n in pinmap.free_gpios())
    for key, bcm in used.items():
        section, name = key.split(".", 1)
        label = f"[{section}] {name}"
        if bcm in taken:
            errors.append(f"{label}: GPIO {bcm} is already used by {taken[bcm]}; give each part its own pin")
            continue
        taken[bcm] = label
        pin = pinmap.by_bcm(bcm)
        if pin is None:  # outside 0-27: the schema's own check says so
            continue
        if pin.policy == "reserved" and pin.key != key:
            errors.append(
                f"{label}: GPIO {bcm} (header pin {pin.header}) is reserved: {pin.why}; free GPIOs: {free}"
            )
        elif pin.policy == "avoid":
            warnings.append(f"{label}: GPIO {bcm} (header pin {pin.header}) works, but {pin.why}")
    return PinReport(errors, warnings)


def check_config_pins(values: Mapping[str, Any]) -> list[str]:
    """The pin rules for a config being checked (``values``: AgentConfig's attributes by name).

    Every key named ``*_pin`` counts, so a backend that adds a pin key is checked too.
    Warnings are logged; errors are returned for the config's one error report.
    """
    used: dict[str, int] = {}
    for attr, value in values.items():
        # bool is an int: `pin = true` is reported by the type check, not here.
        if attr.endswith("_pin") and isinstance(value, int) and not isinstance(value, bool):
            section, name = attr.split("_", 1)
            used[f"{section}.{name}"] = value
    report = check_pins(used)
    for warning in report.warnings:
        log.warning("%s", warning)
    return report.errors


def render_table(pinmap: PinMap | None = None) -> str:
    """The Markdown pin table of hardware/README.md: every pin something is wired to or kept for."""
    pinmap = pinmap or load_pinmap()
    lines = [
        "| header pin | BCM | function | Werkbank wires | agent config key | rule |",
        "|---|---|---|---|---|---|",
    ]
    for pin in pinmap.pins:
        if not pin.use and pin.policy == "free":
            continue
        bcm = f"GPIO{pin.bcm}" if pin.bcm is not None else "—"
        key = "[{}] {}".format(*pin.key.split(".", 1)) if pin.key else ""
        rule = {"free": "", "reserved": "reserved (error)", "avoid": "avoid (warning)"}[pin.policy]
        lines.append(f"| {pin.header} | {bcm} | `{pin.function}` | {pin.use} | {key} | {rule} |")
    return "\n".join(lines) + "\n"


def render_header(pinmap: PinMap | None = None) -> str:
    """An ASCII drawing of the 40-pin header, pins labelled with what Werkbank wires there."""
    pinmap = pinmap or load_pinmap()
    width = max(len(f"{p.label} {p.use.split(' (')[0]}".strip()) for p in pinmap.pins)

    def cell(pin: HeaderPin) -> str:
        # The part's name without the detail in brackets keeps the drawing narrow.
        what = pin.use.split(" (")[0]
        return f"{pin.label} {what}".strip()

    frame = f"{'':>{width}}    +-------+"
    lines = [f"{'(pin 1: square pad)':>{width}}    |       |", frame]
    for row in range(20):
        left = pinmap.by_header(2 * row + 1)
        right = pinmap.by_header(2 * row + 2)
        lines.append(
            f"{cell(left):>{width}} -- | {left.header:2} {right.header:2} | -- {cell(right)}".rstrip()
        )
    lines.append(frame)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m werkbank_protocol.pinmap", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--table", action="store_true", help="print the Markdown pin table")
    group.add_argument("--header", action="store_true", help="print the ASCII drawing of the header")
    args = parser.parse_args(argv)
    sys.stdout.write(render_table() if args.table else render_header())
    return 0


if __name__ == "__main__":
    sys.exit(main())
