"""What the agent keeps on disk about the open session, and atomic file writes.

The open session (:class:`OpenSession`) lives in ``outbox.sqlite`` beside the events
(:class:`device_agent.outbox.Outbox`), so that a session's end event and the removal of its
record are one transaction. ``state.json`` (:class:`StateFile`) is where agents before that
kept it: read once at the first start after an upgrade and then removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Literal

import msgspec

from werkbank_protocol.messages import EndReason, Mode

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file, whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # The rename itself must reach the disk too.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OpenJob(msgspec.Struct, kw_only=True):
    """The job running in the open session: a restart during it carries on with the same job id."""

    id: str
    kind: Literal["print", "cut", "other"] = "other"
    file: str | None = None
    estimated_s: float | None = None
    started: str  # protocol timestamp of job_started
    start_event: str  # id of the job_started event
    # The boot clock (device_agent.clock) at the job's start, in the session's `boot`.
    started_mono: float | None = None


class OpenSession(msgspec.Struct, kw_only=True):
    """An unlocked session as persisted; enough to rebuild its ``session_started`` event."""

    id: str
    badge: str
    mode: Mode = "use"
    # The supervising trainer's badge (mode supervise), for the session_started event.
    trainer_badge: str | None = None
    offline: bool
    started: str  # protocol timestamp of session_started
    start_event: str  # id of the session_started event
    until: str | None = None
    # "booking": ``until`` is where a booking begins or ends (the lock then has reason
    # booking_end); None: the machine's maximum session or closing time (max_duration).
    # Absent from state files of older agents, which load as None.
    until_reason: Literal["booking"] | None = None
    # Last time the session was known to be open (the last alive mark, wall clock), and its
    # times up to then: what a report after a power loss says.
    heartbeat: str
    unlocked_s: float = 0.0
    run_s: float = 0.0
    # The boot the readings below belong to, and the boot clock at the start, at the last alive
    # mark, when the machine was last seen busy (the idle timeout counts from there), and when
    # `until` falls. Absent from older agents' records: those are recovered as after a power loss.
    boot: str | None = None
    started_mono: float | None = None
    alive_mono: float | None = None
    active_mono: float | None = None
    until_mono: float | None = None
    job: OpenJob | None = None
    # The end reason of a lock that waits for the job to end (lock_deferred was sent).
    lock_pending: EndReason | None = None


class AgentState(msgspec.Struct, kw_only=True):
    session: OpenSession | None = None


class StateFile:
    """``state.json`` of agents before the session moved into ``outbox.sqlite``: read once, then removed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> AgentState:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        try:
            return msgspec.json.decode(data, type=AgentState)
        except msgspec.DecodeError as exc:
            # Atomic writes make this unlikely; a broken file must not keep the machine from starting.
            log.error("ignoring unreadable %s: %s", self.path, exc)
            return AgentState()

    def save(self, state: AgentState) -> None:
        atomic_write(self.path, msgspec.json.encode(state))

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
