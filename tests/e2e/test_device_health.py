"""A device's health, end to end on real parts: a real agent reports in `status` that its events are
not arriving or that its allow-list is old, the real bridge stores it, the web's /metrics shows it,
the scheduler's job tells the admins (app, then e-mail through a real SMTP server), once, and the
episode ends when the device recovers (docs/deploy.md, "Device health").

"Broker reachable, server silent": a Mosquitto of the test's own whose ACL does not let the
server's account read device events (a broken ACL, as an admin might write one). The bridge
answers taps and hears every status, but never an event, so none is acknowledged and the agent's
outbox fills. Time passes on the agent's boot clock only (its wall clock is the real one): the
ages it reports come from the boot clock.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from gpiozero.pins.mock import MockFactory
from sqlalchemy import func, select, update

from server import create_app
from server.adapters.bridge import Bridge
from server.adapters.scheduler import email_notifications, notify_device_health, refresh_allowlists
from server.broker import MOSQUITTO_CONF, MosquittoProcess, free_port, wait_for_port
from server.config import TestConfig
from server.db import Database
from server.models import Device, MachineSession, Notification, Person, StoredEvent
from server.services import notifications
from server.services.mail import SmtpSettings
from tests.deploy.mosquitto_layout import run_as_root_too
from tests.e2e.conftest import System, eventually
from tests.server import test_notifications
from tests.server.test_notifications import Inbox, _body

smtp_server = test_notifications.smtp_server  # the real SMTP server fixture, shared

QUINN = "04A224B2C35E80"  # qualified on printers and the laser (tests/data/lab.yaml)
BRIDGE = "werkbank-bridge-health"
# Every device its own topics (the user name is the device id), and the server's account.
_DEVICES = "pattern readwrite werkbank/v1/dev/%u/#\n"
_SERVER = f"""user {BRIDGE}
topic read werkbank/v1/dev/+/status
topic read werkbank/v1/dev/+/auth/req
topic read werkbank/v1/dev/+/telemetry
topic readwrite werkbank/v1/dev/+/allowlist
topic write werkbank/v1/dev/+/auth/resp
topic write werkbank/v1/dev/+/ack
topic write werkbank/v1/dev/+/cmd
"""
DEAF_TO_EVENTS = _DEVICES + _SERVER
FIXED = _DEVICES + _SERVER + "topic read werkbank/v1/dev/+/event\n"


class AclBroker(MosquittoProcess):
    """The tests' private Mosquitto (server/broker.py) with an ACL file."""

    def __init__(self, acl: str, binary: str, port: int | None = None) -> None:
        super().__init__(port=port, binary=binary)
        self.acl = acl

    def start(self) -> AclBroker:
        import subprocess

        folder = Path(self._dir.name)
        (folder / "werkbank.acl").write_text(self.acl)
        conf = folder / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=self.port) + f"acl_file {folder / 'werkbank.acl'}\n")
        run_as_root_too(conf)  # a root run: Mosquitto could not read the ACL in the private folder
        log_file = (folder / "mosquitto.log").open("wb")
        self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log_file, stderr=log_file)
        wait_for_port(self.host, self.port)
        return self


class BootClock:
    """The Pi's clocks: the real wall clock, and a boot clock moved on by hand (time passing)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.boot = f"test-boot-{uuid.uuid4()}"

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def boot_id(self) -> str | None:
        return self.boot

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def _device(db: Database, device_id: str) -> Device:
    with db.session() as s:
        row = s.get(Device, device_id)
        assert row is not None
        s.expunge(row)
        return row


def _gauges(web: FlaskClient, device_id: str) -> dict[str, float]:
    """The web's /metrics lines about one device: metric name → value."""
    text = web.get("/metrics").get_data(as_text=True)
    return {
        line.split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("werkbank_device_") and f'device="{device_id}"' in line
    }


def _notices(db: Database, kind: str) -> list[tuple[str, bool]]:
    with db.session() as s:
        rows = s.execute(
            select(Person.email, Notification.read_at)
            .join(Person, Person.id == Notification.person_id)
            .where(Notification.kind == kind)
        ).all()
        return [(email, read_at is not None) for email, read_at in rows]


@pytest.fixture
def web(database_url: str) -> FlaskClient:
    # Made before the bridge starts: it binds the shared database object (as in the journey test).
    return create_app(TestConfig, DATABASE_URL=database_url).test_client()


@pytest.fixture
def deaf_broker(mosquitto_bin: str) -> Iterator[dict[str, Any]]:
    """A broker whose ACL keeps device events from the server; ``["broker"]`` is swapped by the test."""
    holder: dict[str, Any] = {"broker": AclBroker(DEAF_TO_EVENTS, mosquitto_bin, free_port()).start()}
    yield holder
    holder["broker"].stop()


