"""The RC522 reader backend: the real ``mfrc522`` library over an emulated MFRC522 chip.

Nothing here touches real hardware: :mod:`tests.agent.rc522_emulator` provides the chip and the
fake ``spidev`` and ``RPi.GPIO`` modules the library imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from device_agent import AgentError
from device_agent.agent import Agent
from device_agent.config import ConfigError, parse_config
from device_agent.hardware import HardwareError
from device_agent.hardware.base import ReaderFault
from device_agent.hardware.mfrc522 import BOARD_TO_BCM, GOOD_VERSIONS, Mfrc522Reader, crc_a
from tests.agent.helpers import ADA, KEY_HEX, Responder, make_config, relay_closed, wait_until
from tests.agent.rc522_emulator import VERSION, Rc522Emulator, crc16, installed

CARD = "DEADBEEF"
OTHER = "04A1B2C3"
SEVEN = "04112233445566"
TEN = "04112233445566778899"


class FakeTime:
    """The reader's clock and sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def rc522() -> Iterator[Rc522Emulator]:
    """An emulated RC522 with the real library importable on top of it (only during the test)."""
    if importlib.util.find_spec("mfrc522") is None:
        # Its dependencies only build on a Pi; the tests bring their own spidev and RPi.GPIO.
        pytest.fail("the mfrc522 library is missing: pip install --no-deps mfrc522==0.0.7")
    with installed(Rc522Emulator()) as chip:
        yield chip


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_reader(rc522: Rc522Emulator, fake_time: FakeTime) -> Iterator[Callable[..., Mfrc522Reader]]:
    readers: list[Mfrc522Reader] = []

    def make(**kwargs: Any) -> Mfrc522Reader:
        reader = Mfrc522Reader(clock=fake_time, sleep=fake_time.sleep, **kwargs)
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        reader.release()


@pytest.fixture
def reader(make_reader: Callable[..., Mfrc522Reader]) -> Mfrc522Reader:
    return make_reader()


def polls(reader: Mfrc522Reader, count: int) -> list[str | None]:
    return [reader.poll() for _ in range(count)]


def taps(reader: Mfrc522Reader, count: int) -> list[str]:
    return [uid for uid in polls(reader, count) if uid is not None]


# ---------------------------------------------------------------------------------- emulator


def test_emulator_crc_matches_iso14443_examples() -> None:
    # ISO/IEC 14443-3 Annex B: CRC_A of 00 00 is A0 1E, of 12 34 is 26 CF (low byte first).
    for data, crc in (([0x00, 0x00], 0x1EA0), ([0x12, 0x34], 0xCF26)):
        assert crc_a(data) == crc16(data) == crc


def test_emulator_fakes_leave_sys_modules_as_they_were() -> None:
    names = ("spidev", "RPi", "RPi.GPIO", "mfrc522", "mfrc522.MFRC522")
    assert not any(name in sys.modules for name in names)
    chip = Rc522Emulator()
    with installed(chip):
        library = importlib.import_module("mfrc522")
        assert sys.modules["spidev"].SpiDev().__class__.__name__ == "FakeSpiDev"
        assert library.MFRC522().Read_MFRC522(VERSION) == 0x92
    assert not any(name in sys.modules for name in names)


# ---------------------------------------------------------------------------------- setup


def test_setup_initialises_the_chip_and_reads_its_version(
    rc522: Rc522Emulator, reader: Mfrc522Reader
) -> None:
    assert rc522.opens == 1 and rc522.soft_resets == 1 and rc522.antenna_on
    assert rc522.reads[VERSION] == 1
    # RST (header pin 22) is driven high: the chip runs. The library got BCM numbering (GPIO25):
    # gpiozero's rpigpio pin factory sets BCM, and RPi.GPIO refuses a second mode.
    assert rc522.gpio.levels == {22: 1} and rc522.gpio.mode == rc522.gpio.BCM


def test_setup_keeps_a_numbering_mode_already_chosen(
    rc522: Rc522Emulator, make_reader: Callable[..., Mfrc522Reader]
) -> None:
    rc522.gpio.setmode(rc522.gpio.BOARD)
    make_reader(reset_pin=25, pin_mode="BCM")
    assert rc522.gpio.mode == rc522.gpio.BOARD and rc522.gpio.levels == {22: 1}


def test_setup_without_the_spi_device_names_the_fix(make_reader: Callable[..., Mfrc522Reader]) -> None:
    with pytest.raises(HardwareError, match=r"no SPI device /dev/spidev1\.0: turn SPI on \(dtparam=spi=on"):
        make_reader(bus=1)


