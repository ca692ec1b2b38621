"""Secure badges end to end: the real bridge on a real database, real agents whose reader is the
real ``mfrc522`` library on the emulated RC522, and emulated NTAG 424 DNA cards.

A genuine card unlocks online and offline; a UID clone, a card with another site's key and a
replayed authentication are refused with ``badge_not_genuine`` (audited, no session); an
enrolment station writes a factory card, survives a card torn away mid-write, and only then
links the badge.
"""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from device_agent.agent import Agent, Decision
from device_agent.config import parse_config
from device_agent.hardware.mfrc522 import Mfrc522Reader
from server.models import (
    AuditLog,
    Badge,
    BadgeEnrolment,
    BadgeKind,
    CardSecurity,
    EnrolmentStatus,
    MachineSession,
    Person,
    Site,
)
from server.models import Device as DeviceRow
from server.services import cards
from tests.agent.ntag424_emulator import Ntag424Card, ReplayCard
from tests.agent.rc522_emulator import Card, Rc522Emulator, installed
from tests.e2e.conftest import System, eventually
from werkbank_protocol.cardkeys import card_key

QUINN = "04A224B2C35E80"  # qualified on printers; a 7-byte UID like every NTAG 424 DNA
TINA = "A1B2C3D4"  # a plain UID badge
UMA = "DEADBEEF"  # a plain UID badge of someone not trained on printers
NEW_CARD = "04C0FFEE123456"


@pytest.fixture
def rc522() -> Iterator[Rc522Emulator]:
    if importlib.util.find_spec("mfrc522") is None:
        pytest.fail("the mfrc522 library is missing: pip install --no-deps mfrc522==0.0.7")
    with installed(Rc522Emulator()) as chip:
        yield chip


def secure_site(system: System, rule: CardSecurity = CardSecurity.SECURE_REQUIRED) -> bytes:
    """Make the lab a secure site with Quinn's badge a secure one; the site's master key."""
    with system.db.session() as s:
        site = s.scalars(select(Site)).one()
        cards.set_card_security(s, site, rule, None)
        badge = s.scalars(select(Badge).where(Badge.uid == QUINN)).one()
        badge.kind = BadgeKind.SECURE
        return cards.site_master(s, site)


def enrolled(master: bytes, uid: str = QUINN) -> Ntag424Card:
    return Ntag424Card(bytes.fromhex(uid), 0x20, keys=[card_key(master, uid, n) for n in range(5)])


def start_agent(system: System, device_id: str, **reader: Any) -> tuple[Agent, Mfrc522Reader]:
    data = tomllib.loads(system.config_file(device_id).read_text())
    data["reader"].update({"poll_hz": 50, **reader})
    rfid = Mfrc522Reader()
    agent = Agent(parse_config(data), reader=rfid)
    agent.start()
    assert agent.wait_connected(5)
    system.agents[device_id] = agent
    return agent, rfid


def tap(agent: Agent, chip: Rc522Emulator, card: Card) -> Decision:
    """Lay ``card`` on the reader until the agent has handled it, then take it away."""
    before = agent._taps_handled
    chip.present_card(card)
    assert eventually(lambda: agent._taps_handled > before, 10), "the tap was not handled"
    chip.remove()
    # The reader counts a card as gone after a few empty polls: wait, so the next tap is new.
    assert eventually(lambda: _absent(agent), 2)
    assert agent.last_decision is not None
    return agent.last_decision


def _absent(agent: Agent) -> bool:
    reader = agent.reader
    return isinstance(reader, Mfrc522Reader) and reader._current is None


def wait_card_keys(agent: Agent, uid: str = QUINN) -> None:
    assert eventually(lambda: agent.allowlist.card_key(uid) is not None, 10), "no card key in the allow-list"


def sessions(system: System) -> list[MachineSession]:
    with system.db.session() as s:
        return list(s.scalars(select(MachineSession)))


def not_genuine_audits(system: System) -> list[AuditLog]:
    with system.db.session() as s:
        return list(s.scalars(select(AuditLog).where(AuditLog.action == "badge.not_genuine")))


