"""The training service: steps, computed progress, grants, renewals, revocations, expiry."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db import Database
from server.models import (
    AuditLog,
    Competency,
    Level,
    Machine,
    MachineSession,
    MachineType,
    Person,
    QualificationAction,
    Requirement,
    StepKind,
    TrainingStep,
)
from server.services import qualifications, training
from server.services.training import TrainingError, add_months

NOW = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
TODAY = date(2026, 11, 18)


@pytest.fixture
def s(lab: Database) -> Iterator[Session]:
    """A session on the test lab with a laser-cutting competency that has three steps."""
    with lab.session() as session:
        safety = _competency(session, "laser-safety")
        cutting = Competency(
            slug="laser-cutting", name="Laser cutting", validity_months=12, prerequisite=safety
        )
        cutting.steps = [
            TrainingStep(position=0, kind=StepKind.BRIEFING, name="Machine briefing", leads_to=Level.BRIEFED),
            TrainingStep(
                position=1,
                kind=StepKind.SUPERVISED_HOURS,
                name="Supervised cutting",
                leads_to=Level.SUPERVISED,
                hours=2.0,
            ),
            TrainingStep(
                position=2, kind=StepKind.SIGNOFF, name="Practical sign-off", leads_to=Level.INDEPENDENT
            ),
        ]
        session.add(cutting)
        laser_type = session.scalar(select(MachineType).where(MachineType.slug == "co2-laser"))
        assert laser_type is not None
        session.add(Requirement(machine_type=laser_type, competency=cutting, min_level=Level.INDEPENDENT))
        session.commit()
        yield session


def _competency(s: Session, slug: str) -> Competency:
    found = s.scalar(select(Competency).where(Competency.slug == slug))
    assert found is not None
    return found


def _person(s: Session, name: str) -> Person:
    found = s.scalar(select(Person).where(Person.name == name))
    assert found is not None
    return found


def _step(s: Session, kind: StepKind) -> TrainingStep:
    found = s.scalar(
        select(TrainingStep)
        .join(Competency)
        .where(Competency.slug == "laser-cutting", TrainingStep.kind == kind)
    )
    assert found is not None
    return found


def _supervised_session(
    s: Session, person: Person, trainer: Person, hours: float, start: datetime
) -> MachineSession:
    laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
    assert laser is not None
    row = MachineSession(
        id=str(uuid.uuid4()),
        machine_id=laser.id,
        device_id="pi-laser-1",
        person_id=person.id,
        trainer_id=trainer.id,
        mode="supervise",
        started_at=start,
        ended_at=start + timedelta(hours=hours),
        end_reason="tap_out",
        unlocked_s=hours * 3600,
    )
    s.add(row)
    s.flush()
    return row


def test_training_new_participant_to_independent_through_steps_and_supervised_hours(s: Session) -> None:
    tina, quinn = _person(s, "Tina Trainer"), _person(s, "Quinn Qualified")
    cutting = _competency(s, "laser-cutting")

    start = training.progress(s, quinn.id, cutting, TODAY)
    assert start.level is None and start.next_level == Level.BRIEFED
    assert start.next_step is not None and start.next_step.step.name == "Machine briefing"
    assert start.percent == 0

    _record, granted = training.record_step(s, quinn, _step(s, StepKind.BRIEFING), tina, NOW, TODAY)
    assert granted is not None and granted.level == Level.BRIEFED
    assert granted.valid_until == date(2027, 11, 18) and granted.granted_by_id == tina.id

    after_briefing = training.progress(s, quinn.id, cutting, TODAY)
    assert after_briefing.next_level == Level.SUPERVISED
    assert after_briefing.steps[0].hours_done == 0 and after_briefing.steps[0].hours_needed == 2.0

    # 1.5 of 2 supervised hours: progress counts by the hour, no level yet.
    _supervised_session(s, quinn, tina, 1.5, NOW)
    half = training.progress(s, quinn.id, cutting, TODAY)
    assert half.percent == 75 and not half.ready
    assert training.advance_after_session(s, s.scalars(select(MachineSession)).one(), NOW, TODAY) == []

    done = _supervised_session(s, quinn, tina, 0.5, NOW + timedelta(hours=2))
    granted_now = training.advance_after_session(s, done, NOW, TODAY)
    assert [(g.level, g.granted_by_id) for g in granted_now] == [(Level.SUPERVISED, tina.id)]

    _record, independent = training.record_step(s, quinn, _step(s, StepKind.SIGNOFF), tina, NOW, TODAY)
    assert independent is not None and independent.level == Level.INDEPENDENT
    final = training.progress(s, quinn.id, cutting, TODAY)
    assert final.level == Level.INDEPENDENT and final.next_level is None and final.percent == 100
    actions = [a for (a,) in s.execute(select(AuditLog.action).order_by(AuditLog.id))]
    assert actions.count("training.step") == 2 and actions.count("qualification.granted") == 3


def test_training_signoff_refused_until_supervised_hours_are_done(s: Session) -> None:
    tina, quinn = _person(s, "Tina Trainer"), _person(s, "Quinn Qualified")
    training.record_step(s, quinn, _step(s, StepKind.BRIEFING), tina, NOW, TODAY)
    _supervised_session(s, quinn, tina, 0.5, NOW)
    with pytest.raises(TrainingError) as refused:
        training.record_step(s, quinn, _step(s, StepKind.SIGNOFF), tina, NOW, TODAY)
    # The sign-off leads to "independent", which is beyond the next level (supervised).
    assert refused.value.code == "out_of_order"


def test_training_only_trainers_of_that_competency_may_record_steps(s: Session) -> None:
    quinn, sam = _person(s, "Quinn Qualified"), _person(s, "Sam Supervised")
    sam.is_trainer = True  # a trainer by role, but holds laser-cutting at no level
    with pytest.raises(TrainingError) as refused:
        training.record_step(s, quinn, _step(s, StepKind.BRIEFING), sam, NOW, TODAY)
    assert refused.value.code == "not_a_trainer"
    assert "Laser cutting" in str(refused.value)


def test_training_prerequisite_is_needed_first(s: Session) -> None:
    tina, uma = _person(s, "Tina Trainer"), _person(s, "Uma Unqualified")
    with pytest.raises(TrainingError) as refused:
        training.record_step(s, uma, _step(s, StepKind.BRIEFING), tina, NOW, TODAY)
    assert refused.value.code == "prerequisite_missing"
    assert (
        training.progress(s, uma.id, _competency(s, "laser-cutting"), TODAY).prerequisite_missing is not None
    )


def test_training_supervised_hours_cannot_be_typed_in(s: Session) -> None:
    tina, quinn = _person(s, "Tina Trainer"), _person(s, "Quinn Qualified")
    with pytest.raises(TrainingError) as refused:
        training.record_step(s, quinn, _step(s, StepKind.SUPERVISED_HOURS), tina, NOW, TODAY)
    assert refused.value.code == "hours_are_counted"


def test_training_revoke_needs_a_reason_and_resets_progress(s: Session) -> None:
    tina, quinn = _person(s, "Tina Trainer"), _person(s, "Quinn Qualified")
    cutting = _competency(s, "laser-cutting")
    training.record_step(s, quinn, _step(s, StepKind.BRIEFING), tina, NOW, TODAY)
    with pytest.raises(TrainingError) as refused:
        training.revoke(s, quinn, cutting, tina, "  ", NOW, TODAY)
    assert refused.value.code == "reason_required"

    later = NOW + timedelta(days=1)
    entry = training.revoke(s, quinn, cutting, tina, "Ignored the extraction fan", later, TODAY)
    assert entry.action == QualificationAction.REVOKED
    after = training.progress(s, quinn.id, cutting, TODAY)
    # Revoked: back to the start, and the old briefing no longer counts.
    assert after.level is None and after.next_level == Level.BRIEFED and not after.steps[0].done
    with pytest.raises(TrainingError):
        training.renew(s, quinn, cutting, tina, "", later, TODAY)


def test_training_renew_extends_from_today_at_the_same_level(s: Session) -> None:
    tina, eddie = _person(s, "Tina Trainer"), _person(s, "Eddie Expired")
    safety = _competency(s, "laser-safety")
    entry = training.renew(s, eddie, safety, tina, "Refresher done", NOW, TODAY)
    assert entry.action == QualificationAction.RENEWED
    assert entry.level == Level.INDEPENDENT and entry.valid_until == date(2027, 11, 18)
    state = qualifications.state_of(qualifications.newest(s, eddie.id, safety.id), TODAY)
    assert state is not None and state.usable


def test_training_only_admins_grant_trainer_level(s: Session) -> None:
    tina, quinn = _person(s, "Tina Trainer"), _person(s, "Quinn Qualified")
    tina.is_admin = False
    safety = _competency(s, "laser-safety")
    with pytest.raises(TrainingError) as refused:
        training.grant(s, quinn, safety, Level.TRAINER, tina, "She is great", NOW, TODAY)
    assert refused.value.code == "admin_only"
    tina.is_admin = True
    training.grant(s, quinn, safety, Level.TRAINER, tina, "Trainer course passed", NOW, TODAY)
    assert quinn.is_trainer


def test_training_expire_due_appends_once(s: Session) -> None:
    eddie = _person(s, "Eddie Expired")
    first = training.expire_due(s, NOW, TODAY)
    assert [(e.person_id, e.action) for e in first] == [(eddie.id, QualificationAction.EXPIRED)]
    assert training.expire_due(s, NOW, TODAY) == []


@pytest.mark.parametrize(
    ("day", "months", "expected"),
    [
        (date(2026, 1, 31), 1, date(2026, 2, 28)),
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2026, 11, 18), 12, date(2027, 11, 18)),
        (date(2026, 12, 15), 1, date(2027, 1, 15)),
    ],
)
def test_training_add_months_clamps_to_month_end(day: date, months: int, expected: date) -> None:
    assert add_months(day, months) == expected
