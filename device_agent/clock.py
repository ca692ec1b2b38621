"""The agent's clocks: wall time for timestamps, a boot clock for durations, and the boot id.

Durations never come from the wall clock: NTP steps it, and a Pi without a real-time clock
starts at whatever time it last saved. On Linux ``CLOCK_BOOTTIME`` counts from the boot, for
every process alike, so a session's start read by one agent process and its end read by the
next one (a crash and a restart) still give the right length. The boot id tells whether the
machine rebooted (a power loss) in between, when the stored clock readings mean nothing.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Protocol

from werkbank_protocol.clock import wall_now

log = logging.getLogger(__name__)

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def mono_s(mono: float | None) -> float | None:
    """A boot-clock reading as messages carry it in ``mono_s`` (ms precision; None when not known)."""
    return None if mono is None else round(max(mono, 0.0), 3)


class Clock(Protocol):
    """Wall time for timestamps; the boot clock (seconds) for durations and deadlines.

    ``boot_id`` names the boot that ``monotonic`` counts from (None when unknown: then a
    stored reading is never trusted after a restart).
    """

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...

    def boot_id(self) -> str | None: ...


def read_boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text[:64] or None


class SystemClock:
    """The machine's clocks. ``CLOCK_BOOTTIME`` where the OS has it (Linux), else ``time.monotonic``."""

    def __init__(self, boot_id_path: Path = BOOT_ID_PATH) -> None:
        self._boot_id = read_boot_id(boot_id_path)
        self._clock_id: int | None = getattr(time, "CLOCK_BOOTTIME", None)
        if self._boot_id is None:
            log.warning(
                "no boot id at %s: a session left open by a crash is treated as lost in a power loss",
                boot_id_path,
            )

    def now(self) -> datetime:
        return wall_now()  # the fault suite's clock seam (WERKBANK_FAKE_CLOCK_FILE)

    def monotonic(self) -> float:
        if self._clock_id is not None:
            return time.clock_gettime(self._clock_id)
        return time.monotonic()

    def boot_id(self) -> str | None:
        return self._boot_id
