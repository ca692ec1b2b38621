"""Hardware backends behind the interfaces in :mod:`device_agent.hardware.base`.

A reader backend is one module in this package with a ``create_reader(config)``
function; its module name is the ``[reader] backend`` value. Adding a backend is
adding that one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from device_agent import AgentError
from device_agent.hardware.base import Indicators, MachineMonitor, Reader, Relay

if TYPE_CHECKING:
    from device_agent.config import AgentConfig

__all__ = [
    "Indicators",
    "MachineMonitor",
    "Reader",
    "Relay",
    "create_reader",
    "create_switch",
    "reader_backends",
]


class HardwareError(AgentError):
    """A backend that cannot be found or started."""


def reader_backends() -> list[str]:
    """Names of the reader backends in this package (modules with a ``create_reader``)."""
    names = []
    for module in pkgutil.iter_modules(__path__):
        # Backends import their hardware library lazily, so importing each one here is cheap.
        if hasattr(importlib.import_module(f"{__name__}.{module.name}"), "create_reader"):
            names.append(module.name)
    return sorted(names)


def create_reader(config: AgentConfig) -> Reader:
    name = config.reader_backend
    if name not in reader_backends():
        raise HardwareError(f"no reader backend {name!r}; available: {', '.join(reader_backends())}")
    module = importlib.import_module(f"{__name__}.{name}")
    factory = cast(Callable[["AgentConfig"], Reader], module.create_reader)
    return factory(config)


def create_switch(config: AgentConfig, closed: bool = False) -> Relay:
    """The power switch ``[switch] backend`` names: a plug-in (the GPIO relay, a smart plug).

    ``closed``: start with the power on (a session was open when the agent last stopped).
    """
    name = config.switch_backend
    from device_agent.hardware.plugins import plugin

    found = plugin("switch", name)
    if found is None or found.create_switch is None:
        raise HardwareError(f"no power switch backend {name!r}")
    return found.create_switch(config, closed)
