"""What the device agent costs on a Pi: memory, idle CPU, and the offline tap-to-relay time.

Everything runs on 127.0.0.1 and every loop is bounded:

1. **process**: ``werkbank-agent --simulate`` as a subprocess (simulated reader polled at
   ``--poll-hz``, gpiozero's mock pins) against a private Mosquitto on a free port, with a
   small stand-in for the server that allows every badge and acks every event. Measured from
   ``/proc/<pid>``: resident memory (VmRSS, and the peak VmHWM) after start and after
   ``--taps`` taps (tap in, tap out: half as many sessions); CPU (utime + stime) over
   ``--idle`` seconds of idling with the reader polled.
2. **mfrc522** (when ``device_agent/hardware/mfrc522.py`` and ``tests/agent/rc522_emulator.py``
   exist): the same agent with ``[reader] backend = "mfrc522"``, the real ``mfrc522`` library
   talking to the emulated chip over fake ``spidev``/``RPi.GPIO`` modules; the bench lays the
   card on and takes it off through the launcher's stdin.
3. **monitors** (``--only monitors`` runs just this part): each machine monitor and smart-plug
   switch alone in a process of its own, made from a config with its default intervals, against
   its test peer (a Shelly and a Tasmota peer, a real Moonraker with the Klipper peer when
   ``.venv-moonraker`` exists, the PrusaLink peer, the Bambu broker and firmware peer), with the
   machine idle: CPU (utime + stime) over ``--monitor-idle`` seconds. Target: ≤ 0.5 % each.
4. **offline**: an :class:`~device_agent.agent.Agent` in this process whose broker address
   has nothing listening, so every tap is decided from the signed allow-list at once (the
   protocol's 1.5 s wait applies only while the broker is reachable and the server silent).
   Measured: from the reader's poll returning the badge to ``relay.close()`` (the decision,
   including the state and outbox writes made before the relay closes), and from the badge
   being presented to ``relay.close()`` (adds the wait for the next poll: up to 1/poll_hz).

    .venv/bin/python bench/agent_resources.py [--taps 200] [--idle 20] [--poll-hz 10] [--offline-taps 200]
        [--monitor-idle 30] [--only monitors]

Exit status: 0 when every target is met, 1 when one is missed, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import os
import platform
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from gpiozero import Device as GpioDevice
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.config import AgentConfig, parse_config
from device_agent.hardware.base import Relay
from device_agent.hardware.gpio import GpioRelay
from device_agent.hardware.simulated import SimulatedReader
from server.broker import MosquittoProcess, free_port
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import badge_hash, key_bytes, sign
from werkbank_protocol.messages import Ack, AuthReq, AuthResp, SimTap, decode_as, decode_event, encode
from werkbank_protocol.mqtt import BrokerAddress, make_client
from werkbank_protocol.topics import Suffix, parse_topic, subscription, topic

ROOT = Path(__file__).resolve().parent.parent
RSS_TARGET_MB = 40.0
MONITOR_CPU_TARGET_PCT = 0.5
CPU_TARGET_PCT = 1.0
OFFLINE_TARGET_MS = 50.0
MACHINE = "bench-1"
BADGE = "04A1B2C3"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc readings --------------------------------------------------------------------------
def memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB (MiB): resident now, and the peak so far."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024  # kB
    return fields["VmRSS"], fields["VmHWM"]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of the whole line


# -- the server stand-in -----------------------------------------------------------------------
class ServerStandIn:
    """Allows every badge, acks every event, and counts the events per type (a real paho client)."""

    def __init__(self, port: int) -> None:
        address = BrokerAddress("127.0.0.1", port, "bench-server")
        self.client = make_client(f"bench-server-{uuid.uuid4().hex[:6]}", address, clean_session=True)
        self.counts: dict[str, int] = {}
        self.online: set[str] = set()
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(
            [(subscription(s), 1) for s in (Suffix.AUTH_REQ, Suffix.EVENT, Suffix.STATUS)]
        )
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise RuntimeError("the server stand-in could not subscribe")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        device_id, suffix = parse_topic(message.topic)
        payload = bytes(message.payload)
        if suffix == Suffix.AUTH_REQ:
            request = decode_as(AuthReq, payload)
            answer = AuthResp(
                v=1,
                req=request.id,
                decision="allow",
                reason="ok",
                message={"de": "Freigegeben.", "en": "Unlocked."},
                session=str(uuid.uuid4()),
            )
            client.publish(topic(device_id, Suffix.AUTH_RESP), encode(answer), qos=1)
        elif suffix == Suffix.EVENT:
            event = decode_event(payload)
            client.publish(topic(device_id, Suffix.ACK), encode(Ack(v=1, ids=[event.id])), qos=1)
            self._bump(type(event).__struct_config__.tag)
        elif suffix == Suffix.STATUS and payload and msgspec.json.decode(payload).get("online"):
            with self._changed:
                self.online.add(device_id)
                self._changed.notify_all()

    def _bump(self, kind: Any) -> None:
        with self._changed:
            self.counts[str(kind)] = self.counts.get(str(kind), 0) + 1
            self._changed.notify_all()

    def more_than(self, kind: str, count: int) -> bool:
        return self.counts.get(kind, 0) > count

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    def tap(self, device_id: str, badge: str) -> None:
        payload = encode(SimTap(v=1, badge=badge))
        self.client.publish(topic(device_id, Suffix.SIM_TAP), payload, qos=1).wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- configs -------------------------------------------------------------------------------
def config_data(device_id: str, mqtt_url: str, storage: Path, key: str, poll_hz: float) -> dict[str, Any]:
    return {
        "device": {"id": device_id, "machine": MACHINE},
        "mqtt": {"url": mqtt_url},
        "allowlist": {"key": key},
        "storage": {"dir": str(storage)},
        "reader": {"backend": "simulated", "poll_hz": poll_hz},
        "relay": {"pin": 17},
        "indicators": {"green_pin": 22, "red_pin": 27, "amber_pin": 23, "buzzer_pin": 24},
        # Tap out right after tapping in: the bench taps as fast as the agent answers.
        "session": {"tap_out_grace_s": 0},
        "gpio": {"pin_factory": "mock"},
    }


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return f'"{v}"' if isinstance(v, str) else repr(v)

    return "".join(
        f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) + "\n"
        for section, keys in data.items()
    )


def write_allowlist(storage: Path, key_hex: str, badges: list[str]) -> None:
    """A signed allow-list for MACHINE as the server would publish it, where the agent keeps it."""
    key = key_bytes(key_hex)
    issued = datetime.now(UTC)
    document = {
        "v": 1,
        "version": 1,
        "issued": format_ts(issued),
        "expires": format_ts(issued + timedelta(days=7)),
        "machine": MACHINE,
        "entries": [{"badge_hash": badge_hash(key, b), "until": None, "trainer": False} for b in badges],
    }
    storage.mkdir(parents=True, exist_ok=True)
    (storage / "allowlist.json").write_bytes(msgspec.json.encode(sign(key, document)))


# -- 1 and 2: the agent as a process ---------------------------------------------------------
@dataclass
class ProcessFigures:
    label: str
    rss_start_mb: float
    rss_taps_mb: float
    peak_mb: float
    idle_cpu_pct: float
    taps: int
    tap_event_ms: list[float]


@contextlib.contextmanager
def agent_process(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    # The agent logs every tap: into a file, since an unread pipe fills up and then blocks the agent.
    with log.open("wb") as log_file:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=log_file, stderr=log_file)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def log_tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def measure_process(
    label: str,
    command: list[str],
    device_id: str,
    server: ServerStandIn,
    args: argparse.Namespace,
    log_dir: Path,
    on_chip: bool = False,
) -> ProcessFigures:
    """Start the agent, read its memory and idle CPU, tap ``args.taps`` times, read memory again.

    ``on_chip``: taps go to the emulated RC522 (lay the card on, wait, take it off) instead of
    the simulated reader's ``sim/tap`` topic.
    """
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONPATH=str(ROOT))
    log = log_dir / f"{device_id}.log"
    with agent_process(command, env, log) as proc:
        if not server.wait(lambda: device_id in server.online, 20):
            raise RuntimeError(f"{label}: the agent did not come online within 20 s:\n{log_tail(log)}")
        time.sleep(args.settle)  # imports done, first status and allow-list request out
        rss_start, _ = memory_mb(proc.pid)

        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.idle)
        idle_pct = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0) * 100

        latencies: list[float] = []
        for n in range(args.taps):
            kind = "session_started" if n % 2 == 0 else "session_ended"
            before = server.counts.get(kind, 0)
            # A badge arrives at any moment, not right after a poll: spread taps over the poll period.
            time.sleep(random.uniform(0, 1 / args.poll_hz))
            sent = time.perf_counter()
            if on_chip:
                chip_command(proc, f"present {BADGE}")
            else:
                server.tap(device_id, BADGE)
            if not server.wait(partial(server.more_than, kind, before), 10):
                raise RuntimeError(f"{label}: tap {n + 1} got no {kind} within 10 s:\n{log_tail(log)}")
            latencies.append((time.perf_counter() - sent) * 1000)
            if on_chip:
                chip_command(proc, "remove")
                # The reader reports a card once per presentation: let it see the card gone.
                time.sleep(3 / args.poll_hz)
        time.sleep(args.settle)
        rss_taps, peak = memory_mb(proc.pid)
    return ProcessFigures(label, rss_start, rss_taps, peak, idle_pct, args.taps, latencies)


# Runs the agent with the real mfrc522 library on the emulated chip of tests/agent/rc522_emulator.py
# (its Rc522Emulator and installed()). Cards are laid on and taken off through stdin, one
# command a line: "present <UID>" or "remove".
MFRC522_LAUNCHER = """
import sys, threading
sys.path.insert(0, {root!r})
from tests.agent.rc522_emulator import Rc522Emulator, installed

