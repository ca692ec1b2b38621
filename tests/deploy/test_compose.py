"""deploy/compose.yaml against the broker config it mounts, without Docker: the files go where the
compose file's volumes put them (under a temporary root), and the real Mosquitto runs them.

The server containers must reach a listener the broker opens on the compose network (not its own
loopback); only the devices' TLS listener is published; every file the config names is mounted.

The server containers against the systemd units (Docker cannot run here, so these are static
checks of the files, plus deploy/nightly.sh run with a stand-in ``sleep``): one set of settings,
each a setting of deploy/werkbank.env.example with the same paths; the backup service runs the
backup unit's command line at the timer's time, with the key, the broker's files and a named
volume for the sets, from an image whose pg_dump is the database image's major version.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from server.adapters.backup import STATUS_FILE
from tests.deploy.mosquitto_layout import (
    BRIDGE,
    COMPOSE,
    DEPLOY,
    IMAGE_MAIN_CONF,
    PRINTER,
    ROOT,
    Client,
    Conf,
    ShippedBroker,
    compose_mounts,
    compose_services,
    install,
    parse,
    run_as_root_too,
    substitute,
    write_passwd,
)
from tests.deploy.test_backup_units import _sections
from tests.deploy.test_stack import env_file, unit_service
from werkbank_protocol.mqtt import BrokerAddress, parse_mqtt_url

# What an admin puts into deploy/.env (the compose file refuses to start without them).
ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "MQTT_BRIDGE_PASSWORD": "bridge-secret",
    "SECRET_KEY": "k" * 64,
    "MQTT_DEVICE_URL": "mqtts://werkbank.lab:8883",
}
BROKER_IMAGE = "eclipse-mosquitto"


def _broker_service(services: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    (found,) = ((n, s) for n, s in services.items() if str(s.get("image", "")).startswith(BROKER_IMAGE))
    return found


def _published(service: dict[str, Any]) -> set[int]:
    """The container ports a service publishes on the host."""
    return {int(str(entry).split(":")[-1].split("/")[0]) for entry in service.get("ports", [])}


def _server_urls(services: dict[str, Any]) -> dict[str, BrokerAddress]:
    urls = {}
    for name, service in services.items():
        url = (service.get("environment") or {}).get("MQTT_URL")
        if url is not None:
            urls[name] = parse_mqtt_url(substitute(url, ENV))
    return urls


@pytest.fixture
def compose_root(
    tmp_path: Path, certs: Path, passwords: dict[str, str], mosquitto_passwd_bin: str
) -> Iterator[tuple[Path, dict[int, int]]]:
    """The mqtt container's file system: what its volumes mount, from a deploy/ folder prepared as
    docs/deploy.md says (certificates made, password file written)."""
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy)
    shutil.copytree(certs, deploy / "mosquitto" / "certs")
    write_passwd(
        deploy / "mosquitto" / "werkbank.passwd",
        {**passwords, BRIDGE: ENV["MQTT_BRIDGE_PASSWORD"]},
        mosquitto_passwd_bin,
    )
    root = tmp_path / "container"
    ports: dict[int, int] = {}
    _name, service = _broker_service(compose_services())
    for source, target in compose_mounts(service):
        if source.startswith("."):
            install(deploy / source, root, target, ports)
        else:  # a named volume: empty at first
            (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
    yield root, ports


def _conf(root: Path) -> Conf:
    """The broker's config as the image starts it: its main file and what that includes."""
    main = root / IMAGE_MAIN_CONF.lstrip("/")
    assert main.exists(), f"nothing is mounted at {IMAGE_MAIN_CONF}, the file the image starts"
    return parse(main.read_text(), follow_includes=True)


def test_compose_servers_reach_a_listener_the_broker_opens_on_the_compose_network(
    compose_root: tuple[Path, dict[int, int]],
) -> None:
    root, ports = compose_root
    services = compose_services()
    name, broker = _broker_service(services)
    assert "command" not in broker, "the test starts the image's own command"
    conf = _conf(root)
    by_port = {configured: conf.listener(actual) for configured, actual in ports.items()}
    published = _published(broker)

    urls = _server_urls(services)
    assert set(urls) >= {"bridge"}, "the bridge container has no MQTT_URL"
    for service, address in urls.items():
        assert address.host == name, f"{service} connects to {address.host}, not the broker service {name}"
        assert address.username == BRIDGE and not address.tls
        listener = by_port.get(address.port)
        assert listener is not None, f"{service} uses port {address.port}; the broker opens {sorted(ports)}"
        assert not listener.loopback_only, f"port {address.port} listens on the mqtt container's own loopback"
        # Several bridges share the account: their client ids must not be replaced by it.
        assert "use_username_as_clientid" not in listener.options
        assert address.port not in published, "the plain server listener is published to the network"

    assert published == {8883}
    device = by_port[8883]
    assert device.options.get("use_username_as_clientid") == "true" and "certfile" in device.options
    assert parse_mqtt_url(ENV["MQTT_DEVICE_URL"]).port in published


