"""A plain paho client for tests: publish anything, collect what arrives per topic."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt

from werkbank_protocol.mqtt import BrokerAddress, make_client, parse_mqtt_url


class Peer:
    def __init__(self, url: str, client_id: str | None = None) -> None:
        self.client_id = client_id or f"test-{uuid.uuid4().hex[:8]}"
        a = parse_mqtt_url(url)
        self.address = BrokerAddress(a.host, a.port, self.client_id, None)
        self.client = make_client(self.client_id, self.address, clean_session=True)
        self.inbox: dict[str, queue.Queue[bytes]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._subacks: dict[int, threading.Event] = {}
        self.client.on_connect = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(self.address.host, self.address.port)
        self.client.loop_start()
        assert self._ready.wait(5), "test peer could not connect to the broker"

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.inbox.setdefault(msg.topic, queue.Queue()).put(msg.payload)

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, *_: Any) -> None:
        self._subacks.setdefault(mid, threading.Event()).set()

    def subscribe(self, topic: str, qos: int = 1) -> None:
        _rc, mid = self.client.subscribe(topic, qos)
        event = self._subacks.setdefault(mid, threading.Event())
        assert event.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)

    def queue_for(self, topic: str) -> queue.Queue[bytes]:
        with self._lock:
            return self.inbox.setdefault(topic, queue.Queue())

    def next(self, topic: str, timeout: float = 5.0) -> bytes:
        return self.queue_for(topic).get(timeout=timeout)

    def drain(self, topic: str) -> list[bytes]:
        q = self.queue_for(topic)
        out = []
        while not q.empty():
            out.append(q.get_nowait())
        return out

    def close(self) -> None:
        # disconnect first: it wakes the network thread, so loop_stop need not wait out select()
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def device_peer(url: str, devices: Sequence[str] = (), suffixes: Sequence[str] = ()) -> Iterator[Peer]:
    """A peer that plays the devices: subscribed to each of ``suffixes`` (``"auth/resp"``, ``"ack"``,
    …) under each of ``devices``' topic prefixes before it is handed out, closed afterwards."""
    peer = Peer(url)
    try:
        for suffix in suffixes:
            for prefix in devices:
                peer.subscribe(f"{prefix}/{suffix}")
        yield peer
    finally:
        peer.close()
