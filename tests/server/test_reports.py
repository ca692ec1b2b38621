"""The funder report over the aggregates: who is new, active and finished, hours per
participant and group, qualifications with trainers, pseudonyms, filters and month bounds."""

from __future__ import annotations

from datetime import date

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from server.db import Database
from server.models import Competency, Level, Machine, Person, Site
from server.services.privacy import pseudonym
from server.services.reports import FunderReport, ReportError, funder_report
from tests.server.report_factory import HOUR, ReportRows, Scenario, build_scenario, utc

Q1_START, Q1_END = date(2026, 1, 1), date(2026, 3, 1)


@pytest.fixture
def world(database: Database) -> Scenario:
    with database.session() as s:
        return build_scenario(s)


def _report(
    database: Database,
    site: int | None,
    start: date = Q1_START,
    end: date = Q1_END,
    cohort: str | None = None,
    programme: str | None = None,
    pseudonyms: bool = False,
    lang: str = "en",
) -> FunderReport:
    with database.session() as s:
        return funder_report(s, site, cohort, programme, start, end, pseudonyms, lang)


def test_reports_new_active_finished(database: Database, world: Scenario) -> None:
    report = _report(database, world.ids["nord"])
    rows = {row.person_id: row for row in report.participants}
    ids = world.ids
    # Dora's last use was before the period; Fay is at another site; Tina is no participant.
    assert set(rows) == {ids["ada"], ids["ben"], ids["cem"], ids["eli"], ids["gus"]}
    assert [pid for pid, r in rows.items() if r.is_new] == [ids["ben"]]
    assert {pid for pid, r in rows.items() if r.is_active} == set(rows)
    assert {pid for pid, r in rows.items() if r.is_finished} == {ids["cem"], ids["gus"]}
    assert (report.totals.participants, report.totals.new, report.totals.active, report.totals.finished) == (
        5,
        1,
        5,
        2,
    )
    # Eli is active only through the training step recorded on 20 March.
    assert rows[ids["eli"]].usage.sessions == 0
    # In the quarter before, only Ada (December) and Dora (November) used a machine; Dora
    # was deactivated and her last use lies in that quarter: she finished then.
    q4 = _report(database, ids["nord"], date(2025, 10, 1), date(2025, 12, 1))
    assert {r.person_id: (r.is_new, r.is_active, r.is_finished) for r in q4.participants} == {
        ids["ada"]: (False, True, False),
        ids["dora"]: (False, True, True),
    }


def test_reports_new_by_first_use_before_the_record_was_made(database: Database, world: Scenario) -> None:
    # Imported later than her first use (as a data migration would): her start is the first use.
    with database.session() as s:
        f = ReportRows(s)
        nord = s.get(Site, world.ids["nord"])
        machine = s.scalars(select(Machine).where(Machine.slug == "prusa-a")).one()
        assert nord is not None
        hana = f.person("Hana Hammer", nord, utc(2026, 6, 1, 9), "Cohort A", "P1")
        f.use(hana, machine, date(2026, 2, 1), 1.0)
        hana_id = hana.id
    q1 = {r.person_id: r for r in _report(database, world.ids["nord"]).participants}
    assert q1[hana_id].is_new
    q2 = {
        r.person_id: r
        for r in _report(database, world.ids["nord"], date(2026, 4, 1), date(2026, 6, 1)).participants
    }
    assert hana_id not in q2  # created in June, but she started in February


def test_reports_hours_per_participant_and_type(database: Database, world: Scenario) -> None:
    report = _report(database, world.ids["nord"])
    ada = next(r for r in report.participants if r.person_id == world.ids["ada"])
    assert ada.label == "Ada Lovelace"
    assert (ada.cohort, ada.programme) == ("Cohort A", "P1")
    # December's hour is outside the quarter.
    assert ada.usage.unlocked_s == pytest.approx(6.5 * HOUR)
    assert ada.usage.run_s == pytest.approx(5.0 * HOUR)
    assert ada.usage.supervised_s == pytest.approx(0.5 * HOUR)
    assert (ada.usage.sessions, ada.usage.jobs) == (6, 3 + 1 + 2)
    assert ada.hours_by_type == {
        world.ids["laser"]: pytest.approx(3.5 * HOUR),
        world.ids["fdm"]: pytest.approx(3.0 * HOUR),
    }
    assert report.totals.usage.unlocked_s == pytest.approx(10.0 * HOUR)  # Tina's 5 h are not counted
    assert report.totals.usage.sessions == 10
    assert [name for _id, name in report.machine_types] == ["CO2 laser cutter", "FDM 3D printer"]
    german = _report(database, world.ids["nord"], lang="de")
    assert [name for _id, name in german.machine_types] == ["CO2-Laserschneider", "FDM-3D-Drucker"]


