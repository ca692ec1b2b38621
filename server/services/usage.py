"""Usage aggregates: machine hours per local day, hour, participant group and person-month.

Dashboards and reports read only the aggregate tables (``usage_daily``, ``usage_hourly``,
``machine_day_stats``, ``person_usage_monthly``). They are computed by one pure function,
:func:`compute`, from a machine's raw facts (sessions, jobs, bookings, downtime, opening
hours); :func:`recompute` replaces one machine's local day with it, :func:`refresh`
(the scheduler's ``refresh_usage`` job) recomputes the days a flush hook marked dirty, and
``werkbank demo-data`` calls :func:`compute` in memory for years of generated history.

Days and hours are the site's local ones: a session is split at local midnight and at every
local hour, so a day has 23 or 25 hours when the clocks change (docs/dashboards-data.md).
"""

from __future__ import annotations

import bisect
import calendar as _calendar
import functools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

from sqlalchemy import delete, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from server.models import (
    Booking,
    BookingStatus,
    ClosedDay,
    DowntimeKind,
    Job,
    Machine,
    MachineDayStats,
    MachineDowntime,
    MachineSession,
    Person,
    PersonUsageMonthly,
    Site,
    UsageDaily,
    UsageDirty,
    UsageHourly,
    utcnow,
)
from server.services import hours_total, opening_hours

# A session open (or spanning) longer than this is taken as lost: it marks and counts at most
# this many days, so one forgotten session cannot make every refresh rescan a year.
MAX_SPAN = timedelta(days=31)
# Bookings are a few hours long; this bounds the index range a day's query reads.
MAX_BOOKING = timedelta(days=2)
LOCK_NAMESPACE = 0x55534147  # "USAG": PostgreSQL advisory locks, one per machine
FAILED = frozenset({"failed", "cancelled"})  # job statuses besides "completed" (protocol JobFinished)


# -- the facts the pure function reads ---------------------------------------------------------
class SessionFact(NamedTuple):
    person_id: int | None
    start: float  # UTC epoch seconds
    end: float | None  # None: still open (counts up to ``now``)
    run_s: float | None
    supervised: bool  # mode "supervise" or a trainer present
    energy_wh: float = 0.0  # metered so far (server.services.energy)
    energy_gap_s: float = 0.0  # time the meter could not count


class JobFact(NamedTuple):
    person_id: int | None
    start: float  # the job counts on the local day it started
    failed: bool
    filament_g: float


class BookingFact(NamedTuple):
    person_id: int
    start: float
    end: float
    no_show: bool  # cancelled bookings are not facts at all


class DowntimeFact(NamedTuple):
    offline: bool  # else maintenance / out of order
    start: float
    end: float | None


@dataclass(frozen=True)
class MachineUsageFacts:
    machine_id: int
    site_id: int
    machine_type_id: int
    timezone: str
    # (weekday Monday=0, opens, closes): the machine's own hours, else its site's; empty = always open
    hours: tuple[tuple[int, time, time], ...] = ()
    closed: frozenset[date] = frozenset()


@dataclass
class DailyAcc:
    sessions: int = 0
    unlocked_s: float = 0.0
    run_s: float = 0.0
    supervised_s: float = 0.0
    jobs: int = 0
    jobs_failed: int = 0
    filament_g: float = 0.0
    booked_s: float = 0.0
    booked_used_s: float = 0.0
    no_shows: int = 0
    energy_wh: float = 0.0
    energy_gap_s: float = 0.0


@dataclass
class PersonAcc:
    sessions: int = 0
    unlocked_s: float = 0.0
    run_s: float = 0.0
    supervised_s: float = 0.0
    jobs: int = 0


