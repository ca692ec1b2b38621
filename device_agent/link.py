"""The agent's MQTT link to the server: connection, subscriptions, the outbox's delivery, answers.

:class:`Link` owns the paho client. It connects with a persistent session (acks and commands sent
while the link was down still arrive) and a will saying the device went offline, subscribes to the
device's server-to-agent topics, and hands every incoming message to the agent's main loop as a job,
except an ``auth/resp``, which wakes the tap waiting for it in :meth:`Link.ask` (paho's thread does
that). An ``ack`` deletes the events it names from the outbox; events not acknowledged are re-sent,
backing off from ``resend_min_s`` to ``resend_max_s``. The link also tells whether the server answers
(connected, and the last request had its answer in time): the "offline" light follows that.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import msgspec
import paho.mqtt.client as mqtt

from device_agent.clock import Clock
from device_agent.config import AgentConfig
from device_agent.outbox import Outbox
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import Ack, AuthReq, AuthResp, Status, decode_as, encode
from werkbank_protocol.mqtt import make_client, parse_mqtt_url
from werkbank_protocol.topics import QOS, RETAINED, SERVER_TO_AGENT, Suffix, topic

log = logging.getLogger(__name__)


def compact(message: msgspec.Struct) -> bytes:
    """JSON without the fields that are None: the will is exactly ``{"v":1,"online":false}``."""
    fields = msgspec.structs.asdict(message)
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not None})


class _Waiter:
    """A tap waiting for the ``auth/resp`` to its request."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: AuthResp | None = None
        self.arrived_mono = 0.0  # the boot clock when the answer arrived: `until_s` counts from here


