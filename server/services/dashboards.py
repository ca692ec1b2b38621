"""What the utilisation and learning dashboards show: read-only queries over the aggregates.

Every figure comes from the aggregate tables (``UsageDaily``, ``UsageHourly``,
``MachineDayStats``, ``PersonUsageMonthly``, filled by :mod:`server.services.usage`) and
small tables (sites, machines, people, qualifications); the raw sessions, jobs and bookings
are never read here. Sums are GROUP BYs in SQL over the ``(site_id, day)`` indexes, so a
year of one site costs a few thousand index rows, not millions of sessions.

Days are the site's local days (the aggregates are kept that way); a period is
``start``..``end``, both days included. docs/dashboards.md says how each figure is computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, case, func, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from server.models import (
    Competency,
    Device,
    Level,
    LocalName,
    Machine,
    MachineDayStats,
    MachineType,
    Person,
    PersonUsageMonthly,
    Qualification,
    QualificationAction,
    Site,
    UsageDaily,
    UsageHourly,
)
from server.services import qualifications

# The overview's rule for a machine's state, so the tiles and the overview always agree.
from server.services.live import LiveState, live_state
from server.services.qualifications import qualification_state

HOUR = 3600.0
# The levels the funnel follows (trainer level is staff, not a learning outcome).
FUNNEL: tuple[Level, ...] = (Level.BRIEFED, Level.SUPERVISED, Level.INDEPENDENT)
NO_COHORT = ""  # how the aggregates store "no participant group"


# -- utilisation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UsageFigures:
    """Hours and counts of one machine, one machine type or all of them, in one period."""

    sessions: int = 0
    unlocked_h: float = 0.0
    run_h: float = 0.0
    booked_h: float = 0.0
    booked_used_h: float = 0.0
    jobs: int = 0
    jobs_failed: int = 0
    filament_g: float = 0.0
    no_shows: int = 0
    open_h: float = 0.0
    maintenance_h: float = 0.0
    offline_h: float = 0.0
    # Metered energy of the sessions (server.services.energy), and the session time between
    # readings too far apart to count: energy is at least what is shown when that is above 0.
    energy_kwh: float = 0.0
    energy_gap_h: float = 0.0

    @property
    def utilisation(self) -> float | None:
        """Unlocked hours per opening hour (0.25 = a quarter of the open time), None when never open."""
        return self.unlocked_h / self.open_h if self.open_h > 0 else None

    @property
    def booked_used_share(self) -> float | None:
        """How much of the booked time the holders really used."""
        return self.booked_used_h / self.booked_h if self.booked_h > 0 else None

    def plus(self, other: UsageFigures) -> UsageFigures:
        return UsageFigures(
            **{name: getattr(self, name) + getattr(other, name) for name in UsageFigures.__dataclass_fields__}
        )


@dataclass(frozen=True)
class MachineUsage:
    machine_id: int
    slug: str
    name: str
    type_slug: str
    type_name: LocalName
    figures: UsageFigures


@dataclass(frozen=True)
class TypeUsage:
    type_id: int
    slug: str
    name: str
    name_de: str | None
    unlocked_h: float
    run_h: float
    machines: int


@dataclass(frozen=True)
class WeekUsage:
    monday: date  # the ISO week's Monday
    unlocked_h: float
    run_h: float

    @property
    def label(self) -> str:
        year, week, _day = self.monday.isocalendar()
        return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class Utilisation:
    start: date
    end: date
    machines: list[MachineUsage]
    totals: UsageFigures
    # heatmap[weekday][hour]: unlocked hours, Monday = 0, local hours 0..23.
    heatmap: list[list[float]]
    weeks: list[WeekUsage]
    types: list[TypeUsage]  # most used first

    @property
    def heat_max(self) -> float:
        return max((value for row in self.heatmap for value in row), default=0.0)


def _as_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _usage_filters(
    model: Any, site_id: int | None, machine_type_id: int | None, start: date, end: date
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = [model.day >= start, model.day <= end]
    if site_id is not None:
        where.append(model.site_id == site_id)
    if machine_type_id is not None:
        where.append(model.machine_type_id == machine_type_id)
    return where


def utilisation(
    db: Session,
    site_id: int | None,
    machine_type_id: int | None,
    cohort: str | None,
    start: date,
    end: date,
) -> Utilisation:
    """Per-machine figures, totals, the weekday-by-hour heatmap, weekly trend and top machine types.

    ``cohort`` narrows the use (sessions, hours, jobs, bookings) to one participant group
    (``""`` for people without one); opening and downtime hours are the machine's own and
    stay unfiltered, so a cohort's utilisation is its share of the machine's open time.
    """
    daily = _usage_filters(UsageDaily, site_id, machine_type_id, start, end)
    hourly = _usage_filters(UsageHourly, site_id, machine_type_id, start, end)
    if cohort is not None:
        daily.append(UsageDaily.cohort == cohort)
        hourly.append(UsageHourly.cohort == cohort)

    machine_query = (
        select(
            Machine.id, Machine.slug, Machine.name, MachineType.slug, MachineType.name, MachineType.name_de
        )
        .join(MachineType, MachineType.id == Machine.machine_type_id)
        .order_by(MachineType.name, Machine.name, Machine.id)
    )
    if site_id is not None:
        machine_query = machine_query.where(Machine.site_id == site_id)
    if machine_type_id is not None:
        machine_query = machine_query.where(Machine.machine_type_id == machine_type_id)
    machines = db.execute(machine_query).all()

    # Per machine and machine type (a machine's type at the time of its use, as the row keeps it):
    # summed over the types, the machines' figures; over the machines, the types' summary. One
    # pass over the period's rows instead of two (PostgreSQL, one site's year: the type summary
    # cost 6.9 ms of the dashboard's 31 ms of SQL as a query of its own).
    use: dict[int, dict[str, float]] = {}
    # type id -> machine id -> (unlocked s, run s): one row of the query per pair.
    by_type: dict[int, dict[int, tuple[float, float]]] = {}
    for row in db.execute(
        select(
            UsageDaily.machine_id,
            UsageDaily.machine_type_id,
            func.sum(UsageDaily.sessions).label("sessions"),
            func.sum(UsageDaily.unlocked_s).label("unlocked_s"),
            func.sum(UsageDaily.run_s).label("run_s"),
            func.sum(UsageDaily.booked_s).label("booked_s"),
            func.sum(UsageDaily.booked_used_s).label("booked_used_s"),
            func.sum(UsageDaily.jobs).label("jobs"),
            func.sum(UsageDaily.jobs_failed).label("jobs_failed"),
            func.sum(UsageDaily.filament_g).label("filament_g"),
            func.sum(UsageDaily.no_shows).label("no_shows"),
            func.sum(UsageDaily.energy_wh).label("energy_wh"),
            func.sum(UsageDaily.energy_gap_s).label("energy_gap_s"),
        )
        .where(*daily)
        .group_by(UsageDaily.machine_id, UsageDaily.machine_type_id)
    ).mappings():
        machine_id, type_id = row["machine_id"], row["machine_type_id"]
        sums = {k: float(v or 0) for k, v in row.items() if k not in ("machine_id", "machine_type_id")}
        machine_sums = use.setdefault(machine_id, dict.fromkeys(sums, 0.0))
        for key, value in sums.items():
            machine_sums[key] += value
        by_type.setdefault(type_id, {})[machine_id] = (sums["unlocked_s"], sums["run_s"])

    stats: dict[int, tuple[float, float, float]] = {}
    for machine_id, open_s, maintenance_s, offline_s in db.execute(
        select(
            MachineDayStats.machine_id,
            func.sum(MachineDayStats.open_s),
            func.sum(MachineDayStats.maintenance_s),
            func.sum(MachineDayStats.offline_s),
        )
        .where(*_usage_filters(MachineDayStats, site_id, machine_type_id, start, end))
        .group_by(MachineDayStats.machine_id)
    ):
        stats[machine_id] = (float(open_s or 0), float(maintenance_s or 0), float(offline_s or 0))

    rows: list[MachineUsage] = []
    totals = UsageFigures()
    for machine_id, slug, name, type_slug, type_name, type_name_de in machines:
        u = use.get(machine_id, {})
        open_s, maintenance_s, offline_s = stats.get(machine_id, (0.0, 0.0, 0.0))
        figures = UsageFigures(
            sessions=int(u.get("sessions", 0)),
            unlocked_h=u.get("unlocked_s", 0.0) / HOUR,
            run_h=u.get("run_s", 0.0) / HOUR,
            booked_h=u.get("booked_s", 0.0) / HOUR,
            booked_used_h=u.get("booked_used_s", 0.0) / HOUR,
            jobs=int(u.get("jobs", 0)),
            jobs_failed=int(u.get("jobs_failed", 0)),
            filament_g=u.get("filament_g", 0.0),
            no_shows=int(u.get("no_shows", 0)),
            open_h=open_s / HOUR,
            maintenance_h=maintenance_s / HOUR,
            offline_h=offline_s / HOUR,
            energy_kwh=u.get("energy_wh", 0.0) / 1000,
            energy_gap_h=u.get("energy_gap_s", 0.0) / HOUR,
        )
        rows.append(
            MachineUsage(machine_id, slug, name, type_slug, LocalName(type_name, type_name_de), figures)
        )
        totals = totals.plus(figures)

    heatmap = [[0.0] * 24 for _ in range(7)]
    # Summed per day and hour by the database, into weekdays here: a weekday computed in SQL for
    # each of a year's tens of thousands of hourly rows cost more than the sum (PostgreSQL,
    # one site's year: 49 ms against 30 ms), and a few thousand (day, hour) sums fold quickly.
    for day, hour, seconds in db.execute(
        select(UsageHourly.day, UsageHourly.hour, func.sum(UsageHourly.unlocked_s))
        .where(*hourly)
        .group_by(UsageHourly.day, UsageHourly.hour)
    ):
        if 0 <= int(hour) < 24:
            heatmap[_as_date(day).weekday()][int(hour)] += float(seconds or 0) / HOUR

    # The same for the weeks: summed per day, folded into ISO weeks (Monday first) here.
    by_week: dict[date, tuple[float, float]] = {}
    for day, unlocked, run in db.execute(
        select(UsageDaily.day, func.sum(UsageDaily.unlocked_s), func.sum(UsageDaily.run_s))
        .where(*daily)
        .group_by(UsageDaily.day)
    ):
        on = _as_date(day)
        monday = on - timedelta(days=on.weekday())
        week_unlocked, week_run = by_week.get(monday, (0.0, 0.0))
        by_week[monday] = (week_unlocked + float(unlocked or 0) / HOUR, week_run + float(run or 0) / HOUR)
    # Every week of the period, empty ones too: a gap in the line is a fact, not missing data.
    weeks: list[WeekUsage] = []
    week = start - timedelta(days=start.weekday())
    while week <= end:
        unlocked_h, run_h = by_week.get(week, (0.0, 0.0))
        weeks.append(WeekUsage(week, unlocked_h, run_h))
        week += timedelta(days=7)

    names: dict[int, tuple[str, str, str | None]] = {}
    if by_type:  # an empty period asks nothing more
        for type_id, slug, name, name_de in db.execute(
            select(MachineType.id, MachineType.slug, MachineType.name, MachineType.name_de).where(
                MachineType.id.in_(list(by_type))
            )
        ):
            names[type_id] = (slug, name, name_de)
    types = sorted(
        (
            TypeUsage(
                type_id,
                *names[type_id],
                sum(unlocked for unlocked, _run in per_machine.values()) / HOUR,
                sum(run for _unlocked, run in per_machine.values()) / HOUR,
                len(per_machine),
            )
            for type_id, per_machine in by_type.items()
        ),
        key=lambda t: (-t.unlocked_h, t.name),
    )
    return Utilisation(start, end, rows, totals, heatmap, weeks, types)


# -- live tiles -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveTile:
    machine_id: int
    slug: str
    name: str
    type_name: LocalName
    state: LiveState
    live_state: str | None  # what the agent last reported (locked, unlocked, running, ...)
    running: bool
    progress: float | None
    device_id: str | None
    device_online: bool
    device_last_seen: datetime | None
    agent_version: str | None


def live_tiles(db: Session, site_id: int | None, machine_type_id: int | None = None) -> list[LiveTile]:
    """Each machine's state and its device's status, from the machine and device rows only."""
    query = (
        select(Machine, Device, MachineType.name, MachineType.name_de)
        .join(MachineType, MachineType.id == Machine.machine_type_id)
        .outerjoin(Device, Device.machine_id == Machine.id)
        .order_by(Machine.name, Machine.id)
    )
    if site_id is not None:
        query = query.where(Machine.site_id == site_id)
    if machine_type_id is not None:
        query = query.where(Machine.machine_type_id == machine_type_id)
    out = []
    for machine, device, type_name, type_name_de in db.execute(query):
        state = live_state(machine, device)
        out.append(
            LiveTile(
                machine_id=machine.id,
                slug=machine.slug,
                name=machine.name,
                type_name=LocalName(type_name, type_name_de),
                state=state,
                live_state=machine.live_state,
                running=machine.live_running and state != LiveState.OFFLINE,
                progress=machine.live_progress,
                device_id=device.id if device else None,
                device_online=bool(device and device.online),
                device_last_seen=device.last_seen if device else None,
                agent_version=device.agent_version if device else None,
            )
        )
    return out


# -- learning -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortCount:
    cohort: str  # "" for people without a group
    participants: int


@dataclass(frozen=True)
class PersonLevels:
    person_id: int
    name: str
    cohort: str
    # competency id -> the level held at the end of the period (None: none, revoked or expired).
    levels: dict[int, Level | None]
    expired: frozenset[int] = frozenset()  # competency ids whose last level has expired


@dataclass(frozen=True)
class LevelCounts:
    """How many of a cohort's participants hold each level of one competency."""

    cohort: str
    competency_id: int
    counts: dict[Level, int]
    expired: int
    none: int


