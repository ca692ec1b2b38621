"""The agent against a real broker, with a real paho client standing in for the server.

Relay and LEDs are gpiozero devices on MockFactory pins; the assertions read the pins.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.agent import LOCAL_MESSAGES, Agent
from device_agent.allowlist_store import AllowlistStore
from device_agent.storage import AgentState, OpenSession, StateFile
from server.broker import free_port
from tests.agent.helpers import (
    ADA,
    BOB,
    EVE,
    KEY,
    MACHINE,
    ManualClock,
    Responder,
    allowlist_document,
    make_config,
    payload_of,
    relay_closed,
    session_on_disk,
    wait_until,
)
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SimTap, encode
from werkbank_protocol.topics import Suffix

StartAgent = Callable[..., Agent]


def test_agent_online_allow_closes_relay_and_reports_session_started(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    assert not relay_closed(pins)
    decision = agent.tap(ADA)
    assert decision.outcome == "unlocked" and decision.reason == "ok" and not decision.offline
    assert agent.last_message == {"de": "Hallo!", "en": "Hello!"}, "the server's message is shown"
    assert relay_closed(pins)
    assert agent.state == "unlocked" and agent.session_id == decision.session
    assert pins.pin(22).state is True, "green LED on"
    (request,) = responder.requests
    assert request.badge == ADA and request.mode == "use"
    (started,) = responder.wait_event("session_started")
    assert started.session == decision.session and started.badge == ADA and started.offline is False
    device = agent.config.device_id
    assert responder.wait_for(
        lambda: any(s.get("state") == "unlocked" for s in responder.statuses_of(device))
    )


def test_agent_tap_out_opens_relay_and_reports_session_ended(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    session = agent.tap(ADA).session
    time.sleep(0.25)  # past tap_out_grace_s (0.2 s in these tests)
    decision = agent.tap(ADA)
    assert decision.outcome == "locked" and decision.reason == "tap_out"
    assert decision.message == LOCAL_MESSAGES["session_ended"]
    assert not relay_closed(pins) and agent.state == "locked" and agent.session_id is None
    assert pins.pin(22).state is False, "green LED off"
    (ended,) = responder.wait_event("session_ended")
    assert ended.session == session and ended.reason == "tap_out"
    assert 0.25 <= ended.unlocked_s < 2 and ended.run_s == 0
    assert len(responder.requests) == 1, "tapping out asks nobody"


def test_agent_same_badge_within_grace_is_ignored(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent(make_config(tmp_path, mqtt_url, session={"tap_out_grace_s": 5}))
    agent.tap(ADA)
    assert agent.tap(ADA).outcome == "ignored"
    assert relay_closed(pins) and agent.state == "unlocked"
    assert len(responder.requests) == 1


def test_agent_other_badge_while_unlocked_is_denied_locally(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    session = agent.tap(ADA).session
    decision = agent.tap(BOB)
    assert decision.outcome == "denied" and decision.reason == "in_use"
    assert decision.message == {
        "de": "Maschine ist belegt. Bitte warten, bis sie frei ist.",
        "en": "Machine in use. Please wait until it is free.",
    }
    assert relay_closed(pins) and agent.session_id == session
    assert [r.badge for r in responder.requests] == [ADA], "no request for the second badge"


def test_agent_online_deny_keeps_relay_open(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    decision = agent.tap(EVE)
    assert decision.outcome == "denied" and decision.reason == "not_qualified"
    assert agent.last_message == {"de": "Keine Freigabe.", "en": "Not cleared."}
    assert not relay_closed(pins) and agent.state == "locked"
    assert any(s.state for s in pins.pin(27).states[1:]), "red LED blinked"
    time.sleep(0.1)
    assert responder.events == [], "a denial is no session"


def test_agent_decides_offline_from_signed_allowlist_when_server_is_silent(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    device = agent.config.device_id
    responder.publish(device, Suffix.ALLOWLIST, payload_of(allowlist_document(version=4)), retain=True)
    assert wait_until(lambda: agent.allowlist.version == 4)
    assert responder.wait_for(
        lambda: any(s.get("allowlist_version") == 4 for s in responder.statuses_of(device))
    )
    responder.silent = True

    started = time.monotonic()
    decision = agent.tap(ADA)
    waited = time.monotonic() - started
    assert 0.5 <= waited < 1.5, f"waited {waited:.2f} s for the server (auth_timeout_s = 0.5)"
    assert decision.outcome == "unlocked" and decision.offline and decision.reason == "offline_ok"
    assert relay_closed(pins)
    assert pins.pin(23).state is True, "amber LED: deciding offline"
    (event,) = responder.wait_event("session_started")
    assert event.offline is True and event.session == decision.session
    uuid.UUID(event.session)  # the agent made it

    time.sleep(0.2)
    agent.tap(ADA)  # tap out
    denied = agent.tap(EVE)
    assert denied.outcome == "denied" and denied.reason == "offline_denied" and denied.offline
    assert not relay_closed(pins)

    responder.silent = False
    assert agent.tap(BOB).outcome == "unlocked"
    assert pins.pin(23).state is False, "amber off: the server answers again"


def test_agent_decides_offline_when_the_broker_is_down(
    tmp_path: Path, start_agent: StartAgent, pins: MockFactory
) -> None:
    config = make_config(tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    store = AllowlistStore(Path(config.storage_dir) / "allowlist.json", KEY, MACHINE)
    assert store.offer(payload_of(allowlist_document(version=2)), datetime.now(UTC))
    agent = start_agent(config, wait=False)
    started = time.monotonic()
    decision = agent.tap(ADA)
    assert time.monotonic() - started < 0.3, "no waiting when there is no connection"
    assert decision.outcome == "unlocked" and decision.offline and relay_closed(pins)
    assert agent.tap(EVE).outcome == "denied"
    assert len(agent.outbox) == 1, "session_started waits in the outbox"


def test_agent_resends_unacked_events_with_the_same_id_until_acked(
    start_agent: StartAgent, responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Agent, "RESEND_MIN_S", 0.1)
    responder.auto_ack = False
    agent = start_agent()
    agent.tap(ADA)
    sent = responder.wait_event("session_started", count=3, timeout=3, copies=True)
    assert len({e.id for e in sent}) == 1, "re-sent with the same id"
    assert len(agent.outbox) == 1

    responder.ack(agent.config.device_id, [sent[0].id])
    assert wait_until(lambda: len(agent.outbox) == 0)
    count = len(responder.events_of("session_started", copies=True))
    time.sleep(0.5)
    assert len(responder.events_of("session_started", copies=True)) == count, "no re-sends after the ack"


def test_agent_resends_a_lost_event_while_newer_ones_are_acked(
    start_agent: StartAgent, responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event lost on its way (with a bridge killed while it held it) is sent again within
    the resend delay even while the machine is busy and newer events are acked: before, every
    ack put the re-send off again, so a lost session end waited until the taps stopped, and the
    server counted the session open meanwhile (and refused the person their next machine)."""
    monkeypatch.setattr(Agent, "RESEND_MIN_S", 0.5)
    responder.auto_ack = False
    agent = start_agent()
    assert agent.tap(ADA).outcome == "unlocked"
    lost = responder.wait_event("session_started")[0]
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # Ada taps out and in again, her events are acked
        time.sleep(0.25)
        agent.tap(ADA)
        newer = [e.id for e in responder.events if e.id != lost.id]
        responder.ack(agent.config.device_id, newer)
    copies = [e for e in responder.events_of("session_started", copies=True) if e.id == lost.id]
    assert len(copies) >= 2, "the lost start was sent again while the newer events were acked"


