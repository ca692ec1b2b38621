"""NXP NTAG 424 DNA from the reader's side: select, AuthenticateEV2First, secure messaging, ChangeKey.

Written from NXP's NT4H2421Gx datasheet and application note AN12196 ("NTAG 424 DNA and NTAG 424
DNA TagTamper features and hints"); the tests replay AN12196's worked examples. Commands go as
ISO 7816-4 APDUs (native commands wrapped with CLA 0x90) through any :class:`Transport`, in
practice ISO 14443-4 over the RC522 (:mod:`device_agent.hardware.iso14443`).

After AuthenticateEV2First both sides hold two session keys (SesAuthENC, SesAuthMAC), a
transaction identifier TI and a command counter. In CommMode.Full a command's data is
AES-CBC-encrypted (IV from TI and counter) and MACed with a truncated CMAC over command, counter,
TI, header and data; the card's answer is MACed the same way with the counter plus one. A
recorded exchange is therefore worthless later: RndA and RndB are fresh each time.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from device_agent.cards import CardAuthFailed, CardError, CardGone
from werkbank_protocol.cardkeys import KEY_SIZE, aes_cmac, aes_ecb

# ISO/IEC 7816-4 DF name of the NTAG 424 DNA application.
DF_NAME = bytes.fromhex("D2760000850101")
DEFAULT_KEY = bytes(KEY_SIZE)  # every key of a factory card

AUTH_EV2_FIRST = 0x71
ADDITIONAL_FRAME = 0xAF
CHANGE_KEY = 0xC4
GET_CARD_UID = 0x51
GET_VERSION = 0x60

SW_OK = b"\x91\x00"
SW_MORE = b"\x91\xaf"
SW_ISO_OK = b"\x90\x00"
# Native status codes (SW2 after SW1 = 0x91) that matter to us.
STATUS_NAMES = {
    0x1C: "illegal command",
    0x1E: "integrity error",
    0x40: "no such key",
    0x7E: "length error",
    0x9D: "permission denied",
    0x9E: "parameter error",
    0xAD: "authentication delay",
    0xAE: "authentication error",
    0xEE: "memory error",
}


class Transport(Protocol):
    def exchange(self, apdu: bytes) -> bytes:
        """Send a command APDU, return the response APDU (data ‖ SW1 SW2)."""
        ...


def _split(response: bytes) -> tuple[bytes, bytes]:
    if len(response) < 2:
        raise CardError(f"the card's answer is {len(response)} bytes, too short for a status word")
    return response[:-2], response[-2:]


def _status_error(sw: bytes, what: str) -> CardError:
    name = STATUS_NAMES.get(sw[1], "unknown status") if sw[0] == 0x91 else "ISO status"
    cls = CardAuthFailed if sw == b"\x91\xae" else CardError
    return cls(f"{what}: the card answered {sw.hex().upper()} ({name})")


def native(cmd: int, data: bytes = b"") -> bytes:
    """A native command wrapped as an ISO 7816-4 APDU (CLA 0x90, Le 0x00)."""
    if data:
        return bytes([0x90, cmd, 0x00, 0x00, len(data)]) + data + b"\x00"
    return bytes([0x90, cmd, 0x00, 0x00, 0x00])


def select_application(transport: Transport) -> None:
    """ISOSelectFile of the NTAG 424 DNA application by DF name (no FCI returned)."""
    apdu = bytes([0x00, 0xA4, 0x04, 0x0C, len(DF_NAME)]) + DF_NAME + b"\x00"
    _data, sw = _split(transport.exchange(apdu))
    if sw != SW_ISO_OK:
        raise CardError(f"selecting the NTAG 424 application: the card answered {sw.hex().upper()}")


def _cbc(key: bytes, iv: bytes, data: bytes, decrypt: bool = False) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
    worker = cipher.decryptor() if decrypt else cipher.encryptor()
    return worker.update(data) + worker.finalize()


def _rotl(data: bytes) -> bytes:
    return data[1:] + data[:1]


def session_keys(key: bytes, rnd_a: bytes, rnd_b: bytes) -> tuple[bytes, bytes]:
    """(SesAuthENCKey, SesAuthMACKey) from the shared key and both randoms (AN12196 section 6.6)."""
    # RndA[15..14] ‖ (RndA[13..8] ⊕ RndB[15..10]) ‖ RndB[9..0] ‖ RndA[7..0]; byte 15 is the first.
    mix = rnd_a[:2] + bytes(a ^ b for a, b in zip(rnd_a[2:8], rnd_b[:6], strict=True)) + rnd_b[6:] + rnd_a[8:]
    enc = aes_cmac(key, b"\xa5\x5a\x00\x01\x00\x80" + mix)
    mac = aes_cmac(key, b"\x5a\xa5\x00\x01\x00\x80" + mix)
    return enc, mac


def truncate_mac(full: bytes) -> bytes:
    """The 8-byte MACt: the odd-numbered bytes of the 16-byte CMAC."""
    return full[1::2]


def pad(data: bytes) -> bytes:
    """ISO/IEC 9797-1 padding method 2: 0x80, then zeros to a whole block (always at least one byte)."""
    padded = data + b"\x80"
    return padded + bytes(-len(padded) % 16)


def unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\x00")
    if not end.endswith(b"\x80"):
        raise CardError("the card's encrypted answer is not padded as it should be")
    return end[:-1]


def jamcrc(data: bytes) -> bytes:
    """CRC32 as NTAG 424 ChangeKey wants it: IEEE 802.3 CRC32 without the final inversion, LSB first."""
    return ((~zlib.crc32(data)) & 0xFFFFFFFF).to_bytes(4, "little")


@dataclass
class SecureSession:
    """An authenticated session with one card: secure messaging in CommMode.Full."""

    transport: Transport
    key_no: int
    ti: bytes
    enc_key: bytes
    mac_key: bytes
    counter: int = 0
    pd_cap2: bytes = field(default=b"")

    def _mac(self, cmd: int, counter: int, payload: bytes) -> bytes:
        body = bytes([cmd]) + counter.to_bytes(2, "little") + self.ti + payload
        return truncate_mac(aes_cmac(self.mac_key, body))

    def _iv(self, label: bytes, counter: int) -> bytes:
        return aes_ecb(self.enc_key, label + self.ti + counter.to_bytes(2, "little") + bytes(8))

    def command_full(
        self, cmd: int, header: bytes = b"", data: bytes = b"", answer_macked: bool = True
    ) -> bytes:
        """Send ``cmd`` with ``header`` in plain and ``data`` encrypted; return the decrypted answer data.

        ``answer_macked`` False: the card ends the session with this command (a change of the
        key used to authenticate) and answers without a MAC.
        """
        encrypted = _cbc(self.enc_key, self._iv(b"\xa5\x5a", self.counter), pad(data)) if data else b""
        mact = self._mac(cmd, self.counter, header + encrypted)
        response = self.transport.exchange(native(cmd, header + encrypted + mact))
        body, sw = _split(response)
        if sw != SW_OK:
            raise _status_error(sw, f"command 0x{cmd:02X}")
        self.counter += 1
        if not answer_macked:
            return b""
        if len(body) < 8:
            raise CardError(f"command 0x{cmd:02X}: the card's answer has no MAC")
        payload, mact = body[:-8], body[-8:]
        expected = truncate_mac(
            aes_cmac(self.mac_key, b"\x00" + self.counter.to_bytes(2, "little") + self.ti + payload)
        )
        if expected != mact:
            raise CardAuthFailed(f"command 0x{cmd:02X}: the card's answer carries a wrong MAC")
        if not payload:
            return b""
        if len(payload) % 16:
            raise CardError(f"command 0x{cmd:02X}: the encrypted answer is not whole blocks")
        return unpad(_cbc(self.enc_key, self._iv(b"\x5a\xa5", self.counter), payload, decrypt=True))

    def get_card_uid(self) -> bytes:
        """GetCardUID: the card's real UID, encrypted (the UID it sent in anticollision may be random)."""
        return self.command_full(GET_CARD_UID)

    def change_key(self, key_no: int, new_key: bytes, old_key: bytes | None, version: int = 0) -> None:
        """ChangeKey of ``key_no`` to ``new_key``. ``old_key``: its current value, needed for any key
        but the one this session authenticated with (the card checks a CRC of the new key, so a
        wrong ``old_key`` is refused and changes nothing)."""
        if len(new_key) != KEY_SIZE:
            raise ValueError("keys are 16 bytes")
        if key_no == self.key_no:
            self.command_full(CHANGE_KEY, bytes([key_no]), new_key + bytes([version]), answer_macked=False)
            return
        if old_key is None:
            raise ValueError("changing another key than the session's needs its old value")
        xored = bytes(a ^ b for a, b in zip(new_key, old_key, strict=True))
        self.command_full(CHANGE_KEY, bytes([key_no]), xored + bytes([version]) + jamcrc(new_key))


