"""Realistic history for demos and benchmarks: ``werkbank demo-data`` and ``werkbank up``.

Sessions, jobs, bookings and downtime are generated machine by machine from a seeded
random generator (the same seed gives the same data), written in bulk (COPY on
PostgreSQL, ``executemany`` on SQLite, no ORM and so no flush hook), and the usage
aggregates are computed in memory by the same pure function the scheduler uses
(:func:`server.services.usage.compute`), then written in bulk too.
"""

from __future__ import annotations

import bisect
import math
import queue
import random
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from server.models import (
    Badge,
    ClosedDay,
    Competency,
    Device,
    Level,
    Machine,
    MachineType,
    OpeningHours,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    Site,
    TrainingStep,
)
from server.services import hours_total, usage

# Mean sessions per machine and open day (before weekday, season and growth factors):
# with ~250 open days a year this makes about 2 M sessions for 100 machines over 5 years.
SESSIONS_PER_DAY = 20.0
WEEKDAY_FACTOR = (0.85, 1.0, 1.05, 1.0, 0.75, 0.5, 0.3)
MONTH_FACTOR = (0.9, 1.0, 1.05, 1.0, 1.0, 0.9, 0.65, 0.6, 1.0, 1.1, 1.1, 0.75)


@dataclass(frozen=True)
class TypeSpec:
    slug: str
    name: str
    name_de: str
    job_kind: str
    competency: str
    share: float
    minutes: tuple[int, int]  # session length range
    jobs: tuple[int, int]  # jobs per session range
    grams: tuple[float, float]  # filament per job (0: none)
    # The whole machine's draw at its metering plug, idle (unlocked) and running, in W; (0, 0):
    # no metering plug, so its sessions have no energy (docs/dashboards.md, "Energy").
    power_w: tuple[float, float] = (0.0, 0.0)


# Session lengths are unlock times: most are short (a cut, starting a print, a quick fix), so a
# busy machine has many sessions and is unlocked about half of its opening hours.
TYPES = (
    TypeSpec(
        "fdm-printer",
        "FDM 3D printer",
        "FDM-3D-Drucker",
        "print",
        "fdm-printing",
        0.4,
        (4, 30),
        (1, 2),
        (4, 60),
        (15.0, 130.0),  # heated bed and hot end
    ),
    TypeSpec(
        "co2-laser",
        "CO2 laser cutter",
        "CO2-Laserschneider",
        "cut",
        "laser-safety",
        0.2,
        (4, 25),
        (1, 3),
        (0, 0),
        (250.0, 1200.0),  # chiller and extraction idle; tube, chiller and extraction running
    ),
    TypeSpec(
        "cnc-router",
        "CNC router",
        "CNC-Fräse",
        "other",
        "cnc-milling",
        0.15,
        (8, 40),
        (1, 1),
        (0, 0),
        (100.0, 1800.0),  # spindle and dust extraction
    ),
    TypeSpec(
        "vinyl-cutter",
        "Vinyl cutter",
        "Schneideplotter",
        "cut",
        "vinyl-cutting",
        0.15,
        (3, 15),
        (1, 2),
        (0, 0),
    ),
    TypeSpec(
        "soldering", "Soldering station", "Lötstation", "other", "soldering", 0.1, (5, 35), (0, 0), (0, 0)
    ),
)
COMPETENCIES = (
    ("fdm-printing", "FDM 3D printing", "FDM-3D-Druck", None),
    ("laser-safety", "Laser safety briefing", "Laser-Sicherheitsunterweisung", 12),
    ("cnc-milling", "CNC milling", "CNC-Fräsen", None),
    ("vinyl-cutting", "Vinyl cutting", "Schneideplotten", None),
    ("soldering", "Soldering", "Löten", 24),
)
PROGRAMMES = ("Perspektive Arbeit", "Jugend digital", "Betriebe 4.0")
FIRST = [
    "Ada",
    "Ali",
    "Ana",
    "Ben",
    "Bea",
    "Can",
    "Cem",
    "Dana",
    "Eda",
    "Emil",
    "Eva",
    "Finn",
    "Ida",
    "Ilse",
    "Jan",
    "Jonas",
    "Kai",
    "Kemal",
    "Lea",
    "Lina",
    "Mia",
    "Mo",
    "Nina",
    "Noah",
    "Ole",
    "Paul",
    "Rosa",
    "Sara",
    "Tim",
    "Tom",
    "Uwe",
    "Vera",
    "Yara",
    "Zoe",
    "Aylin",
    "Elif",
    "Hamza",
    "Leon",
    "Lukas",
    "Mara",
    "Nele",
    "Omar",
]
LAST = [
    "Acar",
    "Bauer",
    "Becker",
    "Demir",
    "Fischer",
    "Hoffmann",
    "Kaya",
    "Klein",
    "Koch",
    "Krüger",
    "Lange",
    "Meyer",
    "Müller",
    "Neumann",
    "Öztürk",
    "Richter",
    "Schmidt",
    "Schneider",
    "Schulz",
    "Schwarz",
    "Wagner",
    "Weber",
    "Wolf",
    "Yilmaz",
    "Zimmermann",
    "Nowak",
    "Kowalski",
    "Popescu",
]
CITIES = ("Nord", "Süd", "Ost", "West", "Mitte", "Hafen", "Altstadt", "Neustadt", "Ring", "Au")
ZONES = ("Europe/Berlin", "Europe/Berlin", "Europe/Vienna", "Europe/Berlin", "Europe/Zurich")


