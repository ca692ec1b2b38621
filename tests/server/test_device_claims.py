"""Devices are untrusted (issue 11): over a real broker, a device reports what the bridge then
believes only as far as the server's own decisions and sane bounds allow.

Each test plays a stolen Pi: a plain MQTT client with the device's id, sending what the real
agent never would. The bridge is the real one.
"""

from __future__ import annotations

import json
import logging
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import func, select

from server.adapters.bridge import Bridge, wait_until
from server.db import Database
from server.models import (
    Competency,
    Job,
    MachineSession,
    Person,
    SessionReview,
    StoredEvent,
)
from server.services import training
from server.services.device_claims import UNCHECKED_MAX
from tests.conftest import BEA, LARA, OTTO, TINA
from tests.mqtt_peer import Peer
from werkbank_protocol import format_ts
from werkbank_protocol.messages import Ack, AuthResp, decode_as

PRINTER = "werkbank/v1/dev/pi-printer-1"
LASER = "werkbank/v1/dev/pi-laser-1"
QUINN = "04A224B2C35E80"


@pytest.fixture
def bridge(claims_lab: Database, mqtt_url: str, clock: Any) -> Iterator[Bridge]:
    running = Bridge(claims_lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock).start()
    assert running.connected.is_set()
    yield running
    running.stop()


@pytest.fixture
def pi(mqtt_url: str) -> Iterator[Peer]:
    """The stolen Pi(s): a plain client that listens to both devices' answers."""
    peer = Peer(mqtt_url)
    for t in ("auth/resp", "ack"):
        peer.subscribe(f"{PRINTER}/{t}")
        peer.subscribe(f"{LASER}/{t}")
    yield peer
    peer.close()


def _event(etype: str, session: str, ts: Any, **fields: object) -> tuple[str, bytes]:
    eid = str(uuid.uuid4())
    body = {"v": 1, "id": eid, "ts": format_ts(ts), "type": etype, "session": session, **fields}
    return eid, json.dumps(body).encode()


def _send(pi: Peer, device: str, payload: tuple[str, bytes]) -> None:
    """Publish one event and wait for its ack (refused-for-good events are acked too)."""
    eid, body = payload
    pi.publish(f"{device}/event", body)
    assert decode_as(Ack, pi.next(f"{device}/ack")).ids == [eid]


def _tap(pi: Peer, device: str, badge: str, **extra: object) -> AuthResp:
    rid = str(uuid.uuid4())
    body = {"v": 1, "id": rid, "ts": "2026-11-18T09:00:00.000Z", "badge": badge, **extra}
    pi.publish(f"{device}/auth/req", json.dumps(body))
    answer = decode_as(AuthResp, pi.next(f"{device}/auth/resp"))
    assert answer.req == rid
    return answer


def _granted_by(db: Database, name: str, slug: str) -> list[tuple[str, str | None]]:
    """(level, name of who granted it) of every grant in the person's history, oldest first."""
    with db.session() as s:
        person = s.scalar(select(Person).where(Person.name == name))
        competency = s.scalar(select(Competency).where(Competency.slug == slug))
        assert person and competency
        out = []
        for entry in training.history(s, person.id, competency.id):
            granter = s.get(Person, entry.granted_by_id) if entry.granted_by_id else None
            out.append((entry.level.value, granter.name if granter else None))
        return list(reversed(out))


def _supervised_hours(db: Database, name: str, slug: str) -> float:
    with db.session() as s:
        person = s.scalar(select(Person).where(Person.name == name))
        competency = s.scalar(select(Competency).where(Competency.slug == slug))
        assert person and competency
        return training.supervised_hours(s, person.id, competency.id)


