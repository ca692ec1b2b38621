"""The decision: may this badge unlock this machine now? One function, every rule, one reason code.

A tap is allowed when the badge is active, the person is active, the machine is
available and open, the person holds every competency the machine type requires
(valid, not expired, not revoked) or a trainer supervises, no one else holds a booking
now, and the person's limits hold. During someone else's booking the answer is
``booked_by_other`` with the time the machine is free again (trainers of the machine type
are let in); a walk-in's ``until`` stops where the next booking of someone else begins, and
the holder's where their booking ends (``until_booking``: the agent ends that session with
reason ``booking_end``).

A trainer at the machine (modes ``supervise`` and ``certify``, a trainer's badge then a
participant's): the trainer must be active, have the trainer role and hold every
competency the machine type requires at level ``trainer``, valid (a laser trainer cannot
supervise on printers); the participant must be someone else and hold every required
competency at least at level ``briefed``, usable. ``certify`` opens no session: an allowed
certify means "a practical sign-off may be recorded", which the caller (the bridge) does
with the training service in the transaction that records the decision.

The rules (:func:`_rules`) work on plain facts read with a few Core queries, not on
ORM objects: a tap is answered while a person waits at the machine, and the ORM's
per-query overhead was most of that wait (bench/tap_latency.py). Two ways in:

* :func:`decide` takes an ORM session and machine and reads everything afresh;
* :class:`Decider` (the bridge's) decides a batch of taps by device id: on PostgreSQL with
  one prepared statement for the whole batch (``_BATCH_SQL``), on SQLite with a few
  queries, and keeps badges, people, qualification histories and requirements in memory
  between taps. That cache is exact, not time-based: every
  change to those tables through a Session marks every machine's allow-list dirty in
  the same transaction (``allowlists._mark_dirty``), and the flag is cleared only
  together with a version bump. Each tap reads its machine's ``allowlist_dirty`` and
  ``allowlist_version`` anyway: a dirty machine means "read afresh", a version not
  seen before means "forget everything". (A change written with raw SQL, past the ORM,
  reaches the cache when the allow-lists are next reissued, as it reaches them.) The
  machine's state, its opening hours and the person's open sessions are read on every
  tap.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, and_, bindparam, func, or_, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from server.models import (
    AccessDecision,
    Badge,
    BadgeKind,
    BadgeStatus,
    Booking,
    BookingStatus,
    CardSecurity,
    Competency,
    Device,
    Level,
    Machine,
    MachineSession,
    MachineStatus,
    MachineType,
    OpeningHours,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    Site,
    in_language,
)
from server.services import machine_texts, opening_hours
from server.services.qualifications import QualificationState, qualification_state
from werkbank_protocol import ProtocolError
from werkbank_protocol.cardkeys import card_genuine

# What the loaders read through: an ORM session (decide) or a Core connection (the bridge).
Reader = Session | Connection

# Sessions older than this no longer count toward a person's limit even if their end was never
# reported (a Pi that died for good must not lock its last user out forever).
STALE_SESSION = timedelta(hours=24)
# Nor do sessions still open at the device being tapped: an agent asks for a session only when it
# runs none, so whatever the database still holds open there is over and its end is on its way
# (an agent runs one session at a time, and keeps an end in its outbox until acknowledged). A
# person back at the same machine within the agent's re-send interval of an end lost with a
# killed bridge, while the next end is in flight too, was refused ``session_limit``
# (docs/faults.md, "A person back within 2 s of a lost session end").


@dataclass
class AccessResult:
    """What :func:`decide` answers for one tap: a :class:`Verdict` with the people as rows."""

    allowed: bool
    reason: str
    message: dict[str, str]
    person: Person | None = None
    trainer: Person | None = None
    session_id: str | None = None
    until: datetime | None = None
    detail: dict[str, str] = field(default_factory=dict)
    # Mode use, allowed: the person is a trainer for this machine type (AuthResp ``trainer``).
    trainer_here: bool = False
    # Allowed, and ``until`` is where a booking begins or ends (the agent ends the session
    # with reason ``booking_end``; AuthResp ``until_reason``).
    until_booking: bool = False


# -- facts -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hours:
    weekday: int  # Monday = 0
    opens: time
    closes: time


@dataclass(frozen=True)
class MachineFacts:
    id: int
    status: MachineStatus
    timezone: str
    machine_type_id: int
    type_name: str
    max_session_min: int
    hours: tuple[Hours, ...]  # the machine's own hours if it has any, else its site's
    allowlist_version: int = 0
    allowlist_dirty: bool = True
    guard_min: int = 15
    booking_seq: int = 0  # bumped by every booking change of the machine: the bookings cache key
    card_security: CardSecurity = CardSecurity.UID  # the site's rule for badges
    type_name_de: str | None = None

    def type_display_name(self, language: str) -> str:
        return in_language(self.type_name, self.type_name_de, language)


@dataclass(frozen=True)
class BookingFacts:
    """A booked (not cancelled, not released) slot of one machine."""

    person_id: int
    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True)
class PersonFacts:
    id: int
    name: str
    active: bool
    is_trainer: bool
    language: str = "de"

    @property
    def first_name(self) -> str:
        return self.name.split(" ", 1)[0]


@dataclass(frozen=True)
class Entry:
    """The newest qualification history entry of one competency."""

    level: Level
    action: QualificationAction
    valid_until: date | None


@dataclass(frozen=True)
class BadgeFacts:
    uid: str
    status: BadgeStatus
    person: PersonFacts
    newest: Mapping[int, Entry]  # competency id -> newest entry, every competency the person has
    kind: BadgeKind = BadgeKind.UID

    def states(self, competency_ids: Sequence[int], today: date) -> dict[int, QualificationState]:
        out: dict[int, QualificationState] = {}
        for cid in competency_ids:
            entry = self.newest.get(cid)
            if entry is not None:
                out[cid] = qualification_state(entry.level, entry.action, entry.valid_until, today)
        return out


@dataclass(frozen=True)
class RequirementFacts:
    competency_id: int
    min_level: Level
    competency_name: str
    competency_name_de: str | None

    def display_name(self, language: str) -> str:
        return in_language(self.competency_name, self.competency_name_de, language)


@dataclass
class Verdict:
    """A decision in facts (what :class:`Decider` returns; :func:`decide` turns it into an
    :class:`AccessResult`)."""

    allowed: bool
    reason: str
    message: dict[str, str]
    person: PersonFacts | None = None
    trainer: PersonFacts | None = None
    session_id: str | None = None
    until: datetime | None = None
    # Mode use, allowed: the person is a trainer for this machine type (AuthResp ``trainer``).
    trainer_here: bool = False
    until_booking: bool = False  # as AccessResult.until_booking


# -- queries (Core, built once; the bridge runs them for every batch of taps) -------------------
_devices = Device.__table__
_machines = Machine.__table__
_sites = Site.__table__
_types = MachineType.__table__
_hours = OpeningHours.__table__
_badges = Badge.__table__
_people = Person.__table__
_quals = Qualification.__table__
_reqs = Requirement.__table__
_comps = Competency.__table__
_sessions = MachineSession.__table__
_bookings = Booking.__table__
_decisions = AccessDecision.__table__

_MACHINE_COLUMNS = (
    _devices.c.id.label("device_id"),
    _machines.c.id,
    _machines.c.status,
    _machines.c.allowlist_version,
    _machines.c.allowlist_dirty,
    _machines.c.machine_type_id,
    _machines.c.site_id,
    _machines.c.max_session_min,
    _machines.c.guard_min,
    _machines.c.booking_seq,
    _sites.c.timezone,
    _sites.c.card_security,
    _types.c.name,
    _types.c.name_de,
)
_MACHINE_JOINS = (
    _devices.outerjoin(_machines, _machines.c.id == _devices.c.machine_id)
    .outerjoin(_sites, _sites.c.id == _machines.c.site_id)
    .outerjoin(_types, _types.c.id == _machines.c.machine_type_id)
)
_HOURS_COLUMNS = (
    _hours.c.machine_id.label("hours_machine_id"),
    _hours.c.weekday,
    _hours.c.opens,
    _hours.c.closes,
)
# Each query comes in two forms: `= :x` for one value (a single tap: no IN list to expand
# on every execution) and `IN (...)` for a batch.
#
# Devices with their machine, site and type. A device without a machine gives a row of
# NULLs; an unknown device gives none. For one device, its opening hours come along (the
# machine's own and its site's, one row each).
_MACHINE_AND_HOURS = (
    select(
        *_MACHINE_COLUMNS,
        # The open sessions of the tapping person elsewhere, when the caller knows who it is.
        select(func.count())
        .where(
            _sessions.c.person_id == bindparam("person_id"),
            _sessions.c.ended_at.is_(None),
            _sessions.c.started_at > bindparam("since", type_=_sessions.c.started_at.type),
            _sessions.c.device_id != bindparam("device_id"),
        )
        .scalar_subquery()
        .label("open_sessions"),
        # The answer already given to this request id, if any (a retry after a restart, or
        # one another bridge answered): it stands, and asking costs no extra round trip.
        select(_decisions.c.response)
        .where(_decisions.c.id == bindparam("request_id"))
        .scalar_subquery()
        .label("recorded"),
        *_HOURS_COLUMNS,
    )
    .select_from(
        _MACHINE_JOINS.outerjoin(
            _hours,
            or_(
                _hours.c.machine_id == _machines.c.id,
                and_(_hours.c.site_id == _machines.c.site_id, _hours.c.machine_id.is_(None)),
            ),
        )
    )
    .where(_devices.c.id == bindparam("device_id"))
)
_RECORDED = select(_decisions.c.id, _decisions.c.response).where(
    _decisions.c.id.in_(bindparam("request_ids", expanding=True))
)
_MACHINES = (
    select(*_MACHINE_COLUMNS)
    .select_from(_MACHINE_JOINS)
    .where(_devices.c.id.in_(bindparam("device_ids", expanding=True)))
)
# Opening hours of these machines and of these sites (a machine's own hours win).
_HOURS = select(_hours.c.site_id, *_HOURS_COLUMNS).where(
    or_(
        _hours.c.machine_id.in_(bindparam("machine_ids", expanding=True)),
        and_(_hours.c.site_id.in_(bindparam("site_ids", expanding=True)), _hours.c.machine_id.is_(None)),
    )
)
# Badges with their person and the person's whole qualification history, newest first.
_BADGE_BASE = (
    select(
        _badges.c.uid,
        _badges.c.status,
        _badges.c.kind,
        _people.c.id,
        _people.c.name,
        _people.c.active,
        _people.c.is_trainer,
        _people.c.language,
        _quals.c.competency_id,
        _quals.c.level,
        _quals.c.action,
        _quals.c.valid_until,
    )
    .select_from(
        _badges.join(_people, _people.c.id == _badges.c.person_id).outerjoin(
            _quals, _quals.c.person_id == _people.c.id
        )
    )
    .order_by(_quals.c.id.desc())
)
_BADGE = _BADGE_BASE.where(_badges.c.uid == bindparam("uid"))
_BADGES = _BADGE_BASE.where(_badges.c.uid.in_(bindparam("uids", expanding=True)))
_REQUIREMENTS = (
    select(_reqs.c.competency_id, _reqs.c.min_level, _comps.c.name, _comps.c.name_de)
    .join_from(_reqs, _comps, _comps.c.id == _reqs.c.competency_id)
    .where(_reqs.c.machine_type_id == bindparam("machine_type_id"))
    .order_by(_reqs.c.id)
)
_OPEN_SESSIONS_BASE = (
    select(_sessions.c.person_id, _sessions.c.device_id, func.count())
    .where(
        _sessions.c.ended_at.is_(None),
        _sessions.c.started_at > bindparam("since", type_=_sessions.c.started_at.type),
    )
    .group_by(_sessions.c.person_id, _sessions.c.device_id)
)
_OPEN_SESSIONS = _OPEN_SESSIONS_BASE.where(_sessions.c.person_id == bindparam("person_id"))
_OPEN_SESSIONS_MANY = _OPEN_SESSIONS_BASE.where(
    _sessions.c.person_id.in_(bindparam("person_ids", expanding=True))
)


def _hours_by_owner(rows: Iterable[Any]) -> tuple[dict[int, list[Hours]], dict[int, list[Hours]]]:
    """(own hours per machine id, hours per site id) from rows of _HOURS_COLUMNS and site_id."""
    own: dict[int, list[Hours]] = {}
    site: dict[int, list[Hours]] = {}
    for row in rows:
        if row.weekday is None:  # a machine without hours (outer join)
            continue
        hours = Hours(row.weekday, row.opens, row.closes)
        if row.hours_machine_id is not None:
            own.setdefault(row.hours_machine_id, []).append(hours)
        else:
            site.setdefault(row.site_id, []).append(hours)
    return own, site


def _machine_of(device_id: str, row: Any | None, hours: tuple[Hours, ...]) -> MachineFacts | ProtocolError:
    if row is None:
        return ProtocolError("unknown_device", f"device {device_id!r} is not registered; provision it first")
    if row.id is None:
        return ProtocolError("unassigned_device", f"device {device_id!r} serves no machine")
    return MachineFacts(
        id=row.id,
        status=MachineStatus(row.status),
        timezone=row.timezone,
        machine_type_id=row.machine_type_id,
        type_name=row.name,
        max_session_min=row.max_session_min,
        hours=hours,
        allowlist_version=row.allowlist_version,
        allowlist_dirty=row.allowlist_dirty,
        guard_min=row.guard_min,
        booking_seq=row.booking_seq,
        card_security=CardSecurity(row.card_security),
        type_name_de=row.name_de,
    )


def load_machine(
    db: Reader, device_id: str, now: datetime, person_id: int | None = None, request_id: str | None = None
) -> tuple[MachineFacts | ProtocolError, int, dict[str, Any] | None]:
    """One device's machine with its opening hours, the open sessions of ``person_id`` at other
    devices (0 without one) and the answer recorded for ``request_id`` (None: none), in one
    round trip."""
    params = {
        "device_id": device_id,
        "person_id": person_id,
        "since": now - STALE_SESSION,
        "request_id": request_id,
    }
    rows = db.execute(_MACHINE_AND_HOURS, params).all()
    if not rows:
        return _machine_of(device_id, None, ()), 0, None
    own, site = _hours_by_owner(rows)
    first = rows[0]
    hours = tuple(opening_hours.effective(own.get(first.id, []), site.get(first.site_id, [])))
    return _machine_of(device_id, first, hours), int(first.open_sessions or 0), first.recorded


def _naive_utc(moment: datetime) -> datetime:
    """As :class:`server.models.UTCDateTime` stores a moment."""
    return moment.astimezone(UTC).replace(tzinfo=None)


# A batch of taps on PostgreSQL, in one statement: the taps go in as parallel arrays (device,
# request id, badge, trainer's badge, and whether to read each badge's facts), and one row per
# tap comes back, in order, with everything the rules read on every tap: the device's machine,
# site and type, its opening hours (the machine's own and its site's, as JSON text: the same text
# stands for the same hours, see Decider._machine_of_row), the answer already recorded for the
# request id, the badge's person and their open sessions at other devices, and the facts of the
# badges not in the Decider's memory (status, kind, person, newest qualification entry per
# competency, as JSON). One statement is one snapshot: the allow-list flags that say whether the
# memory may be used are read at the same moment as the facts read instead of it.
_BADGE_FACTS_SQL = """(
    SELECT json_build_array(fb.status, fb.kind, fp.id, fp.name, fp.active, fp.is_trainer, fp.language,
        (SELECT json_agg(json_build_array(q.competency_id, q.level, q.action, q.valid_until))
           FROM (SELECT DISTINCT ON (q.competency_id) q.competency_id, q.level, q.action, q.valid_until
                   FROM qualifications q WHERE q.person_id = fp.id
                  ORDER BY q.competency_id, q.id DESC) AS q))
      FROM badges fb JOIN people fp ON fp.id = fb.person_id
     WHERE fb.uid = {uid} AND {wanted})"""
# (Constant text: the f-string only puts one subquery in twice.)
_BATCH_SQL = f"""
SELECT t.n, k.*,
       (SELECT a.response FROM access_decisions a WHERE a.id = t.request_id) AS recorded,
       b.person_id AS badge_person,
       (SELECT count(*) FROM sessions x
         WHERE x.person_id = b.person_id AND x.ended_at IS NULL AND x.started_at > %(since)s
           AND x.device_id <> t.device_id) AS open_sessions,
       {_BADGE_FACTS_SQL.format(uid="t.uid", wanted="t.load")} AS badge_facts,
       {_BADGE_FACTS_SQL.format(uid="t.trainer_uid", wanted="t.load_trainer")} AS trainer_facts
  FROM unnest(%(device_ids)s::text[], %(request_ids)s::text[], %(uids)s::text[],
              %(trainer_uids)s::text[], %(load)s::bool[], %(load_trainer)s::bool[])
       WITH ORDINALITY AS t(device_id, request_id, uid, trainer_uid, load, load_trainer, n)
  LEFT JOIN LATERAL (
      SELECT d.id AS device_id, m.id, m.status, m.allowlist_version, m.allowlist_dirty,
             m.machine_type_id, m.site_id, m.max_session_min, m.guard_min, m.booking_seq,
             s.timezone, s.card_security, mt.name, mt.name_de,
             (SELECT json_agg(json_build_array(h.machine_id IS NOT NULL, h.weekday, h.opens, h.closes)
                              ORDER BY h.id)::text
                FROM opening_hours h
               WHERE h.machine_id = m.id OR (h.site_id = m.site_id AND h.machine_id IS NULL)) AS hours
        FROM devices d
        LEFT JOIN machines m ON m.id = d.machine_id
        LEFT JOIN sites s ON s.id = m.site_id
        LEFT JOIN machine_types mt ON mt.id = m.machine_type_id
       WHERE d.id = t.device_id) AS k ON true
  LEFT JOIN LATERAL (SELECT person_id FROM badges WHERE uid = t.uid OFFSET 0) AS b ON true
 ORDER BY t.n