def _holidays(year: int) -> list[date]:
    fixed = [(1, 1), (5, 1), (10, 3), (12, 24), (12, 25), (12, 26), (12, 31)]
    days = [date(year, m, d) for m, d in fixed]
    # Easter (anonymous Gregorian algorithm): Good Friday, Easter Monday, Ascension, Whit Monday.
    a, b, c = year % 19, year // 100, year % 100
    d, e = b // 4, b % 4
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = c // 4, c % 4
    l_ = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * l_) // 451
    month, day = divmod(h + l_ - 7 * m + 114, 31)
    easter = date(year, month, day + 1)
    days += [easter + timedelta(days=n) for n in (-2, 1, 39, 50)]
    return days


@dataclass
class Tables:
    """Rows waiting for a bulk write, per table, as tuples in ``COLUMNS`` order."""

    rows: dict[str, list[tuple[Any, ...]]] = field(default_factory=lambda: defaultdict(list))

    def count(self, table: str) -> int:
        return len(self.rows[table])


COLUMNS: dict[str, list[str]] = {
    "sessions": [
        "id",
        "machine_id",
        "device_id",
        "person_id",
        "trainer_id",
        "badge_uid",
        "mode",
        "offline",
        "started_at",
        "ended_at",
        "end_reason",
        "unlocked_s",
        "run_s",
        "created_at",
        "energy_wh",
        "energy_gap_s",
        "energy_source",
    ],
    "jobs": [
        "id",
        "session_id",
        "machine_id",
        "kind",
        "file",
        "estimated_s",
        "started_at",
        "finished_at",
        "status",
        "duration_s",
        "filament_mm",
        "filament_g",
    ],
    "bookings": [
        "id",
        "machine_id",
        "person_id",
        "trainer_id",
        "starts_at",
        "ends_at",
        "status",
        "created_at",
        "created_by_id",
        "cancelled_at",
        "checked_in_at",
        "released_at",
        "no_show",
    ],
    "machine_downtime": ["machine_id", "kind", "started_at", "ended_at", "note"],
    "usage_daily": [
        "machine_id",
        "day",
        "cohort",
        "site_id",
        "machine_type_id",
        "sessions",
        "unlocked_s",
        "run_s",
        "supervised_s",
        "jobs",
        "jobs_failed",
        "filament_g",
        "booked_s",
        "booked_used_s",
        "no_shows",
        "energy_wh",
        "energy_gap_s",
    ],
    "usage_hourly": ["machine_id", "day", "hour", "cohort", "site_id", "machine_type_id", "unlocked_s"],
    "machine_day_stats": [
        "machine_id",
        "day",
        "site_id",
        "machine_type_id",
        "open_s",
        "maintenance_s",
        "offline_s",
    ],
    "person_usage_monthly": [
        "person_id",
        "machine_id",
        "month",
        "site_id",
        "machine_type_id",
        "sessions",
        "unlocked_s",
        "run_s",
        "supervised_s",
        "jobs",
    ],
}
TIME_COLUMNS = {
    "started_at",
    "ended_at",
    "created_at",
    "finished_at",
    "starts_at",
    "ends_at",
    "cancelled_at",
    "checked_in_at",
    "released_at",
}


_DAY_TEXT: dict[int, str] = {}
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


_SESSION_MACHINE = COLUMNS["sessions"].index("machine_id")
_SESSION_UNLOCKED = COLUMNS["sessions"].index("unlocked_s")


def _ts_text(value: float) -> str:
    """A UTC epoch as the naive UTC text both databases store (SQLAlchemy's SQLite format,
    which PostgreSQL's COPY reads too): strftime is the generator's slowest call otherwise."""
    whole = int(value)
    days, secs = divmod(whole, 86400)
    day = _DAY_TEXT.get(days)
    if day is None:
        day = _DAY_TEXT[days] = date.fromordinal(_EPOCH_ORDINAL + days).isoformat()
    hours, rest = divmod(secs, 3600)
    minutes, seconds = divmod(rest, 60)
    micro = round((value - whole) * 1_000_000)
    if micro >= 1_000_000:  # rounding reached the next second
        return _ts_text(float(whole + 1))
    return f"{day} {hours:02d}:{minutes:02d}:{seconds:02d}.{micro:06d}"


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, date):
        return value.isoformat()
    # Our strings hold no tabs, newlines or backslashes (slugs, uuids, cohort names, file names).
    return str(value)


