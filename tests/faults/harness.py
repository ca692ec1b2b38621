"""The fault suite's harness: real processes on loopback, a person model, and the accounting.

Each scenario gets a :class:`World` of its own: a PostgreSQL database cloned from the seeded
template, a private persistent Mosquitto, ``werkbank bridge`` processes and
``werkbank-agent --simulate`` processes (gpiozero's mock pins, the simulated reader fed
through standard input, so a tap needs no broker). The harness plays the people at the
machines: it taps in, waits, taps out, and measures with its own monotonic clock what each
session really lasted. At the end it reads what the server stored and compares.

What "really lasted" means: a session runs from the tap-in the machine confirmed
(the agent's decision line "unlocked") until the relay opened. The harness knows the relay
opened when the agent confirmed a tap-out ("locked"), when the agent locked by itself at the
session's ``until``, or, after an agent was killed, when the restarted agent reported the
machine locked (the relay keeps its level while no agent runs; the new one opens it). When
the moment is only known to lie in an interval (a tap-out the agent may or may not have read
before it was killed), the expected duration is that interval and the error is the distance
from it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from server.broker import free_port, wait_for_port
from server.db import normalise_url
from server.models import AccessDecision, MachineSession
from werkbank_protocol.clock import FAKE_CLOCK_ENV
from werkbank_protocol.mqtt import BrokerAddress, make_client

from .relay import TcpRelay

log = logging.getLogger("faults")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_MOSQUITTO = ROOT / "deploy" / "mosquitto" / "werkbank.conf"
DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SITE_TZ = "Europe/Berlin"

# The people at the machines (one badge each). Everyone may use the printers, except Uma.
PEOPLE = {
    "ana": "A0000001",
    "ben": "B0000002",
    "cem": "C0000003",
    "dia": "D0000004",
    "eli": "E0000005",
    "fay": "F0000006",
    "gus": "0A000007",
    "hal": "0B000008",
    "rex": "0C000009",  # blocked on the server during a link cut
    "erin": "0E00000E",  # qualification ends on the day the simulated hour crosses midnight
    "uma": "0D00000D",  # never qualified
}
MACHINES = {
    # slug: max session in minutes
    "printer-1": 240,
    "printer-2": 240,
    "printer-3": 240,
    "printer-4": 240,
    "short-1": 1,
    "short-2": 1,
}

DECISION_LINE = re.compile(r"badge ([0-9A-F]+): (\w+) \((\w+)(, offline)?\)")


def lab_yaml(erin_until: date) -> str:
    """The lab file: one site always open, printers, and the people above."""
    granted = (datetime.now(UTC) - timedelta(days=30)).date()
    people: list[dict[str, Any]] = []
    for name, uid in PEOPLE.items():
        person: dict[str, Any] = {
            "name": name.title(),
            "email": f"{name}@faults.local",
            "site": "faults-lab",
            "language": "en",
            "badges": [uid],
        }
        if name != "uma":
            until = erin_until if name == "erin" else date(2099, 1, 1)
            person["qualifications"] = [
                {
                    "competency": "fdm-printing",
                    "level": "independent",
                    "granted": granted,
                    "valid_until": until,
                }
            ]
        people.append(person)
    lab = {
        "sites": [{"slug": "faults-lab", "name": "Fault Lab", "timezone": SITE_TZ}],
        "competencies": [
            {
                "slug": "fdm-printing",
                "name": "FDM 3D printing",
                "validity_months": 120,
                "steps": [{"kind": "briefing", "name": "Briefing", "leads_to": "briefed"}],
            }
        ],
        "machine_types": [{"slug": "fdm-printer", "name": "FDM 3D printer", "requires": ["fdm-printing"]}],
        "people": people,
        "machines": [
            {
                "slug": slug,
                "name": slug.title(),
                "site": "faults-lab",
                "type": "fdm-printer",
                "max_session_min": minutes,
                "device": {"id": f"pi-{slug}"},
            }
            for slug, minutes in MACHINES.items()
        ],
    }
    return yaml.safe_dump(lab, sort_keys=False)


def _die_with_parent() -> None:
    # A runner killed by CI's timeout must not leave brokers and agents behind.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# PR_SET_PDEATHSIG fires when the *thread* that started the child ends, so every child is
# started from this one thread, which lives as long as the runner.
_SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="spawner")


def spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    def start() -> subprocess.Popen[bytes]:
        # The preexec_fn only calls prctl (no locks), which is safe with threads.
        return subprocess.Popen(argv, cwd=ROOT, preexec_fn=_die_with_parent, **kwargs)  # noqa: PLW1509

    return _SPAWNER.submit(start).result()


def write_atomic(path: Path, content: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


# -- processes -------------------------------------------------------------------------------
class Proc:
    """A child process whose output goes to a log file, line by line, through ``on_line``."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.spawned = 0.0
        self._reader: threading.Thread | None = None
        self.lines: list[tuple[float, str]] = []

    def start(self, stdin: bool = False) -> None:
        self.spawned = time.monotonic()
        self.proc = spawn(
            self.argv,
            env=self.env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        with self.log_path.open("a", encoding="utf-8") as out:
            out.write(f"---- {self.name} started (pid {proc.pid})\n")
            for raw in proc.stdout:
                now = time.monotonic()
                line = raw.decode("utf-8", "replace").rstrip()
                out.write(line + "\n")
                self.lines.append((now, line))
                self.on_line(now, line)
            out.write(f"---- {self.name} exited ({proc.wait()})\n")

    def on_line(self, mono: float, line: str) -> None:
        pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> float:
        """SIGKILL; returns when it happened (monotonic)."""
        assert self.proc is not None
        self.proc.kill()
        when = time.monotonic()
        self.proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)  # every line written before the kill is read
        return when

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)

    def wait_line(self, pattern: str, after: float, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(t >= after and pattern in line for t, line in list(self.lines)):
                return True
            time.sleep(0.05)
        return False


@dataclass
class Decision:
    mono: float
    badge: str
    outcome: str  # unlocked, denied, locked, ignored, deferred
    reason: str
    offline: bool


class AgentProc(Proc):
    """``werkbank-agent --simulate --badges-from-stdin`` for one machine."""

    def __init__(self, world: World, machine: str, config: Path, storage: Path, env: dict[str, str]) -> None:
        self.machine = machine
        self.device_id = f"pi-{machine}"
        self.config = config
        self.storage = storage
        argv = [sys.executable, "-m", "device_agent", "--config", str(config), "--simulate"]
        argv.append("--badges-from-stdin")
        super().__init__(self.device_id, argv, env, world.logs / f"{self.device_id}.log")
        self.decisions: list[Decision] = []

    def on_line(self, mono: float, line: str) -> None:
        match = DECISION_LINE.search(line)
        if match:
            badge, outcome, reason, offline = match.groups()
            self.decisions.append(Decision(mono, badge, outcome, reason, bool(offline)))

    def tap(self, badge: str) -> float:
        """Present a badge; returns when (monotonic)."""
        assert self.proc is not None and self.proc.stdin is not None
        when = time.monotonic()
        try:
            self.proc.stdin.write(f"{badge}\n".encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # the agent is dead: the tap goes nowhere, as at a machine without power
        return when

    def decision_after(self, badge: str, after: float, timeout: float = 4.0) -> Decision | None:
        deadline = time.monotonic() + timeout
        while True:
            for decision in list(self.decisions):
                if decision.badge == badge and decision.mono >= after:
                    return decision
            if time.monotonic() >= deadline or not self.running:
                return None
            time.sleep(0.01)

    def outbox_size(self) -> int:
        path = self.storage / "outbox.sqlite"
        if not path.exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
                return int(db.execute("SELECT count(*) FROM outbox").fetchone()[0])
        except sqlite3.Error:
            return -1


class BridgeProc(Proc):
    metrics_port: int | None = None  # its Prometheus endpoint on loopback, when it serves one

    def wait_ready(self, after: float, timeout: float = 30.0) -> bool:
        return self.wait_line("bridge connected to", after, timeout)

    def decisions(self) -> int | None:
        """Taps this process has answered so far (``werkbank_decisions_total``, every reason),
        read from its metrics endpoint; None when it cannot be read (not running, no endpoint)."""
        if self.metrics_port is None or not self.running:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                body = resp.read().decode()
        except OSError:
            return None
        prefix = "werkbank_decisions_total{"
        return int(
            sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix))
        )