@dataclass
class Aggregates:
    """What :func:`compute` returns, as rows ready to insert (see :meth:`rows`)."""

    machine: MachineUsageFacts
    days: list[date]
    daily: dict[tuple[date, str], DailyAcc] = field(default_factory=dict)
    hourly: dict[tuple[date, int, str], float] = field(default_factory=dict)
    stats: dict[date, list[float]] = field(default_factory=dict)  # open, maintenance, offline
    person: dict[tuple[int, date], PersonAcc] = field(default_factory=dict)

    def daily_rows(self) -> list[dict[str, Any]]:
        m = self.machine
        return [
            {
                "machine_id": m.machine_id,
                "day": day,
                "cohort": cohort,
                "site_id": m.site_id,
                "machine_type_id": m.machine_type_id,
                **vars(acc),
            }
            for (day, cohort), acc in sorted(self.daily.items())
        ]

    def hourly_rows(self) -> list[dict[str, Any]]:
        m = self.machine
        return [
            {
                "machine_id": m.machine_id,
                "day": day,
                "hour": hour,
                "cohort": cohort,
                "site_id": m.site_id,
                "machine_type_id": m.machine_type_id,
                "unlocked_s": seconds,
            }
            for (day, hour, cohort), seconds in sorted(self.hourly.items())
            if seconds > 0
        ]

    def stats_rows(self) -> list[dict[str, Any]]:
        m = self.machine
        return [
            {
                "machine_id": m.machine_id,
                "day": day,
                "site_id": m.site_id,
                "machine_type_id": m.machine_type_id,
                "open_s": values[0],
                "maintenance_s": values[1],
                "offline_s": values[2],
            }
            for day, values in sorted(self.stats.items())
        ]

    def person_rows(self) -> list[dict[str, Any]]:
        m = self.machine
        return [
            {
                "person_id": person_id,
                "machine_id": m.machine_id,
                "month": month,
                "site_id": m.site_id,
                "machine_type_id": m.machine_type_id,
                **vars(acc),
            }
            for (person_id, month), acc in sorted(self.person.items())
        ]


class _Calendar:
    """Local hour boundaries of a range of days as UTC epochs, for splitting by bisection.

    Built from local wall times (fold 0): on the spring-forward day hour 2 has no length, on the
    fall-back day it lasts two hours, so a day's hours always add up to its real length.
    """

    def __init__(self, tz: ZoneInfo, days: Sequence[date]) -> None:
        self.bounds: list[float] = []
        self.labels: list[tuple[date, int]] = []
        self.day_bounds: list[float] = []
        for day in days:
            for hour in range(24):
                start = datetime.combine(day, time(hour), tzinfo=tz).timestamp()
                if hour == 0:
                    self.day_bounds.append(start)
                self.bounds.append(start)
                self.labels.append((day, hour))
        end = datetime.combine(days[-1] + timedelta(days=1), time(0), tzinfo=tz).timestamp()
        self.bounds.append(end)
        self.day_bounds.append(end)
        self.days = list(days)

    @property
    def start(self) -> float:
        return self.bounds[0]

    @property
    def end(self) -> float:
        return self.bounds[-1]

    def hours(self, start: float, end: float) -> Iterator[tuple[date, int, float]]:
        """(day, hour, seconds) of [start, end) inside the range."""
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return
        i = bisect.bisect_right(self.bounds, start) - 1
        while i < len(self.labels) and self.bounds[i] < end:
            piece = min(end, self.bounds[i + 1]) - max(start, self.bounds[i])
            if piece > 0:
                day, hour = self.labels[i]
                yield day, hour, piece
            i += 1

    def split_days(self, start: float, end: float) -> Iterator[tuple[date, float]]:
        """(day, seconds) of [start, end) inside the range."""
        start, end = max(start, self.start), min(end, self.end)
        if end <= start:
            return
        i = bisect.bisect_right(self.day_bounds, start) - 1
        while i < len(self.days) and self.day_bounds[i] < end:
            piece = min(end, self.day_bounds[i + 1]) - max(start, self.day_bounds[i])
            if piece > 0:
                yield self.days[i], piece
            i += 1

    def day_of(self, instant: float) -> date | None:
        if not self.start <= instant < self.end:
            return None
        return self.days[bisect.bisect_right(self.day_bounds, instant) - 1]


