"""Secure badges' keys: per-card AES keys diversified from a site master (NXP AN10922), and their
wrapping for the one device that needs them.

The site master never leaves the server. A card's key in slot ``n`` is
``AN10922(site_master, UID ‖ n ‖ "Werkbank")``: a different key on every card and in every slot,
which the server can recompute from the UID alone. A machine is sent only the per-card keys of
its own slot (docs/security.md, "Cards"), each wrapped with AES-GCM under a key derived from
that machine's own allow-list key and bound to the badge it belongs to, so it is useless in
another machine's list or for another badge.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from werkbank_protocol.errors import ProtocolError

KEY_SIZE = 16
# NTAG 424 DNA application keys: 0 is the application master key (changes keys: only the
# enrolment station ever uses it); 1-4 are the authentication keys machines check, one per slot.
MASTER_KEY_NO = 0
SLOTS: tuple[int, ...] = (1, 2, 3, 4)
# AN10922's "system identifier": part of every diversification input, so keys made for another
# system from the same master and UID differ from ours.
SYSTEM_ID = b"Werkbank"
_WRAP_INFO = b"werkbank card-key wrap v1"
_NONCE = 12


def aes_cmac(key: bytes, data: bytes) -> bytes:
    """AES-CMAC (NIST SP 800-38B), 16 bytes."""
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def aes_ecb(key: bytes, block: bytes) -> bytes:
    """One AES block: CMAC subkeys and NTAG 424's IVs are single-block encryptions, not a mode of use."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
    return encryptor.update(block) + encryptor.finalize()


def _double(block: bytes) -> bytes:
    # Multiplication by x in GF(2^128), as CMAC derives its subkeys.
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ 0x87
    return value.to_bytes(16, "big")


def cmac_subkeys(key: bytes) -> tuple[bytes, bytes]:
    """CMAC's subkeys K1 and K2 (AN10922 shows both in its worked example)."""
    k1 = _double(aes_ecb(key, bytes(16)))
    return k1, _double(k1)


def diversify(master: bytes, data: bytes) -> bytes:
    """AN10922 section 2.2 AES-128 key diversification of ``master`` with input ``data`` (1-31 bytes).

    The CMAC input is ``0x01 ‖ data``, always padded to 32 bytes (unlike plain CMAC, which pads
    only to the next 16): the last block is XORed with K2 when padded, K1 when not.
    """
    if len(master) != KEY_SIZE:
        raise ValueError("the master key must be 16 bytes (AES-128)")
    if not 1 <= len(data) <= 31:
        raise ValueError("the diversification input must be 1 to 31 bytes")
    message = b"\x01" + data
    k1, k2 = cmac_subkeys(master)
    if len(message) < 32:
        message = message + b"\x80" + bytes(31 - len(message))
        last_key = k2
    else:
        last_key = k1
    message = message[:16] + bytes(a ^ b for a, b in zip(message[16:], last_key, strict=True))
    encryptor = Cipher(algorithms.AES(master), modes.CBC(bytes(16))).encryptor()
    return (encryptor.update(message) + encryptor.finalize())[-16:]


def card_key(site_master: bytes, uid: str, key_no: int) -> bytes:
    """The key in slot ``key_no`` of the card with UID ``uid`` (upper-case hex)."""
    if not 0 <= key_no <= 4:
        raise ValueError("NTAG 424 DNA has key numbers 0 to 4")
    return diversify(site_master, bytes.fromhex(uid) + bytes([key_no]) + SYSTEM_ID)


def card_genuine(rule: str, card_auth: str | None) -> bool:
    """Whether a tapped card counts as the badge its UID names, under a site's card rule
    (``uid``, ``secure``, ``secure_required``): the one rule the server and, offline, the agent apply.

    A card that was asked for its key and could not answer is a copy, whatever the rule. At a
    ``secure_required`` site only a card that proved its key counts. At a ``secure`` site a
    reader asks every secure badge whose key it holds (so a UID copy of one fails); a card it
    had no key for (``none``, or a reader that reads UIDs only) counts by its UID, as plain UID
    badges do there (shown as weaker on the person's page).
    """
    if card_auth == "failed":
        return False
    if rule == "secure_required":
        return card_auth == "ok"
    return True


def _wrap_key(device_key: bytes) -> bytes:
    # A key of its own, so that the allow-list's HMAC key is never used as a cipher key too.
    return hmac.new(device_key, _WRAP_INFO, hashlib.sha256).digest()[:16]


def wrap(device_key: bytes, context: str, key: bytes) -> str:
    """``key`` encrypted and authenticated for the device holding ``device_key``, bound to ``context``
    (the badge hash it belongs to): hex of nonce ‖ ciphertext ‖ tag."""
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(_wrap_key(device_key)).encrypt(nonce, key, context.encode("utf-8"))
    return (nonce + sealed).hex()


def unwrap(device_key: bytes, context: str, wrapped: str) -> bytes:
    """The key :func:`wrap` sealed; ProtocolError ``bad_card_key`` if it was not sealed for this
    device and context, or was changed."""
    try:
        raw = bytes.fromhex(wrapped)
        key = AESGCM(_wrap_key(device_key)).decrypt(raw[:_NONCE], raw[_NONCE:], context.encode("utf-8"))
    except (ValueError, InvalidTag) as exc:
        raise ProtocolError("bad_card_key", "a card key was not sealed for this device") from exc
    if len(key) != KEY_SIZE:
        raise ProtocolError("bad_card_key", "a card key is not 16 bytes")
    return key
