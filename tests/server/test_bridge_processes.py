"""A bridge in two processes (server/adapters/bridge_processes.py): the tap half answers taps on
a connection of its own, the ingest half takes in events, status and telemetry; they start,
report and end together. Over a real broker, on both databases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from server.adapters.bridge import Bridge, wait_until
from server.broker import free_port
from server.db import Database
from server.models import AccessDecision, Machine, MachineSession
from tests.conftest import Clock
from tests.mqtt_peer import Peer, device_peer
from tests.server.test_bridge import LASER, PRINTER, _decision_log_held, _event, _req, _telemetry
from werkbank_protocol import format_ts
from werkbank_protocol.messages import Ack, AuthResp, decode_as

ROOT = Path(__file__).resolve().parents[2]
QUINN = "04A224B2C35E80"  # qualified for the printer (tests/data/lab.yaml)


@pytest.fixture
def device(mqtt_url: str) -> Iterator[Peer]:
    with device_peer(mqtt_url, (PRINTER, LASER), ("auth/resp", "ack")) as peer:
        yield peer


# -- the two halves in one test process ------------------------------------------------------
@pytest.fixture
def halves(lab: Database, mqtt_url: str, clock: Clock) -> Iterator[tuple[Bridge, Bridge]]:
    name = f"bridge-{uuid.uuid4().hex[:6]}"
    taps = Bridge(lab, mqtt_url, client_id=f"{name}-taps", clock=clock, role="taps").start()
    ingest = Bridge(lab, mqtt_url, client_id=name, clock=clock, role="ingest").start()
    assert taps.connected.is_set() and ingest.connected.is_set()
    yield taps, ingest
    taps.stop()
    ingest.stop()


def test_bridge_halves_each_take_their_own_messages(
    halves: tuple[Bridge, Bridge], device: Peer, lab: Database, clock: Clock
) -> None:
    taps, ingest = halves
    rid, payload = _req(QUINN)
    device.publish(f"{PRINTER}/auth/req", payload)
    resp = decode_as(AuthResp, device.next(f"{PRINTER}/auth/resp"))
    assert (resp.req, resp.decision) == (rid, "allow")
    device.publish(f"{PRINTER}/telemetry", _telemetry(clock.now, running=True, power_w=42.0))
    eid, started = _event(
        "session_started", str(uuid.uuid4()), format_ts(clock.now), badge=QUINN, offline=True
    )
    device.publish(f"{PRINTER}/event", started)
    assert decode_as(Ack, device.next(f"{PRINTER}/ack")).ids == [eid]
    # The tap was answered by the tap half alone; the event and the telemetry before it by the
    # ingest half alone, in the order the device sent them.
    assert taps.decisions == {"ok": 1} and not ingest.decisions
    assert wait_until(lambda: ingest.handled["event"] == 1)  # counted just after its ack
    assert taps.handled["event"] == 0
    assert ingest.handled["telemetry"] == 1 and taps.handled["telemetry"] == 0
    with lab.session() as s:
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None and printer.live_power_w == 42.0


def test_bridge_ingest_half_waits_for_the_tap_halfs_decision_row(
    halves: tuple[Bridge, Bridge], device: Peer, lab: Database, clock: Clock
) -> None:
    # The answer leaves the tap half before its decision row is written; the agent's
    # session_started then reaches the ingest half, which must start the session at the
    # server's decision (not refuse it as a claim without one, nor leave it unacknowledged).
    with _decision_log_held(lab, 0.3):
        rid, payload = _req(QUINN)
        device.publish(f"{PRINTER}/auth/req", payload)
        resp = decode_as(AuthResp, device.next(f"{PRINTER}/auth/resp"))
        assert resp.decision == "allow" and resp.session is not None
        eid, started = _event(
            "session_started", resp.session, format_ts(clock.now), badge=QUINN, offline=False
        )
        device.publish(f"{PRINTER}/event", started)
        assert decode_as(Ack, device.next(f"{PRINTER}/ack")).ids == [eid]
    _, ingest = halves
    assert ingest.rejected == {} and ingest.handled["start_before_decision"] == 0
    with lab.session() as s:
        session = s.get(MachineSession, resp.session)
        decision = s.get(AccessDecision, rid)
        assert session is not None and decision is not None
        assert session.started_at == decision.decided_at == clock.now


def test_bridge_ingest_half_waits_for_one_devices_unknown_decisions_once(
    halves: tuple[Bridge, Bridge], device: Peer, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stolen Pi claims online sessions the server never decided, one after the other. The
    # ingest half waits for the first one's decision row, then no more for that device: the
    # other devices' events must not queue behind its claims.
    from server.adapters import bridge as bridge_module

    monkeypatch.setattr(bridge_module, "DECISION_ROW_WAIT_S", 2.0)
    _, ingest = halves

    def claim() -> float:
        before = ingest.handled["start_before_decision"]
        _, started = _event(
            "session_started", str(uuid.uuid4()), format_ts(clock.now), badge=QUINN, offline=False
        )
        begun = time.monotonic()
        device.publish(f"{PRINTER}/event", started)
        assert wait_until(lambda: ingest.handled["start_before_decision"] == before + 1, timeout=10)
        return time.monotonic() - begun

    assert claim() >= 2.0  # waited for the row the tap half might still write
    assert claim() < 1.0  # not again for this device
    assert device.drain(f"{PRINTER}/ack") == []  # neither was acknowledged: the agent sends again


def _status(ts: datetime, boot: str) -> str:
    body = {
        "v": 1,
        "online": True,
        "state": "locked",
        "machine": "printer-1",
        "ts": format_ts(ts),
        "boot": boot,
    }
    return json.dumps(body)


def test_bridge_tap_half_judges_a_late_tap_by_the_devices_status_clock(
    halves: tuple[Bridge, Bridge], device: Peer, clock: Clock
) -> None:
    # The tap half learns the device's clock from its status: a tap queued behind a cut link
    # (sent 10 s ago) is dropped, not taken at its word (the agent decided offline long ago).
    taps, _ = halves
    boot = str(uuid.uuid4())
    device.publish(f"{PRINTER}/status", _status(clock.now, boot))
    _, late = _req(QUINN, ts=format_ts(clock.now - timedelta(seconds=10)))
    device.publish(f"{PRINTER}/auth/req", late)
    assert wait_until(lambda: taps.rejected["stale"] == 1)
    # The link comes back after a cut: the broker's last will, then the statuses and taps the
    # agent queued meanwhile, all late. Same boot, same clock: still judged by what was measured.
    device.publish(f"{PRINTER}/status", json.dumps({"v": 1, "online": False}))
    device.publish(f"{PRINTER}/status", _status(clock.now - timedelta(seconds=20), boot))
    _, queued = _req(QUINN, ts=format_ts(clock.now - timedelta(seconds=15)))
    device.publish(f"{PRINTER}/auth/req", queued)
    assert wait_until(lambda: taps.rejected["stale"] == 2)
    assert not taps.decisions
    # Booted again, an hour behind (no clock battery): measured afresh from its new boot.
    behind = clock.now - timedelta(hours=1)
    device.publish(f"{PRINTER}/status", _status(behind, str(uuid.uuid4())))
    rid, fresh = _req(QUINN, ts=format_ts(behind))
    device.publish(f"{PRINTER}/auth/req", fresh)
    resp = decode_as(AuthResp, device.next(f"{PRINTER}/auth/resp"))
    assert (resp.req, resp.decision) == (rid, "allow")


def test_bridge_role_must_be_one_it_knows(lab: Database, mqtt_url: str) -> None:
    with pytest.raises(ValueError, match="bridge role must be one of all, taps, ingest, not 'both'"):
        Bridge(lab, mqtt_url, role="both")


# -- `werkbank bridge` as it is run ------------------------------------------------------------
class BridgeCommand:
    """``werkbank bridge`` in a process of its own; its log read line by line."""

    def __init__(self, database_url: str, mqtt_url: str, tmp_path: Path, **settings: str) -> None:
        self.metrics_port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "MQTT_URL": mqtt_url,
            "MQTT_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:6]}",
            "WERKBANK_BRIDGE_METRICS_PORT": str(self.metrics_port),
            "WERKBANK_VAR_DIR": str(tmp_path),
            "SECRET_KEY": "test",
            **settings,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "bridge"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    @property
    def log(self) -> str:
        return "\n".join(self.lines[-60:])

    def children(self) -> list[int]:
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in children.split()]

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        return {
            name: float(value)
            for name, value in (line.rsplit(" ", 1) for line in body.splitlines() if not line.startswith("#"))
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def split(
    real_clock_lab: Database, database_url: str, mqtt_url: str, tmp_path: Path
) -> Iterator[BridgeCommand]:
    # The `werkbank bridge` command decides on the real clock: the lab open at any hour.
    command = BridgeCommand(database_url, mqtt_url, tmp_path, WERKBANK_BRIDGE_PROCESSES="2")
    try:
        assert wait_until(lambda: command.said("bridge connected to"), 60), command.log
        yield command
    finally:
        command.stop()


def test_bridge_command_runs_taps_and_ingestion_in_two_processes(
    split: BridgeCommand, device: Peer, lab: Database
) -> None:
    assert split.said("(its tap and ingest halves)"), split.log
    (child,) = split.children()
    assert "--half\0ingest" in Path(f"/proc/{child}/cmdline").read_text()
    # The ingest half yields the CPU to the taps (WERKBANK_BRIDGE_INGEST_NICE, 5 by default).
    assert os.getpriority(os.PRIO_PROCESS, child) == os.getpriority(os.PRIO_PROCESS, split.proc.pid) + 5

    now = datetime.now(UTC)
    rid, payload = _req(QUINN, ts=format_ts(now))
    device.publish(f"{PRINTER}/auth/req", payload)
    resp = decode_as(AuthResp, device.next(f"{PRINTER}/auth/resp"))
    assert (resp.req, resp.decision) == (rid, "allow") and resp.session is not None
    device.publish(f"{PRINTER}/telemetry", _telemetry(now, running=True, power_w=61.0))
    eid, started = _event("session_started", resp.session, format_ts(now), badge=QUINN, offline=False)
    device.publish(f"{PRINTER}/event", started)
    assert decode_as(Ack, device.next(f"{PRINTER}/ack", timeout=10)).ids == [eid]
    with lab.session() as s:
        session = s.get(MachineSession, resp.session)
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert session is not None and session.offline is False
        assert printer is not None and printer.live_power_w == 61.0

    # One /metrics for both: the tap half's decisions and the ingest half's messages.
    def counted() -> bool:
        found = split.metrics()
        return (
            found.get('werkbank_decisions_total{reason="ok"}') == 1.0
            and found.get('werkbank_messages_handled_total{kind="event"}') == 1.0
            and found.get('werkbank_messages_handled_total{kind="telemetry"}') == 1.0
            and found.get("werkbank_bridge_connected") == 1.0
        )

    assert wait_until(counted, 10, interval=0.2), split.metrics()


def test_bridge_command_halves_end_together(split: BridgeCommand) -> None:
    (child,) = split.children()
    # The ingest half dies: the tap half stops too, with an error, so systemd starts both again.
    os.kill(child, signal.SIGKILL)
    assert split.proc.wait(timeout=20) == 1
    split._reader.join(timeout=5)
    assert split.said("the ingest half ended"), split.log


def test_bridge_command_ingest_half_stops_when_the_tap_half_is_killed(split: BridgeCommand) -> None:
    (child,) = split.children()
    split.proc.kill()  # kill -9: no chance to stop its child
    split.proc.wait(timeout=10)
    assert wait_until(lambda: not _alive(child), 20), "the ingest half outlived the tap half"


@pytest.mark.parametrize("setting", ["0", "1"])
def test_bridge_command_is_one_process_on_sqlite_or_when_told(
    lab: Database, database_url: str, mqtt_url: str, tmp_path: Path, setting: str
) -> None:
    # 0 (the default): two processes on PostgreSQL, one on SQLite (one writer at a time there).
    command = BridgeCommand(database_url, mqtt_url, tmp_path, WERKBANK_BRIDGE_PROCESSES=setting)
    split = setting == "0" and not database_url.startswith("sqlite")
    try:
        assert wait_until(lambda: command.said("bridge connected to"), 60), command.log
        assert len(command.children()) == (1 if split else 0)
        assert command.said("(its tap and ingest halves)") == split
    finally:
        command.stop()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("WERKBANK_BRIDGE_PROCESSES", "3", "WERKBANK_BRIDGE_PROCESSES must be 0 (automatic), 1 or 2, not 3"),
        ("WERKBANK_BRIDGE_INGEST_NICE", "25", "WERKBANK_BRIDGE_INGEST_NICE must be between 0 and 19, not 25"),
        ("WERKBANK_BRIDGE_PROCESSES", "two", "WERKBANK_BRIDGE_PROCESSES='two' must be a whole number"),
    ],
)
def test_bridge_command_refuses_bad_process_settings(
    lab: Database, database_url: str, mqtt_url: str, tmp_path: Path, setting: str, value: str, message: str
) -> None:
    command = BridgeCommand(database_url, mqtt_url, tmp_path, **{setting: value})
    try:
        assert command.proc.wait(timeout=60) != 0
        command._reader.join(timeout=5)
        assert command.said(message), command.log
        assert command.children() == []
    finally:
        command.stop()


def test_bridge_metrics_say_disconnected_until_the_ingest_half_reports(lab: Database, mqtt_url: str) -> None:
    bridge = Bridge(lab, mqtt_url, role="taps")
    bridge.connected.set()
    bridge.peer = {"connected": False}
    text = _scrape(bridge)
    assert "werkbank_bridge_connected 0.0" in text
    bridge.peer = json.loads(
        json.dumps({"connected": True, "handled": {"telemetry": 7}, "telemetry_received": 9})
    )
    text = _scrape(bridge)
    assert "werkbank_bridge_connected 1.0" in text
    assert 'werkbank_messages_handled_total{kind="telemetry"} 7.0' in text
    assert "werkbank_telemetry_received_total 9.0" in text


def _scrape(bridge: Bridge) -> str:
    from prometheus_client import generate_latest

    return generate_latest(bridge.metrics.registry).decode()
