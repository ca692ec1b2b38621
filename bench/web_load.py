"""Web pages under load through the production stack: nginx (deploy/nginx-werkbank.conf, TLS) in
front of gunicorn (the command line of deploy/systemd/werkbank-web.service, several workers), on
PostgreSQL holding the five-year demo history, beside the same pages through the Flask test
client in the same run.

1. **data**: the database ``wb_webload_bench`` on the PostgreSQL server of ``--admin-url`` is
   reused when an earlier run completed it (a comment on the database says so); otherwise (or
   with ``--fresh``) it is dropped, created and filled by ``werkbank demo-data --sites 5
   --machines 100 --years 5`` (about 2 M sessions; 4 minutes on an idle 2-core machine, longer on
   a busy one). An older schema is upgraded first.
2. **test client**: the overview, the utilisation dashboard (one site, one year) and the funder
   report (the same) through the Flask test client, ``--n`` requests each, one at a time, logged
   in as the demo admin: p50 and p95 per page. Measured twice, before the stack starts and
   again after it stopped, and pooled: the 2-core machine's speed drifts by a third within
   minutes (the same page's p50 through the test client was 30 ms in one run and 47 ms in the
   next), so one window measured before the load could be a fast or a slow moment that the load
   did not share. The two windows bracket the load; both are printed.
3. **stack**: web and nginx started by the code of tests/deploy/test_stack.py (the unit's
   ExecStart, EnvironmentFile and WorkingDirectory with deploy/werkbank.env.example; nginx with
   deploy/nginx-werkbank.conf; only ports and paths moved), on loopback. ``--users`` users log
   in through nginx, each in a session of their own; then ``wrk`` (Debian's package) runs
   ``--users`` connections, one per user, for ``--duration`` seconds, each rotating the three
   pages with ``--think`` ms (±50 %) between a response and the next request (a bounded load:
   people read a page before they open the next; 1 s is harsher than people read, and offers more
   than 20 open overviews polling ``/live.json`` every 3 s: docs/performance.md, "The load
   model"). nginx logs each request's time (``$request_time``: from the request's first byte
   to the response's last) and status; the percentiles per page come from that log.

Targets (2-core machine): p95 ≤ 300 ms for each page under the load; no error (any status
outside 2xx and any socket error or timeout counts; requests still in flight when wrk stops, which
nginx logs as 499, are reported but are neither); the stack's p50 within 1.5 x the test client's p50
(before and after the load, pooled) for each page. Each is printed as met or not met.

    .venv/bin/python bench/web_load.py [--fresh] [--duration 30] [--users 20] [--think 1000]
        [--database wb_webload_bench]

``make bench-web`` installs nginx and wrk when missing and runs it. Exit status: 0 when every
target is met, 1 when one is not, 2 when the run failed.
"""

from __future__ import annotations

import argparse
import html
import http.cookiejar
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE = "wb_webload_bench"
SITES, MACHINES, YEARS, SEED = 5, 100, 5.0, 1
COMPLETE = (
    f"werkbank demo-data --sites {SITES} --machines {MACHINES} --years {YEARS:g} --seed {SEED}: complete"
)
P95_TARGET_S = 0.300
P50_RATIO = 1.5
WRK = Path("/usr/bin/wrk")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# -- 1. data -------------------------------------------------------------------------------------


