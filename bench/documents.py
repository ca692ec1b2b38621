"""Speed of the proof documents on generated years of data (docs/proof.md records the figures).

1. **data**: when the database has no people yet, ``werkbank demo-data`` fills it (``--scale
   small``: 2 sites, 10 machines, 1 year; ``full``: 5 sites, 100 machines, 5 years, about 2 M
   sessions, some 10 minutes), then ``add_proof_demo`` adds two months of check-ins, briefings
   with signatures, exits and targets (once);
2. **documents**, each through the Flask test client as a trainer of the site, ``--n`` times:
   one competence pass (issue + PDF, target ≤ 1 s), the participation certificates of a cohort
   of 30 at once (≤ 20 s), and a month's attendance sheet PDF for a cohort of 30 (≤ 2 s).
   Before them the app loads WeasyPrint and the fonts as a web worker does when it starts
   (``documents.warm_up()``, called by ``server/wsgi.py``); that time is printed on its own.

    .venv/bin/python bench/documents.py [--scale small|full] [--database-url URL] [--n 5]

Without ``--database-url`` a fresh SQLite file in a temp directory is used (and removed). A URL
is used as it is: an empty database is migrated and filled the first time, and the next runs
time the documents only (``sqlite:////tmp/wb-documents.sqlite`` keeps the five years between
runs). A cohort of exactly 30 is made from the first site's participants (the generated cohorts
are smaller or larger). Prints the wall-clock min, median and max per document and whether the
target is met (every run, the first included, within it), the median CPU time of the process
(what the document costs by itself: on a machine shared with other work the wall clock is
longer), and the load average; exit status 0 when every document meets its target, 1 when one
misses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dashboards import SCALES, _fill

TARGETS = {"certificate": 1.0, "cohort of 30 certificates": 20.0, "attendance sheet, 30 people": 2.0}
COHORT = "Bench cohort"
TRAINER = "Bench Trainer"


def _prepare(app: Any, now: datetime) -> tuple[int, int]:
    """The proof demo data, the bench cohort of 30 and its timetable, and a trainer of the site
    (all idempotent, so a kept database can be timed again). Returns (trainer, first person)."""
    from sqlalchemy import select

    from server.adapters.demo.proof import add_proof_demo
    from server.extensions import db
    from server.models import Person, Site
    from server.services import attendance

    begun = time.perf_counter()
    with db.session() as s:
        added = add_proof_demo(s, now)
    print(f"proof demo data: {added or 'there already'} in {time.perf_counter() - begun:.1f} s")
    with db.session() as s:
        site = s.scalars(select(Site).order_by(Site.id)).first()
        assert site is not None
        people = s.scalars(
            select(Person)
            .where(Person.site_id == site.id, Person.is_participant.is_(True), Person.active.is_(True))
            .order_by(Person.id)
            .limit(30)
        ).all()
        if len(people) < 30:
            print(f"only {len(people)} active participants at {site.name}: the cohort is smaller")
        for p in people:
            p.cohort = COHORT
        trainer = s.scalar(select(Person).where(Person.site_id == site.id, Person.name == TRAINER))
        if trainer is None:
            trainer = Person(site_id=site.id, name=TRAINER, is_trainer=True, is_participant=False)
            s.add(trainer)
            s.flush()
        attendance.set_timetable(s, site.id, COHORT, [(d, dtime(9), dtime(15)) for d in range(4)])
        print(f"site {site.name}: cohort of {len(people)}, trainer {trainer.id}")
        return trainer.id, people[0].id


def _time_documents(
    app: Any, trainer_id: int, person_id: int, n: int, now: datetime
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds of each document, ``n`` times each."""
    from sqlalchemy import select

    from server.adapters.web.auth import User
    from server.extensions import db
    from server.models import Certificate, Person

    client = app.test_client()
    with db.session() as s:
        trainer_person = s.get(Person, trainer_id)
        assert trainer_person is not None
        user_id = User.from_person(trainer_person).get_id()
    with client.session_transaction() as session:
        session["_user_id"] = user_id
        session["seen"] = int(time.time())
    month = (now.date().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    timings: dict[str, list[float]] = {name: [] for name in TARGETS}
    cpu: dict[str, list[float]] = {name: [] for name in TARGETS}
    for _ in range(n):
        start, used = time.perf_counter(), time.process_time()
        issued = client.post(
            f"/certificates/people/{person_id}/issue", data={"kind": "competence", "language": "de"}
        )
        with db.session() as s:
            code = s.scalars(select(Certificate.code).order_by(Certificate.id.desc())).first()
        response = client.get(f"/certificates/{code}.pdf")
        timings["certificate"].append(time.perf_counter() - start)
        cpu["certificate"].append(time.process_time() - used)
        assert issued.status_code == 302 and response.status_code == 200, response.status_code

        start, used = time.perf_counter(), time.process_time()
        response = client.post(
            "/certificates/cohort", data={"cohort": COHORT, "kind": "participation", "language": "de"}
        )
        timings["cohort of 30 certificates"].append(time.perf_counter() - start)
        cpu["cohort of 30 certificates"].append(time.process_time() - used)
        assert response.status_code == 200, response.get_data(as_text=True)[:500]

        start, used = time.perf_counter(), time.process_time()
        response = client.get("/attendance/sheet.pdf", query_string={"month": month, "cohort": COHORT})
        timings["attendance sheet, 30 people"].append(time.perf_counter() - start)
        cpu["attendance sheet, 30 people"].append(time.process_time() - used)
        assert response.status_code == 200, response.status_code
    return timings, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument(
        "--database-url", default=None, help="default: a fresh SQLite file in a temp directory"
    )
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)

    from server import create_app
    from server.config import TestConfig
    from server.db import normalise_url
    from server.extensions import db

    tmp: Any = None
    if args.database_url:
        url = normalise_url(args.database_url)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="werkbank-bench-")
        url = f"sqlite:///{Path(tmp.name) / 'bench.sqlite'}"
    try:
        print(f"database: {url.split('@')[-1]}  ({date.today()})")
        print(_fill(url, args.scale, args.seed))
        app = create_app(TestConfig, DATABASE_URL=url)
        from server.services import documents

        loaded = documents.warm_up()
        print(f"start-up, once per web worker (server/wsgi.py): WeasyPrint and fonts in {loaded:.2f} s")
        now = datetime.now(UTC)
        trainer_id, person_id = _prepare(app, now)
        timings, cpu = _time_documents(app, trainer_id, person_id, args.n, now)
        db.dispose()
    finally:
        if tmp is not None:
            tmp.cleanup()
    failed = False
    print(f"{'wall-clock seconds':30} {'min':>7} {'median':>7} {'max':>7} {'target':>7}  {'CPU median':>10}")
    for name, values in timings.items():
        ok = max(values) <= TARGETS[name]
        failed |= not ok
        print(
            f"{name:30} {min(values):6.2f}s {statistics.median(values):6.2f}s {max(values):6.2f}s "
            f"{TARGETS[name]:6.1f}s  {statistics.median(cpu[name]):9.2f}s  " + ("met" if ok else "NOT MET")
        )
    print(f"first round: {', '.join(f'{v[0]:.2f} s' for v in timings.values())}")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average (1, 5, 15 min): {load} on {os.cpu_count()} CPUs")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
