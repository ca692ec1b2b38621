"""A Bambu Lab printer's LAN-mode MQTT for the tests: a private Mosquitto with a TLS listener
(certificates from a test CA made here with openssl; the server certificate's CN is the
printer's serial, as on the printer) and the printer's firmware played by
:mod:`tests.agent.peers.bambu`, which publishes the reports."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from server.broker import free_port, wait_for_port
from server.services.provisioning import mosquitto_passwd_line
from tests.agent.peers import PeerProcess

SERIAL = "01S00C123456789"
ACCESS_CODE = "12345678"
FIRMWARE_PASSWORD = "firmware-side-secret"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str, server_cn: str) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for a server whose CN is ``server_cn``."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "30",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )
    _openssl(
        "req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={server_cn}", cwd=directory
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "30", cwd=directory,
    )  # fmt: skip
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


class BambuPrinter:
    """The broker and the firmware; ``ca_file`` is what the agent's ``bambu_ca_file`` names."""

    def __init__(
        self, serial: str = SERIAL, full_reports: bool = False, server_cn: str | None = None
    ) -> None:
        self.serial = serial
        self.full_reports = full_reports
        self._dir = Path(tempfile.mkdtemp(prefix="wb-bambu-"))
        self.ca_file, self._cert, self._key = make_ca(self._dir / "pki", "BBL Test CA", server_cn or serial)
        # Mosquitto started as root drops to the "mosquitto" user before it reads these (test keys only).
        for path in (self._dir, self._dir / "pki", self._cert, self._key, self.ca_file):
            path.chmod(0o755 if path.is_dir() else 0o644)
        self.port = free_port()
        self._broker: subprocess.Popen[bytes] | None = None
        self.firmware: PeerProcess | None = None

    def start(self) -> BambuPrinter:
        passwd = self._dir / "passwd"
        passwd.write_text(
            mosquitto_passwd_line("bblp", ACCESS_CODE)
            + "\n"
            + mosquitto_passwd_line("printer-firmware", FIRMWARE_PASSWORD)
            + "\n"
        )
        passwd.chmod(0o644)
        conf = self._dir / "mosquitto.conf"
        conf.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    f"cafile {self.ca_file}",
                    f"certfile {self._cert}",
                    f"keyfile {self._key}",
                    "allow_anonymous false",
                    f"password_file {passwd}",
                    "set_tcp_nodelay true",
                    "persistence false",
                    "log_dest stderr",
                    "log_type error",
                    "",
                ]
            )
        )
        self.start_broker()
        args = [
            "--broker-port",
            str(self.port),
            "--serial",
            self.serial,
            "--password",
            FIRMWARE_PASSWORD,
            "--ca",
            str(self.ca_file),
        ]
        self.firmware = PeerProcess("bambu", *args, *(["--full"] if self.full_reports else [])).start()
        return self

    def send(self, command: str) -> None:
        assert self.firmware is not None
        self.firmware.send(command)

    def start_broker(self) -> None:
        log = (self._dir / "mosquitto.log").open("ab")
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._broker = subprocess.Popen(
            [binary, "-c", str(self._dir / "mosquitto.conf")], stdout=log, stderr=log
        )
        wait_for_port("127.0.0.1", self.port)

    def stop_broker(self) -> None:
        """The printer drops off the network (its broker goes away)."""
        if self._broker is not None:
            self._broker.terminate()
            self._broker.wait(5)
            self._broker = None

    def stop(self) -> None:
        if self.firmware is not None:
            self.firmware.stop()
            self.firmware = None
        self.stop_broker()
        shutil.rmtree(self._dir, ignore_errors=True)
