"""The shipped Mosquitto config laid out as an install would have it, under a temporary root.

Only ports and paths change: every absolute path of a config file is moved under the root, and
every listener gets a free port (the port map says which). The files go where docs/deploy.md (a
Debian host) or deploy/compose.yaml (the containers) put them; the broker is the real one.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from server.broker import free_port, wait_for_port
from server.services.provisioning import mosquitto_passwd_line
from werkbank_protocol.mqtt import BrokerAddress, make_client

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MOSQUITTO = DEPLOY / "mosquitto"
COMPOSE = DEPLOY / "compose.yaml"

BRIDGE = "werkbank-bridge"  # the server's account (werkbank.acl)
PRINTER = "pi-printer-1"
LASER = "pi-laser-1"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"

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


def parse(text: str, follow_includes: bool = False) -> Conf:
    """Parse ``text``; with ``follow_includes``, ``include_dir`` folders are read too (their *.conf
    files, sorted, as Mosquitto reads them), for a config whose paths are already localized."""
    conf = Conf({}, [])
    _parse_into(conf, text, follow_includes)
    return conf


def _parse_into(conf: Conf, text: str, follow_includes: bool) -> None:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, value = line.partition(" ")
        value = value.strip()
        if name == "listener":
            port, _, address = value.partition(" ")
            conf.listeners.append(Listener(int(port), address.strip() or None))
        elif name == "include_dir" and follow_includes:
            for path in sorted(Path(value).glob("*.conf")):
                _parse_into(conf, path.read_text(), follow_includes)
        elif name in LISTENER_OPTIONS and conf.listeners:
            conf.listeners[-1].options[name] = value
        else:
            conf.options.setdefault(name, []).append(value)


def localize(text: str, root: Path, ports: dict[int, int]) -> str:
    """``text`` with every absolute path under ``root`` and every listener on a free port."""
    out = []
    for original in text.splitlines():
        line = original
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
        deadline = time.monotonic() + 5
        for port in self.ports.values():
            while True:
                try:
                    wait_for_port("127.0.0.1", port, timeout=0.1)
                    break
                except TimeoutError:
                    # A config error ends Mosquitto at once: say why instead of waiting.
                    if self.proc.poll() is not None or time.monotonic() > deadline:
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


# -- certificates and accounts, as docs/deploy.md makes them -----------------------------------


def make_certs(folder: Path, *hosts: str) -> Path:
    subprocess.run(
        ["sh", str(MOSQUITTO / "make-certs.sh"), *hosts],
        env={"CERT_DIR": str(folder), "PATH": USER_PATH},
        check=True,
        capture_output=True,
    )
    return folder


def write_passwd(path: Path, passwords: dict[str, str], mosquitto_passwd: str) -> None:
    """The password file as docs/deploy.md builds it: the server's account with Mosquitto's own
    tool, each device's line from its provisioning bundle (:func:`mosquitto_passwd_line` writes it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([mosquitto_passwd, "-c", "-b", str(path), BRIDGE, passwords[BRIDGE]], check=True)
    with path.open("a") as handle:
        for user, password in passwords.items():
            if user != BRIDGE:
                handle.write(mosquitto_passwd_line(user, password) + "\n")


# -- clients ------------------------------------------------------------------------------------


class Client:
    """A paho client set up as every Werkbank process sets it up (make_client), which records what
    it receives and every time the broker drops it."""

    def __init__(
        self, port: int, user: str | None, password: str | None, client_id: str, ca: Path | None
    ) -> None:
        self.port = port
        address = BrokerAddress("127.0.0.1", port, user, password, tls=ca is not None)
        self.client = make_client(client_id, address, clean_session=True, ca_file=str(ca) if ca else None)
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.drops = 0
        self._subacks: dict[int, queue.Queue[list[Any]]] = {}
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self.events.put(("connack", rc))
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, mid, codes, _p: self._suback(mid).put(codes)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.drops += 1
        self.events.put(("closed", rc))

    def _suback(self, mid: int) -> queue.Queue[list[Any]]:
        return self._subacks.setdefault(mid, queue.Queue())

    def connect(self, timeout: float = 5.0) -> Any:
        """The CONNACK's reason code, or None when the broker closed the connection without one."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        kind, rc = self.events.get(timeout=timeout)
        return rc if kind == "connack" else None

    def subscribe(self, *filters: str) -> list[bool]:
        """Whether the broker granted each filter (SUBACK)."""
        _rc, mid = self.client.subscribe([(f, 1) for f in filters])
        return [not code.is_failure for code in self._suback(mid).get(timeout=5)]

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def received_until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Every message up to the control message ``payload`` on ``topic`` (which is left out).

        A message the broker should have refused would come first: the control message is sent
        after it, over the same broker, and QoS 1 keeps the order."""
        seen: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + 5
        while True:
            msg = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            if (msg.topic, msg.payload) == (topic, payload):
                return seen
            seen.append((msg.topic, bytes(msg.payload)))

    def stays_connected(self) -> bool:
        """True when a round trip still works and the broker never dropped this client."""
        _rc, mid = self.client.subscribe("werkbank/v1/probe", 1)
        try:
            self._suback(mid).get(timeout=2)
        except queue.Empty:
            return False
        time.sleep(0.2)  # a takeover closes the socket at once; give paho's thread time to notice
        return self.drops == 0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
