"""The bridge's telemetry buffer and window (server.services.telemetry), without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from server.services import telemetry
from werkbank_protocol import ProtocolError, format_ts

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


def _payload(seconds: float, **fields: object) -> bytes:
    return json.dumps({"v": 1, "ts": format_ts(T0 + timedelta(seconds=seconds)), **fields}).encode()


def test_buffer_is_bounded_and_counts_what_it_drops() -> None:
    buffer = telemetry.Buffer(limit=3)
    assert [buffer.add("pi-a", _payload(i, running=True), 0.0, False) for i in range(5)] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert (buffer.received, buffer.dropped, len(buffer)) == (3, 2, 3)
    assert sum(len(v) for v in buffer.take().values()) == 3
    assert len(buffer) == 0 and buffer.first_at is None
    assert buffer.add("pi-a", _payload(9, running=True), 0.0, False)  # room again


def test_take_device_gives_only_that_devices_messages_up_to_the_mark() -> None:
    buffer = telemetry.Buffer()
    buffer.add("pi-a", _payload(0, running=True), 0.0, False)
    buffer.add("pi-b", _payload(0, running=True), 0.0, False)
    mark = buffer.mark()  # an event of pi-a arrives here
    buffer.add("pi-a", _payload(1, running=False), 0.0, False)
    taken = buffer.take_device("pi-a", mark)
    assert list(taken) == ["pi-a"] and [r.seq for r in taken["pi-a"]] == [1]
    rest = buffer.take()
    assert {k: [r.seq for r in v] for k, v in rest.items()} == {"pi-a": [3], "pi-b": [2]}
    assert buffer.take_device("pi-a", mark) == {}


def test_coalesce_keeps_the_newest_state_counts_every_message_and_meters_every_reading() -> None:
    buffer = telemetry.Buffer()
    for i in range(10):  # 600 W for 10 s: counter grows 1/6 Wh a second
        buffer.add("pi-a", _payload(i, running=True, power_w=600.0, energy_wh=100 + i / 6), 0.0, False)
    buffer.add("pi-a", _payload(3, running=False, power_w=1.0), 0.0, False)  # late: sent earlier
    buffer.add("pi-a", b"{garbled", 0.0, False)
    refused: list[tuple[str, ProtocolError]] = []
    latest = telemetry.coalesce(buffer.take(), lambda d, e: refused.append((d, e)))
    held = latest["pi-a"]
    assert held.telemetry.running is True and held.sent == T0 + timedelta(seconds=9)
    assert held.messages == 11  # the late one counts as taken in; the garbled one is refused
    assert [d for d, _e in refused] == ["pi-a"]
    assert held.energy is not None and abs(held.energy.wh - 1.5) < 1e-9  # 9 s at 600 W


def test_a_state_put_off_goes_on_with_the_next_window_as_one() -> None:
    """A window that could not write a device (its rows were locked) hands its state to the
    next: the meter and the message count go on as if both had been one window."""
    first, second = telemetry.Buffer(), telemetry.Buffer()
    for i in range(10):
        buffer = first if i < 5 else second
        buffer.add("pi-a", _payload(i, running=True, power_w=600.0, energy_wh=100 + i / 6), 0.0, False)
    second.add("pi-b", _payload(9, running=False), 0.0, False)
    carried = telemetry.coalesce(first.take(), lambda d, e: None)
    latest = telemetry.coalesce(second.take(), lambda d, e: None, carried)
    held = latest["pi-a"]
    assert held.messages == 10 and held.sent == T0 + timedelta(seconds=9)
    assert held.energy is not None and abs(held.energy.wh - 1.5) < 1e-9  # 9 s at 600 W: one meter
    assert set(latest) == {"pi-a", "pi-b"}
    # A state put off with nothing new of its device is written as it is.
    assert telemetry.coalesce({}, lambda d, e: None, {"pi-a": held}) == {"pi-a": held}


def test_the_bridges_metrics_say_what_the_buffer_took_dropped_and_holds() -> None:
    from server.adapters.bridge import Bridge
    from server.db import Database
    from server.metrics import BridgeMetrics

    database = Database()
    database.init("sqlite://")
    # A real bridge, never started (the collector reads its counters, not the broker).
    bridge = Bridge(database, "mqtt://127.0.0.1:1")
    bridge.telemetry = telemetry.Buffer(limit=2)
    bridge.telemetry_deferred = 4
    for i in range(3):
        bridge.telemetry.add("pi-a", _payload(i, running=True), 0.0, False)
    metrics = BridgeMetrics()
    metrics.watch(bridge)
    sample = metrics.registry.get_sample_value
    assert sample("werkbank_telemetry_received_total") == 2.0
    assert sample("werkbank_telemetry_dropped_total", {"reason": "busy"}) == 1.0
    assert sample("werkbank_telemetry_waiting") == 2.0
    assert sample("werkbank_telemetry_deferred_total") == 4.0
    database.dispose()
