"""Real processes: an agent killed with SIGKILL mid-session, and the demo `werkbank up` starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session

from server.broker import free_port, wait_for_port
from server.models import Machine, MachineSession, StoredEvent
from server.services import decision
from tests.e2e.conftest import System, eventually
from tests.mqtt_peer import Peer

ROOT = Path(__file__).resolve().parents[2]
QUINN = "04A224B2C35E80"


def _agent_process(config: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, GPIOZERO_PIN_FACTORY="mock")
    return subprocess.Popen(
        [sys.executable, "-m", "device_agent", "--config", str(config), "--simulate"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_e2e_agent_killed_mid_session_carries_on_and_replays_its_outbox(
    system: System, tmp_path: Path
) -> None:
    system.start_bridge()
    config = system.config_file("pi-laser-1")
    peer = Peer(system.mqtt_url)
    base = "werkbank/v1/dev/pi-laser-1"
    peer.subscribe(f"{base}/event")
    peer.subscribe(f"{base}/status")
    agent = _agent_process(config)
    try:
        # online, and holding the allow-list the bridge published for it
        assert eventually(
            lambda: any(
                json.loads(p or b"{}").get("allowlist_version") for p in peer.drain(f"{base}/status")
            ),
            timeout=10,
        )
        system.stop_bridge()  # the server goes away: the tap is decided offline and not acknowledged

        peer.publish(f"{base}/sim/tap", json.dumps({"v": 1, "badge": QUINN}))
        started = json.loads(peer.next(f"{base}/event", timeout=10))
        unlocked = time.monotonic()  # (after waiting auth_timeout_s for the server)
        assert started["type"] == "session_started" and started["offline"] is True

        agent.send_signal(signal.SIGKILL)  # the agent crashes mid-session; the Pi keeps running
        agent.wait(timeout=5)
        peer.drain(f"{base}/status")  # what the killed agent said

        system.start_bridge()
        agent = _agent_process(config)
        with system.db.session() as s:
            assert eventually(lambda: s.get(MachineSession, started["session"]) is not None, timeout=15)
        # Same boot: the session carries on with the relay held, and Quinn's next tap ends it.
        assert eventually(
            lambda: any(
                json.loads(p or b"{}").get("state") == "unlocked" for p in peer.drain(f"{base}/status")
            ),
            timeout=15,
        )
        peer.publish(f"{base}/sim/tap", json.dumps({"v": 1, "badge": QUINN}))
        tapped_out = time.monotonic()
        assert eventually(lambda: _ended(system, started["session"]), timeout=15)
        with system.db.session() as s:
            row = s.get(MachineSession, started["session"])
            assert row is not None and row.offline and row.end_reason == "tap_out"
            assert row.unlocked_s is not None
            assert abs(row.unlocked_s - (tapped_out - unlocked)) < 1.0, "the hours across the crash count"
            assert s.scalar(select(func.count()).select_from(StoredEvent)) == 2  # each stored once
    finally:
        agent.kill()
        agent.wait(timeout=5)
        peer.close()


def _ended(system: System, session_id: str) -> bool:
    with system.db.session() as s:
        row = s.get(MachineSession, session_id)
        return row is not None and row.ended_at is not None and row.started_at is not None


def test_e2e_demo_answers_http_and_a_simulated_tap_becomes_a_session(tmp_path: Path) -> None:
    """What `make run` starts: embedded broker, web, bridge, scheduler and six simulated agents."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_URL", "DATABASE_URL", "SECRET_KEY")}
    env |= {"WERKBANK_VAR_DIR": str(tmp_path), "WERKBANK_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    werkbank = [sys.executable, "-m", "server"]
    up = subprocess.Popen(
        [*werkbank, "up"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            assert resp.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200  # the login page
        engine = create_engine(f"sqlite:///{tmp_path / 'werkbank.db'}")

        def agents_online() -> bool:
            with engine.connect() as conn:
                return conn.execute(text("SELECT count(*) FROM devices WHERE online")).scalar() == 6

        assert eventually(agents_online, timeout=30)

        def tap(machine: str, uid: str) -> str:
            command = [*werkbank, "tap", machine, uid]
            done = subprocess.run(  # noqa: PLW1510 - the return code is asserted below
                command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        begun = datetime.now(UTC) - timedelta(seconds=1)
        with Session(engine) as s:
            printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
            assert printer is not None
            is_open = decision.opening_window(s, printer, begun)[0]
        if not is_open:
            # The demo lab keeps opening hours: out of them every tap is refused, and says when it opens.
            assert tap("printer-1", "04A224B2C35E80").startswith("deny (outside_opening_hours)")
        else:
            assert tap("printer-1", "04A224B2C35E80").startswith("allow (ok): Hello Kemal")
            assert tap("laser-1", "DEADBEEF").startswith("deny (not_qualified)")
            # The agent ignores the same badge for 2 s after unlocking (a badge left on the reader).
            time.sleep(2.1)
            assert tap("printer-1", "04A224B2C35E80").startswith("session ended (tap_out)")

            def session_stored() -> bool:
                with Session(engine) as s:
                    # The demo lab comes with months of generated history: find the tapped session.
                    row = s.scalar(select(MachineSession).where(MachineSession.started_at >= begun))
                    return row is not None and row.end_reason == "tap_out" and (row.unlocked_s or 0) > 2

            assert eventually(session_stored, timeout=10)
        engine.dispose()
    finally:
        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=30)
    output = out.decode()
    assert up.returncode == 0, output
    assert f"http://127.0.0.1:{port}/" in output and "trainer@demo.werkbank.local" in output
    assert "werkbank up: stopped" in output
