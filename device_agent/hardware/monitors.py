"""Machine monitors: how the agent learns that the machine is working (``run_s``, idle timeout)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from device_agent.hardware.base import MachineMonitor

if TYPE_CHECKING:
    from device_agent.config import AgentConfig


class NoMonitor(MachineMonitor):
    """No way to tell: the machine never counts as running, so ``run_s`` stays 0."""

    def running(self) -> bool:
        return False


def create_monitor(config: AgentConfig) -> MachineMonitor:
    # Issue 3 adds OctoPrint and current-sensor monitors, chosen by config.
    return NoMonitor()
