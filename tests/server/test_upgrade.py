"""Upgrading a lab's database: from the oldest schema (0001) with a lab's data in it to the newest,
on SQLite and PostgreSQL; and refusing to run on a schema this code does not know.

The data is written with plain SQL Core against each revision's own tables (reflected from the
database, never the current models), step by step: people, badges, machines, qualifications,
sessions and jobs at 0001, step records and an API token at 0003, bookings at 0004. After
``werkbank db upgrade`` it must read right through the app: the decisions, the dashboards' and the
funder report's hours (the usage aggregates did not exist before 0006), the API, a login.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from sqlalchemy import Connection, MetaData, create_engine, insert, inspect, select, text
from sqlalchemy.engine import make_url

from server import create_app
from server.config import TestConfig
from server.db import Database, make_engine, normalise_url
from server.migrate import SchemaError, require_current, schema_state, upgrade
from server.security import hash_password
from server.services.tokens import hash_token
from tests.hours_support import assert_totals_match

ROOT = Path(__file__).resolve().parents[2]
TZ = ZoneInfo("Europe/Berlin")
OLDEST = "0001"
ADA_PASSWORD = "admin-pass-2025"


# -- a database that starts empty, on each backend -------------------------------------------------


BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("TEST_DATABASE_URL") else [])


@pytest.fixture(params=BACKENDS)
def blank_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database without any schema: a SQLite file always (the upgrade rebuilds tables
    there, where the trouble is), and a private PostgreSQL database when TEST_DATABASE_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lab.sqlite'}"
        return
    yield from _postgres_database()


def _postgres_database() -> Iterator[str]:
    base = make_url(normalise_url(os.environ["TEST_DATABASE_URL"]))
    name = f"werkbank_upgrade_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


# -- the lab, written at the revision where each table appears ------------------------------------


def _utc(day: date, hour: float) -> datetime:
    """Naive UTC (how every revision stores times) of a local Berlin day and hour."""
    local = datetime.combine(day, clock_time(int(hour), round(hour % 1 * 60)), TZ)
    return local.astimezone(UTC).replace(tzinfo=None)


@dataclass
class Lab:
    """What was written, to check against after the upgrade."""

    today: date  # local, Berlin
    people: dict[str, int] = field(default_factory=dict)  # first name -> id
    badges: dict[str, tuple[str, str]] = field(default_factory=dict)  # first name -> (uid, status)
    machines: dict[str, int] = field(default_factory=dict)
    sessions: dict[str, float] = field(default_factory=dict)  # id -> unlocked_s
    hours_by_person: dict[str, float] = field(default_factory=dict)
    jobs: dict[str, str] = field(default_factory=dict)  # job id -> session id
    qualifications: dict[str, int] = field(default_factory=dict)  # first name -> history entries
    api_token: str = ""

    @property
    def total_hours(self) -> float:
        return sum(self.sessions.values()) / 3600


def _put(conn: Connection, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert through the table as the database has it at this revision (reflected): one tuple per
    row, in the order of ``columns``; columns not named get the revision's defaults (none)."""
    meta = MetaData()
    meta.reflect(conn, only=[table])
    names = columns.split()
    conn.execute(insert(meta.tables[table]), [dict(zip(names, row, strict=True)) for row in rows])


