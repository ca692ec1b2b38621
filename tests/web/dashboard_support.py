"""Rows for the aggregate tables, written straight in: the interface between the dashboards and
the data layer that fills them (server/services/usage.py). Used by the dashboard tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import (
    Competency,
    Level,
    Machine,
    MachineDayStats,
    MachineType,
    Person,
    PersonUsageMonthly,
    Qualification,
    QualificationAction,
    Site,
    UsageDaily,
    UsageHourly,
)

BERLIN = ZoneInfo("Europe/Berlin")


def machine(s: Session, slug: str) -> Machine:
    found = s.scalar(select(Machine).where(Machine.slug == slug))
    assert found is not None, slug
    return found


def daily(s: Session, slug: str, day: date, cohort: str = "", **fields: Any) -> UsageDaily:
    """One (machine, local day, cohort) row; hours as ``unlocked_h=...`` etc. become seconds."""
    m = machine(s, slug)
    values = {}
    for key, value in fields.items():
        if key.endswith("_h"):
            values[key[:-2] + "_s"] = float(value) * 3600
        else:
            values[key] = value
    row = UsageDaily(
        machine_id=m.id,
        day=day,
        cohort=cohort,
        site_id=m.site_id,
        machine_type_id=m.machine_type_id,
        **values,
    )
    s.add(row)
    return row


def hourly(s: Session, slug: str, day: date, hour: int, unlocked_h: float, cohort: str = "") -> None:
    m = machine(s, slug)
    s.add(
        UsageHourly(
            machine_id=m.id,
            day=day,
            hour=hour,
            cohort=cohort,
            site_id=m.site_id,
            machine_type_id=m.machine_type_id,
            unlocked_s=unlocked_h * 3600,
        )
    )


def day_stats(
    s: Session, slug: str, day: date, open_h: float, maintenance_h: float = 0.0, offline_h: float = 0.0
) -> None:
    m = machine(s, slug)
    s.add(
        MachineDayStats(
            machine_id=m.id,
            day=day,
            site_id=m.site_id,
            machine_type_id=m.machine_type_id,
            open_s=open_h * 3600,
            maintenance_s=maintenance_h * 3600,
            offline_s=offline_h * 3600,
        )
    )


def monthly(s: Session, person: Person, slug: str, month: date, unlocked_h: float = 1.0) -> None:
    m = machine(s, slug)
    s.add(
        PersonUsageMonthly(
            person_id=person.id,
            machine_id=m.id,
            month=month,
            site_id=m.site_id,
            machine_type_id=m.machine_type_id,
            sessions=1,
            unlocked_s=unlocked_h * 3600,
        )
    )


def local(day: date, hour: int = 12) -> datetime:
    """Noon (or ``hour``) of a Berlin day, in UTC as the history stores it."""
    return datetime(day.year, day.month, day.day, hour, tzinfo=BERLIN).astimezone(UTC)


def qualification(
    s: Session,
    person: Person,
    competency: Competency,
    level: Level,
    at: datetime,
    action: QualificationAction = QualificationAction.GRANTED,
    valid_until: date | None = None,
) -> None:
    s.add(
        Qualification(
            person_id=person.id,
            competency_id=competency.id,
            action=action,
            level=level,
            valid_until=valid_until,
            created_at=at,
        )
    )
    s.flush()  # ids in insertion order: the newest entry is the one with the highest id


@dataclass
class Learners:
    """People and competencies :func:`add_learners` created, by short name."""

    people: dict[str, int]
    competencies: dict[str, int]


def add_learners(s: Session, site: Site, day: date) -> Learners:
    """Two competencies and five participants in two cohorts, with a history up to ``day``.

    * laser safety (12 months valid), 3D printing (no expiry);
    * Anna (Cohort A): laser briefed → supervised → independent, valid until day + 10;
    * Ben (Cohort A): laser briefed, then revoked; printing briefed;
    * Cleo (Cohort B): laser independent granted last year, expired (valid until day - 5);
    * Dana (Cohort B): printing supervised, nothing in the period but a machine month;
    * Emil (no cohort): nothing at all in the period (created long ago, no use): not counted.
    """
    laser = Competency(
        slug="laser-safety", name="Laser safety", name_de="Lasersicherheit", validity_months=12
    )
    printing = Competency(slug="printing", name="3D printing", name_de="3D-Druck")
    s.add_all([laser, printing])
    old = datetime(2020, 1, 1, tzinfo=UTC)

    def person(name: str, cohort: str | None) -> Person:
        p = Person(site_id=site.id, name=name, cohort=cohort, is_participant=True, created_at=old)
        s.add(p)
        return p

    anna, ben = person("Anna Arendt", "Cohort A"), person("Ben Becker", "Cohort A")
    cleo, dana = person("Cleo Cramer", "Cohort B"), person("Dana Dorn", "Cohort B")
    emil = person("Emil Ernst", None)
    s.flush()
    first = day.replace(day=1)
    qualification(s, anna, laser, Level.BRIEFED, local(first))
    qualification(s, anna, laser, Level.SUPERVISED, local(first, 14))
    qualification(
        s, anna, laser, Level.INDEPENDENT, local(day, 9), valid_until=date.fromordinal(day.toordinal() + 10)
    )
    qualification(s, ben, laser, Level.BRIEFED, local(first))
    qualification(s, ben, laser, Level.BRIEFED, local(first, 15), action=QualificationAction.REVOKED)
    qualification(s, ben, printing, Level.BRIEFED, local(first, 16))
    qualification(
        s,
        cleo,
        laser,
        Level.INDEPENDENT,
        local(date(day.year - 1, day.month, 1)),
        valid_until=date.fromordinal(day.toordinal() - 5),
    )
    qualification(s, dana, printing, Level.SUPERVISED, local(date(day.year - 1, 2, 1)))
    qualification(s, emil, printing, Level.BRIEFED, local(date(day.year - 2, 2, 1)))
    # Cleo's and Dana's part in the period: they used a machine.
    laser_machine = s.scalar(select(Machine).join(MachineType).where(MachineType.slug == "laser"))
    assert laser_machine is not None
    monthly(s, cleo, laser_machine.slug, first)
    monthly(s, dana, laser_machine.slug, first)
    s.flush()
    return Learners(
        people={p.name.split()[0].lower(): p.id for p in (anna, ben, cleo, dana, emil)},
        competencies={"laser": laser.id, "printing": printing.id},
    )
