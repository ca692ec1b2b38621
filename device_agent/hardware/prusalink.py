"""The ``prusalink`` machine monitor: a Prusa printer (MK4, MK3.9, Core One, XL, MINI) through
PrusaLink's HTTP API v1.

Every ``[monitor] poll_s`` it asks ``GET /api/v1/status``: ``printer.state`` (IDLE, BUSY,
PRINTING, PAUSED, FINISHED, STOPPED, ERROR, ATTENTION, READY), the temperatures, and while
there is a job ``job.id``, ``job.progress`` (%) and ``job.time_printing`` (s). A print is under
way while the state is PRINTING, PAUSED or ATTENTION (it waits for someone, e.g. a filament
runout); it runs only while PRINTING. For a new job id it asks ``GET /api/v1/job`` once for
the file (``display_name``) and the slicer's ``meta``: ``estimated_print_time``,
``filament used [mm]`` and ``filament used [g]`` (for a print that did not complete, times
the progress reached). The job ends FINISHED (``completed``), STOPPED (``cancelled``) or ERROR
(``failed``). Login: HTTP digest (user ``maker``, the password on the printer's screen under
Settings → Network → PrusaLink) or, on older firmware, an ``X-Api-Key``. Payloads of the
PrusaLink API v1 (``spec/openapi.yaml`` of prusa3d/Prusa-Link-Web, 1.0.0; Buddy firmware 5.1
to 6.x, PrusaLink 0.8 on a Pi for the MK3S).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device_agent.hardware.base import JobStatus, MachineMonitor
from device_agent.hardware.plugins import Plugin, paragraph
from device_agent.hardware.printer import TIMEOUT_KEY, HttpJson, PrinterMonitor, number, temperatures, timing
from device_agent.schema import Key, existing_file, http_url, needed_by, secret_pair

_UNDER_WAY = ("PRINTING", "PAUSED", "ATTENTION")
_ENDED: dict[str, JobStatus] = {"FINISHED": "completed", "STOPPED": "cancelled", "ERROR": "failed"}


class PrusaLinkMonitor(PrinterMonitor):
    """Watches a Prusa printer through PrusaLink (see the module docstring).

    Wiring: none; the printer is on the LAN with PrusaLink switched on. Give it a fixed address.
    """

    def __init__(
        self,
        url: str,
        user: str = "maker",
        password: str | None = None,
        api_key: str | None = None,
        poll_s: float = 2.0,
        timeout_s: float = 5.0,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
    ) -> None:
        auth = None
        if password:
            from requests.auth import HTTPDigestAuth

            auth = HTTPDigestAuth(user, password)
        self.http = HttpJson(
            "prusalink",
            "PrusaLink",
            url,
            timeout_s,
            auth=auth,
            headers={"X-Api-Key": api_key} if api_key else None,
        )
        self._meta: dict[str, Any] = {}
        super().__init__("prusalink-monitor", "prusalink_unreachable", poll_s, retry_max_s, lost_hold_s)
        self._start()

    def close(self) -> None:
        super().close()
        self.http.close()

    def read(self) -> None:
        _, status = self.http.get("/api/v1/status")
        printer: dict[str, Any] = (status or {}).get("printer") or {}
        job: dict[str, Any] = (status or {}).get("job") or {}
        state = str(printer.get("state") or "")
        job_id = job.get("id")
        progress = number(job.get("progress"))
        if state in _UNDER_WAY and job_id is not None:
            key = str(job_id)
            file = self.current.file if self.current is not None and self.current.key == key else None
            estimated = None
            if self.current is None or self.current.key != key:
                file, estimated = self._job_file()
            under_way = self.printing(
                key,
                working=state == "PRINTING",
                file=file,
                elapsed_s=number(job.get("time_printing")),
                estimated_s=estimated,
            )
            under_way.filament_mm, under_way.filament_g = self._filament(progress)
            temps = temperatures(
                {
                    "tool0": (printer.get("temp_nozzle"), printer.get("target_nozzle")),
                    "bed": (printer.get("temp_bed"), printer.get("target_bed")),
                }
            )
            self.show(progress, temps)
            return
        current = self.current
        if current is None:
            self._set_running(False)
            return
        if job_id is not None and str(job_id) == current.key:
            if progress is not None:
                current.progress = progress
            current.duration_s = number(job.get("time_printing")) or current.duration_s
        # Back to IDLE/READY before the end was seen: by how far it got.
        ended = _ENDED.get(state) or self.by_progress()
        mm, grams = self._filament(100.0 if ended == "completed" else current.progress)
        self.ended(ended, current.duration_s, mm, grams)

    def _job_file(self) -> tuple[str | None, float | None]:
        """The file of the job under way and the slicer's estimate; remembers its meta."""
        code, job = self.http.get("/api/v1/job", allow=(204,))
        self._meta = {}
        if code == 204 or not isinstance(job, dict):
            return None, None
        file = job.get("file") or {}
        meta = file.get("meta") if isinstance(file, dict) else None
        self._meta = meta if isinstance(meta, dict) else {}
        name = (file.get("display_name") or file.get("name")) if isinstance(file, dict) else None
        return (str(name) if name else None), number(self._meta.get("estimated_print_time"))

    def _filament(self, progress: float | None) -> tuple[float | None, float | None]:
        """Filament used so far: the slicer's totals times the progress reached."""
        if progress is None:
            return None, None
        share = min(max(progress, 0.0), 100.0) / 100
        mm = number(self._meta.get("filament used [mm]"))
        grams = number(self._meta.get("filament used [g]"))
        return (None if mm is None else mm * share), (None if grams is None else grams * share)