def test_agent_ack_deletes_acked_events_only(start_agent: StartAgent, responder: Responder) -> None:
    responder.auto_ack = False
    agent = start_agent()
    agent.tap(ADA)
    time.sleep(0.25)
    agent.tap(ADA)
    started = responder.wait_event("session_started")[0]
    responder.wait_event("session_ended")
    assert len(agent.outbox) == 2
    responder.ack(agent.config.device_id, [started.id, str(uuid.uuid4())])
    assert wait_until(lambda: len(agent.outbox) == 1)
    assert [i for i, _ in agent.outbox.pending()] == [responder.events_of("session_ended")[0].id]


def test_agent_outbox_is_replayed_after_reconnect(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder
) -> None:
    responder.auto_ack = False
    config = make_config(tmp_path, mqtt_url)
    first = start_agent(config)
    first.tap(ADA)
    (started,) = responder.wait_event("session_started")
    first.stop()
    responder.auto_ack = True
    second = start_agent(config)
    responder.wait_event("session_started", count=2, copies=True)
    assert wait_until(lambda: len(second.outbox) == 0)
    assert {e.id for e in responder.events_of("session_started", copies=True)} == {started.id}


def test_agent_power_loss_in_an_older_agents_state_file_is_reported_at_its_last_heartbeat(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    # Agents before this one kept the open session in state.json, without boot readings.
    config = make_config(tmp_path, mqtt_url)
    session_id = str(uuid.uuid4())
    started = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    heartbeat = started + timedelta(minutes=42)
    record = OpenSession(
        id=session_id,
        badge=ADA,
        offline=True,
        started=format_ts(started),
        start_event=str(uuid.uuid4()),
        heartbeat=format_ts(heartbeat),
        unlocked_s=2520.0,
        run_s=0.0,
    )
    StateFile(Path(config.storage_dir) / "state.json").save(AgentState(session=record))

    agent = start_agent(config)
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "power_loss_recovered" and ended.session == session_id
    assert ended.ts == format_ts(heartbeat), "ends at the last heartbeat: no invented times"
    assert ended.unlocked_s == 2520.0
    (replayed,) = responder.wait_event("session_started")
    assert replayed.id == record.start_event and replayed.ts == record.started and replayed.offline
    assert not relay_closed(pins) and agent.state == "locked"
    assert not (Path(config.storage_dir) / "state.json").exists(), "taken over once"
    assert agent.outbox.open_session() is None
    assert wait_until(lambda: len(agent.outbox) == 0)


def test_agent_restart_in_the_same_boot_carries_on_the_session_and_its_hours(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    config = make_config(tmp_path, mqtt_url)
    first = start_agent(config)
    tapped = time.monotonic()
    session = first.tap(ADA).session
    first.stop()  # SIGTERM; a crash is test_crash.py's
    stored = session_on_disk(config)
    assert stored is not None and stored.id == session

    second = start_agent(config)
    assert [s.state for s in pins.pin(17).states] == [False], "made closed: the relay never opened"
    assert second.session_id == session and second.state == "unlocked"
    time.sleep(0.3)
    assert responder.events_of("session_ended") == [], "not reported lost"
    decision = second.tap(ADA)
    assert (decision.outcome, decision.session) == ("locked", session), "the tap ends the same session"
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.session == session
    assert abs(ended.unlocked_s - (time.monotonic() - tapped)) < 0.5, "both processes' time counts"
    assert len(responder.events_of("session_started")) == 1
    assert second.state == "locked" and not relay_closed(pins)


def test_agent_reboot_reports_the_session_ended_at_its_last_alive_mark(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    config = make_config(tmp_path, mqtt_url)
    clock = ManualClock()
    first = start_agent(config, clock=clock)
    session = first.tap(ADA).session
    first.stop()
    stored = session_on_disk(config)
    assert stored is not None

    clock.boot = "after-the-power-cut"  # the Pi booted again: the relay had dropped
    second = start_agent(config, clock=clock)
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "power_loss_recovered" and ended.session == session
    assert ended.ts == stored.heartbeat and ended.unlocked_s == stored.unlocked_s
    assert second.state == "locked" and not relay_closed(pins)
    assert second.outbox.open_session() is None


@pytest.mark.parametrize("send_until_s", [True, False], ids=["until_s", "older-server"])
def test_agent_ends_session_at_until(
    start_agent: StartAgent, responder: Responder, pins: MockFactory, send_until_s: bool
) -> None:
    responder.send_until_s = send_until_s
    until = datetime.now(UTC) + timedelta(seconds=0.4)
    responder.answers[ADA] = ("allow", "ok", format_ts(until))
    agent = start_agent()
    session = agent.tap(ADA).session
    assert relay_closed(pins)
    (ended,) = responder.wait_event("session_ended", timeout=3)
    assert ended.session == session and ended.reason == "max_duration"
    assert datetime.now(UTC) >= until and not relay_closed(pins)


def test_agent_idle_timeout(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent(make_config(tmp_path, mqtt_url, session={"idle_timeout_s": 0.3}))
    agent.tap(ADA)
    (ended,) = responder.wait_event("session_ended", timeout=3)
    assert ended.reason == "idle_timeout" and 0.3 <= ended.unlocked_s < 1.5
    assert not relay_closed(pins)


def test_agent_remote_lock_and_duplicate_commands(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    device = agent.config.device_id
    session = agent.tap(ADA).session
    responder.cmd(device, "lock", session=str(uuid.uuid4()))  # for another session: ignored
    cmd_id = responder.cmd(device, "identify")
    assert wait_until(lambda: any(s.state for s in pins.pin(22).states[-3:]) and len(pins.pin(22).states) > 3)
    assert relay_closed(pins) and agent.session_id == session

    responder.cmd(device, "lock", session=session, reason="closing time")
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "remote_lock" and ended.session == session and not relay_closed(pins)

    agent.tap(BOB)
    responder.cmd(device, "identify", cmd_id=cmd_id)  # a QoS 1 duplicate of an old command id
    responder.cmd(device, "unlock")
    responder.cmd(device, "refresh_allowlist")
    responder.cmd(device, "reload_config")
    time.sleep(0.2)
    assert relay_closed(pins) and agent.state == "unlocked"


def test_agent_sim_tap_topic_presents_a_badge(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    tap_id = str(uuid.uuid4())
    for _ in range(2):  # the same tap delivered twice counts once
        responder.publish(agent.config.device_id, Suffix.SIM_TAP, encode(SimTap(v=1, badge=ADA, id=tap_id)))
    (started,) = responder.wait_event("session_started")
    assert started.badge == ADA and relay_closed(pins)
    time.sleep(0.3)
    assert agent.state == "unlocked"


def test_agent_survives_bad_messages(
    start_agent: StartAgent, responder: Responder, pins: MockFactory
) -> None:
    agent = start_agent()
    device = agent.config.device_id
    responder.publish(device, Suffix.CMD, b"not json")
    responder.publish(device, Suffix.ACK, b'{"v":2,"ids":[]}')
    responder.publish(device, Suffix.AUTH_RESP, b'{"v":1}')
    responder.publish(device, Suffix.ALLOWLIST, b'{"v":1,"version":9}')
    responder.publish(device, Suffix.SIM_TAP, b'{"v":1,"badge":"not-hex"}')
    assert wait_until(lambda: sum(agent.rejected.values()) == 5), agent.rejected
    assert agent.rejected["cmd:not_json"] == 1 and agent.rejected["ack:wrong_version"] == 1
    assert agent.allowlist.version is None
    assert agent.tap(ADA).outcome == "unlocked" and relay_closed(pins)


def test_agent_status_and_telemetry(
    start_agent: StartAgent, responder: Responder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Agent, "TELEMETRY_S", 0.1)
    agent = start_agent()
    device = agent.config.device_id
    assert responder.wait_for(lambda: bool(responder.statuses_of(device)))
    status = responder.statuses_of(device)[-1]
    assert status == {
        "v": 1,
        "online": True,
        "state": "locked",
        "machine": "printer-1",
        "fw": status["fw"],
        "config": agent.config.hash,
        "ts": status["ts"],
        # When `ts` was taken on the boot clock: what lets the server place this boot's events.
        "boot": agent.clock.boot_id(),
        "mono_s": status["mono_s"],
        # Its health (tests/agent/test_health.py): nothing waits; no allow-list held yet.
        "outbox_depth": 0,
    }
    assert abs(status["mono_s"] - agent.clock.monotonic()) < 5
    session = agent.tap(ADA).session
    assert responder.wait_for(lambda: len(responder.telemetry) >= 2, timeout=2)
    assert responder.telemetry[-1]["session"] == session and responder.telemetry[-1]["running"] is False
    agent.stop()
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1] == {"v": 1, "online": False})


def test_agent_reader_failure_is_a_fault(
    tmp_path: Path, mqtt_url: str, start_agent: StartAgent, responder: Responder
) -> None:
    from device_agent.hardware.simulated import SimulatedReader

    class FlakyReader(SimulatedReader):
        broken = True

        def poll(self) -> str | None:
            if self.broken:
                raise OSError("SPI read failed")
            return super().poll()

    reader = FlakyReader()
    agent = start_agent(make_config(tmp_path, mqtt_url), reader=reader)
    (fault,) = responder.wait_event("fault")
    assert fault.code == "reader_failed" and "SPI read failed" in fault.detail
    assert agent.state == "fault"
    reader.broken = False
    assert wait_until(lambda: agent.state == "locked")
    assert agent.tap(ADA).outcome == "unlocked"


def test_agent_heartbeat_keeps_state_current(
    tmp_path: Path,
    mqtt_url: str,
    start_agent: StartAgent,
    responder: Responder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Agent, "ALIVE_S", 0.1)
    config = make_config(tmp_path, mqtt_url)
    agent = start_agent(config)
    session = agent.tap(ADA).session
    first = agent.outbox.open_session()
    assert first is not None and first.id == session and first.heartbeat == first.started
    assert wait_until(lambda: (s := agent.outbox.open_session()) is not None and s.unlocked_s >= 0.2)
    latest = agent.outbox.open_session()
    assert latest is not None and latest.heartbeat > first.heartbeat
    time.sleep(0.25)
    agent.tap(ADA)
    assert agent.outbox.open_session() is None, "a closed session leaves no state behind"


@pytest.mark.parametrize(
    ("language", "expected"),
    [("de", "Hallo Bea!"), ("en", "Hello Bea!"), (None, "Hello Bea!"), ("tr", "Hello Bea!")],
)
def test_agent_decision_text_in_the_persons_language(language: str | None, expected: str) -> None:
    from device_agent.agent import Decision

    decision = Decision(
        "04A224B2C35E80", "unlocked", "ok", {"de": "Hallo Bea!", "en": "Hello Bea!"}, language=language
    )
    assert decision.text == expected