def test_e2e_secure_badge_unlocks_and_copies_are_refused_online(system: System, rc522: Rc522Emulator) -> None:
    master = secure_site(system)
    system.start_bridge()
    agent, _reader = start_agent(system, "pi-printer-1")
    wait_card_keys(agent)

    genuine = enrolled(master)
    first = tap(agent, rc522, genuine)
    assert (first.outcome, first.reason, first.offline) == ("unlocked", "ok", False)
    assert system.relay_closed("pi-printer-1")
    # A UID copy cannot end the session either.
    assert tap(agent, rc522, Card(bytes.fromhex(QUINN), 0x08)).reason == "badge_not_genuine"
    assert system.relay_closed("pi-printer-1")
    assert tap(agent, rc522, genuine).reason == "tap_out"
    assert eventually(lambda: len(sessions(system)) == 1 and sessions(system)[0].ended_at is not None)

    other_site = enrolled(bytes.fromhex("F0E0D0C0B0A090807060504030201000"))
    replay = ReplayCard(bytes.fromhex(QUINN), 0x20, recorded=[r for _, r in genuine.log[-3:]])
    for copy in (
        Card(bytes.fromhex(QUINN), 0x08),
        Ntag424Card(bytes.fromhex(QUINN), 0x20),
        other_site,
        replay,
    ):
        refused = tap(agent, rc522, copy)
        assert (refused.outcome, refused.reason, refused.offline) == ("denied", "badge_not_genuine", False)
        assert "not a valid badge" in refused.message["en"] and refused.message["de"]
        assert not system.relay_closed("pi-printer-1")
    assert len(sessions(system)) == 1  # no copy opened a session
    audits = not_genuine_audits(system)
    assert len(audits) == 4
    with system.db.session() as s:
        machine_id = s.get(DeviceRow, "pi-printer-1").machine_id  # type: ignore[union-attr]
    assert {a.subject for a in audits} == {f"badge:{QUINN}"}
    assert {a.detail["machine_id"] for a in audits} == {machine_id}
    assert {a.detail["card_auth"] for a in audits} == {"failed"}


def test_e2e_plain_uid_badge_is_refused_at_a_secure_required_site(
    system: System, rc522: Rc522Emulator
) -> None:
    secure_site(system)
    system.start_bridge()
    agent, _reader = start_agent(system, "pi-printer-1")
    wait_card_keys(agent)
    refused = tap(agent, rc522, Card(bytes.fromhex(TINA), 0x08))
    assert (refused.outcome, refused.reason) == ("denied", "badge_not_genuine")
    assert [a.detail["card_auth"] for a in not_genuine_audits(system)] == ["none"]


def test_e2e_plain_uid_badge_still_works_at_a_secure_site(system: System, rc522: Rc522Emulator) -> None:
    master = secure_site(system, CardSecurity.SECURE)
    system.start_bridge()
    agent, _reader = start_agent(system, "pi-printer-1")
    wait_card_keys(agent)
    # A plain UID badge passes the card check and meets the usual rules (Uma is not trained).
    assert tap(agent, rc522, Card(bytes.fromhex(UMA), 0x08)).reason == "not_qualified"
    # ... but a UID copy of a secure badge is still refused.
    assert tap(agent, rc522, Card(bytes.fromhex(QUINN), 0x08)).reason == "badge_not_genuine"
    assert tap(agent, rc522, enrolled(master)).reason == "ok"


def test_e2e_secure_badge_offline(system: System, rc522: Rc522Emulator) -> None:
    master = secure_site(system)
    system.start_bridge()
    agent, _reader = start_agent(system, "pi-printer-1")
    wait_card_keys(agent)
    system.stop_bridge()

    genuine = enrolled(master)
    first = tap(agent, rc522, genuine)
    assert (first.outcome, first.reason, first.offline) == ("unlocked", "offline_ok", True)
    assert tap(agent, rc522, genuine).reason == "tap_out"
    for copy in (
        Card(bytes.fromhex(QUINN), 0x08),
        enrolled(bytes(16)),
        ReplayCard(bytes.fromhex(QUINN), 0x20, recorded=[r for _, r in genuine.log[-3:]]),
        Card(bytes.fromhex(TINA), 0x08),  # a plain UID: the list says proof is required
    ):
        refused = tap(agent, rc522, copy)
        assert (refused.outcome, refused.reason, refused.offline) == ("denied", "badge_not_genuine", True)
        assert not system.relay_closed("pi-printer-1")


