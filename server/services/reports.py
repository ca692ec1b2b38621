"""The funder report: participants (new, active, finished), their machine hours, the
qualifications granted and the hours by participant group, for a site, cohort or programme
and a period of whole local months.

Reads only the aggregates (``PersonUsageMonthly``) and small tables (people, sites, machine
types, competencies, qualifications, training-step records), with GROUP BY in SQL and a
fixed number of queries whatever the size of the report. The definitions of every figure
are in docs/reports.md; the views (server/adapters/web/reports.py) render and export what this
module returns.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, and_, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from server.models import (
    Competency,
    Level,
    Machine,
    MachineType,
    Person,
    PersonUsageMonthly,
    Qualification,
    QualificationAction,
    Site,
    StepRecord,
    UsageDaily,
    in_language,
)
from server.services import lab_keys
from server.services.outcomes import ProgrammeOutcomes, outcomes
from server.services.privacy import label_of

MAX_MONTHS = 60  # five years: the longest period a report covers
# What counts as "granted in the period": a new grant or a renewal (not expiry or revocation).
GRANT_ACTIONS = (QualificationAction.GRANTED, QualificationAction.RENEWED)


class ReportError(ValueError):
    """A report the rules refuse (an empty or too long period), with a message for a person."""


def month_start(day: date) -> date:
    return day.replace(day=1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def months_between(start: date, end: date) -> int:
    """How many months ``start``..``end`` covers, both included."""
    return (end.year - start.year) * 12 + end.month - start.month + 1


@dataclass
class Usage:
    """Sums of the monthly aggregates: sessions and seconds."""

    sessions: int = 0
    unlocked_s: float = 0.0
    run_s: float = 0.0
    supervised_s: float = 0.0
    jobs: int = 0

    def add(self, other: Usage) -> None:
        self.sessions += other.sessions
        self.unlocked_s += other.unlocked_s
        self.run_s += other.run_s
        self.supervised_s += other.supervised_s
        self.jobs += other.jobs


@dataclass(frozen=True)
class GrantedQualification:
    """One qualification granted (or renewed) in the period."""

    person_id: int
    person: str  # name or pseudonym
    cohort: str
    programme: str
    competency: str
    level: Level
    action: QualificationAction
    day: date  # the site's local day
    valid_until: date | None
    trainer: str  # name or pseudonym; "" when no trainer is recorded


@dataclass
class ParticipantRow:
    person_id: int
    label: str  # name or pseudonym
    cohort: str
    programme: str
    is_new: bool
    is_active: bool
    is_finished: bool
    usage: Usage
    hours_by_type: dict[int, float]  # machine type id -> unlocked seconds
    qualifications: list[GrantedQualification] = field(default_factory=list)
    pseudonym: str = ""  # the pseudonym, whatever ``label`` is (the special categories' export)


@dataclass
class GroupRow:
    """Machine hours of one participant group (cohort and programme) per machine type."""

    cohort: str
    programme: str
    participants: int  # participants of the group with machine use in the period
    unlocked_by_type: dict[int, float]
    usage: Usage


@dataclass(frozen=True)
class MachineRow:
    """One machine's use and metered energy in the period (all its use: participants or not)."""

    machine_id: int
    name: str
    type_name: str
    sessions: int
    unlocked_s: float
    energy_wh: float
    energy_gap_s: float  # session time the meter could not count: the energy is at least energy_wh


@dataclass(frozen=True)
class Totals:
    participants: int
    new: int
    active: int
    finished: int
    usage: Usage
    unlocked_by_type: dict[int, float]
    qualifications: int


@dataclass(frozen=True)
class ReportSite:
    id: int
    slug: str
    name: str
    timezone: str


@dataclass
class FunderReport:
    site: ReportSite | None  # None: every site
    cohort: str | None
    programme: str | None
    start_month: date  # first day of the first month
    end_month: date  # first day of the last month (included)
    pseudonyms: bool
    made_at: datetime
    machine_types: list[tuple[int, str]]  # the types with hours in the period, by name
    participants: list[ParticipantRow]
    groups: list[GroupRow]
    qualifications: list[GrantedQualification]
    totals: Totals
    # Exits by programme in the period, with integrations against the programmes' yearly targets.
    outcomes: list[ProgrammeOutcomes] = field(default_factory=list)
    # Machines with use or energy in the period (docs/reports.md, "Machines and energy").
    machines: list[MachineRow] = field(default_factory=list)

    @property
    def energy_wh(self) -> float:
        return sum(m.energy_wh for m in self.machines)

    @property
    def energy_gap_s(self) -> float:
        return sum(m.energy_gap_s for m in self.machines)

    @property
    def months(self) -> int:
        return months_between(self.start_month, self.end_month)