@functools.lru_cache(maxsize=16)
def _calendar_of(timezone: str, first: date, count: int) -> _Calendar:
    # Machines of one site share their calendar: demo-data builds it once per site, not per machine.
    return _Calendar(ZoneInfo(timezone), [first + timedelta(days=i) for i in range(count)])


def month_of(day: date) -> date:
    return day.replace(day=1)


def month_days(month: date) -> list[date]:
    last = _calendar.monthrange(month.year, month.month)[1]
    return [month + timedelta(days=i) for i in range(last)]


def day_window(day: date, timezone: str) -> tuple[datetime, datetime]:
    """A local day as [start, end) in UTC."""
    tz = ZoneInfo(timezone)
    start = datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz).astimezone(UTC)
    return start, end


def local_days(start: datetime, end: datetime, timezone: str) -> list[date]:
    """Every local day [start, end] touches (at most MAX_SPAN of them)."""
    tz = ZoneInfo(timezone)
    end = min(end, start + MAX_SPAN)
    first, last = start.astimezone(tz).date(), max(start, end).astimezone(tz).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def compute(
    machine: MachineUsageFacts,
    days: Sequence[date],
    sessions: Iterable[SessionFact],
    jobs: Iterable[JobFact],
    bookings: Iterable[BookingFact],
    downtime: Iterable[DowntimeFact],
    cohorts: dict[int, str],
    now: float,
) -> Aggregates:
    """One machine's aggregates for ``days`` (consecutive local days) from its raw facts.

    Facts may reach outside the days; only what falls inside counts. A session counts on the
    day it started, its unlocked time wherever it falls, its run time spread evenly over its
    unlocked time. Person rows are per local month: pass whole months to get whole rows.
    """
    tz = ZoneInfo(machine.timezone)
    cal = _calendar_of(machine.timezone, days[0], len(days))
    out = Aggregates(machine, list(days))
    daily = out.daily
    person = out.person

    def acc(day: date, cohort: str) -> DailyAcc:
        found = daily.get((day, cohort))
        if found is None:
            found = daily[(day, cohort)] = DailyAcc()
        return found

    def pacc(person_id: int, day: date) -> PersonAcc:
        key = (person_id, day.replace(day=1))
        found = person.get(key)
        if found is None:
            found = person[key] = PersonAcc()
        return found

    own: dict[int, list[tuple[float, float]]] = defaultdict(list)  # person -> unlocked intervals
    for s in sessions:
        end = now if s.end is None else s.end
        if end <= s.start:
            continue
        cohort = cohorts.get(s.person_id, "") if s.person_id is not None else ""
        if s.person_id is not None:
            own[s.person_id].append((s.start, end))
        start_day = cal.day_of(s.start)
        if start_day is not None:
            acc(start_day, cohort).sessions += 1
            if s.person_id is not None:
                pacc(s.person_id, start_day).sessions += 1
        if end <= cal.start or s.start >= cal.end:
            continue
        ratio = 0.0 if s.end is None or not s.run_s else min(1.0, s.run_s / (end - s.start))
        # Energy and its gaps spread evenly over the unlocked time, like run time: telemetry
        # keeps no per-day reading, and sessions across midnight are few.
        span = end - s.start
        for day, seconds in cal.split_days(s.start, end):
            a = acc(day, cohort)
            a.unlocked_s += seconds
            a.run_s += seconds * ratio
            a.energy_wh += s.energy_wh * seconds / span
            a.energy_gap_s += s.energy_gap_s * seconds / span
            if s.supervised:
                a.supervised_s += seconds
            if s.person_id is not None:
                p = pacc(s.person_id, day)
                p.unlocked_s += seconds
                p.run_s += seconds * ratio
                if s.supervised:
                    p.supervised_s += seconds
        hourly = out.hourly
        for day, hour, seconds in cal.hours(s.start, end):
            key = (day, hour, cohort)
            hourly[key] = hourly.get(key, 0.0) + seconds

    for j in jobs:
        job_day = cal.day_of(j.start)
        if job_day is None:
            continue
        a = acc(job_day, cohorts.get(j.person_id, "") if j.person_id is not None else "")
        a.jobs += 1
        a.jobs_failed += j.failed
        a.filament_g += j.filament_g
        if j.person_id is not None:
            pacc(j.person_id, job_day).jobs += 1

    for b in bookings:
        cohort = cohorts.get(b.person_id, "")
        start_day = cal.day_of(b.start)
        if b.no_show and start_day is not None:
            acc(start_day, cohort).no_shows += 1
        for day, seconds in cal.split_days(b.start, b.end):
            acc(day, cohort).booked_s += seconds
        for s_start, s_end in own.get(b.person_id, ()):
            lo, hi = max(s_start, b.start), min(s_end, b.end)
            if hi > lo:
                for day, seconds in cal.split_days(lo, hi):
                    acc(day, cohort).booked_used_s += seconds

    stats = out.stats
    by_weekday: dict[int, list[tuple[time, time]]] = defaultdict(list)
    for weekday, opens, closes in machine.hours:
        by_weekday[weekday].append((opens, closes))
    for i, day in enumerate(cal.days):
        if day in machine.closed:
            open_s = 0.0
        elif not machine.hours:
            open_s = cal.day_bounds[i + 1] - cal.day_bounds[i]
        else:
            open_s = sum(
                max(
                    0.0,
                    datetime.combine(day, closes, tzinfo=tz).timestamp()
                    - datetime.combine(day, opens, tzinfo=tz).timestamp(),
                )
                for opens, closes in by_weekday.get(day.weekday(), ())
            )
        stats[day] = [open_s, 0.0, 0.0]
    for d in downtime:
        for day, seconds in cal.split_days(d.start, now if d.end is None else d.end):
            stats[day][2 if d.offline else 1] += seconds
    return out


