"""An emulated RC522 board for tests: the MFRC522 chip at register level, a card, fake spidev and RPi.GPIO.

:func:`installed` puts fake ``spidev`` and ``RPi.GPIO`` modules wired to an :class:`Rc522Emulator`
into ``sys.modules``, so the real ``mfrc522`` library runs on top of it unchanged; afterwards it
removes them and the library again, so nothing leaks into other tests. The card follows
ISO 14443-3's states (IDLE, READY, ACTIVE, HALT): REQA/WUPA, anticollision and select at cascade
levels 1-3 and HLTA behave as on a real card, including its silence to commands it does not expect.
"""

from __future__ import annotations

import sys
import threading
import types
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from device_agent.hardware.mfrc522 import BCM_TO_BOARD, BOARD_TO_BCM

# Registers (MFRC522 datasheet section 9.2).
COMMAND, COM_IEN, DIV_IEN, COM_IRQ, DIV_IRQ, ERROR, STATUS1, STATUS2 = range(0x01, 0x09)
FIFO_DATA, FIFO_LEVEL, WATER_LEVEL, CONTROL, BIT_FRAMING, COLL = range(0x09, 0x0F)
MODE, TX_MODE, RX_MODE, TX_CONTROL = 0x11, 0x12, 0x13, 0x14
CRC_RESULT_M, CRC_RESULT_L = 0x21, 0x22
T_MODE, T_PRESCALER, T_RELOAD_H, T_RELOAD_L = 0x2A, 0x2B, 0x2C, 0x2D
VERSION = 0x37

# Commands (CommandReg bits 3-0).
IDLE, CALC_CRC, TRANSMIT, RECEIVE, TRANSCEIVE, MF_AUTHENT, SOFT_RESET = 0x0, 0x3, 0x4, 0x8, 0xC, 0xE, 0xF

# ComIrqReg bits.
TIMER_IRQ, ERR_IRQ, IDLE_IRQ, RX_IRQ, TX_IRQ = 0x01, 0x02, 0x10, 0x20, 0x40
# ErrorReg bits.
PROTOCOL_ERR, PARITY_ERR, CRC_ERR, COLL_ERR, BUFFER_OVFL = 0x01, 0x02, 0x04, 0x08, 0x10

# Register values after a reset (datasheet table 20 onwards); unlisted registers reset to 0.
RESET_VALUES = {
    COMMAND: 0x20,
    COM_IEN: 0x80,
    COM_IRQ: 0x14,
    STATUS1: 0x21,
    WATER_LEVEL: 0x08,
    CONTROL: 0x10,
    COLL: 0xA0,
    MODE: 0x3F,
    TX_CONTROL: 0x80,  # antenna drivers off
    0x16: 0x10,
    0x17: 0x84,
    0x18: 0x84,
    0x19: 0x4D,
    0x1C: 0x62,
    0x1F: 0xEB,
    CRC_RESULT_M: 0xFF,
    CRC_RESULT_L: 0xFF,
    0x24: 0x26,
    0x26: 0x48,
    0x27: 0x88,
    0x28: 0x20,
    0x29: 0x20,
}
# ModeReg CRCPreset (bits 1-0) → CRC preset.
CRC_PRESETS = {0: 0x0000, 1: 0x6363, 2: 0xA671, 3: 0xFFFF}

REQA, WUPA, HLTA = 0x26, 0x52, 0x50
SELECT = (0x93, 0x95, 0x97)
CASCADE_TAG = 0x88

# What each kind of read error damages: "any" answer, or only an anticollision answer (UID
# part + BCC) or a SAK ("crc": a bit of its CRC flipped; "sak": its cascade bit flipped).
# "silent": the card does not hear the next frame at all.
FAULT_FRAMES = {
    "collision": "any",
    "parity": "any",
    "bcc": "anticoll",
    "partial": "anticoll",
    "crc": "sak",
    "sak": "sak",
    "silent": "any",
}


def crc16(data: bytes | list[int], preset: int = 0x6363) -> int:
    """CRC_A bit by bit (reflected polynomial 0x8408); written apart from the backend's on purpose."""
    crc = preset
    for value in data:
        crc ^= value
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def with_crc(data: bytes) -> bytes:
    crc = crc16(data)
    return data + bytes([crc & 0xFF, crc >> 8])


