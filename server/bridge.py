"""The MQTT bridge: answers taps, ingests events, tracks devices, publishes allow-lists.

It is a thin caller of the services. Each message is handled in its own short database
session; an event's ``ack`` is published only after its transaction committed. Any bad
message is refused with a logged, counted reason and never changes stored data or
stops the bridge. With ``MQTT_SHARED_SUBSCRIPTIONS`` several bridges can share the
device topics (MQTT 5 shared subscriptions on a clustered broker); ingestion is
idempotent by event id, so any bridge may take any message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from server.db import Database
from server.models import AccessDecision, Device, Machine
from server.services import allowlists
from server.services.decision import decide
from server.services.devices import apply_status, apply_telemetry
from server.services.ingest import ingest_event
from server.services.messages import render
from werkbank_protocol import ProtocolError, format_ts, now_ts
from werkbank_protocol.messages import Ack, AuthReq, AuthResp, Status, Telemetry, decode_as, decode_event, encode
from werkbank_protocol.mqtt import BrokerAddress, make_client, parse_mqtt_url
from werkbank_protocol.topics import QOS, RETAINED, Suffix, parse_topic, subscription, topic

log = logging.getLogger(__name__)


class Bridge:
    """One MQTT client between the devices and the database."""

    def __init__(
        self,
        database: Database,
        mqtt_url: str,
        client_id: str = "werkbank-bridge",
        allowlist_days: int = 7,
        max_open_sessions: int = 2,
        shared: bool = False,
        ca_file: str | None = None,
        clock: Callable[[], datetime] | None = None,
        allowlist_interval: float = 0.5,
    ) -> None:
        self.db = database
        address = parse_mqtt_url(mqtt_url)
        if address.username is None:
            # Brokers that require a login (and amqtt, see server/broker.py) get the client id.
            address = BrokerAddress(address.host, address.port, client_id, address.password, address.tls)
        self.address = address
        self.client = make_client(client_id, address, clean_session=False, ca_file=ca_file)
        self.allowlist_days = allowlist_days
        self.max_open_sessions = max_open_sessions
        self.shared = shared
        self.clock = clock or (lambda: datetime.now(UTC))
        self.allowlist_interval = allowlist_interval
        self.rejected: Counter[str] = Counter()
        self.handled: Counter[str] = Counter()
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        self._handlers: dict[Suffix, Callable[[str, bytes], None]] = {
            Suffix.STATUS: self._on_status,
            Suffix.AUTH_REQ: self._on_auth_req,
            Suffix.EVENT: self._on_event,
            Suffix.TELEMETRY: self._on_telemetry,
        }
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait: float = 10.0) -> Bridge:
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if wait and not self.connected.wait(wait):
            log.warning("bridge: broker %s not reachable yet; retrying in the background", self.address.url)
        self._publisher = threading.Thread(target=self._publish_loop, name="allowlist-publisher", daemon=True)
        self._publisher.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._publisher is not None:
            self._publisher.join(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("bridge: broker refused the connection: %s", reason)
            return
        for suffix in self._handlers:
            client.subscribe(subscription(suffix, self.shared), qos=QOS[suffix])
        self.connected.set()
        log.info("bridge connected to %s", self.address.url)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("bridge lost the broker (%s); reconnecting", reason)

    # -- dispatch --------------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            device_id, suffix = parse_topic(msg.topic)
            handler = self._handlers.get(suffix)
            if handler is None:
                return  # our own outgoing topics, echoed by some brokers
            handler(device_id, msg.payload)
            self.handled[suffix.value] += 1
        except ProtocolError as exc:
            self.reject(msg.topic, exc)
        except SQLAlchemyError:
            # The database is down or busy: no ack goes out, so the agent re-sends later.
            self.rejected["database"] += 1
            log.exception("bridge: database error on %s; the device will retry", msg.topic)
        except Exception:  # a bug must not stop the bridge; it is logged and counted
            self.rejected["internal"] += 1
            log.exception("bridge: unexpected error on %s", msg.topic)

    def reject(self, where: str, exc: ProtocolError) -> None:
        self.rejected[exc.code] += 1
        log.warning("rejected message on %s: %s", where, exc.detail)

    def publish(self, device_id: str, suffix: Suffix, payload: bytes) -> None:
        self.client.publish(topic(device_id, suffix), payload, qos=QOS[suffix], retain=suffix in RETAINED)

    def _device(self, db: Any, device_id: str) -> Device:
        device: Device | None = db.get(Device, device_id)
        if device is None:
            raise ProtocolError("unknown_device", f"device {device_id!r} is not registered; provision it first")
        return device

    # -- handlers --------------------------------------------------------------------------
    def _on_status(self, device_id: str, payload: bytes) -> None:
        if not payload:
            return  # a retained status being cleared
        status = decode_as(Status, payload)
        with self.db.session() as db:
            apply_status(db, self._device(db, device_id), status, self.clock())

    def _on_telemetry(self, device_id: str, payload: bytes) -> None:
        telemetry = decode_as(Telemetry, payload)
        with self.db.session() as db:
            apply_telemetry(db, self._device(db, device_id), telemetry, self.clock())

    def _on_event(self, device_id: str, payload: bytes) -> None:
        event = decode_event(payload)
        with self.db.session() as db:
            device = self._device(db, device_id)
            result = ingest_event(db, device, event)
        # Committed: now, and only now, the agent may forget the event.
        self.publish(device_id, Suffix.ACK, encode(Ack(v=1, ids=[result.event_id])))
        if not result.new:
            self.handled["duplicate"] += 1

    def _on_auth_req(self, device_id: str, payload: bytes) -> None:
        try:
            req = decode_as(AuthReq, payload)
        except ProtocolError as exc:
            self._answer_bad_request(device_id, payload, exc)
            raise
        now = self.clock()
        with self.db.session() as db:
            known = db.get(AccessDecision, req.id)
            if known is not None:  # a QoS 1 duplicate: same answer again
                self.publish(device_id, Suffix.AUTH_RESP, encode(AuthResp(v=1, **known.response)))
                return
            device = self._device(db, device_id)
            machine = device.machine
            if machine is None:
                raise ProtocolError("unassigned_device", f"device {device_id!r} serves no machine")
            decision = decide(
                db, machine, req.badge, now, req.mode, req.trainer_badge, self.max_open_sessions
            )
            response = AuthResp(
                v=1,
                req=req.id,
                decision="allow" if decision.allowed else "deny",
                reason=decision.reason,  # type: ignore[arg-type]
                message=decision.message,
                session=decision.session_id,
                person=decision.person.first_name if decision.person and decision.allowed else None,
                until=format_ts(decision.until) if decision.until else None,
            )
            body = {k: v for k, v in _builtins(response).items() if k != "v"}
            db.add(
                AccessDecision(
                    id=req.id,
                    device_id=device_id,
                    machine_id=machine.id,
                    badge_uid=req.badge,
                    person_id=decision.person.id if decision.person else None,
                    mode=req.mode,
                    decision=response.decision,
                    reason=decision.reason,
                    session_id=decision.session_id,
                    decided_at=now,
                    response=body,
                )
            )
        self.publish(device_id, Suffix.AUTH_RESP, encode(response))

    def _answer_bad_request(self, device_id: str, payload: bytes, exc: ProtocolError) -> None:
        """A garbled tap still gets an answer when we can tell which request it was."""
        try:
            raw = json.loads(payload)
            req_id = raw.get("id") if isinstance(raw, dict) else None
            if not isinstance(req_id, str):
                return
            resp = AuthResp(
                v=1, req=req_id, decision="deny", reason="bad_request", message=render("bad_request", "UTC")
            )
            self.publish(device_id, Suffix.AUTH_RESP, encode(resp))
        except (ValueError, ProtocolError, UnicodeDecodeError):
            return

    # -- allow-lists -----------------------------------------------------------------------
    def _publish_loop(self) -> None:
        while not self._stop.wait(self.allowlist_interval):
            if not self.connected.is_set():
                continue
            try:
                self.publish_allowlists()
            except Exception:
                log.exception("bridge: publishing allow-lists failed; retrying")

    def publish_allowlists(self, force: bool = False) -> int:
        """Publish every dirty (or, with force, every) machine's allow-list; returns how many."""
        now = self.clock()
        outgoing: list[tuple[str, bytes]] = []
        with self.db.session() as db:
            query = select(Machine).where(Machine.device.has())
            if not force:
                query = query.where(Machine.allowlist_dirty.is_(True))
            for machine in db.scalars(query.with_for_update(skip_locked=True)):
                machine.allowlist_version += 1
                document = allowlists.build(db, machine, now, self.allowlist_days)
                machine.allowlist_dirty = False
                machine.allowlist_published_at = now
                device = machine.device
                assert device is not None
                payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
                outgoing.append((device.id, payload))
        # Published after the commit, so a version number is never sent twice with different content.
        for device_id, payload in outgoing:
            self.publish(device_id, Suffix.ALLOWLIST, payload)
        if outgoing:
            log.info("published %d allow-list(s) at %s", len(outgoing), now_ts())
        return len(outgoing)


def _builtins(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = msgspec.to_builtins(message)
    return result


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (used by the CLI and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()

