"""One bridge in two processes: the taps apart from the telemetry flood.

A person waiting at a machine must not wait behind telemetry. In one process, every telemetry
message costs the tap path paho's reading of it (in the one network thread that reads the
taps too) and a share of the interpreter lock, and each window's decoding and write takes a
burst of it (docs/performance.md, "The bridge's two processes"). So ``werkbank bridge`` runs
two processes on PostgreSQL (``WERKBANK_BRIDGE_PROCESSES``, docs/deploy.md):

* the **tap half** (this process, ``Bridge(role="taps")``): hears ``auth/req`` (and
  ``status``, for the devices' clocks alone) on a connection of its own (client id
  ``<MQTT_CLIENT_ID>-taps``), answers, writes the decision log, and serves the metrics of both
  halves;
* the **ingest half** (a child, ``werkbank bridge --half ingest``, ``Bridge(role="ingest")``):
  hears events, status, telemetry and the allow-list copies on the configured client id (its
  persistent session keeps events while it restarts), publishes allow-lists and locks, and
  runs at a lower CPU priority (``WERKBANK_BRIDGE_INGEST_NICE``): telemetry can wait a moment,
  a tap cannot.

A device's telemetry, events and status stay on one connection, so their order holds (MQTT
keeps it only within a connection); taps depend on none of them. A session start reaches the
ingest half a few milliseconds after its answer left the tap half; it waits for the decision
row (``DECISION_ROW_WAIT_S``) as it would for another bridge's.

The halves live and die together: the child stops when its standard input closes (the parent
stopped), and is killed with the parent when that one crashes (``kill -9``: Linux's
``PR_SET_PDEATHSIG``; a crash of the bridge stays a crash of both halves, which the fault suite
relies on); the parent stops when the child ends and exits with an error, so that systemd
(``Restart=``) or compose starts both again. The child writes its counters as a JSON line to its
standard output every second (``SNAPSHOT_S``); the parent adds them to its own in ``/metrics``
(``Bridge.peer``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from server.adapters.bridge import Bridge

log = logging.getLogger(__name__)

# How often the ingest half reports its counters to the tap half.
SNAPSHOT_S = 1.0
# What starts a snapshot line on the child's standard output (anything else there is passed on).
SNAPSHOT_MARK = "werkbank-bridge-counters "
# prctl(2): a signal for this process when its parent dies.
PR_SET_PDEATHSIG = 1
# How long the parent waits for the child to stop before it kills it.
CHILD_STOP_S = 15.0


def ingest_half_argv() -> list[str]:
    """The command line of the ingest half: the same interpreter and ``werkbank`` command."""
    return [sys.executable, "-m", "server", "bridge", "--half", "ingest"]


class IngestHalf:
    """The ingest half as a child of the tap half (in the parent process)."""

    def __init__(self, argv: list[str], on_counters: Callable[[dict[str, Any]], None]) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self._on_counters = on_counters
        self._reader = threading.Thread(target=self._read, name="ingest-half-counters", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if not line.startswith(SNAPSHOT_MARK):
                sys.stdout.write(line)  # not ours: pass it on as it would have been printed
                continue
            try:
                counters = json.loads(line[len(SNAPSHOT_MARK) :])
            except ValueError:
                log.warning("bridge: unreadable counters from the ingest half: %.200s", line)
                continue
            if isinstance(counters, dict):
                self._on_counters(counters)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        """Close its standard input (it stops on that), wait, kill if it hangs."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            log.error("bridge: the ingest half did not stop within %.0f s; killed", CHILD_STOP_S)
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)


def serve_as_ingest_half(bridge: Bridge, stop: threading.Event, nice: int) -> None:
    """In the child: lower its priority, report its counters every ``SNAPSHOT_S``, and set
    ``stop`` when the parent closes our standard input (or a signal does)."""
    # A crash of the parent is a crash of the bridge: the kernel kills this half with it
    # (Linux; elsewhere, and in the moment before this call, the watch below stops it).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if nice:
        try:
            os.nice(nice)
        except OSError as exc:  # not allowed here: run at the parent's priority
            log.warning("bridge: could not lower the ingest half's priority by %d: %s", nice, exc)

    def watch_parent() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()  # returns at end of file: the parent closed it or is gone
        stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()

    def report() -> None:
        while True:
            try:
                sys.stdout.write(SNAPSHOT_MARK + json.dumps(bridge.counters()) + "\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                stop.set()  # the parent is gone
                return
            if stop.wait(SNAPSHOT_S):
                return

    threading.Thread(target=report, name="counters", daemon=True).start()
