"""The card side of NTAG 424 DNA for the emulated RC522: ISO 14443-4 framing and the APDUs we use.

:class:`IsoDepCard` adds ISO-DEP to :class:`~tests.agent.rc522_emulator.Card`: RATS/ATS, I-blocks
with chaining both ways (the card chains answers longer than the reader's FSD), R(ACK)/R(NAK)
and S(WTX)/S(DESELECT). :class:`Ntag424Card` answers ISOSelectFile, AuthenticateEV2First,
ChangeKey and GetCardUID as the NT4H2421Gx datasheet describes, with its own crypto written
apart from the agent's (on ``cryptography``'s AES and CMAC), so that the two are checked
against each other and both against NXP's vectors (tests/agent/test_card_vectors.py).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.agent.rc522_emulator import Card, crc16, with_crc

DF_NAME = bytes.fromhex("D2760000850101")
# NTAG 424 DNA's ATS: FSCI 7 (128 bytes), TA, TB with FWI 7 and SFGI 1, TC, one historical byte.
ATS = bytes.fromhex("0677777102") + b"\x80"
FSD_TABLE = (16, 24, 32, 40, 48, 64, 96, 128, 256)


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _aes(key: bytes, data: bytes, iv: bytes | None = None, decrypt: bool = False) -> bytes:
    mode = modes.ECB() if iv is None else modes.CBC(iv)
    cipher = Cipher(algorithms.AES(key), mode)
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    return worker.update(data) + worker.finalize()


@dataclass
class IsoDepCard(Card):
    """A type A card that speaks ISO 14443-4 after RATS (SAK bit 0x20)."""

    fsd: int = 32
    ats: bytes = ATS
    # Answer in frames of at most this many bytes of INF (0: as large as the reader's FSD allows).
    chain_at: int = 0
    # Ask for a waiting time extension (S(WTX)) before the next this many answers.
    wtx_next: int = 0
    # Every APDU exchanged since the card was made: (command, response), for tests.
    log: list[tuple[bytes, bytes]] = field(default_factory=list)
    _bn: int = 0
    _rx: bytearray = field(default_factory=bytearray)
    _tx: list[bytes] = field(default_factory=list)
    _last: bytes = b""
    _held: bytes | None = None

    def power_up(self) -> None:
        super().power_up()
        self._rx, self._tx, self._last, self._held = bytearray(), [], b"", None
        self.on_power_up()

    def on_power_up(self) -> None:
        pass

    def receive(self, frame: bytes, last_bits: int) -> tuple[str, bytes] | None:
        if self.state == "PROTOCOL":
            if last_bits or len(frame) < 3 or with_crc(frame[:-2]) != frame:
                return None  # a damaged frame: an ISO-DEP card stays silent
            answer = self._block(frame[:-2])
            if answer is None:
                return None
            self._last = answer
            return "block", with_crc(answer)
        if self.state == "ACTIVE" and len(frame) == 4 and frame[0] == 0xE0 and with_crc(frame[:2]) == frame:
            self.fsd = FSD_TABLE[min(frame[1] >> 4, 8)]
            self.state = "PROTOCOL"
            return "ats", with_crc(self.ats)
        return super().receive(frame, last_bits)

    def _block(self, block: bytes) -> bytes | None:
        pcb, inf = block[0], block[1:]
        if pcb & 0xE2 == 0x02:  # I-block
            self._rx += inf
            if pcb & 0x10:
                return bytes([0xA2 | (pcb & 1)])
            apdu, self._rx = bytes(self._rx), bytearray()
            response = self.apdu(apdu)
            if response is None:
                self.gone = True  # taken away mid-command: no answer ever comes
                return None
            self.log.append((apdu, response))
            size = min(self.fsd - 3, self.chain_at or 256)
            self._tx = [response[i : i + size] for i in range(0, len(response), size)] or [b""]
            self._bn = pcb & 1
            if self.wtx_next:
                self.wtx_next -= 1
                self._held = b"wtx"
                return bytes([0xF2, 0x01])
            return self._next_chunk()
        if pcb & 0xF7 == 0xF2 and self._held is not None:  # the reader grants the WTX
            self._held = None
            return self._next_chunk()
        if pcb & 0xF6 == 0xA2 and self._tx:  # R(ACK): the next part of a chained answer
            self._bn = pcb & 1
            return self._next_chunk()
        if pcb & 0xF6 == 0xB2:  # R(NAK): our last block got lost
            return self._last or bytes([0xA2 | (pcb & 1)])
        if pcb & 0xF7 == 0xC2:  # S(DESELECT)
            self.state = "HALT"
            return bytes([0xC2])
        return None

    def _next_chunk(self) -> bytes:
        chunk = self._tx.pop(0)
        chain = 0x10 if self._tx else 0x00
        return bytes([0x02 | chain | self._bn]) + chunk

    def apdu(self, apdu: bytes) -> bytes | None:
        """The response APDU (data ‖ SW1 SW2) to a command APDU; None: the card left the field."""
        return b"\x6d\x00"


@dataclass
class Ntag424Card(IsoDepCard):
    """An NTAG 424 DNA: five AES keys (all zero from the factory) in its one application.

    ``tear``: (command byte, applied) — the card is pulled away when that command arrives (after
    ``tear_skip`` of them went through), before (False) or after (True) it took effect, and stays
    silent until put back.
    """

    keys: list[bytes] = field(default_factory=lambda: [bytes(16)] * 5)
    versions: list[int] = field(default_factory=lambda: [0] * 5)
    tear: tuple[int, bool] | None = None
    tear_skip: int = 0  # let this many of the tearing command through first
    # Every command byte received, for tests.
    commands: list[int] = field(default_factory=list)
    _selected: bool = False
    _pending: tuple[int, bytes] | None = None
    _auth: tuple[int, bytes, bytes, bytes] | None = None  # key no, TI, enc key, mac key
    _counter: int = 0

    def on_power_up(self) -> None:
        self._selected, self._pending, self._auth, self._counter = False, None, None, 0

    def apdu(self, apdu: bytes) -> bytes | None:
        if apdu[:4] == b"\x00\xa4\x04\x0c":
            self._selected = apdu[5 : 5 + apdu[4]] == DF_NAME
            return b"\x90\x00" if self._selected else b"\x6a\x82"
        if len(apdu) < 5 or apdu[0] != 0x90:
            return b"\x6e\x00"
        cmd, data = apdu[1], apdu[5 : 5 + apdu[4]] if apdu[4] else b""
        self.commands.append(cmd)
        if self.tear is not None and self.tear[0] == cmd and self.tear_skip:
            self.tear_skip -= 1
        elif self.tear is not None and self.tear[0] == cmd:
            applied = self.tear[1]
            self.tear = None
            if applied:
                self._native(cmd, data)
            return None
        return self._native(cmd, data)

    def _native(self, cmd: int, data: bytes) -> bytes:
        if not self._selected:
            return b"\x91\x1c"
        if cmd == 0x71:
            return self._auth_part1(data)
        if cmd == 0xAF and self._pending is not None:
            return self._auth_part2(data)
        if self._auth is None:
            return b"\x91\xae"
        if cmd == 0xC4:
            return self._change_key(data)
        if cmd == 0x51:
            return self._get_card_uid(data)
        return b"\x91\x1c"

    # ------------------------------------------------------------------ authentication

    def _auth_part1(self, data: bytes) -> bytes:
        self._auth, self._pending = None, None
        if len(data) < 2 or data[0] > 4:
            return b"\x91\x40"
        rnd_b = os.urandom(16)
        self._pending = (data[0], rnd_b)
        return _aes(self.keys[data[0]], rnd_b, bytes(16)) + b"\x91\xaf"

    def _auth_part2(self, data: bytes) -> bytes:
        assert self._pending is not None
        key_no, rnd_b = self._pending
        self._pending = None
        if len(data) != 32:
            return b"\x91\x7e"
        key = self.keys[key_no]
        plain = _aes(key, data, bytes(16), decrypt=True)
        rnd_a, rnd_b_rot = plain[:16], plain[16:]
        if rnd_b_rot != rnd_b[1:] + rnd_b[:1]:
            return b"\x91\xae"
        ti = os.urandom(4)
        answer = ti + rnd_a[1:] + rnd_a[:1] + bytes(12)
        mix = (
            rnd_a[:2]
            + bytes(x ^ y for x, y in zip(rnd_a[2:8], rnd_b[:6], strict=True))
            + rnd_b[6:]
            + rnd_a[8:]
        )
        enc = _cmac(key, bytes.fromhex("a55a00010080") + mix)
        mac = _cmac(key, bytes.fromhex("5aa500010080") + mix)
        self._auth, self._counter = (key_no, ti, enc, mac), 0
        return _aes(key, answer, bytes(16)) + b"\x91\x00"

    # ------------------------------------------------------------------ secure messaging

    def _mact(self, mac_key: bytes, data: bytes) -> bytes:
        return _cmac(mac_key, data)[1::2]

    def _open(self, cmd: int, header_len: int, data: bytes) -> tuple[bytes, bytes] | None:
        """Check the command's MAC and decrypt its data: (header, plain data), or None if the MAC is wrong."""
        assert self._auth is not None
        _key_no, ti, enc, mac = self._auth
        body, mact = data[:-8], data[-8:]
        ctr = self._counter.to_bytes(2, "little")
        if len(data) < 8 + header_len or self._mact(mac, bytes([cmd]) + ctr + ti + body) != mact:
            return None
        header, encrypted = body[:header_len], body[header_len:]
        if not encrypted:
            return header, b""
        iv = _aes(enc, b"\xa5\x5a" + ti + ctr + bytes(8))
        plain = _aes(enc, encrypted, iv, decrypt=True)
        return header, plain

    def _answer(self, payload: bytes = b"") -> bytes:
        assert self._auth is not None
        _key_no, ti, enc, mac = self._auth
        self._counter += 1
        ctr = self._counter.to_bytes(2, "little")
        if payload:
            padded = payload + b"\x80" + bytes(-(len(payload) + 1) % 16)
            payload = _aes(enc, padded, _aes(enc, b"\x5a\xa5" + ti + ctr + bytes(8)))
        return payload + self._mact(mac, b"\x00" + ctr + ti + payload) + b"\x91\x00"

    def _refuse(self, status: bytes) -> bytes:
        self._auth = None  # an error ends the authenticated state
        return status

    def _change_key(self, data: bytes) -> bytes:
        assert self._auth is not None
        opened = self._open(0xC4, 1, data)
        if opened is None:
            return self._refuse(b"\x91\x1e")
        header, plain = opened
        key_no = header[0]
        if key_no > 4:
            return self._refuse(b"\x91\x40")
        if self._auth[0] != 0:
            return self._refuse(b"\x91\x9d")  # only the application master key changes keys
        if key_no == self._auth[0]:
            self.keys[key_no], self.versions[key_no] = plain[:16], plain[16]
            self._auth = None  # the session's own key changed: the session is over
            return b"\x91\x00"
        new = bytes(x ^ y for x, y in zip(plain[:16], self.keys[key_no], strict=True))
        crc = ((~zlib.crc32(new)) & 0xFFFFFFFF).to_bytes(4, "little")
        if plain[17:21] != crc:
            return self._refuse(b"\x91\x1e")
        self.keys[key_no], self.versions[key_no] = new, plain[16]
        return self._answer()

    def _get_card_uid(self, data: bytes) -> bytes:
        if self._open(0x51, 0, data) is None:
            return self._refuse(b"\x91\x1e")
        return self._answer(self.uid)


@dataclass
class ReplayCard(IsoDepCard):
    """An attacker's card that answers each APDU with what a genuine card answered once (recorded)."""

    recorded: list[bytes] = field(default_factory=list)
    _played: int = 0

    def on_power_up(self) -> None:
        self._played = 0

    def apdu(self, apdu: bytes) -> bytes | None:
        if self._played >= len(self.recorded):
            return b"\x91\x1c"
        self._played += 1
        return self.recorded[self._played - 1]


__all__ = ["ATS", "IsoDepCard", "Ntag424Card", "ReplayCard", "crc16"]
