"""ISO/IEC 14443-4 (ISO-DEP) over an MFRC522: RATS, then APDUs in I-blocks with chaining.

Runs on the ``mfrc522`` library's register calls (``Write_MFRC522``/``Read_MFRC522``), not its
``MFRC522_ToCard``: that one reads at most 16 bytes back, and an AuthenticateEV2First answer is
37. The chip appends and checks the CRC itself here (TxCRCEn/RxCRCEn), and every frame fits its
64-byte FIFO: we announce FSD = 64 in RATS, so the card sends at most 62 bytes plus CRC, and we
send at most min(FSC, 64) - 2 bytes a frame, chaining longer APDUs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from device_agent.cards import CardError, CardGone

# MFRC522 registers and bits (datasheet section 9.2).
_COMMAND = 0x01
_COM_IRQ = 0x04
_ERROR = 0x06
_FIFO_DATA = 0x09
_FIFO_LEVEL = 0x0A
_BIT_FRAMING = 0x0D
_TX_MODE = 0x12
_RX_MODE = 0x13
_T_RELOAD_H = 0x2C
_T_RELOAD_L = 0x2D
_IDLE = 0x00
_TRANSCEIVE = 0x0C
_CRC_EN = 0x80
_RX_IRQ, _TIMER_IRQ = 0x20, 0x01
_ERRORS = 0x1B  # BufferOvfl, CollErr, ParityErr, ProtocolErr (CRCErr is 0x04, checked apart)
_CRC_ERR = 0x04

RATS = 0xE0
FSDI = 5  # FSD = 64 bytes: one FIFO
FSC_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)
# The library's timer runs at 13.56 MHz / (2 * 0xD3E + 1): one tick every 0.5 ms.
_TICK_S = (2 * 0xD3E + 1) / 13.56e6

PCB_I = 0x02
PCB_CHAIN = 0x10
PCB_R_ACK = 0xA2
PCB_R_NAK = 0xB2
PCB_S_DESELECT = 0xC2
PCB_S_WTX = 0xF2


class IsoDep:
    """One ISO-DEP (T=CL) link to the card just selected on ``chip`` (an ``mfrc522.MFRC522``).

    ``activate()`` sends RATS; ``exchange(apdu)`` carries one APDU each way; ``deselect()`` ends
    the link (the card goes to HALT). A frame without an answer is asked for again with R(NAK),
    :attr:`RETRIES` times, then the card counts as gone (:class:`CardError`).
    """

    RETRIES = 2
    # Extra waiting time (WTX) a card may ask for, per answer, before we give up.
    MAX_WTX = 8

    def __init__(self, chip: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._chip = chip
        self._clock = clock
        self._block = 0
        self._fsc = 32  # until the ATS says otherwise (ISO 14443-4 default FSCI 2)
        self._fwt_s = 0.0048  # FWI 4, the default
        self.ats = b""

    # ------------------------------------------------------------------ link

    def activate(self) -> bytes:
        """RATS with FSD 64 and CID 0; returns the ATS. CardError if the card does not answer it."""
        self._set_crc(True)
        self._set_timeout(0.0048 * 4)  # FWT for RATS: ISO 14443-4 activation frame waiting time
        ats = self._transceive(bytes([RATS, FSDI << 4]))
        if ats is None or len(ats) < 1 or ats[0] != len(ats):
            raise CardError("the card does not answer RATS: it is no ISO 14443-4 card")
        self.ats = ats
        if len(ats) > 1:
            t0 = ats[1]
            self._fsc = FSC_TABLE[min(t0 & 0x0F, 8)]
            pos = 2
            if t0 & 0x10:  # TA
                pos += 1
            if t0 & 0x20 and pos < len(ats):  # TB: FWI in the high nibble
                fwi = ats[pos] >> 4
                self._fwt_s = 256 * 16 * (1 << min(fwi, 14)) / 13.56e6
        self._set_timeout(self._fwt_s)
        self._block = 0
        return ats

    def close(self) -> None:
        """Hand the chip back for ISO 14443-3 polling: no hardware CRC, and the library's timer
        (MFRC522_Init's 30 ticks, 15 ms) instead of the card's frame waiting time."""
        self._set_crc(False)
        self._chip.Write_MFRC522(_T_RELOAD_H, 0)
        self._chip.Write_MFRC522(_T_RELOAD_L, 30)

    def deselect(self) -> None:
        try:
            self._transceive(bytes([PCB_S_DESELECT]))
        finally:
            self.close()

    # ------------------------------------------------------------------ APDUs

    def exchange(self, apdu: bytes) -> bytes:
        """Send a command APDU and return the response APDU, chaining as the frame sizes need."""
        size = min(self._fsc, 64) - 3  # PCB and CRC take three bytes of every frame
        chunks = [apdu[i : i + size] for i in range(0, len(apdu), size)] or [b""]
        for chunk in chunks[:-1]:
            answer = self._send_block(bytes([PCB_I | PCB_CHAIN | self._block]) + chunk)
            if answer[0] & 0xF6 != PCB_R_ACK or answer[0] & 0x01 != self._block:
                raise CardError(f"the card did not acknowledge a chained block (PCB {answer[0]:02X})")
            self._block ^= 1
        answer = self._send_block(bytes([PCB_I | self._block]) + chunks[-1])
        response = bytearray()
        while True:
            pcb = answer[0]
            if pcb & 0xE2 != PCB_I or pcb & 0x01 != self._block:
                raise CardError(f"expected an I-block from the card, got PCB {pcb:02X}")
            response += answer[1:]
            self._block ^= 1
            if not pcb & PCB_CHAIN:
                return bytes(response)
            answer = self._send_block(bytes([PCB_R_ACK | self._block]))

    def _send_block(self, block: bytes) -> bytes:
        """Send one block and return the card's answer block, handling WTX and retransmission."""
        frame = block
        retries = 0
        extensions = 0
        while True:
            answer = self._transceive(frame)
            if answer is None or not answer:
                retries += 1
                if retries > self.RETRIES:
                    raise CardGone("the card left the field (no answer)")
                # ISO 14443-4 rule 4: an I-block got no valid answer; ask for it with R(NAK).
                frame = bytes([PCB_R_NAK | self._block]) if block[0] & 0xE2 == PCB_I else block
                continue
            if answer[0] & 0xF7 == PCB_S_WTX and len(answer) >= 2:
                extensions += 1
                if extensions > self.MAX_WTX:
                    raise CardGone("the card keeps asking for more time")
                multiplier = answer[1] & 0x3F
                self._set_timeout(self._fwt_s * max(multiplier, 1))
                frame = bytes([PCB_S_WTX, multiplier])
                continue
            self._set_timeout(self._fwt_s)
            return answer

    # ------------------------------------------------------------------ chip

    def _set_crc(self, on: bool) -> None:
        for reg in (_TX_MODE, _RX_MODE):
            value = int(self._chip.Read_MFRC522(reg))
            self._chip.Write_MFRC522(reg, value | _CRC_EN if on else value & ~_CRC_EN & 0xFF)

    def _set_timeout(self, seconds: float) -> None:
        ticks = min(0xFFFF, int(seconds / _TICK_S) + 2)
        self._chip.Write_MFRC522(_T_RELOAD_H, ticks >> 8)
        self._chip.Write_MFRC522(_T_RELOAD_L, ticks & 0xFF)

    def _transceive(self, frame: bytes) -> bytes | None:
        """One frame out, the answer in (CRC checked and removed by the chip); None: no valid answer."""
        write, read = self._chip.Write_MFRC522, self._chip.Read_MFRC522
        write(_COMMAND, _IDLE)
        write(_COM_IRQ, 0x7F)
        write(_FIFO_LEVEL, 0x80)
        for value in frame:
            write(_FIFO_DATA, value)
        write(_BIT_FRAMING, 0x00)
        write(_COMMAND, _TRANSCEIVE)
        write(_BIT_FRAMING, 0x80)
        # The chip's own timer (TAuto) ends a silent wait; the clock is a guard against a stuck chip.
        deadline = self._clock() + 4 * self._fwt_s + 0.05
        while True:
            irq = int(read(_COM_IRQ))
            if irq & _RX_IRQ:
                break
            if irq & _TIMER_IRQ or self._clock() > deadline:
                write(_COMMAND, _IDLE)
                return None
        write(_COMMAND, _IDLE)
        if int(read(_ERROR)) & (_ERRORS | _CRC_ERR):
            return None
        count = int(read(_FIFO_LEVEL))
        return bytes(int(read(_FIFO_DATA)) for _ in range(count))