"""  # noqa: S608


def _run_batch_pg(db: Connection, params: Mapping[str, Any]) -> list[Any]:
    """:data:`_BATCH_SQL`, prepared, on the psycopg connection under ``db``; errors as SQLAlchemy's."""
    try:
        raw = db.connection.driver_connection
        with raw.cursor(row_factory=namedtuple_row) as cursor:  # type: ignore[union-attr]
            cursor.execute(_BATCH_SQL, params, prepare=True)
            found: list[Any] = cursor.fetchall()
            return found
    except psycopg.Error as exc:
        raise DBAPIError.instance(_BATCH_SQL, dict(params), exc, psycopg.Error) from exc


def _badge_of_json(uid: str, facts: Sequence[Any] | None) -> BadgeFacts | None:
    """A badge's facts from the JSON of :data:`_BADGE_FACTS_SQL` (None: nobody has it)."""
    if facts is None:
        return None
    status, kind, person_id, name, active, is_trainer, language, history = facts
    newest = {
        cid: Entry(Level(level), QualificationAction(action), date.fromisoformat(until) if until else None)
        for cid, level, action, until in history or ()
    }
    person = PersonFacts(person_id, name, active, is_trainer, language)
    return BadgeFacts(uid, BadgeStatus(status), person, newest, BadgeKind(kind))


