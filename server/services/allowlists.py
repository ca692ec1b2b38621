"""Offline allow-lists: who may use a machine when the server cannot answer.

Any change to badges, people, qualifications, requirements or a machine's status
marks every machine's list dirty (a SQLAlchemy flush hook, so no caller can forget);
the bridge publishes dirty lists, signed and retained, within a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import Session

from server.models import (
    Badge,
    BadgeStatus,
    Competency,
    Level,
    Machine,
    MachineStatus,
    Person,
    Qualification,
    Requirement,
    Site,
)
from server.services import cards
from server.services.qualifications import QualificationState, qualification_state
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import badge_hash, key_bytes, sign

_WATCHED = (Badge, Person, Qualification, Requirement, Competency)
_MACHINE_FIELDS = ("status", "machine_type_id", "site_id", "allowlist_key", "card_key_slot")
# A site's card master is made while a list is built: that alone must not mark lists dirty again.
_SITE_FIELDS = ("card_security",)


def _affects_allowlists(obj: object) -> bool:
    if isinstance(obj, _WATCHED):
        return True
    if isinstance(obj, Machine):
        state = inspect(obj)
        return any(state.attrs[name].history.has_changes() for name in _MACHINE_FIELDS)
    if isinstance(obj, Site):
        state = inspect(obj)
        return any(state.attrs[name].history.has_changes() for name in _SITE_FIELDS)
    return False


@event.listens_for(Session, "before_flush")
def _note_changes(session: Session, _ctx: Any, _instances: Any) -> None:
    if any(_affects_allowlists(o) for o in (*session.new, *session.dirty, *session.deleted)):
        session.info["allowlists_dirty"] = True


@event.listens_for(Session, "after_flush")
def _mark_dirty(session: Session, _ctx: Any) -> None:
    if session.info.pop("allowlists_dirty", False):
        # Core UPDATE on the flush's connection: an ORM bulk update here would re-enter the flush.
        session.connection().execute(
            update(Machine).values(allowlist_dirty=True).execution_options(synchronize_session=False)
        )


def mark_all_dirty(db: Session) -> None:
    db.execute(update(Machine).values(allowlist_dirty=True))


@dataclass(frozen=True)
class Holders:
    """Everyone who could be on a list: active badges of active people, and the newest
    qualification history entry per person and competency. Read once per publishing round
    (two queries) instead of once per badge and machine."""

    badges: list[tuple[str, int, bool]]  # uid, person id, is trainer
    newest: dict[tuple[int, int], QualificationState]


def load_holders(db: Session, today: date) -> Holders:
    badges = [
        (uid, person_id, bool(is_trainer))
        for uid, person_id, is_trainer in db.execute(
            select(Badge.uid, Person.id, Person.is_trainer)
            .join(Person, Badge.person_id == Person.id)
            .where(Badge.status == BadgeStatus.ACTIVE, Person.active.is_(True))
            .order_by(Badge.uid)
        )
    ]
    newest: dict[tuple[int, int], QualificationState] = {}
    rows = db.execute(
        select(
            Qualification.person_id,
            Qualification.competency_id,
            Qualification.level,
            Qualification.action,
            Qualification.valid_until,
        ).order_by(Qualification.id.desc())
    )
    for person_id, competency_id, level, action, valid_until in rows:
        if (person_id, competency_id) not in newest:  # history is append-only: the newest entry decides
            newest[(person_id, competency_id)] = qualification_state(level, action, valid_until, today)
    return Holders(badges, newest)


def build(
    db: Session, machine: Machine, now: datetime, days: int, holders: Holders | None = None
) -> dict[str, Any]:
    """The signed allow-list document for ``machine`` (not yet versioned: the caller sets it)."""
    key = key_bytes(machine.allowlist_key)
    tz = ZoneInfo(machine.site.timezone)
    today = now.astimezone(tz).date()
    entries: list[dict[str, Any]] = []
    if machine.status == MachineStatus.AVAILABLE:
        requirements = list(
            db.scalars(select(Requirement).where(Requirement.machine_type_id == machine.machine_type_id))
        )
        holders = holders or load_holders(db, today)
        for uid, person_id, is_trainer in holders.badges:
            entry = _entry(person_id, is_trainer, holders, requirements, tz)
            if entry is not None:
                entries.append({"badge_hash": badge_hash(key, uid), **entry})
    document = {
        "v": 1,
        "version": machine.allowlist_version,
        "issued": format_ts(now),
        "expires": format_ts(now + timedelta(days=days)),
        "machine": machine.slug,
        "entries": entries,
        "card_security": machine.site.card_security.value,
        "card_slot": machine.card_key_slot,
        "cards": cards.machine_cards(db, machine),
    }
    return sign(key, document)


def _entry(
    person_id: int, is_trainer: bool, holders: Holders, requirements: list[Requirement], tz: ZoneInfo
) -> dict[str, Any] | None:
    until = None
    # A trainer *for this machine type*, as the decision has it: trainer level in every requirement.
    trainer_here = is_trainer
    for req in requirements:
        state = holders.newest.get((person_id, req.competency_id))
        if state is None or not state.usable or state.level is None:
            return None
        if state.level.rank < Level(req.min_level).rank:
            return None  # needs a trainer present: the server decides that, not the offline list
        trainer_here = trainer_here and state.level == Level.TRAINER
        if state.valid_until is not None:
            end = datetime.combine(state.valid_until + timedelta(days=1), time(0), tz).astimezone(UTC)
            until = end if until is None else min(until, end)
    return {"until": format_ts(until) if until else None, "trainer": trainer_here}
