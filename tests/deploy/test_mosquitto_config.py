"""The shipped broker config (deploy/mosquitto) run by the real Mosquitto, checked with real clients.

What a leaked device password can and cannot do (docs/security.md): no client id takeover, no
writing what the server sends, nothing of another device, nothing over 1 MiB; devices only over
TLS; the server's account does its whole job. Laid out as a Debian host install (werkbank.conf in
Debian's conf.d); the compose variant is in test_compose.py. Mosquitto must be installed: these
tests fail without it, never skip (`make test` installs Debian's package).
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from device_agent.agent import Agent
from device_agent.config import load_config
from server.adapters.bridge import Bridge, wait_until
from server.config import Config
from server.db import Database
from server.models import MachineSession
from server.services.provisioning import provision_device
from tests.deploy.mosquitto_layout import (
    BRIDGE,
    DEBIAN_MAIN_CONF,
    DEPLOY,
    LASER,
    MOSQUITTO,
    PRINTER,
    Client,
    ShippedBroker,
    install,
    localize,
    make_certs,
    parse,
    run_as_root_too,
    write_passwd,
)
from werkbank_protocol.mqtt import parse_mqtt_url

DEVICE_PORT = 8883  # as werkbank.conf has them; the test runs them on free ports
SERVER_PORT = 1883
QUINN = "04A224B2C35E80"  # qualified on the printers (tests/data/lab.yaml)


def t(device_id: str, suffix: str) -> str:
    return f"werkbank/v1/dev/{device_id}/{suffix}"


# -- the broker as installed on a Debian host -------------------------------------------------


def debian_host(
    root: Path, certs: Path, passwords: dict[str, str], mosquitto_passwd: str
) -> tuple[str, dict[int, int]]:
    """Lay out /etc/mosquitto and /var/lib/mosquitto under ``root``; returns (main conf, ports)."""
    ports: dict[int, int] = {}
    main = root / "etc/mosquitto/mosquitto.conf"
    main.parent.mkdir(parents=True)
    main.write_text(localize(DEBIAN_MAIN_CONF, root, ports))
    run_as_root_too(main)
    install(MOSQUITTO / "werkbank.conf", root, "/etc/mosquitto/conf.d/werkbank.conf", ports)
    install(MOSQUITTO / "werkbank.acl", root, "/etc/mosquitto/werkbank.acl", ports, 0o640)
    install(certs / "server.crt", root, "/etc/mosquitto/certs/server.crt", ports)
    install(certs / "server.key", root, "/etc/mosquitto/certs/server.key", ports, 0o640)
    write_passwd(root / "etc/mosquitto/werkbank.passwd", passwords, mosquitto_passwd)
    for folder in ("var/lib/mosquitto", "var/log/mosquitto", "run/mosquitto"):
        (root / folder).mkdir(parents=True)
    return "/etc/mosquitto/mosquitto.conf", ports


@pytest.fixture
def broker(
    tmp_path: Path, certs: Path, passwords: dict[str, str], mosquitto_bin: str, mosquitto_passwd_bin: str
) -> Iterator[ShippedBroker]:
    root = tmp_path / "host"
    main, ports = debian_host(root, certs, passwords, mosquitto_passwd_bin)
    assert set(ports) == {DEVICE_PORT, SERVER_PORT}, "werkbank.conf's listeners changed: update this test"
    running = ShippedBroker(mosquitto_bin, root, main, ports).start()
    yield running
    running.stop()


# -- clients ------------------------------------------------------------------------------------


Connect = Callable[..., Client]


@pytest.fixture
def connect(broker: ShippedBroker, certs: Path, passwords: dict[str, str]) -> Iterator[Connect]:
    """``connect(user)``: a device over TLS with the CA on the device port, or the bridge account on
    the loopback server port; keyword arguments change the port, client id, password or CA."""
    made: list[Client] = []

    def make(
        user: str | None,
        *,
        client_id: str | None = None,
        password: str | None = None,
        port: int | None = None,
        tls: bool | None = None,
        ca: Path | None = None,
        expect_success: bool = True,
    ) -> Client:
        server = user == BRIDGE
        port = port or broker.port(SERVER_PORT if server else DEVICE_PORT)
        tls = (port == broker.port(DEVICE_PORT)) if tls is None else tls
        client = Client(
            port,
            user,
            password if password is not None else passwords.get(user or ""),
            client_id or user or f"anonymous-{uuid.uuid4().hex[:6]}",
            (ca or certs / "ca.crt") if tls else None,
        )
        made.append(client)
        if expect_success:
            rc = client.connect()
            assert rc is not None and not rc.is_failure, f"{user} could not log in: {rc}\n{broker.log()}"
        return client

    yield make
    for client in made:
        client.close()


# -- logging in -------------------------------------------------------------------------------------


def test_mosquitto_anonymous_and_wrong_passwords_are_refused(broker: ShippedBroker, connect: Connect) -> None:
    for port in (broker.port(DEVICE_PORT), broker.port(SERVER_PORT)):
        anonymous = connect(None, port=port, expect_success=False)
        rc = anonymous.connect()
        assert rc is not None and rc.is_failure and "authori" in str(rc).lower(), rc
    for user in (PRINTER, BRIDGE):
        wrong = connect(user, password="not-the-password", expect_success=False)
        rc = wrong.connect()
        assert rc is not None and rc.is_failure, rc
    connect(PRINTER)  # the right password works (connect asserts it)


def test_mosquitto_devices_connect_only_over_tls_with_the_ca(
    broker: ShippedBroker, connect: Connect, tmp_path: Path
) -> None:
    plain = connect(PRINTER, tls=False, expect_success=False)
    assert plain.connect() is None, "the device port answered plain MQTT"
    other_ca = make_certs(tmp_path / "other-ca", "127.0.0.1")
    stranger = connect(PRINTER, ca=other_ca / "ca.crt", expect_success=False)
    with pytest.raises(ssl.SSLCertVerificationError):
        stranger.connect()
    assert connect(PRINTER).stays_connected()  # TLS with the lab's CA works


# -- client ids ---------------------------------------------------------------------------------


def test_mosquitto_device_cannot_take_over_the_bridges_client_id(connect: Connect) -> None:
    bridge = connect(BRIDGE, client_id=Config.MQTT_CLIENT_ID)
    attacker = connect(PRINTER, client_id=Config.MQTT_CLIENT_ID)
    assert bridge.stays_connected(), "the device's login knocked the bridge off"
    assert attacker.stays_connected()  # it is simply pi-printer-1


def test_mosquitto_device_cannot_take_over_another_devices_client_id(connect: Connect) -> None:
    laser = connect(LASER)
    attacker = connect(PRINTER, client_id=LASER)
    assert laser.stays_connected(), "pi-printer-1's login knocked pi-laser-1 off"
    # Both are connected; what the attacker publishes still lands on its own topics only.
    observer = connect(BRIDGE, client_id="observer")
    assert observer.subscribe(t(LASER, "status"), t(PRINTER, "status")) == [True, True]
    attacker.publish(t(LASER, "status"), b'{"v":1,"online":false}')
    attacker.publish(t(PRINTER, "status"), b"control")
    assert observer.received_until(t(PRINTER, "status"), b"control") == []


# -- what a device may write -----------------------------------------------------------------------


def test_mosquitto_device_cannot_write_what_the_server_sends_it(connect: Connect) -> None:
    bridge = connect(BRIDGE)
    bridge.publish(t(PRINTER, "allowlist"), b"the server's list", retain=True)
    observer = connect(BRIDGE, client_id="observer")
    assert observer.subscribe(f"werkbank/v1/dev/{PRINTER}/#") == [True]
    assert observer.received_until(t(PRINTER, "allowlist"), b"the server's list") == []

    device = connect(PRINTER)
    for suffix in ("auth/resp", "ack", "cmd", "sim/tap"):
        device.publish(t(PRINTER, suffix), b"forged")
    device.publish(t(PRINTER, "allowlist"), b"forged list", retain=True)
    device.publish(t(PRINTER, "event"), b"control")
    assert observer.received_until(t(PRINTER, "event"), b"control") == []

    # The retained list is still the server's: a device starting up gets that one.
    assert device.subscribe(t(PRINTER, "allowlist")) == [True]
    assert device.messages.get(timeout=5).payload == b"the server's list"


def test_mosquitto_device_writes_only_its_own_device_topics(connect: Connect) -> None:
    observer = connect(BRIDGE, client_id="observer")
    assert observer.subscribe(f"werkbank/v1/dev/{LASER}/#", t(PRINTER, "event")) == [True, True]
    device = connect(PRINTER)
    for suffix in ("status", "auth/req", "event", "telemetry", "auth/resp", "ack", "cmd", "allowlist"):
        device.publish(t(LASER, suffix), b"as if from the laser", retain=suffix == "status")
    device.publish("werkbank/v1/dev/anything-else/event", b"nowhere")
    device.publish(t(PRINTER, "event"), b"control")
    assert observer.received_until(t(PRINTER, "event"), b"control") == []


def test_mosquitto_device_reads_only_what_the_server_sends_it(connect: Connect) -> None:
    device = connect(PRINTER)
    laser = connect(LASER)
    bridge = connect(BRIDGE)
    granted = device.subscribe(f"werkbank/v1/dev/{LASER}/#", "werkbank/v1/dev/+/cmd", t(PRINTER, "#"))
    assert granted == [True, True, True]  # Mosquitto grants, then filters each message by the ACL
    laser.publish(t(LASER, "auth/req"), b"the laser's tap")
    laser.publish(t(LASER, "status"), b"the laser's status", retain=True)
    bridge.publish(t(LASER, "allowlist"), b"the laser's list", retain=True)
    bridge.publish(t(LASER, "cmd"), b"the laser's command")
    bridge.publish(t(PRINTER, "auth/resp"), b"an answer for the printer")
    bridge.publish(t(PRINTER, "cmd"), b"control")
    assert device.received_until(t(PRINTER, "cmd"), b"control") == [
        (t(PRINTER, "auth/resp"), b"an answer for the printer")
    ]
    # Nor a retained message of another device, nor its own messages to the server (echoes).
    device.close()  # same user, so the same client id: one connection at a time
    late = connect(PRINTER, client_id="late")
    assert late.subscribe(t(LASER, "allowlist"), t(LASER, "status"), t(PRINTER, "event")) == [True] * 3
    late.publish(t(PRINTER, "event"), b"my own event")
    assert late.subscribe(t(PRINTER, "cmd")) == [True]
    bridge.publish(t(PRINTER, "cmd"), b"control 3")
    assert late.received_until(t(PRINTER, "cmd"), b"control 3") == []


# -- size ----------------------------------------------------------------------------------------------


def test_mosquitto_messages_over_1_mib_do_not_reach_the_bridge(connect: Connect) -> None:
    limit = Config.MQTT_MESSAGE_LIMIT
    assert limit == 1024 * 1024
    observer = connect(BRIDGE, client_id="observer")
    assert observer.subscribe(t(PRINTER, "auth/req")) == [True]
    device = connect(PRINTER)
    device.publish(t(PRINTER, "auth/req"), b"x" * limit)  # at the limit: delivered
    device.publish(t(PRINTER, "auth/req"), b"y" * (limit + 1))
    device.publish(t(PRINTER, "auth/req"), b"z" * 1_500_000)
    device.publish(t(PRINTER, "auth/req"), b"control")
    assert observer.received_until(t(PRINTER, "auth/req"), b"control") == [
        (t(PRINTER, "auth/req"), b"x" * limit)
    ]
    assert device.stays_connected()  # an oversized message is dropped, the device stays on

    # A packet far past the limit (here 3 MB; the protocol allows 256 MB) ends the connection
    # before the broker buffers it.
    device.client.publish(t(PRINTER, "auth/req"), b"w" * 3_000_000, qos=1)
    kind, _rc = device.events.get(timeout=5)
    assert kind == "closed"
    assert device.drops >= 1
    device.close()
    device2 = connect(PRINTER, client_id="again")
    device2.publish(t(PRINTER, "auth/req"), b"control 2")
    assert observer.received_until(t(PRINTER, "auth/req"), b"control 2") == []


# -- the server's account ----------------------------------------------------------------------------


def test_mosquitto_bridge_account_reads_device_topics_and_writes_server_topics(connect: Connect) -> None:
    bridge = connect(BRIDGE)
    shared = [f"$share/werkbank/werkbank/v1/dev/+/{s}" for s in ("status", "auth/req", "event", "telemetry")]
    assert bridge.subscribe(*shared) == [True] * 4
    device = connect(PRINTER)
    for suffix in ("status", "auth/req", "event", "telemetry"):
        device.publish(t(PRINTER, suffix), suffix.encode())
    got = [(m.topic, m.payload) for m in (bridge.messages.get(timeout=5) for _ in range(4))]
    assert got == [(t(PRINTER, s), s.encode()) for s in ("status", "auth/req", "event", "telemetry")]

    assert device.subscribe(*(t(PRINTER, s) for s in ("auth/resp", "ack", "cmd", "sim/tap"))) == [True] * 4
    for suffix in ("auth/resp", "ack", "cmd", "sim/tap"):
        bridge.publish(t(PRINTER, suffix), suffix.encode())
    got = [(m.topic, m.payload) for m in (device.messages.get(timeout=5) for _ in range(4))]
    assert got == [(t(PRINTER, s), s.encode()) for s in ("auth/resp", "ack", "cmd", "sim/tap")]

    bridge.publish(t(PRINTER, "allowlist"), b"list", retain=True)
    assert device.subscribe(t(PRINTER, "allowlist")) == [True]
    retained = device.messages.get(timeout=5)
    assert (retained.topic, retained.payload, retained.retain) == (t(PRINTER, "allowlist"), b"list", True)


@pytest.fixture
def open_lab(real_clock_lab: Database) -> Database:
    # Real clocks everywhere: the lab without opening hours (tests/conftest.py).
    return real_clock_lab


def test_mosquitto_a_provisioned_agent_and_the_bridge_work_through_the_shipped_config(
    broker: ShippedBroker, open_lab: Database, passwords: dict[str, str], certs: Path, tmp_path: Path
) -> None:
    """`werkbank device provision` → the broker entry as INSTALL.md says → the real agent over TLS,
    the real bridge (shared subscriptions) on the loopback listener, and `werkbank tap` as the
    server's account: allow-list, tap, answer, session, ack."""
    device_url = f"mqtts://127.0.0.1:{broker.port(DEVICE_PORT)}"
    with open_lab.session() as s:
        bundle = provision_device(
            s, "printer-1", tmp_path / "bundle", device_url, reader="simulated",
            ca_file=certs / "ca.crt", storage_dir=str(tmp_path / "state"),
        )  # fmt: skip
    line = (bundle.directory / "mosquitto-passwd-line.txt").read_text()
    passwd = broker.root / "etc/mosquitto/werkbank.passwd"
    kept = [
        entry for entry in passwd.read_text().splitlines(keepends=True) if not entry.startswith(f"{PRINTER}:")
    ]
    passwd.write_text("".join(kept) + line)
    broker.reload()

    server_url = f"mqtt://{BRIDGE}:{passwords[BRIDGE]}@127.0.0.1:{broker.port(SERVER_PORT)}"
    bridge = Bridge(open_lab, server_url, client_id="werkbank-bridge-1", shared=True).start()
    agent = Agent(load_config(bundle.directory / "agent.toml"))
    try:
        assert bridge.connected.is_set(), broker.log()
        agent.start()
        assert agent.wait_connected(5), broker.log()
        assert wait_until(lambda: (agent.allowlist.version or 0) >= 1, 5), "no allow-list reached the agent"
        assert agent.allowlist.check(QUINN, datetime.now(UTC))[0], "Quinn is not on the offline list"

        from server import create_app
        from server.config import TestConfig

        url = open_lab.engine.url.render_as_string(hide_password=False)
        app = create_app(TestConfig, DATABASE_URL=url, MQTT_URL=server_url)
        result = app.test_cli_runner().invoke(args=["tap", "printer-1", QUINN])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("allow (ok)"), result.output

        def sessions() -> int:
            with open_lab.session() as s:
                return s.scalar(select(func.count()).select_from(MachineSession)) or 0

        assert wait_until(lambda: sessions() == 1, 5), "the session never reached the server"
        assert wait_until(lambda: len(agent.outbox) == 0, 5), "the session's event was never acknowledged"
    finally:
        agent.stop()
        bridge.stop()
    assert bridge.rejected == {}, bridge.rejected