def test_claims_offline_supervised_session_grants_nothing_but_waits_for_a_trainer(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    """Finding 1: printer-1 reported an offline supervised session of Bea "with" Lara (who trains
    the laser only), ten hours long; Bea was granted printing at level supervised in Lara's name
    without any decision of the server."""
    before = _granted_by(claims_lab, "Bea Briefed", "fdm-printing")
    session = str(uuid.uuid4())
    start = clock() - timedelta(hours=10)
    _send(
        pi,
        PRINTER,
        _event(
            "session_started",
            session,
            start,
            badge=BEA,
            mode="supervise",
            offline=True,
            trainer_badge=LARA,
        ),
    )
    _send(pi, PRINTER, _event("session_ended", session, clock(), reason="tap_out", unlocked_s=36000))

    assert _granted_by(claims_lab, "Bea Briefed", "fdm-printing") == before, "nothing granted"
    assert _supervised_hours(claims_lab, "Bea Briefed", "fdm-printing") == 0
    with claims_lab.session() as s:
        row = s.get(MachineSession, session)
        assert row is not None
        # Hours of use, on the device's word; the claim waits for a trainer of printers.
        assert (row.mode, row.trainer_id, row.unlocked_s, row.offline) == ("use", None, 36000, True)
        assert row.review == SessionReview.PENDING and row.claimed_mode == "supervise"
        assert row.claimed_trainer is not None and row.claimed_trainer.name == "Lara Lasertrainer"


def test_claims_offline_session_without_trainer_grants_nobody_of_another_site(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    """Finding 1, second form: no trainer badge at all, a person of another site; the old code
    granted Otto printing at level supervised with nobody's name on it."""
    session = str(uuid.uuid4())
    _send(
        pi,
        PRINTER,
        _event(
            "session_started",
            session,
            clock() - timedelta(hours=1),
            badge=OTTO,
            mode="supervise",
            offline=True,
        ),
    )
    _send(pi, PRINTER, _event("session_ended", session, clock(), reason="tap_out", unlocked_s=3600))
    assert _granted_by(claims_lab, "Otto Outside", "fdm-printing") == [("briefed", None)]
    assert _supervised_hours(claims_lab, "Otto Outside", "fdm-printing") == 0


def test_claims_decided_supervision_counts_in_the_decided_trainers_name(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    """Tina supervises Bea at the printer (the server decides it); the device then names Lara
    and a use session. The server's decision stands: the level is granted in Tina's name."""
    answer = _tap(pi, PRINTER, BEA, mode="supervise", trainer_badge=TINA)
    assert (answer.decision, answer.reason) == ("allow", "ok")
    assert answer.session is not None
    overruled = bridge.rejected["claim_mismatch"]
    _send(
        pi,
        PRINTER,
        _event("session_started", answer.session, clock(), badge=BEA, mode="use", trainer_badge=LARA),
    )
    clock.advance(seconds=20)
    _send(pi, PRINTER, _event("session_ended", answer.session, clock(), reason="tap_out", unlocked_s=20))
    assert bridge.rejected["claim_mismatch"] == overruled + 1
    assert _granted_by(claims_lab, "Bea Briefed", "fdm-printing")[-1] == ("supervised", "Tina Trainer")
    with claims_lab.session() as s:
        row = s.get(MachineSession, answer.session)
        assert row is not None and row.trainer is not None
        assert (row.mode, row.trainer.name, row.offline, row.review) == (
            "supervise",
            "Tina Trainer",
            False,
            None,
        )


def test_claims_a_use_session_cannot_become_supervised_on_the_devices_word(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    answer = _tap(pi, PRINTER, QUINN)
    assert answer.decision == "allow" and answer.session is not None
    _send(
        pi,
        PRINTER,
        _event("session_started", answer.session, clock(), badge=QUINN, mode="supervise", trainer_badge=TINA),
    )
    clock.advance(minutes=30)
    _send(pi, PRINTER, _event("session_ended", answer.session, clock(), reason="tap_out", unlocked_s=1800))
    assert bridge.rejected["claim_mismatch"] == 1
    assert _supervised_hours(claims_lab, "Quinn Qualified", "fdm-printing") == 0
    with claims_lab.session() as s:
        row = s.get(MachineSession, answer.session)
        assert row is not None and (row.mode, row.trainer_id, row.review) == ("use", None, None)


def test_claims_one_device_cannot_rewrite_another_devices_job(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    """Finding 2: the laser's device sent job_finished for printer-1's job under a fresh session
    of its own; the job went from completed / 3000 s to failed / 99999 s / 123456 g."""
    session, job = str(uuid.uuid4()), str(uuid.uuid4())
    start = clock() - timedelta(hours=1)
    _send(pi, PRINTER, _event("session_started", session, start, badge=QUINN, offline=True))
    _send(pi, PRINTER, _event("job_started", session, start, job=job, kind="print", file="cube.gcode"))
    _send(
        pi,
        PRINTER,
        _event(
            "job_finished", session, clock(), job=job, status="completed", duration_s=3000, filament_g=12.5
        ),
    )
    fresh = str(uuid.uuid4())
    _send(pi, LASER, _event("session_started", fresh, start, badge=QUINN, offline=True))
    _send(
        pi,
        LASER,
        _event("job_finished", fresh, clock(), job=job, status="failed", duration_s=99999, filament_g=123456),
    )
    assert bridge.rejected["foreign_job"] == 1
    with claims_lab.session() as s:
        stored = s.get(Job, job)
        assert stored is not None
        assert (stored.session_id, stored.status, stored.duration_s, stored.filament_g) == (
            session,
            "completed",
            3000,
            12.5,
        )


def test_claims_implausible_hours_are_acknowledged_refused_and_not_stored(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    """Finding 5: unlocked_s = 1e300 was stored, and the live page showed an 80-digit label. It is
    refused for good: acknowledged (so the agent stops re-sending it), counted, not stored."""
    session = str(uuid.uuid4())
    _send(
        pi,
        PRINTER,
        _event("session_started", session, clock() - timedelta(hours=1), badge=QUINN, offline=True),
    )
    _send(pi, PRINTER, _event("session_ended", session, clock(), reason="tap_out", unlocked_s=1e300))
    assert bridge.rejected["implausible_value"] == 1
    with claims_lab.session() as s:
        row = s.get(MachineSession, session)
        assert row is not None and (row.ended_at, row.unlocked_s) == (None, None)
        assert s.scalar(select(func.count()).select_from(StoredEvent)) == 1


def test_claims_a_fault_flood_fills_no_database(
    bridge: Bridge, pi: Peer, claims_lab: Database, clock: Any
) -> None:
    """Finding 5: 10,000 faults in 38 s were all stored. Now the same code repeated is counted on
    one row, and beyond the device's rate the rest is refused (not acknowledged: a true agent
    sends it again later)."""

    def fault(code: str) -> tuple[str, str]:
        eid = str(uuid.uuid4())
        return eid, json.dumps({"v": 1, "id": eid, "ts": format_ts(clock()), "type": "fault", "code": code})

    same = [fault("reader_failed") for _ in range(300)]
    for _eid, body in same:
        pi.publish(f"{PRINTER}/event", body)
    acked: set[str] = set()
    while len(acked) < len(same):
        # A generous wait: this is about what is stored, not how fast (CI machines are shared).
        acked.update(decode_as(Ack, pi.next(f"{PRINTER}/ack", timeout=30)).ids)
    assert acked == {eid for eid, _ in same}
    for _eid, body in [fault(f"made-up-{n}") for n in range(UNCHECKED_MAX + 50)]:
        pi.publish(f"{PRINTER}/event", body)
    assert wait_until(lambda: bridge.rejected["rate_limited"] == 51, timeout=60), dict(bridge.rejected)
    with claims_lab.session() as s:
        rows = s.scalars(select(StoredEvent)).all()
        assert len(rows) == UNCHECKED_MAX
        repeated = next(r for r in rows if r.payload["code"] == "reader_failed")
        assert repeated.repeats == 299


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_claims_deeply_nested_json_is_invalid_not_a_crash(
    bridge: Bridge, pi: Peer, claims_lab: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """Finding 4: JSON nested 100,000 deep was counted as `internal` with a RecursionError
    traceback. It is `invalid`: counted and logged as a refusal, no traceback."""
    nested = _deep(5000)  # 10 KB: under the size limit, far over any recursion limit
    tap = f'{{"v":1,"id":"{uuid.uuid4()}","ts":"2026-11-18T09:00:00Z","badge":"{QUINN}","x":{nested}}}'
    event = f'{{"v":1,"id":"{uuid.uuid4()}","ts":"2026-11-18T09:00:00Z","type":"fault","code":{nested}}}'
    with caplog.at_level(logging.WARNING, logger="server.adapters.bridge"):
        pi.publish(f"{PRINTER}/auth/req", tap)
        pi.publish(f"{PRINTER}/event", event)
        pi.publish(f"{PRINTER}/status", _deep(5000))
        assert wait_until(lambda: bridge.rejected["invalid"] == 3), dict(bridge.rejected)
    assert bridge.rejected["internal"] == 0
    assert not [r for r in caplog.records if r.exc_info], "no traceback for bad input"
    assert pi.drain(f"{PRINTER}/ack") == []
    assert _tap(pi, PRINTER, QUINN).decision == "allow", "and the bridge still answers"


def test_claims_an_oversized_tap_is_refused_unread(bridge: Bridge, pi: Peer, claims_lab: Database) -> None:
    """Finding 4: a 50 MB auth/req was parsed in full (the bridge grew to 306 MB) before it was
    refused. Now anything over the limit is refused before it is read: no answer, counted."""
    rid = str(uuid.uuid4())
    pad = ",".join(["0"] * 400_000)  # 800 KB of JSON: a real document, so the old code parsed it
    big = f'{{"v":1,"id":"{rid}","ts":"2026-11-18T09:00:00Z","badge":"{QUINN}","pad":[{pad}]}}'
    pi.publish(f"{PRINTER}/auth/req", big)
    assert wait_until(lambda: bridge.rejected["too_large"] == 1), dict(bridge.rejected)
    answer = _tap(pi, PRINTER, QUINN)  # the next tap's answer is the first to come
    assert answer.decision == "allow"
    assert pi.drain(f"{PRINTER}/auth/resp") == []


def test_claims_oversized_payload_costs_no_memory(claims_lab: Database) -> None:
    """The size check comes before any parsing: handling an 8 MB tap allocates next to nothing."""
    bridge = Bridge(claims_lab, "mqtt://127.0.0.1:9")  # never connected: answers go nowhere
    pad = ",".join(["0"] * 4_000_000)
    message = mqtt.MQTTMessage(topic=f"{PRINTER}/auth/req".encode())
    body = f'{{"v":1,"id":"{uuid.uuid4()}","ts":"2026-11-18T09:00:00Z","badge":"{QUINN}","pad":[{pad}]}}'
    message.payload = body.encode()
    tracemalloc.start()
    try:
        bridge._on_message(bridge.client, None, message)
        _size, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert bridge.rejected["too_large"] == 1
    assert peak < 1_000_000, f"handling the refused payload allocated {peak} bytes"
