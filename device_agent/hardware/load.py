"""Busy detection from the load a machine draws, for machines without an API (laser cutters,
CNC routers, plotters): a current clamp (:mod:`device_agent.hardware.current`) or a metering
smart plug (:mod:`device_agent.hardware.power`) gives a number, this turns it into runs and jobs.
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from typing import Any

from device_agent.hardware.base import (
    JobKind,
    JobStatus,
    MonitorJobFinished,
    MonitorJobStarted,
    MonitorReadings,
)
from device_agent.hardware.monitors import ThreadedMonitor
from device_agent.schema import Key, between

log = logging.getLogger(__name__)


class LoadMonitor(ThreadedMonitor):
    """Every ``poll_s`` its thread takes one :meth:`sample` (amps, watts: the subclass's unit).

    Hysteresis: running once the load stays at or above ``threshold`` for ``min_on_s``; idle
    once it stays below ``release`` for ``min_off_s``. A run that starts after ``job_gap_s``
    or more of idle starts a ``cut`` job; the job ends (``completed``) when the machine has
    been idle for ``job_gap_s``, so the passes of one job stay one job. After a restart the
    first sample is taken as it is (no debouncing against nothing): a machine mid-cut runs now.
    """

    unit = ""
    job_kind: JobKind = "cut"

    def __init__(
        self,
        name: str,
        fault_code: str,
        threshold: float,
        release: float,
        min_on_s: float,
        min_off_s: float,
        job_gap_s: float,
        poll_s: float,
        retry_max_s: float,
        lost_hold_s: float,
    ) -> None:
        self.threshold = threshold
        self.release = release
        self.min_on_s = min_on_s
        self.min_off_s = min_off_s
        self.job_gap_s = job_gap_s
        self._first = True
        self._above_since: float | None = None
        self._below_since: float | None = None
        self._run_ended: float | None = None
        self._job_started: float | None = None  # monotonic start of the open job
        super().__init__(name, fault_code, poll_s, retry_max_s, lost_hold_s)

    @abstractmethod
    def sample(self) -> float:
        """One reading of the load; raise MonitorReadError when it cannot be read."""

    @abstractmethod
    def readings(self, value: float) -> MonitorReadings:
        """What telemetry shows for a sample."""

    def read(self) -> None:
        value = self.sample()
        now = time.monotonic()
        running = self._running
        if self._first:
            self._first = False
            running = value >= self.threshold
            if running:
                self._run_started(now)
        elif not running:
            if value >= self.threshold:
                self._above_since = self._above_since if self._above_since is not None else now
                if now - self._above_since >= self.min_on_s:
                    running = True
                    self._run_started(self._above_since)
            else:
                self._above_since = None
        elif value < self.release:
            self._below_since = self._below_since if self._below_since is not None else now
            if now - self._below_since >= self.min_off_s:
                running = False
                self._run_ended = self._below_since
                self._below_since = None
        else:
            self._below_since = None

        if (
            not running
            and self._job_started is not None
            and self._run_ended is not None
            and self._above_since is None  # not while the load rises again (the next pass, maybe)
            and now - self._run_ended >= self.job_gap_s
        ):
            self._end_job("completed", self._run_ended - self._job_started)
        self._set_running(running)
        self._emit(self.readings(value))

    def _run_started(self, since: float) -> None:
        ended = self._run_ended
        if self._job_started is not None and ended is not None and since - ended >= self.job_gap_s:
            self._end_job("completed", ended - self._job_started)  # the gap was long enough after all
        self._above_since = None
        self._below_since = None
        self._run_ended = None
        if self._job_started is None:
            self._job_started = since
            log.info("load at or above %g %s: a %s job starts", self.threshold, self.unit, self.job_kind)
            self._emit(MonitorJobStarted(kind=self.job_kind))

    def _end_job(self, status: JobStatus, duration_s: float) -> None:
        self._job_started = None
        self._run_ended = None
        log.info("%s job %s after %.1f s", self.job_kind, status, duration_s)
        self._emit(MonitorJobFinished(status=status, duration_s=round(max(duration_s, 0.0), 3)))

    def give_up_job(self) -> None:
        if self._job_started is not None:
            end = self._run_ended if self._run_ended is not None else time.monotonic()
            self._end_job("failed", end - self._job_started)
        self._set_running(False)
        self._first = True  # when the sensor is back, take its first reading as it is


# The timing keys of every load monitor (current, power, gpio_input): each puts them in its keys.
LOAD_KEYS = (
    Key(
        "monitor",
        "min_on_s",
        float,
        "current, power, gpio_input: how long the load must stay above threshold_a (threshold_w; the"
        " busy signal) to count as running.",
        default=1.0,
        check=between(0, 600, " s"),
    ),
    Key(
        "monitor",
        "min_off_s",
        float,
        "current, power, gpio_input: how long it must stay below release_a (release_w; idle) to count"
        " as stopped.",
        default=3.0,
        check=between(0, 600, " s"),
    ),
    Key(
        "monitor",
        "job_gap_s",
        float,
        "current, power, gpio_input: idle time that ends a cut job; runs closer together are one job.",
        default=60.0,
        check=between(0, 86400, " s"),
    ),
)


def timing(config: Any) -> dict[str, float]:
    """The ``[monitor]`` timing keys every load monitor takes, from a checked config."""
    return {
        "min_on_s": config.option("monitor_min_on_s"),
        "min_off_s": config.option("monitor_min_off_s"),
        "job_gap_s": config.option("monitor_job_gap_s"),
        "poll_s": config.monitor_poll_s,
        "retry_max_s": config.monitor_retry_max_s,
        "lost_hold_s": config.monitor_lost_hold_s,
    }
