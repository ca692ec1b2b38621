"""How fast the funder report is at five years of data: the report for one site and one year
(target ≤ 200 ms at p95, server time) and its CSV and XLSX exports (target ≤ 2 s).

The report reads only the aggregates, so this bench fills them directly at the size
``werkbank demo-data --sites 5 --machines 100 --years 5`` gives (about 2 M sessions): per
site 20 machines of four types and 1 000 participants in ten cohorts of 100, each cohort
using three machines a month for a year (about 33 sessions a month each), three
qualifications and four training steps per participant: 180 000 PersonUsageMonthly rows.

    .venv/bin/python bench/funder_report.py [--runs 50] [--keep] \
        [--database-url postgresql://postgres@127.0.0.1:5432/test]

Without ``--database-url`` it runs on a SQLite file in a temp dir; with a PostgreSQL URL it
creates a private database next to the given one and drops it at the end.
Exit status: 0 when every target is met, 1 when one is missed.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from server.db import Database, normalise_url
from server.migrate import upgrade
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
    TrainingStep,
)
from server.services.reports import add_months, funder_report

SITES, MACHINES_PER_SITE, COHORTS_PER_SITE, PEOPLE_PER_COHORT = 5, 20, 10, 100
FIRST_MONTH = date(2021, 1, 1)


def _fill(db: Database, seed: int = 6) -> None:
    rng = random.Random(seed)
    with db.session() as s:
        types = [
            MachineType(slug=slug, name=name)
            for slug, name in (("fdm", "FDM printer"), ("laser", "Laser"), ("cnc", "CNC"), ("vinyl", "Vinyl"))
        ]
        s.add_all(types)
        competency = Competency(slug="safety", name="Safety")
        s.add(competency)
        s.flush()
        step = TrainingStep(
            competency_id=competency.id, kind="briefing", name="Briefing", leads_to=Level.BRIEFED
        )
        s.add(step)
        sites = [Site(slug=f"site-{i}", name=f"Site {i}") for i in range(SITES)]
        s.add_all(sites)
        s.flush()
        machines = [
            Machine(slug=f"m-{site.id}-{i}", name=f"M {i}", site_id=site.id, machine_type_id=types[i % 4].id)
            for site in sites
            for i in range(MACHINES_PER_SITE)
        ]
        s.add_all(machines)
        s.flush()
        trainers = {
            site.id: [
                Person(site_id=site.id, name=f"Trainer {site.id}-{i}", is_trainer=True, is_participant=False)
                for i in range(5)
            ]
            for site in sites
        }
        for group in trainers.values():
            s.add_all(group)
        s.flush()
        person_rows: list[dict[str, Any]] = []
        for site in sites:
            for c in range(COHORTS_PER_SITE):
                start = add_months(FIRST_MONTH, 6 * c)
                for n in range(PEOPLE_PER_COHORT):
                    person_rows.append(
                        {
                            "site_id": site.id,
                            "name": f"P {site.id}-{c}-{n}",
                            "cohort": f"Cohort {c}",
                            "programme": f"Programme {c % 3}",
                            "created_at": datetime.combine(start, datetime.min.time(), tzinfo=UTC),
                            "active": add_months(start, 12) > date(2025, 12, 1),
                            "is_participant": True,
                            "language": "de",
                        }
                    )
        s.execute(insert(Person), person_rows)
        people = s.execute(text("SELECT id, site_id, created_at FROM people WHERE is_participant")).all()
        by_site: dict[int, list[Machine]] = {}
        for m in machines:
            by_site.setdefault(m.site_id, []).append(m)
        usage: list[dict[str, Any]] = []
        grants: list[dict[str, Any]] = []
        steps: list[dict[str, Any]] = []
        for pid, site_id, created in people:
            start = (
                created if isinstance(created, datetime) else datetime.fromisoformat(str(created))
            ).date()
            for k in range(12):
                month = add_months(start, k)
                for m in rng.sample(by_site[site_id], 3):
                    sessions = rng.randint(5, 17)
                    unlocked = sessions * rng.uniform(1800, 7200)
                    usage.append(
                        {
                            "person_id": pid,
                            "machine_id": m.id,
                            "month": month,
                            "site_id": site_id,
                            "machine_type_id": m.machine_type_id,
                            "sessions": sessions,
                            "unlocked_s": unlocked,
                            "run_s": unlocked * 0.7,
                            "supervised_s": unlocked * 0.1 if k < 2 else 0.0,
                            "jobs": sessions,
                        }
                    )
            day0 = datetime.combine(start, datetime.min.time(), tzinfo=UTC)
            for g, level in enumerate((Level.BRIEFED, Level.SUPERVISED, Level.INDEPENDENT)):
                grants.append(
                    {
                        "person_id": pid,
                        "competency_id": competency.id,
                        "action": QualificationAction.GRANTED,
                        "level": level,
                        "granted_by_id": rng.choice(trainers[site_id]).id,
                        "created_at": day0 + timedelta(days=20 * g + 3),
                    }
                )
            for k in range(4):
                steps.append(
                    {
                        "person_id": pid,
                        "competency_id": competency.id,
                        "step_id": step.id,
                        "recorded_at": day0 + timedelta(days=10 * k + 1),
                    }
                )
        for rows, table in ((usage, PersonUsageMonthly), (grants, Qualification), (steps, StepRecord)):
            for i in range(0, len(rows), 10_000):
                s.execute(insert(table), rows[i : i + 10_000])
        print(f"filled: {len(people)} participants, {len(usage)} person-months, {len(grants)} grants")
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))


def _p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] if len(samples) >= 20 else max(samples)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url", default="")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the database and print its URL")
    args = parser.parse_args()

    cleanup = None
    if args.database_url:
        base = make_url(normalise_url(args.database_url))
        name = f"werkbank_bench_{secrets.token_hex(3)}"
        admin = create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = base.set(database=name).render_as_string(hide_password=False)

        def cleanup() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    else:
        url = f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.sqlite'}"
    try:
        return _run(url, args.runs)
    finally:
        if args.keep:
            print(f"kept: {url}")
        elif cleanup:
            cleanup()


def _run(url: str, runs: int) -> int:
    from server import create_app
    from server.config import TestConfig
    from server.extensions import db as app_db

    upgrade(url)
    db = Database()
    db.init(url)
    _fill(db)
    with db.session() as s:
        site = s.execute(text("SELECT id FROM sites WHERE slug = 'site-2'")).scalar_one()
    times = []
    for _ in range(runs):
        with db.session() as s:
            started = time.perf_counter()
            report = funder_report(s, site, None, None, date(2025, 1, 1), date(2025, 12, 1), False, "de")
            times.append(time.perf_counter() - started)
    db.dispose()
    print(
        f"report, one site and one year ({report.totals.participants} participants, "
        f"{report.totals.qualifications} qualifications): "
        f"p50 {statistics.median(times) * 1000:.0f} ms, p95 {_p95(times) * 1000:.0f} ms over {runs} runs"
    )

    app = create_app(TestConfig, DATABASE_URL=url)
    client = app.test_client()
    with app_db.session() as s:
        admin = Person(site_id=site, name="Bench Admin", is_admin=True, is_participant=False, language="de")
        s.add(admin)
        s.flush()
        admin_id = admin.id
    with client.session_transaction() as session:
        session["_user_id"] = str(admin_id)
        session["_fresh"] = True
    query = "site=site-2&from=2025-01&to=2025-12"
    results = {}
    for path in ("/reports/funder", "/reports/funder.csv", "/reports/funder.xlsx"):
        samples = []
        for _ in range(10 if path != "/reports/funder" else runs):
            started = time.perf_counter()
            response = client.get(f"{path}?{query}")
            samples.append(time.perf_counter() - started)
            assert response.status_code == 200, response.status_code
        results[path] = (statistics.median(samples), _p95(samples) if len(samples) >= 20 else max(samples))
        print(f"{path}: p50 {results[path][0] * 1000:.0f} ms, max/p95 {results[path][1] * 1000:.0f} ms")
    app_db.dispose()
    ok = (
        _p95(times) <= 0.2
        and results["/reports/funder.csv"][1] <= 2
        and results["/reports/funder.xlsx"][1] <= 2
    )
    print("targets met" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
