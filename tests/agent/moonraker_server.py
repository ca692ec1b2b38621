"""A real Moonraker 0.11.0 (Klipper's API server, from PyPI) with a peer of Klipper behind it.

Moonraker lives in its own virtualenv (``.venv-moonraker``: ``sh tests/agent/install_moonraker.sh``)
and runs unchanged on a free port, trusting 127.0.0.0/8 (no API key), with its ``history``
component on. Klipper itself needs a printer's microcontroller, so its host process is played by
:mod:`tests.agent.peers.klippy` on the Unix socket Moonraker connects to.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.agent.peers import PeerProcess

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("MOONRAKER_VENV", ROOT / ".venv-moonraker"))
INSTALL_COMMAND = "sh tests/agent/install_moonraker.sh"


def missing_moonraker() -> str | None:
    if not (VENV / "bin" / "moonraker").exists():
        return f"Moonraker is not installed in {VENV}; install it with: {INSTALL_COMMAND}"
    return None


class MoonrakerServer:
    def __init__(self, basedir: Path, port: int) -> None:
        self.basedir = basedir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data = basedir / "printer_data"
        self.socket = basedir / "klippy_uds"
        self.klippy: PeerProcess | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = basedir / "moonraker.log"

    def start(self, timeout: float = 60.0) -> MoonrakerServer:
        (self.data / "config").mkdir(parents=True, exist_ok=True)
        (self.data / "gcodes").mkdir(parents=True, exist_ok=True)
        (self.data / "config" / "moonraker.conf").write_text(
            "\n".join(
                [
                    "[server]",
                    "host: 127.0.0.1",
                    f"port: {self.port}",
                    f"klippy_uds_address: {self.socket}",
                    "[authorization]",
                    "trusted_clients:",
                    "    127.0.0.0/8",
                    "[announcements]",
                    "enable_moonlight: False",  # nothing phones home from the tests
                    "[history]",
                    "",
                ]
            )
        )
        self.klippy = PeerProcess(
            "klippy", "--socket", str(self.socket), "--gcodes", str(self.data / "gcodes")
        )
        self.klippy.start()
        log = self._log.open("wb")
        self._process = subprocess.Popen(
            [
                str(VENV / "bin" / "moonraker"),
                "-d",
                str(self.data),
                "-n",
                *os.environ.get("MOONRAKER_ARGS", "").split(),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"Moonraker exited with {self._process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/printer/info")["result"]["state"] == "ready" and self._history_ready():
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Moonraker not ready within {timeout} s:\n{self.log_tail()}")
            time.sleep(0.2)

    def _history_ready(self) -> bool:
        return "jobs" in self.get("/server/history/list?limit=1")["result"]

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        if self.klippy is not None:
            self.klippy.stop()
            self.klippy = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def post(self, path: str) -> Any:
        request = urllib.request.Request(f"{self.url}{path}", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read())

    def printer(self, command: str) -> None:
        """Something done at the printer itself (its display): ``print FILE SECONDS MM``, ``cancel``, …"""
        assert self.klippy is not None
        self.klippy.send(command)

    def state(self) -> str:
        return str(self.get("/printer/objects/query?print_stats")["result"]["status"]["print_stats"]["state"])

    def idle(self) -> None:
        if self.state() in ("printing", "paused"):
            self.printer("cancel")
        deadline = time.monotonic() + 5
        while self.state() in ("printing", "paused") and time.monotonic() < deadline:
            time.sleep(0.05)
