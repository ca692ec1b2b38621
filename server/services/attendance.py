"""Attendance: who was at the lab when, per day and month, for Jobcenters and funders.

Presence comes from two sources, merged per person and local day (overlaps count once):

* stays at the site: a tap at the entrance reader (a device with ``entrance_site_id``, the
  agent in ``[reader] mode = "checkin"``) checks a person in, the next tap checks them out; a
  stay still open at the site's closing time is closed then by the scheduler and marked
  ``auto_closed`` (:func:`close_forgotten`);
* every machine session: someone who printed from 10:00 to 12:00 was there then, whether or
  not they tapped at the entrance.

A trainer may correct a day (:func:`correct_day`): the time present that counts from then on,
or an absence, excused or not, always with a reason; corrections are appended and audited,
under the staff rule (nobody on their own records, trainers only at their own site).

A cohort may have a timetable (:class:`~server.models.CohortTimetable`): its weekdays are the
*expected days*; an expected day (not a closed day of the site, not in the future, today only
once the cohort's time of the day is over, not before the person joined nor after their exit)
without presence and without an excuse is an absence.
"""

from __future__ import annotations

import calendar
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import (
    Attendance,
    AttendanceCorrection,
    Badge,
    BadgeStatus,
    ClosedDay,
    CohortTimetable,
    Device,
    MachineSession,
    OpeningHours,
    ParticipantExit,
    Person,
    Site,
)
from server.services import audit, training
from server.services.training import TrainingError

log = logging.getLogger(__name__)

# A second tap this soon after checking in is the card still lying on the reader, not a
# check-out (the machines' agents have the same grace for a tap-out).
TAP_GRACE = timedelta(seconds=60)
# A correction's time present: at most a whole day.
MAX_DAY_S = 24 * 3600.0


# -- the entrance ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tap:
    """What a tap at the entrance did: ``direction`` is ``in``, ``out`` or ``repeat`` (a second
    tap within :data:`TAP_GRACE` of checking in: nothing changed); ``reason`` is a decision
    reason code (``ok`` or a denial)."""

    reason: str
    direction: str | None = None
    person: Person | None = None
    stay: Attendance | None = None

    @property
    def allowed(self) -> bool:
        return self.reason == "ok"


def entrance_site(db: Session, device_id: str) -> Site | None:
    """The site whose entrance ``device_id`` reads, or None for a machine's device."""
    device = db.get(Device, device_id)
    if device is None or device.entrance_site_id is None:
        return None
    return db.get(Site, device.entrance_site_id)


def open_stay(db: Session, person_id: int, site_id: int, before: datetime | None = None) -> Attendance | None:
    query = select(Attendance).where(
        Attendance.person_id == person_id,
        Attendance.site_id == site_id,
        Attendance.checked_out_at.is_(None),
    )
    if before is not None:
        query = query.where(Attendance.checked_in_at <= before)
    return db.scalars(query.order_by(Attendance.checked_in_at.desc()).limit(1)).first()


def tap(db: Session, site: Site, uid: str, at: datetime, device_id: str | None, offline: bool = False) -> Tap:
    """Check the badge's holder in or out at ``site``. A badge that is unknown, lost, blocked or
    of an inactive person changes nothing (reason codes as at a machine)."""
    badge = db.scalar(select(Badge).where(Badge.uid == uid.upper()))
    if badge is None:
        return Tap("unknown_badge")
    if badge.status != BadgeStatus.ACTIVE:
        return Tap("badge_blocked")
    person = badge.person
    if not person.active:
        return Tap("person_inactive", person=person)
    stay = open_stay(db, person.id, site.id, before=at)
    if stay is not None:
        if at - stay.checked_in_at < TAP_GRACE:
            return Tap("ok", "repeat", person, stay)
        stay.checked_out_at = at
        db.flush()
        return Tap("ok", "out", person, stay)
    stay = Attendance(
        person_id=person.id, site_id=site.id, checked_in_at=at, device_id=device_id, offline=offline
    )
    db.add(stay)
    db.flush()
    return Tap("ok", "in", person, stay)


def closing_time(db: Session, site: Site, day: date) -> datetime:
    """When the site closes on ``day`` (its latest opening hours' end; the day's end when it
    has no hours that day), as an aware UTC time."""
    tz = ZoneInfo(site.timezone)
    closes = db.scalar(
        select(func.max(OpeningHours.closes)).where(
            OpeningHours.site_id == site.id,
            OpeningHours.machine_id.is_(None),
            OpeningHours.weekday == day.weekday(),
        )
    )
    if closes is None:
        return datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return datetime.combine(day, closes, tzinfo=tz).astimezone(UTC)


