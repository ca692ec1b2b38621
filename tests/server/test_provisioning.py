"""`werkbank device provision`: a new password per run (hash only in the database), a complete bundle
the agent's own validator accepts, an audit row, and nothing changed when the machine is unknown."""

from __future__ import annotations

import base64
import hashlib
import stat
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select

from device_agent.config import load_config
from device_agent.hardware import reader_backends
from server.broker import free_port, wait_for_port
from server.db import Database
from server.models import AuditLog, Device
from server.security import verify_password
from server.services.lab_file import load, parse
from server.services.provisioning import (
    AGENT_UNIT,
    ProvisioningError,
    mosquitto_passwd_line,
    provision_device,
)
from werkbank_protocol.mqtt import BrokerAddress, make_client

BUNDLE_FILES = {
    "agent.toml",
    "mqtt-password",
    "mosquitto-passwd-line.txt",
    "werkbank-agent.service",
    "config.txt.snippet",
    "INSTALL.md",
}
PI_URL = "mqtts://werkbank.lab:8883"


def _app(database: Database, **settings: Any) -> Flask:
    from server import create_app
    from server.config import TestConfig

    url = database.engine.url.render_as_string(hide_password=False)
    return create_app(TestConfig, DATABASE_URL=url, **settings)


def _counts(db: Database) -> tuple[int, int]:
    with db.session() as s:
        devices = s.scalar(select(func.count()).select_from(Device)) or 0
        audits = s.scalar(select(func.count()).select_from(AuditLog)) or 0
    return devices, audits


def _password_hash(db: Database, device_id: str) -> str | None:
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        return device.password_hash


def _provision(db: Database, out: Path, reader: str = "simulated", **kwargs: Any) -> Any:
    with db.session() as s:
        return provision_device(
            s, "printer-1", out, PI_URL, reader=reader, storage_dir=str(out.parent / "state"), **kwargs
        )


