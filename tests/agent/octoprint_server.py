"""A real OctoPrint 1.11.8 with its bundled Virtual Printer, for the ``octoprint`` monitor tests.

OctoPrint lives in its own virtualenv (``.venv-octoprint``: its pinned dependencies must not
decide ours); ``tests/agent/install_octoprint.sh`` makes it. :class:`OctoPrintServer` runs
``octoprint serve`` on a free port with a throw-away basedir and connects the virtual
printer; :class:`PortProxy` stands between a monitor and OctoPrint so a test can take the
network away and give it back.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("OCTOPRINT_VENV", ROOT / ".venv-octoprint"))
INSTALL_COMMAND = "sh tests/agent/install_octoprint.sh"
API_KEY = "0123456789ABCDEF0123456789ABCDEF"


def missing_octoprint() -> str | None:
    """Why OctoPrint cannot run here (with the command that fixes it), or None."""
    if not (VENV / "bin" / "octoprint").exists():
        return f"OctoPrint is not installed in {VENV}; install it with: {INSTALL_COMMAND}"
    return None


def gcode(moves: int, feedrate: int = 3000, extrude_mm: float = 1.0) -> str:
    """A print of ``moves`` 100 mm lines, each extruding ``extrude_mm``.

    The Virtual Printer sleeps a tenth of each move's real duration: at F3000 thirty moves
    take about 3 s. Heaters are set without waiting (M104/M140), so temperatures show.
    """
    lines = ["M104 S200", "M140 S60", "G21", "G90", "M82", "G92 E0", f"G1 F{feedrate}"]
    extruded = 0.0
    for i in range(moves):
        extruded += extrude_mm
        lines.append(f"G1 X{10 + (i % 2) * 100} Y{10 + i % 100} E{extruded:.2f} F{feedrate}")
    lines.append("M104 S0")
    return "\n".join(lines) + "\n"


def _config() -> dict[str, Any]:
    # LIBRARY-FACTS' working config: no first-run wizard, nothing phoning home, no autoconnect.
    return {
        "api": {"key": API_KEY},
        "server": {
            "firstRun": False,
            "onlineCheck": {"enabled": False},
            "pluginBlacklist": {"enabled": False},
        },
        "plugins": {
            "virtual_printer": {"enabled": True, "throttle": 0.001},
            "tracking": {"enabled": False},
            "errortracking": {"enabled": False},
        },
        "serial": {"autoconnect": False},
    }


class OctoPrintServer:
    """``octoprint serve`` in a temporary basedir; ``client`` is an ``octorest.OctoRest``."""

    def __init__(self, basedir: Path, port: int) -> None:
        self.basedir = basedir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_key = API_KEY
        self.client: Any = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path = basedir / "octoprint.log"

    def start(self, timeout: float = 60.0) -> OctoPrintServer:
        from octorest import OctoRest

        self.basedir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no YAML library needed to write OctoPrint's config.yaml.
        (self.basedir / "config.yaml").write_text(json.dumps(_config()), encoding="utf-8")
        command = [
            str(VENV / "bin" / "octoprint"),
            "serve",
            "--basedir",
            str(self.basedir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        if os.geteuid() == 0:
            command.append("--iknowwhatimdoing")  # OctoPrint refuses to run as root without it
        log_file = self._log_path.open("wb")
        self._process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"OctoPrint exited with {self._process.returncode}:\n{self.log_tail()}")
            try:
                self.client = OctoRest(url=self.url, apikey=self.api_key)
                break
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"OctoPrint not ready within {timeout} s:\n{self.log_tail()}"
                    ) from None
                time.sleep(0.2)
        self.client.connect(port="VIRTUAL", baudrate=115200)
        self.wait_state("Operational", 30)
        return self

    def stop(self) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------ printing

    def state(self) -> str:
        return str(self.client.job_info()["state"])

    def wait_state(self, state: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while (current := self.state()) != state:
            if time.monotonic() > deadline:
                raise TimeoutError(f"OctoPrint is {current!r}, not {state!r}, after {timeout} s")
            time.sleep(0.05)

    def upload(self, name: str, text: str, timeout: float = 15.0) -> dict[str, Any]:
        """Upload a G-code file and wait for OctoPrint's analysis (estimated time, filament)."""
        self.client.upload((name, io.BytesIO(text.encode("ascii"))))
        deadline = time.monotonic() + timeout
        while not (analysis := self.client.files_info("local", name).get("gcodeAnalysis")):
            if time.monotonic() > deadline:
                raise TimeoutError(f"OctoPrint did not analyse {name} within {timeout} s")
            time.sleep(0.05)
        return dict(analysis)

    def print_file(self, name: str, timeout: float = 15.0) -> None:
        """Select ``name``, wait until OctoPrint's job names it, then start the print.

        ``select(name, print=True)`` in one call raced the previous test's cleanup: right after a
        cancel OctoPrint may still be busy, keeps the old file selected and printed *that* (a CI
        run saw a print of the previous test's ``long.gcode``). Two steps, as a person at
        OctoPrint's page takes them, leave no doubt which file prints.
        """
        deadline = time.monotonic() + timeout
        while True:
            self.wait_state("Operational", max(0.1, deadline - time.monotonic()))
            self.client.select(name)
            selected = ((self.client.job_info().get("job") or {}).get("file") or {}).get("name")
            if selected == name:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"OctoPrint kept {selected!r} selected, not {name!r}")
            time.sleep(0.05)
        self.client.start()

    def idle(self) -> None:
        """Back to "Operational" with no print running (between tests)."""
        if self.state() in ("Printing", "Paused", "Pausing", "Starting"):
            self.client.cancel()
        self.wait_state("Operational", 20)


class PortProxy:
    """Forwards a local port to OctoPrint; ``down()`` drops every connection and stops listening.

    Stands in for the network between the Pi's agent and OctoPrint: a real socket that
    refuses connections while down, as a stopped OctoPrint's port does.
    """

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port = target_port
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def up(self) -> PortProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() wakes the accept() blocked in the other thread; close() alone may not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.close()
            self._connections.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        sockets = [a, b]
        try:
            while True:
                readable, _, _ = select.select(sockets, [], [], 1.0)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.close()