# -- reading the facts from the database -------------------------------------------------------
def _epoch(value: datetime) -> float:
    return value.timestamp()


def machine_facts(db: Session, machine_id: int, days: Sequence[date] = ()) -> MachineUsageFacts:
    machine = db.get(Machine, machine_id)
    if machine is None:
        raise LookupError(f"no machine {machine_id}")
    tz = db.scalar(select(Site.timezone).where(Site.id == machine.site_id)) or "UTC"
    hours = [(h.weekday, h.opens, h.closes) for h in opening_hours.machine_hours(db, machine)]
    closed: frozenset[date] = frozenset()
    if days:
        closed = frozenset(
            db.scalars(
                select(ClosedDay.day).where(
                    ClosedDay.site_id == machine.site_id,
                    ClosedDay.day >= min(days),
                    ClosedDay.day <= max(days),
                    or_(ClosedDay.machine_id.is_(None), ClosedDay.machine_id == machine_id),
                )
            )
        )
    return MachineUsageFacts(
        machine_id=machine.id,
        site_id=machine.site_id,
        machine_type_id=machine.machine_type_id,
        timezone=tz,
        hours=tuple((int(w), o, c) for w, o, c in hours),
        closed=closed,
    )


@dataclass
class RawFacts:
    sessions: list[SessionFact]
    jobs: list[JobFact]
    bookings: list[BookingFact]
    downtime: list[DowntimeFact]
    cohorts: dict[int, str]