def test_provisioning_cli_writes_a_complete_bundle(lab: Database, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = (
        _app(lab)
        .test_cli_runner()
        .invoke(args=["device", "provision", "printer-1", "--out", str(out), "--mqtt-url", PI_URL])
    )
    assert result.exit_code == 0, result.output
    assert "pi-printer-1" in result.output and "INSTALL.md" in result.output
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((out / "mqtt-password").stat().st_mode) == 0o600

    toml = (out / "agent.toml").read_text()
    password = (out / "mqtt-password").read_text().strip()
    assert 'backend = "mfrc522"' in toml and 'pin_factory = "lgpio"' in toml
    assert 'dir = "/var/lib/werkbank-agent"' in toml and f'url = "{PI_URL}"' in toml
    assert 'password_file = "mqtt-password"' in toml and password not in toml
    assert (out / "werkbank-agent.service").read_text() == AGENT_UNIT.read_text()
    snippet = (out / "config.txt.snippet").read_text()
    assert "dtparam=spi=on\n" in snippet and "gpio=17=op,dh\n" in snippet
    install = (out / "INSTALL.md").read_text()
    for step in (
        "python3-venv python3-dev gcc",
        "usermod -a -G spi,gpio werkbank-agent",
        "/opt/werkbank/.venv",
        "rpi-lgpio",
        "systemctl enable --now werkbank-agent",
        "journalctl -u werkbank-agent",
    ):
        assert step in install, step
    assert (out / "mosquitto-passwd-line.txt").read_text().startswith("pi-printer-1:$7$101$")


@pytest.mark.parametrize("reader", ["simulated", "mfrc522"])
def test_provisioning_agent_toml_passes_the_agents_validator(
    lab: Database, tmp_path: Path, reader: str
) -> None:
    assert reader in reader_backends()
    bundle = _provision(lab, tmp_path / "bundle", reader=reader)
    config = load_config(bundle.directory / "agent.toml")
    assert config.device_id == "pi-printer-1" and config.device_machine == "printer-1"
    assert config.reader_backend == reader and config.mqtt_url == PI_URL
    # The password file is found next to agent.toml, as it will be in /etc/werkbank on the Pi.
    assert config.device_password_file == str((bundle.directory / "mqtt-password").resolve())
    assert config.password == (bundle.directory / "mqtt-password").read_text().strip()
    assert (config.relay_pin, config.indicators_green_pin, config.indicators_red_pin) == (17, 22, 27)


def test_provisioning_password_in_the_bundle_verifies_against_the_stored_hash(
    lab: Database, tmp_path: Path
) -> None:
    bundle = _provision(lab, tmp_path / "bundle")
    password = (bundle.directory / "mqtt-password").read_text().strip()
    stored = _password_hash(lab, "pi-printer-1")
    assert stored is not None and stored.startswith("$argon2id$") and password not in stored
    assert verify_password(stored, password).ok
    assert not verify_password(stored, password + "x").ok
    # The broker's line carries the same password, in Mosquitto's PBKDF2-SHA512 format.
    user, _, scheme, rounds, salt, digest = (
        (bundle.directory / "mosquitto-passwd-line.txt").read_text().strip().replace(":", "$", 1).split("$")
    )
    assert (user, scheme, rounds) == ("pi-printer-1", "7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected


def test_provisioning_twice_rotates_the_password(lab: Database, tmp_path: Path) -> None:
    first = _provision(lab, tmp_path / "bundle")
    old = (first.directory / "mqtt-password").read_text().strip()
    second = _provision(lab, tmp_path / "bundle")
    new = (second.directory / "mqtt-password").read_text().strip()
    assert new != old and second.rotated and not second.created_device
    stored = _password_hash(lab, "pi-printer-1")
    assert verify_password(stored, new).ok and not verify_password(stored, old).ok
    assert load_config(second.directory / "agent.toml").password == new


def test_provisioning_unknown_machine_is_refused_and_changes_nothing(lab: Database, tmp_path: Path) -> None:
    before = _counts(lab)
    hashes = {d: _password_hash(lab, d) for d in ("pi-printer-1", "pi-laser-1")}
    out = tmp_path / "bundle"
    result = (
        _app(lab)
        .test_cli_runner()
        .invoke(args=["device", "provision", "no-such-machine", "--out", str(out), "--mqtt-url", PI_URL])
    )
    assert result.exit_code != 0
    assert "no machine 'no-such-machine'; machines: laser-1, printer-1, printer-2" in result.output
    assert "Nothing was changed" in result.output
    assert _counts(lab) == before and not out.exists()
    assert {d: _password_hash(lab, d) for d in hashes} == hashes


def test_provisioning_writes_an_audit_row(lab: Database, tmp_path: Path) -> None:
    result = (
        _app(lab)
        .test_cli_runner()
        .invoke(args=["device", "provision", "laser-1", "--out", str(tmp_path / "b"), "--mqtt-url", PI_URL])
    )
    assert result.exit_code == 0, result.output
    password = (tmp_path / "b" / "mqtt-password").read_text().strip()
    with lab.session() as s:
        (row,) = s.scalars(select(AuditLog).where(AuditLog.action == "device.provision"))
        assert (row.subject, row.actor_label, row.actor_id) == ("pi-laser-1", "cli", None)
        assert row.detail["machine"] == "laser-1" and row.detail["mqtt_url"] == PI_URL
        assert password not in str(row.detail)


def test_provisioning_makes_a_device_for_a_machine_without_one(lab: Database, tmp_path: Path) -> None:
    with lab.session() as s:
        load(s, parse("machines: [{slug: laser-2, name: Laser 2, site: test-lab, type: co2-laser}]"))
    with lab.session() as s:
        bundle = provision_device(
            s, "laser-2", tmp_path / "b", PI_URL, reader="simulated", storage_dir=str(tmp_path / "state")
        )
    assert bundle.device_id == "pi-laser-2" and bundle.created_device and not bundle.rotated
    with lab.session() as s:
        device = s.get(Device, "pi-laser-2")
        assert device is not None and device.machine is not None and device.machine.slug == "laser-2"
        row = s.scalar(select(AuditLog).where(AuditLog.subject == "pi-laser-2"))
        assert row is not None and row.detail["created_device"] is True
    assert load_config(tmp_path / "b" / "agent.toml").device_machine == "laser-2"


def test_provisioning_drops_the_bridges_credentials_and_copies_the_ca(lab: Database, tmp_path: Path) -> None:
    ca = tmp_path / "lab-ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    app = _app(lab, MQTT_URL="mqtts://werkbank-bridge:s3cret@werkbank.lab:8883", MQTT_CA_FILE=str(ca))
    out = tmp_path / "bundle"
    result = app.test_cli_runner().invoke(args=["device", "provision", "printer-1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    toml = (out / "agent.toml").read_text()
    assert f'url = "{PI_URL}"' in toml and "s3cret" not in toml and 'ca_file = "ca.crt"' in toml
    assert (out / "ca.crt").read_text() == ca.read_text()


def test_provisioning_refuses_a_device_named_like_the_servers_broker_account(
    lab: Database, tmp_path: Path
) -> None:
    # Its passwd line would replace werkbank-bridge's, and the Pi would hold the server's ACL.
    with lab.session() as s:
        load(
            s,
            parse(
                "machines: [{slug: laser-2, name: Laser 2, site: test-lab, type: co2-laser, "
                "device: {id: werkbank-bridge}}]"
            ),
        )
    before = _counts(lab)
    with pytest.raises(ProvisioningError, match="keeps for the server's own account"), lab.session() as s:
        provision_device(s, "laser-2", tmp_path / "b", PI_URL, reader="simulated")
    assert _counts(lab) == before and not (tmp_path / "b").exists()
    assert _password_hash(lab, "werkbank-bridge") is None


def test_provisioning_cli_takes_the_pis_broker_address_from_mqtt_device_url(
    lab: Database, tmp_path: Path
) -> None:
    # The servers' own MQTT_URL is the loopback listener, which no Pi reaches.
    app = _app(lab, MQTT_URL="mqtt://werkbank-bridge:s3cret@127.0.0.1:1883", MQTT_DEVICE_URL=PI_URL)
    out = tmp_path / "bundle"
    result = app.test_cli_runner().invoke(args=["device", "provision", "printer-1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f'url = "{PI_URL}"' in (out / "agent.toml").read_text()


@pytest.mark.parametrize(
    ("url", "ca", "problem"),
    [
        ("mqtt://127.0.0.1:1883", False, "loopback, which a Pi cannot reach"),
        ("mqtt://localhost", False, "loopback"),
        ("http://werkbank.lab", False, "must start with mqtt:// or mqtts://"),
        ("mqtt://werkbank.lab:1883", True, "a CA file is only used with TLS"),
    ],
)
def test_provisioning_bad_broker_settings_are_refused(
    lab: Database, tmp_path: Path, url: str, ca: bool, problem: str
) -> None:
    before = _counts(lab)
    ca_file = tmp_path / "ca.crt"
    ca_file.write_text("x")
    with pytest.raises(ProvisioningError, match=problem), lab.session() as s:
        provision_device(
            s, "printer-1", tmp_path / "b", url, reader="mfrc522", ca_file=ca_file if ca else None
        )
    assert _counts(lab) == before and not (tmp_path / "b").exists()


# Debian's Mosquitto lives in /usr/sbin, which a normal user's PATH lacks: the test runs with such
# a PATH and must still start the broker it found (`make test` installs Debian's mosquitto).
USER_PATH = "/usr/local/bin:/usr/bin:/bin"


def test_provisioning_mosquitto_accepts_the_passwd_line(
    tmp_path: Path, mosquitto_bin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", USER_PATH)
    password = "correct horse battery staple"
    (tmp_path / "passwd").write_text(mosquitto_passwd_line("pi-test-1", password) + "\n")
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {tmp_path / 'passwd'}\n"
        # As root, Mosquitto would switch to user mosquitto, who cannot enter pytest's private tmp folders.
        "persistence false\nlog_dest stderr\nuser root\n"
    )
    broker = subprocess.Popen(
        [mosquitto_bin, "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port)

        def connect(secret: str) -> bool:
            done = threading.Event()
            result: list[bool] = []
            address = BrokerAddress("127.0.0.1", port, "pi-test-1", secret)
            client = make_client(f"t-{uuid.uuid4().hex[:8]}", address, clean_session=True)

            def on_connect(_c: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
                result.append(not reason_code.is_failure)
                done.set()

            client.on_connect = on_connect
            client.connect("127.0.0.1", port)
            client.loop_start()
            try:
                assert done.wait(5), "no CONNACK"
            finally:
                client.disconnect()
                client.loop_stop()
            return result[0]

        assert connect(password)
        assert not connect("wrong password")
    finally:
        broker.terminate()
        broker.wait(timeout=5)


@pytest.mark.parametrize(
    ("slug", "device_id"),
    [("printer-1", "pi-printer-1"), ("laser_2", "pi-laser-2"), ("x" * 40, "pi-" + "x" * 37)],
)
def test_provisioning_device_ids_are_valid_mqtt_users(slug: str, device_id: str) -> None:
    from server.services.provisioning import device_id_for

    assert device_id_for(slug) == device_id