@dataclass
class Card:
    """One ISO 14443-3 type A card (4-, 7- or 10-byte UID) and its state."""

    uid: bytes
    sak: int
    state: str = "IDLE"
    level: int = 0
    # Woken from HALT: an unexpected command sends it back to HALT, not IDLE.
    from_halt: bool = False
    # Taken away (mid-command, say): the card hears nothing until laid on the reader again.
    gone: bool = False

    @property
    def levels(self) -> int:
        return {4: 1, 7: 2, 10: 3}[len(self.uid)]

    @property
    def atqa(self) -> bytes:
        # Bits 7-6 of the first byte: UID size (single, double, triple).
        return bytes([{1: 0x04, 2: 0x44, 3: 0x84}[self.levels], 0x00])

    def part(self, level: int) -> bytes:
        """The level's four UID bytes (cascade tag first when the UID goes on) and the BCC."""
        if level == self.levels - 1:
            data = self.uid[3 * level : 3 * level + 4]
        else:
            data = bytes([CASCADE_TAG]) + self.uid[3 * level : 3 * level + 3]
        return data + bytes([data[0] ^ data[1] ^ data[2] ^ data[3]])

    def power_up(self) -> None:
        self.state, self.level, self.from_halt = "IDLE", 0, False

    def receive(self, frame: bytes, last_bits: int) -> tuple[str, bytes] | None:
        """Handle one frame from the reader; the kind of answer and its bytes, or None (silence)."""
        if last_bits == 7 and len(frame) == 1:  # a short frame: REQA or WUPA
            if (frame[0] == REQA and self.state == "IDLE") or (
                frame[0] == WUPA and self.state in ("IDLE", "HALT")
            ):
                self.from_halt = self.state == "HALT"
                self.state, self.level = "READY", 0
                return "atqa", self.atqa
            self._unexpected()
            return None
        if last_bits == 0 and self.state == "READY" and len(frame) >= 2 and frame[0] == SELECT[self.level]:
            part = self.part(self.level)
            if frame[1] == 0x20:
                return "anticoll", part
            if frame[1] == 0x70 and frame == with_crc(bytes([SELECT[self.level], 0x70]) + part):
                if self.level + 1 < self.levels:
                    self.level += 1
                    sak = 0x04  # cascade bit: the UID goes on at the next level
                else:
                    self.state = "ACTIVE"
                    sak = self.sak
                return "sak", with_crc(bytes([sak]))
        if self.state == "ACTIVE" and frame == with_crc(bytes([HLTA, 0x00])):
            self.state = "HALT"
            return None
        self._unexpected()
        return None

    def _unexpected(self) -> None:
        # ISO 14443-3: READY or ACTIVE cards fall back silently on anything they do not expect.
        if self.state in ("READY", "ACTIVE"):
            self.state = "HALT" if self.from_halt else "IDLE"
        return None


class FakeGpio:
    """The part of ``RPi.GPIO`` the library uses, keeping pin levels by header pin (BOARD) number."""

    BOARD, BCM = 10, 11
    OUT, IN = 0, 1
    LOW, HIGH = 0, 1
    PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22

    def __init__(self, on_output: Callable[[int, int | None], None]) -> None:
        self._on_output = on_output
        self.mode: int | None = None
        self.directions: dict[int, int] = {}
        self.levels: dict[int, int] = {}
        self.cleanups = 0

    def header_pin(self, channel: int) -> int:
        if self.mode is None:
            raise RuntimeError(
                "Please set pin numbering mode using GPIO.setmode(GPIO.BOARD) or GPIO.setmode(GPIO.BCM)"
            )
        board = channel if self.mode == self.BOARD else BCM_TO_BOARD.get(channel)
        if board not in BOARD_TO_BCM:
            raise ValueError("The channel sent is invalid on a Raspberry Pi")
        return board

    def getmode(self) -> int | None:
        return self.mode

    def setmode(self, mode: int) -> None:
        if mode not in (self.BOARD, self.BCM):
            raise ValueError("An invalid mode was passed to setmode()")
        if self.mode is not None and mode != self.mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def setwarnings(self, flag: bool) -> None:
        pass

    def setup(self, channel: int, direction: int, pull_up_down: int = 20, initial: int = -1) -> None:
        board = self.header_pin(channel)
        self.directions[board] = direction
        if direction == self.OUT and initial != -1:
            self.output(channel, initial)

    def output(self, channel: int, value: int) -> None:
        board = self.header_pin(channel)
        if self.directions.get(board) != self.OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        self.levels[board] = 1 if value else 0
        self._on_output(board, self.levels[board])

    def input(self, channel: int) -> int:
        return self.levels.get(self.header_pin(channel), 0)

    def cleanup(self, channel: int | None = None) -> None:
        self.cleanups += 1
        released = list(self.directions) if channel is None else [self.header_pin(channel)]
        for board in released:
            self.directions.pop(board, None)
            self.levels.pop(board, None)
            self._on_output(board, None)  # an input now: nothing drives the line
        if channel is None:
            self.mode = None

    def module(self) -> types.ModuleType:
        module = types.ModuleType("RPi.GPIO")
        for name in ("BOARD", "BCM", "OUT", "IN", "LOW", "HIGH", "PUD_OFF", "PUD_DOWN", "PUD_UP"):
            setattr(module, name, getattr(self, name))
        for name in ("getmode", "setmode", "setwarnings", "setup", "output", "input", "cleanup"):
            setattr(module, name, getattr(self, name))
        return module


