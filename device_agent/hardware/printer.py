"""What the 3D printer monitors (OctoPrint, Moonraker, PrusaLink, Bambu Lab) share: one print at a
time, turned into the monitor events, their common config keys, and HTTP with faults that say
what to fix.

A subclass reads its printer in :meth:`read` and tells :class:`PrinterMonitor` what it saw:
:meth:`PrinterMonitor.printing` while a print is under way (running or paused),
:meth:`PrinterMonitor.ended` when it is over, :meth:`PrinterMonitor.show` for telemetry. The
bookkeeping of a job (started once, finished once, a print replaced unseen, duration, filament
and grams, giving up on an unreadable printer) is done here and nowhere else.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from device_agent.hardware.base import JobStatus, MonitorJobFinished, MonitorJobStarted, MonitorReadings
from device_agent.hardware.monitors import MonitorReadError, ThreadedMonitor
from device_agent.schema import Key, between

log = logging.getLogger(__name__)


def number(value: Any) -> float | None:
    """A JSON number as float; None for anything else (a string, a bool, null)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class Print:
    """The print under way, as first seen and as last seen."""

    key: str  # what tells one print from the next (a job id, a file and start time)
    file: str | None
    first_seen: float  # monotonic
    elapsed_s: float  # the printer's own run time when first seen
    duration_s: float | None = None  # the printer's own run time as last seen
    progress: float | None = None  # 0..100
    filament_mm: float | None = None  # used so far, where the printer tells it
    filament_g: float | None = None


class PrinterMonitor(ThreadedMonitor):
    """One print at a time: started once, finished once (see MachineMonitor's contract)."""

    def __init__(
        self,
        name: str,
        fault_code: str,
        poll_s: float,
        retry_max_s: float,
        lost_hold_s: float,
        filament_diameter_mm: float = 1.75,
        filament_density_g_cm3: float = 1.24,
    ) -> None:
        self.filament_diameter_mm = filament_diameter_mm
        self.filament_density_g_cm3 = filament_density_g_cm3
        self.current: Print | None = None
        super().__init__(name, fault_code, poll_s, retry_max_s, lost_hold_s)

    # ------------------------------------------------------------------ for subclasses

    def printing(
        self,
        key: str,
        working: bool,
        file: str | None,
        elapsed_s: float | None = None,
        estimated_s: float | None = None,
    ) -> Print:
        """A print ``key`` is under way (``working``: not paused). Starts the job when it is new."""
        current = self.current
        restarted = (
            current is not None
            and current.key == key
            and elapsed_s is not None
            and current.duration_s is not None
            and elapsed_s + 1 < current.duration_s
        )
        if current is not None and (current.key != key or restarted):
            # A new print while the old one was never seen ending (the agent polled past it; the
            # same file again shows as a run time that went back).
            log.warning("print of %s replaced by %s without an end seen", current.file, file)
            self.ended(self.by_progress())
            current = None
        if current is None:
            current = self.current = Print(
                key=key, file=file, first_seen=time.monotonic(), elapsed_s=max(elapsed_s or 0.0, 0.0)
            )
            log.info("print of %s started", file)
            self._emit(
                MonitorJobStarted(
                    kind="print", file=file, estimated_s=estimated_s, elapsed_s=current.elapsed_s
                )
            )
        if elapsed_s is not None:
            current.duration_s = elapsed_s
        self._set_running(working)
        return current

    def ended(
        self,
        status: JobStatus,
        duration_s: float | None = None,
        filament_mm: float | None = None,
        filament_g: float | None = None,
    ) -> None:
        """The print under way (if any) is over; what the printer did not say is taken from what was seen."""
        current = self.current
        self._set_running(False)
        if current is None:
            return
        self.current = None
        if duration_s is None:
            duration_s = current.duration_s
        if duration_s is None:
            duration_s = current.elapsed_s + (time.monotonic() - current.first_seen)
        length = filament_mm if filament_mm is not None else current.filament_mm
        grams = filament_g if filament_g is not None else current.filament_g
        if grams is None and length is not None and self.filament_density_g_cm3 > 0:
            area_mm2 = math.pi * (self.filament_diameter_mm / 2) ** 2
            grams = length * area_mm2 / 1000 * self.filament_density_g_cm3
        log.info("print of %s %s after %.0f s", current.file, status, duration_s)
        self._emit(
            MonitorJobFinished(
                status=status,
                duration_s=round(max(duration_s, 0.0), 3),
                filament_mm=None if length is None else round(max(length, 0.0), 1),
                filament_g=None if grams is None else round(max(grams, 0.0), 2),
            )
        )
        self._emit(MonitorReadings())  # no progress or temperatures once the job is over

    def by_progress(self) -> JobStatus:
        """How the print under way ended when the printer went idle without saying: by how far it got."""
        current = self.current
        return "completed" if current is not None and (current.progress or 0) >= 100 else "cancelled"

    def show(self, progress: float | None, temps: Mapping[str, Any] | None) -> None:
        """Telemetry while a print is under way."""
        current = self.current
        if current is None:
            return
        if progress is not None:
            current.progress = min(max(progress, 0.0), 100.0)
        self._emit(
            MonitorReadings(
                progress=None if current.progress is None else round(current.progress, 1),
                temps=dict(temps) if temps else None,
            )
        )

    def give_up_job(self) -> None:
        if self.current is not None:
            log.warning(
                "printer unreadable for %g s: taking the print of %s as failed",
                self.lost_hold_s,
                self.current.file,
            )
            self.ended("failed", self.current.elapsed_s + (time.monotonic() - self.current.first_seen))


