"""The bridge takes the health figures of a device's `status` (docs/protocol.md) over a real broker:
stores them, accepts statuses of older agents without them, and refuses a status whose figures
are negative or absurd (counted, logged, nothing changed)."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from server.adapters.bridge import Bridge, wait_until
from server.db import Database
from server.models import Device
from tests.conftest import Clock
from tests.mqtt_peer import Peer, device_peer
from werkbank_protocol import format_ts
from werkbank_protocol.messages import MAX_HEALTH_AGE_S, MAX_OUTBOX_DEPTH

PRINTER = "werkbank/v1/dev/pi-printer-1"


@pytest.fixture
def bridge(lab: Database, mqtt_url: str, clock: Clock) -> Iterator[Bridge]:
    running = Bridge(lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock).start()
    assert running.connected.is_set()
    yield running
    running.stop()


@pytest.fixture
def device(mqtt_url: str) -> Iterator[Peer]:
    with device_peer(mqtt_url) as peer:
        yield peer


def _status(ts: datetime, **fields: Any) -> bytes:
    body = {
        "v": 1,
        "online": True,
        "state": "locked",
        "machine": "printer-1",
        "fw": "1.0",
        "ts": format_ts(ts),
    }
    return json.dumps({**body, **fields}).encode()


def _health(db: Database) -> tuple[Any, ...]:
    with db.session() as s:
        row = s.get(Device, "pi-printer-1")
        assert row is not None
        return (row.state, row.outbox_depth, row.outbox_oldest_s, row.allowlist_age_s, row.health_reported_at)


def _handled(bridge: Bridge, count: int) -> bool:
    return wait_until(lambda: bridge.handled["status"] + sum(bridge.rejected.values()) >= count)


def test_device_health_stored_from_a_live_status(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    device.publish(
        f"{PRINTER}/status",
        _status(
            clock(), outbox_depth=12, outbox_oldest_s=640.5, allowlist_age_s=90_000.0, allowlist_version=4
        ),
    )
    assert _handled(bridge, 1)
    assert _health(lab) == ("locked", 12, 640.5, 90_000.0, clock())
    # Drained: an empty outbox has no oldest event.
    clock.advance(minutes=1)
    device.publish(f"{PRINTER}/status", _status(clock(), outbox_depth=0, allowlist_age_s=60.0))
    assert _handled(bridge, 2)
    assert _health(lab) == ("locked", 0, None, 60.0, clock())


def test_device_health_absent_from_an_older_agents_status(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    device.publish(f"{PRINTER}/status", _status(clock(), outbox_depth=3, outbox_oldest_s=5.0))
    assert _handled(bridge, 1)
    device.publish(f"{PRINTER}/status", _status(clock(), state="unlocked"))  # an agent before 0016
    assert _handled(bridge, 2)
    assert bridge.rejected == {}
    assert _health(lab) == ("unlocked", None, None, None, None)


def test_device_health_not_taken_from_a_retained_status(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    # What the broker kept from before the bridge (re)subscribed says nothing about now.
    other = Bridge(lab, bridge.address.url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock)
    device.publish(f"{PRINTER}/status", _status(clock(), outbox_depth=7, outbox_oldest_s=900.0), retain=True)
    assert _handled(bridge, 1)
    with lab.session() as s:
        row = s.get(Device, "pi-printer-1")
        assert row is not None
        row.outbox_depth = row.outbox_oldest_s = row.health_reported_at = None
    other.start()
    try:
        assert wait_until(lambda: other.handled["status"] >= 1)
        assert _health(lab)[1:] == (None, None, None, None)
    finally:
        other.stop()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("outbox_depth", -1),
        ("outbox_depth", MAX_OUTBOX_DEPTH + 1),
        ("outbox_depth", 2.5),
        ("outbox_oldest_s", -0.5),
        ("outbox_oldest_s", 1.7e9),  # an epoch time sent as an age
        ("allowlist_age_s", -3600.0),
        ("allowlist_age_s", MAX_HEALTH_AGE_S * 2),
        ("allowlist_age_s", 1e400),  # JSON's way to say infinity
        ("outbox_oldest_s", "600"),
    ],
)
def test_device_health_bad_figures_refuse_the_status(
    bridge: Bridge,
    device: Peer,
    lab: Database,
    clock: Clock,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: Any,
) -> None:
    device.publish(
        f"{PRINTER}/status", _status(clock(), outbox_depth=1, outbox_oldest_s=2.0, allowlist_age_s=3.0)
    )
    assert _handled(bridge, 1)
    before = _health(lab)
    clock.advance(minutes=1)
    caplog.set_level(logging.WARNING, logger="server.adapters.bridge")
    payload = _status(clock(), state="unlocked", **{field: value}).replace(b"Infinity", b"1e400")
    device.publish(f"{PRINTER}/status", payload)
    assert wait_until(lambda: bridge.rejected["invalid"] == 1), dict(bridge.rejected)
    assert _health(lab) == before  # nothing changed: not the figures, not the state
    assert f"$.{field}" in caplog.text and f"{PRINTER}/status" in caplog.text
    metrics = bridge.metrics.registry.get_sample_value(
        "werkbank_messages_rejected_total", {"reason": "invalid"}
    )
    assert metrics == 1.0
