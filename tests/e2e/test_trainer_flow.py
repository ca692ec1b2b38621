"""A trainer at the machine, end to end: real broker, real bridge and database, real agents on mock pins.

Supervised sessions count toward the supervised hours (tests/data/lab.yaml sets them to
0.001 h = 3.6 s); a practical sign-off at the machine grants the next level; a revoke
reaches the machines' retained allow-lists within seconds.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from device_agent.agent import Agent
from server.models import (
    AccessDecision,
    AuditLog,
    Competency,
    Level,
    Machine,
    MachineSession,
    Person,
    Qualification,
    StepRecord,
)
from server.services import training
from tests.agent.helpers import ManualClock
from tests.conftest import BEA, PETE, TINA
from tests.e2e.conftest import RELAY_PINS, System, eventually
from tests.mqtt_peer import Peer
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import badge_hash, key_bytes
from werkbank_protocol.messages import AuthReq, AuthResp, decode_as, encode

QUINN = "04A224B2C35E80"


def _relay_opened_since_first_close(system: System, device_id: str) -> bool:
    """Active-low relay: closed = low. Did the pin go high again after it was first driven low?"""
    states = [s.state for s in system.pins.pin(RELAY_PINS[device_id]).states]
    first_close = states.index(False, states.index(True))
    return any(states[first_close:])


def _sessions(system: System) -> list[MachineSession]:
    with system.db.session() as s:
        return list(s.scalars(select(MachineSession).order_by(MachineSession.started_at)))


def _level(system: System, name: str, competency: str) -> Qualification | None:
    with system.db.session() as s:
        return s.scalar(
            select(Qualification)
            .join(Person, Person.id == Qualification.person_id)
            .join(Competency, Competency.id == Qualification.competency_id)
            .where(Person.name == name, Competency.slug == competency)
            .order_by(Qualification.id.desc())
            .limit(1)
        )


def _holds(system: System, name: str, competency: str, level: Level) -> bool:
    entry = _level(system, name, competency)
    return entry is not None and entry.level == level


def _person_id(system: System, name: str) -> int:
    with system.db.session() as s:
        found = s.scalar(select(Person.id).where(Person.name == name))
        assert found is not None
        return found


def _supervised_session(system: System, agent: Agent, clock: ManualClock, seconds: float) -> str:
    """Tina unlocks, Bea's badge takes over, ``seconds`` pass (hand-moved clock), Bea taps out."""
    trainer = agent.tap(TINA)
    assert trainer.outcome == "unlocked" and agent.trainer_window == "supervise"
    handover = agent.tap(BEA)
    assert (handover.outcome, handover.reason) == ("unlocked", "ok"), handover.message
    assert handover.message["en"].startswith("Hello Bea! Tina supervises you until")
    clock.advance(seconds)
    assert agent.tap(BEA).reason == "tap_out"
    assert handover.session is not None
    return handover.session


def test_e2e_supervise_handover_keeps_the_relay_closed_and_hours_grant_supervised(
    trainer_system: System,
) -> None:
    system = trainer_system
    system.start_bridge()
    clock = ManualClock()
    agent = system.start_agent("pi-printer-1", clock=clock)

    trainer = agent.tap(TINA)
    assert trainer.outcome == "unlocked" and agent.trainer_window == "supervise"
    assert "within 30 s, tap a participant's badge" in trainer.message["en"]
    clock.advance(2)
    handover = agent.tap(BEA)
    assert handover.outcome == "unlocked" and handover.session != trainer.session
    assert system.relay_closed("pi-printer-1")
    assert not _relay_opened_since_first_close(system, "pi-printer-1"), "the power never dropped"

    tina, bea = _person_id(system, "Tina Trainer"), _person_id(system, "Bea Briefed")
    assert eventually(lambda: len(_sessions(system)) == 2 and _sessions(system)[0].ended_at is not None)
    trainers_session, supervised = _sessions(system)
    assert (trainers_session.id, trainers_session.person_id, trainers_session.end_reason) == (
        trainer.session,
        tina,
        "tap_out",
    )
    assert (supervised.id, supervised.person_id, supervised.trainer_id, supervised.mode) == (
        handover.session,
        bea,
        tina,
        "supervise",
    )
    assert supervised.ended_at is None
    with system.db.session() as s:
        request = s.scalar(select(AccessDecision).where(AccessDecision.mode == "supervise"))
        assert request is not None and request.decision == "allow" and request.person_id == bea

    before = _level(system, "Bea Briefed", "fdm-printing")
    assert before is not None and before.level == Level.BRIEFED
    clock.advance(5)  # 5 s of supervised printing: more than the 3.6 s the lab asks for
    assert agent.tap(BEA).reason == "tap_out"
    assert not system.relay_closed("pi-printer-1")

    assert eventually(lambda: _holds(system, "Bea Briefed", "fdm-printing", Level.SUPERVISED)), (
        "the supervised hours granted the level by themselves"
    )
    granted = _level(system, "Bea Briefed", "fdm-printing")
    assert granted is not None and granted.granted_by_id == tina
    with system.db.session() as s:
        audit = s.scalar(select(AuditLog).where(AuditLog.action == "qualification.granted"))
        assert audit is not None and audit.actor_id == tina and audit.detail["level"] == "supervised"


