"""Fixtures for the web pages: a private database, the app on it, a seeded lab, logins.

The database is the root conftest's ``database_url``: a migrated SQLite file per test, or a
private PostgreSQL database (emptied after each test) when TEST_DATABASE_URL is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from server import create_app
from server.config import TestConfig
from server.extensions import db
from server.models import (
    Device,
    Job,
    Machine,
    MachineSession,
    MachineStatus,
    MachineType,
    Person,
    Site,
)
from server.security import hash_password

CATALOG_DIR = Path(__file__).resolve().parents[2] / "server" / "translations"
PASSWORD = "correct horse battery"
TZ = ZoneInfo("Europe/Berlin")


# -- translations --------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def compiled_catalogues() -> None:
    """Compile the .po files when their .mo is missing or older, as `make translations` does,
    so `pytest tests/web` works straight after editing a translation."""
    for po_path in CATALOG_DIR.glob("*/LC_MESSAGES/messages.po"):
        mo_path = po_path.with_suffix(".mo")
        if mo_path.exists() and mo_path.stat().st_mtime >= po_path.stat().st_mtime:
            continue
        with po_path.open("rb") as po_file:
            catalog = read_po(po_file)
        with mo_path.open("wb") as mo_file:
            write_mo(mo_file, catalog)


# -- database ------------------------------------------------------------------------------------


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., Flask]]:
    """Build an app on this test's own migrated database; keyword arguments override TestConfig."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        overrides.setdefault("DATABASE_URL", database_url)
        app = create_app(TestConfig, **overrides)
        made.append(app)
        return app

    yield make
    if made:
        db.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return english(app.test_client())


def english(client: FlaskClient) -> FlaskClient:
    """Ask for English pages, as a browser would; without it the default language (de) wins."""
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    return client


# -- a seeded lab --------------------------------------------------------------------------------


@dataclass
class Lab:
    """Ids and names of what :func:`seed_lab` created, for assertions."""

    site_id: int
    admin: str
    trainer: str
    participant: str
    other_participant: str
    inactive: str
    laser_session_id: str
    machines: dict[str, int]


@pytest.fixture(scope="session")
def password_hash() -> str:
    # argon2 is slow on purpose: hash the shared test password once per run.
    return hash_password(PASSWORD)


