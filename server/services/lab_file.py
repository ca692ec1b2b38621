"""``werkbank load FILE``: bootstrap a lab from one YAML file (see docs/load-format.md).

The whole file is validated against typed structures first, then applied in one
transaction: a bad field or a dangling reference is refused with its location and
nothing is changed. Loading is idempotent: records are matched by slug, e-mail,
badge UID or device id and updated in place, so the same file can be loaded again
(qualification history is appended only when an entry is not there yet).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated, Literal, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml
from msgspec import Meta, Struct
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import (
    Badge,
    BadgeStatus,
    BookingPolicy,
    CardSecurity,
    ClosedDay,
    CohortQuota,
    Competency,
    Device,
    Level,
    Machine,
    MachineStatus,
    MachineType,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    Site,
    TrainingStep,
)
from server.services import audit, competencies, opening_hours
from werkbank_protocol.messages import BADGE_PATTERN
from werkbank_protocol.topics import DEVICE_ID_RE

Slug = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9-]{1,39}$")]
DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_RE.pattern)]
BadgeUid = Annotated[str, Meta(pattern=BADGE_PATTERN)]
HHMM = Annotated[str, Meta(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LevelName = Literal["briefed", "supervised", "independent", "trainer"]


class LoadError(ValueError):
    """The file cannot be loaded; the message says where and why."""


class _Strict(Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class HoursSpec(_Strict, kw_only=True):
    days: list[Weekday]
    opens: HHMM
    closes: HHMM


class BookingSpec(_Strict, kw_only=True):
    """A site's booking rules (``BookingPolicy``); a key left out takes its default."""

    min_slot_min: Annotated[int, Meta(ge=5, le=24 * 60)] = 30
    max_slot_min: Annotated[int, Meta(ge=5, le=24 * 60)] = 240
    slot_step_min: Annotated[int, Meta(ge=0, le=24 * 60)] = 30
    min_lead_min: Annotated[int, Meta(ge=0, le=30 * 24 * 60)] = 0
    max_ahead_days: Annotated[int, Meta(ge=1, le=366)] = 14
    cancel_deadline_min: Annotated[int, Meta(ge=0, le=30 * 24 * 60)] = 60
    weekly_quota_h: Annotated[float, Meta(ge=0, le=168)] = 8.0
    no_show_after_min: Annotated[int, Meta(ge=1, le=24 * 60)] = 15
    no_show_limit: Annotated[int, Meta(ge=0, le=100)] = 3
    no_show_window_days: Annotated[int, Meta(ge=1, le=366)] = 30
    no_show_block_days: Annotated[int, Meta(ge=0, le=366)] = 14
    reminder_before_min: Annotated[int, Meta(ge=0, le=7 * 24 * 60)] = 60


class CohortQuotaSpec(_Strict, kw_only=True):
    cohort: Annotated[str, Meta(min_length=1, max_length=100)]
    weekly_hours: Annotated[float, Meta(ge=0, le=168)]


class ClosedDaySpec(_Strict, kw_only=True):
    day: date
    reason: Annotated[str, Meta(max_length=200)] | None = None


class SiteSpec(_Strict, kw_only=True):
    slug: Slug
    name: str
    name_de: str | None = None
    timezone: str = "Europe/Berlin"
    card_security: Literal["uid", "secure", "secure_required"] = "uid"
    opening_hours: list[HoursSpec] = []
    booking: BookingSpec | None = None
    cohort_quotas: list[CohortQuotaSpec] | None = None
    closed_days: list[ClosedDaySpec] = []


class StepSpec(_Strict, kw_only=True):
    kind: Literal["briefing", "supervised_hours", "signoff"]
    name: str
    name_de: str | None = None
    leads_to: LevelName
    hours: Annotated[float, Meta(ge=0)] | None = None


class CompetencySpec(_Strict, kw_only=True):
    slug: Slug
    name: str
    name_de: str | None = None
    validity_months: Annotated[int, Meta(ge=1)] | None = None
    prerequisite: Slug | None = None
    steps: list[StepSpec] = []