def test_e2e_signoff_at_the_machine_grants_independent_and_bea_may_work_alone(
    trainer_system: System,
) -> None:
    system = trainer_system
    system.start_bridge()
    clock = ManualClock()
    agent = system.start_agent("pi-printer-1", clock=clock)
    tina = _person_id(system, "Tina Trainer")

    # Before the supervised hours, a sign-off is refused and says what is missing.
    trainer = agent.tap(TINA)
    clock.advance(1)
    assert agent.tap(TINA).outcome == "armed"
    refused = agent.tap(BEA)
    assert (refused.outcome, refused.reason) == ("denied", "not_qualified")
    assert refused.message["en"] == "0 of 0 supervised hours done. Sign off when all are done."
    assert (
        refused.message["de"]
        == "0 von 0 Stunden unter Aufsicht geschafft. Abnahme erst, wenn alle geschafft sind."
    )
    assert agent.session_id == trainer.session and system.relay_closed("pi-printer-1")
    clock.advance(1)
    assert agent.tap(TINA).reason == "tap_out"

    _supervised_session(system, agent, clock, seconds=5)
    assert eventually(lambda: _holds(system, "Bea Briefed", "fdm-printing", Level.SUPERVISED))
    assert agent.tap(BEA).reason == "trainer_required", "supervised is not yet independent"

    # Tina unlocks, taps again to arm the sign-off, then Bea's badge: the sign-off is recorded.
    trainer = agent.tap(TINA)
    clock.advance(1)
    armed = agent.tap(TINA)
    assert (armed.outcome, armed.message["en"]) == ("armed", "Sign-off: now tap the participant's badge.")
    recorded = agent.tap(BEA)
    assert (recorded.outcome, recorded.reason) == ("recorded", "ok")
    assert recorded.message["en"] == "Sign-off recorded for Bea: now Independent in FDM 3D printing."
    assert recorded.message["de"] == "Abnahme für Bea gespeichert: jetzt Selbstständig in FDM-3D-Druck."
    assert agent.session_id == trainer.session, "a sign-off starts no session"
    assert system.relay_closed("pi-printer-1")

    independent = _level(system, "Bea Briefed", "fdm-printing")
    assert independent is not None and independent.level == Level.INDEPENDENT
    assert independent.granted_by_id == tina
    with system.db.session() as s:
        step = s.scalar(select(StepRecord))
        assert step is not None
        assert (step.source, step.recorded_by_id, step.session_id) == ("machine", tina, trainer.session)
        actions = list(s.scalars(select(AuditLog.action).where(AuditLog.actor_id == tina)))
        assert "training.step" in actions and actions.count("qualification.granted") == 2
        certify = s.scalar(
            select(AccessDecision).where(AccessDecision.mode == "certify", AccessDecision.decision == "allow")
        )
        assert certify is not None and certify.session_id is None

    clock.advance(1)
    assert agent.tap(TINA).reason == "tap_out"
    alone = agent.tap(BEA)
    assert (alone.outcome, alone.reason) == ("unlocked", "ok"), "Bea's next plain tap unlocks"
    assert agent.trainer_window is None
    assert system.relay_closed("pi-printer-1")


