"""Rows for the funder report's tests: the aggregate tables filled directly (the interface
between the data layer, server/services/usage.py, and the reports), plus the small tables.

``build_scenario`` makes one lab used by the service, page and browser tests; its figures
for the first quarter of 2026 at site "nord" are worked out by hand in the docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from sqlalchemy.orm import Session

from server.models import (
    Competency,
    Level,
    Machine,
    MachineType,
    Person,
    PersonUsageMonthly,
    Qualification,
    QualificationAction,
    Site,
    StepRecord,
    TrainingStep,
)
from server.services import lab_keys
from server.services.privacy import pseudonym

HOUR = 3600.0


class ReportRows:
    """A small factory: sites, machines, people, monthly use, grants and training steps."""

    def __init__(self, s: Session) -> None:
        self.s = s

    def site(self, slug: str, name: str, timezone: str = "Europe/Berlin") -> Site:
        site = Site(slug=slug, name=name, timezone=timezone)
        self.s.add(site)
        self.s.flush()
        return site

    def machine_type(self, slug: str, name: str, name_de: str) -> MachineType:
        kind = MachineType(slug=slug, name=name, name_de=name_de)
        self.s.add(kind)
        self.s.flush()
        return kind

    def machine(self, slug: str, site: Site, kind: MachineType) -> Machine:
        machine = Machine(slug=slug, name=slug.title(), site_id=site.id, machine_type_id=kind.id)
        self.s.add(machine)
        self.s.flush()
        return machine

    def person(
        self,
        name: str,
        site: Site,
        created: datetime,
        cohort: str | None = None,
        programme: str | None = None,
        **fields: object,
    ) -> Person:
        person = Person(
            site_id=site.id, name=name, cohort=cohort, programme=programme, created_at=created, **fields
        )
        self.s.add(person)
        self.s.flush()
        return person

    def use(
        self,
        person: Person,
        machine: Machine,
        month: date,
        hours: float,
        run_hours: float = 0.0,
        supervised_hours: float = 0.0,
        sessions: int = 1,
        jobs: int = 0,
    ) -> None:
        self.s.add(
            PersonUsageMonthly(
                person_id=person.id,
                machine_id=machine.id,
                month=month,
                site_id=machine.site_id,
                machine_type_id=machine.machine_type_id,
                sessions=sessions,
                unlocked_s=hours * HOUR,
                run_s=run_hours * HOUR,
                supervised_s=supervised_hours * HOUR,
                jobs=jobs,
            )
        )

    def grant(
        self,
        person: Person,
        competency: Competency,
        level: Level,
        at: datetime,
        by: Person | None,
        action: QualificationAction = QualificationAction.GRANTED,
    ) -> None:
        self.s.add(
            Qualification(
                person_id=person.id,
                competency_id=competency.id,
                action=action,
                level=level,
                granted_by_id=by.id if by else None,
                created_at=at,
            )
        )

    def step(self, person: Person, step: TrainingStep, at: datetime, by: Person) -> None:
        self.s.add(
            StepRecord(
                person_id=person.id,
                competency_id=step.competency_id,
                step_id=step.id,
                recorded_by_id=by.id,
                recorded_at=at,
            )
        )


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# Gus was erased before pseudonyms were keyed: his label (now his name) is an unkeyed one.
GUS_LABEL = "Person 0a1b2c3d"


@dataclass
class Scenario:
    ids: dict[str, int] = field(default_factory=dict)
    key: bytes = b""  # the lab's pseudonym key

    def label(self, name: str) -> str:
        if name == "gus":
            return GUS_LABEL
        return pseudonym(self.ids[name], self.key)


def build_scenario(s: Session) -> Scenario:
    """Site "nord" (Berlin) and "sued"; FDM printers and a laser; the first quarter of 2026:

    - Ada (Cohort A, Programme P1): since 2025, laser 2 h in January (run 1.5, supervised 0.5,
      2 sessions) and 1.5 h in February, printer 3 h in March; used the printer in December
      2025 too: active, not new. Her laser grant at 00:30 on 1 April Berlin time is in April.
    - Ben (Cohort A, P1): created 15 January 2026, printer 2 h in February; granted the laser
      briefing by Tina at 00:30 on 1 January Berlin time (still 31 December in UTC): new, active.
    - Cem (Cohort B, P2): deactivated, last use 1 h laser in March: active and finished.
    - Dora (Cohort B, P2): deactivated, last use November 2025: not in the report.
    - Eli (Cohort B, P2): no machine use, a training step on 20 March: active.
    - Gus (Cohort A, P1): erased on 5 March 2026 (name already his pseudonym, one made before
      pseudonyms were keyed), used the printer
      0.5 h in January: active and finished.
    - Fay: a participant of site "sued" (printer 4 h in February); Tina: trainer, not a
      participant, laser 5 h in January: neither is in nord's report.
    """
    f = ReportRows(s)
    out = Scenario()
    nord = f.site("nord", "Lernwerkstatt Nord")
    sued = f.site("sued", "Lernwerkstatt Süd")
    fdm = f.machine_type("fdm", "FDM 3D printer", "FDM-3D-Drucker")
    laser = f.machine_type("laser", "CO2 laser cutter", "CO2-Laserschneider")
    printer = f.machine("prusa-a", nord, fdm)
    cutter = f.machine("laser-1", nord, laser)
    southern = f.machine("sued-1", sued, fdm)
    safety = Competency(slug="laser-safety", name="Laser safety", name_de="Lasersicherheit")
    s.add(safety)
    s.flush()
    briefing = TrainingStep(competency_id=safety.id, kind="briefing", name="Briefing", leads_to=Level.BRIEFED)
    s.add(briefing)
    s.flush()

    old = utc(2025, 1, 10, 9)
    tina = f.person("Tina Trainer", nord, old, is_participant=False, is_trainer=True)
    ada = f.person("Ada Lovelace", nord, utc(2025, 6, 1, 9), "Cohort A", "P1")
    ben = f.person("Ben Builder", nord, utc(2026, 1, 15, 9), "Cohort A", "P1")
    cem = f.person("Cem Carver", nord, old, "Cohort B", "P2", active=False)
    dora = f.person("Dora Drill", nord, old, "Cohort B", "P2", active=False)
    eli = f.person("Eli Etcher", nord, old, "Cohort B", "P2")
    gus = f.person("placeholder", nord, old, "Cohort A", "P1", active=False, erased_at=utc(2026, 3, 5, 10))
    gus.name = GUS_LABEL
    fay = f.person("Fay Faraway", sued, old, "Cohort A", "P1")

    f.use(ada, printer, date(2025, 12, 1), 1.0)
    f.use(ada, cutter, date(2026, 1, 1), 2.0, run_hours=1.5, supervised_hours=0.5, sessions=2, jobs=3)
    f.use(ada, cutter, date(2026, 2, 1), 1.5, run_hours=1.0, sessions=1, jobs=1)
    f.use(ada, printer, date(2026, 3, 1), 3.0, run_hours=2.5, sessions=3, jobs=2)
    f.use(ben, printer, date(2026, 2, 1), 2.0, run_hours=1.0, sessions=2)
    f.use(cem, cutter, date(2026, 3, 1), 1.0, run_hours=0.5)
    f.use(dora, printer, date(2025, 11, 1), 4.0)
    f.use(gus, printer, date(2026, 1, 1), 0.5)
    f.use(fay, southern, date(2026, 2, 1), 4.0)
    f.use(tina, cutter, date(2026, 1, 1), 5.0)
    f.grant(ben, safety, Level.BRIEFED, utc(2025, 12, 31, 23, 30), tina)
    f.grant(ada, safety, Level.INDEPENDENT, utc(2026, 3, 31, 22, 30), tina)
    f.step(eli, briefing, utc(2026, 3, 20, 10), tina)
    s.flush()
    out.ids = {
        "tina": tina.id,
        "ada": ada.id,
        "ben": ben.id,
        "cem": cem.id,
        "dora": dora.id,
        "eli": eli.id,
        "gus": gus.id,
        "fay": fay.id,
        "nord": nord.id,
        "sued": sued.id,
        "fdm": fdm.id,
        "laser": laser.id,
    }
    out.key = lab_keys.pseudonym_key(s)
    return out
