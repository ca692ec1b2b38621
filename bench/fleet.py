"""Fleet bench: many devices, a private Mosquitto, a real database, one bridge and then two.

Each bridge is a real ``werkbank bridge`` process (as deployed), its counters read from its
Prometheus metrics; the devices are simulated in this process (the readers) and in
``--senders`` processes of their own (the telemetry). One run:

0. MQTT echo baseline (sequential QoS 1 round trips), for scale.

Then for one bridge, and again for two bridges with ``MQTT_SHARED_SUBSCRIPTIONS=true``:

1. Telemetry at a fixed rate: ``--rate`` messages/s in all (``--devices`` devices, each at
   rate/devices Hz, with a growing energy counter) for ``--duration`` s. Offered is what the
   senders handed to the broker; ingested is what the bridges counted into the live state
   (``werkbank_messages_handled{kind="telemetry"}``); lost = offered - ingested, exactly, and
   where it went: dropped by the broker (``$SYS/broker/publish/messages/dropped``), by a
   bridge (``werkbank_telemetry_dropped``), or neither. CPU per message: the bridges' own CPU,
   and the whole machine's, divided by the messages ingested.
2. Taps: 50 readers keep one tap each in flight for ``--duration`` s, first alone, then while
   the telemetry of phase 1 flows (decisions/s, p50/p99, lost).
3. Events: every device sends ``--events`` fault events, each twice (a QoS 1 retry); each
   must be stored exactly once.

Prints every figure with its target (met / not met) and the load average.

    python bench/fleet.py [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from tap_latency import (
    DeviceFarm,
    LoadStats,
    SimDevice,
    Summary,
    Throughput,
    badge_picker,
    make_lab,
    measure_echo,
    measure_throughput,
    private_database,
    seed,
    wait_for_allowlists,
)

from server.adapters.bridge import wait_until
from server.broker import MosquittoProcess, free_port
from server.db import Database
from server.models import StoredEvent
from werkbank_protocol import now_ts
from werkbank_protocol.mqtt import BrokerAddress, make_client, parse_mqtt_url
from werkbank_protocol.topics import Suffix, topic

ROOT = Path(__file__).resolve().parent.parent
TARGET_TELEMETRY_RATE = 10_000.0
TARGET_P99_LOAD_MS = 60.0
TARGET_DECISION_RATE = 1_500.0
READERS = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- telemetry senders ------------------------------------------------------------------------
def _remaining_length(n: int) -> bytes:
    """MQTT's variable-length integer (3.1.1, 2.2.3)."""
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


