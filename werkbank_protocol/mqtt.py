"""paho-mqtt clients set up the way every Werkbank process needs them.

One place that parses ``MQTT_URL``, uses the v2 callback API and turns Nagle's
algorithm off (without TCP_NODELAY a tap waits ~40 ms on delayed ACKs, see
LIBRARY-FACTS.md).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> BrokerAddress:
    """``mqtt://user:pass@host:1883`` or ``mqtts://host:8883``; ValueError with a clear message."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
        raise ValueError(f"MQTT URL {url!r} must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"MQTT URL {url!r} has no host")
    tls = parts.scheme in ("mqtts", "ssl")
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError as exc:
        raise ValueError(f"MQTT URL {url!r} has a bad port") from exc
    return BrokerAddress(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # A websocket or TLS wrapper may not offer the option; the connection still works.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(
    client_id: str,
    address: BrokerAddress,
    clean_session: bool = False,
    ca_file: str | None = None,
) -> mqtt.Client:
    """A paho client (protocol 3.1.1, v2 callbacks, TCP_NODELAY, credentials and TLS from the address)."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    client.on_socket_open = _nodelay
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(ca_certs=ca_file, cert_reqs=ssl.CERT_REQUIRED)
    client.reconnect_delay_set(1, 30)
    # Hold more QoS 1 messages in flight than paho's default of 20: a busy bridge answers many taps at once.
    client.max_inflight_messages_set(200)
    return client
