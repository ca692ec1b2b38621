"""Helpers for the agent tests: configs, signed allow-lists, and a tiny stand-in for the server.

The stand-in (:class:`Responder`) is a real paho client on the real test broker that
answers ``auth/req`` with ``auth/resp`` and acks events, using the protocol's own Structs.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
from gpiozero.pins.mock import MockFactory

from device_agent.clock import SystemClock
from device_agent.config import AgentConfig, parse_config
from device_agent.outbox import Outbox
from device_agent.storage import OpenSession
from werkbank_protocol import format_ts, parse_ts
from werkbank_protocol.allowlist import badge_hash, key_bytes, sign
from werkbank_protocol.messages import Ack, AuthReq, AuthResp, Cmd, decode_as, decode_event, encode
from werkbank_protocol.mqtt import make_client, parse_mqtt_url
from werkbank_protocol.topics import Suffix, parse_topic, subscription, topic

KEY_HEX = "a1" * 32
KEY = key_bytes(KEY_HEX)
MACHINE = "printer-1"
ADA = "04A1B2C3"  # allowed
BOB = "04B0B0B0"  # allowed too
EVE = "04E0E0E0"  # denied: not qualified


def session_on_disk(config: AgentConfig) -> OpenSession | None:
    """The open session as the agent keeps it on disk: what a restart would find."""
    outbox = Outbox(Path(config.storage_dir) / "outbox.sqlite")
    try:
        return outbox.open_session()
    finally:
        outbox.close()


def relay_closed(pins: MockFactory, pin: int = 17) -> bool:
    """The relay boards in these tests are active-low (the default): closed = pin low."""
    return pins.pin(pin).state is False


def make_config(tmp_path: Path, mqtt_url: str, device_id: str | None = None, **sections: Any) -> AgentConfig:
    """A valid config; ``sections`` override keys, e.g. ``session={"idle_timeout_s": 0.3}``."""
    data: dict[str, dict[str, Any]] = {
        "device": {"id": device_id or f"t-{uuid.uuid4().hex[:10]}", "machine": MACHINE},
        "mqtt": {"url": mqtt_url, "keepalive_s": 10},
        "server": {"auth_timeout_s": 0.5},
        "allowlist": {"key": KEY_HEX},
        "storage": {"dir": str(tmp_path / "agent")},
        "reader": {"backend": "simulated", "poll_hz": 100},
        "indicators": {"green_pin": 22, "red_pin": 27, "amber_pin": 23, "buzzer_pin": 24},
        "session": {"tap_out_grace_s": 0.2},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return parse_config(data)


def allowlist_document(
    version: int = 1,
    badges: dict[str, str | None] | None = None,
    machine: str = MACHINE,
    issued: datetime | None = None,
    days: float = 7,
    key: bytes = KEY,
) -> dict[str, Any]:
    """A signed allow-list as the server builds it; ``badges`` maps UID → entry ``until``."""
    issued = issued or datetime.now(UTC)
    entries = [
        {"badge_hash": badge_hash(key, uid), "until": until, "trainer": False}
        for uid, until in (badges if badges is not None else {ADA: None}).items()
    ]
    document = {
        "v": 1,
        "version": version,
        "issued": format_ts(issued),
        "expires": format_ts(issued + timedelta(days=days)),
        "machine": machine,
        "entries": entries,
    }
    return sign(key, document)


def payload_of(document: dict[str, Any]) -> bytes:
    return msgspec.json.encode(document)


class Responder:
    """Stands in for the server's MQTT bridge: answers taps, records and acks events."""

    def __init__(self, mqtt_url: str) -> None:
        # amqtt drops QoS 1 for anonymous clients: every Werkbank client logs in.
        self.address = replace(parse_mqtt_url(mqtt_url), username="responder")
        self.client = make_client(f"responder-{uuid.uuid4().hex[:8]}", self.address, clean_session=True)
        # badge → (decision, reason, until)
        self.answers: dict[str, tuple[str, str, str | None]] = {
            ADA: ("allow", "ok", None),
            BOB: ("allow", "ok", None),
        }
        # AuthResp `until_reason` per badge ("booking": `until` is a booking's start or end).
        self.until_reasons: dict[str, str] = {}
        # Badges the answer to a use tap calls a trainer here (AuthResp `trainer`).
        self.trainers: set[str] = set()
        # Answers to supervise/certify taps by (badge, mode); anything else is denied.
        self.mode_answers: dict[tuple[str, str], tuple[str, str]] = {}
        self.silent = False
        # Send `until_s` (the time left) as the server does; False: an older server, `until` alone.
        self.send_until_s = True
        self.auto_ack = True
        self.requests: list[AuthReq] = []
        self.events: list[Any] = []
        # (device id, status): retained statuses of other tests' devices arrive too.
        self.statuses: list[tuple[str, dict[str, Any]]] = []
        self.telemetry: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message

    def start(self) -> Responder:
        self.client.connect(self.address.host, self.address.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "responder did not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        client.subscribe(
            [(subscription(s), 1) for s in (Suffix.AUTH_REQ, Suffix.EVENT, Suffix.STATUS, Suffix.TELEMETRY)]
        )

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        device_id, suffix = parse_topic(message.topic)
        payload = bytes(message.payload)
        if suffix == Suffix.AUTH_REQ:
            request = decode_as(AuthReq, payload)
            self._record(self.requests, request)
            if not self.silent:
                self._answer(device_id, request)
        elif suffix == Suffix.EVENT:
            event = decode_event(payload)
            self._record(self.events, event)
            if self.auto_ack:
                self.ack(device_id, [event.id])
        elif suffix == Suffix.STATUS and payload:
            self._record(self.statuses, (device_id, msgspec.json.decode(payload)))
        elif suffix == Suffix.TELEMETRY:
            self._record(self.telemetry, msgspec.json.decode(payload))

    def _record(self, into: list[Any], item: Any) -> None:
        with self._changed:
            into.append(item)
            self._changed.notify_all()

    def _answer(self, device_id: str, request: AuthReq) -> None:
        if request.mode != "use":
            decision, reason = self.mode_answers.get((request.badge, request.mode), ("deny", "not_qualified"))
            allowed = decision == "allow"
            response = AuthResp(
                v=1,
                req=request.id,
                decision="allow" if allowed else "deny",
                reason=reason,  # type: ignore[arg-type]
                message={"de": f"{request.mode} ja", "en": f"{request.mode} yes"}
                if allowed
                else {"de": f"{request.mode} nein", "en": f"{request.mode} no"},
                # A sign-off opens no session.
                session=str(uuid.uuid4()) if allowed and request.mode == "supervise" else None,
                person="Ada" if allowed else None,
            )
            self.client.publish(topic(device_id, Suffix.AUTH_RESP), encode(response), qos=1)
            return
        decision, reason, until = self.answers.get(request.badge, ("deny", "not_qualified", None))
        allowed = decision == "allow"
        response = AuthResp(
            v=1,
            req=request.id,
            decision="allow" if allowed else "deny",
            reason=reason,  # type: ignore[arg-type]
            message={"de": "Hallo!", "en": "Hello!"}
            if allowed
            else {"de": "Keine Freigabe.", "en": "Not cleared."},
            session=str(uuid.uuid4()) if allowed else None,
            person="Ada" if allowed else None,
            until=until,
            until_s=max(0.0, (parse_ts(until) - datetime.now(UTC)).total_seconds())
            if until and self.send_until_s
            else None,
            trainer=allowed and request.badge in self.trainers,
            until_reason=self.until_reasons.get(request.badge) if allowed else None,  # type: ignore[arg-type]
        )
        self.client.publish(topic(device_id, Suffix.AUTH_RESP), encode(response), qos=1)

    def ack(self, device_id: str, ids: list[str]) -> None:
        self.client.publish(topic(device_id, Suffix.ACK), encode(Ack(v=1, ids=ids)), qos=1)

    def cmd(self, device_id: str, kind: str, cmd_id: str | None = None, **fields: Any) -> str:
        cmd_id = cmd_id or str(uuid.uuid4())
        message = Cmd(v=1, id=cmd_id, type=kind, **fields)  # type: ignore[arg-type]
        self.client.publish(topic(device_id, Suffix.CMD), encode(message), qos=1)
        return cmd_id

    def publish(self, device_id: str, suffix: Suffix, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic(device_id, suffix), payload, qos=1, retain=retain).wait_for_publish(5)

    def statuses_of(self, device_id: str) -> list[dict[str, Any]]:
        with self._changed:
            return [status for device, status in self.statuses if device == device_id]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def events_of(self, kind: str, copies: bool = False) -> list[Any]:
        """Events of one type, each id once (as the server ingests them), or every copy received."""
        seen: set[str] = set()
        found = []
        with self._changed:
            for event in self.events:
                if type(event).__struct_config__.tag == kind and (copies or event.id not in seen):
                    seen.add(event.id)
                    found.append(event)
        return found

    def wait_event(self, kind: str, count: int = 1, timeout: float = 5.0, copies: bool = False) -> list[Any]:
        """Wait for ``count`` events of a type (distinct ids unless ``copies``); returns them all.

        QoS 1 and the outbox re-sends deliver an event more than once now and then; the server
        takes each id once, so the tests count distinct ids unless they test the re-sending.
        """
        assert self.wait_for(lambda: len(self.events_of(kind, copies)) >= count, timeout), (
            f"expected {count} {kind} event(s), got {self.events_of(kind, copies)}"
        )
        return self.events_of(kind, copies)


class ManualClock:
    """The agent's clock, moved forward by hand on top of the real one (no waiting for timers).

    ``boot`` is the boot id it reports: set a new one to make the next agent see a reboot.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.boot = f"test-boot-{uuid.uuid4()}"

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def boot_id(self) -> str | None:
        return self.boot

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class SkewedClock:
    """A machine whose wall clock is ``skew_s`` off (an RTC-less Pi before NTP, a wrong time zone
    set as UTC); its boot clock and boot id are the real ones."""

    def __init__(self, skew_s: float) -> None:
        self.skew_s = skew_s
        self._system = SystemClock()

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.skew_s)

    def monotonic(self) -> float:
        return self._system.monotonic()

    def boot_id(self) -> str | None:
        return self._system.boot_id()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` (for state the agent changes in its own thread) until true or timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