def test_compose_mounts_every_file_the_broker_config_names(compose_root: tuple[Path, dict[int, int]]) -> None:
    root, _ports = compose_root
    services = compose_services()
    _name, broker = _broker_service(services)
    conf = _conf(root)
    mounts = {target: source for source, target in compose_mounts(broker)}

    def mounted(path: str) -> str | None:
        for target, source in mounts.items():
            if PurePosixPath(path).is_relative_to(str(root) + target):
                return source
        return None

    named = [conf.one(key) for key in ("password_file", "acl_file", "persistence_location")]
    for listener in conf.listeners:
        named += [value for key, value in listener.options.items() if key in ("certfile", "keyfile")]
    assert len(named) == 5, "the TLS listener's certificate and key are not named"
    for path in named:
        assert mounted(path) is not None, f"{path} is not mounted into the mqtt container"
        assert Path(path).exists(), f"{path} does not exist in the container"
    # Retained allow-lists and queued messages outlive the container: on a named volume.
    assert not str(mounted(conf.one("persistence_location"))).startswith(".")

    # The server containers find the CA that deploy/mosquitto/make-certs.sh makes (for provisioning).
    web = services["web"]
    ca_target = web["environment"]["MQTT_CA_FILE"]
    assert {t: s for s, t in compose_mounts(web)}[ca_target] == "./mosquitto/certs/ca.crt"


def test_compose_broker_starts_and_the_bridge_and_a_device_log_in(
    compose_root: tuple[Path, dict[int, int]], mosquitto_bin: str, certs: Path, passwords: dict[str, str]
) -> None:
    root, ports = compose_root
    run_as_root_too(root / IMAGE_MAIN_CONF.lstrip("/"))
    broker = ShippedBroker(mosquitto_bin, root, IMAGE_MAIN_CONF, ports).start()
    clients: list[Client] = []
    try:
        server = _server_urls(compose_services())["bridge"]
        bridge = Client(ports[server.port], server.username, server.password, "werkbank-bridge", None)
        device = Client(ports[8883], PRINTER, passwords[PRINTER], PRINTER, certs / "ca.crt")
        clients += [bridge, device]
        for client in clients:
            rc = client.connect()
            assert rc is not None and not rc.is_failure, broker.log()
        assert bridge.subscribe("$share/werkbank/werkbank/v1/dev/+/auth/req") == [True]
        device.publish(f"werkbank/v1/dev/{PRINTER}/auth/req", b"tap")
        assert bridge.messages.get(timeout=5).payload == b"tap"
        bridge.publish(f"werkbank/v1/dev/{PRINTER}/allowlist", b"list", retain=True)
    finally:
        for client in clients:
            client.close()
        broker.stop()
    # Saved at shutdown into the named volume.
    assert (root / "mosquitto/data/mosquitto.db").exists(), broker.log()


# -- the server containers against the systemd units ------------------------------------------------

SERVER_SERVICES = {"web", "bridge", "scheduler", "backup"}  # built from the Dockerfile
NIGHTLY = DEPLOY / "nightly.sh"


def _shipped_settings() -> dict[str, str]:
    return env_file((DEPLOY / "werkbank.env.example").read_text())


def _image_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if "build" in service}


def _source_of(service: dict[str, Any], path: str) -> str | None:
    """Which host file (``./…``, relative to deploy/) or named volume is at ``path`` in the
    service's container: the deepest mount that holds it."""
    found: tuple[int, str] | None = None
    for source, target in compose_mounts(service):
        if PurePosixPath(path).is_relative_to(target):
            rest = PurePosixPath(path).relative_to(target)
            depth = len(PurePosixPath(target).parts)
            if found is None or depth > found[0]:
                found = (depth, source if str(rest) == "." else f"{source}/{rest}")
    return None if found is None else found[1]


