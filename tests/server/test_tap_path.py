"""The bridge's fast tap path: the same decisions as decide(), an exact cache, batches.

bench/tap_latency.py measures it; these tests make sure the speed did not change an answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import datetime, time, timedelta

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from server.adapters.bridge import Bridge
from server.db import Database
from server.models import (
    AccessDecision,
    Badge,
    Booking,
    Device,
    Machine,
    MachineSession,
    MachineStatus,
    OpeningHours,
    Person,
    Qualification,
    QualificationAction,
)
from server.services.decision import Decider, MachineFacts, Recorded, Tap, decide
from tests.conftest import BEA, PETE, TINA
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import REASONS, AuthReq, AuthResp, decode_as

DEVICES = {"pi-printer-1": "printer-1", "pi-laser-1": "laser-1", "pi-printer-2": "printer-2"}
BADGES = [
    "04A224B2C35E80",
    "04a224b2c35e80",
    "DEADBEEF",
    "0BADCAFE",
    "CAFEF00D",
    "B10CB10C",
    "1AC71AC7",
    "5A5A5A5A",
    "A1B2C3D4",
]


def _publish_allowlists(db: Database) -> None:
    """What the bridge's publisher does to the flags: clean, and a new version."""
    with db.session() as s:
        s.execute(
            update(Machine).values(allowlist_dirty=False, allowlist_version=Machine.allowlist_version + 1)
        )


def _tap(db: Database, decider: Decider, device: str, badge: str, now: datetime, **kw: str) -> str:
    with db.engine.begin() as conn:
        [result] = decider.decide(conn, [Tap(device, badge, **kw)], now)
    assert not isinstance(result, Exception), result
    return result[1].reason


