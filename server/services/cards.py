"""Secure badges on the server: a site's card rule, the card keys each machine gets, and enrolment.

The site's master key lives in the database and leaves this module only as per-card keys
(werkbank_protocol.cardkeys): in a machine's allow-list the keys of its own slot, wrapped for
that machine; to an enrolment station the five keys of the one card it is writing, wrapped for
that station. docs/security.md ("Cards") says why and what a stolen Pi yields.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import (
    Badge,
    BadgeEnrolment,
    BadgeKind,
    BadgeStatus,
    CardSecurity,
    Device,
    EnrolmentStatus,
    Machine,
    Person,
    Site,
)
from server.services import audit, badges
from werkbank_protocol.allowlist import badge_hash, key_bytes
from werkbank_protocol.cardkeys import MASTER_KEY_NO, SLOTS, card_key, wrap

log = logging.getLogger(__name__)


class CardError(ValueError):
    """A card change that cannot be made; ``message`` is an untranslated message id."""

    def __init__(self, message: str, **params: str) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params


def site_master(db: Session, site: Site) -> bytes:
    """The site's card master key, made on first use."""
    if site.card_master_key is None:
        site.card_master_key = secrets.token_hex(16)
        db.flush()
    return bytes.fromhex(site.card_master_key)


def set_card_security(db: Session, site: Site, rule: CardSecurity, actor: Person | None) -> None:
    """Change the site's card rule (audited); every allow-list is reissued with it."""
    if site.card_security == rule:
        return
    before = site.card_security
    site.card_security = rule
    audit.record(
        db, actor, "site.card_security", f"site:{site.slug}", {"from": before.value, "to": rule.value}
    )
    db.flush()


def machine_cards(db: Session, machine: Machine) -> list[dict[str, str]]:
    """The ``cards`` of ``machine``'s allow-list: each active secure badge of its site, with the
    card's key in the machine's slot, wrapped for this machine. Empty at a ``uid`` site."""
    site = machine.site
    if site.card_security == CardSecurity.UID:
        return []
    master = site_master(db, site)
    key = key_bytes(machine.allowlist_key)
    slot = machine.card_key_slot if machine.card_key_slot in SLOTS else SLOTS[0]
    uids = db.scalars(
        select(Badge.uid)
        .join(Person, Badge.person_id == Person.id)
        .where(
            Badge.kind == BadgeKind.SECURE,
            Badge.status == BadgeStatus.ACTIVE,
            Person.active.is_(True),
            Person.site_id == site.id,
        )
        .order_by(Badge.uid)
    )
    cards = []
    for uid in uids:
        hashed = badge_hash(key, uid)
        cards.append({"badge_hash": hashed, "key": wrap(key, hashed, card_key(master, uid, slot))})
    return cards


# -- enrolment ---------------------------------------------------------------------------------


def enrolment_stations(db: Session, site: Site) -> list[Device]:
    """The site's enrolment stations (devices flagged so, serving a machine of the site)."""
    return list(
        db.scalars(
            select(Device)
            .join(Machine, Device.machine_id == Machine.id)
            .where(Device.enrolment_station.is_(True), Machine.site_id == site.id)
            .order_by(Device.id)
        )
    )


def start_enrolment(db: Session, person: Person, device: Device, actor: Person | None) -> BadgeEnrolment:
    """Order a new secure badge for ``person`` at the station ``device``; an earlier pending one
    of the person is cancelled (one card at a time)."""
    if not device.enrolment_station or device.machine is None:
        raise CardError(N_("%(device)s is not an enrolment station."), device=device.id)
    if device.machine.site_id != person.site_id:
        raise CardError(N_("%(device)s is at another site."), device=device.id)
    if not person.active:
        raise CardError(N_("This person is not active. Activate them first."))
    for earlier in db.scalars(
        select(BadgeEnrolment).where(
            BadgeEnrolment.person_id == person.id, BadgeEnrolment.status == EnrolmentStatus.PENDING
        )
    ):
        earlier.status = EnrolmentStatus.CANCELLED
    enrolment = BadgeEnrolment(person=person, device=device, created_by_id=actor.id if actor else None)
    db.add(enrolment)
    db.flush()
    audit.record(
        db,
        actor,
        "badge.enrol_start",
        f"person:{person.id}",
        {"person": person.name, "enrolment": enrolment.id, "device": device.id},
    )
    db.flush()
    return enrolment


