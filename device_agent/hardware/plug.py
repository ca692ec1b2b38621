"""Smart plugs as the power switch: what Shelly and Tasmota plugs share.

A plug is switched and read over the LAN (:class:`PlugClient`, one per make), so
:class:`NetworkSwitch` does the talking in a thread of its own: ``close()`` and ``open()``
only say what the state must be, and return at once. The thread switches the plug, reads
the state back, and keeps reading it every ``[switch] poll_s``; a state it cannot confirm
within ``confirm_s`` is a fault (the agent shows the machine as ``fault``), and it keeps
trying with back-off until the plug obeys.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from device_agent.hardware.base import MonitorEvent, MonitorFault, MonitorFaultCleared, Relay
from device_agent.hardware.plugins import Plugin
from device_agent.schema import Key, between, existing_file, http_url, secret_pair

log = logging.getLogger(__name__)

# Fault codes (the protocol's ``fault`` event).
UNREACHABLE = "switch_unreachable"
UNCONFIRMED = "switch_unconfirmed"
AUTH_REJECTED = "switch_auth_rejected"
STATE_CHANGED = "switch_state_changed"


class PlugError(Exception):
    """The plug could not be switched or read; ``code`` becomes the fault's code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class PlugStatus:
    """What the plug says about itself: its relay, and its meter where it has one."""

    on: bool
    power_w: float | None = None
    energy_wh: float | None = None