def load_facts(db: Session, machine_id: int, start: datetime, end: datetime) -> RawFacts:
    """A machine's sessions, jobs, bookings and downtime touching [start, end), and the
    current cohorts of the people in them."""
    s = MachineSession
    rows = db.execute(
        select(
            s.id,
            s.person_id,
            s.trainer_id,
            s.mode,
            s.started_at,
            s.ended_at,
            s.run_s,
            s.energy_wh,
            s.energy_gap_s,
        ).where(
            s.machine_id == machine_id,
            s.started_at < end,
            s.started_at >= start - MAX_SPAN,
            or_(s.ended_at.is_(None), s.ended_at > start),
        )
    ).all()
    sessions: list[SessionFact] = []
    owner: dict[str, int | None] = {}
    for sid, person_id, trainer_id, mode, started, ended, run_s, energy_wh, energy_gap_s in rows:
        if started is None:
            continue
        owner[sid] = person_id
        sessions.append(
            SessionFact(
                person_id,
                _epoch(started),
                None if ended is None else _epoch(ended),
                run_s,
                mode == "supervise" or trainer_id is not None,
                energy_wh or 0.0,
                energy_gap_s or 0.0,
            )
        )
    jobs: list[JobFact] = []
    started_of = {row.id: row.started_at for row in rows}
    ids = list(owner)
    for chunk in range(0, len(ids), 500):
        for session_id, j_start, j_end, status, grams in db.execute(
            select(Job.session_id, Job.started_at, Job.finished_at, Job.status, Job.filament_g).where(
                Job.session_id.in_(ids[chunk : chunk + 500])
            )
        ):
            when = j_start or j_end or started_of[session_id]
            if when is None:
                continue
            jobs.append(JobFact(owner[session_id], _epoch(when), status in FAILED, grams or 0.0))
    b = Booking
    bookings = [
        BookingFact(
            person_id, _epoch(starts), _epoch(ends), bool(no_show) or status == BookingStatus.RELEASED
        )
        for person_id, starts, ends, status, no_show in db.execute(
            select(b.person_id, b.starts_at, b.ends_at, b.status, b.no_show).where(
                b.machine_id == machine_id,
                b.starts_at < end,
                b.starts_at >= start - MAX_BOOKING,
                b.ends_at > start,
                b.status != BookingStatus.CANCELLED,
            )
        )
    ]
    d = MachineDowntime
    downtime = [
        DowntimeFact(kind == DowntimeKind.OFFLINE, _epoch(started), None if ended is None else _epoch(ended))
        for kind, started, ended in db.execute(
            select(d.kind, d.started_at, d.ended_at).where(
                d.machine_id == machine_id, d.started_at < end, or_(d.ended_at.is_(None), d.ended_at > start)
            )
        )
    ]
    people = {f.person_id for f in sessions if f.person_id is not None} | {f.person_id for f in bookings}
    cohorts: dict[int, str] = {}
    people_list = list(people)
    for chunk in range(0, len(people_list), 500):
        for pid, cohort in db.execute(
            select(Person.id, Person.cohort).where(Person.id.in_(people_list[chunk : chunk + 500]))
        ):
            cohorts[pid] = cohort or ""
    return RawFacts(sessions, jobs, bookings, downtime, cohorts)


# -- writing -----------------------------------------------------------------------------------
def _write(db: Session, machine_id: int, days: Sequence[date], month: date | None, agg: Aggregates) -> None:
    """Replace the rows of ``days`` (and of ``month``'s people) with ``agg``'s."""
    day_set = set(days)
    for model in (UsageDaily, UsageHourly, MachineDayStats):
        db.execute(delete(model).where(model.machine_id == machine_id, model.day.in_(sorted(day_set))))
    if month is not None:
        db.execute(
            delete(PersonUsageMonthly).where(
                PersonUsageMonthly.machine_id == machine_id, PersonUsageMonthly.month == month
            )
        )
    inserts: list[tuple[Any, list[dict[str, Any]]]] = [
        (UsageDaily, [r for r in agg.daily_rows() if r["day"] in day_set]),
        (UsageHourly, [r for r in agg.hourly_rows() if r["day"] in day_set]),
        (MachineDayStats, [r for r in agg.stats_rows() if r["day"] in day_set]),
    ]
    if month is not None:
        inserts.append((PersonUsageMonthly, [r for r in agg.person_rows() if r["month"] == month]))
    for model, rows in inserts:
        if rows:
            db.execute(model.__table__.insert(), rows)