def test_e2e_machine_gets_only_its_slot_keys_of_its_sites_secure_badges(system: System) -> None:
    master = secure_site(system)
    system.start_bridge()
    with system.db.session() as s:
        device = s.get(DeviceRow, "pi-laser-1")
        assert device is not None and device.machine is not None
        device.machine.card_key_slot = 3
    agent = system.start_agent("pi-laser-1")
    assert eventually(lambda: agent.allowlist.card_key(QUINN) == (3, card_key(master, QUINN, 3)), 10)
    assert agent.allowlist.card_key(TINA) is None  # a plain UID badge has no key
    assert all(agent.allowlist.card_key(QUINN)[1] != card_key(master, QUINN, n) for n in (0, 1, 2, 4))  # type: ignore[index]


@pytest.mark.parametrize(
    ("tear_at", "applied"),
    [(1, False), (1, True), (5, False), (5, True)],
    ids=["first-key-not-written", "first-key-written", "master-key-not-written", "master-key-written"],
)
def test_e2e_enrolment_writes_a_factory_card_and_survives_a_torn_write(
    system: System, rc522: Rc522Emulator, tear_at: int, applied: bool
) -> None:
    master = secure_site(system)
    with system.db.session() as s:
        station = s.get(DeviceRow, "pi-laser-1")
        assert station is not None
        station.enrolment_station = True
        uma = s.scalars(select(Person).where(Person.name == "Uma Unqualified")).one()
        enrolment_id = cards.start_enrolment(s, uma, station, None).id
        uma_id = uma.id
    system.start_bridge()
    agent, _reader = start_agent(system, "pi-laser-1", mode="enrol")

    card = Ntag424Card(bytes.fromhex(NEW_CARD), 0x20, tear=(0xC4, applied), tear_skip=tear_at - 1)
    torn = tap(agent, rc522, card)
    assert (torn.outcome, torn.reason) == ("denied", "torn")
    assert "put it back" in torn.message["en"]
    with system.db.session() as s:
        assert s.scalar(select(Badge).where(Badge.uid == NEW_CARD)) is None  # nothing linked
        enrolment = s.get(BadgeEnrolment, enrolment_id)
        assert enrolment is not None and enrolment.status == EnrolmentStatus.PENDING

    done = tap(agent, rc522, card)
    assert (done.outcome, done.reason) == ("recorded", "enrolled")
    assert card.keys == [card_key(master, NEW_CARD, n) for n in range(5)]

    def linked() -> bool:
        with system.db.session() as s:
            badge = s.scalar(select(Badge).where(Badge.uid == NEW_CARD))
            return badge is not None and badge.kind == BadgeKind.SECURE and badge.person_id == uma_id

    assert eventually(linked, 10)
    with system.db.session() as s:
        enrolment = s.get(BadgeEnrolment, enrolment_id)
        assert enrolment is not None and enrolment.status == EnrolmentStatus.DONE
    assert eventually(lambda: len(agent.outbox) == 0)


def test_e2e_enrolment_refuses_another_sites_card_and_a_station_without_an_order(
    system: System, rc522: Rc522Emulator
) -> None:
    secure_site(system)
    with system.db.session() as s:
        station = s.get(DeviceRow, "pi-laser-1")
        assert station is not None
        station.enrolment_station = True
    system.start_bridge()
    agent, _reader = start_agent(system, "pi-laser-1", mode="enrol")
    # No enrolment ordered: the server sends no keys.
    nothing = tap(agent, rc522, Ntag424Card(bytes.fromhex(NEW_CARD), 0x20))
    assert (nothing.outcome, nothing.reason) == ("denied", "refused")
    assert "person's page" in nothing.message["en"]

    with system.db.session() as s:
        uma = s.scalars(select(Person).where(Person.name == "Uma Unqualified")).one()
        station = s.get(DeviceRow, "pi-laser-1")
        assert station is not None
        cards.start_enrolment(s, uma, station, None)
    foreign = enrolled(bytes.fromhex("F0E0D0C0B0A090807060504030201000"), NEW_CARD)
    keys_before = list(foreign.keys)
    refused = tap(agent, rc522, foreign)
    assert (refused.outcome, refused.reason) == ("denied", "foreign_card")
    assert foreign.keys == keys_before  # nothing written
    with system.db.session() as s:
        assert s.scalar(select(Badge).where(Badge.uid == NEW_CARD)) is None
