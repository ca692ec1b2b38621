"""The pieces the agent's config schema is made of: :class:`Key` and the checks keys share.

They live apart from :mod:`device_agent.config` so that hardware plug-ins (monitors, power
switches) can declare their own keys without importing the config module that collects them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def matches(pattern: re.Pattern[str], hint: str) -> Check:
    def check(value: str) -> str | None:
        return None if pattern.match(value) else hint

    return check


def between(low: float, high: float, unit: str = "") -> Check:
    def check(value: float) -> str | None:
        if low <= value <= high:
            return None
        return f"is {value}{unit}; use a value from {low:g} to {high:g}{unit}"

    return check


def one_of(choices: Callable[[], list[str]] | tuple[str, ...]) -> Check:
    def check(value: str) -> str | None:
        allowed = list(choices() if callable(choices) else choices)
        return None if value in allowed else f"is {value!r}; use one of: {', '.join(allowed)}"

    return check


def existing_file(value: str) -> str | None:
    return None if Path(value).is_file() else f"file {value} does not exist; fix the path or remove the key"


def http_url(what: str, example: str) -> Check:
    """An ``http(s)://host[:port]`` address; the hint names the device and an example."""

    def check(value: str) -> str | None:
        if re.match(r"^https?://[^/\s]+", value):
            return None
        return f"must be {what}'s address, e.g. {example}"

    return check


def secret_pair(values: Mapping[str, Any], section: str, name: str) -> str | None:
    """``name`` and ``name_file`` both set is an error (which one would win?)."""
    if values.get(f"{section}_{name}") is not None and values.get(f"{section}_{name}_file") is not None:
        return f"[{section}] {name}_file: set either {name} or {name}_file, not both"
    return None


def read_secret(value: str | None, file: str | None) -> str | None:
    """A secret given inline or in a file (read now, surrounding spaces dropped)."""
    if file:
        return Path(file).read_text(encoding="utf-8").strip()
    return value


def needed_by(
    values: Mapping[str, Any], section: str, backend: str, needs: tuple[tuple[str, str], ...]
) -> list[str]:
    """When ``[section] backend`` is ``backend``: an error for each key of ``needs`` (its name and
    what to give it) that is not set."""
    if values.get(f"{section}_backend") != backend:
        return []
    return [
        f"[{section}] {name}: missing; the {backend} backend needs {what}"
        for name, what in needs
        if values.get(f"{section}_{name}") is None
    ]