def recompute_month(db: Session, machine_id: int, month: date, days: Sequence[date], now: datetime) -> int:
    """Recompute ``days`` (all in ``month``) of one machine and the month's person rows."""
    all_days = month_days(month)
    facts = machine_facts(db, machine_id, all_days)
    start, _ = day_window(all_days[0], facts.timezone)
    _, end = day_window(all_days[-1], facts.timezone)
    raw = load_facts(db, machine_id, start, end)
    agg = compute(
        facts, all_days, raw.sessions, raw.jobs, raw.bookings, raw.downtime, raw.cohorts, now.timestamp()
    )
    _write(db, machine_id, days, month, agg)
    return len(days)


def recompute(db: Session, machine_id: int, day: date, now: datetime | None = None) -> None:
    """Replace one machine's local ``day`` (and its month's person rows) from the raw data.

    Idempotent: running it again with nothing changed writes the same rows.
    """
    recompute_month(db, machine_id, month_of(day), [day], now or utcnow())


# -- the dirty-day queue ----------------------------------------------------------------------
def upsert_dirty(conn: Any, pairs: Iterable[tuple[int, date]], at: datetime) -> None:
    rows = [{"machine_id": m, "day": d, "marked_at": at} for m, d in pairs]
    if not rows:
        return
    table: Any = UsageDirty.__table__
    dialect = conn.dialect.name
    if dialect == "postgresql":
        pg = postgresql.insert(table)
        stmt: Any = pg.on_conflict_do_update(
            index_elements=["machine_id", "day"], set_={"marked_at": pg.excluded.marked_at}
        )
    else:
        lite = sqlite.insert(table)
        stmt = lite.on_conflict_do_update(
            index_elements=["machine_id", "day"], set_={"marked_at": lite.excluded.marked_at}
        )
    # Sorted: two transactions marking overlapping days lock the rows in the same order.
    conn.execute(stmt, sorted(rows, key=lambda r: (r["machine_id"], r["day"])))


def mark_dirty(db: Session, machine_id: int, days: Iterable[date], at: datetime | None = None) -> None:
    upsert_dirty(db.connection(), {(machine_id, d) for d in days}, at or utcnow())


# -- the scheduler job ------------------------------------------------------------------------
def mark_current(db: Session, now: datetime) -> int:
    """Mark today dirty where it must be: machines with an open session (running hours show
    up every minute) and machines without a stats row for today yet (every day gets its
    opening hours, even a day nobody used the machine)."""
    machines = db.execute(select(Machine.id, Site.timezone).join(Site, Site.id == Machine.site_id)).all()
    today = {m: now.astimezone(ZoneInfo(tz)).date() for m, tz in machines}
    running = set(
        db.scalars(
            select(MachineSession.machine_id).where(
                MachineSession.machine_id.in_(sorted(today) or [-1]),  # (machine, started) index
                MachineSession.ended_at.is_(None),
                MachineSession.started_at.is_not(None),
                MachineSession.started_at >= now - MAX_SPAN,
            )
        )
    )
    have = set(
        db.execute(
            select(MachineDayStats.machine_id, MachineDayStats.day).where(
                MachineDayStats.machine_id.in_(sorted(today) or [-1]),  # the primary key's index
                MachineDayStats.day.in_(sorted(set(today.values())) or [date.min]),
            )
        ).all()
    )
    pairs = {(m, d) for m, d in today.items() if m in running or (m, d) not in have}
    upsert_dirty(db.connection(), pairs, now)
    return len(pairs)


def _claim(db: Session, machine_id: int) -> bool:
    """Only one refresh works on a machine at a time (PostgreSQL: a transaction-level advisory
    lock, skipped when held; SQLite writes are serialised by the database anyway)."""
    if db.get_bind().dialect.name != "postgresql":
        return True
    return bool(
        db.execute(
            text("SELECT pg_try_advisory_xact_lock(:ns, :m)"), {"ns": LOCK_NAMESPACE, "m": machine_id}
        ).scalar()
    )


def dirty_days(db: Session, machine_id: int) -> list[tuple[date, datetime]]:
    return [
        (d, at)
        for d, at in db.execute(
            select(UsageDirty.day, UsageDirty.marked_at).where(UsageDirty.machine_id == machine_id)
        )
    ]