def _prepare(admin_url: str, fresh: bool, database: str) -> tuple[str, str]:
    """The bench database's URL, filled; and a line saying what was done."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from server.adapters.demo.history import generate
    from server.db import make_engine, normalise_url
    from server.migrate import schema_state, upgrade

    admin = make_url(normalise_url(admin_url))
    if admin.get_backend_name() != "postgresql":
        raise SystemExit("--admin-url must name a PostgreSQL server (the bench database is made there)")
    url = admin.set(database=database).render_as_string(hide_password=False)
    engine = create_engine(admin.render_as_string(hide_password=False), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :name"),
                {"name": database},
            ).first()
            if found is not None and found[0] == COMPLETE and not fresh:
                state = schema_state(url)
                if state.current:
                    return url, f"data: {database} reused ({COMPLETE})"
                if not state.newer:
                    upgrade(url)
                    _vacuum(url)
                    return url, f"data: {database} reused, schema upgraded from {state.describe()}"
            if found is not None:
                conn.execute(text(f'DROP DATABASE "{database}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{database}"'))
        upgrade(url)
        filled = make_engine(url)
        done = 0

        def step(n: int) -> None:
            nonlocal done
            done += n
            print(f"\r  generating: {done}/{MACHINES} machines", end="", file=sys.stderr, flush=True)

        try:
            summary = generate(filled, SITES, MACHINES, YEARS, SEED, datetime.now(UTC), progress=step)
        finally:
            filled.dispose()
        print(file=sys.stderr)
        _vacuum(url)
        with engine.connect() as conn:
            conn.execute(text(f"COMMENT ON DATABASE \"{database}\" IS '{COMPLETE}'"))
    finally:
        engine.dispose()
    return url, (
        f"data: {database} generated: {summary.sessions} sessions in {summary.seconds:.0f} s "
        f"(kept for the next run; --fresh makes it again)"
    )


def _vacuum(url: str) -> None:
    """VACUUM (ANALYZE) the bench database, as autovacuum would have long done on a lab's server:
    freshly written tables have no visibility map, so their index-only scans (the overview's,
    the dashboards') read the table rows too. Measured on a just-generated database: test-client
    p50 of the three pages 60 / 128 / 108 ms before, 38 / 76 / 98 ms after (docs/performance.md)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("VACUUM (ANALYZE)"))
    finally:
        engine.dispose()


@dataclass
class Page:
    name: str
    path: str


def _pages(url: str) -> list[Page]:
    from sqlalchemy import func, select

    from server.db import make_engine
    from server.models import Site, UsageDaily

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            slug = conn.execute(select(Site.slug).order_by(Site.id).limit(1)).scalar_one()
            newest = conn.execute(select(func.max(UsageDaily.day))).scalar_one()
            oldest = conn.execute(select(func.min(UsageDaily.day))).scalar_one()
    finally:
        engine.dispose()
    # The last full year with data, as bench/dashboards.py takes it.
    year = newest.year - 1 if oldest <= date(newest.year - 1, 1, 1) else newest.year
    return [
        Page("overview", "/"),
        Page("utilisation dashboard", f"/dashboards/usage?site={slug}&from={year}-01-01&to={year}-12-31"),
        Page("funder report", f"/reports/funder?site={slug}&from={year}-01&to={year}-12"),
    ]


# -- 2. the test client --------------------------------------------------------------------------


