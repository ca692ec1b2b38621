"""Machine monitors: how the agent learns that the machine is working (``run_s``, idle timeout,
deferred locks) and what its jobs were.

``[monitor] backend`` picks one: ``none`` (:class:`NoMonitor`) or a plug-in
(:mod:`device_agent.hardware.plugins`: ``octoprint``, ``current``, ``power``, ``gpio_input``,
``moonraker``, ``prusalink``, ``bambu``, each a module here, with its config keys). Every real
monitor reads the machine in a thread of its own (:class:`ThreadedMonitor`): an HTTP request to a
hung printer or a burst of ADC samples must never delay a tap.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from typing import TYPE_CHECKING

from device_agent.hardware.base import (
    MachineMonitor,
    MonitorEvent,
    MonitorFault,
    MonitorFaultCleared,
)

if TYPE_CHECKING:
    from device_agent.config import AgentConfig

log = logging.getLogger(__name__)


class NoMonitor(MachineMonitor):
    """No way to tell: the machine never counts as running, so ``run_s`` stays 0 and locks never wait."""

    def running(self) -> bool:
        return False


class MonitorReadError(Exception):
    """The machine could not be read; ``code`` becomes the ``fault`` event's code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class ThreadedMonitor(MachineMonitor):
    """Calls :meth:`read` every ``poll_s`` in its own thread; ``poll()`` hands over what it found.

    A failing read (:class:`MonitorReadError`) becomes one ``MonitorFault`` and is retried
    with back-off, from ``poll_s`` doubling up to ``retry_max_s``; the first good read after
    it sends ``MonitorFaultCleared``. While the machine cannot be read, the last known state
    stands (a print does not count as over because the network hiccupped), but for at most
    ``lost_hold_s``: then :meth:`give_up_job` ends a running job as failed, so that a lock
    waiting for it can happen.

    Subclasses implement :meth:`read` and :meth:`give_up_job`, call :meth:`_emit` and
    :meth:`_set_running`, and call :meth:`_start` at the end of their constructor.
    ``fault_code`` is the code of a read that fails in a way nobody foresaw.
    """

    def __init__(
        self, name: str, fault_code: str, poll_s: float, retry_max_s: float, lost_hold_s: float
    ) -> None:
        self.fault_code = fault_code
        self.poll_s = poll_s
        self.retry_max_s = max(retry_max_s, poll_s)
        self.lost_hold_s = lost_hold_s
        self._lock = threading.Lock()
        self._events: list[MonitorEvent] = []
        self._running = False
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._fault: str | None = None
        self._lost_since: float | None = None
        self._retry_s = poll_s
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def read(self) -> None:
        """Read the machine once; raise MonitorReadError when it cannot be read."""

    @abstractmethod
    def give_up_job(self) -> None:
        """The machine has been unreadable for ``lost_hold_s``: end an open job as failed."""

    def _start(self) -> None:
        self._thread.start()

    def _emit(self, event: MonitorEvent) -> None:
        with self._lock:
            self._events.append(event)

    def _set_running(self, running: bool) -> None:
        self._running = running

    # ------------------------------------------------------------------ MachineMonitor

    def running(self) -> bool:
        return self._running

    def poll(self) -> list[MonitorEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def close(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    # ------------------------------------------------------------------ the thread

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.read()
            except MonitorReadError as exc:
                delay = self._failed(exc.code, exc.detail)
            except Exception as exc:
                # A bug or a library's own exception type: the same as an unreadable machine,
                # never the end of the thread that watches it.
                log.exception("%s: reading the machine failed", self._thread.name)
                delay = self._failed(self.fault_code, f"{type(exc).__name__}: {exc}")
            else:
                delay = self._succeeded()
            self._ready.set()
            self._stopping.wait(delay)

    def _failed(self, code: str, detail: str) -> float:
        now = time.monotonic()
        if self._fault != code:
            log.warning("%s (retrying with back-off up to %g s)", detail, self.retry_max_s)
            self._fault = code
            self._emit(MonitorFault(code, detail))
        if self._lost_since is None:
            self._lost_since = now
            self._retry_s = self.poll_s
        elif now - self._lost_since >= self.lost_hold_s:
            self.give_up_job()
        delay = self._retry_s
        self._retry_s = min(self._retry_s * 2, self.retry_max_s)
        return delay

    def _succeeded(self) -> float:
        if self._fault is not None:
            log.info("machine readable again (%s over)", self._fault)
            self._emit(MonitorFaultCleared(self._fault))
            self._fault = None
        self._lost_since = None
        self._retry_s = self.poll_s
        return self.poll_s


def create_monitor(config: AgentConfig) -> MachineMonitor:
    """The monitor ``[monitor] backend`` names (a plug-in); each imports its library only when chosen."""
    from device_agent.hardware.plugins import plugin

    found = plugin("monitor", config.monitor_backend)
    if found is not None and found.create_monitor is not None:
        return found.create_monitor(config)
    return NoMonitor()