def close_forgotten(db: Session, now: datetime) -> list[Attendance]:
    """Close every stay still open after its day's closing time, at that time, marked
    ``auto_closed`` (the scheduler runs this; idempotent)."""
    closed: list[Attendance] = []
    sites: dict[int, Site] = {}
    for stay in db.scalars(
        select(Attendance).where(Attendance.checked_out_at.is_(None), Attendance.checked_in_at < now)
    ):
        site = sites.get(stay.site_id) or db.get(Site, stay.site_id)
        assert site is not None
        sites[site.id] = site
        day = stay.checked_in_at.astimezone(ZoneInfo(site.timezone)).date()
        closes = closing_time(db, site, day)
        if closes > now:
            continue
        stay.checked_out_at = max(closes, stay.checked_in_at)
        stay.auto_closed = True
        closed.append(stay)
    if closed:
        audit.record(
            db,
            None,
            "attendance.auto_closed",
            "attendance",
            {"stays": [s.id for s in closed], "people": sorted({s.person_id for s in closed})},
            at=now,
        )
        db.flush()
    return closed


# -- presence ---------------------------------------------------------------------------------------


@dataclass
class Day:
    """One person's presence on one local day."""

    day: date
    present_s: float = 0.0
    first: datetime | None = None
    last: datetime | None = None
    auto_closed: bool = False  # a stay that day was closed at closing time, not by a tap
    corrected: AttendanceCorrection | None = None
    expected: bool = False

    @property
    def present(self) -> bool:
        return self.present_s > 0

    @property
    def excused(self) -> bool:
        return self.corrected is not None and self.corrected.excused

    @property
    def absent(self) -> bool:
        return self.expected and not self.present and not self.excused


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _split_days(
    start: datetime, end: datetime, tz: ZoneInfo, midnights: dict[date, datetime]
) -> Iterable[tuple[date, datetime, datetime]]:
    """``start``-``end`` cut at local midnights (``midnights``: each day's end in UTC, filled as
    needed; years of sessions touch the same days again and again)."""
    while start < end:
        day = start.astimezone(tz).date()
        midnight = midnights.get(day)
        if midnight is None:
            midnight = midnights[day] = datetime.combine(
                day + timedelta(days=1), time(0), tzinfo=tz
            ).astimezone(UTC)
        stop = min(end, midnight)
        yield day, start, stop
        start = stop


def presence(
    db: Session, person_ids: Sequence[int], first: date, last: date, tz: str, now: datetime
) -> dict[int, dict[date, Day]]:
    """Each person's days from ``first`` to ``last`` (local, inclusive) with any presence or a
    correction: stays and machine sessions merged, open ones counted up to ``now``, then
    the newest correction of a day replacing what was measured."""
    zone = ZoneInfo(tz)
    start = datetime.combine(first, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=zone).astimezone(UTC)
    ids = list(person_ids)
    intervals: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    auto: dict[int, set[date]] = defaultdict(set)
    if not ids:
        return {}
    stays = db.execute(
        select(
            Attendance.person_id, Attendance.checked_in_at, Attendance.checked_out_at, Attendance.auto_closed
        ).where(
            Attendance.person_id.in_(ids),
            Attendance.checked_in_at < end,
            or_(Attendance.checked_out_at.is_(None), Attendance.checked_out_at > start),
        )
    )
    for person_id, came, went, auto_closed in stays:
        until = went or now
        if until > came:
            intervals[person_id].append((came, until))
        if auto_closed:
            auto[person_id].add(came.astimezone(zone).date())
    sessions = db.execute(
        select(MachineSession.person_id, MachineSession.started_at, MachineSession.ended_at).where(
            MachineSession.person_id.in_(ids),
            MachineSession.started_at.is_not(None),
            MachineSession.started_at < end,
            or_(MachineSession.ended_at.is_(None), MachineSession.ended_at > start),
        )
    )
    for who, began, ended in sessions:
        if who is None or began is None:
            continue
        # A session without an end (its agent has not reported it yet) counts up to now, but
        # never past a day: a lost end must not make someone present for a week.
        until = ended or min(now, began + timedelta(hours=24))
        if until > began:
            intervals[who].append((began, until))
    out: dict[int, dict[date, Day]] = {pid: {} for pid in ids}
    midnights: dict[date, datetime] = {}
    for person_id, spans in intervals.items():
        days = out[person_id]
        for span_start, span_end in _merge(spans):
            for day, a, b in _split_days(max(span_start, start), min(span_end, end), zone, midnights):
                entry = days.get(day)
                if entry is None:
                    entry = days[day] = Day(day)
                entry.present_s += (b - a).total_seconds()
                entry.first = a if entry.first is None else min(entry.first, a)
                entry.last = b if entry.last is None else max(entry.last, b)
                entry.auto_closed = entry.auto_closed or day in auto[person_id]
    for correction in db.scalars(
        select(AttendanceCorrection)
        .where(
            AttendanceCorrection.person_id.in_(ids),
            AttendanceCorrection.day >= first,
            AttendanceCorrection.day <= last,
        )
        .order_by(AttendanceCorrection.id)
    ):
        entry = out[correction.person_id].setdefault(correction.day, Day(correction.day))
        entry.corrected = correction  # the newest wins (ordered by id)
        entry.present_s = correction.present_s
    return out


