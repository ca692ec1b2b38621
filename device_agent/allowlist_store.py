"""The offline allow-list: the last valid one the server published, kept on disk.

A list is taken only if its signature (under this machine's key), machine, shape and
expiry check out (:func:`werkbank_protocol.allowlist.verify`) and its version is not
lower than the one held (a lower one is a replay). Offline, a badge is allowed only if
listed, within its entry's ``until``, and never past the list's ``expires``.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

from device_agent.storage import atomic_write
from werkbank_protocol import ProtocolError, parse_ts
from werkbank_protocol.allowlist import badge_hash, verify
from werkbank_protocol.cardkeys import card_genuine, unwrap
from werkbank_protocol.messages import Allowlist, AllowlistEntry

log = logging.getLogger(__name__)

# verify() also refuses expired lists; a stored list is loaded even when expired (its
# version still guards against replays, and check() refuses past `expires` anyway).
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)


class AllowlistStore:
    """The allow-list held for one machine (``allowlist.json`` in the storage folder)."""

    def __init__(self, path: str | Path, key: bytes, machine: str) -> None:
        self.path = Path(path)
        self._key = key
        self._machine = machine
        self._lock = threading.Lock()
        self._raw: bytes | None = None
        self._list: Allowlist | None = None
        self._expires: datetime | None = None
        self._entries: dict[str, AllowlistEntry] = {}
        self._cards: dict[str, str] = {}  # badge hash → wrapped card key
        self._load()

    @property
    def version(self) -> int | None:
        return self._list.version if self._list else None

    @property
    def issued(self) -> str | None:
        """When the server issued the held list (its ``issued``, RFC 3339), None when none is held."""
        return self._list.issued if self._list else None

    def _load(self) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return
        try:
            self._take(raw, verify(self._key, raw, _LONG_AGO, self._machine))
        except ProtocolError as exc:
            # A new key or machine in the config makes the stored list useless: wait for a fresh one.
            log.warning("stored allow-list %s not used: %s", self.path, exc)

    def _take(self, raw: bytes, allowlist: Allowlist) -> None:
        self._raw = raw
        self._list = allowlist
        self._expires = parse_ts(allowlist.expires)
        self._entries = {entry.badge_hash: entry for entry in allowlist.entries}
        self._cards = {card.badge_hash: card.key for card in allowlist.cards}

    def offer(self, payload: bytes, now: datetime) -> bool:
        """Consider a list from the retained ``allowlist`` topic; True if it is now the one held."""
        try:
            candidate = verify(self._key, payload, now, self._machine)
        except ProtocolError as exc:
            log.warning("allow-list refused (%s): %s", exc.code, exc.detail)
            return False
        with self._lock:
            if self._list is not None and candidate.version < self._list.version:
                log.warning(
                    "allow-list version %d ignored: version %d is held (a replay?)",
                    candidate.version,
                    self._list.version,
                )
                return False
            if payload == self._raw:
                return True  # the retained copy again, on reconnect: nothing to write
            atomic_write(self.path, payload)
            self._take(payload, candidate)
        log.info("allow-list version %d taken: %d badges", candidate.version, len(candidate.entries))
        return True

    def card_key(self, uid: str) -> tuple[int, bytes] | None:
        """(key number, key) a card with ``uid`` must prove at this machine; None if it is no
        secure badge the held list knows (then it is not asked)."""
        hashed = badge_hash(self._key, uid)
        with self._lock:
            wrapped = self._cards.get(hashed)
            slot = self._list.card_slot if self._list is not None else 1
        if wrapped is None:
            return None
        try:
            return slot, unwrap(self._key, hashed, wrapped)
        except ProtocolError as exc:
            # Signed by the server, yet not sealed for us: ask with no key rather than a wrong one.
            log.error("card key of a badge in the allow-list is unusable: %s", exc.detail)
            return None

    def genuine(self, card_auth: str | None) -> bool:
        """Offline: whether a card with this ``card_auth`` counts under the held list's card rule."""
        with self._lock:
            rule = self._list.card_security if self._list is not None else "uid"
        return card_genuine(rule, card_auth)

    def check(self, uid: str, now: datetime) -> tuple[bool, bool]:
        """``(allowed, trainer)`` for a badge when deciding offline."""
        with self._lock:
            if self._expires is None or now >= self._expires:
                return False, False
            entry = self._entries.get(badge_hash(self._key, uid))
        if entry is None:
            return False, False
        if entry.until is not None and now >= parse_ts(entry.until):
            return False, False
        return True, entry.trainer
