"""The demo lab's three months (``werkbank up``, first start): about 40 participants of three
cohorts at every stage of training, what their trainers recorded, their supervised hours,
their use of the machines, past and coming bookings, all of it consistent with each other.

Everything is written relative to the day of the first start, so it stays true: a
participant's solo sessions on a machine begin when they were signed off for it, a supervised
level is granted at the end of the supervised session that completed its hours (as
``training.advance_after_session`` does), a supervised session has a trainer who holds the
trainer level, nobody collects enough no-shows to be blocked. Sessions, jobs and their
aggregates come from the same generator as ``werkbank demo-data`` (:mod:`server.adapters.demo.history`).

:data:`BANNER` says what each demo login can do; ``werkbank up`` prints it and
``tests/server/test_demo_story.py`` checks it against the decision and the booking service.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.adapters.demo.history import (
    FIRST,
    LAST,
    TYPES,
    Crowd,
    Entry,
    FixedSession,
    MachinePlan,
    PersonPlan,
    Tables,
    abilities,
    machine_history,
    write,
)
from server.models import (
    Badge,
    Booking,
    BookingStatus,
    ClosedDay,
    Competency,
    Device,
    Level,
    Machine,
    MachineSession,
    MachineType,
    OpeningHours,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    Site,
    StepKind,
    StepRecord,
    TrainingStep,
)
from server.services import usage
from server.services.qualifications import newest, state_of
from server.services.training import STEPS_COMPLETE, VALIDITY_ENDED, add_months

# Sessions per machine and open nine hours, before weekday and season factors (history.py).
RATE = 18.0
# The history stops this long before the first start: nothing generated is running or booked now.
QUIET = timedelta(hours=1)
# Coming bookings start this long after the lab (next) opens: taps at start-up meet none.
BOOKINGS_FROM = timedelta(hours=3)
BOOKING_DAYS = 7
BOOKED_HOURS_A_WEEK = 6.0  # below the default quota of 8
KEMAL = "kemal@demo.werkbank.local"


# -- what the banner promises ---------------------------------------------------------------------

ALONE = "alone"  # the machine unlocks for the badge alone
WITH_TRAINER = "with_trainer"  # refused alone (trainer_required), unlocked with a trainer's badge


@dataclass(frozen=True)
class Claim:
    machine: str  # machine slug
    verdict: str  # ALONE, WITH_TRAINER, or the reason code of the refusal


@dataclass(frozen=True)
class BannerPerson:
    email: str
    says: str
    claims: tuple[Claim, ...]
    books: bool  # may book the machines of the claims marked ALONE


BANNER: tuple[BannerPerson, ...] = (
    BannerPerson(
        "trainer@demo.werkbank.local",
        "trainer and admin: supervises and signs off on every machine",
        (Claim("printer-1", ALONE), Claim("laser-1", ALONE)),
        books=True,
    ),
    BannerPerson(
        "tom@demo.werkbank.local",
        "trainer at the southern site (printer and laser)",
        (Claim("sued-printer-1", ALONE), Claim("sued-laser-1", ALONE)),
        books=True,
    ),
    BannerPerson("admin@demo.werkbank.local", "admin: people, machines, reports", (), books=False),
    BannerPerson(
        "kemal@demo.werkbank.local",
        "signed off on the 3D printers and the laser: taps in alone, books any free time (English)",
        (Claim("printer-1", ALONE), Claim("laser-1", ALONE)),
        books=True,
    ),
    BannerPerson(
        "jonas@demo.werkbank.local",
        "prints alone; his laser briefing has expired, so the laser refuses him",
        (Claim("printer-1", ALONE), Claim("laser-1", "qualification_expired")),
        books=True,
    ),
    BannerPerson(
        "sara@demo.werkbank.local",
        "briefed on the 3D printers: prints only with a trainer, collecting supervised hours",
        (Claim("printer-1", WITH_TRAINER), Claim("laser-1", "not_qualified")),
        books=False,
    ),
    BannerPerson(
        "lena@demo.werkbank.local",
        "new this week, not trained yet: every machine refuses her badge",
        (Claim("printer-1", "not_qualified"), Claim("laser-1", "not_qualified")),
        books=False,
    ),
)


# -- the cohorts ----------------------------------------------------------------------------------

# What each generated member of a cohort reaches, per competency: (target, weight); None: never
# started. "briefed" people have done part of their supervised hours.
Targets = tuple[tuple[str | None, float], ...]


@dataclass(frozen=True)
class Cohort:
    name: str
    programme: str
    weeks_ago: int  # when it began
    members: tuple[tuple[str, int], ...]  # (site slug, generated members there)
    plan: tuple[tuple[str, Targets, int], ...]  # (competency slug, targets, start after days)


COHORTS = (
    Cohort(
        "Perspektive Arbeit 2026",
        "ESF Plus",
        13,
        (("demo-lab", 10),),
        (
            ("fdm-printing", (("independent", 0.9), ("supervised", 0.1)), 2),
            (
                "laser-safety",
                (("independent", 0.5), ("supervised", 0.2), ("briefed", 0.15), (None, 0.15)),
                30,
            ),
            ("vinyl-cutting", (("independent", 0.3), (None, 0.7)), 20),
        ),
    ),
    Cohort(
        "Jugend digital Herbst 2026",
        "Jugend digital",
        7,
        (("demo-lab", 7), ("demo-sued", 8)),
        (
            ("fdm-printing", (("independent", 0.4), ("supervised", 0.3), ("briefed", 0.3)), 2),
            ("laser-safety", (("briefed", 0.25), (None, 0.75)), 21),
            ("vinyl-cutting", (("briefed", 0.2), (None, 0.8)), 14),
        ),
    ),
    Cohort(
        "Betriebe 4.0 Winter 2026",
        "Betriebe 4.0",
        1,
        (("demo-lab", 3), ("demo-sued", 8)),
        (("fdm-printing", (("briefed", 0.5), (None, 0.5)), 1),),
    ),
)
COHORT_OF = {c.name: c for c in COHORTS}

# The banner's participants: (competency, target) with its start after the cohort began, days.
STORIES: dict[str, tuple[tuple[str, str, int], ...]] = {
    "kemal@demo.werkbank.local": (("fdm-printing", "independent", 3), ("laser-safety", "independent", 28)),
    "jonas@demo.werkbank.local": (("fdm-printing", "independent", 4),),
    "sara@demo.werkbank.local": (("fdm-printing", "briefed", 3),),
    "lena@demo.werkbank.local": (),
}
# Jonas took the laser course a year before his cohort: it has expired.
EXPIRED_BEFORE = {"jonas@demo.werkbank.local": ("laser-safety", 400)}


# -- the lab as the story needs it ----------------------------------------------------------------


@dataclass
class SiteInfo:
    id: int
    slug: str
    tz: ZoneInfo
    hours: dict[int, list[tuple[time, time]]]
    closed: set[date]

    def windows(self, day: date) -> list[tuple[float, float]]:
        if day in self.closed:
            return []
        return [
            (
                datetime.combine(day, opens, tzinfo=self.tz).timestamp(),
                datetime.combine(day, closes, tzinfo=self.tz).timestamp(),
            )
            for opens, closes in sorted(self.hours.get(day.weekday(), []))
        ]

    def day_of(self, at: float) -> date:
        return datetime.fromtimestamp(at, self.tz).date()


@dataclass
class Story:
    """One generation run: the lab's facts, and what has been planned so far."""

    db: Session
    rng: random.Random
    now: float
    until: float  # the history's end (now less QUIET)
    sites: dict[int, SiteInfo]
    competencies: dict[str, Competency]
    machines: list[MachinePlan]
    trainers: dict[tuple[int, int], list[int]]  # (site id, competency id) -> trainer ids
    crowd: Crowd = field(default_factory=Crowd)
    fixed: dict[int, list[FixedSession]] = field(default_factory=lambda: defaultdict(list))

    def slot(
        self,
        site: SiteInfo,
        after: float,
        length: float,
        people: Sequence[int],
        machine: MachinePlan | None = None,
    ) -> tuple[float, float] | None:
        """A free time of ``length`` seconds in the opening hours after ``after`` (before the
        history's end) for ``people`` and, when given, ``machine``."""
        day = site.day_of(after)
        while True:
            windows = site.windows(day)
            for opens, closes in windows:
                lo = max(opens, after)
                if closes - lo < length:
                    continue
                for _ in range(6):
                    start = float(int(lo + self.rng.random() * (closes - lo - length)) // 300 * 300)
                    end = start + length
                    if end > self.until:
                        return None
                    if all(self.crowd.free(p, start, end) for p in people) and (
                        machine is None
                        or all(f.end <= start or f.start >= end for f in self.fixed[machine.machine_id])
                    ):
                        return start, end
            day += timedelta(days=1)
            if datetime.combine(day, time(0), tzinfo=site.tz).timestamp() > self.until:
                return None


def _load(db: Session, rng: random.Random, now: datetime) -> Story:
    sites = {site.id: _site_info(db, site) for site in db.scalars(select(Site))}
    competencies = {c.slug: c for c in db.scalars(select(Competency))}
    specs = {t.slug: t for t in TYPES}
    trainers: dict[tuple[int, int], list[int]] = defaultdict(list)
    today = now.date()
    staff = db.scalars(select(Person).where(Person.is_trainer.is_(True), Person.active.is_(True))).all()
    for trainer in staff:
        for comp in competencies.values():
            state = state_of(newest(db, trainer.id, comp.id), today)
            if state is not None and state.usable and state.level == Level.TRAINER:
                trainers[(trainer.site_id, comp.id)].append(trainer.id)
    machines = []
    for machine in db.scalars(select(Machine).order_by(Machine.id)):
        mtype = db.get(MachineType, machine.machine_type_id)
        assert mtype is not None
        requires = tuple(
            (r.competency_id, Level(r.min_level).rank)
            for r in db.scalars(select(Requirement).where(Requirement.machine_type_id == mtype.id))
        )
        allowed = [set(trainers[(machine.site_id, cid)]) for cid, _rank in requires]
        supervisors = sorted(set.intersection(*allowed)) if allowed else []
        device = db.scalar(select(Device.id).where(Device.machine_id == machine.id)) or f"pi-{machine.slug}"
        machines.append(
            MachinePlan(
                machine.id,
                machine.slug,
                machine.site_id,
                machine.machine_type_id,
                specs.get(mtype.slug, TYPES[0]),
                device,
                requires=requires,
                trainers=tuple(supervisors),
            )
        )
    stamp = now.timestamp()
    return Story(db, rng, stamp, stamp - QUIET.total_seconds(), sites, competencies, machines, dict(trainers))


def _site_info(db: Session, site: Site) -> SiteInfo:
    hours: dict[int, list[tuple[time, time]]] = defaultdict(list)
    for row in db.scalars(
        select(OpeningHours).where(OpeningHours.site_id == site.id, OpeningHours.machine_id.is_(None))
    ):
        hours[row.weekday].append((row.opens, row.closes))
    if not hours:  # always open: people still come on weekdays
        for weekday in range(5):
            hours[weekday].append((time(9), time(18)))
    closed = set(
        db.scalars(select(ClosedDay.day).where(ClosedDay.site_id == site.id, ClosedDay.machine_id.is_(None)))
    )
    return SiteInfo(site.id, site.slug, ZoneInfo(site.timezone), dict(hours), closed)


# -- training ---------------------------------------------------------------------------------------


class Trainee:
    """One participant's qualification history as it is written: entries per competency."""

    def __init__(self, story: Story, person: Person, plan: PersonPlan) -> None:
        self.story = story
        self.person = person
        self.plan = plan
        self.entries: dict[int, list[Entry]] = defaultdict(list)

    def grant(
        self,
        comp: Competency,
        action: QualificationAction,
        level: Level,
        at: float,
        by: int | None,
        reason: str | None,
        valid_until: date | None = None,
    ) -> None:
        site = self.story.sites[self.person.site_id]
        if valid_until is None and action == QualificationAction.GRANTED and comp.validity_months:
            valid_until = add_months(site.day_of(at), comp.validity_months)
        self.story.db.add(
            Qualification(
                person_id=self.person.id,
                competency_id=comp.id,
                action=action,
                level=level,
                valid_until=valid_until,
                granted_by_id=by,
                reason=reason,
                created_at=datetime.fromtimestamp(at, UTC),
            )
        )
        entries = self.entries[comp.id]
        entries.append(Entry(len(entries), at, action, level, valid_until))

    def record(self, step: TrainingStep, at: float, by: int) -> None:
        self.story.db.add(
            StepRecord(
                person_id=self.person.id,
                competency_id=step.competency_id,
                step_id=step.id,
                recorded_by_id=by,
                source="web",
                recorded_at=datetime.fromtimestamp(at, UTC),
            )
        )

    def train(self, comp: Competency, begin: float, target: str) -> float | None:
        """Briefing, supervised hours and sign-off toward ``target``, from ``begin`` on, as far as
        the time until now allows. Returns when the person became independent, if they did."""
        story, rng = self.story, self.story.rng
        site = story.sites[self.person.site_id]
        trainers = story.trainers.get((site.id, comp.id), [])
        machines = [
            m for m in story.machines if m.site_id == site.id and any(c == comp.id for c, _ in m.requires)
        ]
        steps = {s.kind: s for s in comp.steps}
        if not trainers or not machines or StepKind.BRIEFING not in steps:
            return None
        if target == "briefed":  # still collecting hours: briefed in the last weeks
            begin = max(begin, story.until - rng.uniform(6, 20) * 86400)
        trainer = rng.choice(trainers)
        slot = story.slot(site, begin, 1800, [self.person.id, trainer])
        if slot is None:
            return None
        brief_at = slot[1]
        story.crowd.take(trainer, *slot)
        self.record(steps[StepKind.BRIEFING], brief_at, trainer)
        self.grant(comp, QualificationAction.GRANTED, Level.BRIEFED, brief_at, trainer, STEPS_COMPLETE)
        hours_step = steps.get(StepKind.SUPERVISED_HOURS)
        needed = (hours_step.hours or 0.0) * 3600 if hours_step else 0.0
        # "briefed" people are part of the way: they stop short of the hours.
        goal = needed if target != "briefed" else needed * rng.uniform(0.3, 0.8)
        done, at, level_at = 0.0, brief_at + rng.uniform(0.5, 3) * 86400, brief_at
        while done < goal or (target != "briefed" and done < needed):
            length = float(rng.randint(8, 16) * 300)  # 40 to 80 minutes
            if target == "briefed" and done + length >= needed - 300:
                break
            trainer = rng.choice(trainers)
            machine = rng.choice(machines)
            slot = story.slot(site, at, length, [self.person.id, trainer], machine)
            if slot is None:
                return None
            story.fixed[machine.machine_id].append(FixedSession(self.plan, slot[0], slot[1], trainer))
            story.crowd.take(self.person.id, *slot)
            story.crowd.take(trainer, *slot)
            done += length
            at = slot[1] + rng.uniform(1, 8) * 86400
            if done >= needed and needed:
                # What advance_after_session grants when the session that completed the hours ends.
                level_at = slot[1]
                self.grant(
                    comp, QualificationAction.GRANTED, Level.SUPERVISED, level_at, trainer, STEPS_COMPLETE
                )
                break
        if target != "independent" or done < needed or StepKind.SIGNOFF not in steps:
            return None
        trainer = rng.choice(trainers)
        slot = story.slot(site, level_at + rng.uniform(2, 18) * 86400, 1800, [self.person.id, trainer])
        if slot is None:
            return None
        story.crowd.take(trainer, *slot)
        self.record(steps[StepKind.SIGNOFF], slot[1], trainer)
        self.grant(comp, QualificationAction.GRANTED, Level.INDEPENDENT, slot[1], trainer, STEPS_COMPLETE)
        return slot[1]

    def finish(self, forever: float) -> None:
        tz = str(self.story.sites[self.person.site_id].tz)
        self.plan.abilities = {cid: abilities(e, tz, forever) for cid, e in self.entries.items()}


def _choose(rng: random.Random, targets: Targets) -> str | None:
    roll, acc = rng.random(), 0.0
    for target, weight in targets:
        acc += weight
        if roll < acc:
            return target
    return targets[-1][0]


def _new_people(story: Story, cohort: Cohort, taken: set[str], named: set[str], start: float) -> list[Person]:
    rng = story.rng
    slugs = {s.slug: s.id for s in story.sites.values()}
    people = []
    for site_slug, count in cohort.members:
        for _ in range(count):
            while True:
                first = rng.choice(FIRST)
                name = f"{first} {rng.choice(LAST)}"
                if name not in taken and first not in named:
                    taken.add(name)
                    break
            person = Person(
                site_id=slugs[site_slug],
                name=name,
                cohort=cohort.name,
                programme=cohort.programme,
                language=rng.choice(("de", "de", "de", "en")),
                created_at=datetime.fromtimestamp(start, UTC),
            )
            people.append(person)
    story.db.add_all(people)
    story.db.flush()
    return people


# -- the run ----------------------------------------------------------------------------------------


def populate(db: Session, seed: int, now: datetime) -> int:
    """Write the demo's participants, training and history into the loaded demo lab, once
    (only while it has no sessions). Returns the number of sessions written."""
    if db.scalar(select(MachineSession.id).limit(1)) is not None:
        return 0
    rng = random.Random(seed)
    story = _load(db, rng, now)
    if not story.machines:
        return 0
    forever = now.timestamp() + 400 * 86400
    begin = {c.name: now.timestamp() - c.weeks_ago * 7 * 86400 for c in COHORTS}
    trainees: list[Trainee] = []
    uid = 0
    taken = set(db.scalars(select(Person.name)))
    # Nobody generated shares a first name with the people the banner names.
    named = {name.split(" ", 1)[0] for name in taken}

    def trainee(person: Person) -> Trainee:
        nonlocal uid
        badge = db.scalar(select(Badge.uid).where(Badge.person_id == person.id))
        if badge is None:
            uid += 1
            badge = f"D0{uid:06X}"
            db.add(Badge(uid=badge, person_id=person.id))
        start = begin.get(person.cohort or "", now.timestamp())
        plan = PersonPlan(
            person.id, person.cohort or "", datetime.fromtimestamp(start, UTC).date(), date.max, badge
        )
        found = Trainee(story, person, plan)
        trainees.append(found)
        return found

    # The banner's participants first: their stories are fixed.
    for email, plans in STORIES.items():
        person = db.scalar(select(Person).where(Person.email == email))
        if person is None:
            continue
        who = trainee(person)
        start = begin.get(person.cohort or "", now.timestamp())
        person.created_at = datetime.fromtimestamp(start, UTC)
        if email in EXPIRED_BEFORE:
            slug, days = EXPIRED_BEFORE[email]
            comp = story.competencies[slug]
            at = now.timestamp() - days * 86400
            trainer = story.trainers[(person.site_id, comp.id)][0]
            who.grant(comp, QualificationAction.GRANTED, Level.INDEPENDENT, at, trainer, "Laserkurs 2025")
            until = who.entries[comp.id][-1].valid_until
            assert until is not None
            expired_at = datetime.combine(until + timedelta(days=1), time(0, 5), tzinfo=UTC).timestamp()
            who.grant(
                comp, QualificationAction.EXPIRED, Level.INDEPENDENT, expired_at, None, VALIDITY_ENDED, until
            )
        for slug, target, after_days in plans:
            who.train(story.competencies[slug], start + after_days * 86400, target)

    # The cohorts' other members, each at their own pace.
    signed_off: list[tuple[float, Trainee, Competency]] = []
    for cohort in COHORTS:
        start = begin[cohort.name]
        for person in _new_people(story, cohort, taken, named, start):
            who = trainee(person)
            for slug, targets, after_days in cohort.plan:
                competency = story.competencies.get(slug)
                goal = _choose(rng, targets)
                if competency is None or goal is None:
                    continue
                independent = who.train(competency, start + (after_days + rng.uniform(0, 21)) * 86400, goal)
                if independent is not None and competency.validity_months:
                    signed_off.append((independent, who, competency))
    # One of them broke a laser safety rule: the qualification was taken away again.
    if signed_off:
        independent, who, competency = min(signed_off, key=lambda found: found[0])
        at = min(independent + rng.uniform(3, 10) * 86400, (independent + story.until) / 2)
        trainer = story.trainers[(who.person.site_id, competency.id)][0]
        who.grant(
            competency,
            QualificationAction.REVOKED,
            Level.INDEPENDENT,
            at,
            trainer,
            "Schutzbrille nicht getragen",
            who.entries[competency.id][-1].valid_until,
        )
    # Someone of the first cohort took a laser course last winter, valid a few more weeks.
    laser = story.competencies.get("laser-safety")
    for who in trainees:
        if (
            laser is None
            or who.person.email
            or who.person.cohort != COHORTS[0].name
            or laser.id in who.entries
        ):
            continue
        trainer = story.trainers[(who.person.site_id, laser.id)][0]
        at = now.timestamp() - 345 * 86400
        who.grant(laser, QualificationAction.GRANTED, Level.INDEPENDENT, at, trainer, "Laserkurs 2025")
        break
    for who in trainees:
        who.finish(forever)
    db.flush()

    total = _history(story, trainees)
    _coming_bookings(story, trainees, now)
    # Today's coming bookings count in today's booked hours now, not at the scheduler's next run.
    for plan in story.machines:
        usage.recompute(db, plan.machine_id, now.astimezone(story.sites[plan.site_id].tz).date(), now)
    return total


def _history(story: Story, trainees: Sequence[Trainee]) -> int:
    db = story.db
    first = min(t.plan.joined for t in trainees)
    tables = Tables()
    total = 0
    for plan in story.machines:
        site = story.sites[plan.site_id]
        local_today = datetime.fromtimestamp(story.until, site.tz).date()
        month = first.replace(day=1)
        days = [month + timedelta(days=i) for i in range((local_today - month).days + 1)]
        facts = usage.machine_facts(db, plan.machine_id, days)
        pool = [t.plan for t in trainees if t.person.site_id == plan.site_id]
        by_month = {d.replace(day=1): pool for d in days}
        total += machine_history(
            random.Random(f"{story.rng.random()}-{plan.slug}"),
            plan,
            facts,
            days,
            by_month,
            first,
            story.until,
            tables,
            rate=RATE,
            fixed=story.fixed.get(plan.machine_id, ()),
            supervised_from=Level.SUPERVISED.rank,
            crowd=story.crowd,
            maintenance=False,
        )
    conn = db.connection()
    for table in ("usage_daily", "usage_hourly", "machine_day_stats", "person_usage_monthly"):
        conn.exec_driver_sql(f"DELETE FROM {table}")  # noqa: S608 - our table names
    write(conn, tables)
    return total


def _coming_bookings(story: Story, trainees: Sequence[Trainee], now: datetime) -> None:
    """Bookings of the coming week by people who may book them (alone, or with a trainer),
    inside the opening hours, on the half-hour grid, within the weekly quota."""
    rng, db = story.rng, story.db
    booked: dict[int, list[tuple[float, float]]] = defaultdict(list)  # machine -> taken
    hours: dict[tuple[int, date], float] = defaultdict(float)  # (person, Monday) -> hours
    for plan in story.machines:
        site = story.sites[plan.site_id]
        pool = [t for t in trainees if t.person.site_id == plan.site_id]
        opening = _next_open(site, now.timestamp())
        if opening is None or not pool:
            continue
        earliest = opening + BOOKINGS_FROM.total_seconds()
        for offset in range(BOOKING_DAYS):
            day = site.day_of(now.timestamp()) + timedelta(days=offset)
            for opens, closes in site.windows(day):
                lo = max(opens, earliest)
                lo = lo + (-lo % 1800)
                for _ in range(rng.choice((0, 1, 1, 2, 2, 3))):
                    length = 1800 * rng.choice((2, 2, 3, 4))
                    slots = int((closes - lo - length) // 1800)
                    if slots < 0:
                        continue
                    start = lo + 1800 * rng.randint(0, slots)
                    end = start + length
                    if any(s < end and e > start for s, e in booked[plan.machine_id]):
                        continue
                    who = rng.choice(pool)
                    # Kemal's only booking is his own (below): his free times stay free.
                    if who.person.email == KEMAL:
                        continue
                    mode = who.plan.mode(plan.requires, start, Level.BRIEFED.rank)
                    if mode is None or (mode == "supervise" and not plan.trainers):
                        continue
                    monday = day - timedelta(days=day.weekday())
                    if hours[(who.person.id, monday)] + length / 3600 > BOOKED_HOURS_A_WEEK:
                        continue
                    hours[(who.person.id, monday)] += length / 3600
                    booked[plan.machine_id].append((start, end))
                    trainer = rng.choice(plan.trainers) if mode == "supervise" else None
                    db.add(
                        Booking(
                            machine_id=plan.machine_id,
                            person_id=who.person.id,
                            trainer_id=trainer,
                            starts_at=datetime.fromtimestamp(start, UTC),
                            ends_at=datetime.fromtimestamp(end, UTC),
                            status=BookingStatus.BOOKED,
                            created_at=now - timedelta(hours=rng.uniform(1, 72)),
                            created_by_id=trainer or who.person.id,
                        )
                    )
    # Kemal has booked the second printer for the day after tomorrow's afternoon.
    kemal = next((t for t in trainees if t.person.email == KEMAL), None)
    printer = next((m for m in story.machines if m.slug == "printer-2"), None)
    if kemal is not None and printer is not None:
        site = story.sites[printer.site_id]
        for offset in range(2, BOOKING_DAYS):
            day = site.day_of(now.timestamp()) + timedelta(days=offset)
            start = datetime.combine(day, time(15), tzinfo=site.tz).timestamp()
            end = start + 5400
            if not any(o <= start and end <= c for o, c in site.windows(day)):
                continue
            if any(s < end and e > start for s, e in booked[printer.machine_id]):
                continue
            if kemal.plan.mode(printer.requires, start, Level.INDEPENDENT.rank) != "use":
                break
            db.add(
                Booking(
                    machine_id=printer.machine_id,
                    person_id=kemal.person.id,
                    starts_at=datetime.fromtimestamp(start, UTC),
                    ends_at=datetime.fromtimestamp(end, UTC),
                    status=BookingStatus.BOOKED,
                    created_at=now - timedelta(hours=20),
                    created_by_id=kemal.person.id,
                )
            )
            break
    db.flush()


def _next_open(site: SiteInfo, at: float) -> float | None:
    """``at`` when the site is open then, else when it next opens (within two weeks)."""
    day = site.day_of(at)
    for _ in range(15):
        for opens, closes in site.windows(day):
            if closes > at:
                return max(opens, at)
        day += timedelta(days=1)
    return None