def expected_weekdays(db: Session, site_id: int, cohort: str | None) -> set[int]:
    if not cohort:
        return set()
    return set(
        db.scalars(
            select(CohortTimetable.weekday).where(
                CohortTimetable.site_id == site_id, CohortTimetable.cohort == cohort
            )
        )
    )


def timetable_ends(db: Session, site_id: int, cohort: str | None) -> dict[int, time]:
    """When the cohort's expected time ends on each of its weekdays (the latest span's end)."""
    if not cohort:
        return {}
    ends: dict[int, time] = {}
    for weekday, end in db.execute(
        select(CohortTimetable.weekday, CohortTimetable.ends).where(
            CohortTimetable.site_id == site_id, CohortTimetable.cohort == cohort
        )
    ):
        ends[weekday] = max(end, ends.get(weekday, end))
    return ends


def closed_days(db: Session, site_id: int, first: date, last: date) -> set[date]:
    return set(
        db.scalars(
            select(ClosedDay.day).where(
                ClosedDay.site_id == site_id,
                ClosedDay.machine_id.is_(None),
                ClosedDay.day >= first,
                ClosedDay.day <= last,
            )
        )
    )


# -- the month ----------------------------------------------------------------------------------------


def month_bounds(month: date) -> tuple[date, date]:
    first = month.replace(day=1)
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


@dataclass
class PersonMonth:
    person: Person
    days: dict[date, Day] = field(default_factory=dict)

    @property
    def days_present(self) -> int:
        return sum(1 for d in self.days.values() if d.present)

    @property
    def hours(self) -> float:
        return sum(d.present_s for d in self.days.values()) / 3600.0

    @property
    def absences(self) -> int:
        return sum(1 for d in self.days.values() if d.absent)

    @property
    def excused(self) -> int:
        return sum(1 for d in self.days.values() if d.expected and d.excused and not d.present)

    @property
    def expected(self) -> int:
        return sum(1 for d in self.days.values() if d.expected)


@dataclass
class MonthSheet:
    """A month's attendance of a group (a cohort, or the people chosen) at one site."""

    site: Site
    month: date
    cohort: str | None
    programme: str | None
    dates: list[date]
    rows: list[PersonMonth]
    expected_weekdays: set[int]
    closed: set[date]


def month_sheet(
    db: Session,
    site: Site,
    month: date,
    now: datetime,
    *,
    cohort: str | None = None,
    person_ids: Sequence[int] | None = None,
) -> MonthSheet:
    """The month's sheet for ``cohort`` at ``site`` (participants, active or not, who were
    there or expected), or for the people given."""
    first, last = month_bounds(month)
    query = select(Person).where(Person.site_id == site.id, Person.erased_at.is_(None))
    if person_ids is not None:
        query = query.where(Person.id.in_(list(person_ids)))
    elif cohort:
        query = query.where(Person.cohort == cohort, Person.is_participant.is_(True))
    else:
        query = query.where(Person.is_participant.is_(True))
    people = list(db.scalars(query.order_by(Person.name)))
    ids = [p.id for p in people]
    found = presence(db, ids, first, last, site.timezone, now)
    today = now.astimezone(ZoneInfo(site.timezone)).date()
    closed = closed_days(db, site.id, first, last)
    exits = dict(
        db.execute(
            select(ParticipantExit.person_id, ParticipantExit.left_on).where(
                ParticipantExit.person_id.in_(ids)
            )
        ).all()
    )
    weekdays_by_cohort: dict[str | None, set[int]] = {}
    ends_by_cohort: dict[str | None, dict[int, time]] = {}
    clock = now.astimezone(ZoneInfo(site.timezone)).time()
    rows: list[PersonMonth] = []
    for person in people:
        days = found.get(person.id, {})
        weekdays = weekdays_by_cohort.get(person.cohort)
        if weekdays is None:
            weekdays = weekdays_by_cohort[person.cohort] = expected_weekdays(db, site.id, person.cohort)
            ends_by_cohort[person.cohort] = timetable_ends(db, site.id, person.cohort)
        # Today is no absence before the cohort's time of the day is over.
        today_over = clock >= ends_by_cohort[person.cohort].get(today.weekday(), time.max)
        joined = person.created_at.astimezone(ZoneInfo(site.timezone)).date()
        left = exits.get(person.id)
        row = PersonMonth(person)
        day = first
        while day <= last:
            entry = days.get(day)
            expected = (
                day.weekday() in weekdays
                and day not in closed
                and (day < today or (day == today and today_over))
                and day >= joined
                and (left is None or day <= left)
            )
            if entry is not None or expected:
                entry = entry or Day(day)
                entry.expected = expected
                row.days[day] = entry
            day += timedelta(days=1)
        if person_ids is not None or cohort or row.days:
            rows.append(row)
    programmes = sorted({p.programme for p in people if p.programme})
    dates = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    sheet_weekdays = weekdays_by_cohort.get(cohort, set()) if cohort else set()
    return MonthSheet(site, first, cohort, ", ".join(programmes) or None, dates, rows, sheet_weekdays, closed)