def _local_bounds(
    sites: list[ReportSite], start: date, end_excl: date
) -> dict[int, tuple[datetime, datetime]]:
    """Each site's period as UTC instants: local midnight of the first day to that of the day after."""
    out = {}
    for s in sites:
        tz = ZoneInfo(s.timezone)
        out[s.id] = (
            datetime.combine(start, datetime.min.time(), tzinfo=tz).astimezone(UTC),
            datetime.combine(end_excl, datetime.min.time(), tzinfo=tz).astimezone(UTC),
        )
    return out


def _in_period(
    column: Any,
    site_column: Any,
    bounds: dict[int, tuple[datetime, datetime]],
) -> ColumnElement[bool]:
    """``column`` lies in its site's local period (one OR branch per site: sites are few)."""
    branches = [
        and_(site_column == site_id, column >= lo, column < hi) for site_id, (lo, hi) in bounds.items()
    ]
    return or_(*branches) if branches else false()


def _used(usage: Any, condition: ColumnElement[bool]) -> Any:
    """Whether the person of the outer query has a month of machine use matching ``condition``."""
    return (
        select(usage.person_id)
        .where(usage.person_id == Person.id, condition, or_(usage.sessions > 0, usage.unlocked_s > 0))
        .exists()
    )


def funder_report(
    db: Session,
    site_id: int | None,
    cohort: str | None,
    programme: str | None,
    start_month: date,
    end_month: date,
    pseudonyms: bool,
    lang: str,
    *,
    now: datetime | None = None,
) -> FunderReport:
    """The report for participants of ``site_id`` (every site when None), optionally one
    cohort and/or programme, over the whole local months ``start_month``..``end_month``."""
    start, end = month_start(start_month), month_start(end_month)
    if start > end:
        raise ReportError("The period ends before it starts.")
    if months_between(start, end) > MAX_MONTHS:
        raise ReportError(f"A report covers at most {MAX_MONTHS} months.")
    end_excl = add_months(end, 1)

    site_rows = db.scalars(
        select(Site).where(Site.id == site_id) if site_id is not None else select(Site)
    ).all()
    sites = [ReportSite(s.id, s.slug, s.display_name(lang), s.timezone) for s in site_rows]
    if site_id is not None and not sites:
        raise ReportError("There is no such site.")
    tz_of = {s.id: ZoneInfo(s.timezone) for s in sites}
    bounds = _local_bounds(sites, start, end_excl)

    # The population: participants of the site, cohort and programme.
    who: list[ColumnElement[bool]] = [Person.is_participant.is_(True)]
    if site_id is not None:
        who.append(Person.site_id == site_id)
    if cohort is not None:
        who.append(Person.cohort == cohort)
    if programme is not None:
        who.append(Person.programme == programme)

    def scoped(query: Any) -> Any:
        return query.join(Person, Person.id == PersonUsageMonthly.person_id).where(*who)

    # 1. Machine use in the period, per person and machine type.
    use_query = scoped(
        select(
            PersonUsageMonthly.person_id,
            PersonUsageMonthly.machine_type_id,
            func.sum(PersonUsageMonthly.sessions),
            func.sum(PersonUsageMonthly.unlocked_s),
            func.sum(PersonUsageMonthly.run_s),
            func.sum(PersonUsageMonthly.supervised_s),
            func.sum(PersonUsageMonthly.jobs),
        )
    ).where(PersonUsageMonthly.month >= start, PersonUsageMonthly.month <= end)
    if site_id is not None:
        use_query = use_query.where(PersonUsageMonthly.site_id == site_id)
    use_query = use_query.group_by(PersonUsageMonthly.person_id, PersonUsageMonthly.machine_type_id)
    usage: dict[int, Usage] = defaultdict(Usage)
    by_type: dict[int, dict[int, float]] = defaultdict(dict)
    for person_id, type_id, sessions, unlocked, run, supervised, jobs in db.execute(use_query):
        row = Usage(
            int(sessions or 0), float(unlocked or 0), float(run or 0), float(supervised or 0), int(jobs or 0)
        )
        usage[person_id].add(row)
        by_type[person_id][type_id] = by_type[person_id].get(type_id, 0.0) + row.unlocked_s
    used = {pid for pid, u in usage.items() if u.sessions > 0 or u.unlocked_s > 0}

    # 3. Qualifications granted or renewed in the period (with competency and trainer).
    trainer = aliased(Person)
    grants = db.execute(
        select(
            Qualification.person_id,
            Qualification.level,
            Qualification.action,
            Qualification.valid_until,
            Qualification.created_at,
            Qualification.granted_by_id,
            Competency.name,
            Competency.name_de,
            trainer.name,
            Person.site_id,
            trainer.erased_at,
        )
        .join(Person, Person.id == Qualification.person_id)
        .join(Competency, Competency.id == Qualification.competency_id)
        .outerjoin(trainer, trainer.id == Qualification.granted_by_id)
        .where(*who, Qualification.action.in_(GRANT_ACTIONS))
        .where(_in_period(Qualification.created_at, Person.site_id, bounds))
        .order_by(Qualification.created_at, Qualification.id)
    ).all()

    # 4. Who recorded a training step in the period.
    stepped = set(
        db.scalars(
            select(StepRecord.person_id)
            .join(Person, Person.id == StepRecord.person_id)
            .where(*who, _in_period(StepRecord.recorded_at, Person.site_id, bounds))
            .distinct()
        )
    )

    # 2. The people of the population, and whether they used a machine (anywhere) before or
    # after the period: one index probe each, never their whole history. "New" and
    # "finished" look at these (see docs/reports.md).
    earlier, later = aliased(PersonUsageMonthly), aliased(PersonUsageMonthly)
    people = db.execute(
        select(
            Person.id,
            Person.name,
            Person.cohort,
            Person.programme,
            Person.site_id,
            Person.active,
            Person.created_at,
            Person.erased_at,
            _used(earlier, earlier.month < start),
            _used(later, later.month > end),
        ).where(*who)
    ).all()

    key = lab_keys.pseudonym_key(db)

    def label(person_id: int, name: str | None, erased: bool) -> str:
        if pseudonyms or not name:
            return label_of(person_id, name, erased, key)
        return name

    def local_day(site: int, when: datetime) -> date:
        tz = tz_of.get(site)
        return when.astimezone(tz).date() if tz else when.astimezone(UTC).date()

    info = {p.id: p for p in people}
    qualifications: list[GrantedQualification] = []
    for grant in grants:
        pid, level, action, valid_until, created_at, trainer_id, comp, comp_de, trainer_name, site, gone = (
            grant
        )
        p = info[pid]
        trainer_label = "" if trainer_id is None else label(trainer_id, trainer_name, gone is not None)
        qualifications.append(
            GrantedQualification(
                person_id=pid,
                person=label(pid, p.name, p.erased_at is not None),
                cohort=p.cohort or "",
                programme=p.programme or "",
                competency=in_language(comp, comp_de, lang),
                level=Level(level),
                action=QualificationAction(action),
                day=local_day(site, created_at),
                valid_until=valid_until,
                trainer=trainer_label,
            )
        )
    granted_to: dict[int, list[GrantedQualification]] = defaultdict(list)
    for q in qualifications:
        granted_to[q.person_id].append(q)

    rows: list[ParticipantRow] = []
    for p in people:
        created = month_start(local_day(p.site_id, p.created_at))
        used_before, used_after = p[8], p[9]
        # The participant began with their record or their first machine use, whichever came
        # first: new when that lies in the period.
        if used_before:
            is_new = False
        elif p.id in used:  # the first use is in the period: new unless the record is older
            is_new = created >= start
        else:
            is_new = start <= created <= end
        is_active = p.id in used or p.id in stepped or p.id in granted_to
        erased_in_period = (
            p.erased_at is not None and start <= month_start(local_day(p.site_id, p.erased_at)) <= end
        )
        # Ended: deactivated or erased, and their last machine use (or the erasure) in the period.
        is_finished = not p.active and (erased_in_period or (p.id in used and not used_after))
        if not (is_new or is_active or is_finished):
            continue
        rows.append(
            ParticipantRow(
                person_id=p.id,
                label=label(p.id, p.name, p.erased_at is not None),
                pseudonym=label_of(p.id, p.name, p.erased_at is not None, key),
                cohort=p.cohort or "",
                programme=p.programme or "",
                is_new=is_new,
                is_active=is_active,
                is_finished=is_finished,
                usage=usage.get(p.id, Usage()),
                hours_by_type=dict(by_type.get(p.id, {})),
                qualifications=granted_to.get(p.id, []),
            )
        )
    rows.sort(key=lambda r: (r.cohort.casefold(), r.programme.casefold(), r.label.casefold(), r.person_id))

    # Machine hours by participant group (cohort and programme) and machine type.
    groups: dict[tuple[str, str], GroupRow] = {}
    for r in rows:
        if r.person_id not in used:
            continue
        g = groups.setdefault((r.cohort, r.programme), GroupRow(r.cohort, r.programme, 0, {}, Usage()))
        g.participants += 1
        g.usage.add(r.usage)
        for type_id, seconds in r.hours_by_type.items():
            g.unlocked_by_type[type_id] = g.unlocked_by_type.get(type_id, 0.0) + seconds
    group_rows = sorted(groups.values(), key=lambda g: (g.cohort.casefold(), g.programme.casefold()))

    total_usage = Usage()
    for r in rows:
        total_usage.add(r.usage)
    total_by_type: dict[int, float] = defaultdict(float)
    for r in rows:
        for type_id, seconds in r.hours_by_type.items():
            total_by_type[type_id] += seconds
    type_ids = [t for t, seconds in total_by_type.items() if seconds > 0]
    types = (
        db.execute(
            select(MachineType.id, MachineType.name, MachineType.name_de).where(MachineType.id.in_(type_ids))
        ).all()
        if type_ids
        else []
    )
    machine_types = sorted(
        ((t.id, in_language(t.name, t.name_de, lang)) for t in types), key=lambda t: t[1].casefold()
    )

    return FunderReport(
        site=sites[0] if site_id is not None else None,
        cohort=cohort,
        programme=programme,
        start_month=start,
        end_month=end,
        pseudonyms=pseudonyms,
        made_at=now or datetime.now(UTC),
        machine_types=machine_types,
        participants=rows,
        groups=group_rows,
        qualifications=qualifications,
        totals=Totals(
            participants=len(rows),
            new=sum(r.is_new for r in rows),
            active=sum(r.is_active for r in rows),
            finished=sum(r.is_finished for r in rows),
            usage=total_usage,
            unlocked_by_type=dict(total_by_type),
            qualifications=len(qualifications),
        ),
        outcomes=outcomes(
            db,
            start,
            add_months(end, 1).replace(day=1) - timedelta(days=1),
            site_id=site_id,
            programme=programme,
            cohort=cohort,
            today=(now or datetime.now(UTC)).date(),
        ),
        machines=machine_rows(db, site_id, cohort, start, end_excl, lang),
    )


