"""The decision, rule by rule, with a hand-moved clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from server.db import Database
from server.models import Machine, MachineSession, Person, Qualification, QualificationAction
from server.services.decision import decide


def _decide(db: Database, machine: str, uid: str, now: datetime, **kw: object):  # type: ignore[no-untyped-def]
    with db.session() as s:
        m = s.scalar(select(Machine).where(Machine.slug == machine))
        assert m is not None
        return decide(s, m, uid, now, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("machine", "uid", "reason"),
    [
        ("printer-1", "04A224B2C35E80", "ok"),
        ("laser-1", "04A224B2C35E80", "ok"),
        ("printer-1", "DEADBEEF", "not_qualified"),
        ("laser-1", "0BADCAFE", "qualification_expired"),
        ("printer-1", "CAFEF00D", "unknown_badge"),
        ("printer-1", "B10CB10C", "badge_blocked"),
        ("printer-1", "1AC71AC7", "person_inactive"),
        ("printer-2", "04A224B2C35E80", "machine_maintenance"),
        ("laser-1", "5A5A5A5A", "trainer_required"),
    ],
)
def test_decision_reason_per_rule(lab: Database, clock, machine: str, uid: str, reason: str) -> None:
    decision = _decide(lab, machine, uid, clock())
    assert decision.reason == reason
    assert decision.allowed is (reason == "ok")
    assert decision.message["de"] and decision.message["en"]
    assert decision.message["de"] != decision.message["en"]
    if decision.allowed:
        assert decision.session_id and decision.until


def test_decision_expired_message_names_competency_and_date(lab: Database, clock) -> None:
    decision = _decide(lab, "laser-1", "0BADCAFE", clock())
    assert "Laser safety briefing" in decision.message["en"]
    assert "3 March 2026" in decision.message["en"]
    assert "Laser-Sicherheitsunterweisung" in decision.message["de"]
    assert "3. März 2026" in decision.message["de"]
    assert "renew" in decision.message["en"]


def test_decision_qualification_valid_through_its_last_day(lab: Database, clock) -> None:
    # Eddie's briefing is valid until 2026-03-03 inclusive (Berlin time).
    last_day = datetime(2026, 3, 3, 18, 30, tzinfo=UTC)  # Tuesday 19:30 in Berlin
    assert _decide(lab, "laser-1", "0BADCAFE", last_day).reason == "ok"
    next_morning = datetime(2026, 3, 4, 7, 30, tzinfo=UTC)  # Wednesday 08:30 in Berlin
    assert _decide(lab, "laser-1", "0BADCAFE", next_morning).reason == "qualification_expired"


def test_decision_revoked_qualification_is_not_qualified(lab: Database, clock) -> None:
    with lab.session() as s:
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        assert quinn is not None
        latest = s.scalars(
            select(Qualification).where(Qualification.person_id == quinn.id).order_by(Qualification.id.desc())
        ).first()
        assert latest is not None
        slug = latest.competency.slug
        s.add(
            Qualification(
                person_id=quinn.id,
                competency_id=latest.competency_id,
                action=QualificationAction.REVOKED,
                level=latest.level,
                reason="unsafe use",
            )
        )
    machine = "laser-1" if slug == "laser-safety" else "printer-1"
    assert _decide(lab, machine, "04A224B2C35E80", clock()).reason == "not_qualified"


def test_decision_outside_opening_hours_says_when_it_opens(lab: Database) -> None:
    saturday = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    decision = _decide(lab, "printer-1", "04A224B2C35E80", saturday)
    assert decision.reason == "outside_opening_hours"
    assert "08:00" in decision.message["en"]
    evening = datetime(2026, 11, 18, 19, 30, tzinfo=UTC)  # 20:30 in Berlin
    assert _decide(lab, "printer-1", "04A224B2C35E80", evening).reason == "outside_opening_hours"


def test_decision_until_capped_at_closing_time(lab: Database) -> None:
    late = datetime(2026, 11, 18, 17, 0, tzinfo=UTC)  # 18:00 in Berlin, closes at 20:00
    decision = _decide(lab, "printer-1", "04A224B2C35E80", late)
    assert decision.until == datetime(2026, 11, 18, 19, 0, tzinfo=UTC)
    early = datetime(2026, 11, 18, 8, 0, tzinfo=UTC)
    assert _decide(lab, "laser-1", "04A224B2C35E80", early).until == early + timedelta(minutes=120)


def test_decision_session_limit(lab: Database, clock) -> None:
    with lab.session() as s:
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        machine = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert quinn and machine
        for i in range(2):
            s.add(
                MachineSession(
                    id=f"00000000-0000-4000-8000-00000000000{i}",
                    machine_id=machine.id,
                    device_id="pi-printer-1",
                    person_id=quinn.id,
                    started_at=clock() - timedelta(minutes=10),
                )
            )
    decision = _decide(lab, "laser-1", "04A224B2C35E80", clock(), max_open_sessions=2)
    assert decision.reason == "session_limit"
    # A session whose end was never reported stops counting after a day.
    assert _decide(lab, "laser-1", "04A224B2C35E80", clock() + timedelta(days=2)).reason == "ok"


def test_decision_supervise_lets_a_trainer_take_responsibility(lab: Database, clock) -> None:
    assert _decide(lab, "laser-1", "DEADBEEF", clock()).reason == "not_qualified"
    supervised = _decide(lab, "laser-1", "DEADBEEF", clock(), mode="supervise", trainer_badge="A1B2C3D4")
    assert supervised.allowed and supervised.trainer is not None
    not_a_trainer = _decide(
        lab, "laser-1", "DEADBEEF", clock(), mode="supervise", trainer_badge="04A224B2C35E80"
    )
    assert not_a_trainer.reason == "trainer_required"


def test_decision_lowercase_uid_is_the_same_badge(lab: Database, clock) -> None:
    assert _decide(lab, "printer-1", "04a224b2c35e80", clock()).reason == "ok"


def test_decision_message_uses_first_name(lab: Database, clock) -> None:
    decision = _decide(lab, "printer-1", "04A224B2C35E80", clock())
    assert decision.message["en"].startswith("Hello Quinn")