class RequirementSpec(_Strict, kw_only=True):
    competency: Slug
    level: LevelName = "independent"


class MachineTypeSpec(_Strict, kw_only=True):
    slug: Slug
    name: str
    name_de: str | None = None
    job_kind: Literal["print", "cut", "other"] = "other"
    requires: list[RequirementSpec | Slug] = []


class BadgeSpec(_Strict, kw_only=True):
    uid: BadgeUid
    status: Literal["active", "lost", "blocked"] = "active"


class QualificationSpec(_Strict, kw_only=True):
    competency: Slug
    level: LevelName = "independent"
    granted: date
    valid_until: date | None = None
    by: str | None = None  # the granting trainer's e-mail
    reason: str | None = None
    action: Literal["granted", "renewed", "revoked", "expired"] = "granted"


class PersonSpec(_Strict, kw_only=True):
    name: str
    site: Slug
    email: str | None = None
    password: str | None = None
    roles: list[Literal["participant", "trainer", "admin"]] = msgspec.field(
        default_factory=lambda: ["participant"]
    )
    language: Literal["de", "en"] = "de"
    cohort: str | None = None
    programme: str | None = None
    active: bool = True
    badges: list[BadgeUid | BadgeSpec] = []
    qualifications: list[QualificationSpec] = []


class DeviceSpec(_Strict, kw_only=True):
    id: DeviceId
    password: str | None = None
    enrolment_station: bool = False


class MachineSpec(_Strict, kw_only=True):
    slug: Slug
    name: str
    site: Slug
    type: Slug
    status: Literal["available", "maintenance", "disabled"] = "available"
    max_session_min: Annotated[int, Meta(ge=1, le=24 * 60)] = 240
    idle_timeout_min: Annotated[int, Meta(ge=0)] = 15
    guard_min: Annotated[int, Meta(ge=0)] = 15
    card_key_slot: Annotated[int, Meta(ge=1, le=4)] = 1
    opening_hours: list[HoursSpec] = []
    closed_days: list[ClosedDaySpec] = []
    device: DeviceSpec | None = None


class LabFile(_Strict, kw_only=True):
    sites: list[SiteSpec] = []
    competencies: list[CompetencySpec] = []
    machine_types: list[MachineTypeSpec] = []
    people: list[PersonSpec] = []
    machines: list[MachineSpec] = []


def parse(text: str) -> LabFile:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LoadError(f"not valid YAML: {exc}") from exc
    except ValueError as exc:  # a date YAML reads as one but cannot be: 2026-02-30
        raise LoadError(f"not a valid date: {exc}") from exc
    if raw is None:
        raw = {}
    try:
        lab = msgspec.convert(raw, LabFile)
    except msgspec.ValidationError as exc:
        raise LoadError(f"{exc} (see docs/load-format.md)") from exc
    validate(lab)
    return lab


def _check_booking(spec: BookingSpec, where: str) -> None:
    """What the types cannot say: the limits must fit together, or no booking could be made."""
    if spec.min_slot_min > spec.max_slot_min:
        raise LoadError(
            f"{where}: min_slot_min ({spec.min_slot_min}) is longer than max_slot_min ({spec.max_slot_min})"
        )
    step = spec.slot_step_min
    if step:
        if (24 * 60) % step:
            raise LoadError(f"{where}.slot_step_min: {step} does not divide a day (e.g. 15, 30, 60)")
        for name in ("min_slot_min", "max_slot_min"):
            if getattr(spec, name) % step:
                raise LoadError(
                    f"{where}.{name}: {getattr(spec, name)} is not a multiple of slot_step_min ({step})"
                )
    if spec.no_show_after_min > spec.min_slot_min:
        raise LoadError(
            f"{where}.no_show_after_min: {spec.no_show_after_min} is longer than the shortest booking "
            f"(min_slot_min {spec.min_slot_min})"
        )


def _check_days(specs: list[ClosedDaySpec], where: str) -> None:
    seen: set[date] = set()
    for i, spec in enumerate(specs):
        if spec.day in seen:
            raise LoadError(f"{where}.closed_days[{i}]: {spec.day.isoformat()} is listed twice")
        seen.add(spec.day)


