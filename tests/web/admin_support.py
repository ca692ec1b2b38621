"""Helpers for the admin page tests: a seeded lab with competencies, steps and badges; ids by name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from server.extensions import db
from server.models import (
    AuditLog,
    Badge,
    BadgeStatus,
    Competency,
    Level,
    MachineType,
    Person,
    Requirement,
    TrainingStep,
)

ADA_BADGE = "04A224B2C35E80"
BOB_BADGE = "DEADBEEF"


def seed_training(lab_site_id: int) -> dict[str, int]:
    """Competencies (laser needs safety first), steps, requirements and two badges on the seeded lab."""
    with db.session() as s:
        safety = Competency(
            slug="laser-safety", name="Laser safety", name_de="Lasersicherheit", validity_months=12
        )
        s.add(safety)
        s.flush()
        laser = Competency(slug="laser", name="Laser cutting", prerequisite_id=safety.id)
        fdm = Competency(slug="fdm", name="3D printing")
        s.add_all([laser, fdm])
        s.flush()
        s.add_all(
            [
                TrainingStep(
                    competency_id=fdm.id, position=0, kind="briefing", name="Intro", leads_to=Level.BRIEFED
                ),
                TrainingStep(
                    competency_id=fdm.id,
                    position=1,
                    kind="supervised_hours",
                    name="Practice",
                    leads_to=Level.SUPERVISED,
                    hours=2.0,
                ),
                TrainingStep(
                    competency_id=fdm.id,
                    position=2,
                    kind="signoff",
                    name="Sign-off",
                    leads_to=Level.INDEPENDENT,
                ),
            ]
        )
        laser_type = s.scalar(select(MachineType).where(MachineType.slug == "laser"))
        assert laser_type is not None
        s.add(Requirement(machine_type_id=laser_type.id, competency_id=laser.id, min_level=Level.INDEPENDENT))
        ada = person_by_email(s, "ada@lab.test")
        bob = person_by_email(s, "bob@lab.test")
        s.add_all(
            [
                Badge(uid=ADA_BADGE, person_id=ada.id, status=BadgeStatus.ACTIVE),
                Badge(uid=BOB_BADGE, person_id=bob.id, status=BadgeStatus.ACTIVE),
            ]
        )
        s.flush()
        return {"safety": safety.id, "laser": laser.id, "fdm": fdm.id, "ada": ada.id, "bob": bob.id}


def person_by_email(s: Any, email: str) -> Person:
    person = s.scalar(select(Person).where(Person.email == email))
    assert person is not None, email
    return person


def count(model: Any, *where: Any) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def audit_actions() -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(AuditLog.action).order_by(AuditLog.id)))