class PlugClient(ABC):
    """Talks to one plug over HTTP. Each call is one request (or two) with a timeout."""

    #: Shown in logs and fault details, e.g. "Shelly at http://10.0.0.7".
    label: str

    @abstractmethod
    def set(self, on: bool) -> None:
        """Switch the relay; PlugError when the plug does not take the command."""

    @abstractmethod
    def status(self) -> PlugStatus:
        """The relay's real state and the meter; PlugError when the plug cannot be read."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty by default
        """Drop the connection."""


class HttpPlug(PlugClient):
    """The HTTP part both makes share: one ``requests`` session, a timeout, status codes → faults."""

    def __init__(self, url: str, timeout_s: float, auth: Any = None, label: str = "plug") -> None:
        try:
            import requests
        except ImportError as exc:  # pragma: no cover - requests comes with the agent extra
            raise PlugError(UNREACHABLE, f"smart plugs need requests ({exc}): pip install requests") from exc
        self._requests: Any = requests
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.label = f"{label} at {self.url}"
        self._session: Any = requests.Session()
        self._session.auth = auth

    def get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            reply = self._session.get(f"{self.url}{path}", params=params, timeout=self.timeout_s)
        except self._requests.RequestException as exc:
            raise PlugError(UNREACHABLE, f"{self.label} does not answer: {exc}") from exc
        if reply.status_code in (401, 403):
            raise PlugError(
                AUTH_REJECTED,
                f"{self.label} refused the login ({reply.status_code}): check [switch] user and password",
            )
        if reply.status_code != 200:
            raise PlugError(UNREACHABLE, f"{self.label} answered {reply.status_code}: {reply.text[:200]}")
        try:
            return reply.json()
        except ValueError as exc:
            raise PlugError(UNREACHABLE, f"{self.label} sent no JSON: {reply.text[:200]!r}") from exc

    def close(self) -> None:
        self._session.close()


def number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class NetworkSwitch(Relay):
    """A smart plug as the power switch (see the module docstring).

    ``closed``: the state to start in. The agent passes True when a session was open at its
    last stop (it may carry on mid-job), so the plug is taken over without a switch.

    A plug found in the wrong state while nothing was asked of it (it rebooted and came back
    OFF mid-session, or someone pressed its button) is put back as the agent wants it and
    reported once (``switch_state_changed``): the lock is the agent's to make, and a session
    that runs must not lose power to a reboot. Set the plug to come back OFF after a power
    cut (firmware_config/agent-config.md, "Smart plugs").
    """

    def __init__(
        self,
        client: PlugClient,
        closed: bool = False,
        confirm_s: float = 1.0,
        poll_s: float = 5.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self.client = client
        self.confirm_s = confirm_s
        self.poll_s = poll_s
        self.retry_max_s = max(retry_max_s, confirm_s)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._events: list[MonitorEvent] = []
        self._desired = closed
        # When the desired state was last asked for and not yet confirmed (None: confirmed).
        self._pending_since: float | None = time.monotonic()
        self._confirmed: bool | None = None
        self._status: PlugStatus | None = None
        self._fault: str | None = None
        self._switch_off_at_stop = True
        self._thread = threading.Thread(target=self._loop, name="power-switch", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ Relay

    def close(self) -> None:
        self._command(True)

    def open(self) -> None:
        self._command(False)

    @property
    def is_closed(self) -> bool:
        return self._desired

    @property
    def confirmed(self) -> bool | None:
        """The plug's relay as last read back (None: not read yet)."""
        return self._confirmed

    @property
    def power_w(self) -> float | None:
        status = self._status
        return status.power_w if status is not None else None

    @property
    def energy_wh(self) -> float | None:
        status = self._status
        return status.energy_wh if status is not None else None

    def poll(self) -> list[MonitorEvent]:
        since = self._pending_since
        if since is not None and self._fault is None and time.monotonic() - since >= self.confirm_s:
            # Checked here too, not only after a request: a plug that hangs until the request
            # times out is reported when confirm_s is up, not a timeout later.
            state = "ON" if self._desired else "OFF"
            seen = self._confirmed
            reads = "" if seen is None else f" (it reads {'ON' if seen else 'OFF'})"
            self._set_fault(
                UNCONFIRMED,
                f"{self.client.label} has not confirmed {state} within {self.confirm_s:g} s{reads}",
            )
        with self._lock:
            events, self._events = self._events, []
        return events

    def wait_confirmed(self, timeout: float) -> bool:
        """Wait until the plug has confirmed the state last asked for (tests, start-up)."""
        deadline = time.monotonic() + timeout
        while self._pending_since is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def release(self) -> None:
        """Stop; the plug is left OFF (the agent releases the switch only with no session open)."""
        self._stop(switch_off=True)

    def detach(self) -> None:
        """Stop without switching: the plug stays as it is for the next start to take over."""
        self._stop(switch_off=False)

    # ------------------------------------------------------------------ the thread

    def _command(self, on: bool) -> None:
        with self._lock:
            if on != self._desired or (self._pending_since is None and self._confirmed != on):
                self._pending_since = time.monotonic()
            self._desired = on
        self._wake.set()

    def _stop(self, switch_off: bool) -> None:
        if self._stopping.is_set():
            return
        if switch_off:
            self._command(False)
        self._switch_off_at_stop = switch_off
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=self.confirm_s + 5 * self._timeout())
        self.client.close()

    def _timeout(self) -> float:
        return float(getattr(self.client, "timeout_s", 1.0))

    def _loop(self) -> None:
        retry_s = 0.1
        while True:
            stopping = self._stopping.is_set()
            if stopping and not self._switch_off_at_stop:
                return
            try:
                confirmed = self._reconcile()
            except PlugError as exc:
                confirmed = False
                self._failed(exc.code, exc.detail)
            except Exception as exc:
                # A bug or a library's own exception: the plug counts as unreachable, the thread lives.
                log.exception("%s: switching or reading failed", self.client.label)
                confirmed = False
                self._failed(UNREACHABLE, f"{self.client.label}: {type(exc).__name__}: {exc}")
            if stopping:
                if not confirmed:
                    log.error("%s did not confirm OFF before the agent stopped", self.client.label)
                return
            since = self._pending_since
            if confirmed:
                retry_s = 0.1
                delay = self.poll_s
            elif since is not None and time.monotonic() - since < self.confirm_s:
                delay = 0.1  # still within confirm_s: try again soon
            else:
                delay = retry_s
                retry_s = min(retry_s * 2, self.retry_max_s)
            self._wake.wait(delay)
            self._wake.clear()

    def _reconcile(self) -> bool:
        """Read the plug, switch it if it is not as wanted, read it back; True when it is as wanted."""
        with self._lock:
            desired = self._desired
            asked = self._pending_since is not None
        status = self.client.status()
        if status.on != desired:
            if not asked and self._confirmed is not None:
                # Nobody asked for a switch: the plug changed by itself (reboot, its button).
                detail = (
                    f"{self.client.label} was found {'ON' if status.on else 'OFF'} but should be "
                    f"{'ON' if desired else 'OFF'} (rebooted, or its button pressed); switching it back"
                )
                log.warning("%s", detail)
                self._set_fault(STATE_CHANGED, detail)
                with self._lock:
                    self._pending_since = time.monotonic()
            self.client.set(desired)
            status = self.client.status()
        self._status = status
        self._confirmed = status.on
        with self._lock:
            # A new command may have come in meanwhile: it is confirmed only by a later read.
            if status.on == self._desired:
                self._pending_since = None
                done = True
            else:
                done = False
        if done:
            self._clear_fault()
            return True
        self._failed(
            UNCONFIRMED,
            f"{self.client.label} stays {'ON' if status.on else 'OFF'} although it was switched "
            f"{'ON' if desired else 'OFF'}",
        )
        return False

    def _failed(self, code: str, detail: str) -> None:
        since = self._pending_since
        late = since is None or time.monotonic() - since >= self.confirm_s
        # A command gets confirm_s to be confirmed before it is a fault; a plug that stops
        # answering while nothing was asked of it is a fault at once.
        if late or code == AUTH_REJECTED:
            self._set_fault(code, detail)

    def _set_fault(self, code: str, detail: str) -> None:
        with self._lock:
            if self._fault == code:
                return
            self._fault = code
            self._events.append(MonitorFault(code, detail))
        log.error("%s", detail)

    def _clear_fault(self) -> None:
        with self._lock:
            code, self._fault = self._fault, None
            if code is not None:
                self._events.append(MonitorFaultCleared(code))
        if code is not None:
            log.info("%s: switch fault %s over", self.client.label, code)