def cancel_enrolment(db: Session, enrolment: BadgeEnrolment, actor: Person | None) -> None:
    if enrolment.status != EnrolmentStatus.PENDING:
        raise CardError(N_("Only a pending badge can be cancelled."))
    enrolment.status = EnrolmentStatus.CANCELLED
    audit.record(
        db, actor, "badge.enrol_cancel", f"person:{enrolment.person_id}", {"enrolment": enrolment.id}
    )
    db.flush()


def pending_enrolments(db: Session, person: Person) -> list[BadgeEnrolment]:
    return list(
        db.scalars(
            select(BadgeEnrolment)
            .where(BadgeEnrolment.person_id == person.id, BadgeEnrolment.status == EnrolmentStatus.PENDING)
            .order_by(BadgeEnrolment.created_at)
        )
    )


@dataclass(frozen=True)
class Grant:
    """What an enrolment station is sent for the card lying on it."""

    enrolment: str
    badge: str
    keys: list[str]  # wrapped key 0..4


def grant(db: Session, device_id: str, uid: str) -> Grant:
    """The keys for card ``uid`` at station ``device_id``, for its oldest pending enrolment.

    Only a flagged station gets keys, only while an admin's enrolment waits there, and only for
    a card that is no badge yet. Audited, because keys leave the server.
    """
    device = db.get(Device, device_id)
    if device is None or not device.enrolment_station or device.machine is None:
        raise CardError(N_("This reader is not an enrolment station."))
    enrolment = db.scalar(
        select(BadgeEnrolment)
        .where(BadgeEnrolment.device_id == device.id, BadgeEnrolment.status == EnrolmentStatus.PENDING)
        .order_by(BadgeEnrolment.created_at)
        .limit(1)
    )
    if enrolment is None:
        raise CardError(N_("No badge is waiting to be issued here. Start one on the person's page."))
    taken = db.scalar(select(Badge).where(Badge.uid == uid))
    if taken is not None:
        raise CardError(N_("This card is a badge already. Use a new card."))
    # A card swapped for another (the first one was torn away and put aside) simply takes over.
    enrolment.uid = uid
    master = site_master(db, enrolment.person.site)
    key = key_bytes(device.machine.allowlist_key)
    keys = [wrap(key, f"{enrolment.id}:{uid}:{n}", card_key(master, uid, n)) for n in (MASTER_KEY_NO, *SLOTS)]
    audit.record(
        db,
        None,
        "badge.enrol_keys",
        f"badge:{uid}",
        {"enrolment": enrolment.id, "person_id": enrolment.person_id, "device": device.id},
        actor_label=f"device {device.id}",
    )
    db.flush()
    return Grant(enrolment.id, uid, keys)


def complete_enrolment(
    db: Session, device: Device, enrolment_id: str, uid: str, now: datetime
) -> Badge | None:
    """The station wrote and checked card ``uid``: link it to the person as a secure badge.

    Idempotent (an event may come twice). Returns None, and links nothing, for a report that
    does not match a pending enrolment of this station for this very card.
    """
    enrolment = db.get(BadgeEnrolment, enrolment_id)
    if enrolment is None or enrolment.device_id != device.id or enrolment.uid != uid:
        log.warning(
            "device %s reported enrolment %s of %s, which it was not sent", device.id, enrolment_id, uid
        )
        return None
    if enrolment.status == EnrolmentStatus.DONE:
        return db.scalar(select(Badge).where(Badge.uid == uid))
    if enrolment.status != EnrolmentStatus.PENDING:
        log.warning("enrolment %s was cancelled; card %s is not linked", enrolment_id, uid)
        return None
    try:
        badge = badges.assign(db, enrolment.person, uid, None, kind=BadgeKind.SECURE)
    except badges.BadgeError as exc:
        log.warning("enrolment %s: card %s not linked: %s", enrolment_id, uid, exc)
        return None
    enrolment.status = EnrolmentStatus.DONE
    enrolment.completed_at = now
    audit.record(
        db,
        None,
        "badge.enrolled",
        f"badge:{uid}",
        {"enrolment": enrolment.id, "person_id": enrolment.person_id, "device": device.id},
        at=now,
        actor_label=f"device {device.id}",
    )
    db.flush()
    return badge
