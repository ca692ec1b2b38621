"""The ``octoprint`` machine monitor: a 3D printer's jobs, progress and temperatures from OctoPrint."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from device_agent.hardware import HardwareError
from device_agent.hardware.base import JobStatus
from device_agent.hardware.monitors import MonitorReadError
from device_agent.hardware.plugins import Plugin, paragraph
from device_agent.hardware.printer import FILAMENT_KEYS, PrinterMonitor, filament, number, timing
from device_agent.schema import Key, between, existing_file, http_url, secret_pair

if TYPE_CHECKING:
    from device_agent.config import AgentConfig

log = logging.getLogger(__name__)

# How long a print OctoPrint reports without a file name waits for it before it starts anyway.
NAMELESS_WAIT_S = 3.0

# OctoPrint's printer flags that mean "a job is under way" (cutting power now would spoil it),
# and those of them in which the printer is not actually working.
_JOB_FLAGS = ("printing", "paused", "pausing", "resuming", "cancelling", "finishing")
_IDLE_JOB_FLAGS = ("paused", "pausing", "cancelling")
# The same from the state text of /api/job, for when /api/printer is refused (printer offline).
_JOB_TEXTS = ("Printing", "Starting", "Paused", "Pausing", "Resuming", "Cancelling", "Finishing")
_FAILED_TEXTS = ("Error", "Offline after error", "Offline")
_STATUS_RE = re.compile(r"\((\d{3})\)\s*$")


def _http_status(exc: RuntimeError) -> int | None:
    """octorest raises RuntimeError('Reply for URL was not OK: BODY (STATUS)') for a non-2xx reply."""
    match = _STATUS_RE.search(str(exc))
    return int(match.group(1)) if match else None


class OctoPrintMonitor(PrinterMonitor):
    """Watches a printer through OctoPrint (https://octoprint.org), with ``octorest``.

    Wiring: none besides the printer's USB cable to the computer running OctoPrint (often the
    same Pi: ``octoprint_url = "http://127.0.0.1:5000"``). The relay switches the printer's
    power, not OctoPrint's. Make an application key in OctoPrint (Settings → Application Keys)
    for a user that may read the printer state and put it into ``octoprint_api_key_file``.

    Every ``poll_s`` its thread asks ``/api/job`` and, while the printer is connected,
    ``/api/printer``. A job runs while any of OctoPrint's printing, paused, pausing, resuming,
    cancelling or finishing flags is set; the printer counts as running only while it prints.
    How a job ended is read from the states it went through: into an error or offline →
    ``failed``; through "Cancelling", or left before 100 % → ``cancelled``; else ``completed``.
    Filament is the file's length from OctoPrint's analysis (for an unfinished print: times the
    completion reached); grams from that length, ``filament_diameter_mm`` and
    ``filament_density_g_cm3`` (0 leaves grams out).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        poll_s: float = 2.0,
        timeout_s: float = 5.0,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
        filament_diameter_mm: float = 1.75,
        filament_density_g_cm3: float = 1.24,
    ) -> None:
        # Imported here, so the agent runs without octorest where no printer is watched.
        try:
            import octorest
            import requests
        except ImportError as exc:
            raise HardwareError(
                f"the octoprint monitor needs octorest ({exc}): pip install 'werkbank[pi]'"
            ) from exc

        self._octorest: Any = octorest
        self._requests: Any = requests
        self.url = url.rstrip("/")
        self._api_key = api_key
        self.timeout_s = timeout_s
        self._client: Any = None
        # The whole file's filament (mm, OctoPrint's analysis) of the print under way.
        self._file_filament_mm: float | None = None
        # The print under way went through "Cancelling".
        self._cancelling = False
        # When a print was first seen without its file's name (see read()).
        self._nameless_at: float | None = None
        super().__init__(
            "octoprint-monitor",
            "octoprint_unreachable",
            poll_s,
            retry_max_s,
            lost_hold_s,
            filament_diameter_mm,
            filament_density_g_cm3,
        )
        self._start()

    # ------------------------------------------------------------------ talking to OctoPrint

    def _connect(self) -> Any:
        session = self._requests.Session()
        request = session.request

        # octorest sets no timeout: a hung OctoPrint would block this thread for good and
        # never show up as a fault.
        def with_timeout(method: str, url: str, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.timeout_s)
            return request(method, url, **kwargs)

        session.request = with_timeout
        # OctoRest asks for /api/version right here: this is the first request.
        return self._octorest.OctoRest(url=self.url, apikey=self._api_key, session=session)

    def _fetch(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """``/api/job``, and ``/api/printer`` (None while OctoPrint has no printer connected)."""
        try:
            if self._client is None:
                self._client = self._connect()
            job = self._client.job_info()
            try:
                printer = self._client.printer(exclude=["sd"])
            except RuntimeError as exc:
                if _http_status(exc) != 409:  # 409: "Printer is not operational"
                    raise
                printer = None
        except self._requests.RequestException as exc:
            raise MonitorReadError(
                "octoprint_unreachable", f"OctoPrint at {self.url} does not answer: {exc}"
            ) from exc
        except RuntimeError as exc:
            status = _http_status(exc)
            if status in (401, 403):
                raise MonitorReadError(
                    "octoprint_api_key_rejected",
                    f"OctoPrint at {self.url} refused the API key ({status}): check octoprint_api_key",
                ) from exc
            raise MonitorReadError(
                "octoprint_unreachable", f"OctoPrint at {self.url} answered {status}: {exc}"
            ) from exc
        return job, printer

    # ------------------------------------------------------------------ reading

    def _nameless_since(self, now: float) -> float:
        if self._nameless_at is None:
            self._nameless_at = now
        return self._nameless_at

    def read(self) -> None:
        job, printer = self._fetch()
        now = time.monotonic()
        text = str(job.get("state") or "")
        state = (printer or {}).get("state") or {}
        flags: dict[str, Any] = state.get("flags") or {}
        if flags:
            active = any(flags.get(flag) for flag in _JOB_FLAGS)
            working = active and not any(flags.get(flag) for flag in _IDLE_JOB_FLAGS)
            failed = bool(flags.get("error") or flags.get("closedOrError"))
            cancelling = bool(flags.get("cancelling"))
        else:
            active = text.startswith(_JOB_TEXTS)
            working = active and not text.startswith(("Paused", "Pausing", "Cancelling"))
            failed = text.startswith(_FAILED_TEXTS)
            cancelling = text.startswith("Cancelling")
        progress = job.get("progress") or {}
        completion = number(progress.get("completion"))
        details = job.get("job") or {}

        file = (details.get("file") or {}).get("name")
        if not active:
            self._nameless_at = None
        if (
            self.current is None
            and active
            and file is None
            and now - self._nameless_since(now) < NAMELESS_WAIT_S
        ):
            # OctoPrint reports "Printing" a moment before the job names its file (seen on a
            # freshly started OctoPrint): start the job at the next read, with its file.
            active = working = False
        if active:
            self._nameless_at = None
            if self.current is None:
                self._file_filament_mm = self._filament_length(details.get("filament"))
                self._cancelling = False
            # OctoPrint gives no job id, and its file may be named late: a print lasts until
            # OctoPrint leaves its job states. Its print time is taken when the print is first seen.
            current = self.printing(
                self.current.key if self.current is not None else f"{file}",
                working=working,
                file=file,
                elapsed_s=number(progress.get("printTime")) if self.current is None else None,
                estimated_s=number(details.get("estimatedPrintTime")),
            )
            self._cancelling = self._cancelling or cancelling
            if completion is not None and self._file_filament_mm is not None:
                # Used so far, for a print that does not complete: the file's length times the completion.
                current.filament_mm = self._file_filament_mm * completion / 100
            self.show(completion, self._temps((printer or {}).get("temperature")))
        elif self.current is not None:
            current = self.current
            if failed:
                status: JobStatus = "failed"
            elif self._cancelling or completion is None or completion < 100:
                # A cancel resets OctoPrint's progress at once; a finished print keeps 100 %.
                status = "cancelled"
            else:
                status = "completed"
            duration = current.elapsed_s + (now - current.first_seen)
            last_print = number(details.get("lastPrintTime"))
            length = None
            if status == "completed":
                length = self._file_filament_mm
                if last_print is not None:
                    duration = last_print  # OctoPrint's own measure, not rounded to our poll interval
            self.ended(status, duration, length)
        else:
            self._set_running(False)

    @staticmethod
    def _filament_length(filament: Any) -> float | None:
        """Total length over all tools: ``{"tool0": {"length": mm, "volume": cm3}, …}``."""
        if not isinstance(filament, dict):
            return None
        lengths = [number(tool.get("length")) for tool in filament.values() if isinstance(tool, dict)]
        known = [length for length in lengths if length is not None]
        return sum(known) if known else None

    @staticmethod
    def _temps(temperature: Any) -> dict[str, Any] | None:
        """``{"tool0": {"actual": 210.0, "target": 210.0}, "bed": {…}}`` from /api/printer."""
        if not isinstance(temperature, dict):
            return None
        temps = {}
        for name, reading in temperature.items():
            if isinstance(reading, dict) and number(reading.get("actual")) is not None:
                temps[str(name)] = {"actual": reading["actual"], "target": number(reading.get("target"))}
        return temps or None


# ---------------------------------------------------------------------- config

KEYS = (
    Key(
        "monitor",
        "octoprint_url",
        str,
        "octoprint: OctoPrint's address.",
        default="http://127.0.0.1:5000",
        check=http_url("OctoPrint", "http://127.0.0.1:5000"),
    ),
    Key(
        "monitor",
        "octoprint_api_key",
        str,
        "octoprint: an application key of OctoPrint (or use octoprint_api_key_file).",
        secret=True,
    ),
    Key(
        "monitor",
        "octoprint_api_key_file",
        str,
        "octoprint: file holding the application key (read at start, spaces dropped).",
        path=True,
        check=existing_file,
    ),
    Key(
        "monitor",
        "octoprint_timeout_s",
        float,
        "octoprint: how long one request may take before OctoPrint counts as unreachable.",
        default=5.0,
        check=between(0.1, 60, " s"),
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    both = secret_pair(values, "monitor", "octoprint_api_key")
    if both:
        errors.append(both)
    key, key_file = values["monitor_octoprint_api_key"], values["monitor_octoprint_api_key_file"]
    if values["monitor_backend"] == "octoprint" and key is None and key_file is None:
        errors.append(
            "[monitor] octoprint_api_key: missing; the octoprint backend needs an application key "
            "(OctoPrint: Settings → Application Keys), or octoprint_api_key_file"
        )
    return errors


def _create(config: AgentConfig) -> OctoPrintMonitor:
    api_key = config.secret("monitor_octoprint_api_key")
    assert api_key is not None, "the config check requires an API key for the octoprint backend"
    return OctoPrintMonitor(
        url=config.option("monitor_octoprint_url"),
        api_key=api_key,
        **timing(config, timeout_key="monitor_octoprint_timeout_s"),
        **filament(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="octoprint",
        summary="a 3D printer through OctoPrint's REST API",
        faults=("octoprint_unreachable", "octoprint_api_key_rejected"),
        keys=(*KEYS, *FILAMENT_KEYS),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `octoprint`: a 3D printer through OctoPrint's REST API (`octorest`, installed with the `pi`",
            "extra). Reports `job_started`/`job_finished` (file, estimated and actual time, filament,",
            "completed, cancelled or failed) and progress and temperatures in telemetry. OctoPrint not",
            "answering is a `fault` (`octoprint_unreachable`, or `octoprint_api_key_rejected`), retried",
            "with back-off. Tested against OctoPrint 1.11.8.",
        ),
    ),
)
