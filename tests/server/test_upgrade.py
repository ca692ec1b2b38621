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


def _put(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert through the table as the database has it at this revision (reflected)."""
    meta = MetaData()
    meta.reflect(conn, only=[table])
    conn.execute(insert(meta.tables[table]), rows)


def _at_0001(conn: Connection, lab: Lab) -> None:
    today = lab.today
    created = _utc(today - timedelta(days=400), 9)
    _put(
        conn,
        "sites",
        [
            {
                "id": 1,
                "slug": "werkstatt-nord",
                "name": "Werkstatt Nord",
                "timezone": "Europe/Berlin",
                "created_at": created,
            }
        ],
    )
    _put(
        conn,
        "opening_hours",
        [
            {
                "site_id": 1,
                "machine_id": None,
                "weekday": wd,
                "opens": clock_time(8),
                "closes": clock_time(20),
            }
            for wd in range(5)
        ],
    )
    _put(
        conn,
        "competencies",
        [
            {
                "id": 1,
                "slug": "fdm-printing",
                "name": "FDM 3D printing",
                "name_de": "FDM-3D-Druck",
                "validity_months": None,
                "prerequisite_id": None,
            },
            {
                "id": 2,
                "slug": "laser-safety",
                "name": "Laser safety briefing",
                "name_de": "Laser-Sicherheitsunterweisung",
                "validity_months": 12,
                "prerequisite_id": None,
            },
        ],
    )
    _put(
        conn,
        "training_steps",
        [
            {
                "id": 1,
                "competency_id": 1,
                "position": 1,
                "kind": "briefing",
                "name": "Safety and slicer briefing",
                "leads_to": "briefed",
                "hours": None,
            },
            {
                "id": 2,
                "competency_id": 1,
                "position": 2,
                "kind": "signoff",
                "name": "Practical sign-off",
                "leads_to": "independent",
                "hours": None,
            },
            {
                "id": 3,
                "competency_id": 2,
                "position": 1,
                "kind": "briefing",
                "name": "Laser safety briefing",
                "leads_to": "briefed",
                "hours": None,
            },
        ],
    )
    _put(
        conn,
        "machine_types",
        [
            {"id": 1, "slug": "fdm-printer", "name": "FDM 3D printer", "job_kind": "print"},
            {"id": 2, "slug": "co2-laser", "name": "CO2 laser cutter", "job_kind": "cut"},
        ],
    )
    _put(
        conn,
        "requirements",
        [
            {"machine_type_id": 1, "competency_id": 1, "min_level": "briefed"},
            {"machine_type_id": 2, "competency_id": 2, "min_level": "independent"},
        ],
    )
    machine = {
        "site_id": 1,
        "status": "available",
        "max_session_min": 240,
        "idle_timeout_min": 15,
        "guard_min": 10,
        "allowlist_version": 3,
        "allowlist_dirty": False,
        "allowlist_published_at": created,
        "live_state": "idle",
        "live_running": False,
    }
    _put(
        conn,
        "machines",
        [
            machine
            | {
                "id": 1,
                "slug": "printer-1",
                "name": "Prusa MK4",
                "machine_type_id": 1,
                "allowlist_key": secrets.token_hex(32),
            },
            machine
            | {
                "id": 2,
                "slug": "laser-1",
                "name": "Laser 1",
                "machine_type_id": 2,
                "allowlist_key": secrets.token_hex(32),
            },
        ],
    )
    lab.machines = {"printer-1": 1, "laser-1": 2}
    _put(
        conn,
        "devices",
        [
            {
                "id": f"pi-{slug}",
                "machine_id": mid,
                "password_hash": hash_password(f"device-{slug}"),
                "online": False,
                "state": "idle",
                "last_seen": created,
                "agent_version": "0.9.0",
                "config_hash": None,
                "allowlist_version": 3,
                "created_at": created,
            }
            for slug, mid in lab.machines.items()
        ],
    )
    person = {
        "site_id": 1,
        "email": None,
        "password_hash": None,
        "is_participant": True,
        "is_trainer": False,
        "is_admin": False,
        "cohort": None,
        "programme": None,
        "language": "de",
        "active": True,
        "created_at": created,
    }
    people = [
        {
            "id": 1,
            "name": "Ada Admin",
            "email": "ada@werkstatt.example",
            "is_participant": False,
            "is_admin": True,
            "password_hash": hash_password(ADA_PASSWORD),
            "language": "en",
        },
        {
            "id": 2,
            "name": "Tina Trainer",
            "email": "tina@werkstatt.example",
            "is_participant": False,
            "is_trainer": True,
        },
        {"id": 3, "name": "Paul Participant", "cohort": "2025-A", "programme": "AVGS"},
        {"id": 4, "name": "Petra Participant", "cohort": "2025-B", "programme": "AVGS"},
        {"id": 5, "name": "Rolf Revoked", "cohort": "2025-A"},
        {"id": 6, "name": "Lena Lost", "cohort": "2025-B"},
    ]
    _put(conn, "people", [person | p for p in people])
    lab.people = {str(p["name"]).split()[0]: int(p["id"]) for p in people}
    lab.badges = {
        "Ada": ("AD000001", "active"),
        "Tina": ("A1B2C3D4", "active"),
        "Paul": ("04A224B2C35E80", "active"),
        "Petra": ("0BADCAFE", "active"),
        "Rolf": ("7070BEEF", "active"),
        "Lena": ("1E2A1E2A", "lost"),
    }
    _put(
        conn,
        "badges",
        [
            {"uid": uid, "person_id": lab.people[name], "status": status, "issued_at": created}
            for name, (uid, status) in lab.badges.items()
        ],
    )

    def q(name: str, competency: int, action: str, level: str, ago: int, valid: int | None) -> dict[str, Any]:
        return {
            "person_id": lab.people[name],
            "competency_id": competency,
            "action": action,
            "level": level,
            "valid_until": today + timedelta(days=valid) if valid is not None else None,
            "granted_by_id": lab.people["Tina"],
            "reason": "revoked: unsafe use" if action == "revoked" else None,
            "created_at": _utc(today - timedelta(days=ago), 11),
        }

    history = [
        q("Tina", 1, "granted", "trainer", 390, None),
        q("Tina", 2, "granted", "trainer", 390, 300),
        q("Paul", 1, "granted", "briefed", 60, None),
        q("Paul", 1, "granted", "independent", 40, None),
        q("Paul", 2, "granted", "independent", 400, -35),
        q("Paul", 2, "renewed", "independent", 38, 327),
        q("Petra", 1, "granted", "independent", 50, None),
        q("Petra", 2, "granted", "supervised", 300, -1),  # ran out yesterday
        q("Rolf", 1, "granted", "independent", 90, None),
        q("Rolf", 1, "revoked", "independent", 30, None),
        q("Lena", 1, "granted", "independent", 45, None),
    ]
    _put(conn, "qualifications", history)
    for entry in history:
        name = next(n for n, i in lab.people.items() if i == entry["person_id"])
        lab.qualifications[name] = lab.qualifications.get(name, 0) + 1

    # Sessions of the last weeks, each within one local day (person, machine, days ago, hour, hours).
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
        sid = str(uuid.uuid4())
        start = _utc(today - timedelta(days=ago), hour)
        end = start + timedelta(hours=hours)
        unlocked = hours * 3600
        sessions.append(
            {
                "id": sid,
                "machine_id": lab.machines[slug],
                "device_id": f"pi-{slug}",
                "person_id": lab.people[name],
                "trainer_id": lab.people[trainer] if trainer else None,
                "badge_uid": lab.badges[name][0],
                "mode": mode,
                "offline": False,
                "started_at": start,
                "ended_at": end,
                "end_reason": "tap_out",
                "unlocked_s": unlocked,
                "run_s": unlocked * 0.75,
                "created_at": start,
            }
        )
        lab.sessions[sid] = unlocked
        lab.hours_by_person[name] = lab.hours_by_person.get(name, 0.0) + hours
        job = str(uuid.uuid4())
        jobs.append(
            {
                "id": job,
                "session_id": sid,
                "machine_id": lab.machines[slug],
                "kind": "print" if slug.startswith("printer") else "cut",
                "file": f"{name.lower()}-{ago}.gcode",
                "estimated_s": unlocked / 2,
                "started_at": start + timedelta(minutes=5),
                "finished_at": start + timedelta(minutes=5, seconds=unlocked / 2),
                "status": "completed",
                "duration_s": unlocked / 2,
                "filament_mm": 1000.0,
                "filament_g": 12.5,
            }
        )
        lab.jobs[job] = sid
        events += [
            {
                "id": str(uuid.uuid4()),
                "device_id": f"pi-{slug}",
                "type": kind,
                "session_id": sid,
                "ts": at,
                "received_at": at,
                "payload": {"v": 1, "type": kind, "session_id": sid},
            }
            for kind, at in (("session_started", start), ("session_ended", end))
        ]
        decisions.append(
            {
                "id": str(uuid.uuid4()),
                "device_id": f"pi-{slug}",
                "machine_id": lab.machines[slug],
                "badge_uid": lab.badges[name][0],
                "person_id": lab.people[name],
                "mode": mode,
                "decision": "allow",
                "reason": "ok",
                "session_id": sid,
                "decided_at": start,
                "response": {"decision": "allow", "reason": "ok"},
            }
        )
    _put(conn, "sessions", sessions)
    _put(conn, "jobs", jobs)
    _put(conn, "events", events)
    _put(conn, "access_decisions", decisions)
    _put(
        conn,
        "audit_log",
        [
            {
                "at": created,
                "actor_id": lab.people["Ada"],
                "actor_label": "Ada Admin",
                "action": "qualification.revoke",
                "subject": "person:5",
                "detail": {"competency": "fdm-printing"},
            },
        ],
    )


def _at_0003(conn: Connection, lab: Lab) -> None:
    today = lab.today
    _put(
        conn,
        "step_records",
        [
            {
                "person_id": lab.people["Paul"],
                "competency_id": 1,
                "step_id": step,
                "recorded_by_id": lab.people["Tina"],
                "source": "web",
                "session_id": None,
                "note": None,
                "recorded_at": _utc(today - timedelta(days=ago), 12),
            }
            for step, ago in ((1, 60), (2, 40))
        ],
    )
    lab.api_token = "wb_" + secrets.token_hex(24)
    _put(
        conn,
        "api_tokens",
        [
            {
                "person_id": lab.people["Ada"],
                "name": "reporting",
                "token_hash": hash_token(lab.api_token),
                "prefix": lab.api_token[:12],
                "created_at": _utc(today - timedelta(days=30), 9),
                "last_used_at": None,
                "expires_at": None,
                "revoked_at": None,
            },
        ],
    )
    _put(
        conn,
        "notifications",
        [
            {
                "person_id": lab.people["Petra"],
                "kind": "qualification_expiring",
                "key": "expiring:2",
                "params": {"competency": "laser-safety"},
                "created_at": _utc(today - timedelta(days=20), 7),
                "read_at": None,
                "emailed_at": None,
            },
        ],
    )


def _at_0004(conn: Connection, lab: Lab) -> None:
    today = lab.today
    _put(
        conn,
        "booking_policies",
        [
            {
                "site_id": 1,
                "min_slot_min": 30,
                "max_slot_min": 240,
                "slot_step_min": 30,
                "min_lead_min": 0,
                "max_ahead_days": 28,
                "cancel_deadline_min": 60,
                "weekly_quota_h": 10.0,
                "no_show_after_min": 15,
                "no_show_limit": 3,
                "no_show_window_days": 30,
                "no_show_block_days": 7,
                "reminder_before_min": 60,
            },
        ],
    )
    booking = {
        "machine_id": lab.machines["printer-1"],
        "trainer_id": None,
        "note": None,
        "created_by_id": None,
        "cancelled_at": None,
        "cancelled_by_id": None,
        "checked_in_at": None,
        "released_at": None,
        "no_show": False,
        "reminded_at": None,
    }
    used_day, missed_day, coming_day = (today - timedelta(days=d) for d in (6, 5, -3))
    _put(
        conn,
        "bookings",
        [
            # Paul's booking around his three-hour session six days ago: booked and used.
            booking
            | {
                "id": str(uuid.uuid4()),
                "person_id": lab.people["Paul"],
                "starts_at": _utc(used_day, 9),
                "ends_at": _utc(used_day, 12),
                "status": "booked",
                "checked_in_at": _utc(used_day, 9),
                "created_at": _utc(used_day - timedelta(days=2), 9),
            },
            # Petra did not come five days ago: released as a no-show.
            booking
            | {
                "id": str(uuid.uuid4()),
                "person_id": lab.people["Petra"],
                "starts_at": _utc(missed_day, 14),
                "ends_at": _utc(missed_day, 15),
                "status": "released",
                "no_show": True,
                "released_at": _utc(missed_day, 14.25),
                "created_at": _utc(missed_day - timedelta(days=1), 9),
            },
            # Petra's booking in three days, in the afternoon.
            booking
            | {
                "id": str(uuid.uuid4()),
                "person_id": lab.people["Petra"],
                "starts_at": _utc(coming_day, 15),
                "ends_at": _utc(coming_day, 16),
                "status": "booked",
                "created_at": _utc(today, 7),
            },
        ],
    )


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


def test_a_newer_schema_is_never_upgraded_nor_served(current_url: str, tmp_path: Path) -> None:
    _newer(current_url)
    before = _snapshot(current_url)
    head = schema_state(current_url).heads[0]
    with pytest.raises(SchemaError, match="newer Werkbank"):
        upgrade(current_url)

    refused = _refusals(current_url, tmp_path, list(PROCESSES))
    for name, (code, out) in refused.items():
        assert code != 0, (name, out)
        flat = " ".join(out.split())
        assert f"schema is at revision 0099, which this Werkbank (schema {head}) does not know" in flat, (
            name,
            out,
        )
        assert "Install that newer Werkbank again, or restore the backup" in flat, (name, out)
    assert "Nothing was changed" in refused["db upgrade"][1]
    assert "Worker failed to boot" in refused["gunicorn"][1]
    assert _snapshot(current_url) == before


def test_an_older_schema_is_not_served_until_upgraded(blank_url: str, tmp_path: Path) -> None:
    upgrade(blank_url, "0009")
    refused = _refusals(blank_url, tmp_path, ["web", "bridge", "scheduler", "gunicorn"])
    for name, (code, out) in refused.items():
        assert code != 0, (name, out)
        flat = " ".join(out.split())
        assert "schema is at revision 0009, older than this Werkbank's" in flat, (name, out)
        assert "run `werkbank db upgrade`" in flat, (name, out)
    assert schema_state(blank_url).revisions == ("0009",)

    status = _app(blank_url).test_cli_runner()
    assert status.invoke(args=["db", "status"]).exit_code == 1
    assert status.invoke(args=["db", "upgrade"]).exit_code == 0
    answer = status.invoke(args=["db", "status"])
    assert answer.exit_code == 0 and "the schema is current" in answer.output
    assert status.invoke(args=["db", "upgrade"]).output.startswith("database is up to date")
    from server.extensions import db

    db.dispose()


def test_an_empty_database_is_not_served(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.sqlite'}"
    with pytest.raises(SchemaError, match=r"no Werkbank schema yet\. Run `werkbank db upgrade` first"):
        require_current(url, "bridge")