# ---------------------------------------------------------------------- config

KEYS = (
    Key(
        "monitor",
        "prusalink_url",
        str,
        "prusalink: the printer's address (PrusaLink on a Prusa MK4, Core One, XL, MINI or a Pi).",
        check=http_url("the Prusa printer", "http://192.168.1.60"),
    ),
    Key(
        "monitor",
        "prusalink_user",
        str,
        'prusalink: PrusaLink\'s login name (the printer shows it: usually "maker").',
        default="maker",
    ),
    Key(
        "monitor",
        "prusalink_password",
        str,
        "prusalink: PrusaLink's password (or use prusalink_password_file).",
        secret=True,
    ),
    Key(
        "monitor",
        "prusalink_password_file",
        str,
        "prusalink: file holding PrusaLink's password (read at start, spaces dropped).",
        path=True,
        check=existing_file,
    ),
    Key(
        "monitor",
        "prusalink_api_key",
        str,
        "prusalink: an API key instead of the password (older firmware; X-Api-Key).",
        secret=True,
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    both = secret_pair(values, "monitor", "prusalink_password")
    if both:
        errors.append(both)
    if values.get("monitor_backend") != "prusalink":
        return errors
    errors += needed_by(
        values,
        "monitor",
        "prusalink",
        (("prusalink_url", "the printer's address, e.g. http://192.168.1.60"),),
    )
    logins = [values.get(f"monitor_prusalink_{k}") for k in ("password", "password_file", "api_key")]
    if all(v is None for v in logins):
        errors.append(
            "[monitor] prusalink_password: missing; give PrusaLink's password (the printer shows it under "
            "Settings → Network → PrusaLink), in prusalink_password_file, or an api key"
        )
    return errors


def _create(config: Any) -> MachineMonitor:
    return PrusaLinkMonitor(
        url=config.option("monitor_prusalink_url"),
        user=config.option("monitor_prusalink_user"),
        password=config.secret("monitor_prusalink_password"),
        api_key=config.option("monitor_prusalink_api_key"),
        **timing(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="prusalink",
        summary="a Prusa printer through PrusaLink's HTTP API v1",
        faults=("prusalink_unreachable", "prusalink_auth_rejected"),
        keys=(*KEYS, TIMEOUT_KEY),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `prusalink`: a Prusa printer (MK4, Core One, XL, MINI; an MK3S with PrusaLink on a Pi)",
            "through PrusaLink's HTTP API v1 (`/api/v1/status`, `/api/v1/job`; digest login `maker`",
            "and the password the printer shows). Jobs with file, the slicer's estimate, duration and",
            "filament (mm and grams from the file's metadata, times the progress reached); progress",
            "and temperatures in telemetry. A paused print or one waiting for someone (ATTENTION:",
            "filament runout) is still a job. PrusaLink not answering is a `fault`",
            "(`prusalink_unreachable`, `prusalink_auth_rejected`). Payloads of PrusaLink's OpenAPI",
            "description (API v1; Buddy firmware 5.1 to 6.x).",
        ),
    ),
)