# -- persistence ---------------------------------------------------------------------------------------


def test_mosquitto_retained_allowlist_survives_a_crash_within_the_autosave_interval(
    broker: ShippedBroker, connect: Connect
) -> None:
    conf = parse((MOSQUITTO / "werkbank.conf").read_text())
    interval = int(conf.one("autosave_interval"))
    assert conf.one("persistence") == "true" and conf.one("autosave_on_changes") == "false"
    assert interval <= 10, "retained allow-lists should reach the disk within seconds"
    bridge = connect(BRIDGE)
    bridge.publish(t(PRINTER, "allowlist"), b"list v7", retain=True)
    published = time.time()
    database = broker.root / "var/lib/mosquitto/mosquitto.db"
    assert wait_until(lambda: database.exists() and database.stat().st_mtime > published, interval + 2)
    broker.kill()  # power loss: nothing saved at shutdown
    broker.start()
    device = connect(PRINTER)
    assert device.subscribe(t(PRINTER, "allowlist")) == [True]
    assert device.messages.get(timeout=5).payload == b"list v7"


def test_mosquitto_config_paths_and_limits_are_the_ones_the_docs_name() -> None:
    conf = parse((MOSQUITTO / "werkbank.conf").read_text())
    assert int(conf.one("message_size_limit")) == Config.MQTT_MESSAGE_LIMIT
    assert int(conf.one("max_packet_size")) > Config.MQTT_MESSAGE_LIMIT
    assert conf.one("set_tcp_nodelay") == "true"
    assert conf.one("allow_anonymous") == "false"
    # Debian's mosquitto.conf sets it already; a second one stops Mosquitto from starting.
    assert "persistence_location" not in conf.options
    device = conf.listener(DEVICE_PORT)
    assert device.address is None and device.options["use_username_as_clientid"] == "true"
    assert {"certfile", "keyfile"} <= set(device.options)
    server = conf.listener(SERVER_PORT)
    assert server.loopback_only and "certfile" not in server.options


def test_mosquitto_host_settings_point_the_bridge_at_loopback_and_the_pis_at_tls() -> None:
    """deploy/werkbank.env.example (the systemd units' EnvironmentFile) against werkbank.conf."""
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "werkbank.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    conf = parse((MOSQUITTO / "werkbank.conf").read_text())
    server = parse_mqtt_url(env["MQTT_URL"])
    listener = conf.listener(server.port)
    assert server.host == "127.0.0.1" and listener.loopback_only and not server.tls
    assert server.username == BRIDGE
    # Several bridges may share the account: their client ids are not replaced by it here.
    assert "use_username_as_clientid" not in listener.options
    device = parse_mqtt_url(env["MQTT_DEVICE_URL"])
    assert device.tls and conf.listener(device.port).options["use_username_as_clientid"] == "true"
    assert env["MQTT_CA_FILE"]
    for unit in ("werkbank-bridge.service", "werkbank-web.service", "werkbank-scheduler.service"):
        assert "EnvironmentFile=/etc/werkbank/werkbank.env" in (DEPLOY / "systemd" / unit).read_text()
