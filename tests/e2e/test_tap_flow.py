"""A badge tap becomes machine hours, end to end: reader → agent → broker → bridge → relay → session."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from server.models import AccessDecision, MachineSession, StoredEvent
from tests.e2e.conftest import System, eventually

QUINN = "04A224B2C35E80"  # qualified on printers and the laser


def _sessions(system: System) -> list[MachineSession]:
    with system.db.session() as s:
        return list(s.scalars(select(MachineSession).order_by(MachineSession.created_at)))


def test_e2e_qualified_tap_unlocks_and_tap_out_stores_machine_hours(system: System) -> None:
    system.start_bridge()
    agent = system.start_agent("pi-printer-1")
    assert not system.relay_closed("pi-printer-1")

    first = agent.tap(QUINN)
    assert (first.outcome, first.reason, first.offline) == ("unlocked", "ok", False)
    assert first.message["en"].startswith("Hello Quinn") and first.message["de"].startswith("Hallo Quinn")
    assert system.relay_closed("pi-printer-1")
    assert eventually(lambda: len(_sessions(system)) == 1 and _sessions(system)[0].started_at is not None)
    started = _sessions(system)[0]
    assert started.id == first.session and started.ended_at is None and started.person_id is not None

    second = agent.tap(QUINN, timeout=5)
    assert second.reason == "tap_out"
    assert not system.relay_closed("pi-printer-1")
    assert eventually(lambda: _sessions(system)[0].ended_at is not None)
    ended = _sessions(system)[0]
    assert ended.end_reason == "tap_out"
    assert ended.unlocked_s is not None and ended.unlocked_s > 0
    # every event acknowledged after commit: the outbox is empty
    assert eventually(lambda: len(agent.outbox) == 0)


@pytest.mark.parametrize(
    ("device_id", "badge", "reason", "hint_en"),
    [
        ("pi-printer-1", "DEADBEEF", "not_qualified", "Ask a trainer"),
        ("pi-laser-1", "0BADCAFE", "qualification_expired", "renew"),
        ("pi-printer-1", "CAFEF00D", "unknown_badge", "register"),
        ("pi-printer-2", QUINN, "machine_maintenance", "another one"),
    ],
)
def test_e2e_denied_tap_keeps_relay_open_and_says_why(
    system: System, device_id: str, badge: str, reason: str, hint_en: str
) -> None:
    system.start_bridge()
    agent = system.start_agent(device_id)
    decision = agent.tap(badge)
    assert (decision.outcome, decision.reason) == ("denied", reason)
    assert hint_en in decision.message["en"]
    assert decision.message["de"] and decision.message["de"] != decision.message["en"]
    assert not system.relay_closed(device_id)
    assert _sessions(system) == []

    def logged() -> str | None:  # the decision log is written just after the answer
        with system.db.session() as s:
            return s.scalar(select(AccessDecision.reason))

    assert eventually(lambda: logged() is not None)
    assert logged() == reason


def test_e2e_server_down_agent_decides_offline_and_delivers_later_exactly_once(system: System) -> None:
    system.start_bridge()
    agent = system.start_agent("pi-laser-1")
    system.wait_allowlist(agent)
    system.stop_bridge()

    denied = agent.tap("DEADBEEF")  # not on the list
    assert (denied.outcome, denied.offline) == ("denied", True)
    allowed = agent.tap(QUINN)
    assert (allowed.outcome, allowed.offline) == ("unlocked", True)
    assert system.relay_closed("pi-laser-1")
    assert agent.tap(QUINN).reason == "tap_out"
    assert not system.relay_closed("pi-laser-1")
    assert len(agent.outbox) == 2  # started + ended, waiting for the server
    assert _sessions(system) == []

    system.start_bridge()
    assert eventually(lambda: len(agent.outbox) == 0, timeout=15)
    sessions = _sessions(system)
    assert len(sessions) == 1
    assert sessions[0].offline and sessions[0].end_reason == "tap_out" and sessions[0].id == allowed.session
    with system.db.session() as s:
        assert s.scalar(select(func.count()).select_from(StoredEvent)) == 2


def test_e2e_revoked_badge_leaves_the_offline_list(system: System) -> None:
    from server.models import Badge, BadgeStatus

    system.start_bridge()
    agent = system.start_agent("pi-laser-1")
    system.wait_allowlist(agent)
    version = agent.allowlist.version
    assert version is not None
    with system.db.session() as s:
        badge = s.scalar(select(Badge).where(Badge.uid == QUINN))
        assert badge is not None
        badge.status = BadgeStatus.BLOCKED
    assert eventually(lambda: (agent.allowlist.version or 0) > version, timeout=5)
    system.stop_bridge()
    assert agent.tap(QUINN).outcome == "denied"
