"""The small interfaces the agent drives: one per kind of hardware, one module per backend.

The agent only ever talks to these; backends live next to this module (``simulated``,
``gpio``, ``monitors``) and import their hardware library inside their constructor, so
the agent imports on a machine without that hardware.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from device_agent import AgentError
from device_agent.cards import CardAuth

if TYPE_CHECKING:
    from device_agent.cards.ntag424 import Transport

# Asked once per tap with the card's UID and a function that opens an ISO 14443-4 link to it.
CardCheck = Callable[[str, Callable[[], "Transport"]], CardAuth]


class Reader(ABC):
    """A badge reader.

    A reader that can talk to the card beyond its UID runs the check given to
    :meth:`check_cards` on every new tap, before :meth:`poll` reports it, and leaves the
    outcome in :attr:`card_auth` (None: the card was not checked).
    """

    card_auth: CardAuth | None = None

    def check_cards(self, check: CardCheck | None) -> bool:
        """Run ``check`` on each new tap from now on; False if this reader cannot (UID only)."""
        return False

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
    """The power switch: what switches the machine's power (or its enable/interlock line).

    A relay on the Pi's GPIO (``[switch] backend = "gpio"``) or a smart plug on the network
    (``shelly``, ``tasmota``: :mod:`device_agent.hardware.plug`). "Closed" means the contact
    is made and the machine may run; "open" means it may not. It is one more stop in series,
    never the only one (hardware/ safety notes).

    ``close()`` and ``open()`` never block for long: a switch that must be asked over the
    network does it in its own thread and reports through :meth:`poll` (a ``MonitorFault``
    when it does not confirm the state in time). ``is_closed`` is the state last commanded.
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

    def detach(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Stop driving the relay but leave its contact as it is, also past this process's exit.

        The agent stops (restart, upgrade) while a session is open: the machine must not lose
        power; the next start takes the relay over in the same position.
        """

    def poll(self) -> list[MonitorEvent]:
        """What the switch found since the last call (faults, their end), oldest first."""
        return []

    @property
    def power_w(self) -> float | None:
        """The power the machine draws now, in watts, if the switch measures it."""
        return None

    @property
    def energy_wh(self) -> float | None:
        """The switch's energy counter in Wh (it only grows; resets when the plug is reset)."""
        return None


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

    def lock_pending(self) -> None:
        """A lock is due but waits for the running job to end (the relay stays closed)."""
        self.unlocked()

    def trainer_window(self) -> None:
        """A trainer unlocked: a participant's badge now starts a supervised session."""
        self.unlocked()

    def signoff_armed(self) -> None:
        """The trainer tapped again in the trainer window: a participant's badge now records a sign-off."""
        self.unlocked()

    def ending_soon(self) -> None:  # noqa: B027 - optional hook, empty by default
        """The session ends soon (``[session] warn_before_end_s`` before its ``until``): shown once,
        the lights then show the state as before."""

    def identify(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Show which machine this device is (the server's ``identify`` command)."""

    def release(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Free the pins (the agent is stopping)."""


JobKind = Literal["print", "cut", "other"]
JobStatus = Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True)
class MonitorJobStarted:
    """A job began (or was first seen: ``elapsed_s`` is how long it had run by then)."""

    kind: JobKind = "other"
    file: str | None = None
    estimated_s: float | None = None
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class MonitorJobFinished:
    """The job last reported started has ended; ``duration_s`` is its run time as the monitor measured it."""

    status: JobStatus
    duration_s: float
    filament_mm: float | None = None
    filament_g: float | None = None


@dataclass(frozen=True)
class MonitorFault:
    """The monitor cannot read the machine (``code`` as in the protocol's ``fault`` event)."""

    code: str
    detail: str


@dataclass(frozen=True)
class MonitorFaultCleared:
    """The fault ``code`` is over: the monitor reads the machine again."""

    code: str


@dataclass(frozen=True)
class MonitorReadings:
    """The latest readings, for telemetry; None where the monitor has no such reading."""

    progress: float | None = None
    temps: dict[str, Any] | None = None
    power_w: float | None = None


MonitorEvent = MonitorJobStarted | MonitorJobFinished | MonitorFault | MonitorFaultCleared | MonitorReadings


class MachineMonitor(ABC):
    """Tells whether the machine is working right now (printing, cutting, drawing current),
    and reports job facts and readings.

    Contract: ``poll()`` returns what happened since the last call, in order, and never
    blocks (monitors that talk to slow things do it in their own thread). Job events come
    in pairs: a ``MonitorJobStarted``, then exactly one ``MonitorJobFinished``. ``running()``
    may turn false a moment before the ``MonitorJobFinished`` is polled (a paused print is
    mid-job but not running): the agent counts a job as open until that event.
    """

    @abstractmethod
    def running(self) -> bool:
        """The machine works right now (counts into ``run_s``)."""

    def poll(self) -> list[MonitorEvent]:
        """Events since the last call, oldest first."""
        return []

    def wait_ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the monitor has read the machine once; False if it has not.

        At start the agent waits for this before it decides whether a session left open
        by the previous run resumes (the machine is mid-job) or is reported as lost.
        """
        return True

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Stop watching (the agent is stopping)."""