class Broker:
    """A private Mosquitto with persistence, configured like deploy/mosquitto/werkbank.conf."""

    KEYS = (
        "persistence",
        "autosave_interval",
        "autosave_on_changes",
        "max_queued_messages",
        "max_inflight_messages",
        "persistent_client_expiration",
        "message_size_limit",
        "max_packet_size",
        "set_tcp_nodelay",
    )
    # Not taken: the device listener's TLS, password file, ACL and `use_username_as_clientid`
    # (tested on their own in tests/deploy/test_mosquitto_config.py). The suite's clients log in
    # anonymously on one loopback listener, like the shipped server listener; with
    # `use_username_as_clientid` every anonymous client would get the same (empty) id.

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        for line in DEPLOY_MOSQUITTO.read_text().splitlines():
            if line.split(" ", 1)[0] in self.KEYS:
                lines.append(line.strip())
        lines += [
            f"persistence_location {directory}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.settings = [line for line in lines if line.split(" ", 1)[0] in self.KEYS]

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        out = (self.dir / "mosquitto.log").open("ab")
        self.proc = spawn([binary, "-c", str(self.conf)], stdout=out, stderr=out)
        wait_for_port("127.0.0.1", self.port, timeout=10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Observer:
    """An MQTT client that watches every device's status (and allow-list) as a bystander."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.client = make_client(
            f"faults-observer-{secrets.token_hex(3)}", BrokerAddress(host, int(port)), True
        )
        self.client.reconnect_delay_set(1, 2)
        self.statuses: dict[str, list[tuple[float, bool, dict[str, Any]]]] = {}
        # Every event an agent published (re-sends included), by id: (device, type, session).
        self.events: dict[str, tuple[str, str, str | None]] = {}
        self.event_copies = 0  # publications seen, re-sends counted
        self.client.on_connect = lambda c, *_: c.subscribe(
            [
                ("werkbank/v1/dev/+/status", 1),
                ("werkbank/v1/dev/+/allowlist", 1),
                ("werkbank/v1/dev/+/event", 1),
            ]
        )
        self.client.on_message = self._on_message
        self.client.connect_async(host, int(port), keepalive=10)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.monotonic()
        parts = msg.topic.split("/")
        if len(parts) == 5 and parts[4] == "event" and msg.payload:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(msg.payload)
                self.events.setdefault(str(event["id"]), (parts[3], str(event["type"]), event.get("session")))
                self.event_copies += 1
            return
        if len(parts) != 5 or parts[4] != "status" or not msg.payload:
            return
        with contextlib.suppress(ValueError):
            self.statuses.setdefault(parts[3], []).append((now, bool(msg.retain), json.loads(msg.payload)))

    def status_after(
        self, device: str, after: float, timeout: float, want: Callable[[dict[str, Any]], bool]
    ) -> tuple[float, dict[str, Any]] | None:
        deadline = time.monotonic() + timeout
        while True:
            for mono, retained, status in list(self.statuses.get(device, [])):
                if mono >= after and not retained and want(status):
                    return mono, status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_allowlists(url: str, devices: list[str], wait: float = 2.0) -> dict[str, int]:
    """The allow-list versions the broker holds retained now, by device."""
    host, port = url.removeprefix("mqtt://").split(":")
    client = make_client(f"faults-check-{secrets.token_hex(3)}", BrokerAddress(host, int(port)), True)
    found: dict[str, int] = {}

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.retain and msg.payload:
            with contextlib.suppress(ValueError, KeyError):
                found[msg.topic.split("/")[3]] = int(json.loads(msg.payload)["version"])

    client.on_message = on_message
    client.on_connect = lambda c, *_: c.subscribe([(f"werkbank/v1/dev/{d}/allowlist", 1) for d in devices])
    client.connect(host, int(port), keepalive=10)
    client.loop_start()
    time.sleep(wait)
    client.disconnect()
    client.loop_stop()
    return found


# -- what the people did ---------------------------------------------------------------------
@dataclass
class Tap:
    device: str
    badge: str
    mono: float
    must_be_online: bool
    decision: Decision | None = None

    @property
    def latency(self) -> float | None:
        return None if self.decision is None else self.decision.mono - self.mono


@dataclass
class Expected:
    """A session the people made (or should have been let into)."""

    device: str
    badge: str
    t_in: float  # monotonic, the tap-in
    true_start: datetime  # what the server should store as its start
    bound: float
    end_lo: float | None = None
    end_hi: float | None = None
    unconfirmed_out: float | None = None  # a tap-out the agent never confirmed (it was killed)
    kind: Literal["tap", "max", "server_lock"] = "tap"
    refused: str | None = None  # the agent refused the tap-in (reason): the session never began
    offline: bool = False

    @property
    def ended(self) -> bool:
        return self.end_lo is not None


@dataclass
class Result:
    name: str
    title: str
    bound: float
    seconds: float = 0.0
    taps: int = 0
    expected: int = 0
    stored: int = 0
    doubled: int = 0
    lost: int = 0
    open: int = 0
    dur_p50: float | None = None
    dur_max: float | None = None
    start_max: float | None = None
    offline: int = 0
    offline_p50: float | None = None
    offline_max: float | None = None
    unexpected_offline: int = 0
    ghost_allows: int = 0
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # a scenario's own measurements, printed
    error: str | None = None

    @property
    def passed(self) -> bool:
        return not self.failures and self.error is None


START_BOUND_S = 2.0  # a stored start may differ this much from the real tap-in
NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def _start(row: MachineSession) -> datetime:
    """A stored session's start (an end without a start sorts first and matches nothing)."""
    return row.started_at or NEVER


# -- the suite and its worlds ----------------------------------------------------------------
class Suite:
    """What all scenarios share: the PostgreSQL server, the seeded template, the device configs."""

    def __init__(self, out_dir: Path, sim_midnight_day: date) -> None:
        raw = (
            os.environ.get("FAULTS_DATABASE_URL") or os.environ.get("TEST_DATABASE_URL") or DEFAULT_SERVER_URL
        )
        if not raw.startswith(("postgresql", "postgres")):
            raise SystemExit(
                "the fault suite needs PostgreSQL: set FAULTS_DATABASE_URL="
                "postgresql+psycopg://USER@HOST:PORT/ (it makes and drops its own databases)"
            )
        self.server_url = make_url(normalise_url(raw)).set(database="postgres")
        self.admin = create_engine(self.server_url, isolation_level="AUTOCOMMIT")
        self.prefix = f"wb_faults_{os.getpid()}_{secrets.token_hex(2)}"
        self.template = f"{self.prefix}_tpl"
        self.out_dir = out_dir
        self.tmp = Path(tempfile.mkdtemp(prefix="wb-faults-"))
        self.bundles = self.tmp / "bundles"
        self.sim_midnight_day = sim_midnight_day
        self._count = 0
        self._lock = threading.Lock()
        self.databases: list[str] = []
        self.worlds: list[World] = []  # running now (closed at once on an interrupt)

    def db_url(self, name: str) -> str:
        return self.server_url.set(database=name).render_as_string(hide_password=False)

    def cli_env(self, database_url: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("MQTT_URL", "DATABASE_URL", FAKE_CLOCK_ENV)}
        env |= {
            "DATABASE_URL": database_url,
            "WERKBANK_VAR_DIR": str(self.tmp / "var"),
            "PYTHONUNBUFFERED": "1",
            "WERKBANK_LOG_LEVEL": "INFO",
        }
        return env | extra

    def _create(self, name: str, template: str | None = None) -> None:
        with self.admin.connect() as conn:
            suffix = f' TEMPLATE "{template}"' if template else ""
            conn.execute(text(f'CREATE DATABASE "{name}"{suffix}'))
        self.databases.append(name)

    def drop(self, name: str) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop_leftovers(self) -> None:
        """Drop the databases of earlier runs that were killed before they could clean up."""
        with self.admin.connect() as conn:
            names = conn.execute(text("SELECT datname FROM pg_database WHERE datname LIKE 'wb_faults_%'"))
            leftovers = [
                n
                for (n,) in names
                if (m := re.match(r"wb_faults_(\d+)_", n)) and not Path(f"/proc/{m[1]}").exists()
            ]
        for name in leftovers:
            with contextlib.suppress(Exception):
                self.drop(name)

    def prepare(self) -> None:
        """Migrate and seed the template through the real commands; provision every device."""
        self.drop_leftovers()
        self._create(self.template)
        url = self.db_url(self.template)
        lab = self.tmp / "lab.yaml"
        lab.write_text(lab_yaml(self.sim_midnight_day))
        env = self.cli_env(url)
        for args in (["db", "upgrade"], ["load", str(lab)]):
            done = subprocess.run(  # noqa: PLW1510 - checked below
                [sys.executable, "-m", "server", *args], env=env, cwd=ROOT, capture_output=True, text=True
            )
            if done.returncode != 0:
                raise RuntimeError(f"werkbank {' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        # What `werkbank device provision MACHINE --reader simulated` does, for every machine in one go.
        from server.db import Database
        from server.services.provisioning import provision_device

        database = Database()
        database.init(url)
        try:
            for machine in MACHINES:
                with database.session() as db:
                    provision_device(
                        db, machine, self.bundles / machine, "mqtt://127.0.0.1:1883", reader="simulated"
                    )
        finally:
            database.dispose()

    def new_database(self) -> tuple[str, str]:
        with self._lock:
            self._count += 1
            name = f"{self.prefix}_{self._count}"
        self._create(name, self.template)
        return name, self.db_url(name)

    def close(self) -> None:
        for running in list(self.worlds):
            running.close()
        for name in [*self.databases]:
            with contextlib.suppress(Exception):
                self.drop(name)
        self.admin.dispose()
        shutil.rmtree(self.tmp, ignore_errors=True)


class World:
    """One scenario's running system."""

    def __init__(self, suite: Suite, result: Result, world_offset: float = 0.0) -> None:
        self.suite = suite
        self.result = result
        self.dir = suite.tmp / result.name
        self.dir.mkdir(parents=True)
        self.logs = suite.out_dir / "logs" / result.name
        shutil.rmtree(self.logs, ignore_errors=True)
        self.logs.mkdir(parents=True)
        self.db_name, self.db_url = suite.new_database()
        self.clock_file = self.dir / "clock"
        self._offsets: list[tuple[float, float]] = []
        self.set_offset(self.clock_file, world_offset)
        self.broker = Broker(self.dir)
        self.observer: Observer | None = None
        self.bridges: list[BridgeProc] = []
        self.agents: dict[str, AgentProc] = {}
        self.relays: list[TcpRelay] = []
        self.taps: list[Tap] = []
        self.expected: list[Expected] = []
        # Devices whose server cannot be reached now ("*": all): their taps may be decided offline.
        self.faulty: set[str] = set()
        # Also compare every event the agents published (seen by the observer) with the
        # events table: each id stored, no session with two starts or two ends.
        self.check_events = False
        self._closed = False
        self._wall_minus_mono = time.time() - time.monotonic()

    # -- clocks ------------------------------------------------------------------------------
    def set_offset(self, clock_file: Path, seconds: float) -> None:
        write_atomic(clock_file, f"{seconds}\n")
        if clock_file == self.clock_file:
            self._offsets.append((time.monotonic(), seconds))
        # Each process reads the file again when it changed; give them a moment.
        time.sleep(0.05)

    @property
    def _observer(self) -> Observer:
        assert self.observer is not None, "boot() first"
        return self.observer

    @property
    def offset(self) -> float:
        """The world clock's offset now (seconds ahead of the real time)."""
        return self._offsets[-1][1]

    def true_wall(self, mono: float) -> datetime:
        """The time the server should store for a moment the harness saw (the world's clock)."""
        offset = 0.0
        for since, seconds in self._offsets:
            if since <= mono:
                offset = seconds
        return datetime.fromtimestamp(mono + self._wall_minus_mono + offset, UTC)

    # -- parts -------------------------------------------------------------------------------
    def boot(self) -> None:
        self.broker.start()
        self.observer = Observer(self.broker.url)

    def relay(self, port: int, name: str) -> TcpRelay:
        relay = TcpRelay("127.0.0.1", port, name)
        self.relays.append(relay)
        return relay

    def add_bridge(
        self,
        client_id: str = "werkbank-bridge",
        shared: bool = False,
        database_url: str | None = None,
        metrics: bool = False,
    ) -> BridgeProc:
        """A ``werkbank bridge``; ``metrics``: it serves /metrics on a loopback port (the suite
        reads there how many taps this process answered)."""
        env = self.suite.cli_env(
            database_url or self.db_url,
            MQTT_URL=self.broker.url,
            MQTT_CLIENT_ID=client_id,
            MQTT_SHARED_SUBSCRIPTIONS="true" if shared else "false",
        )
        env[FAKE_CLOCK_ENV] = str(self.clock_file)
        port = free_port() if metrics else None
        if port is not None:
            env["WERKBANK_BRIDGE_METRICS_PORT"] = str(port)
        bridge = BridgeProc(
            client_id, [sys.executable, "-m", "server", "bridge"], env, self.logs / f"{client_id}.log"
        )
        bridge.metrics_port = port
        self.bridges.append(bridge)
        return bridge

    def start_bridge(self, bridge: BridgeProc) -> None:
        started = time.monotonic()
        bridge.start()
        if not bridge.wait_ready(started, 60):
            raise RuntimeError(f"{bridge.name} did not connect (see {bridge.log_path})")

    def add_agent(
        self,
        machine: str,
        mqtt_port: int | None = None,
        clock_file: Path | None = None,
        tap_out_grace_s: float | None = None,
    ) -> AgentProc:
        """The agent of ``machine``; ``mqtt_port``: a relay in front of the broker;
        ``tap_out_grace_s``: the agent's ``[session] tap_out_grace_s`` instead of its default."""
        home = self.dir / f"pi-{machine}"
        shutil.copytree(self.suite.bundles / machine, home)
        storage = home / "storage"
        config = home / "agent.toml"
        text_ = config.read_text()
        text_ = re.sub(r'(?m)^dir = ".*"$', f'dir = "{storage}"', text_)
        text_ = re.sub(
            r'(?m)^url = ".*"$', f'url = "mqtt://127.0.0.1:{mqtt_port or self.broker.port}"', text_
        )
        if tap_out_grace_s is not None:
            line = f"tap_out_grace_s = {tap_out_grace_s}"
            if re.search(r"(?m)^\[session\]$", text_):
                text_ = re.sub(r"(?m)^\[session\]$", f"[session]\n{line}", text_, count=1)
            else:
                text_ += f"\n[session]\n{line}\n"
        config.write_text(text_)
        env = {k: v for k, v in os.environ.items() if k != FAKE_CLOCK_ENV}
        env |= {"GPIOZERO_PIN_FACTORY": "mock", "PYTHONUNBUFFERED": "1"}
        env[FAKE_CLOCK_ENV] = str(clock_file or self.clock_file)
        agent = AgentProc(self, machine, config, storage, env)
        self.agents[agent.device_id] = agent
        return agent

    def start_agents(self, *agents: AgentProc, timeout: float = 45.0) -> None:
        """Start and wait until each is online with an allow-list."""
        since = time.monotonic()
        for agent in agents:
            agent.start(stdin=True)
        for agent in agents:
            if not self.wait_online(agent, since, timeout, need_allowlist=True):
                raise RuntimeError(f"{agent.device_id} did not come online with an allow-list")

    def wait_online(
        self, agent: AgentProc, after: float, timeout: float, need_allowlist: bool = False
    ) -> tuple[float, dict[str, Any]] | None:
        return self._observer.status_after(
            agent.device_id,
            after,
            timeout,
            lambda s: bool(s.get("online")) and (not need_allowlist or bool(s.get("allowlist_version"))),
        )

    # -- people ------------------------------------------------------------------------------
    def _tap(self, agent: AgentProc, badge: str, timeout: float = 4.0) -> Tap:
        mono = agent.tap(badge)
        cut_off = "*" in self.faulty or agent.device_id in self.faulty
        tap = Tap(agent.device_id, badge, mono, must_be_online=not cut_off)
        self.taps.append(tap)
        tap.decision = agent.decision_after(badge, mono, timeout)
        return tap

    def tap_in(self, agent: AgentProc, who: str, bound: float | None = None) -> Expected:
        """``who`` taps in, expecting to be let in (they may use this machine).

        The session begins when the relay closes: when the agent says "unlocked" (after the
        server's answer, or after waiting 1.5 s for it and deciding offline), not at the tap."""
        badge = PEOPLE[who]
        tap = self._tap(agent, badge)
        decision = tap.decision
        began = decision.mono if decision is not None and decision.outcome == "unlocked" else tap.mono
        session = Expected(agent.device_id, badge, began, self.true_wall(began), bound or self.result.bound)
        self.expected.append(session)
        if decision is None or decision.outcome != "unlocked":
            session.refused = decision.reason if decision else "no answer"
            self.result.notes.append(f"{who} at {agent.machine}: refused at tap-in ({session.refused})")
        else:
            session.offline = decision.offline
        return session

    def tap_refused(self, agent: AgentProc, who: str) -> Tap:
        """``who`` taps and should be refused (the tap is counted; a session it opens is one too many)."""
        tap = self._tap(agent, PEOPLE[who])
        if tap.decision is not None and tap.decision.outcome == "unlocked":
            self.result.notes.append(f"{who} at {agent.machine}: let in, should have been refused")
            # The person notices the machine unlocked and taps out again, as anyone would.
            time.sleep(2.2)
            self._tap(agent, PEOPLE[who])
        return tap

    def tap_out(self, agent: AgentProc, session: Expected) -> None:
        """The person taps out; if the machine does not confirm, they try again (up to 3 times)."""
        if session.refused:
            return  # never let in: nothing to end
        for _attempt in range(3):
            tap = self._tap(agent, session.badge)
            decision = tap.decision
            if decision is None:
                # The agent is gone (killed): the relay stays as it is until the agent is back.
                if session.unconfirmed_out is None:
                    session.unconfirmed_out = tap.mono
                return
            if decision.outcome == "locked":
                if not session.ended:
                    session.end_lo = session.unconfirmed_out or tap.mono
                    session.end_hi = decision.mono
                return
            if decision.outcome == "unlocked":
                # The machine had already ended the session and started a new one: one too many.
                self.result.notes.append(
                    f"{agent.machine}: a tap-out started a new session ({decision.reason})"
                )
                if not session.ended:
                    session.end_lo, session.end_hi = session.t_in, tap.mono
                time.sleep(2.2)
                locked = self._observer.status_after(
                    agent.device_id, decision.mono, 0, lambda s: s.get("state") == "locked"
                )
                if locked is not None:
                    return  # it locked again by itself: the person walks away
                continue  # the person taps again to stop it
            time.sleep(2.2)  # ignored (grace) or refused: try again
        self.result.notes.append(f"{agent.machine}: tap-out of {session.badge} never confirmed")

    def expect_lock_at_until(self, session: Expected, max_s: float) -> None:
        """The agent should end ``session`` by itself ``max_s`` after the server let it in."""
        session.kind = "max"
        # The server's "until" is its decision time plus the maximum; the agent checks it each tick.
        session.end_lo = session.t_in + max_s - 0.2
        session.end_hi = session.t_in + max_s + 0.2

    def expect_server_lock(self, session: Expected, after: float, within: float) -> None:
        """The server should end ``session`` once it learns of it (``after``), within ``within`` s."""
        session.kind = "server_lock"
        session.end_lo = after
        session.end_hi = after + within

    def tap_out_then_kill(self, agent: AgentProc, session: Expected, delay: float) -> None:
        """The person taps out and the agent is killed ``delay`` seconds later."""
        mono = agent.tap(session.badge)
        tap = Tap(agent.device_id, session.badge, mono, must_be_online=True)
        self.taps.append(tap)
        time.sleep(delay)
        agent.kill()
        tap.decision = agent.decision_after(session.badge, mono, timeout=0)
        if tap.decision is not None and tap.decision.outcome == "locked":
            session.end_lo, session.end_hi = mono, tap.decision.mono
        else:
            session.unconfirmed_out = mono

    def block_badge(self, who: str) -> None:
        """Block ``who``'s badge on the server, as staff do for a lost or withdrawn badge."""
        from server.db import Database
        from server.models import Badge
        from server.services import badges

        database = Database()
        database.init(self.db_url)
        try:
            with database.session() as db:
                badge = db.scalar(select(Badge).where(Badge.uid == PEOPLE[who]))
                assert badge is not None
                badges.block(db, badge, None, "fault suite: badge withdrawn")
        finally:
            database.dispose()

    # -- agent restarts ----------------------------------------------------------------------

    def restart_agent(self, agent: AgentProc, wipe: bool = False) -> dict[str, Any] | None:
        """Start the agent again; note where its relay is (its first status after connecting).

        A session the killed process had open, which the new one reports locked, ended when the
        new process opened the relay: between its start (or an unconfirmed tap-out) and that status.
        """
        if wipe:
            shutil.rmtree(agent.storage, ignore_errors=True)
        spawned = time.monotonic()
        agent.start(stdin=True)
        seen = self.wait_online(agent, spawned, 60)
        if seen is None:
            self.result.notes.append(f"{agent.machine}: the restarted agent did not come online")
            return None
        mono, status = seen
        if status.get("state") == "locked":
            for session in self.expected:
                if session.device == agent.device_id and not session.ended and not session.refused:
                    session.end_lo = session.unconfirmed_out or spawned
                    session.end_hi = mono
        else:
            for session in self.expected:
                if session.device == agent.device_id and not session.ended and session.unconfirmed_out:
                    # Carried on: the person's tap-out was lost with the process; they tap again.
                    session.unconfirmed_out = None
                    self.tap_out(agent, session)
        return status

    # -- the end -----------------------------------------------------------------------------
    def settle(self, timeout: float = 90.0) -> None:
        """Wait until every running agent's outbox is empty (the server acknowledged everything)."""
        deadline = time.monotonic() + timeout
        time.sleep(1.0)
        while time.monotonic() < deadline:
            sizes = {a.device_id: a.outbox_size() for a in self.agents.values() if a.running}
            if all(n == 0 for n in sizes.values()):
                time.sleep(1.0)  # the last acked event's transaction is committed; let reads see it
                return
            time.sleep(0.5)
        self.result.notes.append(f"outboxes not empty after {timeout:.0f} s: {sizes}")

    def account(self) -> None:
        """Compare what the server stored with what happened; fill in the result."""
        result = self.result
        engine: Engine = create_engine(self.db_url)
        try:
            with Session(engine) as db:
                stored = list(db.scalars(select(MachineSession)))
                session_ids = {s.id for s in stored}
                allows = list(
                    db.scalars(
                        select(AccessDecision).where(
                            AccessDecision.decision == "allow", AccessDecision.session_id.is_not(None)
                        )
                    )
                )
        finally:
            engine.dispose()
        if self.check_events:
            self.account_events(engine_url=self.db_url)
        result.taps = len(self.taps)
        result.expected = len(self.expected)
        result.stored = len(stored)
        result.open = sum(1 for s in stored if s.ended_at is None)
        result.ghost_allows = sum(1 for d in allows if d.session_id not in session_ids)

        matched: dict[int, MachineSession] = {}
        free = list(stored)
        # First by start time, within the bound: what a correct system stores.
        for i, exp in enumerate(self.expected):
            candidates = [
                s
                for s in free
                if s.device_id == exp.device
                and s.badge_uid == exp.badge
                and abs((_start(s) - exp.true_start).total_seconds()) <= START_BOUND_S
            ]
            if candidates:
                best = min(candidates, key=lambda s: abs((_start(s) - exp.true_start).total_seconds()))
                matched[i] = best
                free.remove(best)
        # Then, for clocks gone wrong, in order of start per machine and badge (up to 2 h apart).
        for device, badge in {(e.device, e.badge) for e in self.expected}:
            waiting = sorted(
                (
                    i
                    for i, e in enumerate(self.expected)
                    if i not in matched and (e.device, e.badge) == (device, badge)
                ),
                key=lambda i: self.expected[i].t_in,
            )
            rows = sorted(
                (s for s in free if (s.device_id, s.badge_uid) == (device, badge)),
                key=_start,
            )
            for i, row in zip(waiting, rows, strict=False):
                if abs((_start(row) - self.expected[i].true_start).total_seconds()) <= 2 * 3600:
                    matched[i] = row
                    free.remove(row)
        result.lost = sum(1 for i in range(len(self.expected)) if i not in matched)
        result.doubled = len(free)

        errors: list[float] = []
        starts: list[float] = []
        over: list[str] = []
        for i, row in matched.items():
            exp = self.expected[i]
            assert row.started_at is not None
            starts.append(abs((row.started_at - exp.true_start).total_seconds()))
            if row.ended_at is None or row.unlocked_s is None or exp.end_lo is None or exp.end_hi is None:
                continue
            lo, hi = exp.end_lo - exp.t_in, exp.end_hi - exp.t_in
            error = max(0.0, lo - row.unlocked_s, row.unlocked_s - hi)
            errors.append(error)
            if error > exp.bound:
                over.append(
                    f"{exp.device} {exp.badge}: stored {row.unlocked_s:.1f} s ({row.end_reason}), "
                    f"expected {lo:.1f}-{hi:.1f} s"
                )
        for i, exp in enumerate(self.expected):
            if i not in matched:
                result.notes.append(
                    f"lost: {exp.device} {exp.badge} at {exp.true_start:%H:%M:%S}"
                    + (f" (refused: {exp.refused})" if exp.refused else "")
                )
        for row in stored:
            if row.ended_at is None:
                result.notes.append(f"open: {row.device_id} {row.badge_uid} since {row.started_at}")
        for row in free:
            result.notes.append(
                f"one too many: {row.device_id} {row.badge_uid} {row.started_at} "
                f"{row.unlocked_s} s ({row.end_reason or 'open'})"
            )
        if errors:
            result.dur_p50 = statistics.median(errors)
            result.dur_max = max(errors)
        if starts:
            result.start_max = max(starts)
        offline = [t for t in self.taps if t.decision is not None and t.decision.offline]
        result.offline = len(offline)
        latencies = [t.latency for t in offline if t.latency is not None]
        if latencies:
            result.offline_p50 = statistics.median(latencies)
            result.offline_max = max(latencies)
        result.unexpected_offline = sum(1 for t in offline if t.must_be_online)

        failures = result.failures
        if result.lost:
            failures.append(f"{result.lost} lost")
        if result.doubled:
            failures.append(f"{result.doubled} doubled")
        if result.open:
            failures.append(f"{result.open} open")
        if over:
            failures.append(f"duration error above {result.bound:g} s: " + "; ".join(over))
        if result.start_max is not None and result.start_max > START_BOUND_S:
            failures.append(f"start stored {result.start_max:.0f} s off")
        if result.unexpected_offline:
            failures.append(f"{result.unexpected_offline} taps decided offline while the server was up")
        if result.ghost_allows:
            failures.append(f"{result.ghost_allows} allow decisions recorded for sessions that never existed")

    def account_events(self, engine_url: str) -> None:
        """Every event the agents published is stored once: by id, and per session one start
        and one end. Events in the table that no agent was seen publishing are noted."""
        published = dict(self._observer.events)
        engine: Engine = create_engine(engine_url)
        try:
            with Session(engine) as db:
                rows = db.execute(
                    text("SELECT id, device_id, type, session_id, ts, received_at FROM events")
                ).all()
        finally:
            engine.dispose()
        stored_ids = [str(r.id) for r in rows]
        stored = set(stored_ids)
        lost = [i for i in published if i not in stored]
        twice = len(stored_ids) - len(stored)  # the primary key forbids it; counted all the same
        per_session: dict[tuple[str, str], int] = {}
        for r in rows:
            if r.type in ("session_started", "session_ended") and r.session_id:
                key = (str(r.session_id), str(r.type))
                per_session[key] = per_session.get(key, 0) + 1
        doubled = {k: n for k, n in per_session.items() if n > 1}
        unseen = [
            r for r in rows if str(r.id) not in published and r.type in ("session_started", "session_ended")
        ]
        result = self.result
        # How long after it happened the server stored each session event (the agent's clock is
        # the bridge's here): a long lag is an event a dead bridge took with it, re-sent later.
        lags = sorted(
            ((r.received_at - r.ts).total_seconds(), r)
            for r in rows
            if r.type in ("session_started", "session_ended")
        )
        if lags:
            result.figures.append(
                f"session events stored {statistics.median(x for x, _ in lags):.2f} s (p50) / "
                f"{lags[-1][0]:.2f} s (max) after they happened"
            )
            for lag, r in lags[-3:]:
                result.notes.append(f"stored {lag:.1f} s late: {r.type} {r.device_id} {r.ts:%H:%M:%S.%f}")
        result.figures.append(
            f"events: {len(published)} published ({self._observer.event_copies} publications with "
            f"re-sends), {len(stored)} stored, {len(lost)} lost, "
            f"{twice + sum(n - 1 for n in doubled.values())} stored twice"
        )
        if lost:
            result.failures.append(f"{len(lost)} published events not stored")
            for event_id in lost[:10]:
                result.notes.append(f"event not stored: {event_id} {published[event_id]}")
        if twice or doubled:
            result.failures.append(f"{twice + len(doubled)} events or session starts/ends stored twice")
            for (session, kind), n in list(doubled.items())[:10]:
                result.notes.append(f"{kind} of session {session} stored {n} times")
        if unseen:
            result.notes.append(f"{len(unseen)} stored session events were not seen published (observer gap)")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        for bridge in self.bridges:
            with contextlib.suppress(Exception):
                bridge.stop()
        if self.observer is not None:
            self.observer.close()
        for relay in self.relays:
            relay.close()
        self.broker.stop()
        with contextlib.suppress(Exception):
            self.suite.drop(self.db_name)


def parallel(*jobs: Callable[[], object]) -> None:
    """Run ``jobs`` at the same time (people at different machines); re-raise the first error."""
    errors: list[BaseException] = []

    def run(job: Callable[[], object]) -> None:
        try:
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,), daemon=True) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def sleep_until(mono: float) -> None:
    time.sleep(max(0.0, mono - time.monotonic()))


@contextlib.contextmanager
def world(suite: Suite, result: Result, world_offset: float = 0.0) -> Iterator[World]:
    started = time.monotonic()
    w = World(suite, result, world_offset)
    suite.worlds.append(w)
    try:
        w.boot()
        yield w
        w.settle()
        w.account()
    finally:
        w.close()
        suite.worlds.remove(w)
        result.seconds = time.monotonic() - started