@dataclass(frozen=True)
class FunnelStep:
    level: Level
    people: int
    share: float | None  # of the period's participants


@dataclass(frozen=True)
class MonthGrants:
    month: date  # first day
    counts: dict[Level, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Expiring:
    person_id: int
    name: str
    cohort: str
    competency_id: int
    level: Level
    valid_until: date


@dataclass(frozen=True)
class CompetencyInfo:
    id: int
    slug: str
    name: str
    name_de: str | None


@dataclass(frozen=True)
class Learning:
    start: date
    end: date
    as_of: date  # the day levels are taken at: the period's end, or today if that is earlier
    participants: int
    cohorts: list[CohortCount]
    competencies: list[CompetencyInfo]
    level_counts: list[LevelCounts]
    people: list[PersonLevels]  # only when one cohort is chosen (a whole site is too long a table)
    funnel: list[FunnelStep]
    months: list[MonthGrants]
    expiring: list[Expiring]
    people_listed: bool = field(default=False)


def month_starts(start: date, end: date) -> list[date]:
    first = start.replace(day=1)
    out = []
    while first <= end:
        out.append(first)
        first = (first + timedelta(days=32)).replace(day=1)
    return out


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant a local day begins (created_at columns hold UTC)."""
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def _cohort_of(raw: str | None) -> str:
    return raw or NO_COHORT


def _cohort_filter(cohort: str) -> ColumnElement[bool]:
    if cohort == NO_COHORT:
        return or_(Person.cohort.is_(None), Person.cohort == NO_COHORT)
    return Person.cohort == cohort


def learning(
    db: Session,
    site_id: int | None,
    cohort: str | None,
    competency_id: int | None,
    start: date,
    end: date,
    *,
    today: date,
) -> Learning:
    """Participants per cohort and their levels, the funnel, grants per month, what expires soon.

    The period's participants are the site's participants who used a machine in it (per
    person and month), got a qualification entry in it, or were added in it. Levels are taken
    from each person's newest history entry per competency up to the end of the period (or
    today, if earlier), with :func:`server.services.qualifications.qualification_state` (as
    :func:`server.services.training.state_of` does): revoked means
    no level, an expiry date before that day means expired.
    """
    tz = ZoneInfo("UTC")
    if site_id is not None:
        site = db.get(Site, site_id)
        tz = ZoneInfo(site.timezone) if site is not None else tz
    as_of = min(end, today)
    start_at = _local_midnight(start, tz)
    end_at = _local_midnight(end + timedelta(days=1), tz)
    as_of_end = _local_midnight(as_of + timedelta(days=1), tz)

    base: list[ColumnElement[bool]] = [Person.is_participant.is_(True)]
    if site_id is not None:
        base.append(Person.site_id == site_id)
    if cohort is not None:
        base.append(_cohort_filter(cohort))
    used = select(PersonUsageMonthly.person_id).where(
        PersonUsageMonthly.month >= start.replace(day=1), PersonUsageMonthly.month <= end
    )
    if site_id is not None:
        used = used.where(PersonUsageMonthly.site_id == site_id)
    trained = select(Qualification.person_id).where(
        Qualification.created_at >= start_at, Qualification.created_at < end_at
    )
    active = and_(
        *base,
        or_(
            Person.id.in_(used),
            Person.id.in_(trained),
            and_(Person.created_at >= start_at, Person.created_at < end_at),
        ),
    )
    participants = select(Person.id).where(active)

    cohorts = [
        CohortCount(_cohort_of(name), int(count))
        for name, count in db.execute(
            select(Person.cohort, func.count(Person.id))
            .where(active)
            .group_by(Person.cohort)
            .order_by(Person.cohort)
        )
    ]
    merged: dict[str, int] = {}
    for c in cohorts:  # NULL and "" are both "no group"
        merged[c.cohort] = merged.get(c.cohort, 0) + c.participants
    cohorts = [CohortCount(name, count) for name, count in sorted(merged.items())]
    total = sum(c.participants for c in cohorts)

    competency_query = select(Competency).order_by(Competency.name)
    if competency_id is not None:
        competency_query = competency_query.where(Competency.id == competency_id)
    competencies = [CompetencyInfo(c.id, c.slug, c.name, c.name_de) for c in db.scalars(competency_query)]
    competency_ids = [c.id for c in competencies]

    # Each participant's newest entry per competency up to the end of the period.
    newest = qualifications.newest_entries(
        Qualification.person_id.in_(participants),
        Qualification.created_at < as_of_end,
        Qualification.competency_id.in_(competency_ids),
    )
    entries = db.execute(
        select(
            Qualification.person_id,
            Qualification.competency_id,
            Qualification.action,
            Qualification.level,
            Qualification.valid_until,
            Person.cohort,
        )
        .join(newest, newest.c.id == Qualification.id)
        .join(Person, Person.id == Qualification.person_id)
    ).all()
    held: dict[tuple[int, int], tuple[Level | None, bool]] = {}
    counts: dict[tuple[str, int], dict[Level | None, int]] = {}
    expired_counts: dict[tuple[str, int], int] = {}
    for person_id, comp_id, action, level, until, person_cohort in entries:
        state = qualification_state(Level(level), QualificationAction(action), until, as_of)
        level_held = state.level if state.usable else None
        held[(person_id, comp_id)] = (level_held, state.expired and not state.revoked)
        key = (_cohort_of(person_cohort), comp_id)
        bucket = counts.setdefault(key, {})
        if level_held is not None:
            bucket[level_held] = bucket.get(level_held, 0) + 1
        elif state.expired and not state.revoked:
            expired_counts[key] = expired_counts.get(key, 0) + 1
    level_counts = []
    for c in cohorts:
        for comp in competencies:
            bucket = counts.get((c.cohort, comp.id), {})
            by_level = {lv: bucket.get(lv, 0) for lv in Level}
            expired = expired_counts.get((c.cohort, comp.id), 0)
            none = c.participants - sum(by_level.values()) - expired
            level_counts.append(LevelCounts(c.cohort, comp.id, by_level, expired, none))

    people: list[PersonLevels] = []
    if cohort is not None:
        for person_id, name, person_cohort in db.execute(
            select(Person.id, Person.name, Person.cohort).where(active).order_by(Person.name, Person.id)
        ):
            levels = {cid: held.get((person_id, cid), (None, False))[0] for cid in competency_ids}
            expired_ids = frozenset(
                cid for cid in competency_ids if held.get((person_id, cid), (None, False))[1]
            )
            people.append(PersonLevels(person_id, name, _cohort_of(person_cohort), levels, expired_ids))

    # Funnel: the highest level each participant was ever granted (by the period's end), counted
    # as having reached every level up to it. A later revocation does not undo having reached it.
    rank = case(
        *((Qualification.level == lv, literal(lv.rank)) for lv in Level),
        else_=literal(-1),
    )
    best = (
        select(Qualification.person_id, func.max(rank).label("rank"))
        .where(
            Qualification.person_id.in_(participants),
            Qualification.action == QualificationAction.GRANTED,
            Qualification.created_at < end_at,
            Qualification.competency_id.in_(competency_ids),
        )
        .group_by(Qualification.person_id)
        .subquery()
    )
    reached_by_rank = {
        int(r): int(n) for r, n in db.execute(select(best.c.rank, func.count()).group_by(best.c.rank))
    }
    funnel = []
    for lv in FUNNEL:
        people_count = sum(n for r, n in reached_by_rank.items() if r >= lv.rank)
        funnel.append(FunnelStep(lv, people_count, people_count / total if total else None))

    # Grants per local month: month boundaries become UTC instants here, one CASE in SQL.
    months = month_starts(start, end)
    bounds = [_local_midnight(m, tz) for m in months[1:]]
    month_index: ColumnElement[Any] = literal(0)
    if bounds:
        month_index = case(
            *((Qualification.created_at < bound, literal(i)) for i, bound in enumerate(bounds)),
            else_=literal(len(months) - 1),
        )
    grants = (
        select(month_index.label("month"), Qualification.level.label("level"))
        .where(
            Qualification.action == QualificationAction.GRANTED,
            Qualification.created_at >= start_at,
            Qualification.created_at < end_at,
            Qualification.competency_id.in_(competency_ids),
            Qualification.person_id.in_(select(Person.id).where(*base)),
        )
        .subquery()
    )
    per_month: dict[int, dict[Level, int]] = {}
    for index, level, count in db.execute(
        select(grants.c.month, grants.c.level, func.count()).group_by(grants.c.month, grants.c.level)
    ):
        per_month.setdefault(int(index), {})[Level(level)] = int(count)
    month_grants = [
        MonthGrants(m, {lv: per_month.get(i, {}).get(lv, 0) for lv in Level}) for i, m in enumerate(months)
    ]

    expiring = _expiring(db, base, competency_ids, today)
    return Learning(
        start=start,
        end=end,
        as_of=as_of,
        participants=total,
        cohorts=cohorts,
        competencies=competencies,
        level_counts=level_counts,
        people=people,
        funnel=funnel,
        months=month_grants,
        expiring=expiring,
        people_listed=cohort is not None,
    )


def _expiring(
    db: Session, base: Sequence[ColumnElement[bool]], competency_ids: list[int], today: date
) -> list[Expiring]:
    """Valid qualifications (newest entry a grant or renewal) that expire soon
    (:func:`server.services.qualifications.expiring_window`)."""
    # Candidates first (few: valid until within the window), then "no newer entry" through the
    # (person, competency, id) index, instead of the newest entry of everyone at the site.
    rows = db.execute(
        select(
            Person.id,
            Person.name,
            Person.cohort,
            Qualification.competency_id,
            Qualification.level,
            Qualification.valid_until,
        )
        .join(Person, Person.id == Qualification.person_id)
        .where(
            *base,
            Qualification.competency_id.in_(competency_ids),
            Qualification.action.in_((QualificationAction.GRANTED, QualificationAction.RENEWED)),
            Qualification.valid_until.is_not(None),
            Qualification.valid_until.between(*qualifications.expiring_window(today)),
            qualifications.no_newer_entry(),
        )
        .order_by(Qualification.valid_until, Person.name)
    ).all()
    return [
        Expiring(pid, name, _cohort_of(c), comp_id, Level(level), until)
        for pid, name, c, comp_id, level, until in rows
        if until is not None
    ]


def cohorts_of_site(db: Session, site_id: int | None) -> list[str]:
    """The participant groups people of the site belong to (for the filter), by name."""
    query = select(Person.cohort).where(Person.cohort.is_not(None), Person.cohort != NO_COHORT).distinct()
    if site_id is not None:
        query = query.where(Person.site_id == site_id)
    return sorted(str(c) for c in db.scalars(query))
