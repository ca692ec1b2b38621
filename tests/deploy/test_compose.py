"""deploy/compose.yaml against the broker config it mounts, without Docker: the files go where the
compose file's volumes put them (under a temporary root), and the real Mosquitto runs them.

The server containers must reach a listener the broker opens on the compose network (not its own
loopback); only the devices' TLS listener is published; every file the config names is mounted.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.deploy.mosquitto_layout import (
    BRIDGE,
    DEPLOY,
    IMAGE_MAIN_CONF,
    PRINTER,
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
