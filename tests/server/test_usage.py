"""Usage aggregates: local days and hours, cohorts, bookings, opening hours, downtime, the
dirty-day queue and its refresh job (server.services.usage)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from server.db import Database
from server.models import (
    Booking,
    BookingStatus,
    ClosedDay,
    Device,
    DowntimeKind,
    Job,
    Machine,
    MachineDayStats,
    MachineDowntime,
    MachineSession,
    MachineStatus,
    Person,
    PersonUsageMonthly,
    UsageDaily,
    UsageDirty,
    UsageHourly,
)
from server.services import usage
from server.services.devices import apply_status
from server.services.ingest import ingest_event
from werkbank_protocol import format_ts
from werkbank_protocol.messages import JobFinished, JobStarted, SessionEnded, SessionStarted, Status

BERLIN = ZoneInfo("Europe/Berlin")


def local(y: int, m: int, d: int, hh: int = 0, mm: int = 0, fold: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=BERLIN, fold=fold).astimezone(UTC)


def ids(db: Database) -> dict[str, int]:
    with db.session() as s:
        found = {m.slug: m.id for m in s.scalars(select(Machine))}
        found |= {p.name.split()[0].lower(): p.id for p in s.scalars(select(Person))}
        return found


def add_session(
    db: Database, machine: int, person: int | None, start: datetime, end: datetime | None, **extra: Any
) -> str:
    sid = str(uuid.uuid4())
    with db.session() as s:
        s.add(
            MachineSession(
                id=sid,
                machine_id=machine,
                device_id="pi",
                person_id=person,
                started_at=start,
                ended_at=end,
                **extra,
            )
        )
    return sid


def daily(db: Database, machine: int, day: date) -> dict[str, UsageDaily]:
    with db.session() as s:
        return {
            r.cohort: r
            for r in s.scalars(
                select(UsageDaily).where(UsageDaily.machine_id == machine, UsageDaily.day == day)
            )
        }


def hourly(db: Database, machine: int, day: date) -> dict[int, float]:
    with db.session() as s:
        out: dict[int, float] = {}
        for r in s.scalars(
            select(UsageHourly).where(UsageHourly.machine_id == machine, UsageHourly.day == day)
        ):
            out[r.hour] = out.get(r.hour, 0.0) + r.unlocked_s
        return out


def stats(db: Database, machine: int, day: date) -> MachineDayStats:
    with db.session() as s:
        row = s.get(MachineDayStats, (machine, day))
        assert row is not None, f"no stats for {day}"
        return row


def dirty(db: Database) -> set[tuple[int, date]]:
    with db.session() as s:
        return {(mid, day) for mid, day in s.execute(select(UsageDirty.machine_id, UsageDirty.day))}


LATER = datetime(2026, 11, 30, 12, tzinfo=UTC)  # "now" for refreshes: after every test's events


def test_usage_session_split_at_local_midnight_and_hours(lab: Database) -> None:
    m = ids(lab)
    add_session(lab, m["printer-1"], m["quinn"], local(2026, 11, 17, 23, 30), local(2026, 11, 18, 1, 15))
    assert usage.refresh(lab, LATER) >= 2
    first, second = (
        daily(lab, m["printer-1"], date(2026, 11, 17)),
        daily(lab, m["printer-1"], date(2026, 11, 18)),
    )
    assert first["Cohort A"].unlocked_s == pytest.approx(1800)
    assert first["Cohort A"].sessions == 1, "a session counts on the day it started"
    assert second["Cohort A"].unlocked_s == pytest.approx(4500)
    assert second["Cohort A"].sessions == 0
    assert hourly(lab, m["printer-1"], date(2026, 11, 17)) == {23: pytest.approx(1800)}
    assert hourly(lab, m["printer-1"], date(2026, 11, 18)) == {0: pytest.approx(3600), 1: pytest.approx(900)}


def test_usage_dst_days_in_berlin_have_25_and_23_hours(lab: Database) -> None:
    m = ids(lab)
    # 25 October 2026: clocks go back at 03:00 CEST to 02:00 CET; 01:30 → 03:30 local is 3 real hours.
    add_session(lab, m["printer-1"], m["uma"], local(2026, 10, 25, 1, 30), local(2026, 10, 25, 3, 30))
    # 29 March 2026: clocks jump from 02:00 to 03:00; 01:30 → 03:30 local is 1 real hour.
    add_session(lab, m["printer-1"], m["uma"], local(2026, 3, 29, 1, 30), local(2026, 3, 29, 3, 30))
    usage.refresh(lab, LATER)
    autumn = date(2026, 10, 25)
    assert daily(lab, m["printer-1"], autumn)[""].unlocked_s == pytest.approx(3 * 3600)
    assert hourly(lab, m["printer-1"], autumn) == {1: 1800, 2: 7200, 3: 1800}
    spring = date(2026, 3, 29)
    assert daily(lab, m["printer-1"], spring)[""].unlocked_s == pytest.approx(3600)
    assert hourly(lab, m["printer-1"], spring) == {1: 1800, 3: 1800}


def test_usage_compute_day_lengths_follow_the_clock_change() -> None:
    """No opening hours = always open: the day is open for as long as it really lasts."""
    facts = usage.MachineUsageFacts(machine_id=1, site_id=1, machine_type_id=1, timezone="Europe/Berlin")
    days = [date(2026, 3, 29), date(2026, 10, 25), date(2026, 10, 26)]
    for day, hours in zip(days, (23, 25, 24), strict=True):
        agg = usage.compute(facts, [day], [], [], [], [], {}, 0.0)
        assert agg.stats[day][0] == hours * 3600


def test_usage_cohorts_split_and_erased_person_hours_stay(lab: Database, clock: Any) -> None:
    from server.services import privacy

    m = ids(lab)
    day = date(2026, 11, 18)
    add_session(lab, m["laser-1"], m["quinn"], local(2026, 11, 18, 9), local(2026, 11, 18, 10))
    add_session(lab, m["laser-1"], m["uma"], local(2026, 11, 18, 11), local(2026, 11, 18, 11, 30))
    add_session(lab, m["laser-1"], None, local(2026, 11, 18, 12), local(2026, 11, 18, 12, 10))
    usage.refresh(lab, LATER)
    rows = daily(lab, m["laser-1"], day)
    assert {c: r.unlocked_s for c, r in rows.items()} == {"Cohort A": 3600, "": 2400}
    assert {c: r.sessions for c, r in rows.items()} == {"Cohort A": 1, "": 2}
    with lab.session() as s:
        months = {r.person_id: r.unlocked_s for r in s.scalars(select(PersonUsageMonthly))}
    assert months == {m["quinn"]: 3600, m["uma"]: 1800}, "no person row for a session without one"

    with lab.session() as s:
        quinn = s.get(Person, m["quinn"])
        assert quinn is not None
        privacy.erase(s, quinn, None, clock())
    usage.rebuild(lab, now=LATER)
    assert {c: r.unlocked_s for c, r in daily(lab, m["laser-1"], day).items()} == {"Cohort A": 3600, "": 2400}
    with lab.session() as s:
        assert s.get(PersonUsageMonthly, (m["quinn"], m["laser-1"], date(2026, 11, 1))) is not None


def test_usage_run_supervised_jobs_bookings_and_no_shows(lab: Database) -> None:
    m = ids(lab)
    laser, quinn, sam, tina = m["laser-1"], m["quinn"], m["sam"], m["tina"]
    day = date(2026, 11, 18)
    used = add_session(
        lab, laser, quinn, local(2026, 11, 18, 10, 30), local(2026, 11, 18, 11, 30), run_s=1800.0
    )
    add_session(
        lab, laser, sam, local(2026, 11, 18, 14), local(2026, 11, 18, 15), trainer_id=tina, mode="supervise"
    )
    with lab.session() as s:
        s.add_all(
            [
                Booking(
                    machine_id=laser,
                    person_id=quinn,
                    starts_at=local(2026, 11, 18, 10),
                    ends_at=local(2026, 11, 18, 12),
                ),
                Booking(
                    machine_id=laser,
                    person_id=quinn,
                    starts_at=local(2026, 11, 18, 16),
                    ends_at=local(2026, 11, 18, 17),
                    status=BookingStatus.RELEASED,
                    no_show=True,
                ),
                Booking(
                    machine_id=laser,
                    person_id=sam,
                    starts_at=local(2026, 11, 18, 18),
                    ends_at=local(2026, 11, 18, 19),
                    status=BookingStatus.CANCELLED,
                ),
                Job(
                    id=str(uuid.uuid4()),
                    session_id=used,
                    machine_id=laser,
                    started_at=local(2026, 11, 18, 10, 40),
                    status="completed",
                    filament_g=12.5,
                ),
                Job(
                    id=str(uuid.uuid4()),
                    session_id=used,
                    machine_id=laser,
                    started_at=local(2026, 11, 18, 11),
                    status="failed",
                    filament_g=3.0,
                ),
            ]
        )
    usage.refresh(lab, LATER)
    rows = daily(lab, laser, day)
    a, none = rows["Cohort A"], rows[""]
    assert a.run_s == pytest.approx(1800)
    assert a.booked_s == pytest.approx(3 * 3600), "booked and released count, cancelled does not"
    assert a.booked_used_s == pytest.approx(3600)
    assert a.no_shows == 1
    assert (a.jobs, a.jobs_failed, a.filament_g) == (2, 1, pytest.approx(15.5))
    assert a.supervised_s == 0
    assert none.supervised_s == pytest.approx(3600)
    assert none.booked_s == 0, "the cancelled booking is not booked time"
    with lab.session() as s:
        sam_month = s.get(PersonUsageMonthly, (sam, laser, date(2026, 11, 1)))
        assert sam_month is not None and sam_month.supervised_s == pytest.approx(3600)
        quinn_month = s.get(PersonUsageMonthly, (quinn, laser, date(2026, 11, 1)))
        assert quinn_month is not None and (quinn_month.jobs, quinn_month.sessions) == (2, 1)


def test_usage_open_seconds_from_opening_hours_and_closed_days(lab: Database) -> None:
    m = ids(lab)
    printer = m["printer-1"]
    usage.refresh(lab, local(2026, 11, 18, 10))  # a Wednesday: lab open 08:00-20:00
    assert stats(lab, printer, date(2026, 11, 18)).open_s == 12 * 3600
    with lab.session() as s:
        site_id = s.get(Machine, printer).site_id  # type: ignore[union-attr]
        s.add(ClosedDay(site_id=site_id, day=date(2026, 11, 18), reason="holiday"))
    assert (printer, date(2026, 11, 18)) in dirty(lab), "a closed day marks the site's machines"
    assert (m["laser-1"], date(2026, 11, 18)) in dirty(lab)
    usage.refresh(lab, local(2026, 11, 18, 10))
    assert stats(lab, printer, date(2026, 11, 18)).open_s == 0
    usage.recompute(lab_session := lab.new_session(), printer, date(2026, 11, 21), LATER)  # a Saturday
    lab_session.commit()
    lab_session.close()
    assert stats(lab, printer, date(2026, 11, 21)).open_s == 0


def test_usage_downtime_from_machine_status_changes(lab: Database) -> None:
    m = ids(lab)
    laser = m["laser-1"]
    with lab.session() as s:
        s.get(Machine, laser).status = MachineStatus.MAINTENANCE  # type: ignore[union-attr]
    with lab.session() as s:
        s.get(Machine, laser).status = MachineStatus.DISABLED  # type: ignore[union-attr]
    with lab.session() as s:
        s.get(Machine, laser).status = MachineStatus.AVAILABLE  # type: ignore[union-attr]
    with lab.session() as s:
        periods = list(s.scalars(select(MachineDowntime).order_by(MachineDowntime.id)))
    assert [p.kind for p in periods] == [DowntimeKind.MAINTENANCE, DowntimeKind.OUT_OF_ORDER]
    assert all(p.ended_at is not None for p in periods)
    assert periods[0].ended_at == periods[1].started_at
    now = datetime.now(UTC)
    usage.refresh(lab, now)
    today = now.astimezone(BERLIN).date()
    total = sum((p.ended_at - p.started_at).total_seconds() for p in periods if p.ended_at)  # type: ignore[operator]
    assert stats(lab, laser, today).maintenance_s == pytest.approx(total, abs=1e-3)


def test_usage_device_offline_periods(lab: Database, clock: Any) -> None:
    from server.adapters.scheduler import mark_silent_devices_offline

    m = ids(lab)
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        apply_status(s, device, Status(v=1, online=True, state="idle"), clock())
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        apply_status(s, device, Status(v=1, online=False), clock.advance(hours=1))  # the last will
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        apply_status(s, device, Status(v=1, online=True, state="idle"), clock.advance(hours=2))
    # Silent for 5 minutes: the scheduler takes it offline from when it was last heard of.
    assert mark_silent_devices_offline(lab, clock.advance(minutes=30)) == 1
    usage.refresh(lab, clock.advance(minutes=30))
    with lab.session() as s:
        periods = list(s.scalars(select(MachineDowntime).order_by(MachineDowntime.id)))
    assert [(p.kind, p.started_at) for p in periods] == [
        (DowntimeKind.OFFLINE, datetime(2026, 11, 18, 10, tzinfo=UTC)),
        (DowntimeKind.OFFLINE, datetime(2026, 11, 18, 12, tzinfo=UTC)),
    ]
    assert periods[0].ended_at == datetime(2026, 11, 18, 12, tzinfo=UTC)
    assert periods[1].ended_at is None, "still offline"
    # 2 h closed + 1 h open (up to the refresh's now).
    assert stats(lab, m["printer-1"], date(2026, 11, 18)).offline_s == pytest.approx(3 * 3600)


def test_usage_flush_hook_marks_every_day_of_a_change(lab: Database) -> None:
    m = ids(lab)
    printer = m["printer-1"]
    sid = add_session(lab, printer, m["quinn"], local(2026, 11, 10, 22), local(2026, 11, 12, 1))
    assert dirty(lab) == {(printer, date(2026, 11, d)) for d in (10, 11, 12)}
    usage.refresh(lab, LATER)
    assert dirty(lab) == set()
    with lab.session() as s:  # moved: both the old and the new days are marked
        row = s.get(MachineSession, sid)
        assert row is not None
        row.ended_at = local(2026, 11, 10, 23)
    assert dirty(lab) == {(printer, date(2026, 11, d)) for d in (10, 11, 12)}
    usage.refresh(lab, LATER)
    assert daily(lab, printer, date(2026, 11, 11)) == {}, "the moved session left the 11th"
    with lab.session() as s:
        s.add(
            Job(
                id=str(uuid.uuid4()),
                session_id=sid,
                machine_id=printer,
                started_at=local(2026, 11, 10, 22, 5),
            )
        )
        s.add(
            Booking(
                machine_id=m["laser-1"],
                person_id=m["quinn"],
                starts_at=local(2026, 11, 14, 9),
                ends_at=local(2026, 11, 14, 10),
            )
        )
    assert dirty(lab) == {(printer, date(2026, 11, 10)), (m["laser-1"], date(2026, 11, 14))}
    with lab.session() as s:  # a change that touches nothing counted marks nothing
        s.get(Person, m["quinn"]).language = "de"  # type: ignore[union-attr]
    usage.refresh(lab, LATER)
    assert dirty(lab) == set()


def test_usage_refresh_is_idempotent_and_keeps_days_marked_again_meanwhile(lab: Database) -> None:
    m = ids(lab)
    printer = m["printer-1"]
    add_session(lab, printer, m["quinn"], local(2026, 11, 18, 9), local(2026, 11, 18, 10))
    usage.refresh(lab, LATER)
    before = {c: vars(r).copy() for c, r in daily(lab, printer, date(2026, 11, 18)).items()}
    assert usage.refresh(lab, LATER) == 0, "nothing dirty: nothing recomputed"
    with lab.session() as s:
        usage.recompute(s, printer, date(2026, 11, 18), LATER)
    after = {c: vars(r).copy() for c, r in daily(lab, printer, date(2026, 11, 18)).items()}
    for rows in (before, after):
        for r in rows.values():
            r.pop("_sa_instance_state")
    assert before == after

    # A day marked again while a refresh recomputes it stays in the queue for the next run.
    add_session(lab, printer, m["quinn"], local(2026, 11, 18, 11), local(2026, 11, 18, 12))
    with lab.session() as s:
        claimed = usage.dirty_days(s, printer)
    add_session(lab, printer, m["quinn"], local(2026, 11, 18, 13), local(2026, 11, 18, 14))
    with lab.session() as s:
        usage.release(s, printer, claimed)
    assert dirty(lab) == {(printer, date(2026, 11, 18))}
    usage.refresh(lab, LATER)
    assert daily(lab, printer, date(2026, 11, 18))["Cohort A"].unlocked_s == pytest.approx(3 * 3600)


def test_usage_refreshes_running_at_once_agree(lab: Database) -> None:
    m = ids(lab)
    for day in range(1, 20):
        add_session(lab, m["printer-1"], m["quinn"], local(2026, 11, day, 9), local(2026, 11, day, 11))
        add_session(lab, m["laser-1"], m["uma"], local(2026, 11, day, 12), local(2026, 11, day, 13))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            usage.refresh(lab, LATER)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    usage.refresh(lab, LATER)
    assert dirty(lab) == set()
    with lab.session() as s:
        total = sum(s.scalars(select(UsageDaily.unlocked_s)))
        months = {(r.person_id, r.machine_id): r.unlocked_s for r in s.scalars(select(PersonUsageMonthly))}
    assert total == pytest.approx(19 * 3 * 3600)
    assert months == {(m["quinn"], m["printer-1"]): 19 * 7200, (m["uma"], m["laser-1"]): 19 * 3600}


def test_usage_running_session_counts_up_to_now(lab: Database) -> None:
    m = ids(lab)
    add_session(lab, m["printer-1"], m["quinn"], local(2026, 11, 18, 9), None)
    usage.refresh(lab, local(2026, 11, 18, 9, 40))
    assert daily(lab, m["printer-1"], date(2026, 11, 18))["Cohort A"].unlocked_s == pytest.approx(2400)
    usage.refresh(lab, local(2026, 11, 18, 10, 0))  # today is marked again while it runs
    assert daily(lab, m["printer-1"], date(2026, 11, 18))["Cohort A"].unlocked_s == pytest.approx(3600)


def _event(cls: Any, at: datetime, **fields: Any) -> Any:
    return cls(v=1, id=str(uuid.uuid4()), ts=format_ts(at), **fields)


def test_usage_end_to_end_from_agent_events_including_a_late_one(lab: Database, clock: Any) -> None:
    """Real ingestion → flush hook → refresh → aggregates; an outbox replayed four days later
    updates the old day."""
    m = ids(lab)
    session, job = str(uuid.uuid4()), str(uuid.uuid4())
    start = local(2026, 11, 18, 9)
    events = [
        _event(SessionStarted, start, session=session, badge="04A224B2C35E80"),
        _event(JobStarted, start + timedelta(minutes=5), session=session, job=job, kind="print"),
        _event(
            JobFinished,
            start + timedelta(minutes=50),
            session=session,
            job=job,
            status="completed",
            duration_s=2700.0,
            filament_g=21.0,
        ),
        _event(
            SessionEnded,
            start + timedelta(hours=1),
            session=session,
            reason="tap_out",
            unlocked_s=3600.0,
            run_s=2700.0,
        ),
    ]
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        for e in events:
            ingest_event(s, device, e, clock())
    usage.refresh(lab, clock.advance(hours=2))
    row = daily(lab, m["printer-1"], date(2026, 11, 18))["Cohort A"]
    assert (row.sessions, row.unlocked_s, row.run_s, row.jobs, row.filament_g) == (1, 3600, 2700, 1, 21.0)

    late = str(uuid.uuid4())
    with lab.session() as s:
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        ingest_event(
            s,
            device,
            _event(
                SessionStarted, local(2026, 11, 14, 15), session=late, badge="04A224B2C35E80", offline=True
            ),
            clock(),
        )
        ingest_event(
            s,
            device,
            _event(
                SessionEnded, local(2026, 11, 14, 15, 30), session=late, reason="tap_out", unlocked_s=1800.0
            ),
            clock(),
        )
    assert (m["printer-1"], date(2026, 11, 14)) in dirty(lab)
    usage.refresh(lab, clock.advance(days=4))
    assert daily(lab, m["printer-1"], date(2026, 11, 14))["Cohort A"].unlocked_s == pytest.approx(1800)
    with lab.session() as s:
        month = s.get(PersonUsageMonthly, (m["quinn"], m["printer-1"], date(2026, 11, 1)))
        assert month is not None and (month.sessions, month.unlocked_s) == (2, 5400)


def test_usage_rebuild_since_a_day(lab: Database) -> None:
    m = ids(lab)
    add_session(lab, m["printer-1"], m["quinn"], local(2026, 10, 5, 9), local(2026, 10, 5, 10))
    add_session(lab, m["printer-1"], m["quinn"], local(2026, 11, 5, 9), local(2026, 11, 5, 10))
    with lab.session() as s:
        s.execute(UsageDirty.__table__.delete())
    days = usage.rebuild(lab, since=date(2026, 11, 1), now=local(2026, 11, 10, 12))
    assert days == 3 * 10, "three machines, 1-10 November"
    assert daily(lab, m["printer-1"], date(2026, 10, 5)) == {}
    assert daily(lab, m["printer-1"], date(2026, 11, 5))["Cohort A"].unlocked_s == 3600
    assert stats(lab, m["laser-1"], date(2026, 11, 9)).open_s == 12 * 3600


def test_usage_scheduler_runs_refresh_every_minute_and_the_cli_rebuilds(lab: Database) -> None:
    from server import create_app
    from server.adapters.scheduler import build_scheduler
    from server.config import TestConfig

    job = build_scheduler(lab).get_job("refresh_usage")
    assert job is not None and job.trigger.interval == timedelta(minutes=1)

    m = ids(lab)
    add_session(lab, m["printer-1"], m["quinn"], local(2026, 11, 18, 9), local(2026, 11, 18, 10))
    with lab.session() as s:
        s.execute(UsageDirty.__table__.delete())
    app = create_app(TestConfig, DATABASE_URL=lab.engine.url.render_as_string(hide_password=False))
    result = app.test_cli_runner().invoke(args=["usage", "rebuild", "--since", "2026-11-18"])
    assert result.exit_code == 0, result.output
    assert "recomputed" in result.output
    assert daily(lab, m["printer-1"], date(2026, 11, 18))["Cohort A"].unlocked_s == 3600
    bad = app.test_cli_runner().invoke(args=["usage", "rebuild", "--since", "18.11.2026"])
    assert bad.exit_code != 0 and "--since" in bad.output and "%Y-%m-%d" in bad.output


def test_usage_opening_hours_change_marks_today(lab: Database) -> None:
    from server.models import OpeningHours

    m = ids(lab)
    usage.refresh(lab, datetime.now(UTC))  # today is computed for every machine
    assert dirty(lab) == set()
    with lab.session() as s:
        site_id = s.get(Machine, m["laser-1"]).site_id  # type: ignore[union-attr]
        s.add(OpeningHours(site_id=site_id, weekday=5, opens=time(10), closes=time(14)))
    today = datetime.now(UTC).astimezone(BERLIN).date()
    assert dirty(lab) == {(m[slug], today) for slug in ("printer-1", "laser-1", "printer-2")}
    usage.refresh(lab, datetime.now(UTC))
    expected = {0: 12, 1: 12, 2: 12, 3: 12, 4: 12, 5: 4, 6: 0}[today.weekday()] * 3600
    assert stats(lab, m["laser-1"], today).open_s == expected


def test_usage_days_are_queued_at_commit_only_so_the_queue_is_the_last_lock_taken(lab: Database) -> None:
    """A booking locks its machine's row, then queues its day; an ingestion that queued the same
    day before updating that machine's row deadlocked with it on PostgreSQL. So a flush only
    notes the days; the queue rows are written when the transaction commits, and a rolled-back
    transaction queues nothing."""
    m = ids(lab)
    printer = m["printer-1"]
    start = local(2026, 11, 10, 10)
    with lab.session() as s:
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=printer,
                device_id="pi",
                person_id=m["quinn"],
                started_at=start,
                ended_at=start + timedelta(hours=1),
            )
        )
        s.flush()
        assert s.scalars(select(UsageDirty)).all() == [], "queued at the flush already"
        machine = s.get(Machine, printer)
        assert machine is not None
        machine.live_updated_at = start  # the ingestion's update of the machine row comes after
        s.flush()
    assert dirty(lab) == {(printer, date(2026, 11, 10))}
    usage.refresh(lab, LATER)
    s = lab.new_session()
    try:
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=printer,
                device_id="pi",
                person_id=m["quinn"],
                started_at=start,
            )
        )
        s.flush()
        s.rollback()
    finally:
        s.close()
    assert dirty(lab) == set()
    # A savepoint rolled back inside a transaction (a duplicate event) keeps the rest's days.
    with lab.session() as s:
        s.add(
            Booking(
                machine_id=printer, person_id=m["quinn"], starts_at=start, ends_at=start + timedelta(hours=1)
            )
        )
        s.flush()
        nested = s.begin_nested()
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=m["laser-1"],
                device_id="pi",
                started_at=start,
                ended_at=start + timedelta(hours=1),
            )
        )
        s.flush()
        nested.rollback()
    assert (printer, date(2026, 11, 10)) in dirty(lab)
