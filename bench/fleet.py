"""Fleet bench: one bridge, a private Mosquitto and a real database, with many devices at once.

Phases, in one run (reusing bench/tap_latency.py's lab, broker, farm and measurements):

1. MQTT echo baseline (sequential QoS 1 round trips).
2. Telemetry flood: ``--devices`` device ids (≥ 500) send telemetry from a separate process as
   fast as it can for ``--duration`` seconds; the bridge's ingested count is compared to what
   was sent (messages/s ingested, lost).
3. Taps under telemetry: 50 readers keep one tap each in flight for ``--duration`` seconds while
   every device sends telemetry at 1 Hz (decisions/s, p50/p99).
4. Events: every device sends ``--events`` fault events, each twice; each must be stored once.

Prints each figure with its target (met / not met). Not done yet: a second bridge with
``MQTT_SHARED_SUBSCRIPTIONS`` (docs/performance.md).

    python bench/fleet.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import secrets
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt
from sqlalchemy import func, select
from tap_latency import (
    CpuMeter,
    DeviceFarm,
    LoadStats,
    SimDevice,
    Summary,
    badge_picker,
    make_lab,
    measure_echo,
    measure_throughput,
    private_database,
    seed,
    wait_for_allowlists,
)

from server.adapters.bridge import Bridge, wait_until
from server.broker import MosquittoProcess
from server.db import Database
from server.models import StoredEvent
from werkbank_protocol import now_ts
from werkbank_protocol.messages import MAX_ALLOWLIST_PAYLOAD
from werkbank_protocol.mqtt import make_client, parse_mqtt_url
from werkbank_protocol.topics import Suffix, topic

TARGET_TELEMETRY_RATE = 10_000.0
TARGET_P99_LOAD_MS = 60.0
TARGET_DECISION_RATE = 1_500.0


def _telemetry_sender(url: str, device_ids: list[str], rate_hz: float, seconds: float, sent: object) -> None:
    """In a process of its own: telemetry for every device, ``rate_hz`` each (0: flat out)."""
    address = parse_mqtt_url(url)
    client = make_client(f"fleet-telemetry-{os.getpid()}", address, clean_session=True)
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    topics = [topic(d, Suffix.TELEMETRY) for d in device_ids]
    count = 0
    end = time.monotonic() + seconds
    tick = 1.0 / rate_hz if rate_hz else 0.0
    next_round = time.monotonic()
    while time.monotonic() < end:
        ts = now_ts()
        payload = f'{{"v":1,"ts":"{ts}","running":true,"power_w":{count % 500}.5}}'.encode()
        for t in topics:
            client.publish(t, payload, qos=0)
            count += 1
        if tick:
            next_round += tick
            time.sleep(max(0.0, next_round - time.monotonic()))
    client.loop_stop()
    client.disconnect()
    sent.value = count  # type: ignore[attr-defined]


def _send_telemetry(
    url: str, device_ids: list[str], rate_hz: float, seconds: float
) -> tuple[multiprocessing.Process, object]:
    sent = multiprocessing.Value("q", 0)
    proc = multiprocessing.Process(target=_telemetry_sender, args=(url, device_ids, rate_hz, seconds, sent))
    proc.start()
    return proc, sent


def _events(url: str, device_ids: list[str], per_device: int) -> set[str]:
    """Fault events from every device, each sent twice (a QoS 1 retry); their ids."""
    address = parse_mqtt_url(url)
    client = make_client(f"fleet-events-{secrets.token_hex(3)}", address, clean_session=True)
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    ids: set[str] = set()
    infos: list[mqtt.MQTTMessageInfo] = []
    for device_id in device_ids:
        for _ in range(per_device):
            eid = str(uuid.uuid4())
            ids.add(eid)
            body = f'{{"v":1,"id":"{eid}","ts":"{now_ts()}","type":"fault","code":"bench"}}'.encode()
            for _copy in range(2):
                infos.append(client.publish(topic(device_id, Suffix.EVENT), body, qos=1))
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    return ids


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def run(args: argparse.Namespace) -> int:
    lab = make_lab(args.people, args.devices)
    broker = MosquittoProcess()
    database = Database()
    bridge: Bridge | None = None
    farm: DeviceFarm | None = None
    broker.start()
    try:
        address = parse_mqtt_url(broker.url)
        with private_database(args.database_url) as (url, label):
            try:
                seed(url, lab)
                print(f"seeded {args.devices} devices ({label}); load average {os.getloadavg()}", flush=True)
                echo, _lost = measure_echo(address, 1000, 5.0)
                echo_s = Summary.of(echo)
                database.init(url)
                bridge = Bridge(
                    database,
                    broker.url,
                    client_id=f"fleet-bridge-{secrets.token_hex(3)}",
                    message_limit=MAX_ALLOWLIST_PAYLOAD,
                ).start()  # on the wall clock, like the devices' telemetry (the tap mix follows the hour)
                # The first allow-lists of every machine are written before any load starts.
                print(f"allow-lists published in {wait_for_allowlists(database, 300):.1f} s", flush=True)

                # 2. telemetry flat out
                meter = CpuMeter()
                before = bridge.handled["telemetry"]
                proc, sent = _send_telemetry(broker.url, lab.device_ids, 0.0, args.duration)
                proc.join()
                total = sent.value  # type: ignore[attr-defined]
                wait_until(lambda: bridge is not None and bridge.handled["telemetry"] - before >= total, 15)
                ingested = bridge.handled["telemetry"] - before
                cpu = meter.stop()
                rate = ingested / args.duration
                print(f"telemetry: sent {total}, ingested {ingested} ({rate:,.0f}/s); cpu {cpu}", flush=True)

                # 3. taps from 50 readers while all devices send telemetry at 1 Hz
                stats = LoadStats()
                readers = [
                    SimDevice(address, d, badge_picker(lab, 1000 + k), stats)
                    for k, d in enumerate(lab.device_ids[:50])
                ]
                farm = DeviceFarm(address, readers).start()
                proc, sent = _send_telemetry(broker.url, lab.device_ids, 1.0, args.duration + 2)
                load = measure_throughput(farm, stats, args.duration, 5.0)
                proc.join()

                # 4. events exactly once
                ids = _events(broker.url, lab.device_ids, args.events)
                with database.session() as s:

                    def stored() -> int:
                        return (
                            s.scalar(
                                select(func.count()).select_from(StoredEvent).where(StoredEvent.id.in_(ids))
                            )
                            or 0
                        )

                    wait_until(lambda: stored() >= len(ids), 30)
                    events_stored = stored()
            finally:
                if farm is not None:
                    farm.stop()
                if bridge is not None:
                    bridge.stop()
                database.dispose()
    finally:
        broker.stop()

    lost_telemetry = total - ingested
    print()
    print(
        f"Werkbank fleet bench: {args.devices} devices, one bridge, {label}; load average {os.getloadavg()}"
    )
    print(f"echo p50 {echo_s.p50:.3f} ms")
    rows = [
        (
            "telemetry ingested (msgs/s)",
            f"{rate:,.0f}",
            f">= {TARGET_TELEMETRY_RATE:,.0f}",
            rate >= TARGET_TELEMETRY_RATE,
        ),
        ("telemetry lost", f"{lost_telemetry}", "0", lost_telemetry == 0),
        (
            "decisions/s, 50 readers",
            f"{load.rate:,.0f}",
            f">= {TARGET_DECISION_RATE:,.0f}",
            load.rate >= TARGET_DECISION_RATE,
        ),
        ("decision p50 under load (ms)", f"{load.latency.p50:.2f}", "-", True),
        (
            "decision p99 under load (ms)",
            f"{load.latency.p99:.2f}",
            f"<= {TARGET_P99_LOAD_MS:.0f}",
            load.latency.p99 <= TARGET_P99_LOAD_MS,
        ),
        ("taps lost", f"{load.lost}", "0", load.lost == 0),
        ("events stored once", f"{events_stored}", f"{len(ids)}", events_stored == len(ids)),
    ]
    for name, value, target, ok in rows:
        print(f"{name:30} {value:>10}  {target:>10}  {_met(ok)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server (default: SQLite)")
    parser.add_argument("--devices", type=int, default=500)
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--events", type=int, default=2, help="fault events per device, each sent twice")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