def _at_0001(conn: Connection, lab: Lab) -> None:
    today = lab.today
    created = _utc(today - timedelta(days=400), 9)
    _put(conn, "sites", "id slug name timezone created_at", [
        (1, "werkstatt-nord", "Werkstatt Nord", "Europe/Berlin", created),
    ])  # fmt: skip
    _put(conn, "opening_hours", "site_id machine_id weekday opens closes", [
        (1, None, weekday, clock_time(8), clock_time(20)) for weekday in range(5)
    ])  # fmt: skip
    _put(conn, "competencies", "id slug name name_de validity_months prerequisite_id", [
        (1, "fdm-printing", "FDM 3D printing", "FDM-3D-Druck", None, None),
        (2, "laser-safety", "Laser safety briefing", "Laser-Sicherheitsunterweisung", 12, None),
    ])  # fmt: skip
    _put(conn, "training_steps", "id competency_id position kind name leads_to hours", [
        (1, 1, 1, "briefing", "Safety and slicer briefing", "briefed", None),
        (2, 1, 2, "signoff", "Practical sign-off", "independent", None),
        (3, 2, 1, "briefing", "Laser safety briefing", "briefed", None),
    ])  # fmt: skip
    _put(conn, "machine_types", "id slug name job_kind", [
        (1, "fdm-printer", "FDM 3D printer", "print"),
        (2, "co2-laser", "CO2 laser cutter", "cut"),
    ])  # fmt: skip
    _put(conn, "requirements", "machine_type_id competency_id min_level", [
        (1, 1, "briefed"),
        (2, 2, "independent"),
    ])  # fmt: skip
    lab.machines = {"printer-1": 1, "laser-1": 2}
    _put(
        conn,
        "machines",
        "id slug name machine_type_id site_id status max_session_min idle_timeout_min guard_min "
        "allowlist_key allowlist_version allowlist_dirty allowlist_published_at live_state live_running",
        [
            (1, "printer-1", "Prusa MK4", 1, 1, "available", 240, 15, 10, secrets.token_hex(32), 3, False,
             created, "idle", False),
            (2, "laser-1", "Laser 1", 2, 1, "available", 240, 15, 10, secrets.token_hex(32), 3, False,
             created, "idle", False),
        ],
    )  # fmt: skip
    _put(
        conn,
        "devices",
        "id machine_id password_hash online state last_seen agent_version config_hash allowlist_version "
        "created_at",
        [
            (f"pi-{slug}", machine_id, hash_password(f"device-{slug}"), False, "idle", created, "0.9.0",
             None, 3, created)
            for slug, machine_id in lab.machines.items()
        ],
    )  # fmt: skip
    people = [  # id, name, email, password, participant, trainer, admin, cohort, programme, language
        (1, "Ada Admin", "ada@werkstatt.example", hash_password(ADA_PASSWORD), False, False, True, None, None,
         "en"),
        (2, "Tina Trainer", "tina@werkstatt.example", None, False, True, False, None, None, "de"),
        (3, "Paul Participant", None, None, True, False, False, "2025-A", "AVGS", "de"),
        (4, "Petra Participant", None, None, True, False, False, "2025-B", "AVGS", "de"),
        (5, "Rolf Revoked", None, None, True, False, False, "2025-A", None, "de"),
        (6, "Lena Lost", None, None, True, False, False, "2025-B", None, "de"),
    ]  # fmt: skip
    _put(
        conn,
        "people",
        "id name email password_hash is_participant is_trainer is_admin cohort programme language "
        "site_id active created_at",
        [(*person, 1, True, created) for person in people],
    )
    lab.people = {name.split()[0]: pid for pid, name, *_ in people}
    lab.badges = {
        "Ada": ("AD000001", "active"),
        "Tina": ("A1B2C3D4", "active"),
        "Paul": ("04A224B2C35E80", "active"),
        "Petra": ("0BADCAFE", "active"),
        "Rolf": ("7070BEEF", "active"),
        "Lena": ("1E2A1E2A", "lost"),
    }
    _put(conn, "badges", "uid person_id status issued_at", [
        (uid, lab.people[name], status, created) for name, (uid, status) in lab.badges.items()
    ])  # fmt: skip

    # Who, competency, action, level, days ago, valid until (days from today).
    history = [
        ("Tina", 1, "granted", "trainer", 390, None),
        ("Tina", 2, "granted", "trainer", 390, 300),
        ("Paul", 1, "granted", "briefed", 60, None),
        ("Paul", 1, "granted", "independent", 40, None),
        ("Paul", 2, "granted", "independent", 400, -35),
        ("Paul", 2, "renewed", "independent", 38, 327),
        ("Petra", 1, "granted", "independent", 50, None),
        ("Petra", 2, "granted", "supervised", 300, -1),  # ran out yesterday
        ("Rolf", 1, "granted", "independent", 90, None),
        ("Rolf", 1, "revoked", "independent", 30, None),
        ("Lena", 1, "granted", "independent", 45, None),
    ]
    _put(
        conn,
        "qualifications",
        "person_id competency_id action level valid_until granted_by_id reason created_at",
        [
            (lab.people[name], competency, action, level,
             today + timedelta(days=valid) if valid is not None else None, lab.people["Tina"],
             "unsafe use" if action == "revoked" else None, _utc(today - timedelta(days=ago), 11))
            for name, competency, action, level, ago, valid in history
        ],
    )  # fmt: skip
    for name, *_ in history:
        lab.qualifications[name] = lab.qualifications.get(name, 0) + 1

    # Sessions of the last weeks, each within one local day, one job each:
    # who, machine, days ago, local hour, hours, mode, trainer.
    used = [
        ("Paul", "printer-1", 20, 10, 2.0, "use", None),
        ("Paul", "printer-1", 13, 14, 1.5, "use", None),
        ("Paul", "printer-1", 6, 9, 3.0, "use", None),
        ("Paul", "laser-1", 12, 11, 1.0, "use", None),
        ("Petra", "laser-1", 15, 10, 2.0, "supervise", "Tina"),
        ("Petra", "printer-1", 4, 16, 0.5, "use", None),
        ("Tina", "printer-1", 2, 8, 1.5, "use", None),
    ]
    sessions, jobs, events, decisions = [], [], [], []
    for name, slug, ago, hour, hours, mode, trainer in used:
        sid, job = str(uuid.uuid4()), str(uuid.uuid4())
        start = _utc(today - timedelta(days=ago), hour)
        end = start + timedelta(hours=hours)
        unlocked = hours * 3600
        device, machine_id, uid = f"pi-{slug}", lab.machines[slug], lab.badges[name][0]
        sessions.append(
            (sid, machine_id, device, lab.people[name], lab.people[trainer] if trainer else None, uid, mode,
             False, start, end, "tap_out", unlocked, unlocked * 0.75, start)
        )  # fmt: skip
        jobs.append(
            (job, sid, machine_id, "print" if slug.startswith("printer") else "cut",
             f"{name.lower()}-{ago}.gcode", unlocked / 2, start + timedelta(minutes=5),
             start + timedelta(minutes=5, seconds=unlocked / 2), "completed", unlocked / 2, 1000.0, 12.5)
        )  # fmt: skip
        events += [
            (str(uuid.uuid4()), device, kind, sid, at, at, {"v": 1, "type": kind, "session_id": sid})
            for kind, at in (("session_started", start), ("session_ended", end))
        ]
        decisions.append(
            (str(uuid.uuid4()), device, machine_id, uid, lab.people[name], mode, "allow", "ok", sid, start,
             {"decision": "allow", "reason": "ok"})
        )  # fmt: skip
        lab.sessions[sid] = unlocked
        lab.jobs[job] = sid
        lab.hours_by_person[name] = lab.hours_by_person.get(name, 0.0) + hours
    _put(
        conn,
        "sessions",
        "id machine_id device_id person_id trainer_id badge_uid mode offline started_at ended_at end_reason "
        "unlocked_s run_s created_at",
        sessions,
    )
    _put(
        conn,
        "jobs",
        "id session_id machine_id kind file estimated_s started_at finished_at status duration_s filament_mm "
        "filament_g",
        jobs,
    )
    _put(conn, "events", "id device_id type session_id ts received_at payload", events)
    _put(
        conn,
        "access_decisions",
        "id device_id machine_id badge_uid person_id mode decision reason session_id decided_at response",
        decisions,
    )
    _put(conn, "audit_log", "at actor_id actor_label action subject detail", [
        (created, lab.people["Ada"], "Ada Admin", "qualification.revoke", "person:5",
         {"competency": "fdm-printing"}),
    ])  # fmt: skip


