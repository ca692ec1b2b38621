"""Wall-clock time for the agent and the bridge, with the fault suite's one clock seam.

``WERKBANK_FAKE_CLOCK_FILE`` (tests only, never set in production) names a file holding a
number of seconds that is added to the real UTC time. The fault suite (tests/faults/,
docs/faults.md) uses it to put one agent's clock an hour off and to let an hour pass during
a one-minute link cut; it rewrites the file while the processes run. Monotonic time, which
measures every duration, is never shifted.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

FAKE_CLOCK_ENV = "WERKBANK_FAKE_CLOCK_FILE"

# (path, inode, modification time, size) and the offset read: the file is read again only when
# it changed (the fault suite replaces it with a new file, so the inode changes every time).
_cached: tuple[tuple[str, int, int, int], float] | None = None


def _offset(path: str) -> float:
    global _cached  # noqa: PLW0603 - one small cache for the whole process
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return 0.0
    key = (path, stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if _cached is not None and _cached[0] == key:
        return _cached[1]
    with open(path, encoding="utf-8") as file:
        text = file.read().strip()
    try:
        offset = float(text or 0)
    except ValueError:
        raise ValueError(f"{FAKE_CLOCK_ENV}: {path} must hold a number of seconds, not {text!r}") from None
    _cached = (key, offset)
    return offset


def wall_now() -> datetime:
    """The current UTC time (plus the test offset when ``WERKBANK_FAKE_CLOCK_FILE`` is set)."""
    now = datetime.now(UTC)
    path = os.environ.get(FAKE_CLOCK_ENV)
    return now + timedelta(seconds=_offset(path)) if path else now
