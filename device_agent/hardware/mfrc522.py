"""Badge reader backend for an RC522 board (NXP MFRC522) on the Pi's SPI bus, via the ``mfrc522`` library.

``[reader] backend = "mfrc522"``. The library talks to the card; this module adds what a reader at
a machine needs on top: a cheap idle poll, 7- and 10-byte UIDs, one tap per presentation, and a
health check that turns a silent chip into a :class:`~device_agent.hardware.base.ReaderFault`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from device_agent.cards import CardAuth, CardError, CardGone
from device_agent.hardware.base import CardCheck, Reader, ReaderFault
from device_agent.hardware.iso14443 import IsoDep

if TYPE_CHECKING:
    from device_agent.config import AgentConfig

log = logging.getLogger(__name__)

# The 40-pin header (every Pi since the B+): header pin → BCM GPIO, for the 28 pins that are GPIOs.
# The others are 3.3 V (1, 17), 5 V (2, 4) and GND.
BOARD_TO_BCM: dict[int, int] = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24, 19: 10, 21: 9,
    22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12, 33: 13, 35: 19, 36: 16, 37: 26,
    38: 20, 40: 21,
}  # fmt: skip
BCM_TO_BOARD: dict[int, int] = {bcm: board for board, bcm in BOARD_TO_BCM.items()}

# VersionReg values of chips that read cards. 0x00 and 0xFF are what a bus with nothing
# answering reads. The clones are on many cheap RC522 boards and work like the original.
GOOD_VERSIONS: dict[int, str] = {
    0x91: "MFRC522 v1.0",
    0x92: "MFRC522 v2.0",
    0x88: "FM17522 (MFRC522 clone)",
    0x12: "MFRC522 clone (counterfeit chip)",
}

# MFRC522 registers and bits this module uses itself (datasheet section 9.2).
_COMMAND = 0x01
_COM_IRQ = 0x04
_FIFO_DATA = 0x09
_FIFO_LEVEL = 0x0A
_BIT_FRAMING = 0x0D
_VERSION = 0x37
_IDLE = 0x00
_TRANSMIT = 0x04
_TRANSCEIVE = 0x0C
_FLUSH = 0x80
_START_SEND = 0x80
_IRQ_SET1 = 0x80  # the Set1 bit reads 0 on a working chip
_RX_IRQ = 0x20
_ERR_IRQ = 0x02
# ISO 14443-3 type A commands.
_WUPA = 0x52
_CASCADE_TAG = 0x88
_SAK_CASCADE = 0x04  # SAK bit: the UID continues at the next cascade level
_SAK_ISO_DEP = 0x20  # SAK bit: the card speaks ISO 14443-4 (NTAG 424 DNA, DESFire)
_NVB_ANTICOLL = 0x20
_NVB_SELECT = 0x70
_SEL_CL2 = 0x95
_SEL_CL3 = 0x97


def crc_a(data: Iterable[int]) -> int:
    """ISO 14443-3 CRC_A (preset 0x6363) of ``data``; sent low byte first."""
    crc = 0x6363
    for value in data:
        mixed = value ^ (crc & 0xFF)
        mixed ^= (mixed << 4) & 0xFF
        crc = (crc >> 8) ^ (mixed << 8) ^ (mixed << 3) ^ (mixed >> 4)
    return crc & 0xFFFF


def _with_crc(frame: list[int]) -> list[int]:
    crc = crc_a(frame)
    return [*frame, crc & 0xFF, crc >> 8]


# HLTA, sent after every read: a halted card still answers the next poll's WUPA, while a
# card left selected (ACTIVE) would ignore it and look absent every other poll.
_HLTA = _with_crc([0x50, 0x00])


def board_pin(pin: int, numbering: str) -> int:
    """``pin`` (numbered as ``numbering``, "BOARD" or "BCM") as a header pin number; ValueError if no GPIO."""
    board = pin if numbering == "BOARD" else BCM_TO_BOARD.get(pin)
    if board not in BOARD_TO_BCM:
        raise ValueError(f"{numbering} pin {pin} is not a GPIO of the 40-pin header")
    return board


class Mfrc522Reader(Reader):
    """An RC522 board on the Pi's SPI bus, read with the ``mfrc522`` library.

    Wiring (RC522 → Pi header pin): SDA → 24 (CE0), SCK → 23, MOSI → 19, MISO → 21,
    RST → 22 (GPIO25), 3.3V → 1, GND → 6, IRQ unconnected. Never 5 V: the chip runs on 3.3 V and
    its SPI lines go straight to the Pi's 3.3 V GPIOs. Turn SPI on (``dtparam=spi=on`` in
    /boot/firmware/config.txt) and put the agent's user in the ``spi`` and ``gpio`` groups.
    The defaults (``[reader] spi_bus = 0``, ``spi_device = 0``, ``reset_pin = 22`` BOARD) match this.

    Each poll wakes cards with WUPA and waits :attr:`ANSWER_WAIT_S` for an answer; only when one
    comes does it run the library's anticollision and select (cascade levels 2 and 3 for 7- and
    10-byte UIDs are done here, with the library's low-level calls), then halts the card. With
    :meth:`check_cards` set, a newly tapped card is first asked to authenticate over ISO 14443-4
    (:mod:`device_agent.hardware.iso14443`); the outcome is in :attr:`card_auth`. A card
    counts as gone after :attr:`ABSENT_POLLS` polls without an answer in a row. VersionReg is
    read at start and every :attr:`HEALTH_INTERVAL_S`: a chip that no longer answers makes
    :meth:`poll` raise :class:`ReaderFault`, and later polls re-initialise it, backing off from
    :attr:`RETRY_MIN_S` to :attr:`RETRY_MAX_S`, until it answers again.
    """

    # A card must miss this many polls in a row to count as taken away: one missed read is common.
    ABSENT_POLLS = 3
    HEALTH_INTERVAL_S = 2.0
    RETRY_MIN_S = 1.0
    RETRY_MAX_S = 10.0
    # WUPA out, ATQA back takes about 0.4 ms at 106 kbit/s; 2 ms leaves room for a slow SPI bus.
    ANSWER_WAIT_S = 0.002
    # Hard reset: RST low, then the oscillator needs time to start (the Arduino library waits 50 ms).
    RESET_LOW_S = 0.001
    RESET_STARTUP_S = 0.05

    def __init__(
        self,
        bus: int = 0,
        device: int = 0,
        reset_pin: int = 22,
        pin_mode: str = "BOARD",
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from device_agent.hardware import HardwareError

        if pin_mode not in ("BOARD", "BCM"):
            raise ValueError(f'pin_mode is {pin_mode!r}; use "BOARD" or "BCM"')
        header = board_pin(reset_pin, pin_mode)
        self._clock = clock
        self._sleep = sleep
        try:
            from mfrc522 import MFRC522
            from RPi import GPIO
        except ImportError as exc:
            raise HardwareError(
                f"the mfrc522 reader needs the mfrc522, spidev and RPi.GPIO packages ({exc}); "
                "install them with: pip install 'werkbank[pi]'"
            ) from exc
        except RuntimeError as exc:  # RPi.GPIO refuses to load off a Pi
            raise HardwareError(f"RPi.GPIO cannot run here ({exc}); without a Pi, use --simulate") from exc
        self._gpio: Any = GPIO
        # RPi.GPIO holds one numbering mode per process and refuses a second one. gpiozero's
        # rpigpio pin factory sets BCM, so the library gets BCM too (our BOARD number converted),
        # unless something already chose a mode: then that one.
        mode = GPIO.getmode()
        if mode not in (GPIO.BOARD, GPIO.BCM):
            mode = GPIO.BCM
        self._reset_pin = header if mode == GPIO.BOARD else BOARD_TO_BCM[header]
        where = f"/dev/spidev{bus}.{device}"
        try:
            self._chip: Any = MFRC522(bus=bus, device=device, pin_mode=mode, pin_rst=self._reset_pin)
        except FileNotFoundError as exc:
            raise HardwareError(
                f"no SPI device {where}: turn SPI on (dtparam=spi=on in /boot/firmware/config.txt) "
                "and reboot, or check [reader] spi_bus and spi_device"
            ) from exc
        except PermissionError as exc:
            raise HardwareError(
                f"no permission to use {where}: add the agent's user to the spi and gpio groups"
            ) from exc
        except (OSError, RuntimeError, ValueError) as exc:
            raise HardwareError(
                f"cannot start the RC522 on {where} (RST on header pin {header}): {exc}"
            ) from exc

        self._released = False
        self._check: CardCheck | None = None
        self._sak = 0
        # The UID taken as lying on the reader, and how many polls in a row saw no card.
        self._current: str | None = None
        self._absent = self.ABSENT_POLLS
        self._fault: str | None = None
        self._retry_delay = self.RETRY_MIN_S
        self._retry_at = 0.0
        self._next_health = 0.0
        version = self._version()
        if version in GOOD_VERSIONS:
            log.info("RC522 reader on %s: %s (VersionReg 0x%02X)", where, GOOD_VERSIONS[version], version)
            self._next_health = self._clock() + self.HEALTH_INTERVAL_S
        else:
            # Start anyway: the agent reports the fault and keeps the relay safe while it retries.
            self._fault = _version_problem(version)
            self._retry_at = self._clock() + self._retry_delay
            log.warning("RC522 reader on %s: %s", where, self._fault)

    # ------------------------------------------------------------------ Reader

    def poll(self) -> str | None:
        now = self._clock()
        if self._fault is not None:
            if now < self._retry_at:
                raise ReaderFault(self._fault)
            self._recover()
        elif now >= self._next_health:
            self._check_health()
        try:
            irq = self._wake()
            if irq & _IRQ_SET1:
                # A bit a working chip never sets: the bus returns garbage. Look now, not in 2 s.
                self._check_health()
            if not irq & _RX_IRQ:
                return self._seen(answered=False)
            uid = None
            try:
                if not irq & _ERR_IRQ:  # an error here: cards' answers collided
                    uid = self._select()
                if uid is not None and uid != self._current and self._check is not None:
                    uid = self._authenticate(uid)
            finally:
                self._halt()
            return self._seen(answered=True, uid=uid)
        except ReaderFault:
            raise
        except OSError as exc:  # spidev reports a broken bus this way
            self._enter_fault(f"SPI transfer to the RC522 failed: {exc}")

    def check_cards(self, check: CardCheck | None) -> bool:
        self._check = check
        return True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        try:
            self._chip.AntennaOff()  # no RF field while the agent is not running
        except OSError as exc:
            log.debug("could not turn the RC522's antenna off: %s", exc)
        self._chip.Close_MFRC522()

    # ------------------------------------------------------------------ taps

    def _seen(self, answered: bool, uid: str | None = None) -> str | None:
        """Turn one poll's result into a tap: a UID is reported when it was not lying there already.

        ``answered`` without ``uid``: a card answered but could not be read (collision, CRC,
        partial UID). Something lies there, so it counts as present, but it is no tap.
        """
        if not answered:
            self._absent += 1
            if self._absent >= self.ABSENT_POLLS:
                self._current = None
            return None
        self._absent = 0
        if uid is None or uid == self._current:
            return None
        self._current = uid
        return uid

    def _wake(self) -> int:
        """Send WUPA and return ComIrqReg after :attr:`ANSWER_WAIT_S` (RxIRq set: a card answered).

        Not the library's ``MFRC522_Request``: its wait loop cannot end on the chip's timer, so
        every poll without a card costs it 2,000 register reads. This costs 8 SPI transfers.
        WUPA rather than REQA wakes halted cards too, so a card left on the reader answers each poll.
        """
        write = self._chip.Write_MFRC522
        write(_COMMAND, _IDLE)
        write(_COM_IRQ, 0x7F)  # clear every interrupt bit (Set1 = 0)
        write(_FIFO_LEVEL, _FLUSH)
        write(_FIFO_DATA, _WUPA)
        write(_BIT_FRAMING, 0x07)  # a short frame: 7 bits
        write(_COMMAND, _TRANSCEIVE)
        write(_BIT_FRAMING, _START_SEND | 0x07)
        self._sleep(self.ANSWER_WAIT_S)
        return int(self._chip.Read_MFRC522(_COM_IRQ))

    def _authenticate(self, uid: str) -> str | None:
        """Run the card check on the selected card: the UID to report (None: the card left mid-way)."""
        assert self._check is not None
        link: IsoDep | None = None

        def open_link() -> IsoDep:
            nonlocal link
            if not self._sak & _SAK_ISO_DEP:
                raise CardError(f"the card (SAK {self._sak:02X}) does not speak ISO 14443-4")
            link = IsoDep(self._chip, self._clock)
            link.activate()
            return link

        result: CardAuth | None = None
        try:
            result = self._check(uid, open_link)
        except CardGone as exc:
            log.info("card %s left before it finished authenticating: %s", uid, exc)
            return None
        finally:
            if link is not None:
                try:
                    link.deselect()
                except (CardGone, OSError):
                    link.close()
            self.card_auth = result
        return uid

    def _select(self) -> str | None:
        """Anticollision and select, level by level: the UID as upper-case hex, None if an answer was bad."""
        chip = self._chip
        status, part = chip.MFRC522_Anticoll()  # cascade level 1; checks the BCC
        if status != chip.MI_OK:
            return None
        # The library returns 0 both for "no answer" and for a SAK of 0: no badge at level 1 has SAK 0.
        sak = int(chip.MFRC522_SelectTag(part))
        if sak == 0:
            return None
        uid: list[int] = []
        for next_level in (_SEL_CL2, _SEL_CL3, None):
            cascade = bool(sak & _SAK_CASCADE)
            if cascade != (part[0] == _CASCADE_TAG):
                return None  # the SAK contradicts the UID part: one of them was misread
            if not cascade:
                self._sak = sak
                return bytes(uid + list(part[:4])).hex().upper()
            if next_level is None:
                return None  # ISO 14443 has three cascade levels, no fourth
            uid += part[1:4]
            level = self._select_level(next_level)
            if level is None:
                return None
            part, sak = level
        return None

    def _select_level(self, sel: int) -> tuple[list[int], int] | None:
        """Anticollision and select at cascade level 2 or 3 (the library only does level 1).

        Returns the level's 4 UID bytes and the SAK, or None when an answer was missing or bad.
        """
        chip = self._chip
        chip.Write_MFRC522(_BIT_FRAMING, 0x00)
        status, part, bits = chip.MFRC522_ToCard(chip.PCD_TRANSCEIVE, [sel, _NVB_ANTICOLL])
        if status != chip.MI_OK or bits != 40 or len(part) != 5:
            return None
        if part[0] ^ part[1] ^ part[2] ^ part[3] != part[4]:
            return None  # BCC
        frame = [sel, _NVB_SELECT, *part]
        frame += chip.CalulateCRC(frame)
        status, answer, bits = chip.MFRC522_ToCard(chip.PCD_TRANSCEIVE, frame)
        if status != chip.MI_OK or bits != 24 or len(answer) < 3:
            return None
        # The chip does not check the CRC of what it receives (RxCRCEn is off): we do.
        if _with_crc([answer[0]]) != list(answer[:3]):
            return None
        return list(part[:4]), int(answer[0])

    def _halt(self) -> None:
        """Send HLTA (transmit only: a card never answers it, and the library would wait 2,000 reads)."""
        write = self._chip.Write_MFRC522
        write(_COMMAND, _IDLE)
        write(_COM_IRQ, 0x7F)
        write(_FIFO_LEVEL, _FLUSH)
        for value in _HLTA:
            write(_FIFO_DATA, value)
        write(_BIT_FRAMING, 0x00)
        write(_COMMAND, _TRANSMIT)

    # ------------------------------------------------------------------ health

    def _version(self) -> int | None:
        try:
            return int(self._chip.Read_MFRC522(_VERSION))
        except OSError as exc:
            log.debug("reading VersionReg failed: %s", exc)
            return None

    def _check_health(self) -> None:
        version = self._version()
        if version not in GOOD_VERSIONS:
            self._enter_fault(_version_problem(version))
        self._next_health = self._clock() + self.HEALTH_INTERVAL_S

    def _enter_fault(self, problem: str) -> NoReturn:
        self._fault = problem
        self._retry_delay = self.RETRY_MIN_S
        self._retry_at = self._clock() + self._retry_delay
        raise ReaderFault(problem)

    def _recover(self) -> None:
        """Reset and re-initialise the chip; clear the fault if it answers, else raise and back off."""
        try:
            self._hard_reset()
            self._chip.MFRC522_Init()  # soft reset, timer, antenna on
        except OSError as exc:
            log.debug("re-initialising the RC522 failed: %s", exc)
        version = self._version()
        now = self._clock()
        if version in GOOD_VERSIONS:
            log.info("RC522 reader answers again: %s (VersionReg 0x%02X)", GOOD_VERSIONS[version], version)
            self._fault = None
            self._retry_delay = self.RETRY_MIN_S
            self._next_health = now + self.HEALTH_INTERVAL_S
            return
        self._fault = _version_problem(version)
        self._retry_delay = min(self._retry_delay * 2, self.RETRY_MAX_S)
        self._retry_at = now + self._retry_delay
        log.debug("RC522 still silent; next try in %.1f s", self._retry_delay)
        raise ReaderFault(self._fault)

    def _hard_reset(self) -> None:
        """Pulse RST low: resets a chip that no longer takes SPI commands (a soft reset needs SPI)."""
        try:
            self._gpio.output(self._reset_pin, 0)
            self._sleep(self.RESET_LOW_S)
            self._gpio.output(self._reset_pin, 1)
        except RuntimeError as exc:  # the pin was cleaned up behind our back: soft reset only
            log.debug("could not pulse the RC522's reset pin: %s", exc)
            return
        self._sleep(self.RESET_STARTUP_S)


def _version_problem(version: int | None) -> str:
    if version is None:
        return "the RC522 reader cannot be reached over SPI"
    if version in (0x00, 0xFF):
        return (
            f"the RC522 reader does not answer (VersionReg reads 0x{version:02X}): check its wiring "
            "and its 3.3 V supply"
        )
    return (
        f"the RC522 reader reports VersionReg 0x{version:02X}, not a known MFRC522 "
        "(0x91/0x92, or clones 0x88/0x12)"
    )


def create_reader(config: AgentConfig) -> Reader:
    return Mfrc522Reader(
        bus=config.reader_spi_bus,
        device=config.reader_spi_device,
        reset_pin=config.reader_reset_pin,
        pin_mode=config.reader_pin_mode,
    )
