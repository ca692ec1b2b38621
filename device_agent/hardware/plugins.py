"""Machine monitors and power switches as plug-ins: one module each, found like the reader backends.

A plug-in module in this package holds a ``PLUGINS`` tuple of :class:`Plugin`. Each names its
kind (``monitor``: the ``[monitor] backend``; ``switch``: the ``[switch] backend``), declares
the config keys it adds (with their docs and checks), a check across keys, the prose for the
config reference, and the factory that makes it. The config schema, its checks and
firmware_config/agent-config.md are collected from here, so a new backend is one new file.
"""

from __future__ import annotations

import importlib
import pkgutil
import textwrap
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from device_agent.schema import Key

if TYPE_CHECKING:
    from device_agent.config import AgentConfig
    from device_agent.hardware.base import MachineMonitor, Relay
    from device_agent.hardware.plug import PlugClient

Kind = Literal["monitor", "switch"]


@dataclass(frozen=True)
class Plugin:
    """One backend. ``create`` makes it from a checked config: a monitor from ``(config)``,
    a switch from ``(config, closed)``; ``meter`` (switches that measure power) makes a
    client that reads the plug's power for the ``power`` monitor."""

    kind: Kind
    name: str
    summary: str
    keys: tuple[Key, ...] = ()
    docs: tuple[str, ...] = ()
    # The codes of the ``fault`` events it can cause (documented in docs/protocol.md).
    faults: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any]], list[str]] | None = None
    create_monitor: Callable[[AgentConfig], MachineMonitor] | None = None
    create_switch: Callable[[AgentConfig, bool], Relay] | None = None
    meter: Callable[[AgentConfig], PlugClient] | None = None


def paragraph(*parts: str) -> tuple[str, ...]:
    """A Markdown list item for the config reference, from ``parts`` joined by spaces, wrapped."""
    return tuple(textwrap.wrap(" ".join(parts), width=104, subsequent_indent="  ", break_on_hyphens=False))


@cache
def all_plugins() -> tuple[Plugin, ...]:
    """Every plug-in of every module in this package, in module order."""
    # The package's own folder, not ``import device_agent.hardware``: the package imports this
    # module, and the plug-ins are found by looking, not by a list anyone must keep.
    found: list[Plugin] = []
    for module in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        # Backends import their libraries lazily, so importing each module here is cheap.
        loaded = importlib.import_module(f"{__package__}.{module.name}")
        found.extend(getattr(loaded, "PLUGINS", ()))
    return tuple(found)


def plugins(kind: Kind) -> tuple[Plugin, ...]:
    return tuple(p for p in all_plugins() if p.kind == kind)


def plugin(kind: Kind, name: str) -> Plugin | None:
    return next((p for p in plugins(kind) if p.name == name), None)


def plugin_keys() -> tuple[Key, ...]:
    """The keys the plug-ins add, each once (plug-ins of one family share some)."""
    seen: dict[str, Key] = {}
    for found in all_plugins():
        for key in found.keys:
            seen.setdefault(key.attr, key)
    return tuple(seen.values())
