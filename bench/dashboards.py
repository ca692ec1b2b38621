"""Dashboard and report speed on years of data: server time per page, and what keeping the
aggregates fresh costs.

1. **data**: when the database has no people yet, ``werkbank demo-data`` fills it
   (``--scale small``: 2 sites, 10 machines, 1 year; ``full``: 5 sites, 100 machines, 5 years,
   about 2 M sessions) and its time is reported;
2. **pages**: through the Flask test client, logged in as the demo admin through the real
   login form, ``--n`` requests (≥ 50) each of the utilisation dashboard, the learning
   dashboard and the funder report for one site and one year, and ``--n-export`` (≥ 5) of the
   funder report's CSV and XLSX exports; p50/p95/max server time per page (targets: pages
   ≤ 200 ms at p95, exports ≤ 2 s). A URL that answers 404 is reported as "missing" (the
   pages are built separately) and does not fail the run;
3. **refresh**: the scheduler's ``refresh_usage`` job with nothing to do, and with one day
   of every machine marked dirty (what a busy day's ingestion leaves behind), plus a
   ``werkbank usage rebuild`` of one month.

    .venv/bin/python bench/dashboards.py [--scale small|full] [--database-url URL] [--n 50]

Without ``--database-url`` a fresh SQLite file in a temp directory is used (and removed).
A PostgreSQL URL is used as it is: point it at an empty database the first time (it is
migrated and filled), and at the same one again to time the pages only.

Exit status: 0 when every page that exists meets its target, 1 when one misses, 2 when the
run failed (a page answering neither 200 nor 404, say).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

SCALES = {"small": (2, 10, 1.0), "full": (5, 100, 5.0)}
PAGE_TARGET_S = 0.200
EXPORT_TARGET_S = 2.0


def _fill(url: str, scale: str, seed: int) -> str:
    from sqlalchemy import func, select

    from server.adapters.demo.history import generate
    from server.db import make_engine
    from server.migrate import upgrade
    from server.models import Person

    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            people = conn.execute(select(func.count(Person.id))).scalar_one()
        if people:
            return f"data: the database has {people} people already; not generated"
        sites, machines, years = SCALES[scale]
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            print(f"\r  generating: {done}/{machines} machines", end="", file=sys.stderr, flush=True)

        summary = generate(engine, sites, machines, years, seed, datetime.now(UTC), progress=step)
        print(file=sys.stderr)
    finally:
        engine.dispose()
    rows = ", ".join(f"{n} {t}" for t, n in sorted(summary.rows.items()))
    return (
        f"data: demo-data {sites} sites, {machines} machines, {years:g} years: {summary.sessions} sessions "
        f"in {summary.seconds:.1f} s ({rows})"
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _time_pages(url: str, n: int, n_export: int) -> tuple[list[str], bool]:
    from sqlalchemy import func, select

    from server import create_app
    from server.adapters.demo.history import ADMIN_EMAIL, ADMIN_PASSWORD
    from server.config import TestConfig
    from server.extensions import db
    from server.models import Site, UsageDaily

    app = create_app(TestConfig, DATABASE_URL=url)
    with db.session() as s:
        site = s.scalar(select(Site).order_by(Site.id))
        newest = s.scalar(select(func.max(UsageDaily.day)))
    if site is None or newest is None:
        return ["pages: no data"], False
    with db.session() as s:
        oldest = s.scalar(select(func.min(UsageDaily.day)))
    # The last full year with data; the current one when the data is younger than that.
    year = newest.year - 1 if oldest is not None and oldest <= date(newest.year - 1, 1, 1) else newest.year
    slug = site.slug
    pages = [
        (
            "usage dashboard",
            f"/dashboards/usage?site={slug}&from={year}-01-01&to={year}-12-31",
            n,
            PAGE_TARGET_S,
        ),
        (
            "learning dashboard",
            f"/dashboards/learning?site={slug}&from={year}-01-01&to={year}-12-31",
            n,
            PAGE_TARGET_S,
        ),
        ("funder report", f"/reports/funder?site={slug}&from={year}-01&to={year}-12", n, PAGE_TARGET_S),
        (
            "funder CSV",
            f"/reports/funder.csv?site={slug}&from={year}-01&to={year}-12",
            n_export,
            EXPORT_TARGET_S,
        ),
        (
            "funder XLSX",
            f"/reports/funder.xlsx?site={slug}&from={year}-01&to={year}-12",
            n_export,
            EXPORT_TARGET_S,
        ),
    ]
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    login = client.post("/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    if login.status_code not in (302, 303):  # a refused login shows the form again
        return [f"pages: login as {ADMIN_EMAIL} failed ({login.status_code})"], False
    lines = [f"pages: site {slug}, year {year}, server time through the Flask test client"]
    ok = True
    for name, path, count, target in pages:
        first = client.get(path)  # warm-up (and the existence check)
        if first.status_code == 404:
            lines.append(f"  {name:<20} missing (404)  {path}")
            continue
        if first.status_code != 200:
            lines.append(f"  {name:<20} FAILED: HTTP {first.status_code}  {path}")
            return lines, False
        times = []
        for _ in range(count):
            begun = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - begun)
            if response.status_code != 200:
                lines.append(f"  {name:<20} FAILED: HTTP {response.status_code}")
                return lines, False
        p50, p95, worst = _percentile(times, 0.5), _percentile(times, 0.95), max(times)
        met = p95 <= target
        ok = ok and met
        lines.append(
            f"  {name:<20} n={count:<4} p50 {p50 * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  "
            f"max {worst * 1000:7.1f} ms  (target p95 ≤ {target * 1000:.0f} ms: {'met' if met else 'MISSED'})"
        )
    db.dispose()
    return lines, ok


def _time_refresh(url: str) -> list[str]:
    from sqlalchemy import func, select

    from server.db import Database
    from server.models import Machine, Site, UsageDirty
    from server.services import usage

    database = Database()
    database.init(url)
    lines = ["refresh: the scheduler's refresh_usage job"]
    try:
        now = datetime.now(UTC)
        usage.refresh(database, now)  # settle whatever is queued
        begun = time.perf_counter()
        usage.refresh(database, now)
        lines.append(f"  nothing dirty:                 {(time.perf_counter() - begun) * 1000:8.1f} ms")
        with database.session() as s:
            machines = s.execute(
                select(Machine.id, Site.timezone).join(Site, Site.id == Machine.site_id)
            ).all()
            for machine_id, tz in machines:
                from zoneinfo import ZoneInfo

                yesterday = now.astimezone(ZoneInfo(tz)).date() - timedelta(days=1)
                usage.mark_dirty(s, machine_id, [yesterday], now)
            queued = s.scalar(select(func.count()).select_from(UsageDirty))
        begun = time.perf_counter()
        done = usage.refresh(database, now)
        took = time.perf_counter() - begun
        lines.append(
            f"  {queued} machine-days dirty:      {took * 1000:8.1f} ms  "
            f"({took / max(1, done) * 1000:.1f} ms per machine-day, {done} recomputed)"
        )
        month = (now - timedelta(days=40)).date().replace(day=1)
        begun = time.perf_counter()
        days = usage.rebuild(database, since=month, now=now)
        took = time.perf_counter() - begun
        lines.append(
            f"  rebuild since {month}:     {took:8.1f} s   ({days} machine-days, "
            f"{took / max(1, days) * 1000:.1f} ms each)"
        )
    finally:
        database.dispose()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="small", help="data set size (default small)"
    )
    parser.add_argument(
        "--database-url", default=None, help="default: a fresh SQLite file in a temp directory"
    )
    parser.add_argument("--n", type=int, default=50, help="requests per page (default 50, at least 50)")
    parser.add_argument("--n-export", type=int, default=5, help="requests per export (default 5, at least 5)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-refresh", action="store_true", help="skip the refresh measurements")
    args = parser.parse_args(argv)
    if args.n < 50 or args.n_export < 5:
        parser.error("--n must be at least 50 and --n-export at least 5")
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    tmp: Any = None
    if args.database_url:
        from server.db import normalise_url

        url = normalise_url(args.database_url)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="werkbank-bench-")
        url = f"sqlite:///{Path(tmp.name) / 'bench.sqlite'}"
    try:
        print(f"database: {url.split('@')[-1]}  ({date.today()})")
        print(_fill(url, args.scale, args.seed))
        lines, ok = _time_pages(url, args.n, args.n_export)
        print("\n".join(lines))
        if not args.no_refresh:
            print("\n".join(_time_refresh(url)))
    except Exception as exc:  # a failed run is exit status 2, with the reason
        print(f"run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
