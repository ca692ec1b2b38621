"""The MQTT bridge: answers taps, ingests events, tracks devices, publishes allow-lists.

It is a thin caller of the services. The paho network thread only sorts incoming messages
into two queues, so a slow or locked table can never keep it from reading the next tap: taps
(``auth/req``) go to the decider thread; events, ``status``, ``telemetry`` and allow-list copies
go to the ingest thread, in the order they arrived (a device's status after its event stays
after it). Each thread works in its own short database sessions on its own pooled connection;
the ingest thread's statements give up after ``ingest_timeout_s`` (PostgreSQL
``statement_timeout``/``lock_timeout``), so a stalled table costs an event a retry (it is not
acknowledged, the agent sends it again), never a tap its answer.

An event's ``ack`` is published only after its transaction committed. Taps that wait together
are decided together; the decision log is written after the answers went out, on a thread of its
own (docs/performance.md), and a repeated request id gets the recorded answer again
(bench/tap_latency.py measures this path).
A tap older than the agent waits for (``tap_max_age_s``, on the server's clock after the
device's measured clock offset, server.services.clocks) is dropped unanswered and unrecorded:
the agent has decided offline already. Allow-lists are republished in full whenever the bridge
(re)connects (a restarted broker may have lost its retained copies), when a retained copy is
older than the database's, and when a device comes online holding an older one than its
machine's while the broker holds none for it. Any bad message is refused with a logged, counted
reason and never changes stored data or stops the bridge. With ``MQTT_SHARED_SUBSCRIPTIONS``
several bridges can share the device topics (MQTT 5 shared subscriptions on a clustered
broker); ingestion is idempotent by event id, so any bridge may take any message.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

import msgspec
import paho.mqtt.client as mqtt
from sqlalchemy import Connection, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from server.db import Database
from server.i18n import gettext_in
from server.models import (
    AccessDecision,
    AuditLog,
    Device,
    Machine,
    Person,
)
from server.services import (
    allowlists,
    attendance,
    booking_locks,
    cards,
    clocks,
    device_claims,
    reconcile,
    telemetry,
    training,
)
from server.services.decision import Decider, MachineFacts, PersonFacts, Recorded, Tap, Verdict
from server.services.decision_log import DecisionLog
from server.services.devices import apply_health, apply_status
from server.services.ingest import ingest_event
from server.services.machine_texts import render, render_text
from werkbank_protocol import ProtocolError, format_ts, now_ts, parse_ts
from werkbank_protocol.clock import wall_now
from werkbank_protocol.messages import (
    MAX_ALLOWLIST_PAYLOAD,
    MAX_PAYLOAD,
    Ack,
    AuthReq,
    AuthResp,
    Cmd,
    EnrolGrant,
    SessionStarted,
    Status,
    decode_as,
    decode_event,
    encode,
    to_builtins,
)
from werkbank_protocol.messages import request_id as garbled_request_id
from werkbank_protocol.mqtt import BrokerAddress, make_client, parse_mqtt_url
from werkbank_protocol.topics import QOS, RETAINED, Suffix, parse_topic, subscription, topic

log = logging.getLogger(__name__)

# Answers to the last this many taps are kept in memory, so a QoS 1 duplicate is answered
# without a query (older ones are found in the access_decisions table).
RECENT_ANSWERS = 10_000
# Taps waiting together are recorded in one transaction, at most this many.
MAX_TAPS_PER_COMMIT = 100
# Messages waiting for the ingest thread, at most; past it a message is
# dropped unacknowledged (counted ``busy``): the agent sends its events again.
MAX_WAITING = 10_000
# Telemetry is live state: per device the newest within this window is written, all devices
# together in one transaction (docs/performance.md).
TELEMETRY_WINDOW_S = 1.0
# How often the ingest thread looks for telemetry while none is held.
TELEMETRY_POLL_S = 0.05
# Allow-lists built per transaction (Bridge.publish_allowlists): the rows of a batch are held
# while its lists are built, so a batch is kept short.
ALLOWLIST_BATCH = 25
# How long the ingest thread's statements may wait (PostgreSQL), by default.
INGEST_TIMEOUT_S = 5.0
# Shared bridges: an allow-list version another bridge built this recently is taken to be on
# its way to the broker, not missing (see Bridge._offer_allowlist).
ALLOWLIST_IN_FLIGHT = timedelta(seconds=30)
# Shared bridges: a session start claiming the server's answer whose decision row is not there
# is left unacknowledged (the agent re-sends it) for this long after this bridge first saw it,
# since the bridge that answered writes the row just after its answer. After that it is taken
# as an offline session (the answering bridge died before it wrote the row).
OTHER_BRIDGE_WAIT_S = 6.0
# The ingest process of a split bridge (role "ingest"): how long a session start waits for the
# decision row the tap process beside it writes just after its answer, before it is left
# unacknowledged like another bridge's (OTHER_BRIDGE_WAIT_S); and how often it looks.
DECISION_ROW_WAIT_S = 0.5
DECISION_ROW_POLL_S = 0.01
# ...and a device whose wait found no row waits no more for this long (Bridge._await_decision).
DECISION_ROW_WAIT_AGAIN_S = 60.0
# What each role of a bridge process hears (docs/architecture.md, "The bridge's two processes"):
# everything, only the taps, or everything but the taps. A device's telemetry, events and status
# always share one connection: MQTT keeps their order only within one.
ROLES: dict[str, tuple[Suffix, ...]] = {
    "all": (Suffix.STATUS, Suffix.AUTH_REQ, Suffix.EVENT, Suffix.TELEMETRY),
    # Status too, for its clock alone: a tap's age needs the device's offset (server.services.clocks).
    "taps": (Suffix.AUTH_REQ, Suffix.STATUS),
    "ingest": (Suffix.STATUS, Suffix.EVENT, Suffix.TELEMETRY),
}
_RECORD_DECISION = insert(cast(Table, AccessDecision.__table__))
_RECORD_AUDIT = insert(cast(Table, AuditLog.__table__))


def _not_genuine(device_id: str, req: AuthReq, machine: MachineFacts, now: datetime) -> dict[str, Any]:
    """The audit row of a card refused as not genuine: which badge, where and when."""
    return {
        "at": now,
        "actor_id": None,
        "actor_label": f"device {device_id}",
        "action": "badge.not_genuine",
        "subject": f"badge:{req.badge}",
        "detail": {
            "machine_id": machine.id,
            "device": device_id,
            "card_auth": req.card_auth,
            "request": req.id,
        },
    }


# For this transaction only (is_local): the pooled connection goes back to other threads as it was.
_STATEMENT_LIMITS = text(
    "SELECT set_config('statement_timeout', :ms, true), set_config('lock_timeout', :ms, true)"
)


# The highest allow-list version a device's status may move its machine's numbering to: far below
# the 32-bit column's limit, so that a device reporting nonsense cannot make the next increment
# fail (and with it the publishing of every machine's list).
ALLOWLIST_VERSION_CEILING = 2**31 - 2**24


@dataclass(frozen=True)
class Inbound:
    """A message as the network thread hands it on: from which device, what, when it arrived
    (the bridge's clock) and whether the broker delivered it from its retained store."""

    device_id: str
    suffix: Suffix
    payload: bytes
    arrived: datetime
    retained: bool
    # The telemetry buffer's sequence when it arrived: the device's telemetry up to there is
    # written before it (server.services.telemetry).
    telemetry_upto: int = 0


class _Version(msgspec.Struct):
    """Just the version of an allow-list document (the rest is the agent's business)."""

    version: int


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
        booking_interval: float = 1.0,
        message_limit: int = 64 * 1024,
        tap_max_age_s: float = clocks.TAP_MAX_AGE_S,
        clock_settle_s: float = clocks.SETTLE_S,
        ingest_timeout_s: float = INGEST_TIMEOUT_S,
        role: str = "all",
        login: str | None = None,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"bridge role must be one of {', '.join(ROLES)}, not {role!r}")
        self.db = database
        # "all": one process does everything; "taps"/"ingest": the two halves of a split bridge
        # (server/adapters/bridge_processes.py), each on a connection of its own.
        self.role = role
        address = parse_mqtt_url(mqtt_url)
        if address.username is None:
            # Brokers that require a login (and amqtt, see server/broker.py) get the client id
            # (both halves of a split bridge the configured one: ``login``).
            address = BrokerAddress(
                address.host, address.port, login or client_id, address.password, address.tls
            )
        self.address = address
        self.client_id = client_id
        # A bridge alone keeps a persistent session, so the broker holds events for it while it
        # restarts. Bridges sharing the device topics must not: Mosquitto goes on routing a dead
        # member's share of the taps to its persistent session, where they wait unanswered until
        # it returns; with a clean session the living bridges take them all.
        self.client = make_client(client_id, address, clean_session=shared, ca_file=ca_file)
        self.allowlist_days = allowlist_days
        self.max_open_sessions = max_open_sessions
        self.shared = shared
        self.clock = clock or wall_now
        self.allowlist_interval = allowlist_interval
        # The broker's message_size_limit (MQTT_MESSAGE_LIMIT): a bigger message is dropped unseen.
        self.message_limit = message_limit
        # How often to look for walk-ins still there when a booking begins (booking_locks.py).
        # How often to look for walk-ins still there when a booking begins (booking_locks.py),
        # and for flagged offline sessions still running (reconcile.py).
        self.booking_interval = booking_interval
        self.tap_max_age_s = tap_max_age_s
        self.clock_settle_s = clock_settle_s
        self.ingest_timeout_s = ingest_timeout_s
        self._next_booking_check = 0.0
        # (booking id, session id) locks sent by this process; the audit log has them all.
        self._booking_locks_sent: set[tuple[str, str]] = set()
        # Sessions locked as not allowed offline by this process (likewise).
        self._reconcile_locks_sent: set[str] = set()
        self.rejected: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        self.decider = Decider()
        self.offsets = clocks.ClockOffsets()
        # The boot id of each device's last live status (a new one: its clock may have jumped).
        self._boots: dict[str, str] = {}
        self._taps: queue.SimpleQueue[Inbound | None] = queue.SimpleQueue()
        self._inbox: queue.Queue[Inbound | None] = queue.Queue(MAX_WAITING)
        self._routes: dict[Suffix, queue.SimpleQueue[Inbound | None] | queue.Queue[Inbound | None]] = {
            Suffix.AUTH_REQ: self._taps,
            Suffix.EVENT: self._inbox,
            Suffix.STATUS: self._inbox,
            Suffix.ALLOWLIST: self._inbox,
        }
        # Telemetry does not queue: the network thread only appends it to its device's list
        # (docs/performance.md, "Telemetry"), timed on the epoch clock (cheaper than self.clock,
        # turned into the bridge's clock once per window) unless a test's clock is given.
        self.telemetry = telemetry.Buffer()
        # States a window could not write because another transaction held their rows: written
        # with the next window (the ingest thread's alone), and how many devices' were put off.
        self._carried: dict[str, telemetry.Latest] = {}
        self._carried_at: float | None = None
        self.telemetry_deferred = 0
        self._epoch_arrivals = clock is None
        self._arrival: Callable[[], float] = time.time if clock is None else lambda: self.clock().timestamp()
        self._workers: list[threading.Thread] = []
        self._answers: OrderedDict[str, bytes] = OrderedDict()
        self._answers_lock = threading.Lock()
        # The decider thread's connection (see _tap_connection), and the decision log, written
        # on a thread of its own after the answers went out.
        self._tap_conn: Connection | None = None
        self.decision_log = DecisionLog(database, lambda key, n: self._count(self.rejected, key, n))
        # Shared bridges: session starts waiting for another bridge's decision row, by event id
        # (when this bridge first saw each; the ingest thread's alone).
        self._undecided_starts: OrderedDict[str, float] = OrderedDict()
        # The ingest half: when each device's last wait for a decision row found none.
        self._waited_in_vain: OrderedDict[str, float] = OrderedDict()
        # Allow-lists: the newest version this process published per device, and the version
        # last seen on each device's topic (our own copy coming back, or -1: cleared).
        self._published: dict[str, int] = {}
        self._on_broker: dict[str, int] = {}
        self._republish_all = threading.Event()
        self.handled: Counter[str] = Counter()
        # Answered taps by reason, and their latency (server/metrics.py serves both).
        self.decisions: Counter[str] = Counter()
        from server.metrics import BridgeMetrics

        self.metrics = BridgeMetrics()
        self.metrics.watch(self)
        # Set when the broker has acknowledged our subscriptions: from then on nothing is missed.
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._publisher: threading.Thread | None = None
        self._heartbeat: threading.Thread | None = None
        self._handlers: dict[Suffix, Callable[[Inbound], None]] = {
            Suffix.STATUS: self._on_status,
            Suffix.EVENT: self._on_event,
            Suffix.ALLOWLIST: self._on_allowlist,
        }
        self._subscribe_mid: int | None = None
        # A split bridge's tap half: the ingest half's counters (bridge_processes.py), added to
        # this process's own in /metrics.
        self.peer: dict[str, Any] = {}
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, wait: float = 10.0) -> Bridge:
        self._seed_offsets()
        self._workers = []
        if self.role != "ingest":
            self._workers.append(threading.Thread(target=self._decide_loop, name="tap-decider", daemon=True))
        if self.role != "taps":
            self._workers.append(threading.Thread(target=self._ingest_loop, name="ingest", daemon=True))
        for worker in self._workers:
            worker.start()
        self.client.connect_async(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if wait and not self.connected.wait(wait):
            log.warning("bridge: broker %s not reachable yet; retrying in the background", self.address.url)
        if self.role != "taps":  # allow-lists and locks: the half that hears their copies
            self._publisher = threading.Thread(
                target=self._publish_loop, name="allowlist-publisher", daemon=True
            )
            self._publisher.start()
        self._heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeat.start()
        return self

    def _heartbeat_loop(self) -> None:
        """Tell the web's /readyz that this bridge runs and whether it hears the broker."""
        from server.services.health import BEAT_S, beat

        half = "" if self.role == "all" else f" ({self.role})"
        name = f"bridge {self.client_id}{half}@{socket.gethostname()}"
        while True:
            beat(self.db, name, "bridge", {"connected": self.connected.is_set()}, self.clock())
            if self._stop.wait(BEAT_S):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._publisher is not None:
            self._publisher.join(timeout=5)
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)
        # Disconnect first: no new message is queued after the workers' last one.
        self.client.disconnect()
        self.client.loop_stop()
        self._taps.put(None)
        self._inbox.put(None)
        for worker in self._workers:
            worker.join(timeout=5)
        self.decision_log.close()  # every row handed over is written first

    def counters(self) -> dict[str, Any]:
        """What /metrics says of this process: for the tap half of a split bridge, whose
        /metrics adds them to its own (server/adapters/bridge_processes.py)."""
        with self._counts_lock:
            counts = {
                "decisions": dict(self.decisions),
                "handled": dict(self.handled),
                "rejected": dict(self.rejected),
            }
        return {
            **counts,
            "connected": self.connected.is_set(),
            "telemetry_received": self.telemetry.received,
            "telemetry_dropped": self.telemetry.dropped,
            "telemetry_waiting": len(self.telemetry),
            "telemetry_deferred": self.telemetry_deferred,
        }

    def _seed_offsets(self) -> None:
        """Clock offsets measured recently (by this bridge before a restart, or another one), so
        that taps queued while no bridge ran are judged by them, not by themselves."""
        now = self.clock()
        try:
            with self.db.session() as db:
                rows = db.execute(
                    select(Device.id, Device.clock_offset_s, Device.clock_measured_at).where(
                        Device.clock_offset_s.is_not(None), Device.clock_measured_at.is_not(None)
                    )
                ).all()
        except SQLAlchemyError:
            log.exception("bridge: could not read the devices' clock offsets; measuring afresh")
            return
        for device_id, offset_s, measured_at in rows:
            if offset_s is None or measured_at is None:
                continue
            age = (now - measured_at).total_seconds()
            if 0 <= age < self.offsets.window_s:
                self.offsets.seed(device_id, offset_s, age)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("bridge: broker refused the connection: %s", reason)
            return
        filters = [(subscription(suffix, self.shared), QOS[suffix]) for suffix in ROLES[self.role]]
        if self.role != "taps":
            # Every bridge reads the retained allow-lists itself (a shared subscription would get none).
            filters.append((subscription(Suffix.ALLOWLIST), QOS[Suffix.ALLOWLIST]))
        # One SUBSCRIBE: its SUBACK (_on_subscribe) says the bridge hears every topic.
        _rc, self._subscribe_mid = client.subscribe(filters)
        # The broker may have restarted without its retained messages (Mosquitto keeps them only
        # in memory by default): publish every list again.
        if self.role != "taps":
            self._republish_all.set()
        if self.role == "all":
            log.info("bridge connected to %s", self.address.url)
        else:  # the whole bridge's line comes from the tap half, once both are (bridge_processes.py)
            log.info("bridge's %s half connected to %s", self.role, self.address.url)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: Any, _p: Any) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
        if refused:
            log.error("bridge: the broker refused subscriptions (%s); check its ACL", ", ".join(refused))
        self.connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            log.warning("bridge lost the broker (%s); reconnecting", reason)

    # -- dispatch --------------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        """In paho's network thread: hand the message to its worker and return at once."""
        try:
            device_id, suffix = parse_topic(msg.topic)
            limit = MAX_ALLOWLIST_PAYLOAD if suffix is Suffix.ALLOWLIST else MAX_PAYLOAD
            if len(msg.payload) > limit:
                # Refused unread and unanswered: parsing a flood of big payloads costs memory.
                raise ProtocolError(
                    "too_large", f"payload of {len(msg.payload)} bytes is over the {limit} byte limit"
                )
            if suffix is Suffix.TELEMETRY:
                if not self.telemetry.add(device_id, bytes(msg.payload), self._arrival(), bool(msg.retain)):
                    self._warn_telemetry_dropped()
                return
            if suffix is Suffix.STATUS and self.role == "taps":
                self._clock_of_status(device_id, bytes(msg.payload), bool(msg.retain))
                return
            inbox = self._routes.get(suffix)
            if inbox is None:
                return  # our own outgoing topics, echoed by some brokers
            item = Inbound(
                device_id, suffix, bytes(msg.payload), self.clock(), bool(msg.retain), self.telemetry.mark()
            )
            try:
                inbox.put_nowait(item)
            except queue.Full:
                # Never block here: the taps behind it would wait. Unacknowledged, so resent.
                self._count(self.rejected, "busy")
                log.warning("bridge: %d messages wait already; dropped one on %s", MAX_WAITING, msg.topic)
        except ProtocolError as exc:
            self.reject(msg.topic, exc)
        except Exception:  # a bug must not stop the bridge; it is logged and counted
            self._count(self.rejected, "internal")
            log.exception("bridge: unexpected error on %s", msg.topic)

    def _ingest_loop(self) -> None:
        """The ingest thread: one message after the other, until stopped, and every
        ``TELEMETRY_WINDOW_S`` the telemetry held meanwhile (per device the newest state, all
        devices in one transaction). A device's telemetry that arrived before its other
        message is written first, so the order of what each device said is kept."""
        while True:
            # A window runs from the first message held (or state put off); while none is,
            # look now and then.
            due = self._window_due()
            wait = TELEMETRY_POLL_S if due is None else due - time.monotonic()
            try:
                item = self._inbox.get(timeout=max(0.0, wait))
            except queue.Empty:
                pass
            else:
                if item is None:
                    self._flush_telemetry(self.telemetry.take(), self._take_carried(), wait=True)
                    return
                if item.suffix is not Suffix.ALLOWLIST:  # the server's word, not the device's
                    # Written before the event, waiting for its rows if need be: the order holds.
                    carried = self._take_carried(item.device_id)
                    taken = self.telemetry.take_device(item.device_id, item.telemetry_upto)
                    self._flush_telemetry(taken, carried, wait=True)
                self._handle(item)
            due = self._window_due()
            if due is not None and time.monotonic() >= due:
                # The whole window: a device whose rows another transaction holds waits for
                # the next one instead of holding up the rest (server.services.telemetry.write).
                self._flush_telemetry(self.telemetry.take(), self._take_carried(), wait=False)

    def _window_due(self) -> float | None:
        """When the telemetry window closes (monotonic), None while nothing waits for one."""
        started = [t for t in (self.telemetry.first_at, self._carried_at) if t is not None]
        return min(started) + TELEMETRY_WINDOW_S if started else None

    def _take_carried(self, device_id: str | None = None) -> dict[str, telemetry.Latest]:
        """The states put off by an earlier window: all of them, or one device's."""
        if device_id is None:
            carried, self._carried = self._carried, {}
        else:
            held = self._carried.pop(device_id, None)
            carried = {} if held is None else {device_id: held}
        if not self._carried:
            self._carried_at = None
        return carried

    def _warn_telemetry_dropped(self) -> None:
        dropped = self.telemetry.dropped
        if dropped & (dropped - 1) == 0:  # the 1st, 2nd, 4th, 8th, ...: a flood logs little
            log.warning(
                "bridge: %d telemetry messages wait already; %d dropped so far", self.telemetry.limit, dropped
            )

    def _flush_telemetry(
        self,
        taken: dict[str, list[telemetry.Raw]],
        carried: dict[str, telemetry.Latest],
        wait: bool,
    ) -> None:
        """Write what ``taken`` says, going on from the states ``carried`` over from earlier
        windows (server.services.telemetry). An unknown device is refused alone; a database
        error costs this window's live state only (the next telemetry brings it again).
        Without ``wait``, a device whose rows are locked is put off to the next window."""
        if not taken and not carried:
            return

        def refuse(device_id: str, exc: ProtocolError) -> None:
            self.reject(topic(device_id, Suffix.TELEMETRY), exc)

        latest = telemetry.coalesce(taken, refuse, carried)
        if not latest:
            return
        try:
            now = self.clock()
            # The fault suite's clock offset (werkbank_protocol.clock), when arrivals are epoch times.
            shift = (wall_now() - datetime.now(UTC)).total_seconds() if self._epoch_arrivals else 0.0
            with self._bounded_session() as db:
                written = telemetry.write(
                    db, latest, now, self.offsets, self.clock_settle_s, shift, skip_locked=not wait
                )
            for device_id, exc in written.refused:
                refuse(device_id, exc)
            self._count(self.handled, "telemetry", written.messages)
            if written.deferred:
                self._carried.update(written.deferred)
                if self._carried_at is None:
                    self._carried_at = time.monotonic()
                self.telemetry_deferred += len(written.deferred)
        except SQLAlchemyError:
            self._count(self.rejected, "database")
            log.exception("bridge: database error on the telemetry of %d device(s)", len(latest))
        except Exception:  # a bug must not stop the bridge; it is logged and counted
            self._count(self.rejected, "internal")
            log.exception("bridge: unexpected error on the telemetry of %d device(s)", len(latest))

    def _handle(self, item: Inbound) -> None:
        where = f"werkbank/v1/dev/{item.device_id}/{item.suffix.value}"
        try:
            self._handlers[item.suffix](item)
            self._count(self.handled, item.suffix.value)
        except ProtocolError as exc:
            self.reject(where, exc)
        except SQLAlchemyError:
            # The database is down, busy or locked past our timeout: no ack goes out, so the
            # agent re-sends later.
            self._count(self.rejected, "database")
            log.exception("bridge: database error on %s; the device will retry", where)
        except Exception:  # a bug must not stop the bridge; it is logged and counted
            self._count(self.rejected, "internal")
            log.exception("bridge: unexpected error on %s", where)

    @contextmanager
    def _bounded_session(self) -> Iterator[Session]:
        """A session whose statements give up after ``ingest_timeout_s`` instead of waiting on a
        locked table for ever (PostgreSQL; SQLite's busy timeout is set for every connection)."""
        with self.db.session() as db:
            if db.get_bind().dialect.name == "postgresql":
                limit = str(max(1, int(self.ingest_timeout_s * 1000)))
                db.execute(_STATEMENT_LIMITS, {"ms": limit})
            yield db

    def _count(self, counter: Counter[str], key: str, n: int = 1) -> None:
        # Several threads count (the network thread and the workers).
        with self._counts_lock:
            counter[key] += n

    def reject(self, where: str, exc: ProtocolError) -> None:
        # Logged before it is counted: whoever waits for the count finds the log line there.
        log.warning("rejected message on %s: %s", where, exc.detail)
        self._count(self.rejected, exc.code)

    def publish(self, device_id: str, suffix: Suffix, payload: bytes) -> None:
        self.client.publish(topic(device_id, suffix), payload, qos=QOS[suffix], retain=suffix in RETAINED)

    def _device(self, db: Any, device_id: str) -> Device:
        device: Device | None = db.get(Device, device_id)
        if device is None:
            raise ProtocolError(
                "unknown_device", f"device {device_id!r} is not registered; provision it first"
            )
        return device

    # -- handlers (the ingest thread) -------------------------------------------------------
    def _on_status(self, item: Inbound) -> None:
        if not item.payload:
            return  # a retained status being cleared
        status = decode_as(Status, item.payload)
        sent = parse_ts(status.ts) if status.ts is not None else None
        with self._bounded_session() as db:
            device = self._device(db, item.device_id)
            came_online = status.online and not device.online
            apply_status(db, device, status, self.clock())
            if item.retained or not status.online:
                return  # from the broker's store: neither its time, its health nor its list is news
            apply_health(device, status, self.clock())
            if sent is not None:
                if self._rebooted(device.id, status, came_online):
                    self.offsets.forget(device.id)  # its clock may have jumped
                self._note_offset(db, device, item, sent)
            self._offer_allowlist(device, status.allowlist_version)

    def _clock_of_status(self, device_id: str, payload: bytes, retained: bool) -> None:
        """The tap half of a split bridge (in paho's thread, before the taps that follow): a
        device's status only for its clock, so that a tap queued behind a cut link is judged by
        the device's offset, not by itself. The ingest half stores the status; a bad one is
        refused (and counted) there, not twice.

        Its samples start afresh only when the device booted again (its ``boot`` id changed:
        a Pi without a clock battery may come up on another time). A link cut is no reboot: the
        statuses the agent queued during the cut arrive late, with the taps queued beside them,
        and must not replace what was measured before the cut."""
        if retained or not payload:
            return
        try:
            status = decode_as(Status, payload)
            sent = parse_ts(status.ts) if status.ts is not None else None
        except ProtocolError:
            return
        if not status.online or sent is None:
            return
        if self._rebooted(device_id, status, came_online=False):
            self.offsets.forget(device_id)
        self.offsets.add(device_id, self.clock(), sent)

    def _rebooted(self, device_id: str, status: Status, came_online: bool) -> bool:
        """Whether a live status says the device booted again since its last one (a new
        ``boot`` id), so that its clock offset is measured afresh. Coming online after a cut
        link is no reboot: the statuses the agent queued during the cut arrive late and must
        not replace what was measured before it. An agent that sends no boot id: when it comes
        online."""
        if status.boot is None:
            return came_online
        known = self._boots.get(device_id)
        self._boots[device_id] = status.boot
        return known is not None and known != status.boot

    def _note_offset(self, db: Session, device: Device, item: Inbound, sent: datetime) -> None:
        estimate = self.offsets.add(device.id, item.arrived, sent)
        # Stored (and used on event times) once it stands (clocks.SETTLE_S): a cut link's backlog
        # must not move them. A device never measured takes its first estimate at once, so that a
        # bridge restarted soon after can still tell which queued taps are stale.
        settled = self.offsets.settled(device.id, self.clock_settle_s)
        if settled is not None or device.clock_offset_s is None:
            clocks.record(db, device, settled if settled is not None else estimate, self.clock())

    def _on_event(self, item: Inbound) -> None:
        event = decode_event(item.payload)
        if isinstance(event, SessionStarted) and not event.offline:
            # Its start time is its decision's: let the log catch up with the answer first.
            if self.role == "ingest":
                # The tap process beside this one writes it, a few milliseconds after its answer.
                if not self._await_decision(item.device_id, event.id, event.session):
                    return  # not acknowledged: the agent sends it again
            else:
                self.wait_for_decision_log()
                if self.shared and not self._decision_recorded(event.id, event.session):
                    return  # not acknowledged: the agent sends it again
        with self._bounded_session() as db:
            device = self._device(db, item.device_id)
            result = ingest_event(db, device, event, self.clock())
        for claim in result.overruled:
            self.reject(topic(item.device_id, Suffix.EVENT), claim)
        if result.refused is not None:
            # Refused for good, nothing stored: acknowledged, or the agent would re-send it forever.
            self.reject(topic(item.device_id, Suffix.EVENT), result.refused)
        if not result.new and result.refused is None:
            self._count(self.handled, "duplicate")  # before the ack: whoever waits for it sees the count
        # Committed: now, and only now, the agent may forget the event.
        self.publish(item.device_id, Suffix.ACK, encode(Ack(v=1, ids=[result.event_id])))

    def _on_allowlist(self, item: Inbound) -> None:
        """A copy of a device's allow-list on the broker: ours coming back, the retained one
        (when we subscribe), or someone clearing it. Republish when the broker holds none or an
        older one than the database's (and not because of an older copy of our own)."""
        version = -1
        if item.payload:
            try:
                version = decode_as(_Version, item.payload, MAX_ALLOWLIST_PAYLOAD).version
            except ProtocolError:
                version = -1  # not a list an agent would take: as good as none
        self._on_broker[item.device_id] = version
        if version >= 0:
            if not item.retained:
                return  # a live copy: our own, on its way (a newer one may follow it)
            if self._published.get(item.device_id, -1) > version:
                return  # we have published a newer one since: the broker holds that now
        with self._bounded_session() as db:
            device = db.get(Device, item.device_id)
            machine = device.machine if device is not None else None
            if machine is None or machine.allowlist_dirty or version >= machine.allowlist_version:
                return
            machine.allowlist_dirty = True
            log.info(
                "allow-list of %s on the broker is %s (the database has %d): republishing",
                item.device_id,
                "missing" if version < 0 else f"version {version}",
                machine.allowlist_version,
            )

    def _offer_allowlist(self, device: Device, held: int | None) -> None:
        """A device came online holding an older allow-list than its machine's (or none): when
        the broker holds none for it (a new device id, a lost retained copy), publish one. One
        holding a newer list than the database knows gets the next version above it."""
        machine = device.machine
        if machine is None:
            return
        if held is not None and machine.allowlist_version < held <= ALLOWLIST_VERSION_CEILING:
            # The device holds a list this database never issued: the database was restored from
            # a backup made before it (docs/deploy.md, "Recovery"). The agent ignores every lower
            # version as a replay, so go on numbering above the one it holds.
            log.warning(
                "device %s holds allow-list version %d, the database knows %d (restored from a "
                "backup?): the next list is numbered above it",
                device.id,
                held,
                machine.allowlist_version,
            )
            machine.allowlist_version = held
            machine.allowlist_dirty = True
            return
        if machine.allowlist_dirty:
            return
        if held is not None and held >= machine.allowlist_version:
            return
        if machine.allowlist_version in (self._on_broker.get(device.id), self._published.get(device.id)):
            return  # the retained copy is there (or on its way): the device gets it from the broker
        published = machine.allowlist_published_at
        if (
            self._on_broker.get(device.id, -1) >= 0
            and published is not None
            and self.clock() - published < ALLOWLIST_IN_FLIGHT
        ):
            # Another bridge (shared subscriptions) has just built this version and published it:
            # its message is on its way to the broker and the device. Building one more here
            # would make that bridge see a stale status in turn, and so on, many versions a second.
            return
        machine.allowlist_dirty = True
        log.info(
            "device %s holds allow-list %s: publishing version %d+",
            device.id,
            held,
            machine.allowlist_version,
        )

    # -- taps ------------------------------------------------------------------------------
    def _decide_loop(self) -> None:
        """Answer taps in batches: all taps waiting when the thread gets to them share one
        transaction (one commit), then their answers go out. This thread alone answers taps,
        so taps never wait on each other's database locks."""
        try:
            self._decide_batches()
        finally:
            # Not back into the pool: its session settings are the decider's alone.
            self._drop_tap_connection()

    def _decide_batches(self) -> None:
        while True:
            first = self._taps.get()
            if first is None:
                return
            stopping = False
            batch = [first]
            while len(batch) < MAX_TAPS_PER_COMMIT:
                try:
                    item = self._taps.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            try:
                self._answer_taps(self._current_taps(batch))
            except Exception:  # never let the thread die; each tap was counted already
                log.exception("bridge: answering %d tap(s) failed", len(batch))
            if stopping:
                return

    def _current_taps(self, batch: list[Inbound]) -> list[tuple[str, AuthReq]]:
        """The taps of ``batch`` worth answering: a garbled one is answered ``bad_request`` here;
        one the agent has stopped waiting for is dropped (counted ``stale``), neither answered nor
        recorded, since the agent decided offline already and nobody would act on the answer."""
        now = self.clock()
        current: list[tuple[str, AuthReq]] = []
        for item in batch:
            try:
                req = decode_as(AuthReq, item.payload)
                sent = parse_ts(req.ts)
            except ProtocolError as exc:
                self.reject(topic(item.device_id, Suffix.AUTH_REQ), exc)
                self._answer_bad_request(item.device_id, item.payload, exc)
                continue
            if req.mode == "enrol":
                # An enrolment station asks for a new card's keys: no session, no decision row.
                self._answer_enrol(item.device_id, req)
                continue
            # A device never measured is taken at its word: its first tap sets its offset.
            estimate = (
                self.offsets.estimate(item.device_id)
                if item.retained  # from the broker's store: late by definition, no sample
                else self.offsets.add(item.device_id, item.arrived, sent)
            )
            if estimate is None:
                estimate = (item.arrived - sent).total_seconds()
            age = clocks.tap_age(sent, now, estimate)
            if age > self.tap_max_age_s:
                self._count(self.rejected, "stale")
                log.warning(
                    "tap %s at %s is %.1f s old (the agent waits %.1f s): dropped unanswered",
                    req.id,
                    item.device_id,
                    age,
                    clocks.AGENT_WAIT_S,
                )
                continue
            current.append((item.device_id, req))
        return current

    def _answer_taps(self, batch: list[tuple[str, AuthReq]]) -> None:
        """Decide ``batch`` and publish the answers; the decision log follows.

        The reply path costs one query (see Decider) on the decider's own connection, read in
        autocommit: no BEGIN, no COMMIT, no pool check-out. The ``access_decisions`` rows go to
        the decision log's own thread, which writes them in batches after the answers went out,
        without waiting for the disk on PostgreSQL (server/services/decision_log.py): a crash
        can cost the last few rows of the log, never an event, a session or an ack
        (docs/performance.md). Whatever must be durable before the answer still is: a
        ``certify`` tap's sign-off and a not-genuine card's audit."""
        started = time.monotonic()
        reasons: list[str] = []  # of the taps decided in this batch
        todo: list[tuple[str, AuthReq]] = []
        seen: set[str] = set()
        for device_id, req in batch:
            if req.id not in seen and self._recent_answer(req.id) is None:
                todo.append((device_id, req))
            seen.add(req.id)
        if any(req.mode in ("certify", "checkin") for _d, req in todo):
            # A sign-off or a check-in changes more than the decision log: one durable transaction.
            self._answer_taps_durably(batch, todo)
            return
        fresh: dict[str, bytes] = {}  # request id -> answer decided (or found recorded) now
        rows: list[dict[str, Any]] = []
        audits: list[dict[str, Any]] = []
        if todo:
            try:
                db = self._tap_connection()
                now = self.clock()
                taps = [Tap(d, r.badge, r.mode, r.trainer_badge, r.card_auth, r.id) for d, r in todo]
                results = self.decider.decide(db, taps, now, self.max_open_sessions)
                db.commit()  # no round trip in autocommit; ends the read otherwise
            except SQLAlchemyError:
                # The database is down or busy: no answer goes out, the agent decides offline.
                self._drop_tap_connection()
                self._count(self.rejected, "database", len(batch))
                log.exception("bridge: database error on %d tap(s); devices fall back to offline", len(batch))
                return
            self._take_results(todo, results, now, fresh, rows, reasons, audits)
        if audits:
            # A refused forgery is audited before anyone hears of it: durably, log and all.
            try:
                self._count(self.rejected, "badge_not_genuine", len(audits))
                with self.db.engine.begin() as durable:
                    durable.execute(_RECORD_DECISION, rows)
                    durable.execute(_RECORD_AUDIT, audits)
                rows = []
            except SQLAlchemyError:
                self._count(self.rejected, "database", len(batch))
                log.exception("bridge: could not audit %d refused card(s); no answer goes out", len(audits))
                return
        if rows:
            # Handed over before the answers go out: a session start that follows its answer
            # waits for its row (wait_for_decision_log). Written on the log's own thread.
            self.decision_log.add(rows)
        self._send_answers(batch, fresh, reasons, started)

    def _tap_connection(self) -> Connection:
        """The decider thread's own connection, kept open: in autocommit, so that a read is one
        round trip."""
        if self._tap_conn is None:
            conn = self.db.engine.connect()
            if not isinstance(self.db.engine.pool, StaticPool):
                # (An in-memory SQLite database shares its one connection with every thread:
                # that one keeps its transactions, committed after each use.)
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            if conn.dialect.name == "postgresql":
                # The batch statement (server.services.decision) is prepared once and planned
                # once: a custom plan per execution cost PostgreSQL 0.5 ms of planning for 0.1 ms
                # of work. Its plan (index lookups per tap) suits one tap and a hundred alike.
                conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
            self._tap_conn = conn
        return self._tap_conn

    def _drop_tap_connection(self) -> None:
        if self._tap_conn is not None:
            try:
                self._tap_conn.invalidate()
                self._tap_conn.close()
            except SQLAlchemyError:
                pass
            self._tap_conn = None

    def _await_decision(self, device_id: str, event_id: str, session_id: str) -> bool:
        """The ingest half of a split bridge: wait up to ``DECISION_ROW_WAIT_S`` for the decision
        row of ``session_id`` (the tap half writes it just after its answer), then decide as for
        another bridge's decision (:meth:`_decision_recorded`).

        The wait holds up this thread, so a device whose last wait found nothing (a tap half
        that died, or a stolen Pi claiming decisions the server never made, start after start)
        gets no other for ``DECISION_ROW_WAIT_AGAIN_S``: the ingestion of every other device
        must not be slowed by one device's claims (docs/security.md)."""
        now = time.monotonic()
        if now - self._waited_in_vain.get(device_id, -math.inf) < DECISION_ROW_WAIT_AGAIN_S:
            return self._decision_recorded(event_id, session_id)
        deadline = now + DECISION_ROW_WAIT_S
        while not self._decided(event_id, session_id):
            if time.monotonic() >= deadline or self._stop.wait(DECISION_ROW_POLL_S):
                # Newest last, so that the bound drops the devices that waited longest ago.
                self._waited_in_vain.pop(device_id, None)
                self._waited_in_vain[device_id] = time.monotonic()
                while len(self._waited_in_vain) > MAX_WAITING:
                    self._waited_in_vain.popitem(last=False)
                return self._undecided_start(event_id, session_id)
        return True

    def _decision_recorded(self, event_id: str, session_id: str) -> bool:
        """Whether ``session_id``'s decision row is there, or has been waited for long enough.

        With shared subscriptions another bridge may have answered the tap: it writes its row
        just after the answer, and the session's start can reach this bridge first. Ingested
        now, the server would store a session it decided as an offline one and reject the
        start (``claim_mismatch``). So the start is left unacknowledged and the agent's outbox
        sends it again (after 2 s); once ``OTHER_BRIDGE_WAIT_S`` has passed since this bridge
        first saw it, it is taken as it is (the answering bridge died before it wrote the row)."""
        return self._decided(event_id, session_id) or self._undecided_start(event_id, session_id)

    def _decided(self, event_id: str, session_id: str) -> bool:
        """Whether ``session_id``'s decision row is there (its start then waits no more)."""
        with self._bounded_session() as db:
            if device_claims.decision_for(db, session_id) is None:
                return False
        self._undecided_starts.pop(event_id, None)
        return True

    def _undecided_start(self, event_id: str, session_id: str) -> bool:
        """A start whose decision row is not there: taken once ``OTHER_BRIDGE_WAIT_S`` has passed
        since this bridge first saw it, else left unacknowledged for now."""
        now = time.monotonic()
        first = self._undecided_starts.setdefault(event_id, now)
        while len(self._undecided_starts) > MAX_WAITING:
            self._undecided_starts.popitem(last=False)
        if now - first >= OTHER_BRIDGE_WAIT_S:
            self._undecided_starts.pop(event_id, None)
            return True
        self._count(self.handled, "start_before_decision")
        log.info("session %s started before its decision row is there: not acknowledged yet", session_id)
        return False

    def _take_results(
        self,
        todo: list[tuple[str, AuthReq]],
        results: Sequence[Any],
        now: datetime,
        fresh: dict[str, bytes],
        rows: list[dict[str, Any]],
        reasons: list[str],
        audits: list[dict[str, Any]],
        certify: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        """Turn the decider's results into answers (``fresh``), decision-log rows, reasons and
        forgery audits: one way for the fast path and the durable one. ``certify`` signs off an
        allowed ``certify`` tap (the durable path only)."""
        for (device_id, req), result in zip(todo, results, strict=True):
            if isinstance(result, Recorded):
                # Answered before (by this bridge before a restart, or another one): it stands.
                fresh[req.id] = encode(AuthResp(v=1, **result.response))
            elif isinstance(result, ProtocolError):
                self.reject(topic(device_id, Suffix.AUTH_REQ), result)
            elif isinstance(result, Exception):  # a bug must not stop the bridge
                self._count(self.rejected, "internal")
                log.error("bridge: unexpected error on a tap at %s", device_id, exc_info=result)
            else:
                machine, verdict = result
                if certify is not None and req.mode == "certify" and verdict.allowed:
                    verdict = certify(machine, verdict)
                row, answer = self._record(device_id, req, now, machine, verdict)
                rows.append(row)
                fresh[req.id] = answer
                reasons.append(verdict.reason)
                if verdict.reason == "badge_not_genuine":
                    audits.append(_not_genuine(device_id, req, machine, now))

    def wait_for_decision_log(self, timeout: float = 1.0) -> bool:
        """Wait until the decision log holds every answer published so far (a session that
        starts right after its answer needs the row; it is a few milliseconds behind)."""
        return self.decision_log.wait(timeout=timeout)

    def _answer_taps_durably(self, batch: list[tuple[str, AuthReq]], todo: list[tuple[str, AuthReq]]) -> None:
        """Decide ``batch``, record it in one transaction, then publish the answers: for taps
        that change more than the decision log (a ``certify`` tap's sign-off, a check-in)."""
        started = time.monotonic()
        reasons: list[str] = []  # of the taps decided in this batch
        fresh: dict[str, bytes] = {}  # request id -> answer decided in this batch
        if any(req.mode == "certify" for _d, req in todo):
            # A sign-off is filed under the trainer's session, which it may find only by the
            # decision that handed it out (training.sign_off_at_machine): written first.
            self.wait_for_decision_log()
        try:
            # A Core connection, not an ORM session: nothing here needs the ORM, and a tap waits
            # for every microsecond the ORM's bookkeeping would add.
            with self.db.engine.begin() as db:
                now = self.clock()
                rows: list[dict[str, Any]] = []
                audits: list[dict[str, Any]] = []
                # Entrance taps are not machine decisions: the attendance service answers them.
                for device_id, req in (item for item in todo if item[1].mode == "checkin"):
                    checked = self._checkin(db, device_id, req, now)
                    if checked is not None:
                        rows.append(checked[0])
                        fresh[req.id] = checked[1]
                todo = [item for item in todo if item[1].mode != "checkin"]
                taps = [Tap(d, r.badge, r.mode, r.trainer_badge, r.card_auth, r.id) for d, r in todo]
                results = self.decider.decide(db, taps, now, self.max_open_sessions) if todo else []
                self._take_results(
                    todo,
                    results,
                    now,
                    fresh,
                    rows,
                    reasons,
                    audits,
                    certify=lambda machine, verdict: self._certify(db, machine, verdict, now),
                )
                if rows:
                    db.execute(_RECORD_DECISION, rows)
                if audits:
                    self._count(self.rejected, "badge_not_genuine", len(audits))
                    db.execute(_RECORD_AUDIT, audits)
        except IntegrityError:
            # A request id is recorded already (a duplicate from before a restart, or another
            # bridge answered it): go one by one, so that the stored answer stands.
            if len(batch) > 1:
                for item in batch:
                    self._answer_taps([item])
                return
            device_id, req = batch[0]
            try:
                answered = self._answer_from_record(device_id, req.id)
            except SQLAlchemyError:
                answered = False
            if not answered:
                self._count(self.rejected, "database")
                log.exception("bridge: could not record the tap %s at %s", req.id, device_id)
            return
        except SQLAlchemyError:
            # The database is down or busy: no answer goes out, the agent decides offline.
            self._count(self.rejected, "database", len(batch))
            log.exception("bridge: database error on %d tap(s); the devices fall back to offline", len(batch))
            return
        # Committed: now the answers may go out, duplicates with the same answer as the first.
        self._send_answers(batch, fresh, reasons, started)

    def _send_answers(
        self, batch: list[tuple[str, AuthReq]], fresh: dict[str, bytes], reasons: list[str], started: float
    ) -> None:
        """Publish the answers of ``batch`` (a duplicate gets the first answer again) and count
        the decisions made, with the time the batch took."""
        for request_id, answer in fresh.items():
            self._remember_answer(request_id, answer)
        for device_id, req in batch:
            known = fresh.get(req.id) or self._recent_answer(req.id)
            if known is not None:
                self.publish(device_id, Suffix.AUTH_RESP, known)
        elapsed = time.monotonic() - started
        for reason in reasons:
            self._count(self.decisions, reason)
            self.metrics.decision_seconds.observe(elapsed)

    def _certify(self, db: Connection, machine: MachineFacts, verdict: Verdict, now: datetime) -> Verdict:
        """Record the practical sign-off an allowed ``certify`` tap stands for, in the tap's
        transaction: for every competency the machine type requires whose next step is a
        sign-off. A refusal of the training rules (e.g. supervised hours missing) becomes the
        answer, ``not_qualified`` with the rule's own message."""
        assert verdict.person is not None and verdict.trainer is not None
        tz = machine.timezone
        today = now.astimezone(ZoneInfo(tz)).date()
        name = verdict.person.first_name

        def refused(message: dict[str, str]) -> Verdict:
            return Verdict(False, "not_qualified", message, person=verdict.person, trainer=verdict.trainer)

        # The ORM session joins the tap's transaction and leaves its commit to it. Its grants mark
        # every allow-list dirty in this transaction, like any ORM change: the Decider's cache stays exact.
        with Session(bind=db, join_transaction_mode="rollback_only") as orm:
            person = orm.get(Person, verdict.person.id)
            trainer = orm.get(Person, verdict.trainer.id)
            assert person is not None and trainer is not None
            try:
                granted = training.sign_off_at_machine(
                    orm, person, trainer, machine.machine_type_id, machine.id, now, today
                )
            except training.TrainingError as exc:
                if exc.code == "nothing_to_sign_off":
                    return refused(render("nothing_to_sign_off", tz, name=name))
                return refused(render_text(exc.message, tz, **exc.params))
            if len(granted) == 1:
                entry = granted[0]
                level_label = training.LEVEL_LABELS[entry.level]
                message = render(
                    "signoff_recorded_level",
                    tz,
                    name=name,
                    level=lambda language: gettext_in(language, level_label),
                    competency=entry.competency.display_name,
                )
            else:
                message = render("signoff_recorded", tz, name=name)
        log.info("sign-off recorded at machine %s for person %s", machine.id, verdict.person.id)
        return Verdict(True, "ok", message, person=verdict.person, trainer=verdict.trainer)

    def _checkin(
        self, db: Connection, device_id: str, req: AuthReq, now: datetime
    ) -> tuple[dict[str, Any], bytes] | None:
        """Check the badge in or out at the site whose entrance ``device_id`` reads, in the tap's
        transaction. A device that is no entrance reader is refused (counted, no answer)."""
        with Session(bind=db, join_transaction_mode="rollback_only") as orm:
            site = attendance.entrance_site(orm, device_id)
            if site is None:
                self.reject(
                    topic(device_id, Suffix.AUTH_REQ),
                    ProtocolError(
                        "not_an_entrance",
                        f"device {device_id!r} asked for a check-in but is no entrance reader",
                    ),
                )
                return None
            result = attendance.tap(orm, site, req.badge, now, device_id)
            tz = site.timezone
            person = result.person
            if result.allowed and person is not None:
                keys = {"in": "checked_in", "out": "checked_out"}
                key = keys.get(result.direction or "", "checked_in_already")
                message = render(key, tz, name=person.first_name, time=now)
            else:
                message = render(result.reason, tz)
            orm.flush()
            response = AuthResp(
                v=1,
                req=req.id,
                decision="allow" if result.allowed else "deny",
                reason=result.reason,  # type: ignore[arg-type]
                message=message,
                person=person.first_name if person is not None and result.allowed else None,
                lang=person.language if person is not None and person.language in message else None,
                attendance=result.direction if result.allowed else None,  # type: ignore[arg-type]
            )
            row = {
                "id": req.id,
                "device_id": device_id,
                "machine_id": None,
                "badge_uid": req.badge,
                "person_id": person.id if person is not None else None,
                "mode": req.mode,
                "decision": response.decision,
                "reason": result.reason,
                "session_id": None,
                "decided_at": now,
                "response": {k: v for k, v in to_builtins(response).items() if k != "v"},
            }
        return row, encode(response)

    def _record(
        self, device_id: str, req: AuthReq, now: datetime, machine: MachineFacts, verdict: Verdict
    ) -> tuple[dict[str, Any], bytes]:
        """The access_decisions row and the encoded answer for one decided tap."""
        response = AuthResp(
            v=1,
            req=req.id,
            decision="allow" if verdict.allowed else "deny",
            reason=verdict.reason,  # type: ignore[arg-type]
            message=verdict.message,
            session=verdict.session_id,
            person=verdict.person.first_name if verdict.person and verdict.allowed else None,
            until=format_ts(verdict.until) if verdict.until else None,
            # The time left, so that an agent whose clock is wrong still locks on time.
            until_s=round(max(0.0, (verdict.until - now).total_seconds()), 3) if verdict.until else None,
            trainer=verdict.trainer_here,
            lang=_language_of(verdict.person, verdict.message),
            until_reason="booking" if verdict.allowed and verdict.until_booking else None,
        )
        row = {
            "id": req.id,
            "device_id": device_id,
            "machine_id": machine.id,
            "badge_uid": req.badge,
            "person_id": verdict.person.id if verdict.person else None,
            "mode": req.mode,
            "trainer_id": verdict.trainer.id if verdict.trainer else None,
            "decision": response.decision,
            "reason": verdict.reason,
            "session_id": verdict.session_id,
            "decided_at": now,
            "response": {k: v for k, v in to_builtins(response).items() if k != "v"},
        }
        return row, encode(response)

    def _answer_from_record(self, device_id: str, request_id: str) -> bool:
        with self.db.session() as db:
            stored = db.get(AccessDecision, request_id)
            if stored is None:
                return False
            answer = encode(AuthResp(v=1, **stored.response))
        self._remember_answer(request_id, answer)
        self.publish(device_id, Suffix.AUTH_RESP, answer)
        return True

    def _recent_answer(self, request_id: str) -> bytes | None:
        with self._answers_lock:
            return self._answers.get(request_id)

    def _remember_answer(self, request_id: str, answer: bytes) -> None:
        with self._answers_lock:
            self._answers[request_id] = answer
            while len(self._answers) > RECENT_ANSWERS:
                self._answers.popitem(last=False)

    def _answer_enrol(self, device_id: str, req: AuthReq) -> None:
        """An enrolment station asks for the keys of the new card on its reader."""
        try:
            with self.db.session() as db:
                granted = cards.grant(db, device_id, req.badge)
        except cards.CardError as exc:
            log.warning("bridge: no enrolment keys for %s at %s: %s", req.badge, device_id, exc)
            resp = AuthResp(
                v=1,
                req=req.id,
                decision="deny",
                reason="bad_request",
                message=render_text(exc.message, "UTC", **exc.params),
            )
        except SQLAlchemyError:
            self._count(self.rejected, "database")
            log.exception("bridge: database error on an enrolment request at %s", device_id)
            return
        else:
            resp = AuthResp(
                v=1,
                req=req.id,
                decision="allow",
                reason="ok",
                message=render("enrol_writing", "UTC"),
                enrolment=EnrolGrant(enrolment=granted.enrolment, badge=granted.badge, keys=granted.keys),
            )
        self.publish(device_id, Suffix.AUTH_RESP, encode(resp))

    def _answer_bad_request(self, device_id: str, payload: bytes, exc: ProtocolError) -> None:
        """A garbled tap still gets an answer when we can tell which request it was."""
        req_id = garbled_request_id(payload)
        if req_id is None:
            return
        try:
            resp = AuthResp(
                v=1, req=req_id, decision="deny", reason="bad_request", message=render("bad_request", "UTC")
            )
            self.publish(device_id, Suffix.AUTH_RESP, encode(resp))
        except (ValueError, ProtocolError, UnicodeDecodeError):
            return

    # -- allow-lists -----------------------------------------------------------------------
    def _publish_loop(self) -> None:
        failing = False
        while not self._stop.wait(self.allowlist_interval):
            if not self.connected.is_set():
                continue
            try:
                if self._republish_all.is_set():
                    self._republish_all.clear()
                    try:
                        self.publish_allowlists(force=True)
                    except Exception:
                        self._republish_all.set()  # again next round
                        raise
                else:
                    self.publish_allowlists()
                if time.monotonic() >= self._next_booking_check:
                    self._next_booking_check = time.monotonic() + self.booking_interval
                    self.lock_for_bookings()
                    self.lock_not_allowed()
                failing = False
            except Exception:
                if not failing:  # once per outage, not twice a second
                    log.exception("bridge: publishing allow-lists or locks failed; retrying")
                failing = True

    def publish_allowlists(self, force: bool = False) -> int:
        """Publish every dirty (or, with force, every) machine's allow-list; returns how many.

        In batches of ``ALLOWLIST_BATCH`` machines, one transaction each: a batch holds its
        machines' rows while it builds their lists, and a round of hundreds of machines in one
        transaction held them all for seconds, so that telemetry windows, events and bookings
        waited for them (issue 16). A machine whose row another transaction holds is skipped
        (``SKIP LOCKED``: two bridges share the work); in a forced round it is marked dirty
        afterwards, so that the next round publishes it."""
        now = self.clock()
        published = 0
        after = 0  # the machine ids up to here are done
        skipped: list[int] = []
        while True:
            outgoing: list[tuple[str, int, bytes]] = []
            with self.db.session() as db:
                batch = select(Machine.id).where(Machine.device.has(), Machine.id > after)
                if not force:
                    batch = batch.where(Machine.allowlist_dirty.is_(True))
                ids = list(db.scalars(batch.order_by(Machine.id).limit(ALLOWLIST_BATCH)))
                if not ids:
                    break
                after = ids[-1]
                query = select(Machine).where(Machine.id.in_(ids)).order_by(Machine.id)
                if not force:
                    query = query.where(Machine.allowlist_dirty.is_(True))
                machines = list(db.scalars(query.with_for_update(skip_locked=True)))
                skipped += sorted(set(ids) - {m.id for m in machines})
                # One read of badges and histories per site day, after the rows are locked: a
                # change committed since marks these machines dirty only once this batch is done.
                holders: dict[date, allowlists.Holders] = {}
                for machine in machines:
                    outgoing += self._build_allowlist(db, machine, now, holders)
            # Published after the commit, so a version number is never sent twice with different content.
            for device_id, version, payload in outgoing:
                self._published[device_id] = version
                self.publish(device_id, Suffix.ALLOWLIST, payload)
            published += len(outgoing)
        if force and skipped:
            with self.db.session() as db:
                db.execute(update(Machine).where(Machine.id.in_(skipped)).values(allowlist_dirty=True))
        if published:
            log.info("published %d allow-list(s) at %s", published, now_ts())
        return published

    def _build_allowlist(
        self, db: Session, machine: Machine, now: datetime, holders: dict[date, allowlists.Holders]
    ) -> list[tuple[str, int, bytes]]:
        """Number and build ``machine``'s next list: (device id, version, payload), or nothing
        when it is too large to send."""
        machine.allowlist_version += 1
        today = now.astimezone(ZoneInfo(machine.site.timezone)).date()
        if today not in holders:
            holders[today] = allowlists.load_holders(db, today)
        document = allowlists.build(db, machine, now, self.allowlist_days, holders[today])
        machine.allowlist_dirty = False
        machine.allowlist_published_at = now
        device = machine.device
        assert device is not None
        payload = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
        if len(payload) > self.message_limit:
            # The broker would drop it without a word and the Pi would keep its old list
            # until that expires: say so here, where an admin looks.
            self._count(self.rejected, "allowlist_too_large")
            log.error(
                "allow-list of %s not sent: %d badges make %d bytes, over the broker's message "
                "limit of %d; raise message_size_limit and max_packet_size in the broker's "
                "werkbank.conf and MQTT_MESSAGE_LIMIT together (docs/deploy.md)",
                machine.slug,
                len(document["entries"]),
                len(payload),
                self.message_limit,
            )
            return []
        return [(device.id, machine.allowlist_version, payload)]

    # -- bookings --------------------------------------------------------------------------
    def lock_for_bookings(self) -> int:
        """A booking has begun and someone else's session still runs on its machine (a walk-in
        let in before the booking was made, or an offline session): send that session a ``lock``
        with reason ``booking_end``, once (see server/services/booking_locks.py). Not forced: the
        agent waits for a running job. Returns how many locks went out."""
        now = self.clock()
        with self.db.session() as db:
            due = booking_locks.due_locks(db, now, skip=self._booking_locks_sent)
            # Sent before the commit: a crash in between sends it again, with the same command
            # id, which the agent ignores; the other order could lose the lock.
            for lock in due:
                command = Cmd(v=1, id=lock.cmd_id, type="lock", session=lock.session_id, reason="booking_end")
                self.publish(lock.device_id, Suffix.CMD, encode(command))
                log.info(
                    "booking %s began: locking session %s at %s",
                    lock.booking_id,
                    lock.session_id,
                    lock.device_id,
                )
        self._booking_locks_sent.update((lock.booking_id, lock.session_id) for lock in due)
        if len(self._booking_locks_sent) > RECENT_ANSWERS:
            self._booking_locks_sent.clear()  # the audit log remembers; this only spares queries
        return len(due)

    # -- offline sessions of people who were not allowed -----------------------------------
    def lock_not_allowed(self) -> int:
        """Send a ``lock`` to every flagged offline session still running, once (see
        server/services/reconcile.py). Not forced: the agent waits for a running job."""
        now = self.clock()
        with self.db.session() as db:
            due = reconcile.due_locks(db, now, skip=self._reconcile_locks_sent)
            # Sent before the commit, as the booking locks are (same reasons).
            for lock in due:
                command = Cmd(
                    v=1, id=lock.cmd_id, type="lock", session=lock.session_id, reason=reconcile.LOCK_REASON
                )
                self.publish(lock.device_id, Suffix.CMD, encode(command))
                log.warning(
                    "locking session %s at %s: not allowed when it began offline",
                    lock.session_id,
                    lock.device_id,
                )
        self._reconcile_locks_sent.update(lock.session_id for lock in due)
        if len(self._reconcile_locks_sent) > RECENT_ANSWERS:
            self._reconcile_locks_sent.clear()  # the audit log remembers; this only spares queries
        return len(due)


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes (used by the CLI and tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _language_of(person: PersonFacts | None, message: dict[str, str]) -> str | None:
    """The person's language when the message has it (the machine shows that one first)."""
    if person is None or person.language not in message:
        return None
    return person.language