def test_e2e_printer_trainer_cannot_supervise_on_the_laser(trainer_system: System) -> None:
    system = trainer_system
    system.start_bridge()
    laser = system.start_agent("pi-laser-1")
    printer = system.start_agent("pi-printer-1")

    # The server refuses a supervise request with Pete as the trainer on the laser...
    peer = Peer(system.mqtt_url)
    try:
        peer.subscribe("werkbank/v1/dev/pi-laser-1/auth/resp")
        request = AuthReq(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(datetime.now(UTC)),
            badge=BEA,
            mode="supervise",
            trainer_badge=PETE,
        )
        peer.publish("werkbank/v1/dev/pi-laser-1/auth/req", encode(request))
        while True:
            answer = decode_as(AuthResp, peer.next("werkbank/v1/dev/pi-laser-1/auth/resp"))
            if answer.req == request.id:
                break
    finally:
        peer.close()
    assert (answer.decision, answer.reason, answer.session) == ("deny", "trainer_required", None)
    assert "trainer's badge is not valid" in answer.message["en"]
    assert not system.relay_closed("pi-laser-1")

    # ...and at the laser Pete is a user: no trainer window, so Bea's badge is refused locally.
    pete = laser.tap(PETE)
    assert pete.outcome == "unlocked" and laser.trainer_window is None
    assert "tap a participant's badge" not in pete.message["en"]
    assert laser.tap(BEA).reason == "in_use"
    assert laser.tap(PETE).reason == "tap_out"
    assert not system.relay_closed("pi-laser-1")
    # The session's events and the decision log reach the database just after the answers.
    assert eventually(lambda: len(_sessions(system)) == 1)
    assert _sessions(system)[0].person_id == _person_id(system, "Pete Printtrainer")

    def modes() -> list[str]:
        with system.db.session() as s:
            where = AccessDecision.device_id == "pi-laser-1"
            return sorted(s.scalars(select(AccessDecision.mode).where(where)))

    assert eventually(lambda: modes() == ["supervise", "use"]), modes()

    # On the printers he trains: the window opens.
    assert printer.tap(PETE).outcome == "unlocked" and printer.trainer_window == "supervise"


def test_e2e_trainer_window_expiry_then_participant_tap_is_a_use_tap(trainer_system: System) -> None:
    system = trainer_system
    system.start_bridge()
    clock = ManualClock()
    agent = system.start_agent("pi-printer-1", clock=clock)
    agent.tap(TINA)
    clock.advance(31)
    assert eventually(lambda: agent.trainer_window is None)

    assert agent.tap(BEA).reason == "in_use", "Tina's session is open; no supervise request"
    assert agent.tap(TINA).reason == "tap_out", "after the window the own badge taps out"
    plain = agent.tap(BEA)
    assert (plain.outcome, plain.reason) == ("denied", "trainer_required")
    assert not system.relay_closed("pi-printer-1")

    def modes() -> list[str]:  # the decision log is written just after each answer
        with system.db.session() as s:
            return list(s.scalars(select(AccessDecision.mode).order_by(AccessDecision.decided_at)))

    assert eventually(lambda: len(modes()) == 2)
    assert modes() == ["use", "use"]


def test_e2e_revoke_leaves_the_retained_allowlist_within_5_seconds(trainer_system: System) -> None:
    system = trainer_system
    system.start_bridge()
    agent = system.start_agent("pi-laser-1")
    system.wait_allowlist(agent)
    assert agent.allowlist.check(QUINN, datetime.now(UTC))[0]

    with system.db.session() as s:
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        tina = s.scalar(select(Person).where(Person.email == "tina@test.local"))
        laser_safety = s.scalar(select(Competency).where(Competency.slug == "laser-safety"))
        machine = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert quinn and tina and laser_safety and machine
        key = key_bytes(machine.allowlist_key)
        now = datetime.now(UTC)
        today = now.astimezone(ZoneInfo("Europe/Berlin")).date()
        training.revoke(s, quinn, laser_safety, tina, "unsafe use of the laser", now, today)
    revoked_at = time.monotonic()

    assert eventually(lambda: not agent.allowlist.check(QUINN, datetime.now(UTC))[0], timeout=5)
    took = time.monotonic() - revoked_at
    assert took < 5, f"the revoke took {took:.2f} s to reach the machine"

    # The retained list a device gets on (re)connecting no longer has Quinn either.
    peer = Peer(system.mqtt_url)
    try:
        peer.subscribe("werkbank/v1/dev/pi-laser-1/allowlist")
        document = json.loads(peer.next("werkbank/v1/dev/pi-laser-1/allowlist"))
    finally:
        peer.close()
    hashes = {entry["badge_hash"] for entry in document["entries"]}
    assert badge_hash(key, QUINN) not in hashes and badge_hash(key, TINA) in hashes

    assert agent.tap(QUINN).reason == "not_qualified"
    assert not system.relay_closed("pi-laser-1")
    with system.db.session() as s:
        audit = s.scalar(select(AuditLog).where(AuditLog.action == "qualification.revoked"))
        assert audit is not None and audit.detail["reason"] == "unsafe use of the laser"
