"""The ``moonraker`` machine monitor: a Klipper printer through Moonraker's HTTP API.

Every ``[monitor] poll_s`` it asks ``GET /printer/objects/query?print_stats&virtual_sdcard&
extruder&heater_bed`` (answer ``{"result": {"eventtime", "status": {…}}}``). ``print_stats``
says what the printer does: ``state`` standby, printing, paused, complete, cancelled or error;
``filename``; ``total_duration`` (s, pauses included); ``filament_used`` (mm). A print is under
way while printing or paused; it runs only while printing. When it is over, Moonraker's job
history (``GET /server/history/list?limit=1&order=desc``: ``status`` completed, cancelled,
error, klippy_shutdown, klippy_disconnect, interrupted; ``total_duration``, ``filament_used``)
says how it ended; the file's metadata (``GET /server/files/metadata?filename=``:
``estimated_time``, ``filament_total``, ``filament_weight_total``) gives the estimate and the
grams where the slicer wrote them. Payloads of Moonraker 0.8 to 0.11 with Klipper 0.11/0.12
(tested against Moonraker 0.11.0 from PyPI).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import Any

from device_agent.hardware.base import JobStatus, MachineMonitor
from device_agent.hardware.monitors import MonitorReadError
from device_agent.hardware.plugins import Plugin, paragraph
from device_agent.hardware.printer import (
    FILAMENT_KEYS,
    TIMEOUT_KEY,
    HttpJson,
    PrinterMonitor,
    filament,
    number,
    temperatures,
    timing,
)
from device_agent.schema import Key, existing_file, http_url, secret_pair

log = logging.getLogger(__name__)

QUERY = "/printer/objects/query?print_stats&virtual_sdcard&extruder&heater_bed"
# Moonraker's history statuses → ours.
_HISTORY: dict[str, JobStatus] = {
    "completed": "completed",
    "cancelled": "cancelled",
    "error": "failed",
    "klippy_shutdown": "failed",
    "klippy_disconnect": "failed",
    "interrupted": "failed",
}
_STATES: dict[str, JobStatus] = {"complete": "completed", "cancelled": "cancelled", "error": "failed"}


class MoonrakerMonitor(PrinterMonitor):
    """Watches a Klipper printer through Moonraker (see the module docstring).

    Wiring: none; the printer's Pi runs Klipper and Moonraker, the agent asks Moonraker over the
    LAN (or on the same Pi: ``moonraker_url = "http://127.0.0.1:7125"``). Moonraker trusts the
    clients its ``[authorization] trusted_clients`` lists; otherwise give the agent an API key
    (Moonraker: ``GET /access/api_key``) in ``moonraker_api_key_file``.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        poll_s: float = 2.0,
        timeout_s: float = 5.0,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
        filament_diameter_mm: float = 1.75,
        filament_density_g_cm3: float = 1.24,
    ) -> None:
        self.http = HttpJson(
            "moonraker", "Moonraker", url, timeout_s, headers={"X-Api-Key": api_key} if api_key else None
        )
        self._metadata: dict[str, Any] = {}
        super().__init__(
            "moonraker-monitor",
            "moonraker_unreachable",
            poll_s,
            retry_max_s,
            lost_hold_s,
            filament_diameter_mm,
            filament_density_g_cm3,
        )
        self._start()

    def close(self) -> None:
        super().close()
        self.http.close()

    def _result(self, path: str) -> Any:
        status, body = self.http.get(path, allow=(503,))
        if status == 503:
            message = (body or {}).get("error", {}).get("message", "") if isinstance(body, dict) else ""
            raise MonitorReadError(
                "klipper_not_ready", f"{self.http.label}: Klipper is not ready ({message or 'no message'})"
            )
        result = body.get("result") if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise MonitorReadError(
                "moonraker_unreachable", f"{self.http.label} answered {path} with {body!r:.200}"
            )
        return result

    def read(self) -> None:
        status = self._result(QUERY).get("status") or {}
        stats: dict[str, Any] = status.get("print_stats") or {}
        state = str(stats.get("state") or "")
        file = stats.get("filename") or None
        if state in ("printing", "paused"):
            key = f"{file}"
            known = self.current
            if known is None or known.key != key:
                self._metadata = self._file_metadata(file)
            current = self.printing(
                key,
                working=state == "printing",
                file=file,
                elapsed_s=number(stats.get("total_duration")),
                estimated_s=number(self._metadata.get("estimated_time")),
            )
            current.filament_mm = number(stats.get("filament_used"))
            current.filament_g = self._grams(current.filament_mm)
            sdcard = status.get("virtual_sdcard") or {}
            progress = number(sdcard.get("progress"))
            extruder, bed = status.get("extruder") or {}, status.get("heater_bed") or {}
            temps = temperatures(
                {
                    "tool0": (extruder.get("temperature"), extruder.get("target")),
                    "bed": (bed.get("temperature"), bed.get("target")),
                }
            )
            self.show(None if progress is None else progress * 100, temps)
        elif self.current is not None:
            self._over(state, stats)
        else:
            self._set_running(False)

    def _over(self, state: str, stats: Mapping[str, Any]) -> None:
        """The print under way has ended: how, from the job history, else from print_stats."""
        current = self.current
        assert current is not None
        status: JobStatus = _STATES.get(state, "cancelled")  # standby: reset before it completed
        duration = number(stats.get("total_duration")) if stats.get("filename") == current.file else None
        filament = number(stats.get("filament_used")) if stats.get("filename") == current.file else None
        jobs = (self._result("/server/history/list?limit=1&order=desc").get("jobs") or [None])[0]
        if isinstance(jobs, dict) and jobs.get("filename") == current.file and jobs.get("status") in _HISTORY:
            status = _HISTORY[str(jobs["status"])]
            duration = number(jobs.get("total_duration")) or duration
            filament = (
                number(jobs.get("filament_used")) if jobs.get("filament_used") is not None else filament
            )
        self.ended(status, duration, filament, self._grams(filament))

    def _file_metadata(self, file: str | None) -> dict[str, Any]:
        if not file:
            return {}
        status, body = self.http.get(
            "/server/files/metadata?filename=" + urllib.parse.quote(file), allow=(404, 400)
        )
        result = body.get("result") if status == 200 and isinstance(body, dict) else None
        return result if isinstance(result, dict) else {}

    def _grams(self, used_mm: float | None) -> float | None:
        """Grams from the slicer's own weight for the file, in proportion to the length used."""
        total_mm = number(self._metadata.get("filament_total"))
        total_g = number(self._metadata.get("filament_weight_total"))
        if used_mm is None or not total_mm or total_g is None:
            return None  # PrinterMonitor then computes it from diameter and density
        return total_g * used_mm / total_mm