def temperature(actual: Any, target: Any) -> dict[str, Any] | None:
    value = number(actual)
    return None if value is None else {"actual": value, "target": number(target)}


def temperatures(readings: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """``{"tool0": {"actual", "target"}, …}`` from ``{"tool0": (actual, target), …}``; unread left out."""
    found = {name: temperature(actual, target) for name, (actual, target) in readings.items()}
    return {name: reading for name, reading in found.items() if reading is not None}


# ---------------------------------------------------------------------- config the printers share

TIMEOUT_KEY = Key(
    "monitor",
    "timeout_s",
    float,
    "moonraker, prusalink, bambu: how long one request to the printer may take before it counts as"
    " unreachable.",
    default=5.0,
    check=between(0.1, 60, " s"),
)
# For the printers whose own answer has no grams (octoprint; moonraker when the slicer wrote none).
FILAMENT_KEYS = (
    Key(
        "monitor",
        "filament_diameter_mm",
        float,
        "octoprint, moonraker: filament diameter, for the grams of a job (when the slicer gives none).",
        default=1.75,
        check=between(0.5, 5, " mm"),
    ),
    Key(
        "monitor",
        "filament_density_g_cm3",
        float,
        "octoprint, moonraker: filament density (PLA 1.24, PETG 1.27, ABS 1.04); 0 = report no grams.",
        default=1.24,
        check=between(0, 5, " g/cm³"),
    ),
)


def timing(config: Any, timeout_key: str = "monitor_timeout_s") -> dict[str, float]:
    """The ``[monitor]`` timing keys every printer monitor takes, from a checked config."""
    return {
        "poll_s": config.monitor_poll_s,
        "timeout_s": config.option(timeout_key),
        "retry_max_s": config.monitor_retry_max_s,
        "lost_hold_s": config.monitor_lost_hold_s,
    }


def filament(config: Any) -> dict[str, float]:
    """The filament keys (FILAMENT_KEYS), for the grams of a job."""
    return {
        "filament_diameter_mm": config.option("monitor_filament_diameter_mm"),
        "filament_density_g_cm3": config.option("monitor_filament_density_g_cm3"),
    }


class HttpJson:
    """GETs JSON from a printer's HTTP API through one ``requests`` session, with a timeout.

    Failures become MonitorReadError: ``<name>_unreachable`` (no answer, an error status, not
    JSON) or ``<name>_auth_rejected`` (401/403), each naming the address and what to check.
    """

    def __init__(
        self,
        name: str,
        label: str,
        url: str,
        timeout_s: float,
        auth: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        import requests

        self._requests: Any = requests
        self.name = name
        self.url = url.rstrip("/")
        self.label = f"{label} at {self.url}"
        self.timeout_s = timeout_s
        self.session: Any = requests.Session()
        self.session.auth = auth
        self.session.headers.update(headers or {})

    def get(self, path: str, allow: tuple[int, ...] = ()) -> tuple[int, Any]:
        """(status, JSON body or None) of a GET; status 200 or one of ``allow``."""
        try:
            reply = self.session.get(f"{self.url}{path}", timeout=self.timeout_s)
        except self._requests.RequestException as exc:
            raise MonitorReadError(
                f"{self.name}_unreachable", f"{self.label} does not answer: {exc}"
            ) from exc
        if reply.status_code in (401, 403):
            raise MonitorReadError(
                f"{self.name}_auth_rejected",
                f"{self.label} refused the login ({reply.status_code}): "
                f"check the {self.name} keys of [monitor]",
            )
        if reply.status_code in allow:
            return reply.status_code, None if not reply.content else self._json(reply)
        if reply.status_code != 200:
            raise MonitorReadError(
                f"{self.name}_unreachable", f"{self.label} answered {reply.status_code}: {reply.text[:200]}"
            )
        return 200, self._json(reply)

    def _json(self, reply: Any) -> Any:
        try:
            return reply.json()
        except ValueError as exc:
            raise MonitorReadError(
                f"{self.name}_unreachable", f"{self.label} sent no JSON: {reply.text[:200]!r}"
            ) from exc

    def close(self) -> None:
        self.session.close()
