"""A person's standing in a competency: the newest entry of their qualification history rules.

The history is append-only (granted, renewed, expired, revoked); what a person holds now is read
from their newest entry per competency. Every reader goes through here: the decision and the
allow-lists (:class:`QualificationState`), training, dashboards, notifications and the API (the
newest-entry queries).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Subquery, func, select
from sqlalchemy.orm import Session, aliased

from server.models import Level, Qualification, QualificationAction

# What "expires soon" means everywhere: the person's page, the trainer's view, the learning
# dashboard and the scheduler's reminders. A qualification valid until the last of these days is
# still valid today; one whose validity has ended is expired, never "expires soon".
EXPIRES_SOON_DAYS = 30


@dataclass(frozen=True)
class QualificationState:
    """A person's current standing in one competency, derived from the newest history entry."""

    level: Level | None
    valid_until: date | None
    revoked: bool
    expired: bool

    @property
    def usable(self) -> bool:
        return self.level is not None and not self.revoked and not self.expired

    def expires_soon(self, today: date) -> bool:
        """Still usable today, and its validity ends within :data:`EXPIRES_SOON_DAYS`."""
        return self.usable and self.valid_until is not None and self.valid_until <= expiring_window(today)[1]


def expiring_window(today: date) -> tuple[date, date]:
    """The first and last day a validity may end on for it to "expire soon" (the queries'
    form of :meth:`QualificationState.expires_soon`): from today (still valid today) on."""
    return today, today + timedelta(days=EXPIRES_SOON_DAYS)


def qualification_state(
    level: Level | None, action: QualificationAction, valid_until: date | None, today: date
) -> QualificationState:
    revoked = action == QualificationAction.REVOKED
    expired = action == QualificationAction.EXPIRED or (valid_until is not None and valid_until < today)
    return QualificationState(level, valid_until, revoked, expired)


def state_of(entry: Qualification | None, today: date) -> QualificationState | None:
    if entry is None:
        return None
    return qualification_state(entry.level, entry.action, entry.valid_until, today)


def newest(db: Session, person_id: int, competency_id: int) -> Qualification | None:
    """One person's newest entry in one competency."""
    return db.scalar(
        select(Qualification)
        .where(Qualification.person_id == person_id, Qualification.competency_id == competency_id)
        .order_by(Qualification.id.desc())
        .limit(1)
    )


def newest_ids(*where: ColumnElement[bool]) -> Select[Any]:
    """The ids of the newest entry per person and competency among the entries ``where`` selects
    (e.g. up to a day, of some people): ``Qualification.id.in_(newest_ids(...))``."""
    return (
        select(func.max(Qualification.id).label("id"))
        .where(*where)
        .group_by(Qualification.person_id, Qualification.competency_id)
    )


def newest_entries(*where: ColumnElement[bool]) -> Subquery:
    """:func:`newest_ids` as a subquery to join: ``.join(sub, sub.c.id == Qualification.id)``."""
    return newest_ids(*where).subquery()


def no_newer_entry() -> ColumnElement[bool]:
    """True for a ``Qualification`` row that is its person's newest in its competency: the form for
    a few candidate rows (an index lookup each), where :func:`newest_entries` would group everyone."""
    later = aliased(Qualification)
    return ~(
        select(later.id)
        .where(
            later.person_id == Qualification.person_id,
            later.competency_id == Qualification.competency_id,
            later.id > Qualification.id,
        )
        .exists()
    )