def release(db: Session, machine_id: int, claimed: Sequence[tuple[date, datetime]]) -> None:
    """Delete the queue rows just recomputed, unless marked again meanwhile (newer marked_at):
    those stay for the next run."""
    for day, at in claimed:
        db.execute(
            delete(UsageDirty).where(
                UsageDirty.machine_id == machine_id, UsageDirty.day == day, UsageDirty.marked_at == at
            )
        )


def refresh_machine(db: Session, machine_id: int, now: datetime) -> int:
    """Recompute one machine's dirty days, in the caller's transaction. Returns the day count."""
    if not _claim(db, machine_id):
        return 0
    claimed = dirty_days(db, machine_id)
    by_month: dict[date, list[date]] = defaultdict(list)
    for day, _at in claimed:
        by_month[month_of(day)].append(day)
    for month, days in sorted(by_month.items()):
        recompute_month(db, machine_id, month, sorted(days), now)
    release(db, machine_id, claimed)
    return len(claimed)


def refresh(database: Any, now: datetime | None = None) -> int:
    """The ``refresh_usage`` job: mark today where needed, then recompute every dirty day,
    one machine per transaction. Safe to run twice at once. Returns the days recomputed."""
    now = now or utcnow()
    with database.session() as db:
        mark_current(db, now)
    with database.session() as db:
        machines = sorted(set(db.scalars(select(UsageDirty.machine_id))))
    done = 0
    for machine_id in machines:
        with database.session() as db:
            done += refresh_machine(db, machine_id, now)
    return done


def rebuild(
    db_factory: Any, since: date | None = None, now: datetime | None = None, progress: Any = None
) -> int:
    """Recompute every machine's days from ``since`` (default: its first session, booking or
    downtime) to today, month by month (one transaction each), and every machine's total
    machine hours (``hours_total.recompute``, the running totals' repair). Returns the day count."""
    now = now or utcnow()
    with db_factory.session() as db:
        hours_total.recompute(db)
        machines = db.execute(select(Machine.id, Site.timezone).join(Site, Site.id == Machine.site_id)).all()
        firsts: dict[int, date] = {}
        for machine_id, tz in machines:
            earliest = [
                db.scalar(
                    select(MachineSession.started_at)
                    .where(MachineSession.machine_id == machine_id)
                    .order_by(MachineSession.started_at)
                    .limit(1)
                ),
                db.scalar(
                    select(Booking.starts_at)
                    .where(Booking.machine_id == machine_id)
                    .order_by(Booking.starts_at)
                    .limit(1)
                ),
                db.scalar(
                    select(MachineDowntime.started_at)
                    .where(MachineDowntime.machine_id == machine_id)
                    .order_by(MachineDowntime.started_at)
                    .limit(1)
                ),
            ]
            found = [e.astimezone(ZoneInfo(tz)).date() for e in earliest if e is not None]
            firsts[machine_id] = since or (min(found) if found else now.astimezone(ZoneInfo(tz)).date())
    work = []
    for machine_id, tz in machines:
        today = now.astimezone(ZoneInfo(tz)).date()
        month = month_of(firsts[machine_id])
        while month <= today:
            days = [d for d in month_days(month) if firsts[machine_id] <= d <= today]
            work.append((machine_id, month, days))
            month = (month + timedelta(days=32)).replace(day=1)
    done = 0
    for machine_id, month, days in work:
        with db_factory.session() as db:
            done += recompute_month(db, machine_id, month, days, now)
            db.execute(
                delete(UsageDirty).where(
                    UsageDirty.machine_id == machine_id,
                    UsageDirty.day.in_(days),
                    UsageDirty.marked_at <= now,
                )
            )
        if progress is not None:
            progress(1)
    return done


__all__ = [
    "Aggregates",
    "BookingFact",
    "DowntimeFact",
    "JobFact",
    "MachineUsageFacts",
    "SessionFact",
    "compute",
    "mark_current",
    "rebuild",
    "recompute",
    "refresh",
]
