"""The demo lab `make run` starts tells the truth: its history agrees with everyone's
qualifications, nobody it names is blocked, and each demo login can do what the banner says.

The checks read the stored rows with the real services (decision, training, bookings), not
the generator's own bookkeeping.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.adapters.demo.story import ALONE, BANNER, WITH_TRAINER, populate
from server.db import Database
from server.i18n import gettext_in
from server.models import (
    Badge,
    Booking,
    BookingStatus,
    Competency,
    Level,
    Machine,
    MachineDayStats,
    MachineSession,
    Person,
    Qualification,
    Requirement,
    StepKind,
    UsageDaily,
)
from server.services import bookings, decision, training
from server.services.lab_file import load, parse
from server.services.qualifications import QualificationState, qualification_state
from server.services.training import STEPS_COMPLETE

TRAINER_BADGE = "A1B2C3D4"


def _demo(database: Database, now: datetime) -> int:
    from server.cli import DEMO_FILE

    with database.session() as s:
        load(s, parse(DEMO_FILE.read_text(encoding="utf-8")))
    with database.session() as s:
        return populate(s, seed=1, now=now)


def _open_time(database: Database, now: datetime, slug: str = "printer-1") -> datetime:
    """Now, when the machine's lab is open; else a minute after it next opens (the two sites
    keep different hours: the south is closed on Friday evenings and Saturdays)."""
    with database.session() as s:
        machine = s.scalar(select(Machine).where(Machine.slug == slug))
        assert machine is not None
        is_open, _closes, next_open = decision.opening_window(s, machine, now)
    if is_open:
        return now
    assert next_open is not None, "the demo lab has opening hours"
    return next_open + timedelta(minutes=1)


def _state_at(history: list[Qualification], at: datetime, today: date) -> QualificationState | None:
    """What the decision would have read at ``at``: the newest entry written by then."""
    known = [q for q in history if q.created_at <= at]
    if not known:
        return None
    top = max(known, key=lambda q: q.id)
    return qualification_state(top.level, top.action, top.valid_until, today)


def test_demo_story_history_agrees_with_every_qualification(database: Database) -> None:
    now = datetime.now(UTC)
    sessions = _demo(database, now)
    assert sessions > 500
    with database.session() as s:
        tz = ZoneInfo("Europe/Berlin")
        quals: dict[tuple[int, int], list[Qualification]] = defaultdict(list)
        for q in s.scalars(select(Qualification).order_by(Qualification.id)):
            quals[(q.person_id, q.competency_id)].append(q)
        requires: dict[int, list[tuple[int, Level]]] = defaultdict(list)
        for r in s.scalars(select(Requirement)):
            requires[r.machine_type_id].append((r.competency_id, Level(r.min_level)))
        machines = {m.id: m for m in s.scalars(select(Machine))}
        wrong: list[str] = []
        people_seen: set[int] = set()
        for row in s.scalars(select(MachineSession)):
            assert row.person_id is not None
            people_seen.add(row.person_id)
            day = row.started_at.astimezone(tz).date()
            for competency_id, need in requires[machines[row.machine_id].machine_type_id]:
                state = _state_at(quals[(row.person_id, competency_id)], row.started_at, day)
                if row.mode == "use":
                    ok = state is not None and state.usable and state.level is not None
                    ok = ok and state.level is not None and state.level.rank >= need.rank
                else:
                    assert row.mode == "supervise"
                    trainer = (
                        _state_at(quals[(row.trainer_id, competency_id)], row.started_at, day)
                        if row.trainer_id is not None
                        else None
                    )
                    ok = (
                        state is not None
                        and state.usable
                        and trainer is not None
                        and trainer.usable
                        and trainer.level == Level.TRAINER
                    )
                if not ok:
                    wrong.append(f"{row.mode} session {row.id} of person {row.person_id} at {row.started_at}")
        assert not wrong, f"{len(wrong)} sessions the decision would have refused, e.g. {wrong[:3]}"

        # Nobody sits at two machines at once.
        spans: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
        for row in s.scalars(select(MachineSession)):
            assert row.person_id is not None and row.ended_at is not None
            spans[row.person_id].append((row.started_at, row.ended_at))
        for person_id, times in spans.items():
            times.sort()
            assert all(a[1] <= b[0] for a, b in itertools.pairwise(times)), person_id

        # Every level came as the training service grants it: no participant has done every
        # step toward a level without holding it.
        today = now.astimezone(tz).date()
        participants = s.scalars(select(Person).where(Person.is_participant.is_(True))).all()
        assert 35 <= len(participants) <= 50
        stages: set[str] = set()
        for person in participants:
            for competency in s.scalars(select(Competency)):
                p = training.progress(s, person.id, competency, today)
                assert not (p.ready and p.next_level is not None), (person.name, competency.slug)
                if p.state is None:
                    continue
                stages.add(
                    "revoked" if p.state.revoked else "expired" if p.state.expired else str(p.state.level)
                )
                hours_step = next(
                    (st for st in competency.steps if st.kind == StepKind.SUPERVISED_HOURS), None
                )
                # A supervised level the training steps granted came when the supervised hours
                # before it were complete (levels granted by hand, prior learning, need none).
                for granted in quals[(person.id, competency.id)]:
                    if (
                        hours_step is None
                        or granted.level != Level.SUPERVISED
                        or granted.reason != STEPS_COMPLETE
                    ):
                        continue
                    done = sum(
                        (r.ended_at - r.started_at).total_seconds()
                        for r in s.scalars(
                            select(MachineSession).where(
                                MachineSession.person_id == person.id,
                                MachineSession.mode == "supervise",
                                MachineSession.ended_at <= granted.created_at,
                            )
                        )
                        if r.ended_at is not None
                        and any(
                            c == competency.id for c, _ in requires[machines[r.machine_id].machine_type_id]
                        )
                    )
                    assert done >= (hours_step.hours or 0) * 3600, (person.name, competency.slug)
        assert {"briefed", "supervised", "independent", "expired", "revoked"} <= stages
        assert len(people_seen) >= 20, "most participants used a machine"

        # Nobody is blocked by no-shows, and every booking is one its holder could make.
        for person in participants:
            assert bookings.no_show_block(s, person.id, bookings.policy_for(s, person.site_id), now) is None
        for b in s.scalars(select(Booking).where(Booking.status == BookingStatus.BOOKED)):
            assert bookings.is_open(s, b.machine, b.starts_at, b.ends_at), b.id
            if b.ends_at <= now:
                assert b.checked_in_at is not None, "a past booking was used or released"
            else:  # one its holder may make today (past ones: their sessions are checked above)
                trainer = s.get(Person, b.trainer_id) if b.trainer_id else None
                day = b.starts_at.astimezone(tz).date()
                assert bookings.booking_eligibility(s, b.machine, b.person, trainer, day) is None, b.id
        coming = s.scalar(
            select(func.count())
            .select_from(Booking)
            .where(Booking.starts_at > now, Booking.status == "booked")
        )
        assert coming and coming >= 10

        # The lab keeps opening hours: utilisation is a share of them, neither 4 % nor full.
        since = today - timedelta(days=30)
        unlocked = s.scalar(select(func.sum(UsageDaily.unlocked_s)).where(UsageDaily.day >= since)) or 0.0
        open_s = s.scalar(select(func.sum(MachineDayStats.open_s)).where(MachineDayStats.day >= since)) or 0.0
        assert open_s < 30 * 24 * 3600 * len(machines) * 0.5
        assert 0.15 < unlocked / open_s < 0.7


def test_demo_story_banner_people_can_do_what_the_banner_says(database: Database) -> None:
    from server.adapters.demo.runner import VERDICT_WORDS, _banner

    now = datetime.now(UTC)
    _demo(database, now)
    opens = {c.machine: _open_time(database, now, c.machine) for e in BANNER for c in e.claims}
    checked = 0
    with database.session() as s:
        for entry in BANNER:
            person = s.scalar(select(Person).where(Person.email == entry.email))
            assert person is not None, entry.email
            badge = s.scalar(select(Badge.uid).where(Badge.person_id == person.id))
            for claim in entry.claims:
                machine = s.scalar(select(Machine).where(Machine.slug == claim.machine))
                assert machine is not None and badge is not None
                when = opens[claim.machine]
                alone = decision.decide(s, machine, badge, when)
                where = f"{person.name} at {claim.machine}"
                if claim.verdict == ALONE:
                    assert alone.allowed, f"{where}: {alone.reason}"
                elif claim.verdict == WITH_TRAINER:
                    assert alone.reason == "trainer_required", f"{where}: {alone.reason}"
                    with_trainer = decision.decide(
                        s, machine, badge, when, mode="supervise", trainer_badge=TRAINER_BADGE
                    )
                    assert with_trainer.allowed, f"{where} with a trainer: {with_trainer.reason}"
                else:
                    assert not alone.allowed and alone.reason == claim.verdict, f"{where}: {alone.reason}"
                checked += 1
            # Nobody the banner names is blocked from booking.
            policy = bookings.policy_for(s, person.site_id)
            assert bookings.no_show_block(s, person.id, policy, now) is None, person.name
    assert checked >= 10

    from server.cli import DEMO_FILE

    banner = _banner("http://127.0.0.1:5000/", "mqtt://127.0.0.1:1884", DEMO_FILE)
    for entry in BANNER:
        assert entry.email in banner and entry.says in banner
        for claim in entry.claims:
            assert f"{claim.machine} {VERDICT_WORDS[claim.verdict]}" in banner


def test_demo_banner_tells_whether_each_site_is_open(database: Database) -> None:
    """On a Saturday morning the north is open and the south is closed: the banner says both
    (the badges of the south's trainer unlock nothing until Monday)."""
    from server.adapters.demo.runner import _opening_line

    _demo(database, datetime.now(UTC))
    saturday = datetime(2026, 12, 12, 11, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    with database.session() as s:
        line = _opening_line(s, saturday.astimezone(UTC))
    assert line.splitlines() == [
        "  Werkbank Demo Lab North is open now until 16:00.",
        "  Werkbank Demo Lab South is closed now: taps are refused until it opens Mon 14 Dec, 09:00.",
    ]


def _free_hour(s: Session, machine: Machine, after: datetime) -> tuple[datetime, datetime]:
    """The first free, open hour on the booking grid from ``after`` on."""
    tz = ZoneInfo(machine.site.timezone)
    slot = after.astimezone(tz).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    for _ in range(48 * 14):
        end = slot + timedelta(hours=1)
        if bookings.is_open(s, machine, slot, end) and not bookings.active(s, [machine.id], slot, end):
            return slot, end
        slot += timedelta(minutes=30)
    pytest.fail(f"no free hour on {machine.slug} within two weeks")


def test_demo_story_kemal_books_a_free_slot_and_lena_is_told_why_she_cannot(database: Database) -> None:
    now = datetime.now(UTC)
    _demo(database, now)
    with database.session() as s:
        kemal = s.scalar(select(Person).where(Person.email == "kemal@demo.werkbank.local"))
        lena = s.scalar(select(Person).where(Person.email == "lena@demo.werkbank.local"))
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert kemal is not None and lena is not None and printer is not None
        start, end = _free_hour(s, printer, now)
        booking = bookings.create(s, kemal, printer, start, end, kemal, now)
        assert booking.status == BookingStatus.BOOKED

        start, end = _free_hour(s, printer, end)
        with pytest.raises(bookings.BookingError) as refused:
            bookings.create(s, lena, printer, start, end, lena, now)
        error = refused.value
        assert error.code == "not_qualified"
        # Her own refusal speaks to her ("Sie"), in German, and names the machine type in German.
        params = {
            k: v.in_language("de") if hasattr(v, "in_language") else str(v) for k, v in error.params.items()
        }
        german = gettext_in("de", error.message).format(**params)
        assert "Lena" not in german and ("Sie" in german or "Ihre" in german), german
        assert "FDM-3D-Drucker" in german and "printer" not in german, german
