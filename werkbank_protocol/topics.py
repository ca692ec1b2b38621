"""MQTT topics of protocol v1: ``werkbank/v1/dev/<device_id>/<suffix>``."""

from __future__ import annotations

import re
from enum import StrEnum

from werkbank_protocol.errors import ProtocolError

PREFIX = "werkbank/v1/dev"
DEVICE_ID_RE = re.compile(r"^[a-z0-9-]{3,40}$")
# MQTT 5 shared subscription group, so several bridges can split the device topics.
SHARE_GROUP = "werkbank"


class Suffix(StrEnum):
    STATUS = "status"
    AUTH_REQ = "auth/req"
    AUTH_RESP = "auth/resp"
    EVENT = "event"
    ACK = "ack"
    TELEMETRY = "telemetry"
    CMD = "cmd"
    ALLOWLIST = "allowlist"
    # Documented addition (docs/protocol.md): a tap injected into a simulated reader.
    SIM_TAP = "sim/tap"


# QoS and retain flag per topic, straight from the protocol table.
QOS: dict[Suffix, int] = {
    Suffix.STATUS: 1,
    Suffix.AUTH_REQ: 1,
    Suffix.AUTH_RESP: 1,
    Suffix.EVENT: 1,
    Suffix.ACK: 1,
    Suffix.TELEMETRY: 0,
    Suffix.CMD: 1,
    Suffix.ALLOWLIST: 1,
    Suffix.SIM_TAP: 1,
}
RETAINED = frozenset({Suffix.STATUS, Suffix.ALLOWLIST})

# What the agent publishes and what the server publishes.
AGENT_TO_SERVER = (Suffix.STATUS, Suffix.AUTH_REQ, Suffix.EVENT, Suffix.TELEMETRY)
SERVER_TO_AGENT = (Suffix.AUTH_RESP, Suffix.ACK, Suffix.CMD, Suffix.ALLOWLIST, Suffix.SIM_TAP)


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.match(device_id):
        raise ProtocolError(
            "bad_device_id", f"device id {device_id!r} must be 3-40 characters of a-z, 0-9 and '-'"
        )
    return device_id


def topic(device_id: str, suffix: Suffix) -> str:
    return f"{PREFIX}/{check_device_id(device_id)}/{suffix.value}"


def subscription(suffix: Suffix, shared: bool = False) -> str:
    """The wildcard filter for one suffix across all devices (optionally an MQTT 5 shared one)."""
    base = f"{PREFIX}/+/{suffix.value}"
    return f"$share/{SHARE_GROUP}/{base}" if shared else base


def parse_topic(name: str) -> tuple[str, Suffix]:
    """``(device_id, suffix)`` of a device topic, or ProtocolError."""
    if not name.startswith(PREFIX + "/"):
        raise ProtocolError("bad_topic", f"topic {name!r} is not under {PREFIX}/")
    rest = name[len(PREFIX) + 1 :]
    device_id, _, tail = rest.partition("/")
    check_device_id(device_id)
    try:
        return device_id, Suffix(tail)
    except ValueError as exc:
        raise ProtocolError("bad_topic", f"unknown topic suffix {tail!r}") from exc
