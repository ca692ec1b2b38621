"""``make faults``: run the fault scenarios on real processes and print what was stored.

    python -m tests.faults.run [--only NAME ...] [--list] [--out var/faults] [--budget 840]

Needs ``mosquitto`` and a PostgreSQL server (``FAULTS_DATABASE_URL``, else
``TEST_DATABASE_URL``, else postgresql+psycopg://postgres@127.0.0.1:5432/); it creates its own
databases and drops them. Exits 1 when any scenario lost, doubled or left open a session,
missed a duration bound, or could not run. The table goes to stdout and to
``<out>/report.md``; every process's log to ``<out>/logs/<scenario>/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

from .harness import ROOT, SITE_TZ, START_BOUND_S, Result, Suite
from .scenarios import SCENARIOS, Scenario, run_scenario

COLUMNS = (
    "scenario",
    "taps",
    "sessions expected",
    "stored",
    "doubled",
    "lost",
    "open",
    "duration error p50 / max (s)",
    "bound (s)",
    "start error max (s)",
    "offline decisions",
    "offline latency p50 / max (s)",
    "offline while server up",
    "allows without session",
    "result",
)


def _s(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(r: Result) -> list[str]:
    if r.error and not r.taps:
        return [r.name, *["-"] * (len(COLUMNS) - 2), "ERROR"]
    return [
        r.name,
        str(r.taps),
        str(r.expected),
        str(r.stored),
        str(r.doubled),
        str(r.lost),
        str(r.open),
        f"{_s(r.dur_p50)} / {_s(r.dur_max)}",
        f"{r.bound:g}",
        _s(r.start_max, 1),
        str(r.offline),
        f"{_s(r.offline_p50)} / {_s(r.offline_max)}",
        str(r.unexpected_offline),
        str(r.ghost_allows),
        "pass" if r.passed else "FAIL",
    ]


def table(results: list[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row(r)) + " |" for r in results]
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    out: list[str] = []
    for r in results:
        out.append(f"- **{r.name}** ({r.title}, {r.seconds:.0f} s): " + ("pass" if r.passed else "FAIL"))
        if r.error:
            out.append(f"  - could not run: {r.error}")
        out += [f"  - {failure}" for failure in r.failures]
        out += [f"  - {figure}" for figure in r.figures]
        out += [f"  - note: {note}" for note in r.notes]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these scenarios")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "faults", help="report and logs")
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="scenarios run at the same time (each has its own broker, database and processes)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=840.0,
        help="seconds; scenarios that would start later are reported as not run (a failure)",
    )
    args = parser.parse_args(argv)
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:20} {scenario.title} (bound {scenario.bound:g} s)")
        return 0
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    unknown = set(args.only or ()) - {s.name for s in SCENARIOS}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}; see --list")
    if not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists():
        print("the fault suite needs mosquitto: apt-get install mosquitto", file=sys.stderr)
        return 2

    logging.basicConfig(level=logging.INFO, format="%(asctime)s faults: %(message)s", stream=sys.stderr)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt  # clean up (processes, databases) on CI's timeout too

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()
    # The simulated day whose midnight the hour-long link cut crosses: tomorrow at the site.
    tomorrow = (datetime.now(UTC).astimezone(ZoneInfo(SITE_TZ)) + timedelta(days=1)).date()
    args.out.mkdir(parents=True, exist_ok=True)
    suite = Suite(args.out, tomorrow)
    results: dict[str, Result] = {}

    def run(scenario: Scenario) -> None:
        if time.monotonic() - started > args.budget:
            skipped = Result(scenario.name, scenario.title, scenario.bound)
            skipped.error = f"not run: the suite's time budget of {args.budget:.0f} s was used up"
            results[scenario.name] = skipped
            return
        logging.info("scenario %s: %s", scenario.name, scenario.title)
        result = run_scenario(suite, scenario)
        results[scenario.name] = result
        logging.info(
            "scenario %s: %s in %.0f s %s",
            scenario.name,
            "pass" if result.passed else "FAIL",
            result.seconds,
            "; ".join(result.failures) or result.error or "",
        )

    pool = ThreadPoolExecutor(max(1, args.jobs), thread_name_prefix="scenario")
    try:
        logging.info("preparing the database template (migrate, load, provision)")
        suite.prepare()
        # The longest first, so that the scenarios running side by side end together.
        futures = [pool.submit(run, s) for s in sorted(chosen, key=lambda s: -s.expected_s)]
        for future in futures:
            future.result()
    except KeyboardInterrupt:
        logging.info("interrupted: stopping every process, dropping the databases")
        pool.shutdown(wait=False, cancel_futures=True)
        return 130
    finally:
        suite.close()
    pool.shutdown()
    ordered = [results[s.name] for s in chosen if s.name in results]
    elapsed = time.monotonic() - started
    report = "\n\n".join(
        [
            f"# Fault suite report ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s)",
            table(ordered),
            f"Start error bound: {START_BOUND_S:g} s. Logs: {args.out / 'logs'}.",
            details(ordered),
        ]
    )
    (args.out / "report.md").write_text(report + "\n", encoding="utf-8")
    print(report)
    return 0 if all(r.passed for r in ordered) else 1


if __name__ == "__main__":
    code = main()
    if code == 130:
        # Interrupted: everything is stopped and dropped; do not wait for the scenario threads.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
