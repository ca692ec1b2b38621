"""Shared fixtures: a real MQTT broker on a free port, a database per test, the Flask app.

The broker is a private ``mosquitto`` when the binary exists, else the embedded amqtt
broker (set WERKBANK_TEST_BROKER=embedded to force it). Never the CI machine's own broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.broker import EmbeddedBroker, MosquittoProcess, find_program

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


def _start_broker() -> EmbeddedBroker | MosquittoProcess:
    kind = os.environ.get("WERKBANK_TEST_BROKER", "auto")
    if kind == "mosquitto" or (kind == "auto" and MosquittoProcess.available()):
        return MosquittoProcess().start()
    return EmbeddedBroker().start()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker | MosquittoProcess]:
    """A broker for this test alone (about 0.2 s with Mosquitto): nothing retained or queued by an
    earlier test (statuses of devices that test made up, a persistent session's messages) reaches it."""
    running = _start_broker()
    yield running
    running.stop()


def _installed(name: str) -> str:
    path = find_program(name)
    if path is None:
        # Fail, never skip: a skipped broker test would pass `make test` without testing anything.
        pytest.fail(f"{name} is not installed: run `make mosquitto` (Debian's mosquitto package)")
    return path


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    """The full path of Mosquitto (Debian: /usr/sbin, often not on PATH); `make test` installs it."""
    return _installed("mosquitto")


@pytest.fixture(scope="session")
def mosquitto_passwd_bin() -> str:
    return _installed("mosquitto_passwd")


@pytest.fixture
def mqtt_url(broker: EmbeddedBroker | MosquittoProcess) -> str:
    """The URL (mqtt://host:port, no credentials) of a broker of this test's own: nothing retained
    or queued by another test (statuses of made-up devices, a persistent session's messages) reaches
    it. On a shared broker those piled up over a run and the bridge spent seconds refusing them."""
    return broker.url


# -- database ------------------------------------------------------------------------------
# SQLite by default; PostgreSQL when TEST_DATABASE_URL is set (CI sets it). Either way the
# schema comes from the Alembic migrations, so the migrations are tested on both.
import secrets  # noqa: E402
import shutil  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from pathlib import Path  # noqa: E402

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from server.db import Database, normalise_url  # noqa: E402
from server.migrate import upgrade  # noqa: E402
from server.models import Base  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def migrated_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A freshly migrated private database for this test run (dropped at the end)."""
    server_url = os.environ.get("TEST_DATABASE_URL")
    if not server_url:
        path = tmp_path_factory.mktemp("db") / "template.sqlite"
        url = f"sqlite:///{path}"
        upgrade(url)
        yield url
        return
    base = make_url(normalise_url(server_url))
    name = f"werkbank_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def database_url(migrated_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty, migrated database of its own for one test."""
    if migrated_url.startswith("sqlite:///"):
        copy = tmp_path / "werkbank.sqlite"
        shutil.copy(migrated_url.removeprefix("sqlite:///"), copy)
        yield f"sqlite:///{copy}"
        return
    yield migrated_url
    engine = create_engine(migrated_url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The server's Database bound to this test's database."""
    from server.extensions import db

    db.init(database_url)
    yield db
    db.dispose()


@pytest.fixture
def lab(database: Database) -> Database:
    """The test lab of tests/data/lab.yaml loaded (sites, people, badges, machines, devices)."""
    from server.services.lab_file import load, parse

    with database.session() as session:
        load(session, parse((DATA / "lab.yaml").read_text()))
    return database


@pytest.fixture
def real_clock_lab(lab: Database) -> Database:
    """The lab without its opening hours, for tests whose bridge runs on the real clock: a tap is
    allowed on any day at any hour (the lab is open 08:00-20:00 in Berlin, Monday to Friday)."""
    from sqlalchemy import delete

    from server.models import OpeningHours

    with lab.session() as s:
        s.execute(delete(OpeningHours))
    return lab


class Clock:
    """A clock tests move by hand: no sleeping."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        from datetime import timedelta

        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    # A Wednesday at 10:00 in Berlin: inside the test lab's opening hours.
    return Clock(datetime(2026, 11, 18, 9, 0, tzinfo=UTC))


# Badges of the people :func:`trainer_lab` adds (the trainer flows at the machine).
TINA = "A1B2C3D4"  # trainer on printers and the laser (lab.yaml)
BEA = "BEA0BEA0"  # briefed on printers and the laser, nothing more
PETE = "9E7E9E7E"  # trainer on printers; on the laser a user, not a trainer
LARA = "1A5E21A5"  # trainer on the laser only (claims_lab)
OTTO = "07707070"  # a participant of another site (claims_lab)


@pytest.fixture
def trainer_lab(lab: Database) -> Database:
    """The lab plus Bea Briefed and Pete Printtrainer (added here, not in lab.yaml, so that the
    lab's counts other tests rely on stay as they are)."""
    from datetime import date

    from sqlalchemy import select

    from server.models import Badge, Competency, Level, Person, Qualification, QualificationAction, Site

    with lab.session() as s:
        site = s.scalar(select(Site))
        tina = s.scalar(select(Person).where(Person.email == "tina@test.local"))
        assert site is not None and tina is not None
        competencies = {c.slug: c for c in s.scalars(select(Competency))}
        people = (
            ("Bea Briefed", None, False, BEA, {"fdm-printing": Level.BRIEFED, "laser-safety": Level.BRIEFED}),
            (
                "Pete Printtrainer",
                "pete@test.local",
                True,
                PETE,
                {"fdm-printing": Level.TRAINER, "laser-safety": Level.INDEPENDENT},
            ),
        )
        for name, email, is_trainer, uid, levels in people:
            person = Person(site_id=site.id, name=name, email=email, is_trainer=is_trainer, language="en")
            s.add(person)
            s.flush()
            s.add(Badge(uid=uid, person_id=person.id))
            for slug, level in levels.items():
                s.add(
                    Qualification(
                        person_id=person.id,
                        competency_id=competencies[slug].id,
                        action=QualificationAction.GRANTED,
                        level=level,
                        valid_until=date(2099, 1, 1) if slug == "laser-safety" else None,
                        granted_by_id=tina.id,
                        reason="test lab",
                    )
                )
    return lab


@pytest.fixture
def claims_lab(trainer_lab: Database) -> Database:
    """The trainer lab plus Lara, a trainer of the laser only, and Otto of another site."""
    from datetime import date

    from sqlalchemy import select

    from server.models import Badge, Competency, Level, Person, Qualification, QualificationAction, Site

    with trainer_lab.session() as s:
        home = s.scalar(select(Site))
        competencies = {c.slug: c for c in s.scalars(select(Competency))}
        assert home is not None
        elsewhere = Site(slug="elsewhere", name="Elsewhere", timezone="Europe/Berlin")
        s.add(elsewhere)
        s.flush()
        lara = Person(site_id=home.id, name="Lara Lasertrainer", is_trainer=True, language="en")
        otto = Person(site_id=elsewhere.id, name="Otto Outside", language="en")
        s.add_all([lara, otto])
        s.flush()
        s.add_all([Badge(uid=LARA, person_id=lara.id), Badge(uid=OTTO, person_id=otto.id)])
        grants = [
            (lara, "laser-safety", Level.TRAINER),
            (otto, "fdm-printing", Level.BRIEFED),
        ]
        for person, slug, level in grants:
            s.add(
                Qualification(
                    person_id=person.id,
                    competency_id=competencies[slug].id,
                    action=QualificationAction.GRANTED,
                    level=level,
                    valid_until=date(2099, 1, 1),
                    reason="test",
                )
            )
    return trainer_lab