# ---------------------------------------------------------------------- config

KEYS = (
    Key(
        "monitor",
        "moonraker_url",
        str,
        "moonraker: Moonraker's address (Klipper printers).",
        default="http://127.0.0.1:7125",
        check=http_url("Moonraker", "http://127.0.0.1:7125"),
    ),
    Key(
        "monitor",
        "moonraker_api_key",
        str,
        "moonraker: Moonraker's API key, when it does not trust the agent's address"
        " (or use moonraker_api_key_file).",
        secret=True,
    ),
    Key(
        "monitor",
        "moonraker_api_key_file",
        str,
        "moonraker: file holding Moonraker's API key (read at start, spaces dropped).",
        path=True,
        check=existing_file,
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    both = secret_pair(values, "monitor", "moonraker_api_key")
    return [both] if both else []


def _create(config: Any) -> MachineMonitor:
    return MoonrakerMonitor(
        url=config.option("monitor_moonraker_url"),
        api_key=config.secret("monitor_moonraker_api_key"),
        **timing(config),
        **filament(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="moonraker",
        summary="a Klipper printer through Moonraker's HTTP API",
        faults=("moonraker_unreachable", "moonraker_auth_rejected", "klipper_not_ready"),
        keys=(*KEYS, TIMEOUT_KEY, *FILAMENT_KEYS),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `moonraker`: a Klipper printer through Moonraker's HTTP API (`print_stats`,",
            "`virtual_sdcard`, the job history and the file's metadata; Moonraker 0.8 to 0.11). Jobs",
            "with file, estimate, duration and filament (mm; grams from the slicer's weight, else",
            "from `filament_diameter_mm` and `filament_density_g_cm3`); progress and temperatures in",
            "telemetry. Moonraker not answering is a `fault` (`moonraker_unreachable`,",
            "`moonraker_auth_rejected`; `klipper_not_ready` while Moonraker answers but Klipper does",
            "not), retried with back-off. Give Moonraker's `trusted_clients` the Pi's address, or an",
            "API key in `moonraker_api_key_file`.",
        ),
    ),
)