def test_compose_server_containers_get_the_example_settings_with_the_units_paths() -> None:
    """One set of settings for every server container, as the units share one EnvironmentFile;
    each is a setting of deploy/werkbank.env.example, and a path the units read is the same path
    in the containers."""
    services = _image_services(compose_services())
    assert set(services) == SERVER_SERVICES
    envs = {name: service["environment"] for name, service in services.items()}
    for name, env in envs.items():
        assert env == envs["web"], f"{name} has other settings than web"
    shipped = _shipped_settings()
    assert set(envs["web"]) - set(shipped) == set(), "settings the example does not have"
    for key in (
        "MQTT_CA_FILE",
        "WERKBANK_BACKUP_DIR",
        "WERKBANK_BACKUP_KEY_FILE",
        "WERKBANK_BACKUP_KEEP",
        "WERKBANK_BACKUP_FILES",
    ):
        assert str(envs["web"][key]) == shipped[key], key
    var_dir = re.search(r"^ENV WERKBANK_VAR_DIR=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert var_dir is not None and var_dir.group(1) == shipped["WERKBANK_VAR_DIR"]
    # The units' WorkingDirectory is the image's: relative paths (deploy/nightly.sh) resolve alike.
    workdir = re.search(r"^WORKDIR (\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert (
        workdir is not None
        and workdir.group(1) == unit_service("werkbank-backup.service")["WorkingDirectory"]
    )


def test_compose_backup_runs_the_backup_units_command_line_at_the_timers_time() -> None:
    backup = compose_services()["backup"]
    argv = shlex.split(backup["command"])
    unit = shlex.split(unit_service("werkbank-backup.service")["ExecStart"])
    unit[0] = PurePosixPath(unit[0]).name
    on_calendar = _sections("werkbank-backup.timer")["Timer"]["OnCalendar"]
    timer = re.fullmatch(r"\*-\*-\* (\d\d:\d\d)(:00)?", on_calendar)
    assert timer is not None, on_calendar
    status = f"{_shipped_settings()['WERKBANK_BACKUP_DIR']}/{STATUS_FILE}"
    assert argv == ["sh", "deploy/nightly.sh", "--catch-up", status, timer.group(1), *unit]
    assert NIGHTLY.exists()


def test_compose_backup_has_the_key_the_broker_files_and_a_volume_for_the_sets() -> None:
    services = compose_services()
    backup, broker = services["backup"], _broker_service(services)[1]
    env = backup["environment"]
    key = env["WERKBANK_BACKUP_KEY_FILE"]
    assert _source_of(backup, key) == "./backup.key"
    assert f"./backup.key:{key}:ro" in backup["volumes"], "the key is mounted read-only"
    # The files a restored server needs are the ones the broker runs with (and the CA provisioning
    # hands out), mounted from the same place.
    for path in env["WERKBANK_BACKUP_FILES"].split(":"):
        source = _source_of(backup, path)
        assert source is not None, f"{path} is not mounted into the backup container"
        assert source == _source_of(broker, path), path
    assert _source_of(backup, env["MQTT_CA_FILE"]) == _source_of(services["web"], env["MQTT_CA_FILE"])
    # The sets outlive the container: a named volume, declared at the top level.
    sets = _source_of(backup, env["WERKBANK_BACKUP_DIR"])
    assert sets is not None and not sets.startswith(".")
    assert sets in yaml.safe_load(COMPOSE.read_text())["volumes"]
    # The secrets stay out of the image (Dockerfile: COPY . .); compose mounts them at run time.
    ignored = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"
    }
    for service in services.values():
        for source, _target in compose_mounts(service):
            if source.startswith("./") and not source.endswith((".conf", ".acl")):
                path = PurePosixPath("deploy", source[2:])
                assert any(path.is_relative_to(entry) for entry in ignored), f"{source} would be in the image"


def test_compose_image_has_the_pg_dump_of_the_database_images_major_version() -> None:
    """pg_dump refuses a server of a newer major version than its own: the image installs the
    client of the db service's PostgreSQL (Debian's own may be older)."""
    services = compose_services()
    image = re.fullmatch(r"postgres:(\d+)(\.\d+)*(-\S+)?", services["db"]["image"])
    assert image is not None, services["db"]["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert set(re.findall(r"postgresql-client-(\d+)", dockerfile)) == {image.group(1)}
    assert "apt.postgresql.org.sh -y" in dockerfile  # PGDG's repository, where every major is
    assert services["backup"]["build"] == services["web"]["build"]


@pytest.mark.parametrize("minutes_ahead", [2, -60])
@pytest.mark.parametrize("last_run", ["none", "fresh", "old"])
def test_nightly_runs_the_command_at_its_time_and_catches_up_a_missed_night(
    tmp_path: Path, minutes_ahead: int, last_run: str
) -> None:
    """deploy/nightly.sh as the backup service runs it, with ``sleep`` replaced by a stand-in that
    notes how long it was asked to sleep and stops the script at its second call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sleeps, runs = tmp_path / "sleeps", tmp_path / "runs"
    (bin_dir / "sleep").write_text(
        '#!/bin/sh\necho "$1" >> "$SLEEPS"\n[ "$(wc -l < "$SLEEPS")" -lt 2 ] || kill -TERM "$PPID"\n'
    )
    (bin_dir / "sleep").chmod(0o755)
    status = tmp_path / STATUS_FILE
    if last_run != "none":
        status.write_text("{}")
        if last_run == "old":
            day_and_a_bit = datetime.now().timestamp() - 25 * 3600
            os.utime(status, (day_and_a_bit, day_and_a_bit))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    at = now + timedelta(minutes=minutes_ahead)
    begun = datetime.now(UTC)
    run = subprocess.run(
        [
            "sh",
            str(NIGHTLY),
            "--catch-up",
            str(status),
            at.strftime("%H:%M"),
            "sh",
            "-c",
            'echo ran >> "$RUNS"; exit 3',
        ],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "TZ": "UTC", "SLEEPS": str(sleeps), "RUNS": str(runs)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    caught_up = last_run != "fresh"
    ran = runs.read_text().splitlines() if runs.exists() else []
    assert len(ran) == (2 if caught_up else 1), run.stdout + run.stderr
    assert ("running 'sh -c" in run.stdout) == caught_up, run.stdout
    assert run.stderr.count("failed (exit code 3)") == len(ran), run.stderr
    first = int(sleeps.read_text().split()[0])
    target = at if at > begun else at + timedelta(days=1)
    expected = (target - begun).total_seconds()
    assert expected - 5 <= first <= expected + 1, (first, expected)
