"""A badge reader without hardware, for demos (``--simulate``) and tests.

Badges reach it through :meth:`SimulatedReader.present`, called by tests, by
``Agent.tap`` or by the agent when a ``sim/tap`` message arrives.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

from device_agent.hardware.base import Reader

if TYPE_CHECKING:
    from device_agent.config import AgentConfig


class SimulatedReader(Reader):
    """Reports each presented badge once, in order; safe to feed from any thread."""

    def __init__(self) -> None:
        self._cards: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._presented = 0

    def present(self, uid: str) -> int:
        """Queue a badge; returns how many badges were presented so far, this one included."""
        with self._lock:
            self._presented += 1
            self._cards.put(uid.upper())
            return self._presented

    def poll(self) -> str | None:
        try:
            return self._cards.get_nowait()
        except queue.Empty:
            return None


def create_reader(config: AgentConfig) -> Reader:
    return SimulatedReader()
