"""The on-disk outbox: oldest first, ack deletes, survives reopening and SIGKILL."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from device_agent.outbox import Outbox


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