def cohorts(db: Session, site_id: int) -> list[str]:
    return list(
        db.scalars(
            select(Person.cohort)
            .where(Person.site_id == site_id, Person.cohort.is_not(None), Person.cohort != "")
            .distinct()
            .order_by(Person.cohort)
        )
    )


# -- corrections ------------------------------------------------------------------------------------


def correct_day(
    db: Session,
    actor: Person,
    person: Person,
    day: date,
    present_s: float,
    excused: bool,
    reason: str | None,
    now: datetime,
) -> AttendanceCorrection:
    """Record what counts for ``person`` on ``day`` from now on. The staff rule applies
    (:func:`training.check_records`); a reason is required; refusals are TrainingErrors."""
    training.check_records(actor, person, "attendance")
    text = (reason or "").strip()
    if not text:
        raise TrainingError("reason_required", N_("Please give a reason."))
    if not 0 <= present_s <= MAX_DAY_S:
        raise TrainingError("bad_hours", N_("Give the time present as hours between 0 and 24."))
    if day > now.astimezone(ZoneInfo(person.site.timezone)).date():
        raise TrainingError("future_day", N_("You cannot correct a day in the future."))
    entry = AttendanceCorrection(
        person_id=person.id,
        day=day,
        present_s=present_s,
        excused=excused and present_s == 0,
        reason=text,
        corrected_by_id=actor.id,
        corrected_at=now,
    )
    db.add(entry)
    audit.record(
        db,
        actor,
        "attendance.corrected",
        f"person:{person.id}",
        {
            "person": person.name,
            "day": day.isoformat(),
            "present_h": round(present_s / 3600, 2),
            "excused": entry.excused,
            "reason": text,
        },
        at=now,
    )
    db.flush()
    return entry


def corrections(db: Session, person_id: int, first: date, last: date) -> list[AttendanceCorrection]:
    return list(
        db.scalars(
            select(AttendanceCorrection)
            .where(
                and_(
                    AttendanceCorrection.person_id == person_id,
                    AttendanceCorrection.day >= first,
                    AttendanceCorrection.day <= last,
                )
            )
            .order_by(AttendanceCorrection.id.desc())
        )
    )


def set_timetable(db: Session, site_id: int, cohort: str, rows: Iterable[tuple[int, time, time]]) -> None:
    """Replace the cohort's timetable (weekday, from, to)."""
    for old in db.scalars(
        select(CohortTimetable).where(CohortTimetable.site_id == site_id, CohortTimetable.cohort == cohort)
    ):
        db.delete(old)
    for weekday, starts, ends in rows:
        db.add(CohortTimetable(site_id=site_id, cohort=cohort, weekday=weekday, starts=starts, ends=ends))
    db.flush()


def timetable(db: Session, site_id: int, cohort: str) -> list[CohortTimetable]:
    return list(
        db.scalars(
            select(CohortTimetable)
            .where(CohortTimetable.site_id == site_id, CohortTimetable.cohort == cohort)
            .order_by(CohortTimetable.weekday, CohortTimetable.starts)
        )
    )


def summary(sheet: MonthSheet) -> dict[str, Any]:
    """Totals of a sheet (for exports and tests)."""
    return {
        "people": len(sheet.rows),
        "days_present": sum(r.days_present for r in sheet.rows),
        "hours": round(sum(r.hours for r in sheet.rows), 2),
        "absences": sum(r.absences for r in sheet.rows),
    }