def _at_0003(conn: Connection, lab: Lab) -> None:
    today = lab.today
    _put(
        conn,
        "step_records",
        "person_id competency_id step_id recorded_by_id source session_id note recorded_at",
        [
            (lab.people["Paul"], 1, step, lab.people["Tina"], "web", None, None,
             _utc(today - timedelta(days=ago), 12))
            for step, ago in ((1, 60), (2, 40))
        ],
    )  # fmt: skip
    lab.api_token = "wb_" + secrets.token_hex(24)
    _put(
        conn,
        "api_tokens",
        "person_id name token_hash prefix created_at last_used_at expires_at revoked_at",
        [
            (lab.people["Ada"], "reporting", hash_token(lab.api_token), lab.api_token[:12],
             _utc(today - timedelta(days=30), 9), None, None, None),
        ],
    )  # fmt: skip
    _put(conn, "notifications", "person_id kind key params created_at read_at emailed_at", [
        (lab.people["Petra"], "qualification_expiring", "expiring:2", {"competency": "laser-safety"},
         _utc(today - timedelta(days=20), 7), None, None),
    ])  # fmt: skip


def _at_0004(conn: Connection, lab: Lab) -> None:
    today = lab.today
    _put(
        conn,
        "booking_policies",
        "site_id min_slot_min max_slot_min slot_step_min min_lead_min max_ahead_days cancel_deadline_min "
        "weekly_quota_h no_show_after_min no_show_limit no_show_window_days no_show_block_days "
        "reminder_before_min",
        [(1, 30, 240, 30, 0, 28, 60, 10.0, 15, 3, 30, 7, 60)],
    )
    used, missed, coming = (today - timedelta(days=ago) for ago in (6, 5, -3))
    paul, petra = lab.people["Paul"], lab.people["Petra"]
    _put(
        conn,
        "bookings",
        "id person_id starts_at ends_at status no_show checked_in_at released_at created_at "
        "machine_id trainer_id note created_by_id cancelled_at cancelled_by_id reminded_at",
        [
            (*booking, lab.machines["printer-1"], None, None, None, None, None, None)
            for booking in (
                # Paul's booking around his three-hour session six days ago: booked and used.
                (str(uuid.uuid4()), paul, _utc(used, 9), _utc(used, 12), "booked", False, _utc(used, 9), None,
                 _utc(used - timedelta(days=2), 9)),
                # Petra did not come five days ago: released as a no-show.
                (str(uuid.uuid4()), petra, _utc(missed, 14), _utc(missed, 15), "released", True, None,
                 _utc(missed, 14.25), _utc(missed - timedelta(days=1), 9)),
                # Petra's booking in three days, in the afternoon.
                (str(uuid.uuid4()), petra, _utc(coming, 15), _utc(coming, 16), "booked", False, None, None,
                 _utc(today, 7)),
            )
        ],
    )  # fmt: skip