class RawPublisher:
    """A bare MQTT 3.1.1 client that only publishes at QoS 0: CONNECT, then PUBLISH packets
    written many to a ``sendall``, then DISCONNECT.

    Why not paho here: the devices' telemetry costs the Pis, not the server, but this bench
    makes it on the server's own two cores. paho spends about 20 us of CPU per message on
    building and queueing a packet; this writer about a tenth of that, so what the bench measures
    is the bridge and the broker, not its own load generator (``--sender paho`` keeps the old
    way, for comparison: docs/performance.md, "The fleet bench's senders"). The broker sees the
    same packets either way."""

    def __init__(self, address: BrokerAddress, client_id: str) -> None:
        if address.tls:
            raise ValueError("the raw sender speaks plain MQTT only; use --sender paho for mqtts")
        flags = 0x02  # clean session
        payload = _mqtt_string(client_id)
        if address.username:
            flags |= 0x80
            payload += _mqtt_string(address.username)
            if address.password is not None:
                flags |= 0x40
                payload += _mqtt_string(address.password)
        # Protocol name, level 4 (3.1.1), flags, keep-alive 0 (none: this client sends steadily).
        variable = _mqtt_string("MQTT") + bytes([4, flags]) + (0).to_bytes(2, "big")
        body = variable + payload
        self.sock = socket.create_connection((address.host, address.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        connack = self.sock.recv(4)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise ConnectionError(f"the broker refused the connection: {connack!r}")

    @staticmethod
    def prefix(topic_name: str) -> bytes:
        """The topic's part of a PUBLISH packet, made once per topic."""
        return _mqtt_string(topic_name)

    @staticmethod
    def packet(prefix: bytes, payload: bytes) -> bytes:
        """One QoS 0 PUBLISH (no packet id at QoS 0)."""
        return b"\x30" + _remaining_length(len(prefix) + len(payload)) + prefix + payload

    def send(self, packets: list[bytes]) -> None:
        self.sock.sendall(b"".join(packets))

    def close(self) -> None:
        """DISCONNECT, then close: the broker handles every packet before it."""
        with contextlib.suppress(OSError):
            self.sock.sendall(b"\xe0\x00")
            self.sock.shutdown(socket.SHUT_WR)
            self.sock.recv(1)  # the broker closes its side after the DISCONNECT
        self.sock.close()


def _telemetry_payload(ts: str, power: float, energy: float) -> bytes:
    return f'{{"v":1,"ts":"{ts}","running":true,"power_w":{power:.1f},"energy_wh":{energy:.3f}}}'.encode()


def _round_sender(
    kind: str, address: BrokerAddress, client_id: str, topics: list[str]
) -> tuple[Callable[[list[bytes]], int], Callable[[], None]]:
    """How a sender process publishes one round (a payload per topic, in order; the count handed
    over comes back) and how it finishes: "raw" (RawPublisher, one write a round) or "paho"."""
    if kind == "raw":
        raw = RawPublisher(address, client_id)
        prefixes = [RawPublisher.prefix(t) for t in topics]

        def send_raw(payloads: list[bytes]) -> int:
            raw.send([RawPublisher.packet(p, b) for p, b in zip(prefixes, payloads, strict=True)])
            return len(payloads)

        return send_raw, raw.close
    client = make_client(client_id, address, clean_session=True)
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port, keepalive=30)
    client.loop_start()
    last: list[mqtt.MQTTMessageInfo] = []

    def send_paho(payloads: list[bytes]) -> int:
        infos = [client.publish(t, b, qos=0) for t, b in zip(topics, payloads, strict=True)]
        last[:] = infos[-1:]
        return sum(info.rc == mqtt.MQTT_ERR_SUCCESS for info in infos)

    def close_paho() -> None:
        for info in last:  # written out to the socket before the count is told
            info.wait_for_publish(30)
        client.loop_stop()
        client.disconnect()

    return send_paho, close_paho


def _telemetry_sender(
    url: str, device_ids: list[str], hz: float, seconds: float, start_at: float, sent: Any, kind: str
) -> None:
    """In a process of its own: one telemetry per device every 1/hz s, for ``seconds``.

    Each device's power varies and its energy counter grows, so the bridge's meter works as
    for a real plug. ``sent`` gets the number of messages handed to the broker (written out
    to the socket: the last publish is waited for). ``kind`` as for ``_round_sender``."""
    topics = [topic(d, Suffix.TELEMETRY) for d in device_ids]
    send, finish = _round_sender(kind, parse_mqtt_url(url), f"fleet-telemetry-{os.getpid()}", topics)
    counters = [1000.0 * k for k in range(len(device_ids))]
    count = 0
    tick = 1.0 / hz
    time.sleep(max(0.0, start_at - time.time()))
    start = time.monotonic()
    # A round count, not a deadline: summing ticks in floats gave one round too many now and then.
    for n in range(round(seconds * hz)):
        ts = now_ts()
        payloads: list[bytes] = []
        for k in range(len(topics)):
            power = 100.0 + ((count + k) % 400)
            counters[k] += power * tick / 3600
            payloads.append(_telemetry_payload(ts, power, counters[k]))
        count += send(payloads)
        time.sleep(max(0.0, start + (n + 1) * tick - time.monotonic()))
    finish()
    sent.value = count


@dataclass
class Senders:
    procs: list[multiprocessing.Process]
    counts: list[Any]

    def join(self) -> int:
        for proc in self.procs:
            proc.join()
        return sum(c.value for c in self.counts)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]


def send_telemetry(
    url: str, device_ids: list[str], rate: float, seconds: float, processes: int, kind: str
) -> Senders:
    """``rate`` telemetry messages/s in all from ``processes`` processes, the devices split
    between them; ``kind`` as for ``_telemetry_sender``."""
    hz = rate / len(device_ids)
    start_at = time.time() + 0.5  # all senders start together
    procs, counts = [], []
    for k in range(processes):
        count = multiprocessing.Value("q", 0)
        proc = multiprocessing.Process(
            target=_telemetry_sender, args=(url, device_ids[k::processes], hz, seconds, start_at, count, kind)
        )
        proc.start()
        procs.append(proc)
        counts.append(count)
    return Senders(procs, counts)


