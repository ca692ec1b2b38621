"""The Werkbank device agent: badge reader → decision → relay, at one machine, on a Raspberry Pi."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


class AgentError(Exception):
    """Root of the agent's own exceptions (a bad config, a missing hardware backend)."""


def agent_version() -> str:
    """The installed package version, reported to the server in ``status.fw``."""
    try:
        return version("werkbank")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0+unknown"
