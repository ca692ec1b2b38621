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
