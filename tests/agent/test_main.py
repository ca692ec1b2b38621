"""``werkbank-agent`` as a process: config errors, signals, and a SIGKILL in the middle of a session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from device_agent.__main__ import main
from device_agent.outbox import Outbox
from tests.agent.helpers import ADA, KEY_HEX, Responder, wait_until
from werkbank_protocol import parse_ts
from werkbank_protocol.messages import SimTap, encode
from werkbank_protocol.topics import Suffix

AGENT = [sys.executable, "-m", "device_agent"]


def write_config(tmp_path: Path, mqtt_url: str, device_id: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[device]
id = "{device_id}"
machine = "printer-1"

[mqtt]
url = "{mqtt_url}"

[server]
auth_timeout_s = 0.5

[allowlist]
key = "{KEY_HEX}"

[storage]
dir = "state"

[reader]
backend = "simulated"
poll_hz = 50

[session]
tap_out_grace_s = 0.2
""",
        encoding="utf-8",
    )
    return path


def test_main_bad_config_exits_2_listing_every_error(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "X"\n[mqtt]\nurl = "http://x"\n[relay]\npin = 99\ncolour = "red"\n')
    script = Path(sys.executable).with_name("werkbank-agent")
    command = [str(script)] if script.exists() else AGENT
    result = subprocess.run(
        [*command, "--config", str(config)], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    for fragment in (
        "[device] id:",
        "[device] machine: missing",
        "[mqtt] url:",
        "[allowlist] key: missing",
        "[reader] backend: missing",
        "[relay] pin: is 99",
        "[relay] colour: unknown key",
    ):
        assert fragment in result.stderr, result.stderr
    assert "has 7 problem(s)" in result.stderr


def test_main_missing_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "none.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_main_sigkill_mid_session_then_restart_carries_on_and_replays_the_outbox(
    tmp_path: Path, mqtt_url: str, responder: Responder
) -> None:
    device = f"kill-{time.monotonic_ns() % 10**9}"
    config = write_config(tmp_path, mqtt_url, device)
    log_file = (tmp_path / "agent.log").open("wb")
    responder.auto_ack = False  # the server "is slow": nothing leaves the outbox

    first = subprocess.Popen(
        [*AGENT, "--config", str(config), "--simulate"], stdout=log_file, stderr=log_file
    )
    try:
        assert responder.wait_for(lambda: any(s.get("online") for s in responder.statuses_of(device)), 15)
        responder.publish(device, Suffix.SIM_TAP, encode(SimTap(v=1, badge=ADA)))
        (started,) = responder.wait_event("session_started")
        unlocked_at = time.monotonic()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    # The broker publishes the last will for the killed agent.
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1] == {"v": 1, "online": False})

    responder.auto_ack = True
    second = subprocess.Popen(
        [*AGENT, "--config", str(config), "--simulate"], stdout=log_file, stderr=log_file
    )
    try:
        replayed = responder.wait_event("session_started", count=2, copies=True, timeout=15)
        assert {e.id for e in replayed} == {started.id}, "the same event again, not a new one"
        # Same boot: the session carries on, and the next tap ends it (test_crash.py times it).
        assert responder.wait_for(lambda: responder.statuses_of(device)[-1].get("state") == "unlocked", 15)
        # A tap within the tap-out grace (0.2 s) of the unlock is the badge still at the reader and
        # is ignored; on a quick machine the restart is over sooner than that.
        time.sleep(max(0.0, unlocked_at + 0.3 - time.monotonic()))
        responder.publish(device, Suffix.SIM_TAP, encode(SimTap(v=1, badge=ADA)))
        (ended,) = responder.wait_event("session_ended", timeout=15)
        assert ended.reason == "tap_out" and ended.session == started.session
        outbox = Outbox(tmp_path / "state" / "outbox.sqlite")
        assert wait_until(lambda: len(outbox) == 0), "every event acked and deleted"
        outbox.close()
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(10) == 0, (tmp_path / "agent.log").read_text()
    # A clean stop publishes the offline status itself (no will is sent).
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1] == {"v": 1, "online": False})
    assert b"SIGTERM received: stopping" in (tmp_path / "agent.log").read_bytes()


def test_main_badges_from_stdin_reach_the_simulated_reader_and_the_clock_seam_shifts_times(
    tmp_path: Path, mqtt_url: str, responder: Responder
) -> None:
    """What the fault suite relies on: a badge typed on stdin is a tap, and
    WERKBANK_FAKE_CLOCK_FILE moves the agent's wall clock (not its durations)."""
    device = f"stdin-{time.monotonic_ns() % 10**9}"
    config = write_config(tmp_path, mqtt_url, device)
    clock = tmp_path / "clock"
    clock.write_text("3600\n")
    log_file = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [*AGENT, "--config", str(config), "--simulate", "--badges-from-stdin"],
        stdin=subprocess.PIPE,
        stdout=log_file,
        stderr=log_file,
        env=dict(os.environ, WERKBANK_FAKE_CLOCK_FILE=str(clock)),
    )
    assert agent.stdin is not None
    try:
        assert responder.wait_for(lambda: any(s.get("online") for s in responder.statuses_of(device)), 15)
        agent.stdin.write(f"{ADA.lower()}\n\n".encode())
        agent.stdin.flush()
        (started,) = responder.wait_event("session_started", timeout=10)
        assert started.badge == ADA
        ahead = (parse_ts(started.ts) - datetime.now(UTC)).total_seconds()
        assert 3590 < ahead < 3610, ahead
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 0, (tmp_path / "agent.log").read_text()