def write(conn: Any, tables: Tables) -> None:
    """Bulk-write every waiting row (COPY on PostgreSQL, executemany on SQLite), then clear.
    The sessions' unlocked time goes onto their machines' totals in the same transaction (no
    flush hook sees these rows: server.services.hours_total)."""
    if not conn.in_transaction():
        # The rows go through the driver's connection: SQLAlchemy must know a transaction is
        # open, or its commit would do nothing and the rows would be rolled back on close.
        conn.begin()
    raw = conn.connection.driver_connection
    postgres = conn.dialect.name == "postgresql"
    hours: dict[int, float] = defaultdict(float)
    for row in tables.rows.get("sessions", ()):
        if row[_SESSION_UNLOCKED] is not None:
            hours[row[_SESSION_MACHINE]] += row[_SESSION_UNLOCKED]
    for table, rows in tables.rows.items():
        if not rows:
            continue
        columns = COLUMNS[table]
        times = [i for i, c in enumerate(columns) if c in TIME_COLUMNS]
        converted = []
        for row in rows:
            values = list(row)
            for i in times:
                if values[i] is not None:
                    values[i] = _ts_text(values[i])
            converted.append(values)
        if postgres:
            cur = raw.cursor()
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for start in range(0, len(converted), 5000):
                    chunk = converted[start : start + 5000]
                    copy.write("".join("\t".join(map(_copy_text, values)) + "\n" for values in chunk))
        else:
            placeholders = ", ".join("?" for _ in columns)
            raw.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})",  # noqa: S608
                [tuple(v.isoformat() if isinstance(v, date) else v for v in values) for values in converted],
            )
        rows.clear()
    hours_total.add(conn, hours)


@dataclass
class MachinePlan:
    machine_id: int
    slug: str
    site_id: int
    machine_type_id: int
    spec: TypeSpec
    device_id: str
    # (competency id, minimum level rank) the machine type requires, as the decision reads them.
    requires: tuple[tuple[int, int], ...] = ()
    # Trainers of the site who may supervise here (trainer level in every required competency).
    trainers: tuple[int, ...] = ()


# A level a person could use at a time: (from, until, level rank), UTC epoch seconds.
Span = tuple[float, float, int]
NONE = -1  # no usable level


@dataclass
class PersonPlan:
    person_id: int
    cohort: str
    joined: date
    leaves: date
    uid: str
    # competency id -> when the person held a usable level of it (see :func:`abilities`)
    abilities: dict[int, list[Span]] = field(default_factory=dict)

    def level(self, competency_id: int, at: float) -> int:
        for start, until, rank in self.abilities.get(competency_id, ()):
            if start <= at < until:
                return rank
        return NONE

    def mode(self, requires: Sequence[tuple[int, int]], at: float, supervised_from: int) -> str | None:
        """How the decision would have let the person in at ``at``: "use" alone, "supervise"
        with a trainer (held below the required level, at least ``supervised_from``), or not."""
        if not requires:
            return "use"
        levels = [(self.level(cid, at), need) for cid, need in requires]
        if all(have >= need for have, need in levels):
            return "use"
        if all(have >= supervised_from for have, _need in levels):
            return "supervise"
        return None


@dataclass(frozen=True)
class Entry:
    """One qualification history entry, as generated (``order``: the insert order, which is
    what "newest" means to the decision)."""

    order: int
    at: float
    action: QualificationAction
    level: Level
    valid_until: date | None


def abilities(entries: Sequence[Entry], timezone: str, forever: float) -> list[Span]:
    """When the person could use one competency and at which level, from its history: at any
    time the newest entry so far decides, a granted or renewed one until its validity ends
    (the decision's rule, ``qualification_state``)."""
    tz = ZoneInfo(timezone)
    ends = {
        e.order: datetime.combine(e.valid_until + timedelta(days=1), time(0), tzinfo=tz).timestamp()
        for e in entries
        if e.valid_until is not None
    }
    cuts = sorted({e.at for e in entries} | set(ends.values()))
    spans: list[Span] = []
    for i, start in enumerate(cuts):
        until = cuts[i + 1] if i + 1 < len(cuts) else forever
        known = [e for e in entries if e.at <= start]
        if not known or until <= start:
            continue
        top = max(known, key=lambda e: e.order)
        usable = top.action in (QualificationAction.GRANTED, QualificationAction.RENEWED) and (
            top.order not in ends or start < ends[top.order]
        )
        if not usable:
            continue
        if spans and spans[-1][1] == start and spans[-1][2] == top.level.rank:
            spans[-1] = (spans[-1][0], until, top.level.rank)
        else:
            spans.append((start, until, top.level.rank))
    return spans


@dataclass(frozen=True)
class FixedSession:
    """A session planned before the machine's day is filled (a supervised training hour)."""

    person: PersonPlan
    start: float
    end: float
    trainer_id: int | None


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _energy(spec: TypeSpec, sid: str, unlocked: float, run: float) -> tuple[float | None, float, str | None]:
    """A session's energy as a metering plug would have measured it: idle draw while unlocked,
    running draw while it ran, give or take 15 %; one session in 40 lost readings for a few
    minutes (a gap the dashboard shows). (None, 0, None) without a plug. Drawn from the session
    id, not the generator, so that adding energy left every other figure of a seed as it was."""
    idle_w, run_w = spec.power_w
    if not run_w:
        return None, 0.0, None
    draw = int(sid.replace("-", "")[:8], 16) / 0xFFFFFFFF  # uniform in [0, 1]
    wh = (idle_w * max(0.0, unlocked - run) + run_w * run) / 3600 * (0.85 + 0.3 * draw)
    gap_s = 0.0
    if draw < 0.025:
        gap_s = min(unlocked / 2, 60.0 + 400.0 * draw / 0.025)
        wh *= 1 - gap_s / max(unlocked, 1.0)
    return round(wh, 3), round(gap_s, 1), "counter"


