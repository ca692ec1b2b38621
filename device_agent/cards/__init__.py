"""Card protocols above the reader's radio link: what a secure badge must prove before it counts.

``ntag424`` speaks NXP NTAG 424 DNA (AES-128 mutual authentication, key change);
``secure`` decides, per tapped card, which key to try and reports the outcome as the
protocol's ``card_auth`` value.
"""

from __future__ import annotations

from typing import Literal

from device_agent import AgentError

# How a tapped card proved itself (the protocol's `card_auth`): "ok" it holds its key,
# "failed" it was asked to and could not, "none" it was not asked (no key known for its UID).
CardAuth = Literal["ok", "failed", "none"]


class CardError(AgentError):
    """A card did not answer as the protocol says (status word, length, lost in the field)."""


class CardAuthFailed(CardError):
    """The card answered, but it could not prove it holds the key: a clone, or another site's card."""


class CardGone(CardError):
    """The card stopped answering mid-exchange (taken away, or out of range): try again, decide nothing."""