def test_batch_decisions_match_decide_for_every_rule(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    taps = [Tap(d, b) for d in DEVICES for b in BADGES]
    taps += [
        Tap(d, "DEADBEEF", "supervise", t)
        for d in DEVICES
        for t in ("A1B2C3D4", "04A224B2C35E80", "CAFEF00D")
    ]
    _publish_allowlists(lab)
    decider = Decider()
    for _ in range(2):  # cold, then from the cache
        with lab.engine.begin() as conn:
            results = decider.decide(conn, taps, clock())
        for tap, result in zip(taps, results, strict=True):
            assert not isinstance(result, Exception), result
            machine_facts, verdict = result
            with lab.session() as s:
                machine = s.scalar(select(Machine).where(Machine.slug == DEVICES[tap.device_id]))
                assert machine is not None and machine.id == machine_facts.id
                expected = decide(s, machine, tap.badge, clock(), tap.mode, tap.trainer_badge)
                assert (verdict.allowed, verdict.reason, verdict.until) == (
                    expected.allowed,
                    expected.reason,
                    expected.until,
                ), tap
                assert verdict.message == expected.message
                assert (verdict.person and verdict.person.id) == (expected.person and expected.person.id)
                assert (verdict.trainer and verdict.trainer.id) == (expected.trainer and expected.trainer.id)
    assert decider.hits > 0
    # The single-tap path (one query for machine, hours and sessions) agrees too.
    for tap in taps[:9]:
        with lab.engine.begin() as conn:
            [single] = decider.decide(conn, [tap], clock())
        assert not isinstance(single, Exception)
        assert single[1].reason == results[taps.index(tap)][1].reason  # type: ignore[index]


def test_cache_follows_a_revocation_at_once_and_after_the_allowlist_is_reissued(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    _publish_allowlists(lab)
    decider = Decider()
    assert _tap(lab, decider, "pi-laser-1", "04A224B2C35E80", clock()) == "ok"
    assert _tap(lab, decider, "pi-laser-1", "04A224B2C35E80", clock()) == "ok"
    assert decider.hits >= 1
    with lab.session() as s:  # an ORM change marks every allow-list dirty in the same transaction
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        assert quinn is not None
        laser = next(
            q
            for q in s.scalars(select(Qualification).where(Qualification.person_id == quinn.id))
            if q.competency.slug == "laser-safety"
        )
        s.add(
            Qualification(
                person_id=quinn.id,
                competency_id=laser.competency_id,
                action=QualificationAction.REVOKED,
                level=laser.level,
                reason="test",
            )
        )
    assert _tap(lab, decider, "pi-laser-1", "04A224B2C35E80", clock()) == "not_qualified"
    _publish_allowlists(lab)
    assert _tap(lab, decider, "pi-laser-1", "04A224B2C35E80", clock()) == "not_qualified"
    assert _tap(lab, decider, "pi-printer-1", "04A224B2C35E80", clock()) == "ok"


def test_machine_state_is_read_on_every_tap(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    _publish_allowlists(lab)
    decider = Decider()
    assert _tap(lab, decider, "pi-printer-1", "04A224B2C35E80", clock()) == "ok"
    with lab.engine.begin() as conn:  # even a change that bypasses the ORM hooks
        conn.execute(update(Machine).where(Machine.slug == "printer-1").values(status="maintenance"))
    assert _tap(lab, decider, "pi-printer-1", "04A224B2C35E80", clock()) == "machine_maintenance"


def test_opening_hours_and_a_new_badge_count_from_the_next_tap(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """Machine facts are remembered by what they were read from: new opening hours (even written
    past the ORM) and a badge issued on the web are there at the next tap, single or batched."""
    _publish_allowlists(lab)
    decider = Decider()
    for _ in range(2):
        assert _tap(lab, decider, "pi-printer-1", "04A224B2C35E80", clock()) == "ok"
        assert _tap(lab, decider, "pi-printer-1", "FEEDF00D", clock()) == "unknown_badge"
    with lab.engine.begin() as conn:  # printer-1's own hours: Saturdays only
        printer = conn.execute(select(Machine.id, Machine.site_id).where(Machine.slug == "printer-1")).one()
        conn.execute(
            insert(OpeningHours).values(
                site_id=printer.site_id, machine_id=printer.id, weekday=5, opens=time(10), closes=time(16)
            )
        )
    assert _tap(lab, decider, "pi-printer-1", "04A224B2C35E80", clock()) == "outside_opening_hours"
    assert _tap(lab, decider, "pi-laser-1", "04A224B2C35E80", clock()) == "ok"  # the site's hours
    with lab.session() as s:  # Quinn gets a second badge on the web
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        assert quinn is not None
        s.add(Badge(uid="FEEDF00D", person_id=quinn.id))
    with lab.engine.begin() as conn:
        results = decider.decide(
            conn, [Tap("pi-laser-1", "FEEDF00D"), Tap("pi-printer-1", "FEEDF00D")], clock()
        )
    assert [r[1].reason for r in results] == ["ok", "outside_opening_hours"]  # type: ignore[index]


def test_open_sessions_at_the_tapping_device_do_not_count_single_or_batched(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """Two sessions of Quinn's at printer-1 still open (their ends on their way, docs/faults.md):
    a tap there is no third session, since the agent asks only when it runs none. At the laser
    they count. The same on the single-tap query and the batch's."""
    with lab.session() as s:
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert quinn and printer
        for i in range(2):
            s.add(
                MachineSession(
                    id=f"00000000-0000-4000-8000-00000000003{i}",
                    machine_id=printer.id,
                    device_id="pi-printer-1",
                    person_id=quinn.id,
                    started_at=clock() - timedelta(seconds=10 - 3 * i),
                )
            )
    _publish_allowlists(lab)
    decider = Decider()
    for _ in range(2):  # cold, then with Quinn's badge in memory
        assert _tap(lab, decider, "pi-printer-1", "04A224B2C35E80", clock()) == "ok"
        assert _tap(lab, decider, "pi-laser-1", "04A224B2C35E80", clock()) == "session_limit"
    with lab.engine.begin() as conn:
        results = decider.decide(
            conn, [Tap("pi-printer-1", "04A224B2C35E80"), Tap("pi-laser-1", "04A224B2C35E80")], clock()
        )
    assert [r[1].reason for r in results] == ["ok", "session_limit"]  # type: ignore[index]


def test_a_mixed_batch_gives_every_reason_as_decide_does(trainer_lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """One batch with a tap for every reason a decision can give (all but ``bad_request``, which
    no rule gives), a supervised tap, an unknown device and a request answered before: each
    verdict is decide()'s, cold and again from memory."""
    quinn = "04A224B2C35E80"
    now = clock()
    recorded_id = str(uuid.uuid4())
    with trainer_lab.session() as s:
        people = {p.name.split()[0]: p for p in s.scalars(select(Person))}
        printer, laser = (
            s.scalar(select(Machine).where(Machine.slug == slug)) for slug in ("printer-1", "laser-1")
        )
        assert printer is not None and laser is not None
        # The laser is Quinn's for the next hour: Pete is refused, Quinn's session ends with it.
        s.add(
            Booking(
                machine_id=laser.id,
                person_id=people["Quinn"].id,
                starts_at=now - timedelta(minutes=5),
                ends_at=now + timedelta(minutes=55),
            )
        )
        laser.booking_seq += 1
        # Tina runs two sessions at printer-1: at the laser she is at her limit.
        for i in range(2):
            s.add(
                MachineSession(
                    id=str(uuid.uuid4()),
                    machine_id=printer.id,
                    device_id="pi-printer-1",
                    person_id=people["Tina"].id,
                    started_at=now - timedelta(minutes=10 + i),
                )
            )
        # Printer 3 keeps hours of its own: Saturdays only.
        closed = Machine(
            slug="printer-3",
            name="Printer 3",
            site_id=printer.site_id,
            machine_type_id=printer.machine_type_id,
        )
        s.add(closed)
        s.flush()
        s.add(Device(id="pi-printer-3", machine_id=closed.id))
        s.add(
            OpeningHours(
                site_id=printer.site_id, machine_id=closed.id, weekday=5, opens=time(10), closes=time(16)
            )
        )
        s.add(
            AccessDecision(
                id=recorded_id,
                device_id="pi-printer-1",
                badge_uid=quinn,
                decision="deny",
                reason="not_qualified",
                decided_at=now,
                response={
                    "req": recorded_id,
                    "decision": "deny",
                    "reason": "not_qualified",
                    "message": {"en": "no"},
                },
            )
        )
    _publish_allowlists(trainer_lab)
    expected = [
        (Tap("pi-printer-1", quinn), "ok"),
        (Tap("pi-laser-1", quinn), "ok"),  # until the booking ends
        (Tap("pi-printer-1", "CAFEF00D"), "unknown_badge"),
        (Tap("pi-printer-1", quinn, card_auth="failed"), "badge_not_genuine"),
        (Tap("pi-printer-1", "B10CB10C"), "badge_blocked"),
        (Tap("pi-printer-1", "1AC71AC7"), "person_inactive"),
        (Tap("pi-printer-2", quinn), "machine_maintenance"),
        (Tap("pi-printer-3", quinn), "outside_opening_hours"),
        (Tap("pi-printer-1", "DEADBEEF"), "not_qualified"),
        (Tap("pi-laser-1", "0BADCAFE"), "qualification_expired"),
        (Tap("pi-laser-1", "5A5A5A5A"), "trainer_required"),
        (Tap("pi-laser-1", PETE), "booked_by_other"),
        (Tap("pi-laser-1", TINA), "session_limit"),
        (Tap("pi-printer-1", BEA, "supervise", TINA), "ok"),
        (Tap("pi-printer-1", BEA, "supervise", "DEADBEEF"), "trainer_required"),
        (Tap("pi-printer-1", BEA, "supervise", "ffffffff"), "trainer_required"),  # nobody's badge
        (Tap("pi-laser-1", quinn.lower()), "ok"),  # the same badge again, in lower case
    ]
    assert {reason for _t, reason in expected} == set(REASONS) - {"bad_request"}
    taps = [tap for tap, _r in expected]
    taps += [Tap("pi-unknown-9", quinn), Tap("pi-laser-1", "DEADBEEF", request_id=recorded_id)]
    decider = Decider()
    for _ in range(2):  # cold, then from memory
        with trainer_lab.engine.begin() as conn:
            results = decider.decide(conn, taps, now)
        unknown, recorded = results[-2:]
        assert isinstance(unknown, ProtocolError) and unknown.code == "unknown_device"
        assert isinstance(recorded, Recorded) and recorded.response["reason"] == "not_qualified"
        for (tap, reason), result in zip(expected, results, strict=False):
            assert not isinstance(result, (Exception, Recorded)), (tap, result)
            facts, verdict = result
            assert isinstance(facts, MachineFacts)
            with trainer_lab.session() as s:
                machine = s.get(Machine, facts.id)
                assert machine is not None and machine.device is not None
                assert machine.device.id == tap.device_id
                plain = decide(
                    s, machine, tap.badge, now, tap.mode, tap.trainer_badge, card_auth=tap.card_auth
                )
            assert (verdict.reason, plain.reason) == (reason, reason), tap
            assert (verdict.allowed, verdict.until, verdict.until_booking, verdict.trainer_here) == (
                plain.allowed,
                plain.until,
                plain.until_booking,
                plain.trainer_here,
            ), tap
            assert verdict.message == plain.message, tap
            assert (verdict.person and verdict.person.id) == (plain.person and plain.person.id), tap
            assert (verdict.trainer and verdict.trainer.id) == (plain.trainer and plain.trainer.id), tap
        assert results[1][1].until_booking  # type: ignore[index]
    assert decider.hits > 0


@pytest.fixture
def offline_bridge(lab: Database, clock) -> Iterator[tuple[Bridge, list[tuple[str, bytes]]]]:  # type: ignore[no-untyped-def]
    """A bridge that is never connected: its answers are collected instead of published."""
    bridge = Bridge(lab, "mqtt://127.0.0.1:1", client_id="offline-bridge", clock=clock)
    sent: list[tuple[str, bytes]] = []
    bridge.publish = lambda device_id, _suffix, payload: sent.append((device_id, payload))  # type: ignore[method-assign]
    yield bridge, sent
    bridge.decision_log.close()


def _req(badge: str, rid: str | None = None) -> AuthReq:
    body = {"v": 1, "id": rid or str(uuid.uuid4()), "ts": "2026-11-18T09:00:00.000Z", "badge": badge}
    return decode_as(AuthReq, json.dumps(body).encode())


def _count(lab: Database, bridge: Bridge) -> int:
    """The decision log's rows, once every row handed over is written."""
    assert bridge.wait_for_decision_log(5.0)
    with lab.session() as s:
        return s.scalar(select(func.count()).select_from(AccessDecision)) or 0


def test_a_batch_answers_duplicates_alike_and_a_bad_device_spoils_nothing(
    offline_bridge: tuple[Bridge, list[tuple[str, bytes]]], lab: Database
) -> None:
    bridge, sent = offline_bridge
    first, stranger, other = _req("04A224B2C35E80"), _req("04A224B2C35E80"), _req("DEADBEEF")
    bridge._answer_taps(
        [("pi-printer-1", first), ("pi-unknown-9", stranger), ("pi-printer-1", first), ("pi-laser-1", other)]
    )
    answers = [(d, decode_as(AuthResp, p)) for d, p in sent]
    assert [(d, a.req, a.reason) for d, a in answers] == [
        ("pi-printer-1", first.id, "ok"),
        ("pi-printer-1", first.id, "ok"),
        ("pi-laser-1", other.id, "not_qualified"),
    ]
    assert answers[0][1] == answers[1][1]
    assert bridge.rejected["unknown_device"] == 1
    assert _count(lab, bridge) == 2
    sent.clear()
    bridge._answer_taps([("pi-printer-1", first)])  # later: from the recent answers, not decided again
    assert decode_as(AuthResp, sent[0][1]) == answers[0][1]
    assert _count(lab, bridge) == 2


def test_a_request_recorded_elsewhere_gets_the_stored_answer(
    offline_bridge: tuple[Bridge, list[tuple[str, bytes]]], lab: Database, clock
) -> None:  # type: ignore[no-untyped-def]
    bridge, sent = offline_bridge
    rid = str(uuid.uuid4())
    stored = {
        "req": rid,
        "decision": "deny",
        "reason": "not_qualified",
        "message": {"de": "nein", "en": "no"},
    }
    with lab.session() as s:  # another bridge (or this one before a restart) answered it
        s.add(
            AccessDecision(
                id=rid,
                device_id="pi-printer-1",
                badge_uid="04A224B2C35E80",
                decision="deny",
                reason="not_qualified",
                decided_at=clock(),
                response=stored,
            )
        )
    fresh = _req("DEADBEEF")
    bridge._answer_taps([("pi-printer-1", _req("04A224B2C35E80", rid)), ("pi-laser-1", fresh)])
    answers = {decode_as(AuthResp, p).req: decode_as(AuthResp, p) for _d, p in sent}
    assert (answers[rid].reason, answers[rid].message) == ("not_qualified", {"de": "nein", "en": "no"})
    assert answers[fresh.id].reason == "not_qualified"
    assert _count(lab, bridge) == 2


def test_a_database_error_on_the_tap_statement_is_an_sqlalchemy_error(lab: Database, clock) -> None:  # type: ignore[no-untyped-def]
    """A lost database connection under the tap's statement (on PostgreSQL it runs on psycopg's
    cursor directly, on SQLite through Core) raises SQLAlchemy's error, which the bridge catches
    (no answer, the agent decides offline, the connection is replaced)."""
    decider = Decider()
    with lab.engine.connect() as conn:
        [result] = decider.decide(conn, [Tap("pi-printer-1", "04A224B2C35E80")], clock())
        assert not isinstance(result, (Exception, Recorded)) and result[0].status == MachineStatus.AVAILABLE
        conn.connection.driver_connection.close()  # type: ignore[union-attr]
        with pytest.raises(SQLAlchemyError):
            decider.decide(
                conn, [Tap("pi-printer-1", "04A224B2C35E80"), Tap("pi-laser-1", "DEADBEEF")], clock()
            )
        conn.invalidate()
