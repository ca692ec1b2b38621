"""Helpers for the machine monitor tests: a record of what a monitor reported, and the
interface's own test double (:class:`ControlledMonitor`) for the agent's safety rules."""

from __future__ import annotations

import threading
import time
from typing import TypeVar

from device_agent.hardware.base import (
    JobKind,
    JobStatus,
    MachineMonitor,
    MonitorEvent,
    MonitorJobFinished,
    MonitorJobStarted,
    MonitorReadings,
)

E = TypeVar("E")


class EventLog:
    """Polls a monitor (as the agent's loop does) and keeps every event it returned."""

    def __init__(self, monitor: MachineMonitor) -> None:
        self.monitor = monitor
        self.events: list[MonitorEvent] = []

    def pump(self) -> None:
        self.events += self.monitor.poll()

    def of(self, kind: type[E]) -> list[E]:
        self.pump()
        return [e for e in self.events if isinstance(e, kind)]

    def wait(self, kind: type[E], count: int = 1, timeout: float = 10.0) -> list[E]:
        """Wait until ``count`` events of ``kind`` were reported; returns them all."""
        deadline = time.monotonic() + timeout
        while len(found := self.of(kind)) < count:
            assert time.monotonic() < deadline, f"expected {count} {kind.__name__}, got {self.events}"
            time.sleep(0.02)
        return found

    def wait_running(self, running: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.monitor.running() is not running:
            assert time.monotonic() < deadline, f"running() stayed {not running}; events: {self.events}"
            time.sleep(0.02)
        self.pump()


class ControlledMonitor(MachineMonitor):
    """The MachineMonitor interface's own test double: the test says what the machine does.

    It keeps the interface's contract (paired job events; ``running()`` may drop before the
    job's end is polled), so the agent is tested against the contract, not a monitor's quirks.
    """

    def __init__(self, running: bool = False) -> None:
        self._running = running
        self._events: list[MonitorEvent] = []
        self._lock = threading.Lock()
        self.closed = False

    def running(self) -> bool:
        return self._running

    def poll(self) -> list[MonitorEvent]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def close(self) -> None:
        self.closed = True

    def push(self, event: MonitorEvent) -> None:
        with self._lock:
            self._events.append(event)

    def start_job(
        self, file: str | None = "bracket.gcode", kind: JobKind = "print", elapsed_s: float = 0.0
    ) -> None:
        self._running = True
        self.push(MonitorJobStarted(kind=kind, file=file, estimated_s=600.0, elapsed_s=elapsed_s))
        self.push(MonitorReadings(progress=1.0, temps={"tool0": {"actual": 200.0, "target": 200.0}}))

    def pause(self) -> None:
        """Mid-job but not working (a paused print): the job is still open."""
        self._running = False

    def resume(self) -> None:
        self._running = True

    def finish_job(self, status: JobStatus = "completed", duration_s: float = 42.0) -> None:
        self._running = False
        self.push(
            MonitorJobFinished(status=status, duration_s=duration_s, filament_mm=1234.5, filament_g=3.68)
        )
        self.push(MonitorReadings())
