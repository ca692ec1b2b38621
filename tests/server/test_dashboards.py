"""The dashboards' queries over the aggregate tables: sums, filters, heatmap buckets,
utilisation against opening hours, trend weeks, live tiles, learning levels, funnel, expiring.

Aggregate rows are written straight in (tests/web/dashboard_support.py): that is the
interface to the code that fills them from sessions, jobs and bookings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from server.db import Database
from server.models import Device, Level, Machine, MachineStatus, MachineType, Site
from server.services import dashboards
from server.services.live import LiveState
from tests.web.dashboard_support import Learners, add_learners, daily, day_stats, hourly

TODAY = date(2026, 11, 18)  # a Wednesday


@dataclass
class World:
    nord: int
    sued: int
    laser: int
    fdm: int


@pytest.fixture
def world(database: Database) -> Iterator[World]:
    with database.session() as s:
        nord = Site(slug="nord", name="Nord", timezone="Europe/Berlin")
        sued = Site(slug="sued", name="Süd", timezone="Europe/Berlin")
        laser = MachineType(slug="laser", name="CO2 laser cutter", name_de="CO2-Laser")
        fdm = MachineType(slug="fdm", name="FDM 3D printer")
        s.add_all([nord, sued, laser, fdm])
        s.flush()
        s.add_all(
            [
                Machine(slug="laser-1", name="Laser 1", site_id=nord.id, machine_type_id=laser.id),
                Machine(slug="laser-2", name="Laser 2", site_id=nord.id, machine_type_id=laser.id),
                Machine(slug="prusa-a", name="Prusa A", site_id=nord.id, machine_type_id=fdm.id),
                Machine(slug="sued-1", name="Southern Printer", site_id=sued.id, machine_type_id=fdm.id),
            ]
        )
        ids = World(nord.id, sued.id, laser.id, fdm.id)
    yield ids


def _by_slug(result: dashboards.Utilisation) -> dict[str, dashboards.UsageFigures]:
    return {m.slug: m.figures for m in result.machines}


def _fill_usage(s: Session) -> None:
    day = TODAY - timedelta(days=1)
    daily(
        s,
        "laser-1",
        day,
        "Cohort A",
        sessions=2,
        unlocked_h=3,
        run_h=2,
        jobs=3,
        jobs_failed=1,
        booked_h=2,
        booked_used_h=1.5,
        no_shows=1,
    )
    daily(s, "laser-1", day, "", sessions=1, unlocked_h=1, run_h=0.5, jobs=1)
    daily(s, "laser-1", TODAY, "Cohort B", sessions=1, unlocked_h=2, run_h=1, jobs=1)
    daily(s, "prusa-a", TODAY, "Cohort A", sessions=4, unlocked_h=8, run_h=7, jobs=5, filament_g=120.5)
    daily(s, "sued-1", TODAY, "Cohort A", sessions=9, unlocked_h=50, run_h=40)  # another site
    daily(s, "laser-1", TODAY - timedelta(days=40), "", sessions=5, unlocked_h=99)  # before the period
    daily(s, "laser-2", TODAY + timedelta(days=1), "", sessions=5, unlocked_h=99)  # after it


def test_dashboards_utilisation_sums_per_machine_and_in_total(database: Database, world: World) -> None:
    with database.session() as s:
        _fill_usage(s)
    with database.session() as s:
        result = dashboards.utilisation(s, world.nord, None, None, TODAY - timedelta(days=29), TODAY)
    rows = _by_slug(result)
    assert list(rows) == ["laser-1", "laser-2", "prusa-a"]  # by type name, then name; no other site
    assert rows["laser-1"].sessions == 4
    assert rows["laser-1"].unlocked_h == pytest.approx(6.0)
    assert rows["laser-1"].run_h == pytest.approx(3.5)
    assert rows["laser-1"].jobs == 5 and rows["laser-1"].jobs_failed == 1
    assert rows["laser-1"].booked_h == pytest.approx(2.0)
    assert rows["laser-1"].booked_used_h == pytest.approx(1.5)
    assert rows["laser-1"].booked_used_share == pytest.approx(0.75)
    assert rows["laser-1"].no_shows == 1
    assert rows["laser-2"] == dashboards.UsageFigures()  # listed, unused in the period
    assert rows["prusa-a"].filament_g == pytest.approx(120.5)
    assert result.totals.unlocked_h == pytest.approx(14.0)
    assert result.totals.sessions == 8
    assert result.totals.jobs == 10


def test_dashboards_utilisation_filters_type_cohort_and_site(database: Database, world: World) -> None:
    with database.session() as s:
        _fill_usage(s)
    start = TODAY - timedelta(days=29)
    with database.session() as s:
        lasers = dashboards.utilisation(s, world.nord, world.laser, None, start, TODAY)
        cohort_a = dashboards.utilisation(s, world.nord, None, "Cohort A", start, TODAY)
        no_group = dashboards.utilisation(s, world.nord, None, "", start, TODAY)
        everywhere = dashboards.utilisation(s, None, world.fdm, None, start, TODAY)
        one_day = dashboards.utilisation(s, world.nord, None, None, TODAY, TODAY)
    assert list(_by_slug(lasers)) == ["laser-1", "laser-2"]
    assert lasers.totals.unlocked_h == pytest.approx(6.0)
    assert _by_slug(cohort_a)["laser-1"].unlocked_h == pytest.approx(3.0)
    assert cohort_a.totals.unlocked_h == pytest.approx(11.0)
    assert no_group.totals.unlocked_h == pytest.approx(1.0)
    assert sorted(_by_slug(everywhere)) == ["prusa-a", "sued-1"]
    assert everywhere.totals.unlocked_h == pytest.approx(58.0)
    assert one_day.totals.unlocked_h == pytest.approx(10.0)


def test_dashboards_utilisation_against_open_hours_and_downtime(database: Database, world: World) -> None:
    with database.session() as s:
        for offset in range(2):
            day = TODAY - timedelta(days=offset)
            day_stats(s, "laser-1", day, open_h=10, maintenance_h=1.5, offline_h=0.25)
            daily(s, "laser-1", day, "", unlocked_h=2.5)
        day_stats(s, "prusa-a", TODAY - timedelta(days=60), open_h=10)  # outside the period
        daily(s, "prusa-a", TODAY, "", unlocked_h=1)
    with database.session() as s:
        result = dashboards.utilisation(s, world.nord, None, None, TODAY - timedelta(days=6), TODAY)
    rows = _by_slug(result)
    assert rows["laser-1"].open_h == pytest.approx(20.0)
    assert rows["laser-1"].utilisation == pytest.approx(0.25)
    assert rows["laser-1"].maintenance_h == pytest.approx(3.0)
    assert rows["laser-1"].offline_h == pytest.approx(0.5)
    assert rows["prusa-a"].open_h == 0.0
    assert rows["prusa-a"].utilisation is None  # never open in the period: no ratio, not infinity
    assert result.totals.utilisation == pytest.approx(6.0 / 20.0)


def test_dashboards_heatmap_buckets_by_local_weekday_and_hour(database: Database, world: World) -> None:
    monday, sunday = date(2026, 11, 16), date(2026, 11, 22)
    with database.session() as s:
        hourly(s, "laser-1", monday, 9, 0.5)
        hourly(s, "laser-2", monday, 9, 0.25)
        hourly(s, "prusa-a", monday, 9, 1.0, cohort="Cohort A")
        hourly(s, "laser-1", sunday, 23, 0.75)
        hourly(s, "laser-1", monday - timedelta(days=7), 9, 1.0)  # Monday before: outside
        hourly(s, "sued-1", monday, 10, 1.0)  # other site
    with database.session() as s:
        result = dashboards.utilisation(s, world.nord, None, None, monday, sunday)
        lasers = dashboards.utilisation(s, world.nord, world.laser, None, monday, sunday)
        cohort = dashboards.utilisation(s, world.nord, None, "Cohort A", monday, sunday)
    assert result.heatmap[0][9] == pytest.approx(1.75)
    assert result.heatmap[6][23] == pytest.approx(0.75)
    assert result.heatmap[0][10] == 0.0
    assert sum(map(sum, result.heatmap)) == pytest.approx(2.5)
    assert result.heat_max == pytest.approx(1.75)
    assert lasers.heatmap[0][9] == pytest.approx(0.75)
    assert cohort.heatmap[0][9] == pytest.approx(1.0) and cohort.heatmap[6][23] == 0.0


def test_dashboards_trend_has_every_iso_week_across_the_new_year(database: Database, world: World) -> None:
    start, end = date(2026, 12, 24), date(2027, 1, 12)  # Thursday of 2026-W52 .. Tuesday of 2027-W02
    with database.session() as s:
        daily(s, "laser-1", date(2026, 12, 24), "", unlocked_h=1, run_h=0.5)
        daily(s, "laser-1", date(2027, 1, 3), "", unlocked_h=2, run_h=1)  # Sunday of 2026-W53
        daily(s, "prusa-a", date(2026, 12, 28), "", unlocked_h=3, run_h=3)  # Monday of 2026-W53
        daily(s, "laser-1", date(2027, 1, 12), "", unlocked_h=4)
    with database.session() as s:
        result = dashboards.utilisation(s, world.nord, None, None, start, end)
    assert [(w.label, w.unlocked_h, w.run_h) for w in result.weeks] == [
        ("2026-W52", 1.0, 0.5),
        ("2026-W53", 5.0, 4.0),
        ("2027-W01", 0.0, 0.0),
        ("2027-W02", 4.0, 0.0),
    ]
    assert result.weeks[1].monday == date(2026, 12, 28)


def test_dashboards_top_machine_types_most_used_first(database: Database, world: World) -> None:
    with database.session() as s:
        daily(s, "laser-1", TODAY, "", unlocked_h=2, run_h=1)
        daily(s, "laser-2", TODAY, "", unlocked_h=2, run_h=1)
        daily(s, "prusa-a", TODAY, "", unlocked_h=7, run_h=6)
    with database.session() as s:
        result = dashboards.utilisation(s, world.nord, None, None, TODAY, TODAY)
    assert [(t.slug, t.unlocked_h, t.machines) for t in result.types] == [("fdm", 7.0, 1), ("laser", 4.0, 2)]


def test_dashboards_machine_whose_type_changed_counts_once_and_under_each_type(
    database: Database, world: World
) -> None:
    """Usage rows keep the machine's type at the time: a machine first used as a printer and
    then as a laser is one row of the machine table with all its hours, and each type gets
    the hours of its own time."""
    with database.session() as s:
        daily(
            s, "laser-1", TODAY - timedelta(days=1), "", unlocked_h=3, run_h=2, sessions=2
        ).machine_type_id = world.fdm
        daily(s, "laser-1", TODAY, "", unlocked_h=2, run_h=1, sessions=1)
        daily(s, "prusa-a", TODAY, "", unlocked_h=1, run_h=1, sessions=1)
    with database.session() as s:
        result = dashboards.utilisation(s, world.nord, None, None, TODAY - timedelta(days=1), TODAY)
    by_slug = {row.slug: row.figures for row in result.machines}
    assert (by_slug["laser-1"].sessions, by_slug["laser-1"].unlocked_h, by_slug["laser-1"].run_h) == (
        3,
        5.0,
        3.0,
    )
    assert (by_slug["prusa-a"].sessions, by_slug["prusa-a"].unlocked_h) == (1, 1.0)
    assert result.totals.unlocked_h == 6.0
    assert [(t.slug, t.unlocked_h, t.run_h, t.machines) for t in result.types] == [
        ("fdm", 4.0, 3.0, 2),
        ("laser", 2.0, 1.0, 1),
    ]


def test_dashboards_live_tiles_show_state_and_device(database: Database, world: World) -> None:
    seen = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
    with database.session() as s:
        from tests.web.dashboard_support import machine

        laser_1 = machine(s, "laser-1")
        laser_1.live_state, laser_1.live_running, laser_1.live_progress = "running", True, 40.0
        s.add(
            Device(id="pi-laser-1", machine_id=laser_1.id, online=True, last_seen=seen, agent_version="1.4.2")
        )
        s.add(Device(id="pi-prusa-a", machine_id=machine(s, "prusa-a").id, online=False, last_seen=seen))
        machine(s, "laser-2").status = MachineStatus.MAINTENANCE
    with database.session() as s:
        tiles = {t.slug: t for t in dashboards.live_tiles(s, world.nord)}
        lasers = dashboards.live_tiles(s, world.nord, world.laser)
    assert sorted(tiles) == ["laser-1", "laser-2", "prusa-a"]
    assert tiles["laser-1"].state == LiveState.IN_USE
    assert tiles["laser-1"].running and tiles["laser-1"].progress == 40.0
    assert tiles["laser-1"].device_online and tiles["laser-1"].agent_version == "1.4.2"
    assert tiles["laser-1"].device_last_seen == seen
    assert tiles["prusa-a"].state == LiveState.OFFLINE and not tiles["prusa-a"].device_online
    assert tiles["laser-2"].state == LiveState.MAINTENANCE and tiles["laser-2"].device_id is None
    assert [t.slug for t in lasers] == ["laser-1", "laser-2"]


# -- learning -------------------------------------------------------------------------------------


@pytest.fixture
def learners(database: Database, world: World) -> Learners:
    with database.session() as s:
        site = s.get(Site, world.nord)
        assert site is not None
        return add_learners(s, site, TODAY)


def test_dashboards_learning_participants_and_levels(
    database: Database, world: World, learners: Learners
) -> None:
    with database.session() as s:
        result = dashboards.learning(s, world.nord, None, None, TODAY.replace(day=1), TODAY, today=TODAY)
    assert [(c.cohort, c.participants) for c in result.cohorts] == [("Cohort A", 2), ("Cohort B", 2)]
    assert result.participants == 4  # Emil did nothing in the period
    counts = {(lc.cohort, lc.competency_id): lc for lc in result.level_counts}
    laser, printing = learners.competencies["laser"], learners.competencies["printing"]
    a_laser = counts[("Cohort A", laser)]
    assert a_laser.counts[Level.INDEPENDENT] == 1 and a_laser.none == 1  # Ben's briefing was revoked
    b_laser = counts[("Cohort B", laser)]
    assert b_laser.expired == 1 and b_laser.none == 1 and sum(b_laser.counts.values()) == 0
    assert counts[("Cohort B", printing)].counts[Level.SUPERVISED] == 1
    assert counts[("Cohort A", printing)].counts[Level.BRIEFED] == 1
    assert result.people == []  # the per-person table only for one chosen cohort


def test_dashboards_learning_one_cohort_lists_each_person(
    database: Database, world: World, learners: Learners
) -> None:
    with database.session() as s:
        result = dashboards.learning(
            s, world.nord, "Cohort B", None, TODAY.replace(day=1), TODAY, today=TODAY
        )
    laser, printing = learners.competencies["laser"], learners.competencies["printing"]
    people = {p.name: p for p in result.people}
    assert sorted(people) == ["Cleo Cramer", "Dana Dorn"]
    assert people["Cleo Cramer"].levels[laser] is None and laser in people["Cleo Cramer"].expired
    assert people["Dana Dorn"].levels[printing] == Level.SUPERVISED
    assert result.participants == 2


def test_dashboards_learning_levels_as_of_the_period_end(
    database: Database, world: World, learners: Learners
) -> None:
    # Last month: Anna was not yet trained, Cleo's laser qualification was still valid.
    end = TODAY.replace(day=1) - timedelta(days=1)
    with database.session() as s:
        result = dashboards.learning(s, world.nord, "Cohort B", None, end.replace(day=1), end, today=TODAY)
    laser = learners.competencies["laser"]
    assert result.as_of == end
    # Cleo used no machine and got nothing last month: not a participant of that period.
    assert [p.name for p in result.people] == []
    with database.session() as s:
        year = dashboards.learning(
            s, world.nord, "Cohort B", None, date(TODAY.year - 1, 1, 1), end, today=TODAY
        )
    cleo = next(p for p in year.people if p.name == "Cleo Cramer")
    assert cleo.levels[laser] == Level.INDEPENDENT


def test_dashboards_learning_funnel_grants_and_expiring(
    database: Database, world: World, learners: Learners
) -> None:
    with database.session() as s:
        result = dashboards.learning(s, world.nord, None, None, TODAY.replace(day=1), TODAY, today=TODAY)
        laser_only = dashboards.learning(
            s, world.nord, None, learners.competencies["laser"], TODAY.replace(day=1), TODAY, today=TODAY
        )
    assert [(f.level, f.people) for f in result.funnel] == [
        (Level.BRIEFED, 4),
        (Level.SUPERVISED, 3),
        (Level.INDEPENDENT, 2),
    ]
    assert result.funnel[2].share == pytest.approx(0.5)
    # Laser only: Anna and Cleo independent, Ben briefed (revoked later, but he reached it).
    assert [f.people for f in laser_only.funnel] == [3, 2, 2]
    (month,) = result.months
    assert month.month == TODAY.replace(day=1)
    assert month.counts[Level.BRIEFED] == 3 and month.counts[Level.SUPERVISED] == 1
    assert month.counts[Level.INDEPENDENT] == 1 and month.total == 5
    assert [(e.name, e.valid_until) for e in result.expiring] == [("Anna Arendt", TODAY + timedelta(days=10))]
    with database.session() as s:
        later = dashboards.learning(
            s, world.nord, None, None, TODAY.replace(day=1), TODAY, today=TODAY + timedelta(days=11)
        )
    assert later.expiring == []


def test_dashboards_learning_grants_fall_in_local_months(
    database: Database, world: World, learners: Learners
) -> None:
    from server.models import Competency, Person, QualificationAction
    from tests.web.dashboard_support import qualification

    with database.session() as s:
        zoe = Person(site_id=world.nord, name="Zoe Zeller", cohort="Cohort A", is_participant=True)
        s.add(zoe)
        s.flush()
        printing = s.get(Competency, learners.competencies["printing"])
        assert printing is not None
        # 30 Sep 23:30 UTC is 1 Oct 01:30 in Berlin: an October grant.
        qualification(s, zoe, printing, Level.BRIEFED, datetime(2026, 9, 30, 23, 30, tzinfo=UTC))
        qualification(
            s,
            zoe,
            printing,
            Level.BRIEFED,
            datetime(2026, 10, 2, tzinfo=UTC),
            action=QualificationAction.RENEWED,
        )
    with database.session() as s:
        result = dashboards.learning(
            s, world.nord, None, None, date(2026, 9, 1), date(2026, 10, 31), today=TODAY
        )
    assert [(m.month, m.total) for m in result.months] == [(date(2026, 9, 1), 0), (date(2026, 10, 1), 1)]
