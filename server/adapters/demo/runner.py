"""``werkbank up`` (what ``make run`` calls): the whole system on one machine, for a demo.

Starts an embedded MQTT broker unless ``MQTT_URL`` is set, migrates and seeds the
database, then runs web, bridge, scheduler and one simulated agent per device as
child processes, prints where to look and how to log in, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml
from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.adapters.demo.proof import add_proof_demo
from server.adapters.demo.story import ALONE, BANNER, WITH_TRAINER, populate
from server.broker import EmbeddedBroker, free_port, wait_for_port
from server.config import VAR_DIR
from server.extensions import db
from server.migrate import upgrade
from server.models import Device, Machine
from server.services import decision
from server.services.lab_file import load, parse
from server.services.provisioning import agent_config

DEMO_BROKER_PORT = 1884
DEMO_WEB_PORT = 5000


def _port(preferred: int) -> int:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def _secret_key() -> str:
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


VERDICT_WORDS = {
    ALONE: "unlocks",
    WITH_TRAINER: "only with a trainer",
    "not_qualified": "refused: not trained",
    "qualification_expired": "refused: briefing expired",
}


def _opening_line(session: Session, now: datetime) -> str:
    """Whether each site's lab is open now, as the decision sees it (the first machine with a
    device stands for its site): the badges below unlock only while theirs is open."""
    lines = []
    seen: set[int] = set()
    for machine in session.scalars(select(Machine).join(Device).order_by(Machine.id)):
        if machine.site_id in seen:
            continue
        seen.add(machine.site_id)
        is_open, closes_at, next_open = decision.opening_window(session, machine, now)
        tz = ZoneInfo(machine.site.timezone)
        site = machine.site.name
        if is_open:
            until = f" until {closes_at.astimezone(tz):%H:%M}" if closes_at else ""
            lines.append(f"  {site} is open now{until}.")
        elif next_open is None:
            lines.append(f"  {site} is closed now: every tap is refused.")
        else:
            lines.append(
                f"  {site} is closed now: taps are refused until it opens "
                f"{next_open.astimezone(tz):%a %d %b, %H:%M}."
            )
    return "\n".join(lines)


def _banner(url: str, mqtt_url: str, data: Path, opening: str = "") -> str:
    """Where to look and who to log in as, with what each demo person can do (story.BANNER,
    which tests/server/test_demo_story.py checks against the decision and the bookings)."""
    raw = yaml.safe_load(data.read_text(encoding="utf-8")) or {}
    people = {p.get("email"): p for p in raw.get("people", [])}
    lines = [
        "",
        "=" * 78,
        f"  Werkbank is running:  {url}",
        f"  MQTT broker:         {mqtt_url}",
        f"  Trainer pages:       {url}training/people    Admin: {url}admin",
        f"  JSON API:            {url}api/v1/openapi.json (tokens: werkbank token create)",
    ]
    if opening:
        lines += ["", opening]
    lines += ["", "  Logins (e-mail, password, who):"]
    for entry in BANNER:
        person = people.get(entry.email)
        if person is None or not person.get("password"):
            continue
        lines.append(f"    {entry.email:<30} {person['password']:<17} {person['name']}: {entry.says}")
    lines += ["", "  Badges (tap one in another terminal):"]
    for entry in BANNER:
        person = people.get(entry.email)
        if person is None or not entry.claims:
            continue
        for badge in person.get("badges", []):
            uid = badge if isinstance(badge, str) else badge.get("uid")
            says = ", ".join(f"{c.machine} {VERDICT_WORDS.get(c.verdict, c.verdict)}" for c in entry.claims)
            lines.append(f"    {uid:<16} {person['name']:<14} {says}")
    machines = [m["slug"] for m in raw.get("machines", []) if m.get("device")]
    if machines:
        lines += ["", f"    .venv/bin/werkbank tap {machines[0]} <UID>    (machines: {', '.join(machines)})"]
    lines += ["", "  Ctrl-C stops everything.", "=" * 78, ""]
    return "\n".join(lines)


def run_demo(app: Flask, data: Path) -> int:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    database_url = app.config["DATABASE_URL"]
    upgrade(database_url)
    with db.session() as session:
        load(session, parse(data.read_text(encoding="utf-8")), source=data.name, actor_label="werkbank up")
    with db.session() as session:
        # Three cohorts' training and three months of use, so every page has something true
        # to show (first start only).
        added = populate(session, seed=1, now=datetime.now(UTC))
    if added:
        print(f"werkbank up: added the demo's participants and {added} sessions of their use", flush=True)
    with db.session() as session:
        # Check-ins, briefings with signatures, exits and targets for the proof documents.
        add_proof_demo(session, datetime.now(UTC))

    broker: EmbeddedBroker | None = None
    mqtt_url = app.config["MQTT_URL"]
    if not mqtt_url:
        broker = EmbeddedBroker(port=_port(DEMO_BROKER_PORT)).start()
        mqtt_url = broker.url
    (VAR_DIR / "broker.url").write_text(mqtt_url)

    web_port = _port(app.config["WEB_PORT"] or DEMO_WEB_PORT)
    env = dict(
        os.environ,
        MQTT_URL=mqtt_url,
        DATABASE_URL=database_url,
        SECRET_KEY=_secret_key(),
        WERKBANK_PORT=str(web_port),
        GPIOZERO_PIN_FACTORY="mock",
    )
    werkbank = [sys.executable, "-m", "server"]
    commands: dict[str, list[str]] = {
        "bridge": [*werkbank, "bridge"],
        "scheduler": [*werkbank, "scheduler"],
        "web": [*werkbank, "web", "--port", str(web_port)],
    }
    agents_dir = VAR_DIR / "agents"
    agents_dir.mkdir(exist_ok=True)
    with db.session() as session:
        for device in session.scalars(select(Device).where(Device.machine_id.is_not(None))):
            config = agents_dir / f"{device.id}.toml"
            config.write_text(agent_config(device, mqtt_url, agents_dir / device.id, pin_factory="mock"))
            commands[f"agent {device.id}"] = [
                sys.executable,
                "-m",
                "device_agent",
                "--config",
                str(config),
                "--simulate",
            ]

    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, cmd in commands.items():
            # Own process group: Ctrl-C reaches only us, and we stop the children in order.
            children[name] = subprocess.Popen(cmd, env=env, start_new_session=True)
        wait_for_port("127.0.0.1", web_port, timeout=30)
        with db.session() as session:
            opening = _opening_line(session, datetime.now(UTC))
        print(_banner(f"http://127.0.0.1:{web_port}/", mqtt_url, data, opening), flush=True)
        while not stopping:
            for name, child in children.items():
                if child.poll() is not None:
                    print(f"werkbank up: {name} exited with code {child.returncode}", file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            if child.poll() is None:
                child.kill()
        if broker is not None:
            broker.stop()
        with contextlib.suppress(FileNotFoundError):
            (VAR_DIR / "broker.url").unlink()
        print("werkbank up: stopped", flush=True)
    return 0
