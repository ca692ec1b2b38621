"""Badges: assign, replace, block and unblock, each audited.

A change here is an ORM flush on ``Badge``, which marks every allow-list dirty in the same
transaction (services/allowlists.py): the next tap reads the badge afresh, so a block takes
effect at once, and the offline allow-lists are republished within a second.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import Badge, BadgeKind, BadgeStatus, Person, utcnow
from server.services import audit
from werkbank_protocol.messages import BADGE_PATTERN

_BADGE = re.compile(BADGE_PATTERN)


class BadgeError(ValueError):
    """A badge change that cannot be made; ``message`` is an untranslated message id."""

    def __init__(self, message: str, **params: str) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params


def normalise_uid(raw: str) -> str:
    """``04:a2:24 b2`` → ``04A224B2``: readers and labels print UIDs in many ways."""
    return re.sub(r"[\s:\-]", "", raw).upper()


def check_new_uid(db: Session, raw: str) -> str:
    """The normalised UID, if it is well-formed and on no badge yet; else :class:`BadgeError`."""
    uid = normalise_uid(raw)
    if not _BADGE.match(uid):
        raise BadgeError(N_("Not a badge UID: 8, 14 or 20 hex digits (0-9, A-F)."))
    taken = db.scalar(select(Badge).where(Badge.uid == uid))
    if taken is not None:
        raise BadgeError(N_("This badge is already assigned to %(name)s."), name=taken.person.name)
    return uid


def _subject(badge: Badge) -> str:
    return f"badge:{badge.uid}"


def assign(
    db: Session,
    person: Person,
    raw_uid: str,
    actor: Person | None,
    note: str | None = None,
    kind: BadgeKind = BadgeKind.UID,
) -> Badge:
    """A new active badge for ``person``; ``kind`` secure only from an enrolment (services/cards)."""
    uid = check_new_uid(db, raw_uid)
    now = utcnow()
    badge = Badge(
        uid=uid, person=person, status=BadgeStatus.ACTIVE, issued_at=now, note=note or None, kind=kind
    )
    db.add(badge)
    audit.record(
        db,
        actor,
        "badge.assign",
        f"badge:{uid}",
        {"person_id": person.id, "person": person.name, "kind": kind.value},
    )
    db.flush()
    return badge


def replace(db: Session, old: Badge, raw_uid: str, actor: Person | None, note: str | None = None) -> Badge:
    """In one step: the old badge is marked lost, a new one is active for the same person."""
    uid = check_new_uid(db, raw_uid)
    now = utcnow()
    old.status = BadgeStatus.LOST
    old.status_changed_at = now
    if note:
        old.note = note
    new = Badge(uid=uid, person_id=old.person_id, status=BadgeStatus.ACTIVE, issued_at=now)
    db.add(new)
    audit.record(
        db,
        actor,
        "badge.replace",
        _subject(old),
        {"person_id": old.person_id, "person": old.person.name, "new_uid": uid, "note": note or None},
    )
    db.flush()
    return new


def block(db: Session, badge: Badge, actor: Person | None, note: str | None) -> None:
    _set_status(db, badge, BadgeStatus.BLOCKED, "badge.block", actor, note)


def unblock(db: Session, badge: Badge, actor: Person | None, note: str | None = None) -> None:
    if badge.status != BadgeStatus.BLOCKED:
        raise BadgeError(N_("Only a blocked badge can be unblocked."))
    _set_status(db, badge, BadgeStatus.ACTIVE, "badge.unblock", actor, note)


def _set_status(
    db: Session, badge: Badge, status: BadgeStatus, action: str, actor: Person | None, note: str | None
) -> None:
    before = badge.status
    badge.status = status
    badge.status_changed_at = utcnow()
    if note:
        badge.note = note
    audit.record(
        db,
        actor,
        action,
        _subject(badge),
        {
            "person_id": badge.person_id,
            "person": badge.person.name,
            "from": before.value,
            "note": note or None,
        },
    )
    db.flush()