class FakeSpiDev:
    """``spidev.SpiDev``: one device node; only the emulator's (bus, device) exists."""

    def __init__(self, chip: Rc522Emulator) -> None:
        self._chip = chip
        self.opened: tuple[int, int] | None = None
        self.max_speed_hz = 125_000_000
        self.mode = 0
        self.bits_per_word = 8

    def open(self, bus: int, device: int) -> None:
        if (bus, device) != self._chip.spi_address:
            raise FileNotFoundError(2, "No such file or directory", f"/dev/spidev{bus}.{device}")
        self.opened = (bus, device)
        self._chip.opens += 1

    def xfer2(self, data: list[int], *args: Any) -> list[int]:
        if self.opened is None:
            raise OSError(9, "Bad file descriptor")
        return self._chip.transfer(list(data))

    xfer = xfer2

    def close(self) -> None:
        if self.opened is not None:
            self._chip.closes += 1
        self.opened = None


class Rc522Emulator:
    """An MFRC522 on SPI ``spi_address`` with its reset line (NRSTPD) on header pin ``reset_pin``.

    Test controls: :meth:`present`, :meth:`remove`, :meth:`fail_next_reads`, :meth:`go_dead`,
    :meth:`revive`. ``transfers`` counts SPI transfers (one ``xfer2`` call each).
    """

    def __init__(
        self, version: int = 0x92, spi_address: tuple[int, int] = (0, 0), reset_pin: int = 22
    ) -> None:
        self.version = version
        self.spi_address = spi_address
        self.reset_pin = reset_pin
        self.gpio = FakeGpio(self._reset_line)
        self.transfers = 0
        self.opens = 0
        self.closes = 0
        self.soft_resets = 0
        # REQA/WUPA frames sent: one per poll of our backend.
        self.wakeups = 0
        self.reads: Counter[int] = Counter()
        # What went over the air to the card: (frame, last bits), newest last.
        self.frames: deque[tuple[bytes, int]] = deque(maxlen=200)
        self.card: Card | None = None
        # (kind, damage): the next answers of each kind's frame type, let through or damaged.
        self._faults: deque[tuple[str, bool]] = deque()
        self._dead: int | None = None
        self._held_in_reset = False
        self._lock = threading.RLock()
        self.regs = [0] * 64
        self.fifo: deque[int] = deque()
        self._power_on()

    # ------------------------------------------------------------------ test controls

    def present(self, uid: bytes | str, sak: int | None = None) -> None:
        """Lay a card on the reader (replacing any); ``sak`` defaults to MIFARE Classic / Ultralight."""
        uid = bytes.fromhex(uid) if isinstance(uid, str) else uid
        with self._lock:
            self.card = Card(uid, sak if sak is not None else (0x08 if len(uid) == 4 else 0x00))

    def present_card(self, card: Card) -> None:
        """Lay a prepared card (an NTAG 424, a clone, …) on the reader; it keeps what it stores."""
        with self._lock:
            card.gone = False
            card.power_up()
            self.card = card

    def remove(self) -> None:
        with self._lock:
            self.card = None

    def fail_next_reads(self, count: int = 1, kind: str = "collision", after: int = 0) -> None:
        """Damage the next ``count`` answers of the kind's frame type (see FAULT_FRAMES), after
        letting ``after`` of them through (to hit cascade level 2, say)."""
        if kind not in FAULT_FRAMES:
            raise ValueError(f"kind must be one of {sorted(FAULT_FRAMES)}")
        with self._lock:
            self._faults.extend([(kind, False)] * after + [(kind, True)] * count)

    @property
    def pending_faults(self) -> int:
        """Faults queued by :meth:`fail_next_reads` that no answer has met yet."""
        return len(self._faults)

    def go_dead(self, reads_as: int = 0x00) -> None:
        """The chip stops answering: every read returns ``reads_as`` (0x00: MISO low, 0xFF: floating high)."""
        with self._lock:
            self._dead = reads_as

    def revive(self) -> None:
        """Power comes back: the chip starts from its reset state (antenna off until initialised)."""
        with self._lock:
            self._dead = None
            self._power_on()

    @property
    def antenna_on(self) -> bool:
        return bool(self.regs[TX_CONTROL] & 0x03)

    # ------------------------------------------------------------------ SPI

    def transfer(self, data: list[int]) -> list[int]:
        """One SPI transfer. Byte 0 is the address ((reg << 1) & 0x7E, bit 7 set to read)."""
        with self._lock:
            self.transfers += 1
            if not data:
                return []
            address = (data[0] >> 1) & 0x3F
            if data[0] & 0x80:
                # Reading: each further byte clocks out the register named by the byte before it.
                out = [0]
                for following in data[1:]:
                    out.append(self._read(address))
                    address = (following >> 1) & 0x3F
                return out
            for value in data[1:]:
                self._write(address, value & 0xFF)
            return [0] * len(data)

    def _powered(self) -> bool:
        return self._dead is None and not self._held_in_reset

    def _read(self, reg: int) -> int:
        self.reads[reg] += 1
        if not self._powered():
            return self._dead if self._dead is not None else 0x00
        if reg == FIFO_DATA:
            return self.fifo.popleft() if self.fifo else 0
        if reg == FIFO_LEVEL:
            return len(self.fifo)
        if reg in (COM_IRQ, DIV_IRQ):
            return self.regs[reg] & 0x7F
        if reg == VERSION:
            return self.version
        return self.regs[reg]

    def _write(self, reg: int, value: int) -> None:
        if not self._powered():
            return
        if reg in (COM_IRQ, DIV_IRQ):
            # Set1 (bit 7): 1 sets the marked bits, 0 clears them.
            if value & 0x80:
                self.regs[reg] |= value & 0x7F
            else:
                self.regs[reg] &= ~value & 0x7F
        elif reg == FIFO_DATA:
            if len(self.fifo) < 64:
                self.fifo.append(value)
            else:
                self.regs[ERROR] |= BUFFER_OVFL
        elif reg == FIFO_LEVEL:
            if value & 0x80:
                self.fifo.clear()
                self.regs[ERROR] &= ~BUFFER_OVFL
        elif reg == VERSION:
            pass  # read-only
        elif reg == COMMAND:
            self.regs[COMMAND] = value & 0x3F
            self._command(value & 0x0F)
        elif reg == BIT_FRAMING:
            self.regs[BIT_FRAMING] = value
            if value & 0x80 and self.regs[COMMAND] & 0x0F == TRANSCEIVE:
                self._transceive()
        elif reg == TX_CONTROL:
            was_on = self.antenna_on
            self.regs[TX_CONTROL] = value
            if was_on and not self.antenna_on and self.card is not None:
                self.card.power_up()  # no field, no power: the card starts over
        else:
            self.regs[reg] = value

    # ------------------------------------------------------------------ chip behaviour

    def _power_on(self) -> None:
        self.regs = [RESET_VALUES.get(reg, 0) for reg in range(64)]
        self.fifo.clear()
        if self.card is not None:
            self.card.power_up()

    def _reset_line(self, board: int, level: int | None) -> None:
        if board != self.reset_pin:
            return
        with self._lock:
            if level == 0:
                self._held_in_reset = True  # NRSTPD low: hard power-down
            elif self._held_in_reset:
                self._held_in_reset = False
                self._power_on()

    def _command(self, command: int) -> None:
        if command == SOFT_RESET:
            self.soft_resets += 1
            self._power_on()
        elif command == CALC_CRC:
            crc = crc16(list(self.fifo), CRC_PRESETS[self.regs[MODE] & 0x03])
            self.fifo.clear()
            self.regs[CRC_RESULT_L], self.regs[CRC_RESULT_M] = crc & 0xFF, crc >> 8
            self.regs[DIV_IRQ] |= 0x04  # CRCIRq; CalcCRC runs on until another command
        elif command == TRANSMIT:
            frame = bytes(self.fifo)
            self.fifo.clear()
            self._to_card(frame, self.regs[BIT_FRAMING] & 0x07)  # the receiver is off: no answer
            self.regs[COM_IRQ] |= TX_IRQ | IDLE_IRQ
            self.regs[COMMAND] &= 0xF0
        elif command == MF_AUTHENT:
            self.fifo.clear()
            self.regs[STATUS2] |= 0x08  # MFCrypto1On
            self.regs[COM_IRQ] |= IDLE_IRQ
            self.regs[COMMAND] &= 0xF0

    def _to_card(self, frame: bytes, last_bits: int) -> tuple[str, bytes] | None:
        self.frames.append((frame, last_bits))
        if last_bits == 7:
            self.wakeups += 1
        if self.card is None or self.card.gone or not self.antenna_on or not frame:
            return None
        if self._faults and self._faults[0][0] == "silent":
            _kind, damage = self._faults.popleft()
            if damage:
                return None
        return self.card.receive(frame, last_bits)

    def _transceive(self) -> None:
        frame = bytes(self.fifo)
        self.fifo.clear()
        if self.regs[TX_MODE] & 0x80 and frame:  # TxCRCEn: the chip appends the CRC
            frame = with_crc(frame)
        answer = self._to_card(frame, self.regs[BIT_FRAMING] & 0x07)
        if answer is None:
            # Nothing comes back: the timer (TAuto) runs out. The command itself goes on.
            self.regs[ERROR] = 0
            self.regs[COM_IRQ] |= TIMER_IRQ
            return
        kind, data = answer
        errors, last_bits, received = 0, 0, bytearray(data)
        fault = None
        if self._faults and FAULT_FRAMES[self._faults[0][0]] in ("any", kind):
            fault, damage = self._faults.popleft()
            if not damage:
                fault = None
        if fault is not None:
            if fault == "collision":
                errors = COLL_ERR
                received[0] ^= 0x10
            elif fault == "parity":
                errors = PARITY_ERR
                received[-1] ^= 0x01
            elif fault == "bcc":
                received[4] ^= 0xFF
            elif fault == "partial":
                received, last_bits = received[:3], 5
            elif fault == "sak":
                received[0] ^= 0x04
            elif fault == "crc":
                received[-1] ^= 0xFF
                if self.regs[RX_MODE] & 0x80:  # RxCRCEn: only then does the chip check it
                    errors = CRC_ERR
        if self.regs[RX_MODE] & 0x80 and not errors:  # RxCRCEn: the chip checks and drops the CRC
            if len(received) >= 2 and with_crc(bytes(received[:-2])) == bytes(received):
                received = received[:-2]
            else:
                errors = CRC_ERR
        self.fifo.extend(received[:64])
        self.regs[ERROR] = errors
        self.regs[CONTROL] = (self.regs[CONTROL] & ~0x07) | last_bits
        self.regs[COM_IRQ] |= RX_IRQ | IDLE_IRQ | (ERR_IRQ if errors else 0)

    # ------------------------------------------------------------------ fake modules

    def modules(self) -> dict[str, types.ModuleType]:
        """Fake ``spidev``, ``RPi`` and ``RPi.GPIO`` modules wired to this chip."""
        spidev = types.ModuleType("spidev")
        spidev.SpiDev = lambda: FakeSpiDev(self)  # type: ignore[attr-defined]
        gpio = self.gpio.module()
        rpi = types.ModuleType("RPi")
        rpi.__path__ = []  # a package, so that `import RPi.GPIO` works
        rpi.GPIO = gpio  # type: ignore[attr-defined]
        return {"spidev": spidev, "RPi": rpi, "RPi.GPIO": gpio}


# Modules the fakes replace, and the library modules that bind them when imported.
_FAKED = ("spidev", "RPi", "RPi.GPIO")


def _library_modules() -> list[str]:
    return [name for name in sys.modules if name == "mfrc522" or name.startswith("mfrc522.")]


@contextmanager
def installed(chip: Rc522Emulator) -> Iterator[Rc522Emulator]:
    """Run the real ``mfrc522`` library against ``chip``; leave ``sys.modules`` as it was afterwards."""
    saved = {name: sys.modules.get(name) for name in (*_FAKED, *_library_modules())}
    # The library binds GPIO and spidev when first imported: drop any copy bound to other fakes.
    for name in _library_modules():
        del sys.modules[name]
    sys.modules.update(chip.modules())
    try:
        yield chip
    finally:
        for name in (*_FAKED, *_library_modules()):
            sys.modules.pop(name, None)
        sys.modules.update({name: module for name, module in saved.items() if module is not None})
