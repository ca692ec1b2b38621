"""Secure badges at the reader: the real ``mfrc522`` library and our ISO 14443-4 and NTAG 424 code
over the emulated chip and an emulated NTAG 424 DNA (tests/agent/ntag424_emulator.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from device_agent.cards.secure import CardVerifier
from device_agent.hardware.mfrc522 import Mfrc522Reader
from tests.agent.ntag424_emulator import ATS, IsoDepCard, Ntag424Card, ReplayCard
from tests.agent.rc522_emulator import (
    RX_MODE,
    T_RELOAD_H,
    T_RELOAD_L,
    TX_MODE,
    Card,
    Rc522Emulator,
    installed,
)
from werkbank_protocol.cardkeys import SLOTS, card_key

UID = "04A1B2C3D4E5F6"
SITE = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
OTHER_SITE = bytes.fromhex("F0E0D0C0B0A090807060504030201000")
SLOT = 1


def enrolled(uid: str = UID, master: bytes = SITE, **kwargs: Any) -> Ntag424Card:
    """A card as the enrolment station leaves it: every key diversified for its UID from ``master``."""
    return Ntag424Card(bytes.fromhex(uid), 0x20, keys=[card_key(master, uid, n) for n in range(5)], **kwargs)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def rc522() -> Iterator[Rc522Emulator]:
    if importlib.util.find_spec("mfrc522") is None:
        pytest.fail("the mfrc522 library is missing: pip install --no-deps mfrc522==0.0.7")
    with installed(Rc522Emulator()) as chip:
        yield chip


@pytest.fixture
def reader(rc522: Rc522Emulator) -> Iterator[Mfrc522Reader]:
    clock = Clock()
    made = Mfrc522Reader(clock=clock, sleep=clock.sleep)
    # The machine knows the slot-1 key of UID (from its allow-list), of no other card.
    made.check_cards(CardVerifier(lambda uid: (SLOT, card_key(SITE, UID, SLOT)) if uid == UID else None))
    yield made
    made.release()


def tap(rc522: Rc522Emulator, reader: Mfrc522Reader, card: Card) -> tuple[str | None, str | None]:
    """Lay ``card`` on the reader, poll until it is reported (or 5 polls); (UID, card_auth)."""
    rc522.present_card(card)
    reader.card_auth = None
    for _ in range(5):
        uid = reader.poll()
        if uid is not None:
            return uid, reader.card_auth
    return None, reader.card_auth


def test_secure_card_with_its_key_authenticates(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    card = enrolled()
    assert tap(rc522, reader, card) == (UID, "ok")
    # Select, then AuthenticateEV2First in two parts with key 1; the card was deselected and halted.
    assert [apdu[:2].hex() for apdu, _ in card.log] == ["00a4", "9071", "90af"]
    assert card.log[1][0][5] == SLOT
    assert card.state == "HALT"
    # The chip is handed back as the library set it up: no hardware CRC, its own 15 ms timer.
    assert not rc522.regs[TX_MODE] & 0x80 and not rc522.regs[RX_MODE] & 0x80
    assert (rc522.regs[T_RELOAD_H], rc522.regs[T_RELOAD_L]) == (0, 30)


def test_secure_card_lying_on_the_reader_is_authenticated_once(
    rc522: Rc522Emulator, reader: Mfrc522Reader
) -> None:
    card = enrolled()
    assert tap(rc522, reader, card) == (UID, "ok")
    assert [reader.poll() for _ in range(5)] == [None] * 5
    assert len(card.log) == 3


def test_uid_clone_without_iso14443_4_fails(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    # A "magic" UID-changeable MIFARE Classic card with the badge's UID: SAK 08, no RATS.
    assert tap(rc522, reader, Card(bytes.fromhex(UID), 0x08)) == (UID, "failed")


def test_uid_clone_on_a_factory_ntag424_fails(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    # Even a genuine NTAG 424 with the badge's UID but factory keys cannot answer the challenge.
    clone = Ntag424Card(bytes.fromhex(UID), 0x20)
    assert tap(rc522, reader, clone) == (UID, "failed")
    assert clone.log[-1][1] == b"\x91\xae"


def test_card_with_another_sites_key_fails(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    assert tap(rc522, reader, enrolled(master=OTHER_SITE)) == (UID, "failed")


def test_replayed_authentication_fails(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    genuine = enrolled()
    assert tap(rc522, reader, genuine) == (UID, "ok")
    rc522.remove()
    for _ in range(Mfrc522Reader.ABSENT_POLLS):
        reader.poll()
    # The attacker recorded that whole exchange over the air and plays the card's side back.
    replay = ReplayCard(bytes.fromhex(UID), 0x20, recorded=[response for _, response in genuine.log])
    assert tap(rc522, reader, replay) == (UID, "failed")


def test_card_without_a_known_key_is_not_asked(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    card = enrolled("04112233445566")
    assert tap(rc522, reader, card) == ("04112233445566", "none")
    assert card.log == [] and card.state == "HALT"


def test_long_frames_are_chained_both_ways(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    # FSCI 0: the card takes 16-byte frames, so our 38-byte AuthenticateEV2First part 2 goes in
    # three I-blocks (two chained); the card answers in 8-byte pieces, which we acknowledge with R(ACK).
    card = enrolled(ats=bytes([ATS[0], ATS[1] & 0xF0]) + ATS[2:], chain_at=8)
    assert tap(rc522, reader, card) == (UID, "ok")
    sent = [frame for frame, _bits in rc522.frames]
    chained_i_blocks = [f for f in sent if f and f[0] & 0xF2 == 0x12]
    r_acks = [f for f in sent if f and f[0] & 0xF6 == 0xA2 and len(f) == 3]
    assert len(chained_i_blocks) == 2 and len(r_acks) >= 4


def test_waiting_time_extension_is_granted(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    assert tap(rc522, reader, enrolled(wtx_next=2)) == (UID, "ok")


def test_card_taken_away_mid_authentication_is_no_tap_and_counts_when_back(
    rc522: Rc522Emulator, reader: Mfrc522Reader
) -> None:
    card = enrolled(tear=(0xAF, False))
    assert tap(rc522, reader, card) == (None, None)
    rc522.present_card(card)
    assert tap(rc522, reader, card) == (UID, "ok")


def test_plain_uid_reader_without_card_checks_reports_no_card_auth(rc522: Rc522Emulator) -> None:
    clock = Clock()
    reader = Mfrc522Reader(clock=clock, sleep=clock.sleep)
    try:
        card = enrolled()
        assert tap(rc522, reader, card) == (UID, None)
        assert card.log == []
    finally:
        reader.release()


@pytest.mark.parametrize("slot", SLOTS)
def test_each_slot_key_authenticates_only_in_its_slot(rc522: Rc522Emulator, slot: int) -> None:
    clock = Clock()
    reader = Mfrc522Reader(clock=clock, sleep=clock.sleep)
    key: Callable[[str], tuple[int, bytes] | None] = lambda uid: (slot, card_key(SITE, uid, slot))  # noqa: E731
    wrong: Callable[[str], tuple[int, bytes] | None] = lambda uid: (slot % 4 + 1, card_key(SITE, uid, slot))  # noqa: E731
    try:
        reader.check_cards(CardVerifier(key))
        assert tap(rc522, reader, enrolled()) == (UID, "ok")
        rc522.remove()
        for _ in range(Mfrc522Reader.ABSENT_POLLS):
            reader.poll()
        reader.check_cards(CardVerifier(wrong))
        assert tap(rc522, reader, enrolled()) == (UID, "failed")
    finally:
        reader.release()


def test_iso_dep_card_answers_nothing_before_rats(rc522: Rc522Emulator) -> None:
    # The emulator itself: an I-block before RATS is ignored, as on a real card.
    card = IsoDepCard(bytes.fromhex(UID), 0x20)
    card.state = "ACTIVE"
    assert card.receive(bytes([0x02, 0x00, 0xA4]) + b"\x00\x00", 0) is None