def machine_rows(
    db: Session, site_id: int | None, cohort: str | None, start: date, end_excl: date, lang: str
) -> list[MachineRow]:
    """Per machine: sessions, machine hours and energy from the daily aggregates of the local
    days in [start, end_excl). The cohort filter applies (the aggregates keep the cohort);
    the programme filter cannot (they do not keep it): docs/reports.md says so."""
    u = UsageDaily
    query = (
        select(
            Machine.id,
            Machine.name,
            MachineType.name,
            MachineType.name_de,
            func.sum(u.sessions),
            func.sum(u.unlocked_s),
            func.sum(u.energy_wh),
            func.sum(u.energy_gap_s),
        )
        .join(Machine, Machine.id == u.machine_id)
        .join(MachineType, MachineType.id == Machine.machine_type_id)
        .where(u.day >= start, u.day < end_excl)
        .group_by(Machine.id, Machine.name, MachineType.name, MachineType.name_de)
    )
    if site_id is not None:
        query = query.where(u.site_id == site_id)
    if cohort is not None:
        query = query.where(u.cohort == cohort)
    rows = [
        MachineRow(
            machine_id,
            name,
            in_language(type_name, type_name_de, lang),
            int(sessions or 0),
            float(unlocked or 0),
            float(energy_wh or 0),
            float(gap or 0),
        )
        for machine_id, name, type_name, type_name_de, sessions, unlocked, energy_wh, gap in db.execute(query)
    ]
    rows = [r for r in rows if r.sessions or r.unlocked_s or r.energy_wh]
    rows.sort(key=lambda r: (r.type_name.casefold(), r.name.casefold(), r.machine_id))
    return rows


def filter_choices(db: Session, site_id: int | None = None) -> tuple[list[str], list[str]]:
    """The cohorts and programmes participants have (of one site or all): the form's selects."""
    where: list[ColumnElement[bool]] = [Person.is_participant.is_(True)]
    if site_id is not None:
        where.append(Person.site_id == site_id)
    cohorts = db.scalars(select(Person.cohort).where(*where, Person.cohort.is_not(None)).distinct()).all()
    programmes = db.scalars(
        select(Person.programme).where(*where, Person.programme.is_not(None)).distinct()
    ).all()
    return (
        sorted((c for c in cohorts if c), key=str.casefold),
        sorted((p for p in programmes if p), key=str.casefold),
    )