def _old_lab(url: str) -> Lab:
    """The lab as an installation from the first release would hold it, written revision by revision."""
    lab = Lab(today=datetime.now(UTC).astimezone(TZ).date())
    engine = make_engine(url)
    try:
        for revision, write in (("0001", _at_0001), ("0003", _at_0003), ("0004", _at_0004), ("0005", None)):
            upgrade(url, revision)
            if write is not None:
                with engine.begin() as conn:
                    write(conn, lab)
    finally:
        engine.dispose()
    return lab


def _app(url: str) -> Flask:
    return create_app(TestConfig, DATABASE_URL=url)


# -- the upgrade -----------------------------------------------------------------------------------


def test_upgrade_from_the_oldest_schema_keeps_and_shows_every_record(blank_url: str) -> None:
    lab = _old_lab(blank_url)
    assert schema_state(blank_url).revisions == ("0005",)

    app = _app(blank_url)
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    head = schema_state(blank_url).heads[0]
    assert f"upgraded the database schema from 0005 to {head}" in result.output
    assert "computed the usage aggregates from the history" in result.output
    assert require_current(blank_url, "web").current

    from server.extensions import db

    _check_records(db, lab)
    _check_decisions(db, lab)
    _check_figures(db, lab)
    _check_web_and_api(app, lab)
    db.dispose()