def test_e2e_events_the_server_never_hears_are_reported_shown_and_told_once_until_they_arrive(
    e2e_lab: Database,
    web: FlaskClient,
    deaf_broker: dict[str, Any],
    mosquitto_bin: str,
    tmp_path: Path,
    pins: MockFactory,
    smtp_server: tuple[Inbox, SmtpSettings],
) -> None:
    inbox, settings = smtp_server
    broker: AclBroker = deaf_broker["broker"]
    system = System(e2e_lab, broker.url, tmp_path, pins)
    try:
        system.bridge = Bridge(e2e_lab, broker.url, client_id=BRIDGE).start()
        clock = BootClock()
        agent = system.start_agent("pi-printer-1", clock=clock)
        system.wait_allowlist(agent)

        # A session the server answers online; its start and end never reach the server.
        allowed = agent.tap(QUINN)
        assert (allowed.outcome, allowed.offline) == ("unlocked", False)
        assert agent.tap(QUINN).reason == "tap_out"
        assert len(agent.outbox) == 2

        clock.advance(11 * 60)  # eleven minutes pass: the minute's status says how long they wait
        assert eventually(lambda: (_device(e2e_lab, "pi-printer-1").outbox_oldest_s or 0) >= 11 * 60)
        stored = _device(e2e_lab, "pi-printer-1")
        assert stored.outbox_depth == 2 and stored.outbox_oldest_s is not None
        assert 11 * 60 <= stored.outbox_oldest_s < 11 * 60 + 30
        gauges = _gauges(web, "pi-printer-1")
        assert gauges["werkbank_device_outbox_events"] == 2.0
        assert gauges["werkbank_device_outbox_oldest_seconds"] == stored.outbox_oldest_s

        # The scheduler's minute job tells the admins; the e-mail job sends it on; once.
        assert notify_device_health(e2e_lab) == 1
        assert notify_device_health(e2e_lab) == 0
        assert email_notifications(e2e_lab, settings).sent == 1
        (mail,) = inbox.to("tina@test.local")
        # Tina reads German (tests/data/lab.yaml).
        assert mail["Subject"].endswith(": Ereignisse kommen nicht an")
        assert "warten seit 11 Minuten darauf, dass der Server sie speichert (2 warten)" in " ".join(
            _body(mail).split()
        )
        assert _notices(e2e_lab, notifications.DEVICE_OUTBOX_STUCK) == [("tina@test.local", False)]

        # The admin fixes the ACL; the broker restarts with it, the agent sends its events again.
        broker.stop()
        broker = deaf_broker["broker"] = AclBroker(FIXED, mosquitto_bin, broker.port).start()
        assert eventually(lambda: len(agent.outbox) == 0, timeout=30)
        clock.advance(60)
        assert eventually(lambda: _device(e2e_lab, "pi-printer-1").outbox_depth == 0)
        assert _device(e2e_lab, "pi-printer-1").outbox_oldest_s is None
        assert _gauges(web, "pi-printer-1")["werkbank_device_outbox_oldest_seconds"] == 0.0
        assert notify_device_health(e2e_lab) == 0
        assert _notices(e2e_lab, notifications.DEVICE_OUTBOX_STUCK) == [("tina@test.local", True)]
        with e2e_lab.session() as s:
            (session,) = s.scalars(select(MachineSession)).all()
            assert session.id == allowed.session and session.end_reason == "tap_out"
            assert (
                s.scalar(select(func.count()).select_from(StoredEvent).where(StoredEvent.type != "fault"))
                == 2
            )
    finally:
        system.close()


def test_e2e_an_allowlist_a_day_old_is_reported_shown_and_told_until_a_new_one_arrives(
    system: System, web: FlaskClient, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    with system.db.session() as s:
        s.execute(update(Person).where(Person.email == "tina@test.local").values(language="en"))
    system.start_bridge()
    clock = BootClock()
    agent = system.start_agent("pi-laser-1", clock=clock)
    system.wait_allowlist(agent)
    version = agent.allowlist.version
    assert eventually(lambda: _device(system.db, "pi-laser-1").allowlist_age_s is not None)
    assert (_device(system.db, "pi-laser-1").allowlist_age_s or 0) < 60
    assert notify_device_health(system.db) == 0

    # A day and an hour on the Pi, and no new list reached it (no scheduler reissued one here).
    clock.advance(25 * 3600)
    assert eventually(lambda: (_device(system.db, "pi-laser-1").allowlist_age_s or 0) >= 25 * 3600)
    assert _gauges(web, "pi-laser-1")["werkbank_device_allowlist_age_seconds"] >= 25 * 3600
    assert notify_device_health(system.db) == 1
    assert email_notifications(system.db, settings).sent == 1
    (mail,) = inbox.to("tina@test.local")
    assert mail["Subject"].endswith(": the offline allow-list is old")
    assert f"an offline allow-list issued 25 hours ago (version {version})" in " ".join(_body(mail).split())

    # The six-hourly reissue reaches the Pi: its next status says the list is new.
    refresh_allowlists(system.db)
    assert eventually(lambda: (agent.allowlist.version or 0) > (version or 0), timeout=10)
    assert eventually(lambda: (_device(system.db, "pi-laser-1").allowlist_age_s or 0) < 60)
    assert notify_device_health(system.db) == 0
    assert _notices(system.db, notifications.DEVICE_ALLOWLIST_OLD) == [("tina@test.local", True)]