def test_setup_refuses_a_reset_pin_that_is_no_gpio(make_reader: Callable[..., Mfrc522Reader]) -> None:
    with pytest.raises(ValueError, match="BOARD pin 6 is not a GPIO"):
        make_reader(reset_pin=6)


def test_setup_board_table_matches_the_header() -> None:
    assert sorted(BOARD_TO_BCM.values()) == list(range(28))
    # Spot checks against the Pi's pinout: RC522 RST, SPI0 CE0/MOSI/MISO/SCLK, the relay's GPIO17.
    assert {22: 25, 24: 8, 19: 10, 21: 9, 23: 11, 11: 17}.items() <= BOARD_TO_BCM.items()
    pinmap = pytest.importorskip("werkbank_protocol.pinmap")
    for header, bcm in BOARD_TO_BCM.items():
        assert pinmap.load_pinmap().by_header(header).bcm == bcm


# ---------------------------------------------------------------------------------- taps


def test_tap_card_is_reported_once_while_it_lies_there(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    assert polls(reader, 3) == [None, None, None]
    rc522.present(CARD)
    assert reader.poll() == CARD
    assert taps(reader, 50) == []


def test_tap_card_taken_away_and_back_is_a_second_tap(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    rc522.present(CARD)
    assert taps(reader, 5) == [CARD]
    rc522.remove()
    assert taps(reader, Mfrc522Reader.ABSENT_POLLS) == []
    rc522.present(CARD)
    assert taps(reader, 5) == [CARD]


def test_tap_card_lifted_for_fewer_polls_than_the_debounce_is_no_new_tap(
    rc522: Rc522Emulator, reader: Mfrc522Reader
) -> None:
    rc522.present(CARD)
    assert taps(reader, 5) == [CARD]
    rc522.remove()
    assert taps(reader, Mfrc522Reader.ABSENT_POLLS - 1) == []
    rc522.present(CARD)
    assert taps(reader, 5) == []


def test_tap_card_swapped_for_another_is_a_tap(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    rc522.present(CARD)
    assert taps(reader, 3) == [CARD]
    rc522.present(OTHER)
    assert taps(reader, 3) == [OTHER]
    rc522.present(CARD)
    assert taps(reader, 3) == [CARD]


@pytest.mark.parametrize(("uid", "levels"), [(CARD, 1), (SEVEN, 2), (TEN, 3)])
def test_tap_reads_4_7_and_10_byte_uids(
    rc522: Rc522Emulator, reader: Mfrc522Reader, uid: str, levels: int
) -> None:
    rc522.present(uid)
    assert taps(reader, 5) == [uid]
    selects = {frame[0] for frame, _ in rc522.frames if frame[1:2] == b"\x70"}
    assert selects == set((0x93, 0x95, 0x97)[:levels])


def test_tap_one_missed_read_while_held_is_no_new_tap(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    rc522.present(CARD)
    assert taps(reader, 3) == [CARD]
    for missed in range(1, Mfrc522Reader.ABSENT_POLLS):
        rc522.fail_next_reads(missed, "silent")
        assert taps(reader, missed + 3) == []


def test_tap_card_left_on_the_reader_answers_every_poll(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    # It is halted after each read and woken by the next WUPA: no poll sees it absent.
    rc522.present(CARD)
    reader.poll()
    assert rc522.card is not None and rc522.card.state == "HALT"
    rc522.frames.clear()
    polls(reader, 10)
    assert [frame for frame, _ in rc522.frames].count(b"\x93\x20") == 10


# ---------------------------------------------------------------------------------- read errors


@pytest.mark.parametrize(
    ("kind", "uid", "after"),
    [
        # Level 1, read by the library.
        ("collision", CARD, 0),
        ("parity", CARD, 0),
        ("bcc", CARD, 0),
        ("partial", CARD, 0),
        ("sak", CARD, 0),
        ("sak", SEVEN, 0),
        # Levels 2 and 3, read by the backend itself (answers: ATQA, then anticoll and SAK per level).
        ("bcc", SEVEN, 1),
        ("partial", SEVEN, 1),
        ("crc", SEVEN, 1),
        ("sak", SEVEN, 1),
        ("collision", SEVEN, 3),
        ("parity", TEN, 5),
        ("crc", TEN, 2),
    ],
)
def test_errors_give_no_tap_and_the_next_read_works(
    rc522: Rc522Emulator, reader: Mfrc522Reader, kind: str, uid: str, after: int
) -> None:
    rc522.present(uid)
    rc522.fail_next_reads(1, kind, after=after)
    assert reader.poll() is None
    assert rc522.pending_faults == 0
    assert reader.poll() == uid


def test_errors_sak_contradicting_the_uid_ends_the_read_at_once(
    rc522: Rc522Emulator, reader: Mfrc522Reader
) -> None:
    # A flipped cascade bit on a 4-byte UID: asking the card for level 2 would wait 2,000 reads.
    rc522.present(CARD)
    rc522.fail_next_reads(1, "sak")
    before = rc522.transfers
    assert reader.poll() is None
    assert rc522.transfers - before < 100


def test_errors_crc_of_the_level_1_sak_is_not_checked_but_the_uid_is_right(
    rc522: Rc522Emulator, reader: Mfrc522Reader
) -> None:
    # The library's MFRC522_SelectTag returns the SAK byte only, so its CRC cannot be checked. The
    # UID it comes with is checked (BCC), and so is the SAK's cascade bit against the cascade tag.
    rc522.present(CARD)
    rc522.fail_next_reads(1, "crc")
    assert reader.poll() == CARD


def test_errors_while_a_card_lies_there_do_not_retrigger(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    rc522.present(CARD)
    assert taps(reader, 2) == [CARD]
    for kind in ("collision", "parity", "bcc", "partial"):
        rc522.fail_next_reads(Mfrc522Reader.ABSENT_POLLS + 1, kind)
        assert taps(reader, 2 * Mfrc522Reader.ABSENT_POLLS + 2) == []


def test_errors_two_cards_at_once_give_no_tap(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    rc522.present(CARD)
    rc522.fail_next_reads(3, "collision")  # what two cards answering together look like
    assert taps(reader, 3) == []
    assert taps(reader, 1) == [CARD]


# ---------------------------------------------------------------------------------- health


def test_health_dead_reader_raises_until_it_answers_again(
    rc522: Rc522Emulator, reader: Mfrc522Reader, fake_time: FakeTime
) -> None:
    rc522.present(CARD)
    assert taps(reader, 2) == [CARD]
    rc522.go_dead()
    fake_time.advance(Mfrc522Reader.HEALTH_INTERVAL_S)
    with pytest.raises(ReaderFault, match=r"does not answer \(VersionReg reads 0x00\)") as info:
        reader.poll()
    assert isinstance(info.value, OSError) and isinstance(info.value, AgentError)
    # Until the retry is due, polls raise again without touching the bus.
    before = rc522.transfers
    for _ in range(5):
        with pytest.raises(ReaderFault):
            reader.poll()
    assert rc522.transfers == before

    rc522.revive()
    fake_time.advance(Mfrc522Reader.RETRY_MIN_S)
    # The chip was reset and initialised again; the card that lay there all along is no new tap.
    assert taps(reader, 5) == []
    assert rc522.antenna_on
    rc522.remove()
    assert taps(reader, Mfrc522Reader.ABSENT_POLLS) == []
    rc522.present(OTHER)
    assert taps(reader, 3) == [OTHER]


def test_health_garbage_on_the_bus_is_a_fault_at_once(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    # MISO floating high reads 0xFF everywhere; ComIrqReg's bit 7 never reads 1 on a live chip.
    rc522.go_dead(reads_as=0xFF)
    with pytest.raises(ReaderFault, match="0xFF"):
        reader.poll()


def test_health_retries_back_off_to_the_maximum(
    rc522: Rc522Emulator, reader: Mfrc522Reader, fake_time: FakeTime
) -> None:
    rc522.go_dead()
    fake_time.advance(Mfrc522Reader.HEALTH_INTERVAL_S)
    with pytest.raises(ReaderFault):
        reader.poll()
    retries: list[float] = []
    step = 0.05
    for _ in range(int(60 / step)):
        fake_time.advance(step)
        before = rc522.transfers
        with pytest.raises(ReaderFault):
            reader.poll()
        if rc522.transfers != before:
            retries.append(fake_time.now)
    gaps = [later - earlier for earlier, later in pairwise(retries)]
    # Each retry's reset pulse takes ~51 ms of (fake) time, then the wait doubles: 2, 4, 8, 10, 10 …
    expected = [2.0, 4.0, 8.0, 10.0, 10.0]
    assert len(gaps) >= len(expected)
    for gap, wanted in zip(gaps, expected, strict=False):
        assert wanted <= gap <= wanted + 0.15, gaps


def test_health_silent_chip_at_start_is_a_fault_then_recovers(
    rc522: Rc522Emulator, make_reader: Callable[..., Mfrc522Reader], fake_time: FakeTime
) -> None:
    rc522.go_dead()
    reader = make_reader()  # starts anyway: the agent must report the fault, not fail to start
    with pytest.raises(ReaderFault, match="does not answer"):
        reader.poll()
    rc522.revive()
    fake_time.advance(Mfrc522Reader.RETRY_MIN_S)
    rc522.present(CARD)
    assert taps(reader, 3) == [CARD]


@pytest.mark.parametrize("version", sorted(GOOD_VERSIONS))
def test_health_accepts_mfrc522_versions_and_known_clones(
    make_reader: Callable[..., Mfrc522Reader], rc522: Rc522Emulator, version: int
) -> None:
    rc522.version = version
    reader = make_reader()
    rc522.present(CARD)
    assert taps(reader, 2) == [CARD]


def test_health_unknown_chip_is_a_fault(
    make_reader: Callable[..., Mfrc522Reader], rc522: Rc522Emulator
) -> None:
    rc522.version = 0x90  # a pre-production MFRC522: not what our boards carry
    reader = make_reader()
    with pytest.raises(ReaderFault, match="VersionReg 0x90, not a known MFRC522"):
        reader.poll()


# ---------------------------------------------------------------------------------- cost


def test_cost_idle_poll_takes_8_spi_transfers(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    reader.poll()  # the first poll also reads VersionReg if a health check is due
    before = rc522.transfers
    polls(reader, 100)
    assert (rc522.transfers - before) / 100 == 8


def test_cost_library_request_alone_spins_2000_reads_without_a_card(rc522: Rc522Emulator) -> None:
    # Why the backend sends WUPA itself: the library's wait loop only ends on an answer.
    library = importlib.import_module("mfrc522").MFRC522()
    before = rc522.transfers
    status, _bits = library.MFRC522_Request(library.PICC_REQIDL)
    assert status == library.MI_ERR and rc522.transfers - before > 2000


@pytest.mark.parametrize(("uid", "most"), [(CARD, 90), (SEVEN, 160), (TEN, 230)])
def test_cost_poll_with_a_card_stays_bounded(
    rc522: Rc522Emulator, reader: Mfrc522Reader, uid: str, most: int
) -> None:
    reader.poll()
    rc522.present(uid)
    before = rc522.transfers
    assert reader.poll() == uid
    assert rc522.transfers - before <= most


# ---------------------------------------------------------------------------------- release


def test_release_turns_the_antenna_off_and_cleans_up(rc522: Rc522Emulator, reader: Mfrc522Reader) -> None:
    reader.release()
    assert not rc522.antenna_on
    assert rc522.closes == 1 and rc522.gpio.cleanups == 1
    assert rc522.gpio.mode is None and rc522.gpio.directions == {}
    reader.release()
    assert rc522.closes == 1 and rc522.gpio.cleanups == 1, "releasing twice does nothing more"


# ---------------------------------------------------------------------------------- with the agent


def test_agent_reads_badges_and_reports_a_dead_reader(
    rc522: Rc522Emulator,
    tmp_path: Path,
    mqtt_url: str,
    start_agent: Callable[..., Agent],
    responder: Responder,
    pins: MockFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Mfrc522Reader, "HEALTH_INTERVAL_S", 0.05)
    monkeypatch.setattr(Mfrc522Reader, "RETRY_MIN_S", 0.05)
    monkeypatch.setattr(Mfrc522Reader, "RETRY_MAX_S", 0.1)
    monkeypatch.setattr(Mfrc522Reader, "RESET_STARTUP_S", 0.001)
    agent = start_agent(make_config(tmp_path, mqtt_url, reader={"backend": "mfrc522"}))
    assert isinstance(agent.reader, Mfrc522Reader)
    device = agent.config.device_id

    rc522.present(ADA)
    (started,) = responder.wait_event("session_started")
    assert started.badge == ADA and wait_until(lambda: relay_closed(pins))
    rc522.remove()

    red = pins.pin(27)
    red.clear_states()
    rc522.go_dead()
    (fault,) = responder.wait_event("fault")
    assert fault.code == "reader_failed" and "does not answer (VersionReg reads 0x00)" in fault.detail
    assert agent.state == "fault"
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1].get("state") == "fault")
    # The fault pattern: the red LED blinks fast.
    assert wait_until(lambda: [s.state for s in red.states].count(True) >= 3)

    rc522.revive()
    assert wait_until(lambda: agent.state == "unlocked"), "fault cleared, the session goes on"
    assert wait_until(lambda: red.state is False)
    # Let the reader see the empty field a few polls, then tap out with the same badge.
    mark = rc522.wakeups
    assert wait_until(lambda: rc522.wakeups >= mark + Mfrc522Reader.ABSENT_POLLS + 1)
    rc522.present(ADA)
    (ended,) = responder.wait_event("session_ended")
    assert ended.reason == "tap_out" and ended.session == started.session

    agent.stop()
    assert rc522.gpio.cleanups == 1 and rc522.closes == 1


# ---------------------------------------------------------------------------------- config


def reader_config(tmp_path: Path, **reader: Any) -> dict[str, dict[str, Any]]:
    return {
        "device": {"id": "printer-dev-1", "machine": "printer-1"},
        "mqtt": {"url": "mqtt://broker.local:1883"},
        "allowlist": {"key": KEY_HEX},
        "storage": {"dir": str(tmp_path / "store")},
        "reader": {"backend": "mfrc522", **reader},
    }


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.errors


def test_config_reader_defaults_are_the_wiring_of_the_docstring(tmp_path: Path) -> None:
    config = parse_config(reader_config(tmp_path))
    assert (config.reader_spi_bus, config.reader_spi_device) == (0, 0)
    assert (config.reader_reset_pin, config.reader_pin_mode) == (22, "BOARD")


@pytest.mark.parametrize(
    ("reader", "fragment"),
    [
        ({"spi_bus": 9}, "[reader] spi_bus: is 9; use a value from 0 to 6"),
        ({"spi_bus": -1}, "[reader] spi_bus: is -1"),
        ({"spi_device": 3}, "[reader] spi_device: is 3; use a value from 0 to 2"),
        ({"reset_pin": 41}, "[reader] reset_pin: is 41; use a value from 0 to 40"),
        ({"reset_pin": 6}, "[reader] reset_pin: BOARD pin 6 is not a GPIO; use a header pin that is a GPIO"),
        ({"reset_pin": 28, "pin_mode": "BCM"}, "[reader] reset_pin: BCM pin 28 is not a GPIO"),
        ({"pin_mode": "WIRINGPI"}, "[reader] pin_mode: is 'WIRINGPI'; use one of: BOARD, BCM"),
        ({"spi_bus": "0"}, '[reader] spi_bus: is "0"; it must be a whole number'),
    ],
)
def test_config_rejects_bad_reader_values(tmp_path: Path, reader: dict[str, Any], fragment: str) -> None:
    errors = errors_of(reader_config(tmp_path, **reader))
    assert any(e.startswith(fragment) for e in errors), errors


def test_config_reset_pin_on_the_relay_pin_is_reported(tmp_path: Path) -> None:
    # BOARD 22 is GPIO25: a relay on GPIO25 collides with the reader's default reset line.
    data = reader_config(tmp_path)
    data["relay"] = {"pin": 25}
    errors = errors_of(data)
    # Reported by the RC522's own key, or by the pin map that keeps header pin 22 for the RC522.
    assert any("GPIO 25" in e and ("[reader] reset_pin" in e or "RC522" in e) for e in errors), errors


@pytest.mark.parametrize(
    ("reader", "gpio"), [({"reset_pin": 29}, 5), ({"reset_pin": 5, "pin_mode": "BCM"}, 5)]
)
def test_config_moved_reset_pin_colliding_with_an_led_is_reported(
    tmp_path: Path, reader: dict[str, Any], gpio: int
) -> None:
    data = reader_config(tmp_path, **reader)
    data["indicators"] = {"green_pin": gpio}
    (error,) = errors_of(data)
    assert error.startswith(f"[reader] reset_pin: GPIO {gpio} is already used by [indicators] green_pin"), (
        error
    )


def test_config_reset_pin_numbers_are_not_taken_for_bcm(tmp_path: Path) -> None:
    # Header pin 22 is GPIO25, not GPIO22: an LED on GPIO22 (header pin 15) is fine.
    data = reader_config(tmp_path)
    data["indicators"] = {"green_pin": 22}
    assert parse_config(data).indicators_green_pin == 22


def test_config_reader_pins_are_ignored_without_an_rc522(tmp_path: Path) -> None:
    data = reader_config(tmp_path, backend="simulated", reset_pin=6)
    data["relay"] = {"pin": 5}
    assert parse_config(data).relay_pin == 5
