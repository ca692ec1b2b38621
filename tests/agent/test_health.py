"""The agent's health in `status` (docs/protocol.md): events waiting for the server, how long the
oldest has waited on the boot clock, and the allow-list's age; sent once a minute, not more.

A real broker and a real paho client standing in for the server (tests/agent/helpers.py), which
can stop acknowledging events: the server silent while the broker still carries everything.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from device_agent.agent import Agent
from tests.agent.helpers import ADA, Responder, allowlist_document, payload_of, wait_until
from werkbank_protocol.topics import Suffix

StartAgent = Callable[..., Agent]


class SplitClock:
    """Wall clock and boot clock moved apart by hand: ``advance`` lets time pass (the boot clock),
    ``step_wall`` sets the wall clock alone (NTP's step, a Pi without a real-time clock)."""

    def __init__(self) -> None:
        self.mono_offset = 0.0
        self.wall_offset = 0.0
        self.boot = f"test-boot-{uuid.uuid4()}"

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.wall_offset)

    def monotonic(self) -> float:
        return time.monotonic() + self.mono_offset

    def boot_id(self) -> str | None:
        return self.boot

    def advance(self, seconds: float) -> None:
        self.mono_offset += seconds
        self.wall_offset += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall_offset += seconds


def _next_status(responder: Responder, device: str, after: int, timeout: float = 5.0) -> dict[str, Any]:
    """The first status of ``device`` after the ``after`` ones already received."""
    assert responder.wait_for(lambda: len(responder.statuses_of(device)) > after, timeout), (
        f"no status after the {after} received"
    )
    return responder.statuses_of(device)[after]


def _status_where(
    responder: Responder, device: str, wanted: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    """The first status of ``device`` that ``wanted`` accepts (an agent may send its status twice
    as it connects: waiting by count alone could take the second first one)."""
    assert responder.wait_for(lambda: any(wanted(s) for s in responder.statuses_of(device)), timeout), (
        "no such status"
    )
    return next(s for s in responder.statuses_of(device) if wanted(s))


def test_health_agent_reports_events_the_server_does_not_acknowledge(
    start_agent: StartAgent, responder: Responder
) -> None:
    clock = SplitClock()
    agent = start_agent(clock=clock)
    device = agent.config.device_id
    responder.auto_ack = False  # the server hears the device but stores nothing
    assert agent.tap(ADA).outcome == "unlocked"
    clock.advance(1)  # past the tap-out grace
    assert agent.tap(ADA).reason == "tap_out"
    responder.wait_event("session_ended")
    assert responder.wait_for(lambda: responder.statuses_of(device)[-1]["state"] == "locked")
    seen = len(responder.statuses_of(device))

    clock.advance(11 * 60)  # eleven minutes on the boot clock: the minute's status is due
    status = _next_status(responder, device, seen)
    assert status["outbox_depth"] == 2  # session_started and session_ended
    assert 11 * 60 <= status["outbox_oldest_s"] < 11 * 60 + 6

    # The wall clock steps an hour back (a Pi before NTP): the wait is the boot clock's.
    clock.step_wall(-3600)
    clock.advance(60)
    status = _next_status(responder, device, seen + 1)
    assert status["outbox_depth"] == 2
    assert 12 * 60 <= status["outbox_oldest_s"] < 12 * 60 + 6

    responder.ack(device, [event.id for event in responder.events])
    assert wait_until(lambda: len(agent.outbox) == 0)
    clock.advance(60)
    status = _next_status(responder, device, seen + 2)
    assert status["outbox_depth"] == 0 and "outbox_oldest_s" not in status


def test_health_status_once_a_minute_not_more(start_agent: StartAgent, responder: Responder) -> None:
    clock = SplitClock()
    agent = start_agent(clock=clock)
    device = agent.config.device_id
    assert responder.wait_for(lambda: len(responder.statuses_of(device)) >= 1)
    time.sleep(0.5)
    # On connecting (the first tick and the connect handler may both send one).
    at_start = len(responder.statuses_of(device))
    assert at_start <= 2
    time.sleep(1.5)  # the agent polls its reader at 100 Hz meanwhile: nothing new to say
    assert len(responder.statuses_of(device)) == at_start
    clock.advance(50)  # about 52 s since the first (real time passes too)
    time.sleep(0.5)
    assert len(responder.statuses_of(device)) == at_start
    clock.advance(10)
    _next_status(responder, device, at_start)
    time.sleep(0.5)
    assert len(responder.statuses_of(device)) == at_start + 1


def test_health_allowlist_age_counts_from_its_issue_on_the_boot_clock(
    start_agent: StartAgent, responder: Responder
) -> None:
    clock = SplitClock()
    agent = start_agent(clock=clock)
    device = agent.config.device_id
    assert "allowlist_age_s" not in _next_status(responder, device, 0)  # none held yet
    issued = datetime.now(UTC) - timedelta(hours=2)
    responder.publish(device, Suffix.ALLOWLIST, payload_of(allowlist_document(3, issued=issued)), retain=True)
    # A new list: a status says so at once.
    status = _status_where(responder, device, lambda s: s.get("allowlist_version") == 3)
    assert 7200 <= status["allowlist_age_s"] < 7200 + 5

    clock.advance(24 * 3600)  # a day later, and no new list came
    status = _status_where(responder, device, lambda s: s.get("allowlist_age_s", 0) >= 26 * 3600)
    assert status["allowlist_age_s"] < 26 * 3600 + 5

    clock.step_wall(2 * 86400)  # the wall clock jumps two days: the list is no older for that
    clock.advance(60)
    status = _status_where(responder, device, lambda s: s.get("allowlist_age_s", 0) >= 26 * 3600 + 60)
    assert status["allowlist_age_s"] < 26 * 3600 + 65
