"""Dashboard speed at five years of data: the queries and the whole pages, one site and one year.

Fills a fresh database with synthetic *aggregates* of the size five years of a big lab give
(``--sites`` times ``--machines`` machines, ``--years`` years: with the defaults about 183 k
``usage_daily``, 1 M ``usage_hourly``, 183 k ``machine_day_stats`` rows, 7 500 participants
with 30 k qualification entries and 90 k ``person_usage_monthly`` rows), then times

* ``utilisation`` (all machines, and lasers only), ``live_tiles`` and ``learning`` for one site
  and the last full year, straight on the service; and
* ``GET /dashboards/usage`` and ``GET /dashboards/learning`` for the same through the Flask app
  (an admin's request, templates and charts included: the server time a user waits for),

each ``--n`` times, and prints p50 and p95 in milliseconds. The aggregates are what
``server.services.usage`` keeps from about 2 M sessions; the raw sessions are not needed because
the dashboards never read them.

    .venv/bin/python bench/dashboards_speed.py [--n 50]
        [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

With a PostgreSQL URL a private ``werkbank_dbench_<random>`` database is created and dropped at
the end; without one, a SQLite file in a temporary directory.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, insert, make_url, select, text

from server import create_app
from server.config import TestConfig
from server.db import normalise_url
from server.extensions import db
from server.migrate import upgrade
from server.models import (
    Competency,
    Level,
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
from server.services import dashboards

TYPES = (
    ("fdm", "FDM 3D printer"),
    ("laser", "CO2 laser cutter"),
    ("cnc", "CNC router"),
    ("sla", "SLA printer"),
)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if not url:
        with tempfile.TemporaryDirectory() as tmp:
            path = f"sqlite:///{tmp}/bench.sqlite"
            upgrade(path)
            yield path
        return
    base = make_url(normalise_url(url))
    name = f"werkbank_dbench_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    target = base.set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(target)
        yield target
    finally:
        db.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _chunks(rows: list[dict[str, Any]], size: int = 20_000) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


def fill(sites: int, machines: int, years: int, end: date) -> dict[str, int]:
    """Synthetic aggregates; returns the row counts."""
    rng = random.Random(6)
    start = date(end.year - years + 1, 1, 1)
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    counts: dict[str, int] = {}
    with db.session() as s:
        types = [MachineType(slug=slug, name=name) for slug, name in TYPES]
        s.add_all(types)
        competencies = [
            Competency(slug=f"{slug}-safety", name=f"{name} safety", validity_months=12)
            for slug, name in TYPES
        ]
        s.add_all(competencies)
        site_rows = [Site(slug=f"site-{i}", name=f"Site {i}", timezone="Europe/Berlin") for i in range(sites)]
        s.add_all(site_rows)
        s.flush()
        all_machines: list[Machine] = []
        for site in site_rows:
            for j in range(machines):
                all_machines.append(
                    Machine(
                        slug=f"{site.slug}-m{j}",
                        name=f"Machine {j}",
                        site_id=site.id,
                        machine_type_id=types[j % len(types)].id,
                    )
                )
        s.add_all(all_machines)
        s.add(
            Person(
                site_id=site_rows[0].id,
                name="Bench Admin",
                email="admin@bench.test",
                is_admin=True,
                is_participant=False,
            )
        )
        s.flush()
        machine_facts = [(m.id, m.site_id, m.machine_type_id) for m in all_machines]
        site_ids = [site.id for site in site_rows]
        competency_ids = [c.id for c in competencies]
    with db.engine.begin() as conn:
        daily: list[dict[str, Any]] = []
        hourly: list[dict[str, Any]] = []
        stats: list[dict[str, Any]] = []
        for machine_id, site_id, type_id in machine_facts:
            for day in days:
                if day.weekday() == 6:
                    continue  # closed on Sundays
                cohort = f"{day.year}-{'AB'[day.month > 6]}"
                unlocked = rng.uniform(0, 6) * 3600
                key = {"machine_id": machine_id, "day": day, "site_id": site_id, "machine_type_id": type_id}
                daily.append(
                    {
                        **key,
                        "cohort": cohort,
                        "sessions": rng.randint(0, 6),
                        "unlocked_s": unlocked,
                        "run_s": unlocked * 0.7,
                        "supervised_s": 0.0,
                        "jobs": rng.randint(0, 5),
                        "jobs_failed": rng.randint(0, 1),
                        "filament_g": rng.uniform(0, 200),
                        "booked_s": unlocked * 0.8,
                        "booked_used_s": unlocked * 0.6,
                        "no_shows": rng.randint(0, 1),
                    }
                )
                stats.append({**key, "open_s": 10 * 3600.0, "maintenance_s": 0.0, "offline_s": 0.0})
                for hour in rng.sample(range(9, 19), 6):
                    hourly.append({**key, "hour": hour, "cohort": cohort, "unlocked_s": unlocked / 6})
        for rows, model in ((daily, UsageDaily), (hourly, UsageHourly), (stats, MachineDayStats)):
            for chunk in _chunks(rows):
                conn.execute(insert(model), chunk)
            counts[model.__tablename__] = len(rows)
    with db.session() as s:
        people: list[Person] = []
        for site_id in site_ids:
            for year in range(start.year, end.year + 1):
                for k in range(1500 // years):
                    people.append(
                        Person(
                            site_id=site_id,
                            name=f"Participant {site_id}-{year}-{k}",
                            cohort=f"{year}-{'AB'[k % 2]}",
                            is_participant=True,
                            created_at=datetime(year, 1 + 6 * (k % 2), 1, tzinfo=UTC),
                        )
                    )
        s.add_all(people)
        s.flush()
        person_facts = [(p.id, p.site_id, p.created_at) for p in people]
    by_site: dict[int, list[tuple[int, int, int]]] = {}
    for fact in machine_facts:
        by_site.setdefault(fact[1], []).append(fact)
    with db.engine.begin() as conn:
        quals: list[dict[str, Any]] = []
        monthly: list[dict[str, Any]] = []
        for person_id, site_id, created in person_facts:
            at = created
            for competency_id in rng.sample(competency_ids, 2):
                for level in (Level.BRIEFED, Level.SUPERVISED, Level.INDEPENDENT)[: rng.randint(1, 3)]:
                    at += timedelta(days=rng.randint(3, 20))
                    quals.append(
                        {
                            "person_id": person_id,
                            "competency_id": competency_id,
                            "action": QualificationAction.GRANTED,
                            "level": level,
                            "valid_until": (at + timedelta(days=365)).date(),
                            "created_at": at,
                        }
                    )
            first = created.date().replace(day=1)
            for month_offset in range(6):
                month = (first + timedelta(days=31 * month_offset)).replace(day=1)
                for machine_id, _site, type_id in rng.sample(by_site[site_id], 2):
                    monthly.append(
                        {
                            "person_id": person_id,
                            "machine_id": machine_id,
                            "month": month,
                            "site_id": site_id,
                            "machine_type_id": type_id,
                            "sessions": 3,
                            "unlocked_s": 3 * 3600.0,
                            "run_s": 2 * 3600.0,
                            "supervised_s": 0.0,
                            "jobs": 2,
                        }
                    )
        quals.sort(key=lambda q: q["created_at"])
        for rows, model in ((quals, Qualification), (monthly, PersonUsageMonthly)):
            for chunk in _chunks(rows):
                conn.execute(insert(model), chunk)
            counts[model.__tablename__] = len(rows)
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    return counts


def timed(name: str, n: int, call: Callable[[], Any]) -> None:
    call()  # warm caches and the connection pool
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    p95 = samples[max(0, round(0.95 * len(samples)) - 1)]
    print(f"  {name:<44} p50 {statistics.median(samples):7.1f} ms   p95 {p95:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--machines", type=int, default=20, help="per site")
    parser.add_argument("--years", type=int, default=5)
    parser.add_argument("--n", type=int, default=50)
    args = parser.parse_args()
    end = date(2026, 12, 31)
    with database(args.database_url) as url:
        app = create_app(TestConfig, DATABASE_URL=url)
        t0 = time.perf_counter()
        counts = fill(args.sites, args.machines, args.years, end)
        print(f"{db.engine.dialect.name}: filled in {time.perf_counter() - t0:.0f} s: {counts}")
        with db.session() as s:
            site = s.scalar(select(Site).where(Site.slug == "site-0"))
            laser = s.scalar(select(MachineType).where(MachineType.slug == "laser"))
            admin = s.scalar(select(Person).where(Person.email == "admin@bench.test"))
            assert site is not None and laser is not None and admin is not None
            site_id, laser_id, admin_id = site.id, laser.id, admin.id
        year_start, year_end = date(end.year, 1, 1), end
        print(f"one site, {year_start} .. {year_end}, {args.n} runs each:")

        def service(call: Callable[[Any], Any]) -> Callable[[], Any]:
            def run() -> Any:
                with db.session() as s:
                    return call(s)

            return run

        timed(
            "utilisation (all machines)",
            args.n,
            service(lambda s: dashboards.utilisation(s, site_id, None, None, year_start, year_end)),
        )
        timed(
            "utilisation (lasers)",
            args.n,
            service(lambda s: dashboards.utilisation(s, site_id, laser_id, None, year_start, year_end)),
        )
        timed("live_tiles", args.n, service(lambda s: dashboards.live_tiles(s, site_id)))
        timed(
            "learning",
            args.n,
            service(lambda s: dashboards.learning(s, site_id, None, None, year_start, year_end, today=end)),
        )
        client = app.test_client()
        client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
        with client.session_transaction() as session:
            session["_user_id"] = str(admin_id)
            session["_fresh"] = True
        period = f"site=site-0&from={year_start}&to={year_end}"

        def page(path: str) -> Callable[[], Any]:
            def run() -> Any:
                response = client.get(path)
                assert response.status_code == 200, response.status_code
                return response

            return run

        timed("GET /dashboards/usage (page)", args.n, page(f"/dashboards/usage?{period}"))
        timed(
            "GET /dashboards/usage?type=laser (page)", args.n, page(f"/dashboards/usage?{period}&type=laser")
        )
        timed("GET /dashboards/learning (page)", args.n, page(f"/dashboards/learning?{period}"))
        timed(
            "GET /dashboards/learning?cohort= (page)",
            args.n,
            page(f"/dashboards/learning?{period}&cohort={end.year}-A"),
        )


if __name__ == "__main__":
    main()
