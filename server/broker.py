"""The MQTT brokers Werkbank can start by itself.

* :class:`EmbeddedBroker`: amqtt in a background thread, for ``make run`` when no
  ``MQTT_URL`` is set, so a new user needs nothing else installed.
* :class:`MosquittoProcess`: a private ``mosquitto`` on a port of our choosing, for the
  tests and the benchmark (production runs the system's Mosquitto, see deploy/).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


# Debian installs mosquitto in /usr/sbin, which a normal user's PATH often lacks.
_SYSTEM_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")


def find_program(name: str) -> str | None:
    """The full path of Mosquitto's ``name`` (``mosquitto``, ``mosquitto_passwd``): on PATH or in the
    system folders. Callers run this path, never the bare name, which a PATH without /usr/sbin misses."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SYSTEM_DIRS:
        path = Path(folder) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


# Ports free_port() draws from start here: above the usual services' (PostgreSQL 5432, Mosquitto
# 1883, ...), below the kernel's ephemeral range.
FIRST_FREE_PORT = 10_000
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_ports_lock = threading.Lock()
_draw = random.Random()  # its own: a test that seeds the module's generator does not pick our ports


def _port_range() -> range:
    """Where :func:`free_port` draws from: below the ephemeral range (Linux's
    ``ip_local_port_range``; 32768 where it cannot be read), and within that a slice of its own
    for each pytest-xdist worker."""
    try:
        ephemeral = int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32_768
    ports = range(FIRST_FREE_PORT, max(FIRST_FREE_PORT, ephemeral))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and workers.isdigit() and int(workers) > 0:
        size = len(ports) // int(workers)
        start = ports.start + int(worker[2:]) % int(workers) * size
        ports = range(start, start + size)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, for a server this process starts next.

    Not the kernel's ``bind(0)``: that port comes from the ephemeral range, from which the kernel
    also takes the local port of every outgoing connection, and one of those (to the database, the
    broker, ...) can take it before the server binds it ("Address already in use", seen in the
    tests). This one comes from below that range, is never handed out twice by one process, and
    each test worker draws from a slice of its own."""
    ports = _port_range()
    if len(ports) < 100:  # an unusual ip_local_port_range: the kernel's choice after all
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            chosen: int = sock.getsockname()[1]
            return chosen
    with _ports_lock:
        for _ in range(200):
            port = ports[_draw.randrange(len(ports))]
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    raise RuntimeError(f"no free port found in {ports.start}-{ports.stop - 1}")


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """amqtt running on its own event loop thread.

    Clients must send a user name (any): amqtt drops QoS 1 messages for offline
    sessions of anonymous clients (LIBRARY-FACTS.md), and every Werkbank client logs in.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="embedded-broker", daemon=True)
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        from amqtt.broker import Broker

        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 1000}
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": False}},
        }

        async def boot() -> Any:
            broker = Broker(config)
            await broker.start()
            return broker

        self._thread.start()
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(boot(), self._loop)
        self._broker = fut.result(timeout=15)
        wait_for_port(self.host, self.port)
        log.info("embedded MQTT broker listening on %s", self.url)
        return self

    def stop(self) -> None:
        if self._broker is not None:
            fut = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=10)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
set_tcp_nodelay true
persistence false
max_queued_messages 10000
max_inflight_messages 0
log_dest stderr
log_type error
log_type warning
"""


class MosquittoProcess:
    """A private Mosquitto on a free loopback port (tests and benchmarks only)."""

    def __init__(self, port: int | None = None, binary: str | None = None, extra_conf: str = "") -> None:
        self.port = port or free_port()
        # More configuration lines (bench/fleet.py: ``sys_interval 1`` for its $SYS counters).
        self.extra_conf = extra_conf
        self.host = "127.0.0.1"
        self.binary = binary or find_program("mosquitto") or "mosquitto"
        self._dir = tempfile.TemporaryDirectory(prefix="wb-mosquitto-")
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return find_program("mosquitto") is not None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> MosquittoProcess:
        conf = Path(self._dir.name) / "mosquitto.conf"
        conf.write_text(MOSQUITTO_CONF.format(port=self.port) + self.extra_conf)
        log_file = (Path(self._dir.name) / "mosquitto.log").open("wb")
        self._proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log_file, stderr=log_file)
        wait_for_port(self.host, self.port)
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._proc = None
        self._dir.cleanup()
