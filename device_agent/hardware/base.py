"""The small interfaces the agent drives: one per kind of hardware, one module per backend.

The agent only ever talks to these; backends live next to this module (``simulated``,
``gpio``, ``monitors``) and import their hardware library inside their constructor, so
the agent imports on a machine without that hardware.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from device_agent import AgentError


class Reader(ABC):
    """A badge reader."""

    @abstractmethod
    def poll(self) -> str | None:
        """The UID (upper-case hex) of a card that was *newly* presented since the last poll, else None.

        A card left lying on the reader is reported once, not on every poll.
        """

    def release(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Free the reader's bus and pins (the agent is stopping)."""


class ReaderFault(AgentError, OSError):
    """The reader stopped answering. ``poll()`` raises it on every poll until the reader is back."""


class Relay(ABC):
    """The relay that switches the machine's power (or its enable/interlock line).

    "Closed" means the contact is made and the machine may run; "open" means it may not.
    The relay is one more stop in series, never the only one (hardware/ safety notes).
    """

    @abstractmethod
    def close(self) -> None:
        """Close the contact: the machine may run."""

    @abstractmethod
    def open(self) -> None:
        """Open the contact: the machine may not run."""

    @property
    @abstractmethod
    def is_closed(self) -> bool: ...

    def release(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Free the pin (the agent is stopping)."""


class Indicators(ABC):
    """What the person at the machine sees and hears."""

    @abstractmethod
    def unlocked(self) -> None:
        """The relay closed for a session."""

    @abstractmethod
    def locked(self) -> None:
        """The relay opened; idle."""

    @abstractmethod
    def denied(self) -> None:
        """A tap was refused (the relay stays open)."""

    @abstractmethod
    def offline(self, active: bool = True) -> None:
        """Decisions come from the allow-list because the server cannot be reached (or no longer)."""

    @abstractmethod
    def fault(self) -> None:
        """Something is broken (reader missing, …); a person should look."""

    def identify(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Show which machine this device is (the server's ``identify`` command)."""

    def release(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Free the pins (the agent is stopping)."""


class MachineMonitor(ABC):
    """Tells whether the machine is working right now (printing, cutting, drawing current)."""

    @abstractmethod
    def running(self) -> bool: ...

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Stop watching (the agent is stopping)."""