def test_reports_hours_by_group(database: Database, world: Scenario) -> None:
    report = _report(database, world.ids["nord"])
    groups = {(g.cohort, g.programme): g for g in report.groups}
    assert set(groups) == {("Cohort A", "P1"), ("Cohort B", "P2")}
    a = groups[("Cohort A", "P1")]
    assert a.participants == 3  # Ada, Ben, Gus
    assert a.unlocked_by_type[world.ids["fdm"]] == pytest.approx(5.5 * HOUR)
    assert a.unlocked_by_type[world.ids["laser"]] == pytest.approx(3.5 * HOUR)
    b = groups[("Cohort B", "P2")]
    assert b.participants == 1  # Eli used no machine
    assert b.unlocked_by_type == {world.ids["laser"]: pytest.approx(1.0 * HOUR)}
    every_site = {(g.cohort, g.programme): g for g in _report(database, None).groups}
    assert every_site[("Cohort A", "P1")].unlocked_by_type[world.ids["fdm"]] == pytest.approx(9.5 * HOUR)


def test_reports_qualifications_with_trainers_and_local_month_bounds(
    database: Database, world: Scenario
) -> None:
    q1 = _report(database, world.ids["nord"])
    # 23:30 UTC on 31 December is 00:30 on 1 January in Berlin: in the first quarter.
    assert [(q.person, q.competency, q.level, q.day, q.trainer) for q in q1.qualifications] == [
        ("Ben Builder", "Laser safety", Level.BRIEFED, date(2026, 1, 1), "Tina Trainer")
    ]
    ben = next(r for r in q1.participants if r.person_id == world.ids["ben"])
    assert [q.competency for q in ben.qualifications] == ["Laser safety"]
    assert q1.totals.qualifications == 1
    # Ada's grant at 22:30 UTC on 31 March is 1 April in Berlin: the second quarter's.
    q2 = _report(database, world.ids["nord"], date(2026, 4, 1), date(2026, 6, 1), lang="de")
    assert [(q.person, q.competency, q.day) for q in q2.qualifications] == [
        ("Ada Lovelace", "Lasersicherheit", date(2026, 4, 1))
    ]
    december = _report(database, world.ids["nord"], date(2025, 12, 1), date(2025, 12, 1))
    assert december.qualifications == []


def test_reports_pseudonyms_are_stable_and_hide_trainers(database: Database, world: Scenario) -> None:
    plain = _report(database, world.ids["nord"])
    hidden = _report(database, world.ids["nord"], pseudonyms=True)
    again = _report(database, world.ids["nord"], pseudonyms=True)
    assert [r.label for r in hidden.participants] == [r.label for r in again.participants]
    labels = {r.person_id: r.label for r in hidden.participants}
    assert labels[world.ids["ada"]] == world.label("ada") == pseudonym(world.ids["ada"], world.key)
    every_text = repr(hidden)
    for name in ("Ada", "Ben", "Cem", "Eli", "Tina"):
        assert name not in every_text
    assert hidden.qualifications[0].trainer == world.label("tina")
    # An erased person carries the same label with and without pseudonyms: the one given when
    # erased (here one from before pseudonyms were keyed).
    gus = world.ids["gus"]
    assert {r.person_id: r.label for r in plain.participants}[gus] == labels[gus] == world.label("gus")


