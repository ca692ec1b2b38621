"""The fleet bench's raw telemetry sender (bench/fleet.py, ``RawPublisher``) speaks MQTT a broker
accepts: what it writes arrives at a subscriber whole and in order. The bench's "0 lost" relies on
it, and on the broker counting what it could not parse as lost, which this test cannot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.mqtt_peer import Peer
from werkbank_protocol.mqtt import parse_mqtt_url

BENCH = Path(__file__).resolve().parents[2] / "bench" / "fleet.py"


@pytest.fixture(scope="module")
def fleet() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fleet_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_bench"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("n", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (16_384, b"\x80\x80\x01")],
)
def test_fleet_sender_encodes_mqtt_lengths(fleet: ModuleType, n: int, encoded: bytes) -> None:
    assert fleet._remaining_length(n) == encoded


def test_fleet_sender_packets_reach_a_subscriber_whole_and_in_order(fleet: ModuleType, mqtt_url: str) -> None:
    peer = Peer(mqtt_url)
    try:
        peer.subscribe("werkbank/v1/dev/+/telemetry", qos=0)
        sender = fleet.RawPublisher(parse_mqtt_url(mqtt_url), "fleet-sender-test")
        # Short, two-byte and three-byte remaining lengths, to two topics, many in one write.
        payloads = [b"{}", b"x" * 300, b"y" * 20_000] + [f'{{"n":{k}}}'.encode() for k in range(200)]
        topics = ["werkbank/v1/dev/pi-a/telemetry", "werkbank/v1/dev/pi-b/telemetry"]
        packets = [
            fleet.RawPublisher.packet(fleet.RawPublisher.prefix(topics[k % 2]), p)
            for k, p in enumerate(payloads)
        ]
        sender.send(packets)
        sender.close()
        for k, t in enumerate(topics):
            got = [peer.next(t) for _ in payloads[k::2]]
            assert got == payloads[k::2]
    finally:
        peer.close()