def _check_records(db: Database, lab: Lab) -> None:
    from server.models import (
        Badge,
        Booking,
        BookingStatus,
        Job,
        Level,
        MachineSession,
        Person,
        Qualification,
        StepRecord,
    )
    from server.services.training import newest, state_of

    with db.session() as s:
        people = {p.name.split()[0]: p for p in s.scalars(select(Person))}
        assert {n: p.id for n, p in people.items()} == lab.people
        assert people["Paul"].cohort == "2025-A" and people["Paul"].programme == "AVGS"
        assert people["Ada"].is_admin and people["Tina"].is_trainer and not people["Tina"].is_participant
        badges = {b.uid: (b.person_id, b.status.value) for b in s.scalars(select(Badge))}
        assert badges == {uid: (lab.people[n], status) for n, (uid, status) in lab.badges.items()}
        for name, count in lab.qualifications.items():
            entries = s.scalars(
                select(Qualification).where(Qualification.person_id == lab.people[name])
            ).all()
            assert len(entries) == count, name
        paul_fdm = state_of(newest(s, lab.people["Paul"], 1), lab.today)
        assert paul_fdm is not None and paul_fdm.usable and paul_fdm.level == Level.INDEPENDENT
        paul_laser = state_of(newest(s, lab.people["Paul"], 2), lab.today)
        assert paul_laser is not None and paul_laser.usable  # renewed
        rolf = state_of(newest(s, lab.people["Rolf"], 1), lab.today)
        assert rolf is not None and rolf.revoked
        sessions = {m.id: m for m in s.scalars(select(MachineSession))}
        assert {sid: m.unlocked_s for sid, m in sessions.items()} == lab.sessions
        # Migration 0024 filled each machine's total machine hours from the sessions there were.
        totals = assert_totals_match(s)
        assert {slug: seconds / 3600 for slug, seconds in totals.items()} == {
            "printer-1": 8.5,
            "laser-1": 3.0,
        }
        assert all(m.ended_at is not None and m.flag is None for m in sessions.values())
        jobs = {j.id: j for j in s.scalars(select(Job))}
        assert {jid: j.session_id for jid, j in jobs.items()} == lab.jobs
        assert len(s.scalars(select(StepRecord)).all()) == 2
        statuses = sorted(s.scalars(select(Booking.status).where(Booking.person_id == lab.people["Petra"])))
        assert statuses == sorted([BookingStatus.BOOKED, BookingStatus.RELEASED])


def _decision_time(today: date) -> datetime:
    """Next Wednesday, 10:00 in Berlin: inside the opening hours, nobody else's booking."""
    day = today + timedelta(days=(2 - today.weekday()) % 7 or 7)
    return datetime.combine(day, clock_time(10), TZ).astimezone(UTC)


def _check_decisions(db: Database, lab: Lab) -> None:
    from server.models import Machine
    from server.services.decision import decide

    now = _decision_time(lab.today)
    expected = {
        ("printer-1", "Paul"): "ok",
        ("laser-1", "Paul"): "ok",  # renewed
        ("printer-1", "Petra"): "ok",
        ("laser-1", "Petra"): "qualification_expired",
        ("printer-1", "Rolf"): "not_qualified",  # revoked
        ("printer-1", "Lena"): "badge_blocked",  # lost
        ("laser-1", "Ada"): "not_qualified",
    }
    with db.session() as s:
        machines = {m.slug: m for m in s.scalars(select(Machine))}
        found = {
            (slug, name): decide(s, machines[slug], lab.badges[name][0], now).reason
            for slug, name in expected
        }
    assert found == expected


