"""The fleet bench (bench/fleet.py): its raw telemetry sender (``RawPublisher``) speaks MQTT a
broker accepts: what it writes arrives at a subscriber whole and in order. The bench's "0 lost"
relies on it, and on the broker counting what it could not parse as lost, which this test cannot.
And its report: which figures are held to a target on which database."""

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


def _result(fleet: ModuleType, loaded_p99_ms: float, lost: int) -> object:
    """One bridge's figures: taps alone p99 30 ms, under the telemetry ``loaded_p99_ms``."""

    def taps(p99: float) -> object:
        latency = fleet.Summary(count=20_000, p50=15.0, p95=25.0, p99=p99, max=p99 + 10)
        return fleet.Throughput(10.0, 20_000, 2_000.0, 0, latency, {})

    telemetry = fleet.TelemetryRun(100_000, 100_000 - lost, 0, lost, 10.0, 5.0, 7.0, 0.3)
    return fleet.ConfigResult(1, telemetry, taps(30.0), taps(loaded_p99_ms), telemetry, 1_000, 1_000)


def _verdicts(out: str, figure: str) -> list[str]:
    """The verdict of every row of the report named ``figure``, in order."""
    found = []
    for line in out.splitlines():
        if line.strip().startswith(figure):
            found.append(next((v for v in ("(NOT MET)", "(met)", "NOT MET", "met") if line.endswith(v)), ""))
    return found


@pytest.mark.parametrize(
    ("database_url", "taps_p99"),
    [("postgresql+psycopg://postgres@127.0.0.1/x", ["met", "NOT MET"]), (None, ["(met)", "(NOT MET)"])],
)
def test_fleet_report_binds_postgresql_to_the_speed_targets_and_sqlite_only_to_losing_nothing(
    fleet: ModuleType, capsys: pytest.CaptureFixture[str], database_url: str | None, taps_p99: list[str]
) -> None:
    args = fleet.argparse.Namespace(
        devices=500, rate=10_000.0, duration=10.0, senders=2, sender="raw", database_url=database_url
    )
    echo = fleet.Summary(count=1_000, p50=0.5, p95=0.7, p99=0.8, max=1.0)
    fleet.report(args, "a database", echo, [_result(fleet, loaded_p99_ms=129.0, lost=3)])
    out = capsys.readouterr().out
    # The taps' p99, alone (30 ms) and under the telemetry (129 ms), against 60 ms: a speed target,
    # binding on PostgreSQL, shown in brackets on SQLite.
    assert _verdicts(out, "p50 / p99 (ms)") == taps_p99
    assert _verdicts(out, "decisions/s, 50 readers, alone") == [taps_p99[0]]
    # Losing telemetry or storing an event twice counts on both.
    assert _verdicts(out, "telemetry lost (offered - ingested)") == ["NOT MET"]
    assert _verdicts(out, "events stored exactly once") == ["met"]
    assert ("speed targets are for PostgreSQL" in out) is (database_url is None)
