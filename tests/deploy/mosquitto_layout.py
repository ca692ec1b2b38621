"""The shipped Mosquitto config laid out as an install would have it, under a temporary root.

Only ports and paths change: every absolute path of a config file is moved under the root, and
every listener gets a free port (the port map says which). The files go where docs/deploy.md (a
Debian host) or deploy/compose.yaml (the containers) put them; the broker is the real one.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from server.broker import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MOSQUITTO = DEPLOY / "mosquitto"
COMPOSE = DEPLOY / "compose.yaml"

# Debian bookworm's own /etc/mosquitto/mosquitto.conf: werkbank.conf goes into its conf.d.
DEBIAN_MAIN_CONF = """\
# Place your local configuration in /etc/mosquitto/conf.d/
pid_file /run/mosquitto/mosquitto.pid
persistence true
persistence_location /var/lib/mosquitto/
log_dest file /var/log/mosquitto/mosquitto.log
include_dir /etc/mosquitto/conf.d
"""
# What the eclipse-mosquitto image runs unless the compose file says otherwise.
IMAGE_MAIN_CONF = "/mosquitto/config/mosquitto.conf"


@dataclass
class Listener:
    port: int
    address: str | None
    options: dict[str, str] = field(default_factory=dict)

    @property
    def loopback_only(self) -> bool:
        return self.address in ("127.0.0.1", "::1", "localhost")


@dataclass
class Conf:
    """A Mosquitto config as the broker reads it: global options and listeners in order."""

    options: dict[str, list[str]]
    listeners: list[Listener]

    def one(self, name: str) -> str:
        (value,) = self.options[name]
        return value

    def listener(self, port: int) -> Listener:
        (found,) = (listener for listener in self.listeners if listener.port == port)
        return found


LISTENER_OPTIONS = {
    "certfile",
    "keyfile",
    "cafile",
    "capath",
    "tls_version",
    "use_username_as_clientid",
    "require_certificate",
    "protocol",
    "socket_domain",
    "bind_interface",
    "max_connections",
    "mount_point",
}


def parse(text: str, root: Path | None = None) -> Conf:
    """Parse ``text``; ``include_dir`` is followed under ``root`` (its *.conf files, sorted, as Mosquitto does)."""
    conf = Conf({}, [])
    _parse_into(conf, text, root)
    return conf


def _parse_into(conf: Conf, text: str, root: Path | None) -> None:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        value = value.strip()
        if name == "listener":
            port, _, address = value.partition(" ")
            conf.listeners.append(Listener(int(port), address.strip() or None))
        elif name == "include_dir" and root is not None:
            folder = root / value.lstrip("/")
            for path in sorted(folder.glob("*.conf")):
                _parse_into(conf, path.read_text(), root)
        elif name in LISTENER_OPTIONS and conf.listeners:
            conf.listeners[-1].options[name] = value
        else:
            conf.options.setdefault(name, []).append(value)


def localize(text: str, root: Path, ports: dict[int, int]) -> str:
    """``text`` with every absolute path under ``root`` and every listener on a free port."""
    out = []
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            line = re.sub(r"(?<=\s)/", f"{root}/", line)
            match = re.match(r"^listener\s+(\d+)", line)
            if match:
                port = int(match.group(1))
                ports.setdefault(port, free_port())
                line = f"listener {ports[port]}{line[match.end() :]}"
        out.append(line)
    return "\n".join(out) + "\n"


def install(source: Path, root: Path, target: str, ports: dict[int, int], mode: int = 0o644) -> Path:
    """Copy ``source`` to ``target`` (an absolute path as on the real machine) under ``root``;
    config files (*.conf) are localized on the way."""
    dest = root / target.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest, dirs_exist_ok=True)
        return dest
    if source.suffix == ".conf":
        dest.write_text(localize(source.read_text(), root, ports))
    else:
        shutil.copy(source, dest)
    dest.chmod(mode)
    return dest


def run_as_root_too(main_conf: Path) -> None:
    """A root test run: Mosquitto would drop to user mosquitto, who cannot enter pytest's private
    temp folders (on a real host the files belong to group mosquitto, docs/deploy.md)."""
    if os.geteuid() == 0:
        with main_conf.open("a") as handle:
            handle.write("user root\n")


# -- compose ------------------------------------------------------------------------------


def substitute(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?error}`` against ``env``."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3) or ""
        if name in env and env[name] != "":
            return env[name]
        if op == ":?":
            raise KeyError(f"compose needs {name}: {arg}")
        return arg if op == ":-" else ""

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:\?|:-)([^}]*))?\}", one, value)


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def compose_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """``(source, target)`` of a service's volumes; a named volume's source has no ``./``."""
    mounts = []
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        mounts.append((source, target))
    return mounts


# -- the broker -----------------------------------------------------------------------------


class ShippedBroker:
    """The real ``mosquitto`` started on a laid-out config; ``port(p)`` is where listener ``p`` went."""

    def __init__(self, binary: str, root: Path, main_conf: str, ports: dict[int, int]) -> None:
        self.binary = binary
        self.root = root
        self.main_conf = root / main_conf.lstrip("/")
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = root / "mosquitto.out"

    def port(self, configured: int) -> int:
        return self.ports[configured]

    def start(self) -> ShippedBroker:
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.main_conf)], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            for port in self.ports.values():
                wait_for_port("127.0.0.1", port, timeout=5)
        except TimeoutError:
            self.stop()
            raise AssertionError(f"mosquitto did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        texts = [self.output.read_text(errors="replace")] if self.output.exists() else []
        texts += [p.read_text(errors="replace") for p in self.root.glob("var/log/mosquitto/*.log")]
        return "\n".join(texts)

    def reload(self) -> None:
        """What ``systemctl reload mosquitto`` does: SIGHUP, which re-reads the password file."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # Mosquitto reloads in its main loop, at most a few ms later

    def kill(self) -> None:
        """A crash or power loss: no chance to save anything."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=5)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self.proc = None
