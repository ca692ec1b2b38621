"""At the machine: make a tapped secure badge prove it holds its key before its UID counts.

The key comes from the allow-list (a per-card key of this machine's slot, wrapped for this
machine: werkbank_protocol.cardkeys). A card with no key there is not checked ("none"); whether
a plain UID may pass is then the server's decision, or offline the list's (docs/security.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from device_agent.cards import CardAuth, CardError, CardGone
from device_agent.cards.ntag424 import Transport, authenticate, select_application

log = logging.getLogger(__name__)

# A UID (upper-case hex) → (key number, key) the card must prove, or None if it is no secure badge we know.
KeyLookup = Callable[[str], tuple[int, bytes] | None]


class CardVerifier:
    """The :data:`~device_agent.hardware.base.CardCheck` the agent gives its reader."""

    def __init__(self, key_for: KeyLookup) -> None:
        self._key_for = key_for

    def __call__(self, uid: str, open_link: Callable[[], Transport]) -> CardAuth:
        """``ok``, ``failed`` or ``none``; :class:`CardGone` if the card left mid-way (no decision)."""
        found = self._key_for(uid)
        if found is None:
            return "none"
        key_no, key = found
        try:
            link = open_link()
            select_application(link)
            authenticate(link, key_no, key)
        except CardGone:
            raise
        except CardError as exc:
            # A UID clone lands here: it does not speak ISO 14443-4, has no NTAG 424
            # application, or fails the challenge (no key, another site's key, a replay).
            log.warning("badge %s failed card authentication: %s", uid, exc)
            return "failed"
        return "ok"