def _hours_of_json(text: str | None) -> tuple[Hours, ...]:
    """The effective opening hours from the ``hours`` column of :data:`_BATCH_SQL`."""
    own: list[Hours] = []
    site: list[Hours] = []
    for is_own, weekday, opens, closes in json.loads(text) if text else ():
        (own if is_own else site).append(
            Hours(weekday, time.fromisoformat(opens), time.fromisoformat(closes))
        )
    return tuple(opening_hours.effective(own, site))


def load_recorded(db: Reader, request_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The answers already recorded for these request ids (the others are not in the result)."""
    wanted = sorted(set(request_ids))
    if not wanted:
        return {}
    return {row.id: row.response for row in db.execute(_RECORDED, {"request_ids": wanted})}


def load_machines(
    db: Reader, device_ids: Iterable[str], now: datetime
) -> dict[str, MachineFacts | ProtocolError]:
    """The facts of the machine each device serves, or why there is none."""
    wanted = sorted(set(device_ids))
    if len(wanted) == 1:
        return {wanted[0]: load_machine(db, wanted[0], now)[0]}
    rows = {row.device_id: row for row in db.execute(_MACHINES, {"device_ids": wanted})}
    assigned = [row for row in rows.values() if row.id is not None]
    own: dict[int, list[Hours]] = {}
    site: dict[int, list[Hours]] = {}
    if assigned:
        params = {
            "machine_ids": sorted({r.id for r in assigned}),
            "site_ids": sorted({r.site_id for r in assigned}),
        }
        own, site = _hours_by_owner(db.execute(_HOURS, params))
    out: dict[str, MachineFacts | ProtocolError] = {}
    for device_id in wanted:
        row = rows.get(device_id)
        hours: tuple[Hours, ...] = ()
        if row is not None and row.id is not None:
            hours = tuple(opening_hours.effective(own.get(row.id, []), site.get(row.site_id, [])))
        out[device_id] = _machine_of(device_id, row, hours)
    return out


def _machine_facts(db: Session, machine: Machine) -> MachineFacts:
    params = {"machine_ids": [machine.id], "site_ids": [machine.site_id]}
    own, site = _hours_by_owner(db.execute(_HOURS, params))
    return MachineFacts(
        id=machine.id,
        status=machine.status,
        timezone=machine.site.timezone,
        machine_type_id=machine.machine_type_id,
        type_name=machine.machine_type.name,
        max_session_min=machine.max_session_min,
        hours=tuple(opening_hours.effective(own.get(machine.id, []), site.get(machine.site_id, []))),
        allowlist_version=machine.allowlist_version,
        allowlist_dirty=machine.allowlist_dirty,
        guard_min=machine.guard_min,
        booking_seq=machine.booking_seq,
        card_security=machine.site.card_security,
        type_name_de=machine.machine_type.name_de,
    )


def load_badges(db: Reader, uids: Iterable[str]) -> dict[str, BadgeFacts | None]:
    """Badges by upper-case UID (None: nobody has it) with person and qualification history."""
    wanted = sorted({uid.upper() for uid in uids})
    rows: dict[str, list[Any]] = {}
    result = (
        db.execute(_BADGE, {"uid": wanted[0]}) if len(wanted) == 1 else db.execute(_BADGES, {"uids": wanted})
    )
    for row in result:
        rows.setdefault(row.uid, []).append(row)
    out: dict[str, BadgeFacts | None] = {}
    for uid in wanted:
        history = rows.get(uid)
        if not history:
            out[uid] = None
            continue
        newest: dict[int, Entry] = {}
        for row in history:  # newest first: the first entry per competency decides
            if row.competency_id is not None and row.competency_id not in newest:
                newest[row.competency_id] = Entry(row.level, row.action, row.valid_until)
        first = history[0]
        person = PersonFacts(first.id, first.name, first.active, first.is_trainer, first.language)
        out[uid] = BadgeFacts(first.uid, first.status, person, newest, BadgeKind(first.kind))
    return out


_BOOKINGS = (
    select(_bookings.c.person_id, _bookings.c.starts_at, _bookings.c.ends_at)
    .where(
        _bookings.c.machine_id == bindparam("machine_id"),
        _bookings.c.status == BookingStatus.BOOKED.value,
        _bookings.c.ends_at > bindparam("now", type_=_bookings.c.ends_at.type),
    )
    .order_by(_bookings.c.starts_at)
)


def load_bookings(db: Reader, machine_id: int, now: datetime) -> tuple[BookingFacts, ...]:
    """The machine's booked slots that have not ended yet, by start."""
    rows = db.execute(_BOOKINGS, {"machine_id": machine_id, "now": now})
    return tuple(BookingFacts(r.person_id, r.starts_at, r.ends_at) for r in rows)


def load_requirements(db: Reader, machine_type_id: int) -> tuple[RequirementFacts, ...]:
    rows = db.execute(_REQUIREMENTS, {"machine_type_id": machine_type_id})
    return tuple(RequirementFacts(r.competency_id, r.min_level, r.name, r.name_de) for r in rows)


@dataclass(frozen=True)
class OpenSessions:
    """One person's open (not stale) sessions, per device."""

    by_device: Mapping[str, int]

    def elsewhere(self, device_id: str | None) -> int:
        """How many count toward the limit for a tap at ``device_id``: those at other devices."""
        return sum(n for device, n in self.by_device.items() if device != device_id)


def count_open_sessions(db: Reader, person_ids: Iterable[int], now: datetime) -> dict[int, OpenSessions]:
    """Open (not stale) sessions per person and device; every asked person is in the answer."""
    wanted = sorted(set(person_ids))
    found_by: dict[int, dict[str, int]] = {person_id: {} for person_id in wanted}
    since = now - STALE_SESSION
    found = (
        db.execute(_OPEN_SESSIONS, {"person_id": wanted[0], "since": since})
        if len(wanted) == 1
        else db.execute(_OPEN_SESSIONS_MANY, {"person_ids": wanted, "since": since})
    )
    for person_id, device_id, count in found:
        found_by[person_id][device_id] = int(count)
    return {person_id: OpenSessions(by_device) for person_id, by_device in found_by.items()}


# -- the rules -----------------------------------------------------------------------------------
def _window(
    hours: Sequence[Hours], timezone: str, now: datetime
) -> tuple[bool, datetime | None, datetime | None]:
    """(open now, closes at, next opening) in UTC. No hours configured means always open."""
    if not hours:
        return True, None, None
    tz = ZoneInfo(timezone)
    local = now.astimezone(tz)
    next_open: datetime | None = None
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        for row in sorted((r for r in hours if r.weekday == day.weekday()), key=lambda r: r.opens):
            opens = datetime.combine(day, row.opens, tz)
            closes = datetime.combine(day, row.closes, tz)
            if offset == 0 and opens <= local < closes:
                return True, closes.astimezone(UTC), None
            if opens > local and next_open is None:
                next_open = opens.astimezone(UTC)
        if next_open is not None:
            break
    return False, None, next_open


def opening_window(
    db: Session, machine: Machine, now: datetime
) -> tuple[bool, datetime | None, datetime | None]:
    """(open now, closes at, next opening) in UTC. No hours configured means always open."""
    facts = _machine_facts(db, machine)
    return _window(facts.hours, facts.timezone, now)


def opening_windows(
    db: Session, machines: Sequence[Machine], now: datetime
) -> dict[int, tuple[bool, datetime | None, datetime | None]]:
    """:func:`opening_window` of many machines, their hours read in one query (a page listing a
    site's machines)."""
    if not machines:
        return {}
    params = {"machine_ids": [m.id for m in machines], "site_ids": sorted({m.site_id for m in machines})}
    own, site = _hours_by_owner(db.execute(_HOURS, params))
    return {
        m.id: _window(
            tuple(opening_hours.effective(own.get(m.id, []), site.get(m.site_id, []))), m.site.timezone, now
        )
        for m in machines
    }


def _deny(
    reason: str, tz: str, key: str | None = None, person: PersonFacts | None = None, **params: object
) -> Verdict:
    return Verdict(False, reason, machine_texts.render(key or reason, tz, **params), person=person)


def _rules(
    machine: MachineFacts,
    badge: BadgeFacts | None,
    requirements: Callable[[], Sequence[RequirementFacts]],
    now: datetime,
    mode: str,
    trainer_badge: Callable[[], BadgeFacts | None],
    open_sessions: Callable[[int], int],  # person id -> sessions counting toward the limit
    max_open_sessions: int,
    bookings: Callable[[], Sequence[BookingFacts]] = tuple,
    card_auth: str | None = None,
) -> Verdict:
    """Every rule, in order; the callables read only what a rule reached needs."""
    tz = machine.timezone
    if badge is None:
        return _deny("unknown_badge", tz)
    person = badge.person
    if not card_genuine(machine.card_security.value, card_auth):
        # Before anything about the person: a copy of their badge learns nothing of them.
        return _deny("badge_not_genuine", tz)
    if badge.status != BadgeStatus.ACTIVE:
        return _deny("badge_blocked", tz, person=person)
    if not person.active:
        return _deny("person_inactive", tz, person=person)
    if machine.status != MachineStatus.AVAILABLE:
        return _deny("machine_maintenance", tz, person=person)

    is_open, closes_at, next_open = _window(machine.hours, tz, now)
    if not is_open:
        if next_open is None:
            return _deny("outside_opening_hours", tz, "outside_opening_hours_unknown", person=person)
        return _deny("outside_opening_hours", tz, person=person, opens=next_open)

    today = now.astimezone(ZoneInfo(tz)).date()
    reqs = requirements()
    trainer: PersonFacts | None = None
    trainer_here = False
    if mode in ("supervise", "certify"):
        trainer = check_trainer(reqs, trainer_badge(), today)
        if trainer is None:
            return _deny("trainer_required", tz, "trainer_not_qualified", person=person)
        if trainer.id == person.id:
            return _deny("trainer_required", tz, "trainer_is_participant", person=person)
        refusal = _check_briefed(machine, badge, reqs, today)
        if refusal is not None:
            return refusal
        if mode == "certify":
            # No session: the caller records the sign-off and words the final message.
            return Verdict(
                True,
                "ok",
                machine_texts.render("signoff_recorded", tz, name=person.first_name),
                person=person,
                trainer=trainer,
            )
    else:
        refusal = _check_qualified(machine, badge, reqs, today)
        if refusal is not None:
            return refusal
        trainer_here = check_trainer(reqs, badge, today) is not None

    until = now + timedelta(minutes=machine.max_session_min)
    if closes_at is not None:
        until = min(until, closes_at)
    until_booking = False
    booked_after = False  # a walk-in: someone else's booking begins at until
    if not trainer_here:  # a trainer of this machine type may always come in (a fix, a check)
        booked = [b for b in bookings() if b.ends_at > now]
        current = next((b for b in booked if b.starts_at <= now), None)
        if current is not None and current.person_id != person.id:
            return _deny("booked_by_other", tz, person=person, free_at=_free_at(booked, current))
        guard = timedelta(minutes=machine.guard_min)
        for b in booked:
            if b.person_id == person.id and b.starts_at <= now + guard:
                # Their own booking (now, or about to start): it ends the session.
                if b.ends_at < until:
                    until, until_booking, booked_after = b.ends_at, True, False
            elif b.person_id != person.id and b.starts_at < until:
                # Someone else's booking comes: a walk-in lasts until it starts.
                until, until_booking, booked_after = b.starts_at, True, True

    count = open_sessions(person.id)
    if count >= max_open_sessions:
        return _deny("session_limit", tz, person=person, count=count)
    if trainer is not None:
        message = machine_texts.render(
            "supervised_ok", tz, name=person.first_name, trainer=trainer.first_name, until=until
        )
    else:
        key = "ok_until_booking" if booked_after and until_booking else "ok"
        message = machine_texts.render(key, tz, name=person.first_name, until=until)
    return Verdict(
        True,
        "ok",
        message,
        person=person,
        trainer=trainer,
        session_id=str(uuid.uuid4()),
        until=until,
        trainer_here=trainer_here,
        until_booking=until_booking,
    )


def _free_at(booked: Sequence[BookingFacts], current: BookingFacts) -> datetime:
    """When the machine is free again: the end of the run of back-to-back bookings from ``current``."""
    free = current.ends_at
    for b in booked:
        if b.starts_at <= free and b.ends_at > free:
            free = b.ends_at
    return free


def _check_qualified(
    machine: MachineFacts, badge: BadgeFacts, requirements: Sequence[RequirementFacts], today: date
) -> Verdict | None:
    tz = machine.timezone
    person = badge.person
    states = badge.states([r.competency_id for r in requirements], today)
    needs_trainer = False
    for req in requirements:
        state = states.get(req.competency_id)
        if state is None or state.level is None or state.revoked:
            return _deny("not_qualified", tz, person=person, machine=machine.type_display_name)
        if state.expired:
            return _deny(
                "qualification_expired",
                tz,
                person=person,
                competency=req.display_name,
                date=state.valid_until or today,
            )
        if state.level.rank < Level(req.min_level).rank:
            needs_trainer = True
    if needs_trainer:
        return _deny("trainer_required", tz, person=person)
    return None


def _check_briefed(
    machine: MachineFacts, badge: BadgeFacts, requirements: Sequence[RequirementFacts], today: date
) -> Verdict | None:
    """A supervised or certified participant needs every required competency at least at
    level briefed, usable: the briefing is the step no trainer at the machine replaces."""
    tz = machine.timezone
    person = badge.person
    states = badge.states([r.competency_id for r in requirements], today)
    for req in requirements:
        state = states.get(req.competency_id)
        if state is None or state.level is None or state.revoked:
            return _deny(
                "not_qualified", tz, "briefing_required", person=person, machine=machine.type_display_name
            )
        if state.expired:
            return _deny(
                "qualification_expired",
                tz,
                person=person,
                competency=req.display_name,
                date=state.valid_until or today,
            )
    return None


def check_trainer(
    requirements: Sequence[RequirementFacts], badge: BadgeFacts | None, today: date
) -> PersonFacts | None:
    """The trainer, if their badge is valid and they hold every competency this machine type
    requires at level trainer, valid (the minimum level a user needs is not enough)."""
    if badge is None or badge.status != BadgeStatus.ACTIVE:
        return None
    trainer = badge.person
    if not (trainer.active and trainer.is_trainer):
        return None
    states = badge.states([r.competency_id for r in requirements], today)
    for req in requirements:
        state = states.get(req.competency_id)
        if state is None or not state.usable or state.level != Level.TRAINER:
            return None
    return trainer


# -- the two ways in -------------------------------------------------------------------------------
def decide(
    db: Session,
    machine: Machine,
    badge_uid: str,
    now: datetime,
    mode: str = "use",
    trainer_badge: str | None = None,
    max_open_sessions: int = 2,
    card_auth: str | None = None,
) -> AccessResult:
    """Decide one tap. Reads only; the caller records the decision."""
    device_id = machine.device.id if machine.device is not None else None
    verdict = _rules(
        _machine_facts(db, machine),
        load_badges(db, [badge_uid])[badge_uid.upper()],
        lambda: load_requirements(db, machine.machine_type_id),
        now,
        mode,
        lambda: (
            load_badges(db, [trainer_badge])[trainer_badge.upper()] if trainer_badge is not None else None
        ),
        lambda person_id: count_open_sessions(db, [person_id], now)[person_id].elsewhere(device_id),
        max_open_sessions,
        lambda: load_bookings(db, machine.id, now),
        card_auth,
    )
    return AccessResult(
        verdict.allowed,
        verdict.reason,
        verdict.message,
        person=db.get(Person, verdict.person.id) if verdict.person else None,
        trainer=db.get(Person, verdict.trainer.id) if verdict.trainer else None,
        session_id=verdict.session_id,
        until=verdict.until,
        trainer_here=verdict.trainer_here,
        until_booking=verdict.until_booking,
    )


def _lookup(badges: Mapping[str, BadgeFacts | None], uid: str | None) -> BadgeFacts | None:
    return badges[uid.upper()] if uid is not None else None


# Machine facts kept by the rows they were made of, at most (Decider._machine_of_row).
MAX_MACHINE_ROWS = 10_000


@dataclass(frozen=True)
class Tap:
    """One auth/req as the Decider needs it."""

    device_id: str
    badge: str
    mode: str = "use"
    trainer_badge: str | None = None
    card_auth: str | None = None
    # The request id, when an answer recorded for it earlier should stand (see Recorded).
    request_id: str | None = None


@dataclass(frozen=True)
class Recorded:
    """A tap whose request id was answered already: that answer (AuthResp fields without
    ``v``) stands, whatever the rules say now."""

    response: dict[str, Any]


class Decider:
    """The rules of :func:`decide` for a long-running caller (the bridge), with an exact cache.

    Thread-safe. On PostgreSQL a batch of any size, one tap included, costs one prepared
    statement (``_BATCH_SQL``: machines, opening hours, recorded answers, open sessions and
    the badges not in memory); one more only when the allow-list flags it read say the
    memory is out of date. On SQLite one tap costs one query (machine, opening hours and, for
    a badge in memory, the person's open sessions); a batch costs one query for the machines,
    one for their opening hours and one for the open sessions of everyone tapping, whatever
    its size, and badges not in memory one more. Badges (with person and qualification
    history) and requirements per machine type stay in memory while the allow-list flags
    say nothing they depend on changed (see the module docstring); so do a machine type's
    requirements and a machine's bookings (by ``booking_seq``).
    """

    def __init__(self, max_badges: int = 100_000) -> None:
        self.max_badges = max_badges
        self._lock = threading.Lock()
        self._generation = 0
        self._seen: dict[int, int] = {}  # machine id -> allow-list version seen clean
        self._badges: dict[str, BadgeFacts | None] = {}
        self._requirements: dict[int, tuple[RequirementFacts, ...]] = {}
        self._bookings: dict[int, tuple[int, tuple[BookingFacts, ...]]] = {}
        # Machine facts by the columns of a batch row they are made of (PostgreSQL's path).
        self._machine_rows: dict[tuple[Any, ...], MachineFacts | ProtocolError] = {}
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        self._generation += 1
        self._badges.clear()
        self._requirements.clear()

    def _check(self, machines: Iterable[MachineFacts]) -> int | None:
        """The cache generation valid for taps at these machines, or None: read afresh."""
        with self._lock:
            usable = True
            for machine in machines:
                if machine.allowlist_dirty:
                    # Changed since the last allow-list: read afresh until it is reissued.
                    self._flush()
                    self._seen.pop(machine.id, None)
                    usable = False
                elif self._seen.get(machine.id) != machine.allowlist_version:
                    # First look at this machine, or its allow-list was reissued: something
                    # may have changed since any entry was read.
                    self._flush()
                    self._seen[machine.id] = machine.allowlist_version
            return self._generation if usable else None

    def _load_badges(
        self, db: Reader, uids: set[str], generation: int | None
    ) -> dict[str, BadgeFacts | None]:
        found: dict[str, BadgeFacts | None] = {}
        if generation is not None:
            with self._lock:
                if generation == self._generation:
                    for uid in uids:
                        if uid in self._badges:
                            found[uid] = self._badges[uid]
                self.hits += len(found)
        missing = uids - found.keys()
        if missing:
            loaded = load_badges(db, missing)
            found.update(loaded)
            if generation is not None:
                with self._lock:
                    self.misses += len(missing)
                    if generation == self._generation:
                        if len(self._badges) + len(loaded) > self.max_badges:
                            self._badges.clear()
                        self._badges.update(loaded)
        return found

    def _cached_person(self, uid: str) -> int | None:
        """The person id a cached badge names, unchecked (a wrong guess only costs a query)."""
        with self._lock:
            facts = self._badges.get(uid)
        return facts.person.id if facts is not None else None

    def _load_requirements(
        self, db: Reader, machine_type_id: int, generation: int | None
    ) -> tuple[RequirementFacts, ...]:
        if generation is not None:
            with self._lock:
                found = self._requirements.get(machine_type_id)
                if found is not None and generation == self._generation:
                    return found
        reqs = load_requirements(db, machine_type_id)
        if generation is not None:
            with self._lock:
                if generation == self._generation:
                    self._requirements[machine_type_id] = reqs
        return reqs

    def _load_bookings(self, db: Reader, machine: MachineFacts, now: datetime) -> tuple[BookingFacts, ...]:
        """The machine's coming bookings, from memory while its ``booking_seq`` is unchanged
        (every booking change bumps it in the same transaction: an exact cache)."""
        with self._lock:
            cached = self._bookings.get(machine.id)
        if cached is not None and cached[0] == machine.booking_seq:
            return tuple(b for b in cached[1] if b.ends_at > now)
        loaded = load_bookings(db, machine.id, now)
        with self._lock:
            self._bookings[machine.id] = (machine.booking_seq, loaded)
        return loaded

    def decide(
        self, db: Reader, taps: Sequence[Tap], now: datetime, max_open_sessions: int = 2
    ) -> list[tuple[MachineFacts, Verdict] | Recorded | Exception]:
        """(machine, verdict) per tap, in order; Recorded for a tap whose ``request_id`` has
        an answer recorded already; a ProtocolError for a tap at an unknown or unassigned
        device, any other exception for a tap the rules failed on."""
        if isinstance(db, Connection) and db.dialect.name == "postgresql":
            return self._decide_pg(db, taps, now, max_open_sessions)
        # Per person: open sessions at other devices (a single tap), or per device (a batch).
        counts: dict[int, int] = {}
        sessions: dict[int, OpenSessions] = {}
        recorded: dict[str, dict[str, Any]] = {}
        if len(taps) == 1:
            # A single tap (a quiet lab): the person's open sessions and any answer recorded
            # for the request come with the machine, for whoever the cache says the badge
            # belongs to (checked below like any entry).
            tap = taps[0]
            person_id = self._cached_person(tap.badge.upper())
            machine, count, stored = load_machine(db, tap.device_id, now, person_id, tap.request_id)
            machines = {tap.device_id: machine}
            if person_id is not None:
                counts[person_id] = count
            if stored is not None and tap.request_id is not None:
                recorded[tap.request_id] = stored
        else:
            machines = load_machines(db, (t.device_id for t in taps), now)
            recorded = load_recorded(db, (t.request_id for t in taps if t.request_id is not None))
        generation = self._check(m for m in machines.values() if isinstance(m, MachineFacts))
        uids = {t.badge.upper() for t in taps} | {t.trainer_badge.upper() for t in taps if t.trainer_badge}
        badges = self._load_badges(db, uids, generation)
        if len(taps) > 1:
            # One query for everyone who might get as far as the session limit.
            candidates = {
                b.person.id
                for b in badges.values()
                if b is not None and b.status == BadgeStatus.ACTIVE and b.person.active
            }
            if candidates:
                sessions = count_open_sessions(db, candidates, now)

        def open_sessions(device_id: str, person_id: int) -> int:
            if person_id in counts:  # a single tap's, at its device
                return counts[person_id]
            if person_id not in sessions:
                sessions.update(count_open_sessions(db, [person_id], now))
            return sessions[person_id].elsewhere(device_id)

        return [
            self._apply(
                db,
                tap,
                Recorded(recorded[tap.request_id])
                if tap.request_id is not None and tap.request_id in recorded
                else machines[tap.device_id],
                badges,
                partial(open_sessions, tap.device_id),
                generation,
                now,
                max_open_sessions,
            )
            for tap in taps
        ]

    def _apply(
        self,
        db: Reader,
        tap: Tap,
        machine: MachineFacts | ProtocolError | Recorded,
        badges: Mapping[str, BadgeFacts | None],
        open_sessions: Callable[[int], int],
        generation: int | None,
        now: datetime,
        max_open_sessions: int,
    ) -> tuple[MachineFacts, Verdict] | Recorded | Exception:
        """The rules for one tap whose facts are read (``machine``: a Recorded answer stands)."""
        if isinstance(machine, (Recorded, ProtocolError)):
            return machine
        try:
            verdict = _rules(
                machine,
                badges[tap.badge.upper()],
                partial(self._load_requirements, db, machine.machine_type_id, generation),
                now,
                tap.mode,
                partial(_lookup, badges, tap.trainer_badge),
                open_sessions,
                max_open_sessions,
                partial(self._load_bookings, db, machine, now),
                tap.card_auth,
            )
        except SQLAlchemyError:
            raise
        except Exception as exc:  # a bug in one tap must not cost the others their answer
            return exc
        return machine, verdict

    def _machine_of_row(self, device_id: str, row: Any) -> MachineFacts | ProtocolError:
        """The machine facts in a row of :data:`_BATCH_SQL`, from memory when the same columns
        came before (the key is every column the facts are made of, device id to hours: exact)."""
        if row.device_id is None:  # not remembered: anyone can make up device ids
            return _machine_of(device_id, None, ())
        key = tuple(row[1:16])
        with self._lock:
            found = self._machine_rows.get(key)
        if found is not None:
            return found
        facts = _machine_of(device_id, row, _hours_of_json(row.hours))
        with self._lock:
            if len(self._machine_rows) >= MAX_MACHINE_ROWS:
                self._machine_rows.clear()
            self._machine_rows[key] = facts
        return facts

    def _decide_pg(
        self, db: Connection, taps: Sequence[Tap], now: datetime, max_open_sessions: int
    ) -> list[tuple[MachineFacts, Verdict] | Recorded | Exception]:
        """:meth:`decide` on PostgreSQL: the whole batch's facts in one prepared statement
        (:data:`_BATCH_SQL`). Badges in memory are not read again unless the allow-list flags
        read with the batch say the memory is out of date (then one more query)."""
        uids = [t.badge.upper() for t in taps]
        trainer_uids = [t.trainer_badge.upper() if t.trainer_badge else None for t in taps]
        with self._lock:
            before = self._generation
            cached = {
                u: self._badges[u] for u in {*uids, *trainer_uids} if u is not None and u in self._badges
            }
        wanted: set[str] = set()  # each badge not in memory is read once per batch

        def want(uid: str | None) -> bool:
            if uid is None or uid in cached or uid in wanted:
                return False
            wanted.add(uid)
            return True

        load = [want(u) for u in uids]
        load_trainer = [want(u) for u in trainer_uids]
        rows = _run_batch_pg(
            db,
            {
                "device_ids": [t.device_id for t in taps],
                "request_ids": [t.request_id for t in taps],
                "uids": uids,
                "trainer_uids": trainer_uids,
                "load": load,
                "load_trainer": load_trainer,
                "since": _naive_utc(now - STALE_SESSION),
            },
        )
        machines: list[MachineFacts | ProtocolError] = []
        loaded: dict[str, BadgeFacts | None] = {}
        for tap, row, uid, trainer_uid in zip(taps, rows, uids, trainer_uids, strict=True):
            machines.append(self._machine_of_row(tap.device_id, row))
            if uid in wanted and uid not in loaded:
                loaded[uid] = _badge_of_json(uid, row.badge_facts)
            if trainer_uid is not None and trainer_uid in wanted and trainer_uid not in loaded:
                loaded[trainer_uid] = _badge_of_json(trainer_uid, row.trainer_facts)
        generation = self._check(m for m in machines if isinstance(m, MachineFacts))
        badges: dict[str, BadgeFacts | None] = dict(loaded)
        if generation is not None and generation == before:
            badges.update(cached)
            stale: set[str] = set()
        else:
            # Something changed since the memory was filled: what it held is read afresh.
            stale = set(cached)
            if stale:
                badges.update(load_badges(db, stale))
        with self._lock:
            self.hits += len(cached) - len(stale)
            self.misses += len(wanted) + len(stale)
            if generation is not None and generation == self._generation:
                fresh = {u: badges[u] for u in wanted | stale}
                if len(self._badges) + len(fresh) > self.max_badges:
                    self._badges.clear()
                self._badges.update(fresh)

        def open_sessions(index: int, person_id: int) -> int:
            row = rows[index]
            if row.badge_person == person_id:
                return int(row.open_sessions)
            # Not the badge's person as the statement read it (cannot happen while the memory
            # is exact): ask.
            return count_open_sessions(db, [person_id], now)[person_id].elsewhere(taps[index].device_id)

        results: list[tuple[MachineFacts, Verdict] | Recorded | Exception] = []
        for index, (tap, row, machine) in enumerate(zip(taps, rows, machines, strict=True)):
            recorded = row.recorded
            results.append(
                self._apply(
                    db,
                    tap,
                    Recorded(recorded) if recorded is not None and tap.request_id is not None else machine,
                    badges,
                    partial(open_sessions, index),
                    generation,
                    now,
                    max_open_sessions,
                )
            )
        return results
