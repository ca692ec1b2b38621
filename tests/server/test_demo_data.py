"""``werkbank demo-data``: realistic history whose aggregates equal a recompute from the raw rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select

from server.db import Database
from server.models import (
    Booking,
    Job,
    Machine,
    MachineDayStats,
    MachineDowntime,
    MachineSession,
    MachineType,
    Person,
    PersonUsageMonthly,
    Qualification,
    QualificationAction,
    UsageDaily,
    UsageHourly,
)
from server.services import usage
from tests.hours_support import assert_totals_match

AGGREGATES: tuple[Any, ...] = (UsageDaily, UsageHourly, MachineDayStats, PersonUsageMonthly)


def _snapshot(db: Database) -> dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]:
    out: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]] = {}
    with db.session() as s:
        for model in AGGREGATES:
            table = model.__table__
            keys = [c.name for c in table.primary_key.columns]
            values = [c.name for c in table.columns if c.name not in keys]
            rows: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            for row in s.execute(select(table)).mappings():
                rows[tuple(row[k] for k in keys)] = tuple(
                    round(row[v], 3) if isinstance(row[v], float) else row[v] for v in values
                )
            out[table.name] = rows
    return out


def _run(database: Database, *args: str) -> Any:
    from server import create_app
    from server.config import TestConfig

    url = database.engine.url.render_as_string(hide_password=False)
    app = create_app(TestConfig, DATABASE_URL=url)
    return app.test_cli_runner().invoke(args=["demo-data", *args, "--database-url", url])


def test_demo_data_small_run_matches_a_recompute_from_raw(database: Database) -> None:
    result = _run(database, "--sites", "1", "--machines", "3", "--years", "0.1", "--seed", "7")
    assert result.exit_code == 0, result.output
    assert "3 machines" in result.output and "sessions" in result.output
    with database.session() as s:
        sessions = s.scalar(select(func.count()).select_from(MachineSession)) or 0
        assert sessions > 100
        assert (s.scalar(select(func.count()).select_from(Job)) or 0) > 0
        assert (s.scalar(select(func.count()).select_from(Booking)) or 0) > 0
        assert (s.scalar(select(func.count()).select_from(MachineDowntime)) or 0) > 0
        levels = {
            q.level.value for q in s.scalars(select(Qualification)) if q.action == QualificationAction.GRANTED
        }
        assert {"briefed", "supervised", "independent", "trainer"} <= levels
        assert s.scalar(select(func.count()).select_from(Person).where(Person.is_admin.is_(True))) == 1
        first = s.scalar(select(func.min(MachineDayStats.day)))
        supervised = s.scalar(select(func.sum(UsageDaily.supervised_s))) or 0
        total = s.scalar(select(func.sum(UsageDaily.unlocked_s))) or 0
        assert 0 < supervised < total
        # Each machine's total machine hours (the overview's) came with its bulk-written sessions.
        assert all(seconds > 0 for seconds in assert_totals_match(s).values())
    generated = _snapshot(database)
    assert all(generated.values()), "every aggregate table has rows"

    # Recompute everything from the raw rows the generator wrote: the same numbers come out.
    with database.session() as s:
        for model in AGGREGATES:
            s.execute(model.__table__.delete())
    usage.rebuild(database, since=first, now=datetime.now(UTC))
    rebuilt = _snapshot(database)
    for table, rows in generated.items():
        assert rebuilt[table] == rows, table


def test_demo_data_is_deterministic_by_seed_and_refuses_a_used_database(database: Database) -> None:
    assert _run(database, "--sites", "1", "--machines", "2", "--years", "0.05", "--seed", "3").exit_code == 0
    with database.session() as s:
        people = s.scalar(select(func.count()).select_from(Person))
        first_ids = sorted(s.scalars(select(MachineSession.id)))
    again = _run(database, "--sites", "1", "--machines", "2", "--years", "0.05", "--seed", "3")
    assert again.exit_code != 0
    assert "Nothing was changed" in again.output
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Person)) == people
        assert sorted(s.scalars(select(MachineSession.id))) == first_ids
    # The same seed in another database gives the same sessions.
    from server.adapters.demo.history import generate

    other = Database()
    other.init("sqlite://")
    from server.models import Base

    Base.metadata.create_all(other.engine)
    generate(other.engine, 1, 2, 0.05, 3, datetime.now(UTC), batch_machines=1)
    with other.session() as s:
        assert sorted(s.scalars(select(MachineSession.id))) == first_ids
    other.dispose()


def test_demo_data_the_make_run_lab_history_matches_a_recompute_once(database: Database) -> None:
    """``werkbank up`` writes its demo story once, with aggregates equal to a recompute."""
    from server.adapters.demo.story import populate
    from server.cli import DEMO_FILE
    from server.services.lab_file import load, parse

    with database.session() as s:
        load(s, parse(DEMO_FILE.read_text(encoding="utf-8")))
    now = datetime.now(UTC)
    with database.session() as s:
        added = populate(s, seed=1, now=now)
    assert added > 500
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(MachineSession)) == added
        assert sum(assert_totals_match(s).values()) > 0
        first = s.scalar(select(func.min(MachineDayStats.day)))
    generated = _snapshot(database)
    assert generated["usage_daily"] and generated["person_usage_monthly"]
    with database.session() as s:
        # Printers and lasers have metering plugs, so the dashboard's energy columns show in the
        # demo; the vinyl cutter has none, and its sessions no energy at all.
        by_type: dict[str, list[float | None]] = {}
        for slug, wh, gap_s, source in s.execute(
            select(
                MachineType.slug,
                MachineSession.energy_wh,
                MachineSession.energy_gap_s,
                MachineSession.energy_source,
            )
            .join(Machine, Machine.id == MachineSession.machine_id)
            .join(MachineType, MachineType.id == Machine.machine_type_id)
        ):
            by_type.setdefault(slug, []).append(wh)
            assert (source is None) == (wh is None) and gap_s >= 0
        for slug in ("fdm-printer", "co2-laser"):
            assert all(wh is not None and wh > 0 for wh in by_type[slug]), slug
        assert set(by_type["vinyl-cutter"]) == {None}
        # A laser session (1.2 kW running) draws far more than a printer's (130 W).
        mean = {k: sum(v or 0.0 for v in by_type[k]) / len(by_type[k]) for k in ("fdm-printer", "co2-laser")}
        assert mean["co2-laser"] > 3 * mean["fdm-printer"] > 0
        assert (s.scalar(select(func.sum(UsageDaily.energy_wh))) or 0) == pytest.approx(
            sum(v or 0.0 for values in by_type.values() for v in values), rel=1e-6
        )
    with database.session() as s:
        assert populate(s, seed=1, now=now) == 0, "only on the first start"
    usage.rebuild(database, since=first, now=now)
    assert _snapshot(database) == generated