def seed_lab(password_hash: str, now: datetime | None = None) -> Lab:
    """One site with four machines in four states, people in every role, and sessions.

    Times are relative to ``now`` (the pages use the real clock); "today" sessions are
    kept after local midnight so the machine hours for today are predictable.
    """
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.astimezone(TZ).date(), datetime.min.time(), tzinfo=TZ)
    today = max(now - timedelta(minutes=50), midnight + timedelta(minutes=1))
    with db.session() as s:
        site = Site(slug="nord", name="Lernwerkstatt Nord", timezone="Europe/Berlin")
        other_site = Site(slug="sued", name="Lernwerkstatt Süd", timezone="Europe/Berlin")
        s.add_all([site, other_site])
        s.flush()

        # English profiles, so page texts can be checked in the source language; Bob reads German.
        def person(name: str, email: str, language: str = "en", **roles: bool) -> Person:
            p = Person(
                site_id=site.id,
                name=name,
                email=email,
                password_hash=password_hash,
                language=language,
                **roles,
            )
            s.add(p)
            return p

        admin = person("Alex Admin", "admin@lab.test", is_admin=True, is_participant=False)
        trainer = person("Tina Trainer", "trainer@lab.test", is_trainer=True, is_participant=False)
        ada = person("Ada Lovelace", "ada@lab.test")
        bob = person("Bob Builder", "bob@lab.test", language="de")
        person("Ina Inactive", "ina@lab.test", active=False)

        fdm = MachineType(slug="fdm", name="FDM 3D printer", job_kind="print")
        laser = MachineType(slug="laser", name="CO2 laser cutter", job_kind="cut")
        s.add_all([fdm, laser])
        s.flush()

        def machine(slug: str, name: str, kind: MachineType, **fields: Any) -> Machine:
            m = Machine(slug=slug, name=name, site_id=site.id, machine_type_id=kind.id, **fields)
            s.add(m)
            return m

        printer_a = machine("prusa-a", "Prusa A", fdm, live_state="locked")
        laser_1 = machine(
            "laser-1", "Laser 1", laser, live_state="running", live_running=True, live_progress=42.0
        )
        printer_b = machine("prusa-b", "Prusa B", fdm, live_state="offline")
        bambu = machine("bambu", "Bambu X1", fdm, status=MachineStatus.MAINTENANCE)
        elsewhere = Machine(
            slug="sued-1", name="Southern Printer", site_id=other_site.id, machine_type_id=fdm.id
        )
        s.add(elsewhere)
        s.flush()
        s.add_all(
            [
                Device(
                    id="pi-prusa-a",
                    machine_id=printer_a.id,
                    online=True,
                    last_seen=now - timedelta(seconds=30),
                ),
                Device(
                    id="pi-laser-1", machine_id=laser_1.id, online=True, last_seen=now - timedelta(seconds=5)
                ),
                Device(
                    id="pi-prusa-b", machine_id=printer_b.id, online=False, last_seen=now - timedelta(hours=2)
                ),
            ]
        )

        def session(
            sid: str, m: Machine, who: Person | None, start: datetime, unlocked_s: float | None, **kw: Any
        ) -> MachineSession:
            row = MachineSession(
                id=sid,
                machine_id=m.id,
                device_id=f"pi-{m.slug}",
                person_id=who.id if who else None,
                started_at=start,
                ended_at=start + timedelta(seconds=unlocked_s) if unlocked_s is not None else None,
                unlocked_s=unlocked_s,
                **kw,
            )
            s.add(row)
            return row

        session("s-laser-old", laser_1, ada, now - timedelta(days=2), 1800.0)
        session("s-laser-today", laser_1, bob, today, 600.0, offline=True)
        session("s-prusa-today", printer_a, ada, today + timedelta(minutes=5), 900.0)
        session("s-elsewhere", elsewhere, None, today, 300.0)
        live = session("s-laser-live", laser_1, ada, now - timedelta(minutes=3), None)
        s.flush()
        laser_1.live_session_id = live.id
        s.add_all(
            [
                Job(
                    id="j1",
                    session_id="s-prusa-today",
                    machine_id=printer_a.id,
                    kind="print",
                    file="benchy.gcode",
                ),
                Job(
                    id="j2",
                    session_id="s-prusa-today",
                    machine_id=printer_a.id,
                    kind="print",
                    file="clip.gcode",
                ),
            ]
        )
        return Lab(
            site_id=site.id,
            admin=admin.email or "",
            trainer=trainer.email or "",
            participant=ada.email or "",
            other_participant=bob.email or "",
            inactive="ina@lab.test",
            laser_session_id=live.id,
            machines={m.slug: m.id for m in (printer_a, laser_1, printer_b, bambu)},
        )


@pytest.fixture
def lab(app: Flask, password_hash: str) -> Lab:
    return seed_lab(password_hash)


# -- logging in ----------------------------------------------------------------------------------


class AuthActions:
    """Log a test client in and out through the real login form."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def login(self, email: str, password: str = PASSWORD, **kwargs: Any) -> TestResponse:
        return self.client.post("/login", data={"email": email, "password": password}, **kwargs)

    def logout(self) -> TestResponse:
        return self.client.post("/logout")


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


def sign_in(client: FlaskClient, person_id: int) -> None:
    """Put a person's login straight into the client's session cookie, as the login form
    leaves it: for tests that open hundreds of pages and should not each pay for argon2."""
    from server.adapters.web.auth import User

    with db.session() as s:
        person = s.get(Person, person_id)
        assert person is not None
        user_id = User.from_person(person).get_id()
    with client.session_transaction() as session:
        session["_user_id"] = user_id
        session["_fresh"] = True
        session["seen"] = int(time.time())