def _check_figures(db: Database, lab: Lab) -> None:
    from server.services import dashboards, reports

    start = lab.today - timedelta(days=30)
    with db.session() as s:
        usage = dashboards.utilisation(s, 1, None, None, start, lab.today)
        assert usage.totals.unlocked_h == pytest.approx(lab.total_hours)
        assert usage.totals.run_h == pytest.approx(lab.total_hours * 0.75)
        assert usage.totals.sessions == len(lab.sessions)
        assert usage.totals.jobs == len(lab.jobs)
        assert usage.totals.filament_g == pytest.approx(12.5 * len(lab.jobs))
        assert usage.totals.booked_h == pytest.approx(4.0)  # Paul's three hours and Petra's missed one
        assert usage.totals.booked_used_h == pytest.approx(3.0)
        assert usage.totals.no_shows == 1
        by_machine = {m.slug: m.figures.unlocked_h for m in usage.machines}
        assert by_machine == pytest.approx({"printer-1": 8.5, "laser-1": 3.0})
        assert sum(map(sum, usage.heatmap)) == pytest.approx(lab.total_hours)
        cohort_a = dashboards.utilisation(s, 1, None, "2025-A", start, lab.today)
        assert cohort_a.totals.unlocked_h == pytest.approx(lab.hours_by_person["Paul"])

        first = (start - timedelta(days=31)).replace(day=1)
        report = reports.funder_report(s, 1, None, None, first, lab.today, pseudonyms=False, lang="en")
        hours = {row.label.split()[0]: row.usage.unlocked_s / 3600 for row in report.participants}
        participants = {n: lab.hours_by_person.get(n, 0.0) for n in ("Paul", "Petra")}
        assert {n: hours[n] for n in participants} == pytest.approx(participants)
        petra = next(row for row in report.participants if row.label.startswith("Petra"))
        assert petra.usage.supervised_s == pytest.approx(2 * 3600)


