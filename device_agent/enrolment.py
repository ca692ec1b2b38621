"""An enrolment station (``[reader] mode = "enrol"``): writes the keys of new secure badges.

The station never holds a master key. For the card on its reader it asks the server (an
``auth/req`` in mode ``enrol``); only if an admin started an enrolment at this station does the
answer carry that one card's five keys, each wrapped for this device (werkbank_protocol.cardkeys).
The station writes and checks them while the card is still selected (it is the reader's card
check), then reports ``badge_enrolled`` through the outbox; only that report links the badge on
the server. A card taken away mid-write links nothing and is finished on the next try.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from device_agent.cards import CardAuth, CardError, CardGone
from device_agent.cards.ntag424 import Transport, write_keys
from werkbank_protocol import ProtocolError
from werkbank_protocol.cardkeys import unwrap
from werkbank_protocol.messages import AuthResp

log = logging.getLogger(__name__)

MESSAGES: dict[str, dict[str, str]] = {
    "enrolled": {
        "de": "Ausweis fertig. Sie können die Karte jetzt abnehmen.",
        "en": "Badge ready. You can take the card now.",
    },
    "torn": {
        "de": "Karte zu früh abgenommen. Bitte wieder auflegen und liegen lassen.",
        "en": "Card taken away too early. Please put it back and leave it there.",
    },
    "foreign_card": {
        "de": "Diese Karte lässt sich nicht beschreiben. Bitte eine neue Karte nehmen.",
        "en": "This card cannot be written. Please use a new card.",
    },
    "server_needed": {
        "de": "Server nicht erreichbar. Ausweise gehen nur mit Server. Bitte später noch einmal.",
        "en": "Server unreachable. Badges need the server. Please try again later.",
    },
}


@dataclass(frozen=True)
class EnrolmentOutcome:
    """What one card on the station led to. ``enrolment`` is set when it was written and checked."""

    uid: str
    result: str  # enrolled | torn | foreign_card | server_needed | refused
    message: dict[str, str]
    enrolment: str | None = None


class EnrolmentStation:
    """The reader's card check at an enrolment station (see the module docstring)."""

    def __init__(self, ask: Callable[[str], AuthResp | None], device_key: bytes) -> None:
        self._ask = ask
        self._device_key = device_key
        self._outcome: EnrolmentOutcome | None = None

    def take_outcome(self) -> EnrolmentOutcome | None:
        """The outcome of the last card, once."""
        outcome, self._outcome = self._outcome, None
        return outcome

    def __call__(self, uid: str, open_link: Callable[[], Transport]) -> CardAuth:
        response = self._ask(uid)
        if response is None:
            self._outcome = EnrolmentOutcome(uid, "server_needed", MESSAGES["server_needed"])
            return "none"
        grant = response.enrolment
        if response.decision != "allow" or grant is None or grant.badge != uid:
            self._outcome = EnrolmentOutcome(uid, "refused", response.message)
            return "none"
        try:
            keys = [
                unwrap(self._device_key, f"{grant.enrolment}:{uid}:{n}", key)
                for n, key in enumerate(grant.keys)
            ]
        except ProtocolError as exc:
            log.error("enrolment %s: keys not for this device: %s", grant.enrolment, exc)
            self._outcome = EnrolmentOutcome(uid, "refused", MESSAGES["foreign_card"])
            return "none"
        try:
            write_keys(open_link(), keys)
        except CardGone:
            log.warning("enrolment %s: card %s taken away while writing", grant.enrolment, uid)
            self._outcome = EnrolmentOutcome(uid, "torn", MESSAGES["torn"])
            raise
        except CardError as exc:
            log.warning("enrolment %s: card %s cannot be written: %s", grant.enrolment, uid, exc)
            self._outcome = EnrolmentOutcome(uid, "foreign_card", MESSAGES["foreign_card"])
            return "failed"
        log.info("enrolment %s: card %s written and checked", grant.enrolment, uid)
        self._outcome = EnrolmentOutcome(uid, "enrolled", MESSAGES["enrolled"], grant.enrolment)
        return "ok"
