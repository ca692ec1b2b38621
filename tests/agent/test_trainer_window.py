"""A trainer at the machine: the agent's trainer window, against a real broker and mock pins.

The server stand-in (Responder) says which badges are trainers and answers supervise and
certify requests; the relay's pin history shows whether the power ever dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent.agent import LOCAL_MESSAGES, Agent
from tests.agent.helpers import (
    ADA,
    EVE,
    KEY,
    ManualClock,
    Responder,
    allowlist_document,
    make_config,
    payload_of,
    relay_closed,
    wait_until,
)
from tests.agent.monitor_helpers import ControlledMonitor
from werkbank_protocol.allowlist import badge_hash, sign
from werkbank_protocol.topics import Suffix

StartAgent = Callable[..., Agent]
TINA = "04C0FFEE"  # a trainer
RELAY_PIN = 17
GREEN_PIN = 22


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def trainer_agent(
    start_agent: StartAgent, responder: Responder, clock: ManualClock, tmp_path: Path, mqtt_url: str
) -> Agent:
    responder.answers[TINA] = ("allow", "ok", None)
    responder.trainers.add(TINA)
    return start_agent(make_config(tmp_path, mqtt_url, session={"trainer_window_s": 30}), clock=clock)


def _relay_opened_since_first_close(pins: MockFactory) -> bool:
    """Active-low relay: closed = low. Did the pin go high again after it was first driven low?
    (The history starts with the mock pin's own low before the relay claimed it, then high.)"""
    states = [s.state for s in pins.pin(RELAY_PIN).states]
    first_close = states.index(False, states.index(True))
    return any(states[first_close:])


def test_trainer_window_opens_when_the_server_says_trainer(
    trainer_agent: Agent, responder: Responder, pins: MockFactory
) -> None:
    decision = trainer_agent.tap(TINA)
    assert decision.outcome == "unlocked" and relay_closed(pins)
    assert trainer_agent.trainer_window == "supervise"
    assert decision.message["en"] == "Hello! " + LOCAL_MESSAGES["trainer_window"]["en"].format(s="30")
    assert "Karte der Person auflegen = betreuen" in decision.message["de"]


def test_trainer_window_not_for_a_plain_user(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    trainer_agent.tap(ADA)
    assert trainer_agent.trainer_window is None
    assert trainer_agent.tap(EVE).reason == "in_use"
    clock.advance(1)
    assert trainer_agent.tap(ADA).reason == "tap_out"


def test_trainer_window_participant_badge_hands_over_with_relay_closed_throughout(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    responder.mode_answers[(ADA, "supervise")] = ("allow", "ok")
    trainer_session = trainer_agent.tap(TINA).session
    clock.advance(5)
    decision = trainer_agent.tap(ADA)
    assert decision.outcome == "unlocked" and decision.message["en"] == "supervise yes"
    assert decision.session not in (None, trainer_session)
    assert relay_closed(pins) and not _relay_opened_since_first_close(pins), "the power never dropped"
    assert trainer_agent.session_id == decision.session and trainer_agent.trainer_window is None

    supervise = responder.requests[-1]
    assert (supervise.badge, supervise.mode, supervise.trainer_badge) == (ADA, "supervise", TINA)
    (ended,) = responder.wait_event("session_ended")
    assert ended.session == trainer_session and ended.reason == "tap_out" and ended.unlocked_s >= 5
    started = responder.wait_event("session_started", 2)[-1]
    assert (started.session, started.badge, started.mode, started.trainer_badge) == (
        decision.session,
        ADA,
        "supervise",
        TINA,
    )
    # A restart now would carry on (or report) the participant's supervised session.
    stored = trainer_agent.outbox.open_session()
    assert stored is not None and (stored.id, stored.mode, stored.trainer_badge) == (
        decision.session,
        "supervise",
        TINA,
    )

    # The participant taps out as usual; the relay opens only now.
    clock.advance(5)
    assert trainer_agent.tap(ADA).reason == "tap_out"
    assert not relay_closed(pins)
    ended_supervised = responder.wait_event("session_ended", 2)[-1]
    assert ended_supervised.session == decision.session and ended_supervised.unlocked_s >= 5


def test_trainer_window_trainer_may_end_the_supervised_session(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    responder.mode_answers[(ADA, "supervise")] = ("allow", "ok")
    trainer_agent.tap(TINA)
    supervised = trainer_agent.tap(ADA).session
    clock.advance(1)
    assert trainer_agent.tap(EVE).reason == "in_use"
    decision = trainer_agent.tap(TINA)
    assert (decision.outcome, decision.session) == ("locked", supervised)
    assert not relay_closed(pins)


def test_trainer_window_denied_participant_leaves_the_trainer_session_running(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    trainer_session = trainer_agent.tap(TINA).session
    decision = trainer_agent.tap(EVE)
    assert (decision.outcome, decision.reason, decision.message["en"]) == (
        "denied",
        "not_qualified",
        "supervise no",
    )
    assert trainer_agent.session_id == trainer_session and relay_closed(pins)
    assert not _relay_opened_since_first_close(pins)
    assert trainer_agent.trainer_window == "supervise", "the trainer may try another participant"
    assert responder.events_of("session_ended") == []


def test_trainer_window_own_badge_arms_signoff_and_certify_starts_no_session(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    responder.mode_answers[(ADA, "certify")] = ("allow", "ok")
    trainer_session = trainer_agent.tap(TINA).session
    assert trainer_agent.tap(TINA).outcome == "ignored", "within the tap-out grace"
    clock.advance(1)
    armed = trainer_agent.tap(TINA)
    assert (armed.outcome, armed.reason, armed.message) == (
        "armed",
        "signoff_armed",
        LOCAL_MESSAGES["signoff_armed"],
    )
    assert trainer_agent.trainer_window == "certify" and relay_closed(pins)
    # Sign-off armed: the green LED blinks (on and off again), unlike the steady "unlocked".
    green = pins.pin(GREEN_PIN)
    assert wait_until(lambda: sum(1 for s in green.states if s.state is False) >= 3, 2)

    recorded = trainer_agent.tap(ADA)
    assert (recorded.outcome, recorded.reason, recorded.message["en"]) == ("recorded", "ok", "certify yes")
    certify = responder.requests[-1]
    assert (certify.badge, certify.mode, certify.trainer_badge) == (ADA, "certify", TINA)
    assert trainer_agent.session_id == trainer_session, "the trainer's session carries on"
    assert trainer_agent.trainer_window is None and relay_closed(pins)
    assert len(responder.wait_event("session_started")) == 1, "a sign-off is no session"
    assert responder.events_of("session_ended") == []

    # The window is closed: the trainer's own badge taps out again.
    clock.advance(1)
    assert trainer_agent.tap(TINA).reason == "tap_out"
    assert not relay_closed(pins)


def test_trainer_window_armed_signoff_own_badge_again_taps_out(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    trainer_agent.tap(TINA)
    clock.advance(1)
    assert trainer_agent.tap(TINA).outcome == "armed"
    clock.advance(1)
    assert trainer_agent.tap(TINA).reason == "tap_out"
    assert not relay_closed(pins) and trainer_agent.trainer_window is None


def test_trainer_window_expires_then_the_usual_rules_apply(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    responder.mode_answers[(ADA, "supervise")] = ("allow", "ok")
    trainer_agent.tap(TINA)
    clock.advance(31)
    assert wait_until(lambda: trainer_agent.trainer_window is None), "closed by the main loop's timer"
    assert trainer_agent.tap(ADA).reason == "in_use"
    assert [r.mode for r in responder.requests] == ["use"], "no supervise request after the window"
    assert trainer_agent.tap(TINA).reason == "tap_out"
    assert not relay_closed(pins)


def test_trainer_window_armed_signoff_expires_too(
    trainer_agent: Agent, responder: Responder, clock: ManualClock, pins: MockFactory
) -> None:
    trainer_agent.tap(TINA)
    clock.advance(20)
    assert trainer_agent.tap(TINA).outcome == "armed"
    clock.advance(20)  # 40 s after the unlock, but only 20 s after arming: still armed
    assert trainer_agent.trainer_window == "certify"
    clock.advance(11)
    assert wait_until(lambda: trainer_agent.trainer_window is None)
    assert pins.pin(GREEN_PIN).state is True, "green steady again"


def test_trainer_window_server_silent_refuses_supervise_and_keeps_the_session(
    trainer_agent: Agent, responder: Responder, pins: MockFactory
) -> None:
    responder.mode_answers[(ADA, "supervise")] = ("allow", "ok")
    trainer_session = trainer_agent.tap(TINA).session
    responder.silent = True
    decision = trainer_agent.tap(ADA)
    assert (decision.outcome, decision.reason, decision.offline) == ("denied", "server_needed", True)
    assert decision.message == LOCAL_MESSAGES["server_needed"]
    assert trainer_agent.session_id == trainer_session and relay_closed(pins)
    assert not _relay_opened_since_first_close(pins)


def test_trainer_window_offline_trainer_from_the_allowlist_refuses_supervise(
    trainer_agent: Agent, responder: Responder, pins: MockFactory
) -> None:
    device = trainer_agent.config.device_id
    document = allowlist_document(version=3, badges={TINA: None})
    document["entries"][0]["trainer"] = True
    document.pop("sig")
    signed = sign(KEY, document)
    assert signed["entries"][0]["badge_hash"] == badge_hash(KEY, TINA)
    responder.publish(device, Suffix.ALLOWLIST, payload_of(signed), retain=True)
    assert wait_until(lambda: trainer_agent.allowlist.version == 3)
    responder.silent = True

    unlocked = trainer_agent.tap(TINA)
    assert (unlocked.outcome, unlocked.reason) == ("unlocked", "offline_ok")
    assert trainer_agent.trainer_window == "supervise"
    refused = trainer_agent.tap(ADA)
    assert refused.reason == "server_needed" and relay_closed(pins)
    assert trainer_agent.session_id == unlocked.session


def test_trainer_window_zero_seconds_turns_it_off(
    start_agent: StartAgent, responder: Responder, tmp_path: Path, mqtt_url: str, pins: MockFactory
) -> None:
    responder.answers[TINA] = ("allow", "ok", None)
    responder.trainers.add(TINA)
    clock = ManualClock()
    agent = start_agent(make_config(tmp_path, mqtt_url, session={"trainer_window_s": 0}), clock=clock)
    assert agent.tap(TINA).message == {"de": "Hallo!", "en": "Hello!"}
    assert agent.trainer_window is None
    clock.advance(1)
    assert agent.tap(TINA).reason == "tap_out"


def test_trainer_window_no_handover_while_the_trainers_job_runs(
    start_agent: StartAgent, responder: Responder, tmp_path: Path, mqtt_url: str, pins: MockFactory
) -> None:
    responder.answers[TINA] = ("allow", "ok", None)
    responder.trainers.add(TINA)
    responder.mode_answers[(ADA, "supervise")] = ("allow", "ok")
    monitor = ControlledMonitor()
    agent = start_agent(make_config(tmp_path, mqtt_url), monitor=monitor)
    trainer_session = agent.tap(TINA).session
    monitor.start_job()
    assert wait_until(lambda: agent.job_id is not None)
    decision = agent.tap(ADA)
    assert (decision.outcome, decision.reason) == ("denied", "job_running_handover")
    assert decision.message == LOCAL_MESSAGES["job_running_handover"]
    assert agent.session_id == trainer_session and relay_closed(pins)
    assert [r.mode for r in responder.requests] == ["use"], "the server was not asked"
