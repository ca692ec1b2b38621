"""Faithful peers of the devices the agent talks to (smart plugs, printers), each run as its own
process on a free port, and :class:`PeerProcess` to start, pause, kill and restart them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from server.broker import free_port

ROOT = Path(__file__).resolve().parents[3]


class PeerProcess:
    """``python -m tests.agent.peers.<module> ARGS --port PORT``; ready when it prints ``ready``."""

    def __init__(self, module: str, *args: str, port: int | None = None) -> None:
        self.module = module
        self.args = args
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 10.0) -> PeerProcess:
        command = [
            sys.executable,
            "-m",
            f"tests.agent.peers.{self.module}",
            *self.args,
            "--port",
            str(self.port),
        ]
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.strip() == "ready":
                return self
            if not line and self.process.poll() is not None:
                break
        output = self.process.stdout.read() if self.process.poll() is not None else ""
        self.stop()
        raise RuntimeError(f"peer {self.module} {self.args} did not start: {output}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)  # a paused peer must be able to die
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def send(self, line: str) -> None:
        """A command on the peer's stdin: what happens at the device itself (a print started at it)."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def pause(self) -> None:
        """The device hangs: connections are accepted by the kernel, nothing answers."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGCONT)

    def control(self, path: str) -> Any:
        """A test-only request to the peer (``/__peer/<path>``); the agent never makes these."""
        with urllib.request.urlopen(f"{self.url}/__peer/{path}", timeout=5) as reply:
            return json.loads(reply.read())

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:
            return json.loads(reply.read())