class Link:
    """The MQTT link of one agent. Everything but ``ask`` and paho's callbacks runs in the main loop.

    ``jobs`` is the main loop's queue; ``handlers`` take the payloads of the server's ``cmd``,
    ``allowlist`` and ``sim/tap`` there. ``on_online`` runs there once connected and subscribed
    (before the outbox is re-sent); ``on_reachability`` whenever :attr:`server_reachable` changes.
    """

    RESEND_BATCH = 500

    def __init__(
        self,
        config: AgentConfig,
        clock: Clock,
        outbox: Outbox,
        jobs: queue.SimpleQueue[Callable[[], None] | None],
        handlers: dict[Suffix, Callable[[bytes], None]],
        on_online: Callable[[], None],
        on_reachability: Callable[[], None],
        stopping: threading.Event,
        resend_min_s: float,
        resend_max_s: float,
    ) -> None:
        self.config = config
        self.clock = clock
        self.outbox = outbox
        self._jobs = jobs
        self._on_online = on_online
        self._on_reachability = on_reachability
        self._stopping = stopping
        self._resend_min_s = resend_min_s
        self._resend_max_s = resend_max_s
        # Rejected incoming messages by topic suffix and error code, for logs and tests.
        self.rejected: Counter[str] = Counter()
        self._server_answering = True
        self._waiting: dict[str, _Waiter] = {}
        self._waiting_lock = threading.Lock()
        self._seen_ids: deque[str] = deque(maxlen=256)
        self._ready = threading.Event()  # connected and subscribed
        self._resend_delay = resend_min_s
        self._resend_at: float | None = None
        self._subscribe_mid: int | None = None
        self._client = self._make_client({Suffix.ACK: self._handle_ack, **handlers})

    # ------------------------------------------------------------------ the connection

    @property
    def ready(self) -> bool:
        """Connected to the broker and subscribed to this device's topics."""
        return self._ready.is_set()

    @property
    def server_reachable(self) -> bool:
        """Connected, and the server answered the last request in time."""
        return self._ready.is_set() and self._server_answering

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def start(self) -> None:
        address = parse_mqtt_url(self.config.mqtt_url)
        self._client.connect_async(address.host, address.port, keepalive=self.config.mqtt_keepalive_s)
        self._client.loop_start()

    def close(self) -> None:
        """Say the device is gone (a clean disconnect sends no will) and disconnect."""
        if self._ready.is_set():
            info = self._client.publish(
                self._topic(Suffix.STATUS), compact(Status(v=1, online=False)), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish the offline status: %s", exc)
        self._ready.clear()
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------------ outgoing messages

    def _topic(self, suffix: Suffix) -> str:
        return topic(self.config.device_id, suffix)

    def publish(self, suffix: Suffix, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self._client.publish(self._topic(suffix), payload, qos=QOS[suffix], retain=suffix in RETAINED)

    def publish_status(self, status: Status) -> None:
        self.publish(Suffix.STATUS, compact(status))

    def send_event(self, event_id: str, payload: bytes) -> None:
        """Publish an event the outbox holds already; re-sent until the server's ack names it."""
        # Offline, it waits in the outbox: on_connect re-sends it. Publishing now would
        # only queue it in paho's memory and send it twice.
        if self._ready.is_set():
            self.publish(Suffix.EVENT, payload)
        if self._resend_at is None:
            self._resend_at = self.clock.monotonic() + self._resend_delay

    def _resend(self) -> int:
        pending = self.outbox.pending(self.RESEND_BATCH)
        for _event_id, payload in pending:
            self.publish(Suffix.EVENT, payload)
        return len(pending)

    def resend_if_due(self, mono: float) -> None:
        """Re-send unacknowledged events, backing off from 2 s to 60 s while no ack comes."""
        if self._resend_at is None or mono < self._resend_at:
            return
        if not len(self.outbox):
            self._resend_at = None
            self._resend_delay = self._resend_min_s
            return
        if self._ready.is_set():
            log.info("re-sending %d unacknowledged events", self._resend())
            self._resend_delay = min(self._resend_delay * 2, self._resend_max_s)
        self._resend_at = mono + self._resend_delay

    def ask(self, request: AuthReq) -> tuple[AuthResp, float] | None:
        """Publish ``request`` and wait up to ``[server] auth_timeout_s`` for its answer: the answer and
        the boot clock when it arrived, or None when the server cannot be asked or does not answer
        in time."""
        if not self._ready.is_set():
            return None
        waiter = _Waiter()
        with self._waiting_lock:
            self._waiting[request.id] = waiter
        try:
            info = self.publish(Suffix.AUTH_REQ, encode(request))
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return None
            if not waiter.event.wait(self.config.server_auth_timeout_s) or waiter.response is None:
                log.warning(
                    "no answer from the server within %.1f s: deciding from the allow-list",
                    self.config.server_auth_timeout_s,
                )
                self._set_server_answering(False)
                return None
            self._set_server_answering(True)
            return waiter.response, waiter.arrived_mono
        finally:
            with self._waiting_lock:
                self._waiting.pop(request.id, None)

    def _set_server_answering(self, answering: bool) -> None:
        if answering != self._server_answering:
            self._server_answering = answering
            self._on_reachability()

    # ------------------------------------------------------------------ incoming messages

    def first_time(self, message_id: str | None) -> bool:
        """False for an id seen recently: QoS 1 may deliver a message twice."""
        if message_id is None:
            return True
        if message_id in self._seen_ids:
            return False
        self._seen_ids.append(message_id)
        return True

    def _make_client(self, handlers: dict[Suffix, Callable[[bytes], None]]) -> mqtt.Client:
        address = dataclasses.replace(
            parse_mqtt_url(self.config.mqtt_url),
            username=self.config.device_id,
            password=self.config.password,
        )
        # A persistent session: acks and commands sent while the link was down still arrive.
        client = make_client(
            self.config.device_id, address, clean_session=False, ca_file=self.config.mqtt_ca_file
        )
        client.will_set(self._topic(Suffix.STATUS), compact(Status(v=1, online=False)), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_unexpected
        client.message_callback_add(self._topic(Suffix.AUTH_RESP), self._on_auth_resp)
        for suffix, handler in handlers.items():
            client.message_callback_add(self._topic(suffix), self._queued(suffix, handler))
        return client

    def _queued(self, suffix: Suffix, handler: Callable[[bytes], None]) -> mqtt.CallbackOnMessage:
        """A paho callback that hands the message to the main loop."""

        def callback(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            payload = bytes(message.payload)
            self._jobs.put(lambda: self._checked(suffix, handler, payload))

        return callback

    def _checked(self, suffix: Suffix, handler: Callable[[bytes], None], payload: bytes) -> None:
        try:
            handler(payload)
        except ProtocolError as exc:
            self.rejected[f"{suffix.value}:{exc.code}"] += 1
            log.warning("rejected a message on %s: %s", suffix.value, exc)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the connection: %s (check [device] id and password)", reason_code)
            return
        log.info("connected to %s", self.config.mqtt_url)
        _result, self._subscribe_mid = client.subscribe(
            [(self._topic(suffix), QOS[suffix]) for suffix in SERVER_TO_AGENT]
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.error("the broker refused some subscriptions (%s): check its ACL for this device", refused)
        self._ready.set()
        self._jobs.put(self._went_online)

    def _went_online(self) -> None:
        self._on_online()
        count = self._resend()
        if count:
            log.info("re-sent %d unacknowledged events after connecting", count)
            self._resend_delay = self._resend_min_s
            self._resend_at = self.clock.monotonic() + self._resend_delay

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        if was_ready and not self._stopping.is_set():
            log.warning("lost the broker (%s): deciding from the allow-list until it is back", reason_code)
            self._jobs.put(self._on_reachability)

    def _on_unexpected(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # amqtt re-sends retained messages of filters other clients subscribed to: not for us.
        log.debug("ignored a message on %s", message.topic)

    def _on_auth_resp(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Runs in paho's thread: the tap handler waits in the main loop for exactly this.
        try:
            response = decode_as(AuthResp, bytes(message.payload))
        except ProtocolError as exc:
            self.rejected[f"auth/resp:{exc.code}"] += 1
            log.warning("rejected an auth response: %s", exc)
            return
        arrived = self.clock.monotonic()
        with self._waiting_lock:
            waiter = self._waiting.get(response.req)
        if waiter is None:
            log.info("answer to request %s came too late or twice; ignored", response.req)
            return
        waiter.arrived_mono = arrived
        waiter.response = response
        waiter.event.set()

    def _handle_ack(self, payload: bytes) -> None:
        ack = decode_as(Ack, payload)
        removed = self.outbox.ack(ack.ids)
        log.debug("server stored %d events (%d were waiting here)", len(ack.ids), removed)
        self._set_server_answering(True)
        self._resend_delay = self._resend_min_s
        if not len(self.outbox):
            self._resend_at = None
            return
        # The server answers again: back to the shortest delay, but never later than planned. An
        # older event may have been lost (with a bridge that died holding it) while newer ones
        # are acked; putting the re-send off at every ack would keep it back while taps go on.
        due = self.clock.monotonic() + self._resend_delay
        self._resend_at = due if self._resend_at is None else min(self._resend_at, due)