def test_reports_pseudonyms_cannot_be_made_without_the_labs_key(database: Database, world: Scenario) -> None:
    """Whoever has a pseudonymised report and knows the person numbers (they are in the pages'
    addresses) or the names cannot find whom a pseudonym stands for: the labels are keyed with
    the lab's own secret. (Before, the label was a plain hash of the person number.)"""
    import hashlib

    hidden = _report(database, world.ids["nord"], pseudonyms=True)
    labels = {r.label for r in hidden.participants} | {q.trainer for q in hidden.qualifications}
    labels.discard(world.label("gus"))  # erased before the key: keeps his old label

    def unkeyed(text: str) -> set[str]:
        return {
            "Person " + hashlib.blake2b(text.encode(), digest_size=4).hexdigest(),
            "Person " + hashlib.sha256(text.encode()).hexdigest()[:8],
            "Person " + hashlib.md5(text.encode()).hexdigest()[:8],
        }

    guesses: set[str] = set()
    for number in range(1, 2000):
        for text in (f"werkbank-person-{number}", str(number), f"person-{number}"):
            guesses |= unkeyed(text)
    for name in ("Ada Lovelace", "Ben Builder", "Cem Carver", "Eli Etcher", "Tina Trainer"):
        guesses |= unkeyed(name)
    assert labels and not labels & guesses
    # Another lab (another key) gives the same person number another label; this lab's stays.
    assert pseudonym(world.ids["ada"], b"another lab's key") != world.label("ada")
    assert {r.label for r in _report(database, world.ids["nord"], pseudonyms=True).participants} == {
        r.label for r in hidden.participants
    }


def test_reports_cohort_and_programme_filters(database: Database, world: Scenario) -> None:
    nord = world.ids["nord"]
    cohort_b = _report(database, nord, cohort="Cohort B")
    assert {r.person_id for r in cohort_b.participants} == {world.ids["cem"], world.ids["eli"]}
    assert cohort_b.totals.usage.unlocked_s == pytest.approx(1.0 * HOUR)
    assert cohort_b.qualifications == []
    p1 = _report(database, nord, programme="P1")
    assert {r.person_id for r in p1.participants} == {world.ids["ada"], world.ids["ben"], world.ids["gus"]}
    assert len(p1.qualifications) == 1
    assert _report(database, nord, cohort="Cohort A", programme="P2").participants == []
    every_site = _report(database, None, cohort="Cohort A")
    assert world.ids["fay"] in {r.person_id for r in every_site.participants}


def test_reports_refuses_bad_periods(database: Database, world: Scenario) -> None:
    with pytest.raises(ReportError):
        _report(database, world.ids["nord"], date(2026, 3, 1), date(2026, 1, 1))
    with pytest.raises(ReportError):
        _report(database, world.ids["nord"], date(2021, 1, 1), date(2026, 1, 1))  # 61 months
    assert _report(database, world.ids["nord"], date(2021, 2, 1), date(2026, 1, 1)).months == 60


def test_reports_a_fixed_number_of_queries(database: Database, world: Scenario) -> None:
    """No query per participant: more people, the same number of statements."""

    def count() -> int:
        statements: list[str] = []

        def seen(*args: object) -> None:
            statements.append(str(args[2]))

        event.listen(database.engine, "before_cursor_execute", seen)
        try:
            with database.session() as s:
                funder_report(s, None, None, None, Q1_START, Q1_END, True, "en")
        finally:
            event.remove(database.engine, "before_cursor_execute", seen)
        return len(statements)

    before = count()
    # sites, use, grants, steps, the pseudonym key, people, machine types, exits, targets, machines
    assert before <= 10
    with database.session() as s:
        _more_people(s, world, 40)
    assert count() == before


def _more_people(s: Session, world: Scenario, n: int) -> None:
    f = ReportRows(s)
    site = s.get(Site, world.ids["nord"])
    machine = s.scalars(select(Machine).where(Machine.slug == "laser-1")).one()
    safety = s.scalars(select(Competency)).one()
    tina = s.get(Person, world.ids["tina"])
    assert site is not None
    for i in range(n):
        p = f.person(f"Extra {i}", site, utc(2026, 1, 2, 9), "Cohort C", "P3")
        f.use(p, machine, date(2026, 2, 1), 1.0)
        f.grant(p, safety, Level.BRIEFED, utc(2026, 2, 2, 9), tina)
