"""The fault suite's clock seam: WERKBANK_FAKE_CLOCK_FILE shifts the wall clock of agent and bridge."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from werkbank_protocol.clock import FAKE_CLOCK_ENV, wall_now


def _replace(path: Path, text: str) -> None:
    # As the fault suite writes it: a new file renamed over the old one.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _ahead() -> float:
    return (wall_now() - datetime.now(UTC)).total_seconds()


def test_clock_without_the_seam_is_the_real_utc_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAKE_CLOCK_ENV, raising=False)
    assert wall_now().tzinfo is not None
    assert abs(_ahead()) < 1


def test_clock_follows_the_file_as_it_is_rewritten(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = tmp_path / "clock"
    monkeypatch.setenv(FAKE_CLOCK_ENV, str(clock))
    assert abs(_ahead()) < 1  # no file yet: no offset
    _replace(clock, "3600\n")
    assert 3599 < _ahead() < 3601
    _replace(clock, "-3600.5\n")
    assert -3602 < _ahead() < -3599


def test_clock_refuses_a_file_that_is_not_a_number(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clock = tmp_path / "clock"
    clock.write_text("an hour\n")
    monkeypatch.setenv(FAKE_CLOCK_ENV, str(clock))
    with pytest.raises(ValueError, match="must hold a number of seconds"):
        wall_now()