def authenticate(
    transport: Transport,
    key_no: int,
    key: bytes,
    random: Callable[[int], bytes] = os.urandom,
) -> SecureSession:
    """AuthenticateEV2First with ``key`` in slot ``key_no``; the session, or :class:`CardAuthFailed`.

    Mutual: the card proves it holds the key by returning our RndA rotated, encrypted under it;
    a card without the key (a UID clone, another site's card) cannot.
    """
    if len(key) != KEY_SIZE:
        raise ValueError("keys are 16 bytes")
    body, sw = _split(transport.exchange(native(AUTH_EV2_FIRST, bytes([key_no, 0x00]))))
    if sw != SW_MORE:
        raise _status_error(sw, "AuthenticateEV2First")
    if len(body) != 16:
        raise CardError(f"AuthenticateEV2First: expected 16 bytes of challenge, got {len(body)}")
    rnd_b = _cbc(key, bytes(16), body, decrypt=True)
    rnd_a = random(16)
    challenge = _cbc(key, bytes(16), rnd_a + _rotl(rnd_b))
    body, sw = _split(transport.exchange(native(ADDITIONAL_FRAME, challenge)))
    if sw != SW_OK:
        # 91AE: the card found our RndB' wrong, i.e. we do not share its key.
        raise _status_error(sw, "AuthenticateEV2First part 2")
    if len(body) != 32:
        raise CardError(f"AuthenticateEV2First part 2: expected 32 bytes, got {len(body)}")
    plain = _cbc(key, bytes(16), body, decrypt=True)
    ti, rnd_a_rotated, pd_cap2 = plain[:4], plain[4:20], plain[20:26]
    if rnd_a_rotated != _rotl(rnd_a):
        raise CardAuthFailed("the card's answer does not prove it holds the key")
    enc, mac = session_keys(key, rnd_a, rnd_b)
    return SecureSession(transport, key_no, ti, enc, mac, 0, pd_cap2)