def _check_web_and_api(app: Flask, lab: Lab) -> None:
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    login = client.post("/login", data={"email": "ada@werkstatt.example", "password": ADA_PASSWORD})
    assert login.status_code == 302, "the admin of the first release can still log in"
    start = lab.today - timedelta(days=30)
    page = client.get(f"/dashboards/usage?from={start}&to={lab.today}")
    assert page.status_code == 200
    assert f'data-total="unlocked">{lab.total_hours:.1f}<' in page.get_data(as_text=True)

    api = app.test_client()
    headers = {"Authorization": f"Bearer {lab.api_token}"}
    answer = api.get("/api/v1/sessions?limit=100", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    items = answer.get_json()["items"]
    assert {i["id"]: i["unlocked_s"] for i in items} == lab.sessions
    assert {j["id"] for i in items for j in i["jobs"]} == set(lab.jobs)


def test_upgrade_on_sqlite_with_rows_pointing_nowhere_changes_nothing(tmp_path: Path) -> None:
    """SQLite migrations run with foreign keys off (a table rebuild drops the table others point at)
    and in one transaction; a row pointing at nothing afterwards undoes the whole upgrade."""
    path = tmp_path / "old.sqlite"
    url = f"sqlite:///{path}"
    upgrade(url, OLDEST)
    raw = sqlite3.connect(path)  # foreign keys are off by default: the row goes in
    raw.execute(
        "INSERT INTO badges (uid, person_id, status, issued_at) "
        "VALUES ('ABCD0001', 42, 'active', '2025-01-01')"
    )
    raw.commit()
    tables_before = _sqlite_schema(raw)

    app = _app(url)
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1, result.output
    assert "badges row 1 -> people" in result.output and "nothing was changed" in result.output
    assert _sqlite_schema(raw) == tables_before
    assert raw.execute("SELECT version_num FROM alembic_version").fetchall() == [(OLDEST,)]

    raw.execute("DELETE FROM badges")
    raw.commit()
    raw.close()
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert schema_state(url).current
    from server.extensions import db

    db.dispose()


def test_an_upgrade_that_stops_before_the_newest_says_how_to_fill_the_aggregates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    upgrade(url, "0005")
    result = _app(url).test_cli_runner().invoke(args=["db", "upgrade", "--revision", "0006"])
    assert result.exit_code == 0, result.output
    assert "upgraded the database schema from 0005 to 0006 (1 migrations)" in result.output
    assert "run `werkbank usage rebuild`" in result.output
    unknown = _app(url).test_cli_runner().invoke(args=["db", "upgrade", "--revision", "0042"])
    assert unknown.exit_code == 1 and "'0042'" in unknown.output and "Nothing was changed" in unknown.output
    assert schema_state(url).revisions == ("0006",)
    from server.extensions import db

    db.dispose()


def _sqlite_schema(raw: sqlite3.Connection) -> list[tuple[str, str]]:
    return raw.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()


# -- a schema this code does not know --------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def current_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lab.sqlite'}"
        upgrade(url)
        yield url
        return
    for url in _postgres_database():
        upgrade(url)
        yield url


def _newer(url: str) -> None:
    """What a newer Werkbank's upgrade leaves: a revision and a table this code has never seen."""
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE future_things (id INTEGER PRIMARY KEY, what VARCHAR(40))"))
        conn.execute(text("INSERT INTO future_things (id, what) VALUES (1, 'kept')"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()


def _snapshot(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return {
                "version": conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all(),
                "tables": {
                    t: sorted(c["name"] for c in found.get_columns(t)) for t in found.get_table_names()
                },
                "future": conn.execute(text("SELECT what FROM future_things")).scalars().all(),
            }
    finally:
        engine.dispose()


def _werkbank(url: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, DATABASE_URL=url, MQTT_URL="mqtt://127.0.0.1:9", WERKBANK_VAR_DIR=str(tmp_path))
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


PROCESSES = {
    "db upgrade": ("server", "db", "upgrade"),
    "web": ("server", "web", "--port", "0"),
    "bridge": ("server", "bridge"),
    "scheduler": ("server", "scheduler"),
    "gunicorn": (
        "gunicorn",
        "--workers",
        "2",
        "--no-control-socket",
        "--bind",
        "127.0.0.1:0",
        "server.wsgi:app",
    ),
}


def _refusals(url: str, tmp_path: Path, names: list[str]) -> dict[str, tuple[int, str]]:
    """Start the processes at once; each must exit by itself (a process that started would run
    until killed): name -> (exit code, output)."""
    running = {name: _werkbank(url, tmp_path, *PROCESSES[name]) for name in names}
    deadline = time.monotonic() + 60
    done: dict[str, tuple[int, str]] = {}
    try:
        for name, proc in running.items():
            try:
                out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"`{name}` started on a schema it must refuse")
            done[name] = (proc.returncode, out)
    finally:
        for proc in running.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def _says(out: str, *phrases: str) -> bool:
    flat = " ".join(out.split())  # click wraps nothing, but gunicorn's log lines may
    return all(phrase in flat for phrase in phrases)


def test_a_newer_schema_is_neither_upgraded_nor_served(current_url: str) -> None:
    _newer(current_url)
    before = _snapshot(current_url)
    head = schema_state(current_url).heads[0]
    unknown = f"schema is at revision 0099, which this Werkbank (schema {head}) does not know"
    advice = "Install that newer Werkbank again, or restore the backup"

    result = _app(current_url).test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 1
    assert _says(result.output, unknown, advice, "Nothing was changed"), result.output
    for process in ("web", "bridge", "scheduler"):
        with pytest.raises(SchemaError) as refused:
            require_current(current_url, process)
        assert _says(str(refused.value), f"werkbank {process} does not start", unknown, advice)
    assert _snapshot(current_url) == before
    from server.extensions import db

    db.dispose()


def test_an_older_schema_is_not_served_until_upgraded(blank_url: str) -> None:
    upgrade(blank_url, "0009")
    with pytest.raises(
        SchemaError, match=r"revision 0009, older than this Werkbank's .* `werkbank db upgrade`"
    ):
        require_current(blank_url, "bridge")
    cli = _app(blank_url).test_cli_runner()
    status = cli.invoke(args=["db", "status"])
    assert status.exit_code == 1 and "database schema: 0009" in status.output
    upgraded = cli.invoke(args=["db", "upgrade"])
    assert upgraded.exit_code == 0 and "from 0009 to" in upgraded.output
    status = cli.invoke(args=["db", "status"])
    assert status.exit_code == 0 and "the schema is current" in status.output
    assert cli.invoke(args=["db", "upgrade"]).output.startswith("database is up to date")
    assert require_current(blank_url, "bridge").current
    from server.extensions import db

    db.dispose()


# The real processes, as systemd and `werkbank up` start them: each must exit by itself, with its
# reason (one that started would run until killed). On SQLite only: the check is the same code on
# both databases (above), and every process start costs seconds.


def test_processes_refuse_to_start_on_a_newer_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lab.sqlite'}"
    upgrade(url)
    _newer(url)
    before = _snapshot(url)
    head = schema_state(url).heads[0]
    refused = _refusals(url, tmp_path, list(PROCESSES))
    for name, (code, out) in refused.items():
        assert code != 0, (name, out)
        assert _says(
            out,
            f"schema is at revision 0099, which this Werkbank (schema {head}) does not know",
            "Install that newer Werkbank again, or restore the backup",
        ), (name, out)
    assert "Nothing was changed" in refused["db upgrade"][1]
    assert "Worker failed to boot" in refused["gunicorn"][1]
    assert _snapshot(url) == before


def test_processes_refuse_to_start_on_an_older_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lab.sqlite'}"
    upgrade(url, "0009")
    refused = _refusals(url, tmp_path, ["web", "bridge", "scheduler", "gunicorn"])
    for name, (code, out) in refused.items():
        assert code != 0, (name, out)
        assert _says(
            out, "schema is at revision 0009, older than this Werkbank's", "run `werkbank db upgrade`"
        ), (
            name,
            out,
        )
    assert schema_state(url).revisions == ("0009",)


def test_an_empty_database_is_not_served(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    with pytest.raises(SchemaError, match=r"no Werkbank schema yet\. Run `werkbank db upgrade` first"):
        require_current(url, "bridge")


# -- no way back but a backup -------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["0009", "0005", "-1", "base"])
def test_an_upgrade_to_an_older_revision_is_refused_and_changes_nothing(
    current_url: str, target: str
) -> None:
    """`werkbank db upgrade --revision OLDER` used to say "database is up to date" and do nothing,
    as if the schema were now at OLDER: it is refused, with the way back (a backup)."""
    engine = make_engine(current_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE future_things (id INTEGER PRIMARY KEY, what VARCHAR(40))"))
        conn.execute(text("INSERT INTO future_things (id, what) VALUES (1, 'kept')"))
    engine.dispose()
    before = _snapshot(current_url)
    head = schema_state(current_url).heads[0]

    result = _app(current_url).test_cli_runner().invoke(args=["db", "upgrade", "--revision", target])
    assert result.exit_code == 1, result.output
    assert _says(
        result.output,
        f"the database's schema is at revision {head}",
        "is older",
        "only goes forward",
        "restore the backup taken before the upgrade",
        "Nothing was changed",
    ), result.output
    assert "up to date" not in result.output
    assert _snapshot(current_url) == before
    from server.extensions import db

    db.dispose()


def test_an_upgrade_to_the_revision_the_database_is_at_or_a_newer_one_still_works(blank_url: str) -> None:
    upgrade(blank_url, "0009")
    cli = _app(blank_url).test_cli_runner()
    same = cli.invoke(args=["db", "upgrade", "--revision", "0009"])
    assert same.exit_code == 0 and same.output.startswith("database is up to date"), same.output
    forward = cli.invoke(args=["db", "upgrade", "--revision", "0010"])
    assert forward.exit_code == 0 and "from 0009 to 0010" in forward.output, forward.output
    assert cli.invoke(args=["db", "upgrade", "--revision", "0009"]).exit_code == 1
    assert schema_state(blank_url).revisions == ("0010",)
    from server.extensions import db

    db.dispose()