chip = Rc522Emulator()

def commands():
    for line in sys.stdin:
        word, _, uid = line.strip().partition(" ")
        if word == "present":
            chip.present(uid)
        elif word == "remove":
            chip.remove()

threading.Thread(target=commands, daemon=True).start()
with installed(chip):
    from device_agent.__main__ import main
    code = main(["--config", {config!r}])
sys.exit(code)
"""


def chip_command(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


def mfrc522_command(config: Path) -> tuple[list[str] | None, str]:
    """The command for the mfrc522 variant, or None and why it is skipped."""
    backend = ROOT / "device_agent" / "hardware" / "mfrc522.py"
    emulator = ROOT / "tests" / "agent" / "rc522_emulator.py"
    if not backend.exists() or not emulator.exists():
        return None, f"{backend.relative_to(ROOT)} or {emulator.relative_to(ROOT)} does not exist yet"
    names = {
        node.name
        for node in ast.parse(emulator.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }
    if not {"Rc522Emulator", "installed"} <= names:
        return (
            None,
            f"{emulator.relative_to(ROOT)} has no Rc522Emulator and installed() (see MFRC522_LAUNCHER)",
        )
    code = MFRC522_LAUNCHER.format(root=str(ROOT), config=str(config))
    return [sys.executable, "-c", code], ""


# -- 3: offline decisions in this process -------------------------------------------------------
class TimedReader(SimulatedReader):
    """The simulated reader, noting when a badge is presented and when a poll hands it over."""

    def __init__(self) -> None:
        super().__init__()
        self.presented_at = 0.0
        self.polled_at = 0.0

    def present(self, uid: str) -> int:
        self.presented_at = time.perf_counter()
        return super().present(uid)

    def poll(self) -> str | None:
        uid = super().poll()
        if uid is not None:
            self.polled_at = time.perf_counter()
        return uid


class TimedRelay(Relay):
    """A gpiozero relay on mock pins that notes when it closed."""

    def __init__(self, relay: GpioRelay) -> None:
        self._relay = relay
        self.closed_at = 0.0

    def close(self) -> None:
        self._relay.close()
        self.closed_at = time.perf_counter()

    def open(self) -> None:
        self._relay.open()

    @property
    def is_closed(self) -> bool:
        return self._relay.is_closed

    def release(self) -> None:
        self._relay.release()


@dataclass
class OfflineFigures:
    decision_ms: list[float]
    tap_ms: list[float]


def measure_offline(tmp: Path, args: argparse.Namespace) -> OfflineFigures:
    key = secrets.token_hex(32)
    storage = tmp / "offline"
    write_allowlist(storage, key, [BADGE])
    # A port nothing listens on: the agent never gets a connection, so it never waits for a server.
    data = config_data("bench-offline-1", f"mqtt://127.0.0.1:{free_port()}", storage, key, args.poll_hz)
    config: AgentConfig = parse_config(data)
    GpioDevice.pin_factory = MockFactory()
    reader = TimedReader()
    relay = TimedRelay(GpioRelay(config.relay_pin, config.relay_active_high))
    agent = Agent(config, reader=reader, relay=relay)
    agent.start()
    decision_ms: list[float] = []
    tap_ms: list[float] = []
    try:
        for n in range(args.offline_taps):
            time.sleep(random.uniform(0, 1 / args.poll_hz))  # taps come at any phase of the poll cycle
            decision = agent.tap(BADGE, timeout=5)
            if decision.outcome != "unlocked" or decision.reason != "offline_ok":
                raise RuntimeError(f"offline tap {n + 1}: expected an offline unlock, got {decision}")
            decision_ms.append((relay.closed_at - reader.polled_at) * 1000)
            tap_ms.append((relay.closed_at - reader.presented_at) * 1000)
            out = agent.tap(BADGE, timeout=5)
            if out.outcome != "locked":
                raise RuntimeError(f"offline tap-out {n + 1}: expected a lock, got {out}")
    finally:
        agent.stop()
        relay.release()
        GpioDevice.pin_factory = None
    return OfflineFigures(decision_ms, tap_ms)


# -- 3: monitors and smart plugs, each in a process of its own ---------------------------------
# Makes one monitor or switch from a config (so with its documented default intervals) and idles.
MONITOR_LAUNCHER = """
import json, sys, time
sys.path.insert(0, {root!r})
from device_agent.config import parse_config
from device_agent.hardware import create_switch
from device_agent.hardware.monitors import create_monitor
config = parse_config(json.loads({data!r}))
made = create_switch(config) if {switch!r} else create_monitor(config)
print("ready", flush=True)
time.sleep(3600)
"""


def monitor_cases(tmp: Path) -> Iterator[tuple[str, bool, dict[str, Any], Callable[[], None]]]:
    """(label, is a switch, config sections, stop) for each monitor and switch, its peer started."""
    from tests.agent.bambu_printer import ACCESS_CODE, SERIAL, BambuPrinter
    from tests.agent.moonraker_server import MoonrakerServer, missing_moonraker
    from tests.agent.peers import PeerProcess

    shelly = PeerProcess("plugs", "shelly").start()
    yield (
        "Shelly switch (read-back every 5 s)",
        True,
        {"switch": {"backend": "shelly", "url": shelly.url}},
        lambda: None,
    )
    sections: dict[str, Any] = {
        "switch": {"backend": "shelly", "url": shelly.url},
        "monitor": {"backend": "power"},
    }
    yield "power monitor on the Shelly (every 2 s)", False, sections, shelly.stop
    tasmota = PeerProcess("plugs", "tasmota").start()
    yield (
        "Tasmota switch (read-back every 5 s)",
        True,
        {"switch": {"backend": "tasmota", "url": tasmota.url}},
        tasmota.stop,
    )
    if missing_moonraker() is None:
        moonraker = MoonrakerServer(tmp / "moonraker", free_port()).start()
        sections = {"monitor": {"backend": "moonraker", "moonraker_url": moonraker.url}}
        yield "moonraker monitor, real Moonraker (every 2 s)", False, sections, moonraker.stop
    else:
        print("moonraker monitor: skipped (sh tests/agent/install_moonraker.sh installs Moonraker)")
    prusa = PeerProcess("prusalink", "--password", "bench-password").start()
    sections = {
        "monitor": {
            "backend": "prusalink",
            "prusalink_url": prusa.url,
            "prusalink_password": "bench-password",
        }
    }
    yield "prusalink monitor, digest login (every 2 s)", False, sections, prusa.stop
    bambu = BambuPrinter().start()
    sections = {
        "monitor": {
            "backend": "bambu",
            "bambu_host": "127.0.0.1",
            "bambu_port": bambu.port,
            "bambu_serial": SERIAL,
            "bambu_access_code": ACCESS_CODE,
            "bambu_ca_file": str(bambu.ca_file),
        }
    }
    yield "bambu monitor, MQTT over TLS (every 2 s)", False, sections, bambu.stop


def measure_monitors(tmp: Path, args: argparse.Namespace) -> list[tuple[str, float]]:
    import json

    figures: list[tuple[str, float]] = []
    key = secrets.token_hex(32)
    for label, switch, sections, stop in monitor_cases(tmp):
        try:
            data = config_data("bench-monitor-1", "mqtt://127.0.0.1:1", tmp / "monitor", key, args.poll_hz)
            data.update(sections)
            code = MONITOR_LAUNCHER.format(root=str(ROOT), data=json.dumps(data), switch=switch)
            env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock", PYTHONPATH=str(ROOT))
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            try:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"{label}: did not start: {proc.stdout.read()[-2000:]}")
                time.sleep(args.settle)  # connected, first readings done
                cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
                time.sleep(args.monitor_idle)
                pct_used = (cpu_seconds(proc.pid) - cpu0) / (time.monotonic() - wall0) * 100
                figures.append((label, pct_used))
                print(f"{label}: {pct_used:.2f} % CPU", flush=True)
            finally:
                proc.kill()
                proc.wait()
        finally:
            stop()
    return figures


def monitor_rows(figures: list[tuple[str, float]], idle_s: float) -> list[tuple[str, str, str, bool | None]]:
    return [
        (
            f"idle CPU over {idle_s:g} s: {label}",
            f"{used:.2f} %",
            f"≤ {MONITOR_CPU_TARGET_PCT:g} %",
            used <= MONITOR_CPU_TARGET_PCT,
        )
        for label, used in figures
    ]


def print_table(rows: list[tuple[str, str, str, bool | None]], heading: str) -> int:
    width = max(len(r[0]) for r in rows)
    print(heading)
    print(f"| {'measure':<{width}} | value | target | met |")
    print(f"|{'-' * (width + 2)}|---|---|---|")
    for name, value, target, met in rows:
        mark = "—" if met is None else ("yes" if met else "**no**")
        print(f"| {name:<{width}} | {value} | {target} | {mark} |")
    missed = [name for name, _, _, met in rows if met is False]
    print("\nall targets met" if not missed else f"\nmissed: {', '.join(missed)}")
    return 1 if missed else 0


# -- report ----------------------------------------------------------------------------------
def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--taps", type=int, default=200, help="taps against the agent process")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    parser.add_argument("--poll-hz", type=float, default=10.0, help="reader polls per second")
    parser.add_argument("--offline-taps", type=int, default=200, help="offline unlocks in process")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before a memory reading")
    parser.add_argument("--monitor-idle", type=float, default=30.0, help="seconds of CPU per monitor")
    parser.add_argument("--only", choices=("monitors",), help="run only this part")
    args = parser.parse_args(argv)
    heading = (
        f"\nagent resources on {platform.machine()} ({cpu_model()}), Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs"
    )
    if args.only == "monitors":
        with tempfile.TemporaryDirectory(prefix="wb-agent-bench-") as tmpdir:
            figures = measure_monitors(Path(tmpdir), args)
        return print_table(monitor_rows(figures, args.monitor_idle), heading + "\n")
    if not MosquittoProcess.available():
        print(
            "bench/agent_resources.py needs the mosquitto binary (apt-get install mosquitto)", file=sys.stderr
        )
        return 2

    results: list[ProcessFigures] = []
    with tempfile.TemporaryDirectory(prefix="wb-agent-bench-") as tmpdir:
        tmp = Path(tmpdir)
        broker = MosquittoProcess().start()
        server = ServerStandIn(broker.port)
        try:
            key = secrets.token_hex(32)
            device_id = "bench-agent-1"
            cfg = tmp / "agent.toml"
            cfg.write_text(to_toml(config_data(device_id, broker.url, tmp / "agent", key, args.poll_hz)))
            command = [sys.executable, "-m", "device_agent", "--config", str(cfg), "--simulate"]
            results.append(measure_process("simulated reader", command, device_id, server, args, tmp))

            mfrc_cfg = tmp / "agent-mfrc522.toml"
            data = config_data("bench-agent-2", broker.url, tmp / "agent-2", key, args.poll_hz)
            data["reader"]["backend"] = "mfrc522"
            mfrc_cfg.write_text(to_toml(data))
            mfrc, why = mfrc522_command(mfrc_cfg)
            if mfrc is None:
                print(f"mfrc522 on the emulated RC522: skipped ({why})")
            else:
                label = "mfrc522 on emulated RC522"
                results.append(measure_process(label, mfrc, "bench-agent-2", server, args, tmp, on_chip=True))
        finally:
            server.stop()
            broker.stop()
        offline = measure_offline(tmp, args)
        monitors = measure_monitors(tmp, args)

    rows: list[tuple[str, str, str, bool | None]] = []
    for r in results:
        rows += [
            (
                f"RSS after start ({r.label})",
                f"{r.rss_start_mb:.1f} MB",
                f"≤ {RSS_TARGET_MB:g} MB",
                r.rss_start_mb <= RSS_TARGET_MB,
            ),
            (
                f"RSS after {r.taps} taps ({r.label})",
                f"{r.rss_taps_mb:.1f} MB",
                f"≤ {RSS_TARGET_MB:g} MB",
                r.rss_taps_mb <= RSS_TARGET_MB,
            ),
            (
                f"peak RSS, VmHWM ({r.label})",
                f"{r.peak_mb:.1f} MB",
                f"≤ {RSS_TARGET_MB:g} MB",
                r.peak_mb <= RSS_TARGET_MB,
            ),
            (
                f"idle CPU over {args.idle:g} s, reader at {args.poll_hz:g} Hz ({r.label})",
                f"{r.idle_cpu_pct:.2f} %",
                f"≤ {CPU_TARGET_PCT:g} %",
                r.idle_cpu_pct <= CPU_TARGET_PCT,
            ),
        ]
        if r.tap_event_ms:
            rows.append(
                (
                    f"online tap → session event, p50 / p99 ({r.label})",
                    f"{pct(r.tap_event_ms, 50):.0f} / {pct(r.tap_event_ms, 99):.0f} ms",
                    "(no target)",
                    None,
                )
            )
    d, t = offline.decision_ms, offline.tap_ms
    rows += [
        (
            "offline decision: poll → relay closed, p50 / p99 / max",
            f"{pct(d, 50):.2f} / {pct(d, 99):.2f} / {max(d):.2f} ms",
            f"≤ {OFFLINE_TARGET_MS:g} ms (max)",
            max(d) <= OFFLINE_TARGET_MS,
        ),
        (
            "offline: badge presented → relay closed (incl. the wait for a poll), p50 / max",
            f"{pct(t, 50):.1f} / {max(t):.1f} ms",
            "(no target)",
            None,
        ),
    ]
    rows += monitor_rows(monitors, args.monitor_idle)
    return print_table(rows, f"{heading}; {len(d)} offline unlocks\n")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"bench/agent_resources.py failed: {exc}", file=sys.stderr)
        sys.exit(2)