def _test_client(url: str, pages: list[Page], n: int) -> dict[str, list[float]]:
    from server import create_app
    from server.adapters.demo.history import ADMIN_EMAIL, ADMIN_PASSWORD
    from server.config import TestConfig
    from server.extensions import db

    app = create_app(TestConfig, DATABASE_URL=url)
    client = app.test_client()
    login = client.post("/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    if login.status_code not in (302, 303):
        raise RuntimeError(f"test client: login as {ADMIN_EMAIL} failed ({login.status_code})")
    times: dict[str, list[float]] = {}
    try:
        for page in pages:
            first = client.get(page.path)  # warm-up
            if first.status_code != 200:
                raise RuntimeError(f"test client: {page.path} answered {first.status_code}")
            taken = times.setdefault(page.name, [])
            for _ in range(n):
                begun = time.perf_counter()
                response = client.get(page.path)
                taken.append(time.perf_counter() - begun)
                if response.status_code != 200:
                    raise RuntimeError(f"test client: {page.path} answered {response.status_code}")
    finally:
        db.dispose()
    return times


# -- 3. the stack --------------------------------------------------------------------------------

# nginx logs each request as: request time (s), status, request URI.
LOG_FORMAT = "log_format bench '$request_time $status \"$request_uri\"';"
LOG_LINE = re.compile(r'^(\d+\.\d+) (\d{3}) "(.*)"$')


class Stack:
    """nginx + gunicorn as tests/deploy/test_stack.py starts them (no broker, bridge, scheduler or
    agent: the pages under test need only the database)."""

    def __init__(self, url: str, folder: Path) -> None:
        from server.broker import free_port
        from tests.deploy.mosquitto_layout import make_certs
        from tests.deploy.test_stack import (
            GUNICORN_PORT,
            INSTALL_DIR,
            Processes,
            env_file,
            nginx_conf,
            settings_file,
        )

        self.root = folder / "host"
        (self.root / "opt").mkdir(parents=True)
        (self.root / INSTALL_DIR.lstrip("/")).symlink_to(ROOT)  # the units' WorkingDirectory, /static/
        self.certs = make_certs(folder / "certs", "127.0.0.1", "localhost")
        self.ports = {GUNICORN_PORT: free_port()}
        nothing = free_port()  # no broker: the pages do not need one (never the system's 1883)
        self.settings = settings_file(
            self.root,
            {
                "DATABASE_URL": url,
                "MQTT_URL": f"mqtt://werkbank-bridge:unused@127.0.0.1:{nothing}",
                "SECRET_KEY": os.urandom(32).hex(),
                "WERKBANK_VAR_DIR": f"{self.root}/var/lib/werkbank",
            },
        )
        (self.root / "var/lib/werkbank").mkdir(parents=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(self.root / "nonexistent"),
        } | env_file(self.settings.read_text())
        self.main = nginx_conf(self.root, self.ports, self.certs)
        self.access_log = self.root / "var/log/nginx/access.log"
        conf = self.main.read_text()
        plain = f"access_log {self.access_log};"
        assert plain in conf, "tests/deploy/test_stack.py's nginx.conf changed: update bench/web_load.py"
        self.main.write_text(conf.replace(plain, f"{LOG_FORMAT}\n  access_log {self.access_log} bench;"))
        self.procs = Processes(folder / "logs")
        self.base = f"https://127.0.0.1:{self.ports[443]}"
        self.tls = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

    def start(self) -> None:
        from server.broker import wait_for_port
        from tests.deploy.test_stack import GUNICORN_PORT, NGINX, command_line, unit_service

        unit = unit_service("werkbank-web.service")
        argv = command_line("werkbank-web.service", self.root, self.ports)
        self.procs.start("werkbank-web", argv, self.env, Path(f"{self.root}{unit['WorkingDirectory']}"))
        nginx = [str(NGINX), "-p", str(self.root), "-c", str(self.main), "-g", "daemon off;"]
        self.procs.start("nginx", nginx, self.env, self.root)
        for port in (self.ports[GUNICORN_PORT], self.ports[443]):
            wait_for_port("127.0.0.1", port, timeout=60)
        self.procs.alive()

    def workers(self) -> int:
        from tests.deploy.test_stack import unit_service

        found = re.search(r"--workers (\d+)", unit_service("werkbank-web.service")["ExecStart"])
        return int(found.group(1)) if found else 1

    def login(self) -> str:
        """Log in as the demo admin through nginx, as a browser does; the Cookie header to send."""
        from server.adapters.demo.history import ADMIN_EMAIL, ADMIN_PASSWORD

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self.tls), urllib.request.HTTPCookieProcessor(jar)
        )
        with opener.open(f"{self.base}/login", timeout=30) as resp:
            form = resp.read().decode()
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)
        if token is None:
            raise RuntimeError("no csrf_token on the login page")
        body = urllib.parse.urlencode(
            {"csrf_token": html.unescape(token.group(1)), "email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        ).encode()
        request = urllib.request.Request(
            f"{self.base}/login", data=body, headers={"Referer": f"{self.base}/login"}
        )
        with opener.open(request, timeout=30) as resp:
            landed = resp.geturl()
        if landed.endswith("/login"):
            raise RuntimeError(f"login as {ADMIN_EMAIL} through nginx failed")
        return "; ".join(f"{c.name}={c.value}" for c in jar)

    def get(self, path: str, cookie: str) -> int:
        request = urllib.request.Request(f"{self.base}{path}", headers={"Cookie": cookie})
        try:
            with urllib.request.urlopen(request, context=self.tls, timeout=60) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def requests_since(self, offset: int) -> list[tuple[str, int, float]]:
        """(URI, status, seconds) of every request nginx logged after ``offset``."""
        with self.access_log.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            found = LOG_LINE.match(line)
            if found is not None:
                out.append((found.group(3), int(found.group(2)), float(found.group(1))))
        return out

    def stop(self) -> None:
        self.procs.stop()


WRK_SCRIPT = """
local paths = {%(paths)s}
local cookies = {%(cookies)s}
local think = %(think)d
local made = 0
local threads = {}

function setup(thread)
  made = made + 1
  thread:set("user", made)
  thread:set("cookie", cookies[made])
  table.insert(threads, thread)
end

function init(args)
  n = 0
  bad = 0
  wrk.headers["Cookie"] = cookie
  math.randomseed(user)
end

function request()
  n = n + 1
  return wrk.format("GET", paths[((n + user) %% #paths) + 1])
end

function delay()
  return math.floor(think * (0.5 + math.random()))
end

function response(status, headers, body)
  if status < 200 or status > 299 then bad = bad + 1 end
end

function done(summary, latency, requests)
  local non2xx = 0
  for _, thread in ipairs(threads) do non2xx = non2xx + thread:get("bad") end
  local e = summary.errors
  io.write(string.format("WRK requests=%%d non2xx=%%d connect=%%d read=%%d write=%%d timeout=%%d\\n",
    summary.requests, non2xx, e.connect, e.read, e.write, e.timeout))
end
"""


def _run_wrk(
    stack: Stack, pages: list[Page], cookies: list[str], duration: int, think: int
) -> dict[str, int]:
    script = stack.root / "load.lua"

    def lua_list(items: list[str]) -> str:
        return ", ".join('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"' for item in items)

    script.write_text(
        WRK_SCRIPT
        % {"paths": lua_list([p.path for p in pages]), "cookies": lua_list(cookies), "think": think}
    )
    users = len(cookies)
    argv = [str(WRK), "-t", str(users), "-c", str(users), "-d", f"{duration}s", "--timeout", "10s"]
    argv += ["-s", str(script), stack.base + "/"]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=False)
    found = re.search(r"^WRK (.*)$", run.stdout, re.M)
    if run.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({run.returncode}): {run.stdout}\n{run.stderr}")
    return {key: int(value) for key, value in (item.split("=") for item in found.group(1).split())}


# -- the run -------------------------------------------------------------------------------------


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("BENCH_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help=f"a PostgreSQL server's URL, allowed to create {DATABASE} (default: postgres on 127.0.0.1)",
    )
    parser.add_argument(
        "--database",
        default=DATABASE,
        help=f"the bench database (default {DATABASE}; another: e.g. a copy to try a migration on)",
    )
    parser.add_argument("--fresh", action="store_true", help=f"generate {DATABASE} again even if complete")
    parser.add_argument("--duration", type=int, default=30, help="seconds of load (default 30)")
    parser.add_argument("--users", type=int, default=20, help="logged-in users = connections (default 20)")
    parser.add_argument(
        "--think", type=int, default=1000, help="ms between a response and a user's next request (±50 %%)"
    )
    parser.add_argument("--n", type=int, default=30, help="test client requests per page (default 30)")
    args = parser.parse_args(argv)
    for tool, package in ((WRK, "wrk"), (Path("/usr/sbin/nginx"), "nginx")):
        if not tool.exists():
            print(f"{tool} is missing: `apt-get install -y {package}` (`make bench-web` does this)")
            return 2
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)
    began = time.monotonic()
    print(f"web load bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, load {_loadavg()}")
    folder = Path(tempfile.mkdtemp(prefix="werkbank-webload-"))
    stack: Stack | None = None
    failed = False
    try:
        url, said = _prepare(args.admin_url, args.fresh, args.database)
        print(said)
        pages = _pages(url)
        print(f"test client, before the load: {args.n} requests per page, one at a time (load {_loadavg()})")
        before = _test_client(url, pages, args.n)
        stack = Stack(url, folder)
        stack.start()
        cookies = [stack.login() for _ in range(args.users)]
        for _ in range(stack.workers() * 2):  # every worker has served every page once
            for page in pages:
                status = stack.get(page.path, cookies[0])
                if status != 200:
                    raise RuntimeError(f"{page.path} through nginx answered {status}")
        offset = stack.log_size()
        load_before = _loadavg()
        print(
            f"stack: nginx + gunicorn ({stack.workers()} workers) on PostgreSQL, {args.users} users "
            f"logged in, wrk {args.duration} s, {args.users} connections, think {args.think} ms ±50 % "
            f"(load {load_before})"
        )
        counts = _run_wrk(stack, pages, cookies, args.duration, args.think)
        load_after = _loadavg()
        stack.procs.alive()
        logged = stack.requests_since(offset)
    except Exception as exc:
        failed = True
        print(f"run failed: {type(exc).__name__}: {exc}")
        if stack is not None:
            print(stack.procs.report())
        # Kept for a look: nginx's error log is under host/var/log/nginx there, each process's
        # output under logs (one run of many failed with "Connection refused" at the first
        # login, both logs above empty).
        print(f"the stack's folder is kept: {folder}")
        return 2
    finally:
        if stack is not None:
            stack.stop()
        if not failed:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"test client, after the load: {args.n} requests per page, one at a time (load {_loadavg()})")
    try:
        after = _test_client(url, pages, args.n)
    except Exception as exc:
        print(f"run failed: {type(exc).__name__}: {exc}")
        return 2

    by_path = {page.path: page.name for page in pages}
    served: dict[str, list[float]] = {page.name: [] for page in pages}
    # 499: nginx's "the client closed the connection first": the requests still in flight when
    # wrk stops at the end of the run (a request cut off earlier by wrk's timeout is counted as a
    # timeout by wrk). They got no response, so they are neither an error nor a time.
    cut_off = sum(1 for _, status, _ in logged if status == 499)
    not_2xx = [(uri, status) for uri, status, _ in logged if not 200 <= status <= 299 and status != 499]
    for uri, status, seconds in logged:
        if uri in by_path and status != 499:
            served[by_path[uri]].append(seconds)
    socket_errors = counts["connect"] + counts["read"] + counts["write"] + counts["timeout"]
    total = sum(len(v) for v in served.values())
    print(
        f"  {counts['requests']} requests in {args.duration} s ({counts['requests'] / args.duration:.1f}/s), "
        f"nginx logged {total} answered and {cut_off} still in flight when the load stopped; "
        f"load average after: {load_after}"
    )
    ok = True
    print(
        f"  {'page':<22} {'n':>5} {'p50':>8} {'p95':>8} {'max':>8} | {'client p50':>10} {'p95':>8} "
        f"{'(before / after)':>18} | ratio"
    )
    verdicts = []
    for page in pages:
        times, base = served[page.name], before[page.name] + after[page.name]
        if not times:
            print(f"  {page.name:<22} no requests logged")
            ok = False
            continue
        b50, a50 = _percentile(before[page.name], 0.5), _percentile(after[page.name], 0.5)
        p50, p95, worst = _percentile(times, 0.5), _percentile(times, 0.95), max(times)
        c50, c95 = _percentile(base, 0.5), _percentile(base, 0.95)
        ratio = p50 / c50 if c50 else float("inf")
        print(
            f"  {page.name:<22} {len(times):>5} {p50 * 1000:>6.0f}ms {p95 * 1000:>6.0f}ms "
            f"{worst * 1000:>6.0f}ms | {c50 * 1000:>8.0f}ms {c95 * 1000:>6.0f}ms "
            f"{f'({b50 * 1000:.0f} / {a50 * 1000:.0f} ms)':>18} | {ratio:.2f}"
        )
        fast, near = p95 <= P95_TARGET_S, ratio <= P50_RATIO
        ok = ok and fast and near
        verdicts.append(
            f"  {page.name}: p95 {p95 * 1000:.0f} ms ≤ {P95_TARGET_S * 1000:.0f} ms: "
            f"{'met' if fast else 'NOT MET'}; p50 {ratio:.2f} x the test client's ≤ {P50_RATIO}: "
            f"{'met' if near else 'NOT MET'}"
        )
    clean = not not_2xx and counts["non2xx"] == 0 and socket_errors == 0
    ok = ok and clean
    print("targets:")
    print("\n".join(verdicts))
    print(
        f"  no error: {'met' if clean else 'NOT MET'} ({counts['non2xx']} responses outside 2xx seen by wrk, "
        f"{len(not_2xx)} in nginx's log, {socket_errors} socket errors)"
    )
    for uri, status in not_2xx[:5]:
        print(f"    {status} {uri}")
    print(f"whole run: {time.monotonic() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
