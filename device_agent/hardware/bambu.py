"""The ``bambu`` machine monitor: a Bambu Lab printer (X1, P1, A1 series) through its local MQTT.

In LAN mode the printer is an MQTT broker: TLS on port 8883, user ``bblp``, password = the
access code its screen shows, a certificate from Bambu Lab's own CA whose CN is the printer's
serial. The monitor subscribes to ``device/<serial>/report`` and asks for a full report
(``{"pushing": {"sequence_id": "…", "command": "pushall"}}`` on ``device/<serial>/request``)
at every connect; after that P1/A1 firmware sends only what changed, so the reports are merged.
It reads the ``print`` object: ``gcode_state`` (IDLE, PREPARE, RUNNING, PAUSE, FINISH, FAILED),
``subtask_name`` (the job's name; else ``gcode_file``), ``gcode_start_time`` (epoch seconds),
``mc_percent``, ``mc_remaining_time`` (minutes), ``print_error`` and the temperatures
(``nozzle_temper``/``nozzle_target_temper``, ``bed_temper``/…, ``chamber_temper``). A print is
under way in PREPARE (heating, levelling: the printer works), RUNNING and PAUSE; it ends FINISH
(``completed``), FAILED (``cancelled`` when ``print_error`` is 50348044, 0x0300400C, "task
cancelled"; else ``failed``) or back to IDLE before either (``cancelled``). The printer does not
report filament used. Field names from the community's OpenBambuAPI ``mqtt.md`` (push_status of
X1C firmware 01.01.x) and as P1/A1 firmware 01.04+ send them.

The connection runs in paho's thread; the monitor's own thread turns the merged report into
events every ``[monitor] poll_s``.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any

from device_agent.hardware.base import JobStatus, MachineMonitor
from device_agent.hardware.monitors import MonitorReadError
from device_agent.hardware.plugins import Plugin, paragraph
from device_agent.hardware.printer import TIMEOUT_KEY, PrinterMonitor, number, temperatures, timing
from device_agent.schema import Key, between, existing_file, matches, needed_by, secret_pair

log = logging.getLogger(__name__)

CANCELLED = 50348044  # print_error of a print stopped from the screen or the app (0x0300400C)
_UNDER_WAY = ("PREPARE", "RUNNING", "PAUSE")


class BambuMonitor(PrinterMonitor):
    """Watches a Bambu Lab printer over its local MQTT (see the module docstring).

    Wiring: none; the printer on the LAN in "LAN only" or developer mode with a fixed address.
    ``ca_file``: Bambu Lab's CA certificate (the printer's certificate must chain to it and name
    the serial); without it the connection is encrypted but the printer's identity unchecked.
    """

    def __init__(
        self,
        host: str,
        serial: str,
        access_code: str,
        port: int = 8883,
        ca_file: str | None = None,
        poll_s: float = 1.0,
        timeout_s: float = 5.0,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
    ) -> None:
        self.host = host
        self.port = port
        self.serial = serial
        self.access_code = access_code
        self.ca_file = ca_file
        self.timeout_s = timeout_s
        self.label = f"Bambu printer {serial} at {host}:{port}"
        self._report: dict[str, Any] = {}
        self._report_lock = threading.Lock()
        self._client: Any = None
        self._connected = threading.Event()
        self._answered = threading.Event()  # a CONNACK came, yes or no
        self._refused: str | None = None
        self._sequence = 0
        if ca_file is None:
            log.warning("%s: no bambu_ca_file, so the printer's identity is not checked", self.label)
        super().__init__("bambu-monitor", "bambu_unreachable", poll_s, retry_max_s, lost_hold_s)
        self._start()

    # ------------------------------------------------------------------ the connection

    def _connect(self) -> None:
        """Connect in this (the monitor's) thread, so a refused certificate or login is seen as such."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"werkbank-{self.serial}", protocol=mqtt.MQTTv311
        )
        client.username_pw_set("bblp", self.access_code)
        if self.ca_file is not None:
            client.tls_set(ca_certs=self.ca_file, cert_reqs=ssl.CERT_REQUIRED)
        else:
            client.tls_set(cert_reqs=ssl.CERT_NONE)
        # The certificate names the serial, not the address: checked below instead of the host name.
        client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 30)
        self._refused = None
        self._answered.clear()
        try:
            client.connect(self.host, self.port, keepalive=30)
        except ssl.SSLCertVerificationError as exc:
            raise MonitorReadError(
                "bambu_certificate_rejected",
                f"{self.label}: its TLS certificate is not from the CA in bambu_ca_file "
                f"({exc.verify_message})",
            ) from exc
        except (OSError, ssl.SSLError) as exc:
            raise MonitorReadError("bambu_unreachable", f"{self.label} does not answer: {exc}") from exc
        if self.ca_file is not None:
            self._check_identity(client)
        client.loop_start()
        self._client = client
        if not self._answered.wait(self.timeout_s):
            self._drop()
            raise MonitorReadError("bambu_unreachable", f"{self.label} accepted TLS but sent no MQTT answer")

    def _check_identity(self, client: Any) -> None:
        sock = client.socket()
        cert = sock.getpeercert() if sock is not None else None
        names = [
            value for rdn in (cert or {}).get("subject", ()) for key, value in rdn if key == "commonName"
        ]
        if self.serial not in names:
            client.disconnect()
            raise MonitorReadError(
                "bambu_certificate_rejected",
                f"{self.label}: its certificate names {names or 'nobody'}, not serial {self.serial}: "
                "check bambu_host and bambu_serial",
            )

    def _drop(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            self._answered.set()
            client.disconnect()
            return
        client.subscribe(f"device/{self.serial}/report", qos=0)
        # After every (re)connect: the full state, not only what changes from now on.
        self._sequence += 1
        request = {"pushing": {"sequence_id": str(self._sequence), "command": "pushall"}}
        client.publish(f"device/{self.serial}/request", json.dumps(request), qos=1)
        self._connected.set()
        self._answered.set()

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if self._connected.is_set():
            log.warning("%s: connection lost (%s); paho reconnects", self.label, reason_code)
        self._connected.clear()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            report = json.loads(message.payload)
        except ValueError:
            log.warning("%s sent a report that is not JSON; ignored", self.label)
            return
        status = report.get("print") if isinstance(report, dict) else None
        if isinstance(status, dict) and status.get("command") == "push_status":
            with self._report_lock:
                self._report.update(status)

    def close(self) -> None:
        super().close()
        self._drop()

    # ------------------------------------------------------------------ reading

    def read(self) -> None:
        if self._client is None:
            self._connect()
        if self._refused is not None:
            refused = self._refused
            self._drop()
            raise MonitorReadError(
                "bambu_access_code_rejected",
                f"{self.label} refused the login ({refused}): check bambu_access_code "
                "(the printer's screen shows it)",
            )
        if not self._connected.is_set():
            raise MonitorReadError("bambu_unreachable", f"{self.label}: the connection is lost; reconnecting")
        with self._report_lock:
            report = dict(self._report)
        if not report:
            return  # connected, the full report not in yet
        state = str(report.get("gcode_state") or "")
        if state in _UNDER_WAY:
            file = str(report.get("subtask_name") or report.get("gcode_file") or "") or None
            started = number(_float(report.get("gcode_start_time")))
            elapsed = time.time() - started if started else None
            if elapsed is not None and not 0 <= elapsed < 7 * 86400:
                elapsed = None  # the printer's clock is off (LAN-only, no time server): measure ourselves
            remaining = number(report.get("mc_remaining_time"))
            estimated = None if elapsed is None or remaining is None else elapsed + remaining * 60
            key = f"{file}@{report.get('gcode_start_time')}"
            self.printing(key, working=state != "PAUSE", file=file, elapsed_s=elapsed, estimated_s=estimated)
            temps = temperatures(
                {
                    "tool0": (report.get("nozzle_temper"), report.get("nozzle_target_temper")),
                    "bed": (report.get("bed_temper"), report.get("bed_target_temper")),
                    "chamber": (report.get("chamber_temper"), None),
                }
            )
            self.show(number(report.get("mc_percent")), temps)
        elif self.current is not None:
            status: JobStatus
            if state == "FINISH":
                status = "completed"
            elif state == "FAILED":
                status = "cancelled" if report.get("print_error") == CANCELLED else "failed"
            else:
                status = self.by_progress()
            self.ended(status)
        else:
            self._set_running(False)


def _float(value: Any) -> float | None:
    """``gcode_start_time`` comes as text ("1700000000")."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------- config

KEYS = (
    Key("monitor", "bambu_host", str, "bambu: the printer's address on the LAN (give it a fixed one)."),
    Key(
        "monitor",
        "bambu_port",
        int,
        "bambu: the printer's MQTT over TLS port.",
        default=8883,
        check=between(1, 65535),
    ),
    Key(
        "monitor",
        "bambu_serial",
        str,
        "bambu: the printer's serial number (screen: Settings → Device; also its certificate's name).",
        check=matches(re.compile(r"^[0-9A-Z]{8,20}$"), "must be the serial: 8-20 capital letters and digits"),
    ),
    Key(
        "monitor",
        "bambu_access_code",
        str,
        "bambu: the LAN access code the printer's screen shows (or use bambu_access_code_file).",
        secret=True,
    ),
    Key(
        "monitor",
        "bambu_access_code_file",
        str,
        "bambu: file holding the access code (read at start, spaces dropped).",
        path=True,
        check=existing_file,
    ),
    Key(
        "monitor",
        "bambu_ca_file",
        str,
        "bambu: Bambu Lab's CA certificate: the printer's certificate must chain to it and name the serial.",
        path=True,
        check=existing_file,
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    both = secret_pair(values, "monitor", "bambu_access_code")
    if both:
        errors.append(both)
    if values.get("monitor_backend") != "bambu":
        return errors
    errors += needed_by(
        values,
        "monitor",
        "bambu",
        (
            ("bambu_host", "the printer's address, e.g. 192.168.1.70"),
            ("bambu_serial", "the serial from the printer's screen"),
        ),
    )
    if (
        values.get("monitor_bambu_access_code") is None
        and values.get("monitor_bambu_access_code_file") is None
    ):
        errors.append(
            "[monitor] bambu_access_code: missing; give the LAN access code (printer screen: Settings → "
            "LAN only / WLAN), or bambu_access_code_file"
        )
    return errors


def _create(config: Any) -> MachineMonitor:
    code = config.secret("monitor_bambu_access_code")
    assert code is not None, "the config check requires an access code"
    return BambuMonitor(
        host=config.option("monitor_bambu_host"),
        serial=config.option("monitor_bambu_serial"),
        access_code=code,
        port=config.option("monitor_bambu_port"),
        ca_file=config.option("monitor_bambu_ca_file"),
        **timing(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="bambu",
        summary="a Bambu Lab printer (X1, P1, A1) over its local MQTT (TLS, port 8883)",
        faults=("bambu_unreachable", "bambu_access_code_rejected", "bambu_certificate_rejected"),
        keys=(*KEYS, TIMEOUT_KEY),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `bambu`: a Bambu Lab printer (X1, P1, A1) over its local MQTT: TLS on port 8883, user",
            "`bblp`, the LAN access code as password, topic `device/<serial>/report` (a full report",
            "asked for with `pushall` at every connect, then the changes merged). Jobs with the job's",
            "name, the printer's estimate and duration (the printer reports no filament); progress",
            "and temperatures (nozzle, bed, chamber) in telemetry. A print stopped at the printer is",
            "`cancelled`. Faults: `bambu_unreachable`, `bambu_access_code_rejected`,",
            "`bambu_certificate_rejected` (the certificate is not from `bambu_ca_file`'s CA or does",
            "not name the serial). Without `bambu_ca_file` the link is encrypted but the printer's",
            "identity is not checked. Payloads as the community's OpenBambuAPI documents them (X1C",
            "firmware 01.01.x; P1 and A1 firmware 01.04 and later send only changes).",
        ),
    ),
)
