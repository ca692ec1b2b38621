"""The on-disk outbox: oldest first, ack deletes, survives reopening and SIGKILL; the open session
with it, stored and closed in one transaction with its events."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.outbox import Outbox
from device_agent.storage import OpenSession


def test_outbox_pending_oldest_first_and_ack_deletes(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    for n in range(3):
        outbox.put(f"id-{n}", f"payload {n}".encode())
    assert [i for i, _ in outbox.pending()] == ["id-0", "id-1", "id-2"]
    assert outbox.pending(limit=1) == [("id-0", b"payload 0")]
    assert outbox.ack(["id-1", "unknown"]) == 1
    assert [i for i, _ in outbox.pending()] == ["id-0", "id-2"]
    assert len(outbox) == 2
    outbox.close()


def test_outbox_same_id_is_stored_once(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.put("a", b"first")
    outbox.put("a", b"second")
    assert outbox.pending() == [("a", b"first")]


def test_outbox_survives_reopen(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.put("a", b"1")
    outbox.put("b", b"2")
    outbox.ack(["a"])
    outbox.close()
    again = Outbox(tmp_path / "outbox.sqlite")
    assert again.pending() == [("b", b"2")]


def test_outbox_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    code = (
        "import os, signal\n"
        "from device_agent.outbox import Outbox\n"
        f"box = Outbox({str(path)!r})\n"
        "box.put('kept', b'payload')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, timeout=20)
    assert result.returncode == -9
    assert Outbox(path).pending() == [("kept", b"payload")]


def _session(session_id: str = "6f1c1f2e-8f43-4c47-9d57-1d3f4cf0b0a1") -> OpenSession:
    return OpenSession(
        id=session_id,
        badge="04A1B2C3",
        offline=False,
        started="2026-11-22T08:00:00.000Z",
        start_event="0b8e7c0e-2f7b-4f0a-9d43-6a8c8e7b2c11",
        heartbeat="2026-11-22T08:00:00.000Z",
        boot="boot-1",
        started_mono=100.0,
    )


def test_outbox_keeps_the_open_session_with_its_events_and_closes_it_with_the_end(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    assert outbox.open_session() is None
    outbox.record([("start", b"session_started")], session=_session())
    assert outbox.open_session() == _session() and outbox.pending() == [("start", b"session_started")]
    outbox.put("fault", b"a fault")  # events alone leave the session as it is
    assert outbox.open_session() == _session()
    outbox.record([("end", b"session_ended")], close=True)
    assert outbox.open_session() is None
    assert [i for i, _ in outbox.pending()] == ["start", "fault", "end"]
    outbox.close()
    assert Outbox(tmp_path / "outbox.sqlite").open_session() is None


def test_outbox_record_is_all_or_nothing(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.record([], session=_session())
    with pytest.raises(sqlite3.ProgrammingError):
        # An event that cannot be stored: neither it nor the session's end is kept.
        outbox.record([("end", b"session_ended"), ("bad", object())], close=True)  # type: ignore[list-item]
    assert outbox.open_session() == _session() and outbox.pending() == []
    with pytest.raises(ValueError, match="not both"):
        outbox.record([], session=_session(), close=True)


def test_outbox_an_unreadable_open_session_does_not_stop_the_start(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    Outbox(path).record([], session=_session())
    with sqlite3.connect(path) as db:
        db.execute("UPDATE open_session SET record = ?", (b'{"id": 5}',))
    assert Outbox(path).open_session() is None


class BootClock:
    """A boot clock moved by hand (the outbox reads nothing else)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.mono = start

    def __call__(self) -> float:
        return self.mono


def test_outbox_health_counts_the_waiting_events_and_times_the_oldest_on_the_boot_clock(
    tmp_path: Path,
) -> None:
    clock = BootClock()
    outbox = Outbox(tmp_path / "outbox.sqlite", "boot-a", clock)
    assert outbox.health() == (0, None)
    outbox.put("first", b"1")
    clock.mono += 30
    outbox.put("second", b"2")
    clock.mono += 600
    assert outbox.health() == (2, 630.0)
    outbox.ack(["first"])
    assert outbox.health() == (1, 600.0)  # the oldest still waiting is the second
    outbox.ack(["second"])
    assert outbox.health() == (0, None)
    outbox.close()


def test_outbox_health_after_a_restart_and_after_a_reboot(tmp_path: Path) -> None:
    clock = BootClock()
    first = Outbox(tmp_path / "outbox.sqlite", "boot-a", clock)
    first.put("kept", b"1")
    first.close()
    clock.mono += 120
    # The agent restarted in the same boot: the boot clock went on, so the wait is exact.
    again = Outbox(tmp_path / "outbox.sqlite", "boot-a", clock)
    clock.mono += 10
    assert again.health() == (1, 130.0)
    again.close()
    # After a reboot the boot clock starts again; the event has waited at least since the start.
    rebooted_clock = BootClock(5.0)
    rebooted = Outbox(tmp_path / "outbox.sqlite", "boot-b", rebooted_clock)
    rebooted_clock.mono += 45
    assert rebooted.health() == (1, 45.0)
    rebooted.close()


def test_outbox_of_an_older_agent_gets_the_stamps_and_its_events_count_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    old = sqlite3.connect(path)
    # The table as agents before the boot-clock stamps made it.
    old.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, "
        "payload BLOB NOT NULL, created REAL NOT NULL)"
    )
    old.execute("INSERT INTO outbox (id, payload, created) VALUES ('old', x'01', 1.0)")
    old.commit()
    old.close()
    clock = BootClock()
    outbox = Outbox(path, "boot-a", clock)
    clock.mono += 20
    outbox.put("new", b"2")
    assert [i for i, _ in outbox.pending()] == ["old", "new"]
    assert outbox.health() == (2, 20.0)
    outbox.ack(["old"])
    assert outbox.health() == (1, 0.0)
    outbox.close()