# ---------------------------------------------------------------------- config

PLUG_KEYS: tuple[Key, ...] = (
    Key(
        "switch",
        "url",
        str,
        "shelly, tasmota: the plug's address on the LAN, e.g. http://192.168.1.50 (give it a fixed address).",
        check=http_url("the plug", "http://192.168.1.50"),
    ),
    Key(
        "switch",
        "user",
        str,
        'shelly, tasmota: login name when the plug has a password ("admin" on both makes).',
        default="admin",
    ),
    Key(
        "switch",
        "password",
        str,
        "shelly, tasmota: the plug's password (or use password_file); leave out if it has none.",
        secret=True,
    ),
    Key(
        "switch",
        "password_file",
        str,
        "shelly, tasmota: file holding the plug's password (read at start, spaces dropped).",
        path=True,
        check=existing_file,
    ),
    Key(
        "switch",
        "channel",
        int,
        "shelly: the switch id (0 = the first); tasmota: the relay (0 = Power, n = Power<n>).",
        default=0,
        check=between(0, 8),
    ),
    Key(
        "switch",
        "timeout_s",
        float,
        "shelly, tasmota: how long one request to the plug may take.",
        default=0.5,
        check=between(0.05, 10, " s"),
    ),
    Key(
        "switch",
        "confirm_s",
        float,
        "shelly, tasmota: a switch the plug has not confirmed by reading back within this is a fault.",
        default=1.0,
        check=between(0.1, 30, " s"),
    ),
    Key(
        "switch",
        "poll_s",
        float,
        "shelly, tasmota: seconds between two read-backs of the plug's state and meter.",
        default=5.0,
        check=between(0.2, 300, " s"),
    ),
)


def plug_checks(values: Mapping[str, Any], backend: str) -> list[str]:
    """The rules of ``[switch]`` when ``backend`` (a plug make) is chosen."""
    if values.get("switch_backend") != backend:
        return []
    errors: list[str] = []
    if values.get("switch_url") is None:
        errors.append(
            f"[switch] url: missing; the {backend} switch needs the plug's address, e.g. http://192.168.1.50"
        )
    both = secret_pair(values, "switch", "password")
    if both:
        errors.append(both)
    return errors


def switch_settings(config: Any) -> dict[str, Any]:
    """The NetworkSwitch arguments from ``[switch]`` (shared by both makes)."""
    return {
        "confirm_s": config.option("switch_confirm_s"),
        "poll_s": config.option("switch_poll_s"),
        "retry_max_s": max(30.0, config.option("switch_confirm_s")),
    }


def plug_plugin(name: str, summary: str, make: Callable[..., HttpPlug]) -> Plugin:
    """The switch plug-in of one plug make: ``make(url=, channel=, user=, password=, timeout_s=)``
    is its client class. Keys, checks, faults and the switch are the same for every make."""

    def client(config: Any) -> HttpPlug:
        return make(
            url=config.option("switch_url"),
            channel=config.option("switch_channel"),
            user=config.option("switch_user"),
            password=config.secret("switch_password"),
            timeout_s=config.option("switch_timeout_s"),
        )

    def create(config: Any, closed: bool) -> Relay:
        return NetworkSwitch(client(config), closed=closed, **switch_settings(config))

    return Plugin(
        kind="switch",
        name=name,
        summary=summary,
        faults=("switch_unconfirmed", "switch_unreachable", "switch_auth_rejected", "switch_state_changed"),
        keys=PLUG_KEYS,
        check=lambda values: plug_checks(values, name),
        create_switch=create,
        meter=client,
    )