def _poisson(rng: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    if mean > 30:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# Nobody gets this many no-shows within the policy's window (default: 3 in 30 days block):
# the generated people are never blocked from booking.
NO_SHOWS_AT_MOST = 2
NO_SHOW_WINDOW = 30 * 86400
PICK_TRIES = 8


@dataclass
class Crowd:
    """Who is where when, across all machines of one generation run: nobody is in two
    sessions at once, nobody collects enough no-shows to be blocked."""

    busy: dict[int, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    no_shows: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    track_busy: bool = True

    def free(self, person_id: int, start: float, end: float) -> bool:
        if not self.track_busy:
            return True
        return all(e <= start or s >= end for s, e in self.busy.get(person_id, ()))

    def take(self, person_id: int, start: float, end: float) -> None:
        if self.track_busy:
            self.busy[person_id].append((start, end))

    def may_miss(self, person_id: int, at: float) -> bool:
        recent = [t for t in self.no_shows.get(person_id, ()) if abs(t - at) < NO_SHOW_WINDOW]
        return len(recent) < NO_SHOWS_AT_MOST


def _pick(
    rng: random.Random,
    pool: Sequence[PersonPlan],
    plan: MachinePlan,
    start: float,
    end: float,
    supervised_from: int,
    crowd: Crowd,
) -> tuple[PersonPlan, str, int | None] | None:
    """Someone the decision would have let in for [start, end), with the mode and trainer."""
    for _ in range(PICK_TRIES):
        person = rng.choice(pool)
        mode = person.mode(plan.requires, start, supervised_from)
        if mode is None or (mode == "supervise" and not plan.trainers):
            continue
        if not crowd.free(person.person_id, start, end):
            continue
        trainer = rng.choice(plan.trainers) if mode == "supervise" else None
        return person, mode, trainer
    return None


def machine_history(
    rng: random.Random,
    plan: MachinePlan,
    facts: usage.MachineUsageFacts,
    days: Sequence[date],
    people_by_month: dict[date, list[PersonPlan]],
    first: date,
    now: float,
    tables: Tables,
    rate: float = SESSIONS_PER_DAY,
    use_hours: tuple[tuple[int, time, time], ...] = (),
    fixed: Sequence[FixedSession] = (),
    supervised_from: int = Level.BRIEFED.rank,
    crowd: Crowd | None = None,
    maintenance: bool = True,
) -> int:
    """Generate one machine's history over ``days`` (from ``first`` on), queue its rows and its
    aggregates. Returns the number of sessions. ``use_hours`` (default: the opening hours)
    are when people come.

    Every session is one the decision would have allowed: its person held the machine type's
    competencies then (alone), or held them below the required level but at least at
    ``supervised_from`` and came with one of ``plan.trainers`` (supervised). ``fixed``
    sessions (planned training hours) come as they are; the others are fitted around them.
    """
    crowd = crowd or Crowd(track_busy=False)
    tz = ZoneInfo(facts.timezone)
    spec = plan.spec
    hours: dict[int, list[tuple[time, time]]] = defaultdict(list)
    for weekday, opens, closes in use_hours or facts.hours:
        hours[weekday].append((opens, closes))
    cohorts: dict[int, str] = {}
    sessions: list[usage.SessionFact] = []
    jobs: list[usage.JobFact] = []
    bookings: list[usage.BookingFact] = []
    downtime: list[usage.DowntimeFact] = []
    s_rows, j_rows, b_rows = tables.rows["sessions"], tables.rows["jobs"], tables.rows["bookings"]
    first_year = days[0].year
    busy_until = 0.0
    suffix = "gcode" if spec.job_kind == "print" else "svg"
    # Maintenance about three times a year (1-4 days), offline spells about monthly (minutes to
    # hours). Nobody uses a machine in maintenance; offline, the agent goes on by itself.
    blocked: list[tuple[float, float]] = [(f.start, f.end) for f in fixed]
    d_rows = tables.rows["machine_downtime"]
    span_days = max(1, (days[-1] - first).days)
    begin = datetime.combine(first, time(0), tzinfo=tz).timestamp()
    for _ in range(_poisson(rng, span_days / 120) if maintenance else 0):
        at = float(int(begin + rng.random() * span_days * 86400))
        until = min(at + rng.uniform(1, 4) * 86400, now)
        if at < now:
            d_rows.append(
                (plan.machine_id, rng.choice(("maintenance", "out_of_order")), at, until, "demo data")
            )
            downtime.append(usage.DowntimeFact(False, at, until))
            blocked.append((at, until))
    for _ in range(_poisson(rng, span_days / 30)):
        at = float(int(begin + rng.random() * span_days * 86400))
        until = min(at + rng.uniform(600, 8 * 3600), now)
        if at < now:
            d_rows.append((plan.machine_id, "offline", at, until, None))
            downtime.append(usage.DowntimeFact(True, at, until))

    blocked.sort()
    blocked_starts = [b[0] for b in blocked]
    longest = max((e - b for b, e in blocked), default=0.0)

    def clash(start: float, end: float) -> float | None:
        """The end of a planned session or maintenance overlapping [start, end), if any."""
        lo = bisect.bisect_left(blocked_starts, start - longest)
        for _b_start, b_end in blocked[lo : bisect.bisect_left(blocked_starts, end)]:
            if b_end > start:
                return b_end
        return None

    def emit(person: PersonPlan, s_start: float, s_end: float, mode: str, trainer: int | None) -> None:
        cohorts[person.person_id] = person.cohort
        crowd.take(person.person_id, s_start, s_end)
        sid = _uuid(rng)
        unlocked = s_end - s_start
        run = 0.0
        n_jobs = rng.randint(*spec.jobs)
        j_at = s_start + 60
        for _j in range(n_jobs):
            if j_at >= s_end - 60:
                break
            dur = float(int(rng.uniform(0.3, 0.9) * (s_end - j_at)))
            if dur < 30:
                break
            roll = rng.random()
            status = "completed" if roll < 0.88 else "failed" if roll < 0.95 else "cancelled"
            grams = round(rng.uniform(*spec.grams), 1) if spec.grams[1] else None
            j_rows.append(
                (
                    _uuid(rng),
                    sid,
                    plan.machine_id,
                    spec.job_kind,
                    f"part-{rng.randint(1, 999):03d}.{suffix}",
                    dur * rng.uniform(0.9, 1.2),
                    j_at,
                    j_at + dur,
                    status,
                    dur,
                    None if grams is None else grams * 330,
                    grams,
                )
            )
            jobs.append(usage.JobFact(person.person_id, j_at, status != "completed", grams or 0.0))
            run += dur
            j_at += dur + 30
        if n_jobs == 0:
            run = unlocked * rng.uniform(0.3, 0.8)
        wh, gap_s, source = _energy(spec, sid, unlocked, run)
        s_rows.append(
            (
                sid,
                plan.machine_id,
                plan.device_id,
                person.person_id,
                trainer,
                person.uid,
                mode,
                rng.random() < 0.02,
                s_start,
                s_end,
                rng.choice(("tap_out", "tap_out", "tap_out", "idle_timeout", "max_time")),
                unlocked,
                run,
                s_start,
                wh,
                gap_s,
                source,
            )
        )
        sessions.append(
            usage.SessionFact(person.person_id, s_start, s_end, run, mode == "supervise", wh or 0.0, gap_s)
        )
        if rng.random() < 0.3:  # came with a booking on the half-hour grid (supervised: with the trainer)
            b_start = s_start - (s_start % 1800)
            b_end = b_start + max(1800.0, math.ceil((s_end - b_start) / 1800) * 1800)
            b_rows.append(
                (
                    _uuid(rng),
                    plan.machine_id,
                    person.person_id,
                    trainer,
                    b_start,
                    b_end,
                    "booked",
                    b_start - 86400 * rng.randint(1, 7),
                    person.person_id if trainer is None else trainer,
                    None,
                    s_start,
                    None,
                    False,
                )
            )
            bookings.append(usage.BookingFact(person.person_id, b_start, b_end, False))

    for f in sorted(fixed, key=lambda f: f.start):
        if f.end <= now:
            emit(f.person, f.start, f.end, "supervise" if f.trainer_id else "use", f.trainer_id)

    for day in days:
        if day < first or day in facts.closed:
            continue
        pool = people_by_month.get(day.replace(day=1), [])
        windows = hours.get(day.weekday(), [])
        if not pool or not windows:
            continue
        growth = 0.7 + 0.3 * min(1.0, (day.year - first_year + day.timetuple().tm_yday / 366) / 3)
        for opens, closes in windows:
            start = datetime.combine(day, opens, tzinfo=tz).timestamp()
            end = min(datetime.combine(day, closes, tzinfo=tz).timestamp(), now)
            if end <= start:
                continue
            share = (end - start) / (9 * 3600)
            mean = rate * share * WEEKDAY_FACTOR[day.weekday()] * MONTH_FACTOR[day.month - 1] * growth
            count = _poisson(rng, mean)
            t = max(start, busy_until)
            slack = max(0.0, (end - t) - count * (spec.minutes[0] + spec.minutes[1]) * 30)
            for _ in range(count):
                t += rng.random() * 2 * slack / max(1, count) * 0.5 + 60
                length = rng.randint(*spec.minutes) * 60 + rng.randint(0, 59)
                if t + 300 > end:
                    break
                # The decision unlocks at most until closing time: no session outlasts it.
                s_start, s_end = float(int(t)), float(int(min(t + length, end, now)))
                after = clash(s_start, s_end) if blocked else None
                if after is not None:
                    t = busy_until = after
                    continue
                picked = _pick(rng, pool, plan, s_start, s_end, supervised_from, crowd)
                if picked is None:
                    continue
                t = s_end
                busy_until = s_end
                emit(*picked[:1], s_start, s_end, picked[1], picked[2])
            # Bookings nobody came to (released by the scheduler), and cancelled ones: only by
            # people who could have booked the machine then.
            for _ in range(_poisson(rng, mean * 0.04)):
                b_start = start + 1800 * rng.randint(0, max(0, int((end - start) / 1800) - 2))
                picked = _pick(rng, pool, plan, b_start, b_start + 3600, supervised_from, crowd)
                if picked is None or not crowd.may_miss(picked[0].person_id, b_start):
                    continue
                person, _mode, trainer = picked
                crowd.no_shows[person.person_id].append(b_start)
                cohorts[person.person_id] = person.cohort
                b_rows.append(
                    (
                        _uuid(rng),
                        plan.machine_id,
                        person.person_id,
                        trainer,
                        b_start,
                        b_start + 3600,
                        "released",
                        b_start - 86400 * 2,
                        person.person_id if trainer is None else trainer,
                        None,
                        None,
                        b_start + 900,
                        True,
                    )
                )
                bookings.append(usage.BookingFact(person.person_id, b_start, b_start + 3600, True))
            for _ in range(_poisson(rng, mean * 0.03)):
                b_start = start + 1800 * rng.randint(0, max(0, int((end - start) / 1800) - 2))
                picked = _pick(rng, pool, plan, b_start, b_start + 3600, supervised_from, crowd)
                if picked is None:
                    continue
                person, _mode, trainer = picked
                b_rows.append(
                    (
                        _uuid(rng),
                        plan.machine_id,
                        person.person_id,
                        trainer,
                        b_start,
                        b_start + 3600,
                        "cancelled",
                        b_start - 86400 * 3,
                        person.person_id if trainer is None else trainer,
                        b_start - 86400,
                        None,
                        None,
                        False,
                    )
                )
    agg = usage.compute(facts, days, sessions, jobs, bookings, downtime, cohorts, now)
    queue_aggregates(tables, agg)
    return len(sessions)


def queue_aggregates(tables: Tables, agg: usage.Aggregates) -> None:
    for table, rows in (
        ("usage_daily", agg.daily_rows()),
        ("usage_hourly", agg.hourly_rows()),
        ("machine_day_stats", agg.stats_rows()),
        ("person_usage_monthly", agg.person_rows()),
    ):
        columns = COLUMNS[table]
        tables.rows[table].extend(tuple(r[c] for c in columns) for r in rows)


# -- the lab itself (small: ORM) ---------------------------------------------------------------
def _competencies(db: Session) -> dict[str, Competency]:
    found = {c.slug: c for c in db.scalars(select(Competency))}
    for slug, name, name_de, validity in COMPETENCIES:
        if slug in found:
            continue
        comp = Competency(slug=slug, name=name, name_de=name_de, validity_months=validity)
        comp.steps = [
            TrainingStep(position=0, kind="briefing", name=f"{name}: briefing", leads_to=Level.BRIEFED),
            TrainingStep(
                position=1,
                kind="supervised_hours",
                name=f"{name}: supervised",
                leads_to=Level.SUPERVISED,
                hours=3,
            ),
            TrainingStep(position=2, kind="signoff", name=f"{name}: sign-off", leads_to=Level.INDEPENDENT),
        ]
        db.add(comp)
        found[slug] = comp
    db.flush()
    return found


def _types(db: Session, comps: dict[str, Competency]) -> dict[str, MachineType]:
    found = {t.slug: t for t in db.scalars(select(MachineType))}
    for spec in TYPES:
        if spec.slug in found:
            continue
        mt = MachineType(slug=spec.slug, name=spec.name, name_de=spec.name_de, job_kind=spec.job_kind)
        db.add(mt)
        db.flush()
        db.add(
            Requirement(
                machine_type_id=mt.id, competency_id=comps[spec.competency].id, min_level=Level.INDEPENDENT
            )
        )
        found[spec.slug] = mt
    db.flush()
    return found


@dataclass
class Lab:
    machines: list[MachinePlan]
    facts: dict[int, usage.MachineUsageFacts]
    people_by_site_month: dict[int, dict[date, list[PersonPlan]]]
    trainers: dict[int, list[int]]
    people: int
    admin_email: str


ADMIN_EMAIL = "admin@demo.werkbank.local"
ADMIN_PASSWORD = "demo-admin"  # noqa: S105 - printed by demo-data, like make run's demo logins


def create_lab(db: Session, rng: random.Random, sites: int, machines: int, first: date, last: date) -> Lab:
    """Sites, opening hours, closed days, machine types, machines, devices, people with badges
    and qualification histories (trainers as granted_by; some expire, a few are revoked)."""
    from server.security import hash_password

    comps = _competencies(db)
    types = _types(db, comps)
    password = hash_password(ADMIN_PASSWORD)
    plans: list[MachinePlan] = []
    facts: dict[int, usage.MachineUsageFacts] = {}
    by_site: dict[int, dict[date, list[PersonPlan]]] = {}
    trainers: dict[int, list[int]] = {}
    n_people = 0
    uid_counter = 0
    per_site = [machines // sites + (1 if i < machines % sites else 0) for i in range(sites)]
    years = list(range(first.year, last.year + 1))
    for s in range(sites):
        city = CITIES[s % len(CITIES)] + ("" if s < len(CITIES) else f" {s // len(CITIES) + 1}")
        site = Site(slug=f"lab-{s + 1}", name=f"Lernwerkstatt {city}", timezone=ZONES[s % len(ZONES)])
        db.add(site)
        db.flush()
        late = rng.random() < 0.5
        hours = [(d, time(9), time(18) if d < 4 else time(16)) for d in range(5)]
        if late:  # open late on Tuesdays and Thursdays
            hours = [(d, o, time(20) if d in (1, 3) else c) for d, o, c in hours]
        if rng.random() < 0.6:
            hours.append((5, time(10), time(14)))
        for weekday, opens, closes in hours:
            db.add(OpeningHours(site_id=site.id, weekday=weekday, opens=opens, closes=closes))
        closed = set()
        for year in years:
            closed.update(_holidays(year))
            summer = date(year, 7, 20) + timedelta(days=rng.randint(0, 14))
            closed.update(summer + timedelta(days=i) for i in range(10))
        closed = {d for d in closed if first <= d <= last + timedelta(days=60)}
        for day in sorted(closed):
            db.add(ClosedDay(site_id=site.id, day=day, reason="Feiertag / Ferien"))
        tz = site.timezone
        # Staff: an admin, four trainers.
        staff = []
        admin = Person(
            site_id=site.id,
            name=f"Admin {city}",
            email=ADMIN_EMAIL if s == 0 else f"admin{s + 1}@demo.werkbank.local",
            password_hash=password,
            is_participant=False,
            is_admin=True,
            is_trainer=s == 0,
            language="de",
        )
        staff.append(admin)
        for t in range(4):
            staff.append(
                Person(
                    site_id=site.id,
                    name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                    email=f"trainer{t + 1}.lab{s + 1}@demo.werkbank.local",
                    password_hash=password,
                    is_participant=False,
                    is_trainer=True,
                    language="de",
                )
            )
        db.add_all(staff)
        db.flush()
        site_trainers = [p.id for p in staff if p.is_trainer]
        trainers[site.id] = site_trainers
        for person in staff:
            uid_counter += 1
            db.add(Badge(uid=f"D{uid_counter:07X}", person_id=person.id))
            if person.is_trainer:
                for comp in comps.values():
                    db.add(
                        Qualification(
                            person_id=person.id,
                            competency_id=comp.id,
                            action=QualificationAction.GRANTED,
                            level=Level.TRAINER,
                            valid_until=None if comp.validity_months is None else date(2099, 12, 31),
                            created_at=datetime.combine(first, time(9), tzinfo=UTC),
                            reason="demo data",
                        )
                    )
        n_people += len(staff)
        # Cohorts: three a year (January, April, September), 20-35 participants, 6-10 months.
        months: dict[date, list[PersonPlan]] = defaultdict(list)
        for year in years:
            for term, start_month in (("Frühjahr", 1), ("Sommer", 4), ("Herbst", 9)):
                joined = date(year, start_month, rng.randint(1, 14))
                if joined > last:
                    continue
                programme = rng.choice(PROGRAMMES)
                cohort = f"{programme} {year} {term}"
                leaves = joined + timedelta(days=rng.randint(180, 300))
                members = [
                    Person(
                        site_id=site.id,
                        name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                        cohort=cohort,
                        programme=programme,
                        language=rng.choice(("de", "de", "en", "tr", "ar", "uk")),
                        external_id=f"L{s + 1}-{year}-{start_month:02d}-{n:03d}",
                        active=leaves > last,
                        created_at=datetime.combine(joined, time(9), tzinfo=ZoneInfo(tz)),
                    )
                    for n in range(rng.randint(20, 35))
                ]
                db.add_all(members)
                db.flush()
                for person in members:
                    uid_counter += 1
                    uid = f"D{uid_counter:07X}"
                    db.add(Badge(uid=uid, person_id=person.id))
                    plan = PersonPlan(person.id, cohort, joined, leaves, uid)
                    entries = _qualify(db, rng, person.id, joined, comps, site_trainers, last)
                    forever = datetime.combine(last + timedelta(days=400), time(0), tzinfo=UTC).timestamp()
                    plan.abilities = {cid: abilities(e, tz, forever) for cid, e in entries.items()}
                    month = joined.replace(day=1)
                    while month <= min(leaves, last):
                        months[month].append(plan)
                        month = (month + timedelta(days=32)).replace(day=1)
                n_people += len(members)
        by_site[site.id] = months
        # Machines of this site.
        for i in range(per_site[s]):
            roll, acc_share = rng.random(), 0.0
            spec = TYPES[-1]
            for candidate in TYPES:
                acc_share += candidate.share
                if roll < acc_share:
                    spec = candidate
                    break
            slug = f"l{s + 1}-{spec.slug}-{i + 1}"
            machine = Machine(
                slug=slug,
                name=f"{spec.name_de} {i + 1}",
                site_id=site.id,
                machine_type_id=types[spec.slug].id,
            )
            db.add(machine)
            db.flush()
            device = Device(
                id=f"pi-{slug}"[:40], machine_id=machine.id, online=rng.random() < 0.9, state="idle"
            )
            db.add(device)
            plans.append(
                MachinePlan(
                    machine.id,
                    slug,
                    site.id,
                    machine.machine_type_id,
                    spec,
                    device.id,
                    requires=((comps[spec.competency].id, Level.INDEPENDENT.rank),),
                    trainers=tuple(site_trainers),  # every trainer holds every competency here
                )
            )
            facts[machine.id] = usage.MachineUsageFacts(
                machine_id=machine.id,
                site_id=site.id,
                machine_type_id=machine.machine_type_id,
                timezone=tz,
                hours=tuple(hours),
                closed=frozenset(closed),
            )
    db.flush()
    return Lab(plans, facts, by_site, trainers, n_people, ADMIN_EMAIL)


def _qualify(
    db: Session,
    rng: random.Random,
    person_id: int,
    joined: date,
    comps: dict[str, Competency],
    trainers: Sequence[int],
    last: date,
) -> dict[int, list[Entry]]:
    """briefed → supervised → independent on one to three competencies, as trainers grant them.
    Returns each competency's entries, for :func:`abilities`."""
    out: dict[int, list[Entry]] = {}
    for slug in rng.sample(list(comps), rng.randint(1, 3)):
        comp = comps[slug]

        def add(entry: Qualification) -> None:
            db.add(entry)
            entries = out.setdefault(entry.competency_id, [])
            at = entry.created_at.timestamp()
            entries.append(Entry(len(entries), at, entry.action, entry.level, entry.valid_until))

        at = joined + timedelta(days=rng.randint(1, 10))
        for level, go_on in ((Level.BRIEFED, 0.85), (Level.SUPERVISED, 0.7), (Level.INDEPENDENT, 0.0)):
            if at > last:
                break
            valid = None
            if comp.validity_months:
                valid = at + timedelta(days=30 * comp.validity_months)
            add(
                Qualification(
                    person_id=person_id,
                    competency_id=comp.id,
                    action=QualificationAction.GRANTED,
                    level=level,
                    valid_until=valid,
                    granted_by_id=rng.choice(trainers),
                    reason="demo data",
                    created_at=datetime.combine(at, time(11), tzinfo=UTC),
                )
            )
            if valid is not None and valid < last and rng.random() < 0.7:
                add(
                    Qualification(
                        person_id=person_id,
                        competency_id=comp.id,
                        action=QualificationAction.EXPIRED,
                        level=level,
                        valid_until=valid,
                        reason="expired",
                        created_at=datetime.combine(valid + timedelta(days=1), time(0, 5), tzinfo=UTC),
                    )
                )
            if rng.random() < 0.02:
                add(
                    Qualification(
                        person_id=person_id,
                        competency_id=comp.id,
                        action=QualificationAction.REVOKED,
                        level=level,
                        granted_by_id=rng.choice(trainers),
                        reason="safety rule broken (demo data)",
                        created_at=datetime.combine(at + timedelta(days=5), time(15), tzinfo=UTC),
                    )
                )
                break
            if rng.random() > go_on:
                break
            at += timedelta(days=rng.randint(7, 40))
    return out


@dataclass
class Summary:
    sites: int
    machines: int
    people: int
    sessions: int
    rows: dict[str, int]
    seconds: float


def generate(
    engine: Engine,
    sites: int,
    machines: int,
    years: float,
    seed: int,
    now: datetime,
    progress: Callable[[int], None] | None = None,
    batch_machines: int = 5,
) -> Summary:
    """Fill a migrated, empty database with ``years`` of history ending yesterday."""
    import time as clock

    begun = clock.monotonic()
    rng = random.Random(seed)
    last = (now - timedelta(days=1)).date()
    first = last - timedelta(days=max(1, round(years * 365.25)))
    with Session(engine) as db:
        lab = create_lab(db, rng, sites, machines, first, last)
        db.commit()
    totals: dict[str, int] = defaultdict(int)
    sessions = 0
    # One thread writes a batch while the next is generated: the database's side of COPY
    # (indexes, WAL) and Python's side then overlap instead of taking turns.
    batches: queue.Queue[Tables | None] = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def writer() -> None:
        try:
            with engine.connect() as conn:
                while (batch := batches.get()) is not None:
                    write(conn, batch)
                    conn.commit()
        except BaseException as exc:
            failed.append(exc)
            while batches.get() is not None:  # let the generator finish its puts
                pass

    thread = threading.Thread(target=writer, name="demo-data-writer", daemon=True)
    thread.start()
    tables = Tables()
    try:
        for n, plan in enumerate(lab.machines, 1):
            facts = lab.facts[plan.machine_id]
            tz = ZoneInfo(facts.timezone)
            local_today = now.astimezone(tz).date()
            month = first.replace(day=1)
            days = [month + timedelta(days=i) for i in range((local_today - month).days + 1)]
            machine_rng = random.Random(f"{seed}-{plan.slug}")
            sessions += machine_history(
                machine_rng,
                plan,
                facts,
                days,
                lab.people_by_site_month[plan.site_id],
                first,
                now.timestamp(),
                tables,
            )
            if n % batch_machines == 0 or n == len(lab.machines):
                for table, rows in tables.rows.items():
                    totals[table] += len(rows)
                batches.put(tables)
                tables = Tables()
            if failed:
                break
            if progress is not None:
                progress(1)
    finally:
        batches.put(None)
        thread.join()
    if failed:
        raise failed[0]
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
    return Summary(sites, len(lab.machines), lab.people, sessions, dict(totals), clock.monotonic() - begun)