# -- the bridges, as processes -----------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far (Linux /proc; its children not counted)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(child) for child in f.read().split()]
    except (OSError, ValueError):
        return []


def machine_busy_seconds() -> float:
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK


class BridgeProcess:
    """``werkbank bridge`` in a process of its own, read through its metrics endpoint."""

    def __init__(self, database_url: str, mqtt_url: str, name: str, shared: bool, var_dir: str) -> None:
        self.name = name
        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "MQTT_URL": mqtt_url,
            "MQTT_CLIENT_ID": name,
            "MQTT_SHARED_SUBSCRIPTIONS": "true" if shared else "false",
            "WERKBANK_BRIDGE_METRICS_PORT": str(self.port),
            "WERKBANK_LOG_LEVEL": "WARNING",
            "WERKBANK_VAR_DIR": var_dir,
            "SECRET_KEY": "fleet-bench",
        }
        self.log = Path(var_dir) / f"{name}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "server", "bridge"], cwd=ROOT, env=env, stdout=out, stderr=out
            )

    def metrics(self) -> dict[str, dict[str, float]]:
        """Every metric family's samples, by name and then by label value ('' without labels)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        found: dict[str, dict[str, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                label = next(iter(sample.labels.values()), "")
                found.setdefault(sample.name, {})[label] = sample.value
        return found

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}:\n{self.log.read_text()[-3000:]}")
            try:
                if self.metrics().get("werkbank_bridge_connected", {}).get("") == 1.0:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not connect within {timeout:.0f} s; see {self.log}")

    def cpu(self) -> float:
        """The bridge's CPU: on PostgreSQL ``werkbank bridge`` is two processes (its ingest
        half is a child: server/adapters/bridge_processes.py), both counted."""
        return cpu_seconds(self.proc.pid) + sum(cpu_seconds(child) for child in children(self.proc.pid))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _value(m: dict[str, dict[str, float]], name: str, label: str = "") -> float:
    return m.get(name, {}).get(label, 0.0)


def _total(m: dict[str, dict[str, float]], name: str) -> float:
    return sum(m.get(name, {}).values())


class Fleet:
    """The bridges of one configuration, summed."""

    def __init__(self, bridges: list[BridgeProcess]) -> None:
        self.bridges = bridges

    def ingested(self) -> int:
        return int(
            sum(_value(b.metrics(), "werkbank_messages_handled_total", "telemetry") for b in self.bridges)
        )

    def dropped(self) -> int:
        return int(sum(_total(b.metrics(), "werkbank_telemetry_dropped_total") for b in self.bridges))

    def rejected(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for b in self.bridges:
            for reason, n in b.metrics().get("werkbank_messages_rejected_total", {}).items():
                out[reason] = out.get(reason, 0) + int(n)
        return out

    def cpu(self) -> float:
        return sum(b.cpu() for b in self.bridges)


# -- the broker's own counters ----------------------------------------------------------------
class BrokerStats:
    """Mosquitto's $SYS counters (published every second by the bench's broker)."""

    def __init__(self, address: BrokerAddress) -> None:
        self.values: dict[str, float] = {}
        self.lock = threading.Lock()
        self.client = make_client(f"fleet-sys-{secrets.token_hex(3)}", address, clean_session=True)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_a: c.subscribe("$SYS/broker/publish/messages/dropped", 0)
        self.client.connect(address.host, address.port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            with self.lock:
                self.values[msg.topic] = float(msg.payload)
        except ValueError:
            pass

    def dropped(self) -> int:
        time.sleep(1.2)  # the next $SYS round
        with self.lock:
            return int(self.values.get("$SYS/broker/publish/messages/dropped", 0.0))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- phases -----------------------------------------------------------------------------------
@dataclass
class TelemetryRun:
    offered: int
    ingested: int
    broker_dropped: int
    bridge_dropped: int
    seconds: float
    bridge_cpu_s: float
    machine_cpu_s: float
    sender_cpu_s: float

    @property
    def lost(self) -> int:
        return self.offered - self.ingested

    @property
    def rate(self) -> float:
        return self.ingested / self.seconds


def measure_telemetry(
    fleet: Fleet,
    broker: BrokerStats,
    url: str,
    device_ids: list[str],
    rate: float,
    seconds: float,
    senders: int,
    kind: str,
) -> TelemetryRun:
    before, dropped0, broker0 = fleet.ingested(), fleet.dropped(), broker.dropped()
    cpu0, busy0 = fleet.cpu(), machine_busy_seconds()
    run = send_telemetry(url, device_ids, rate, seconds, senders, kind)
    pids = run.pids()
    sender_cpu = 0.0
    # Sample the senders' CPU just before they exit.
    while any(p.is_alive() for p in run.procs):
        sender_cpu = max(sender_cpu, sum(cpu_seconds(p) for p in pids))
        time.sleep(0.1)
    offered = run.join()
    # Wait until the bridges have written what they hold (a window is 1 s).
    last, stable_since = -1, time.monotonic()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        got = fleet.ingested() - before
        if got >= offered:
            break
        if got != last:
            last, stable_since = got, time.monotonic()
        elif time.monotonic() - stable_since > 3.0:
            break
        time.sleep(0.2)
    ingested = fleet.ingested() - before
    return TelemetryRun(
        offered=offered,
        ingested=ingested,
        broker_dropped=broker.dropped() - broker0,
        bridge_dropped=fleet.dropped() - dropped0,
        seconds=seconds,
        bridge_cpu_s=fleet.cpu() - cpu0,
        machine_cpu_s=machine_busy_seconds() - busy0,
        sender_cpu_s=sender_cpu,
    )


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
            # A code of its own: a fault repeating a code within minutes is counted onto the
            # stored one (server.services.device_claims.count_repeat), not stored again.
            body = (
                f'{{"v":1,"id":"{eid}","ts":"{now_ts()}","type":"fault","code":"bench-{eid[:8]}"}}'
            ).encode()
            for _copy in range(2):
                infos.append(client.publish(topic(device_id, Suffix.EVENT), body, qos=1))
    for info in infos:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    return ids


def measure_events(database: Database, url: str, device_ids: list[str], per_device: int) -> tuple[int, int]:
    ids = _events(url, device_ids, per_device)
    with database.session() as s:

        def stored() -> int:
            return s.scalar(select(func.count()).select_from(StoredEvent).where(StoredEvent.id.in_(ids))) or 0

        wait_until(lambda: stored() >= len(ids), 30)
        return stored(), len(ids)


@dataclass
class ConfigResult:
    bridges: int
    telemetry: TelemetryRun
    taps_alone: Throughput
    taps_loaded: Throughput
    telemetry_loaded: TelemetryRun
    events_stored: int
    events_sent: int
    rejected: dict[str, int] = field(default_factory=dict)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)


def run_config(
    args: argparse.Namespace,
    n_bridges: int,
    url: str,
    broker_url: str,
    broker: BrokerStats,
    database: Database,
    lab: Any,
    var_dir: str,
) -> ConfigResult:
    shared = n_bridges > 1
    bridges = [
        BridgeProcess(url, broker_url, f"fleet-bridge-{n_bridges}-{k}", shared, var_dir)
        for k in range(n_bridges)
    ]
    farm: DeviceFarm | None = None
    try:
        for b in bridges:
            b.wait_ready()
        print(
            f"{n_bridges} bridge(s) up; allow-lists in {wait_for_allowlists(database, 300):.1f} s", flush=True
        )
        fleet = Fleet(bridges)
        time.sleep(1.0)
        telemetry = measure_telemetry(
            fleet, broker, broker_url, lab.device_ids, args.rate, args.duration, args.senders, args.sender
        )
        print(
            f"  telemetry: offered {telemetry.offered:,}, ingested {telemetry.ingested:,} "
            f"({telemetry.rate:,.0f}/s), lost {telemetry.lost:,}; load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        address = parse_mqtt_url(broker_url)
        stats = LoadStats()
        readers = [
            SimDevice(address, d, badge_picker(lab, 1000 + k), stats)
            for k, d in enumerate(lab.device_ids[:READERS])
        ]
        farm = DeviceFarm(address, readers).start()
        alone = measure_throughput(farm, stats, args.duration, 5.0)
        print(
            f"  taps alone: {alone.rate:,.0f}/s, p99 {alone.latency.p99:.1f} ms; "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        # Taps while the telemetry flows: the senders run in their own processes meanwhile.
        result: dict[str, TelemetryRun] = {}
        worker = threading.Thread(
            target=lambda: result.setdefault(
                "run",
                measure_telemetry(
                    fleet,
                    broker,
                    broker_url,
                    lab.device_ids,
                    args.rate,
                    args.duration + 1.0,
                    args.senders,
                    args.sender,
                ),
            )
        )
        worker.start()
        time.sleep(1.0)  # the senders are under way
        loaded = measure_throughput(farm, stats, args.duration, 5.0)
        worker.join()
        print(
            f"  taps under telemetry: {loaded.rate:,.0f}/s, p99 {loaded.latency.p99:.1f} ms; "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        farm.stop()
        farm = None
        stored, sent = measure_events(database, broker_url, lab.device_ids, args.events)
        return ConfigResult(
            n_bridges,
            telemetry,
            alone,
            loaded,
            result["run"],
            stored,
            sent,
            fleet.rejected(),
            os.getloadavg(),
        )
    finally:
        if farm is not None:
            farm.stop()
        for b in bridges:
            b.stop()


def _met(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def _figure(name: str, value: str) -> tuple[str, str, str, bool | None, bool]:
    """A row with no target."""
    return (name, value, "", None, False)


def report(args: argparse.Namespace, label: str, echo: Summary, results: list[ConfigResult]) -> None:
    print()
    print(
        f"Werkbank fleet bench: {args.devices} devices, {label}; telemetry offered at {args.rate:,.0f}/s "
        f"for {args.duration:.0f} s by {args.senders} {args.sender} sender(s); "
        f"echo p50 {echo.p50:.3f} ms / p99 {echo.p99:.3f} ms (same run)"
    )
    # Each `werkbank bridge`: one process, or its tap and ingest halves (docs/architecture.md).
    processes = os.environ.get("WERKBANK_BRIDGE_PROCESSES") or "0"
    nice = os.environ.get("WERKBANK_BRIDGE_INGEST_NICE") or "default"
    print(
        f"each bridge: WERKBANK_BRIDGE_PROCESSES={processes} (0: two on PostgreSQL, one on SQLite), "
        f"ingest half nice {nice}"
    )
    # The fleet's speed targets are for PostgreSQL (a lab of hundreds of machines runs on it);
    # on SQLite they are shown in brackets, and only what is lost or stored twice counts.
    binding = args.database_url is not None
    if not binding:
        print("(SQLite: the speed targets are for PostgreSQL and shown in brackets; lost and")
        print(" stored-once figures count on both)")
    for r in results:
        t, tl = r.telemetry, r.telemetry_loaded
        title = "one bridge" if r.bridges == 1 else f"{r.bridges} bridges, MQTT_SHARED_SUBSCRIPTIONS"
        la = " ".join(f"{x:.1f}" for x in r.load)
        print(f"\n{title} (load average at the end: {la})")
        # (figure, value, target, met or None: no target, a speed target)
        rows: list[tuple[str, str, str, bool | None, bool]] = [
            (
                "telemetry ingested (msgs/s)",
                f"{t.rate:,.0f}",
                f">= {TARGET_TELEMETRY_RATE:,.0f}",
                t.rate >= TARGET_TELEMETRY_RATE,
                True,
            ),
            (
                "telemetry lost (offered - ingested)",
                f"{t.lost:,} of {t.offered:,}",
                "0",
                t.lost == 0,
                False,
            ),
            _figure("  dropped by the broker", f"{t.broker_dropped:,}"),
            _figure("  dropped by the bridge(s)", f"{t.bridge_dropped:,}"),
            _figure("bridge CPU per message (us)", f"{t.bridge_cpu_s / max(t.ingested, 1) * 1e6:.1f}"),
            _figure("sender CPU per message (us)", f"{t.sender_cpu_s / max(t.offered, 1) * 1e6:.1f}"),
            _figure("machine CPU per message (us)", f"{t.machine_cpu_s / max(t.ingested, 1) * 1e6:.1f}"),
            (
                "decisions/s, 50 readers, alone",
                f"{r.taps_alone.rate:,.0f}",
                f">= {TARGET_DECISION_RATE:,.0f}",
                r.taps_alone.rate >= TARGET_DECISION_RATE,
                True,
            ),
            (
                "  p50 / p99 (ms)",
                f"{r.taps_alone.latency.p50:.1f} / {r.taps_alone.latency.p99:.1f}",
                f"p99 <= {TARGET_P99_LOAD_MS:.0f}",
                r.taps_alone.latency.p99 <= TARGET_P99_LOAD_MS,
                True,
            ),
            (
                "decisions/s, with the telemetry",
                f"{r.taps_loaded.rate:,.0f}",
                f">= {TARGET_DECISION_RATE:,.0f}",
                r.taps_loaded.rate >= TARGET_DECISION_RATE,
                True,
            ),
            (
                "  p50 / p99 (ms)",
                f"{r.taps_loaded.latency.p50:.1f} / {r.taps_loaded.latency.p99:.1f}",
                f"p99 <= {TARGET_P99_LOAD_MS:.0f}",
                r.taps_loaded.latency.p99 <= TARGET_P99_LOAD_MS,
                True,
            ),
            (
                "  telemetry meanwhile: ingested/s, lost",
                f"{tl.rate:,.0f}, {tl.lost:,}",
                "lost 0",
                tl.lost == 0,
                False,
            ),
            (
                "taps lost (alone, loaded)",
                f"{r.taps_alone.lost}, {r.taps_loaded.lost}",
                "0",
                r.taps_alone.lost == 0 and r.taps_loaded.lost == 0,
                False,
            ),
            (
                "events stored exactly once",
                f"{r.events_stored} of {r.events_sent}",
                "all",
                r.events_stored == r.events_sent,
                False,
            ),
        ]
        for name, value, target, ok, speed in rows:
            verdict = "" if ok is None else _met(ok) if binding or not speed else f"({_met(ok)})"
            print(f"  {name:40} {value:>18}  {target:>10}  {verdict}")
        refused = {k: v for k, v in r.rejected.items() if v}
        if refused:
            print(f"  messages refused by reason: {refused}")


def run(args: argparse.Namespace) -> int:
    lab = make_lab(args.people, args.devices)
    broker = MosquittoProcess(extra_conf="sys_interval 1\n")
    database = Database()
    broker.start()
    stats: BrokerStats | None = None
    results: list[ConfigResult] = []
    try:
        address = parse_mqtt_url(broker.url)
        # Kept afterwards: each bridge's log is there ({var_dir}/fleet-bridge-*.log).
        var_dir = tempfile.mkdtemp(prefix="wb-fleet-")
        print(f"bridge logs in {var_dir}", flush=True)
        with private_database(args.database_url) as (url, label):
            try:
                seed(url, lab)
                print(f"seeded {args.devices} devices ({label}); load average {os.getloadavg()}", flush=True)
                echo, _lost = measure_echo(address, 1000, 5.0)
                echo_s = Summary.of(echo)
                database.init(url)
                stats = BrokerStats(address)
                for n in args.bridges:
                    if n > 1 and args.database_url is None:
                        # Two processes writing one SQLite file lock each other out ("database is
                        # locked"): several bridges are a PostgreSQL set-up.
                        print(f"{n} bridges: skipped, several bridges need --database-url (PostgreSQL)")
                        continue
                    results.append(run_config(args, n, url, broker.url, stats, database, lab, var_dir))
            finally:
                if stats is not None:
                    stats.stop()
                database.dispose()
    finally:
        broker.stop()
    report(args, label, echo_s, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--database-url", default=None, help="a PostgreSQL server (default: a temp SQLite file)"
    )
    parser.add_argument("--devices", type=int, default=500, help="simulated devices (default 500)")
    parser.add_argument("--people", type=int, default=500)
    parser.add_argument("--rate", type=float, default=10_000.0, help="telemetry messages/s offered in all")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--senders", type=int, default=2, help="telemetry sender processes")
    parser.add_argument(
        "--sender",
        choices=("raw", "paho"),
        default="raw",
        help="how the senders publish: pre-built QoS 0 packets on a bare socket (raw, the default: "
        "the devices' own cost kept off the server's cores) or through paho",
    )
    parser.add_argument(
        "--bridges",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="bridge counts to run, e.g. 1,2 (more than one: shared subscriptions)",
    )
    parser.add_argument("--events", type=int, default=2, help="fault events per device, each sent twice")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