def validate(lab: LabFile) -> None:
    """The checks across fields and entries, before anything is written."""
    for i, site in enumerate(lab.sites):
        if site.booking is not None:
            _check_booking(site.booking, f"sites[{i}].booking")
        cohorts = [q.cohort for q in site.cohort_quotas or []]
        twice = sorted({c for c in cohorts if cohorts.count(c) > 1})
        if twice:
            raise LoadError(f"sites[{i}].cohort_quotas: cohort {twice[0]!r} is listed twice")
        _check_days(site.closed_days, f"sites[{i}]")
    for i, machine in enumerate(lab.machines):
        _check_days(machine.closed_days, f"machines[{i}]")


def _hhmm(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


M = TypeVar("M")


class _Loader:
    def __init__(self, db: Session) -> None:
        self.db = db
        self.sites: dict[str, Site] = {}
        self.competencies: dict[str, Competency] = {}
        self.types: dict[str, MachineType] = {}
        self.counts: dict[str, int] = {}

    def _one(self, model: type[M], **match: object) -> M | None:
        return self.db.scalar(select(model).filter_by(**match))

    def _bump(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def site(self, slug: str, where: str) -> Site:
        found = self.sites.get(slug) or self._one(Site, slug=slug)
        if found is None:
            raise LoadError(f"{where}: unknown site {slug!r}; list it under sites:")
        return found

    def competency(self, slug: str, where: str) -> Competency:
        found = self.competencies.get(slug) or self._one(Competency, slug=slug)
        if found is None:
            raise LoadError(f"{where}: unknown competency {slug!r}; list it under competencies:")
        return found

    def booking(self, site: Site, spec: SiteSpec) -> None:
        """The site's booking policy (replaced whole when given), cohort quotas (the list
        replaces the site's when given) and closed days (added or updated, never removed: a
        file with this year's holidays keeps last year's)."""
        if spec.booking is not None:
            policy = self._one(BookingPolicy, site_id=site.id) or BookingPolicy(site_id=site.id)
            for name in BookingSpec.__struct_fields__:
                setattr(policy, name, getattr(spec.booking, name))
            self.db.add(policy)
            self._bump("booking_policies")
        if spec.cohort_quotas is not None:
            wanted = {q.cohort: q.weekly_hours for q in spec.cohort_quotas}
            for row in self.db.scalars(select(CohortQuota).where(CohortQuota.site_id == site.id)):
                if row.cohort not in wanted:
                    self.db.delete(row)
            self.db.flush()
            for cohort, hours in wanted.items():
                quota = self._one(CohortQuota, site_id=site.id, cohort=cohort) or CohortQuota(
                    site_id=site.id, cohort=cohort
                )
                quota.weekly_hours = hours
                self.db.add(quota)
                self._bump("cohort_quotas")
        self.closed_days(site, None, spec.closed_days)

    def closed_days(self, site: Site, machine: Machine | None, specs: list[ClosedDaySpec]) -> None:
        for spec in specs:
            found = self.db.scalar(
                select(ClosedDay).where(
                    ClosedDay.site_id == site.id,
                    ClosedDay.day == spec.day,
                    ClosedDay.machine_id == machine.id if machine else ClosedDay.machine_id.is_(None),
                )
            )
            row = found or ClosedDay(
                site_id=site.id, machine_id=machine.id if machine else None, day=spec.day
            )
            row.reason = spec.reason
            self.db.add(row)
            self._bump("closed_days")

    def hours(self, site: Site, machine: Machine | None, specs: list[HoursSpec], where: str) -> None:
        if not specs:
            return
        intervals: list[opening_hours.Interval] = []
        for i, spec in enumerate(specs):
            opens, closes = _hhmm(spec.opens), _hhmm(spec.closes)
            if closes <= opens:
                raise LoadError(f"{where}.opening_hours[{i}]: closes ({spec.closes}) must be after opens")
            intervals.extend(opening_hours.Interval(WEEKDAYS.index(day), opens, closes) for day in spec.days)
        opening_hours.replace(self.db, site.id, machine.id if machine else None, intervals)


def load(
    db: Session,
    lab: LabFile,
    *,
    now: datetime | None = None,
    source: str | None = None,
    actor_label: str | None = None,
) -> dict[str, int]:
    """Apply ``lab`` in the caller's transaction; returns how many records of each kind were written.

    ``now``: when this happens (history entries dated today or later are made now). ``source``
    (the file's name): the load is recorded in the audit log, as ``actor_label`` (who ran it).
    """
    from server.security import hash_password  # argon2 is only needed when a file sets passwords

    now = now or datetime.now(UTC)
    validate(lab)  # parse() did too; a LabFile built in code gets the same checks
    ld = _Loader(db)
    for i, s in enumerate(lab.sites):
        try:
            ZoneInfo(s.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise LoadError(f"sites[{i}].timezone: unknown time zone {s.timezone!r}") from exc
        site = ld._one(Site, slug=s.slug) or Site(slug=s.slug)
        site.name, site.name_de, site.timezone = s.name, s.name_de, s.timezone
        site.card_security = CardSecurity(s.card_security)
        db.add(site)
        db.flush()
        ld.sites[s.slug] = site
        ld.hours(site, None, s.opening_hours, f"sites[{i}]")
        ld.booking(site, s)
        ld._bump("sites")

    for c in lab.competencies:
        comp = ld._one(Competency, slug=c.slug) or Competency(slug=c.slug)
        comp.name, comp.name_de, comp.validity_months = c.name, c.name_de, c.validity_months
        db.add(comp)
        ld.competencies[c.slug] = comp
        ld._bump("competencies")
    db.flush()
    for i, c in enumerate(lab.competencies):
        comp = ld.competencies[c.slug]
        if c.prerequisite:
            comp.prerequisite = ld.competency(c.prerequisite, f"competencies[{i}].prerequisite")
        if c.steps:
            # Updated in place by position: people's training records point at the steps, so a
            # file loaded again (every `werkbank up`) must keep them.
            existing = list(comp.steps)
            for pos, st in enumerate(c.steps):
                step = existing[pos] if pos < len(existing) else TrainingStep(competency=comp)
                step.position, step.kind, step.name, step.name_de = pos, st.kind, st.name, st.name_de
                step.leads_to, step.hours = Level(st.leads_to), st.hours
                db.add(step)
            for step in existing[len(c.steps) :]:
                if competencies.step_in_use(db, step):
                    raise LoadError(
                        f"competencies[{i}].steps: {step.name!r} has training records and cannot be "
                        "removed; keep it in the file"
                    )
                db.delete(step)

    for i, t in enumerate(lab.machine_types):
        mtype = ld._one(MachineType, slug=t.slug) or MachineType(slug=t.slug)
        mtype.name, mtype.name_de, mtype.job_kind = t.name, t.name_de, t.job_kind
        db.add(mtype)
        db.flush()
        ld.types[t.slug] = mtype
        for req_spec in t.requires:
            spec = req_spec if isinstance(req_spec, RequirementSpec) else RequirementSpec(competency=req_spec)
            comp = ld.competency(spec.competency, f"machine_types[{i}].requires")
            req = ld._one(Requirement, machine_type_id=mtype.id, competency_id=comp.id)
            if req is None:
                req = Requirement(machine_type_id=mtype.id, competency_id=comp.id)
                db.add(req)
            req.min_level = Level(spec.level)
        ld._bump("machine_types")

    people: list[tuple[int, PersonSpec, Person]] = []
    for i, p in enumerate(lab.people):
        where = f"people[{i}]"
        person = (ld._one(Person, email=p.email) if p.email else None) or Person()
        person.name, person.site = p.name, ld.site(p.site, where)
        person.email = p.email
        person.is_participant = "participant" in p.roles
        person.is_trainer = "trainer" in p.roles
        person.is_admin = "admin" in p.roles
        person.language, person.cohort, person.programme, person.active = (
            p.language,
            p.cohort,
            p.programme,
            p.active,
        )
        if p.password:
            person.password_hash = hash_password(p.password)
        db.add(person)
        db.flush()
        for b in p.badges:
            spec_b = b if isinstance(b, BadgeSpec) else BadgeSpec(uid=b)
            badge = ld._one(Badge, uid=spec_b.uid) or Badge(uid=spec_b.uid)
            if badge.person_id not in (None, person.id):
                raise LoadError(f"{where}.badges: badge {spec_b.uid} belongs to someone else")
            badge.person_id, badge.status = person.id, BadgeStatus(spec_b.status)
            db.add(badge)
            ld._bump("badges")
        people.append((i, p, person))
        ld._bump("people")
    db.flush()

    for i, p, person in people:
        for j, q in enumerate(p.qualifications):
            where = f"people[{i}].qualifications[{j}]"
            comp = ld.competency(q.competency, where)
            by = None
            if q.by:
                by = ld._one(Person, email=q.by)
                if by is None:
                    raise LoadError(f"{where}.by: no person with e-mail {q.by!r}")
            exists = ld._one(
                Qualification,
                person_id=person.id,
                competency_id=comp.id,
                action=QualificationAction(q.action),
                valid_until=q.valid_until,
                level=Level(q.level),
            )
            if exists is None:
                db.add(
                    Qualification(
                        person_id=person.id,
                        competency_id=comp.id,
                        action=QualificationAction(q.action),
                        level=Level(q.level),
                        valid_until=q.valid_until,
                        granted_by_id=by.id if by else None,
                        reason=q.reason or "loaded from file",
                        created_at=_made_at(q.granted, person.site.timezone, now),
                    )
                )
                ld._bump("qualifications")

    for i, m in enumerate(lab.machines):
        where = f"machines[{i}]"
        found_type = ld.types.get(m.type) or ld._one(MachineType, slug=m.type)
        if found_type is None:
            raise LoadError(f"{where}.type: unknown machine type {m.type!r}; list it under machine_types:")
        mtype = found_type
        machine = ld._one(Machine, slug=m.slug) or Machine(slug=m.slug)
        site = ld.site(m.site, where)
        machine.name, machine.site, machine.machine_type = m.name, site, mtype
        machine.status = MachineStatus(m.status)
        machine.max_session_min, machine.idle_timeout_min, machine.guard_min = (
            m.max_session_min,
            m.idle_timeout_min,
            m.guard_min,
        )
        machine.card_key_slot = m.card_key_slot
        db.add(machine)
        db.flush()
        ld.hours(site, machine, m.opening_hours, where)
        ld.closed_days(site, machine, m.closed_days)
        if m.device:
            device = db.get(Device, m.device.id) or Device(id=m.device.id)
            if device.machine_id not in (None, machine.id):
                raise LoadError(f"{where}.device: device {m.device.id!r} already serves another machine")
            other = db.scalar(select(Device).where(Device.machine_id == machine.id, Device.id != m.device.id))
            if other is not None:
                other.machine_id = None
                db.flush()
            device.machine_id = machine.id
            device.enrolment_station = m.device.enrolment_station
            if m.device.password:
                device.password_hash = hash_password(m.device.password)
            db.add(device)
            ld._bump("devices")
        ld._bump("machines")
    db.flush()
    if source is not None:
        audit.record(
            db,
            None,
            "lab.load",
            f"file:{source}",
            {"file": source, "counts": dict(ld.counts)},
            at=now,
            actor_label=actor_label or "system",
        )
        db.flush()
    return ld.counts


def _made_at(day: date, timezone: str, now: datetime) -> datetime:
    """When a loaded history entry dated ``day`` was made: a day in the lab's past records at
    its noon (site time; the hour is not known), today's (or a later day's) now, as it is made
    by this load. Never a time before it was made: the allow-lists, and the check of offline
    sessions (server.services.reconcile), go by it."""
    if day >= now.astimezone(ZoneInfo(timezone)).date():
        return now
    return datetime.combine(day, time(12), ZoneInfo(timezone)).astimezone(UTC)
