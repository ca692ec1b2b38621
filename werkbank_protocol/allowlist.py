"""Signing and checking of offline allow-lists (HMAC-SHA256 under the machine's key)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

import msgspec

from werkbank_protocol.errors import ProtocolError
from werkbank_protocol.messages import MAX_ALLOWLIST_PAYLOAD, Allowlist, decode_as
from werkbank_protocol.timefmt import parse_ts


def key_bytes(key_hex: str) -> bytes:
    try:
        key = bytes.fromhex(key_hex)
    except ValueError as exc:
        raise ProtocolError("bad_key", "the allow-list key must be hex") from exc
    if len(key) < 16:
        raise ProtocolError("bad_key", "the allow-list key must be at least 16 bytes (32 hex characters)")
    return key


def badge_hash(key: bytes, uid: str) -> str:
    """The allow-list's stand-in for a badge UID: nobody can read UIDs off a stolen Pi."""
    return hmac.new(key, uid.upper().encode("ascii"), hashlib.sha256).hexdigest()


def canonical(document: dict[str, Any]) -> bytes:
    """Canonical JSON of an allow-list without its ``sig``: sorted keys, no spaces, UTF-8."""
    body = {k: v for k, v in document.items() if k != "sig"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(key: bytes, document: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``document`` with its ``sig`` set."""
    signed = dict(document)
    signed["sig"] = hmac.new(key, canonical(document), hashlib.sha256).hexdigest()
    return signed


def verify(key: bytes, payload: bytes, now: datetime, machine: str | None = None) -> Allowlist:
    """Check signature, shape, machine and expiry of a received allow-list; ProtocolError if any is wrong.

    The signature is checked over the document *as received* (not re-encoded), so that fields
    added by a newer server are covered by it too.
    """
    parsed = decode_as(Allowlist, payload, MAX_ALLOWLIST_PAYLOAD)
    try:
        raw: dict[str, Any] = msgspec.json.decode(payload)
    except RecursionError as exc:  # decode_as took it, so only a limit reached this time round
        raise ProtocolError("invalid", "allow-list JSON nested too deep") from exc
    expected = hmac.new(key, canonical(raw), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, parsed.sig):
        raise ProtocolError("bad_signature", "allow-list signature does not match this machine's key")
    if machine is not None and parsed.machine != machine:
        raise ProtocolError("wrong_machine", f"allow-list is for machine {parsed.machine!r}, not {machine!r}")
    if parse_ts(parsed.expires) <= now:
        raise ProtocolError("expired", f"allow-list expired at {parsed.expires}")
    return parsed