def write_keys(transport: Transport, keys: list[bytes], random: Callable[[int], bytes] = os.urandom) -> None:
    """Enrol a card: set its five application keys to ``keys`` (key 0 first in the list) and check them.

    Starts from a factory card (every key all zero) or from a card a torn earlier attempt left
    half-written: NTAG 424 changes a key atomically, so each key is either still the factory key
    or already its new value, and the same keys (diversified from the UID) are written again.
    Key 0 changes last, because changing it ends the session. Finally each key is proved by an
    authentication with its new value. Raises CardAuthFailed for a card whose key 0 is neither
    (another site's badge, a used card), CardGone if the card is taken away.
    """
    if len(keys) != 5:
        raise ValueError("an NTAG 424 DNA application has five keys")
    select_application(transport)
    try:
        session = authenticate(transport, 0, DEFAULT_KEY, random)
        master = DEFAULT_KEY
    except CardGone:
        raise
    except CardAuthFailed:
        # Key 0 changed already: a torn attempt that got as far as its last step, or a card
        # with someone else's keys (then this fails too, and nothing is changed).
        session = authenticate(transport, 0, keys[0], random)
        master = keys[0]
    for key_no in range(1, 5):
        try:
            session.change_key(key_no, keys[key_no], DEFAULT_KEY, version=1)
        except CardGone:
            raise
        except CardError:
            # Integrity error: the key is not the factory key, so an earlier attempt wrote it.
            # Writing it again with itself as the old value succeeds only if it is ours.
            session = authenticate(transport, 0, master, random)
            session.change_key(key_no, keys[key_no], keys[key_no], version=1)
    if master == DEFAULT_KEY:
        session.change_key(0, keys[0], None, version=1)
    for key_no, key in enumerate(keys):
        authenticate(transport, key_no, key, random)
