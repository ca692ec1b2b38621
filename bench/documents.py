"""Speed of the proof documents on generated years of data (docs/proof.md records the figures).

1. **data**: ``werkbank demo-data`` fills a fresh database (``--scale small``: 2 sites, 10
   machines, 1 year; ``full``: 5 sites, 100 machines, 5 years), then ``add_proof_demo`` adds two
   months of check-ins, briefings with signatures, exits and targets;
2. **documents**, each through the Flask test client as a trainer of the site, ``--n`` times:
   one competence pass PDF (target ≤ 1 s), the participation certificates of a cohort of 30 at
   once (≤ 20 s), and a month's attendance sheet PDF for a cohort of 30 (≤ 2 s).

    .venv/bin/python bench/documents.py [--scale small|full] [--n 5]

A cohort of exactly 30 is made from the site's participants (the generated cohorts are smaller
or larger). Exit status 0 when every document meets its target, 1 when one misses.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.dashboards import SCALES, _fill

TARGETS = {"certificate": 1.0, "cohort of 30 certificates": 20.0, "attendance sheet, 30 people": 2.0}
COHORT = "Bench cohort"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from sqlalchemy import select

    from server import create_app
    from server.config import TestConfig
    from server.demo.proof import add_proof_demo
    from server.extensions import db
    from server.models import Person, Site

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        print(_fill(url, args.scale, args.seed))
        app = create_app(TestConfig, DATABASE_URL=url)
        now = datetime.now(UTC)
        begun = time.perf_counter()
        with db.session() as s:
            added = add_proof_demo(s, now)
        print(f"proof demo data: {added} in {time.perf_counter() - begun:.1f} s")
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
            trainer = Person(site_id=site.id, name="Bench Trainer", is_trainer=True, is_participant=False)
            s.add(trainer)
            s.flush()
            trainer_id, person_id, site_id = trainer.id, people[0].id, site.id
            from server.services import attendance

            attendance.set_timetable(s, site_id, COHORT, [(d, dtime(9), dtime(15)) for d in range(4)])
        client = app.test_client()
        from server.web.auth import User

        with db.session() as s:
            trainer_person = s.get(Person, trainer_id)
            assert trainer_person is not None
            user_id = User.from_person(trainer_person).get_id()
        with client.session_transaction() as session:
            session["_user_id"] = user_id
            session["seen"] = int(time.time())
        month = (now.date().replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
        timings: dict[str, list[float]] = {name: [] for name in TARGETS}
        for _ in range(args.n):
            start = time.perf_counter()
            issued = client.post(
                f"/certificates/people/{person_id}/issue", data={"kind": "competence", "language": "de"}
            )
            code = None
            with db.session() as s:
                from server.models import Certificate

                code = s.scalars(select(Certificate.code).order_by(Certificate.id.desc())).first()
            response = client.get(f"/certificates/{code}.pdf")
            timings["certificate"].append(time.perf_counter() - start)
            assert issued.status_code == 302 and response.status_code == 200, response.status_code

            start = time.perf_counter()
            response = client.post(
                "/certificates/cohort", data={"cohort": COHORT, "kind": "participation", "language": "de"}
            )
            timings["cohort of 30 certificates"].append(time.perf_counter() - start)
            assert response.status_code == 200, response.get_data(as_text=True)[:500]

            start = time.perf_counter()
            response = client.get("/attendance/sheet.pdf", query_string={"month": month, "cohort": COHORT})
            timings["attendance sheet, 30 people"].append(time.perf_counter() - start)
            assert response.status_code == 200, response.status_code
        db.dispose()
    failed = False
    print(f"{'document':32} {'median':>8} {'max':>8} {'target':>8}")
    for name, values in timings.items():
        worst = max(values)
        ok = worst <= TARGETS[name]
        failed |= not ok
        print(
            f"{name:32} {statistics.median(values):7.2f}s {worst:7.2f}s {TARGETS[name]:7.1f}s "
            + ("ok" if ok else "MISSED")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
