"""The booking rules of server/services/bookings.py, with a hand-moved clock (no sleeping).

Now is Wed 2026-11-18, 10:00 in Berlin (the test lab's opening hours: Mon-Fri 08:00-20:00).
The default policy: 30 to 240 minutes on a 30-minute grid, up to 14 days ahead, changes until
60 minutes before the start, 8 hours a week, released 15 minutes after the start when nobody
tapped in, 3 no-shows in 30 days block booking for 14 days.

Races run two threads with two database sessions each; on PostgreSQL when TEST_DATABASE_URL
is set, else on SQLite.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from server.db import Database
from server.models import (
    AuditLog,
    Booking,
    BookingPolicy,
    BookingStatus,
    ClosedDay,
    CohortQuota,
    Device,
    Machine,
    MachineSession,
    OpeningHours,
    Person,
    Site,
)
from server.services import bookings
from server.services.bookings import BookingError
from server.services.ingest import ingest_event
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionStarted

T = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)  # Wed 10:00 in Berlin
QUINN_BADGE = "04A224B2C35E80"


def at(minutes: float, days: int = 0) -> datetime:
    """``minutes`` after Wed 10:00 Berlin, ``days`` later."""
    return T + timedelta(days=days, minutes=minutes)


def _person(s: Session, name: str) -> Person:
    found = s.scalar(select(Person).where(Person.name == name))
    assert found is not None, name
    return found


def _machine(s: Session, slug: str) -> Machine:
    found = s.scalar(select(Machine).where(Machine.slug == slug))
    assert found is not None, slug
    return found


def book(
    db: Database,
    who: str,
    start: datetime,
    end: datetime,
    machine: str = "printer-1",
    *,
    actor: str | None = None,
    trainer: str | None = None,
    now: datetime = T,
) -> str:
    with db.session() as s:
        booking = bookings.create(
            s,
            _person(s, who),
            _machine(s, machine),
            start,
            end,
            _person(s, actor or who),
            now,
            trainer=_person(s, trainer) if trainer else None,
        )
        return booking.id


def refused(call: Callable[[], Any]) -> str:
    """The code of the BookingError ``call`` raises."""
    with pytest.raises(BookingError) as info:
        call()
    return info.value.code


def _policy(db: Database, **values: Any) -> None:
    with db.session() as s:
        site = s.scalar(select(Site))
        assert site is not None
        s.add(BookingPolicy(site_id=site.id, **values))


def _get(db: Database, booking_id: str) -> Booking:
    with db.session() as s:
        found = s.get(Booking, booking_id)
        assert found is not None
        return found


def cancel(db: Database, booking_id: str, actor: str, now: datetime) -> Booking:
    with db.session() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        return bookings.cancel(s, booking, _person(s, actor), now)


def move(db: Database, booking_id: str, start: datetime, end: datetime, actor: str, now: datetime) -> Booking:
    with db.session() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        return bookings.move(s, booking, start, end, _person(s, actor), now)


def release(db: Database, now: datetime) -> list[str]:
    with db.session() as s:
        return [b.id for b in bookings.release_no_shows(s, now)]


def tap_in(
    db: Database, ts: datetime, device: str = "pi-printer-1", badge: str = QUINN_BADGE, offline: bool = False
) -> str:
    """The agent reports a session start (through ingestion, as the bridge does)."""
    session = str(uuid.uuid4())
    event = SessionStarted(
        v=1, id=str(uuid.uuid4()), ts=format_ts(ts), session=session, badge=badge, offline=offline
    )
    with db.session() as s:
        found = s.get(Device, device)
        assert found is not None
        ingest_event(s, found, event, now=ts)
    return session


# -- eligibility -----------------------------------------------------------------------------------


def test_bookings_only_people_the_machine_would_let_in(trainer_lab: Database) -> None:
    assert _get(trainer_lab, book(trainer_lab, "Quinn Qualified", at(60), at(120), "laser-1")).person_id
    assert refused(lambda: book(trainer_lab, "Uma Unqualified", at(60), at(120))) == "not_qualified"
    assert refused(lambda: book(trainer_lab, "Eddie Expired", at(120), at(180), "laser-1")) == (
        "qualification_expired"
    )
    # Sam is supervised on the laser: alone no, with a trainer of the laser yes.
    assert (
        refused(lambda: book(trainer_lab, "Sam Supervised", at(120), at(180), "laser-1"))
        == "trainer_required"
    )
    supervised = book(trainer_lab, "Sam Supervised", at(120), at(180), "laser-1", trainer="Tina Trainer")
    assert _get(trainer_lab, supervised).trainer_id is not None
    # Pete trains printers, not the laser; nobody supervises themselves.
    assert (
        refused(
            lambda: book(
                trainer_lab, "Sam Supervised", at(180), at(240), "laser-1", trainer="Pete Printtrainer"
            )
        )
        == "trainer_invalid"
    )
    assert (
        refused(
            lambda: book(trainer_lab, "Tina Trainer", at(180), at(240), "laser-1", trainer="Tina Trainer")
        )
        == "trainer_invalid"
    )
    # Even with a trainer, the safety briefing comes first.
    assert (
        refused(
            lambda: book(trainer_lab, "Uma Unqualified", at(180), at(240), "laser-1", trainer="Tina Trainer")
        )
        == "briefing_required"
    )


def test_bookings_participants_book_only_for_themselves(trainer_lab: Database) -> None:
    assert (
        refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(120), actor="Bea Briefed"))
        == "not_yours"
    )
    booking = book(trainer_lab, "Quinn Qualified", at(60), at(120), actor="Tina Trainer")
    assert _get(trainer_lab, booking).created_by_id != _get(trainer_lab, booking).person_id


def test_bookings_machine_in_maintenance_and_inactive_people(trainer_lab: Database) -> None:
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(120), "printer-2")) == (
        "machine_unavailable"
    )
    assert (
        refused(lambda: book(trainer_lab, "Ivy Inactive", at(60), at(120), actor="Tina Trainer"))
        == "person_inactive"
    )


# -- no overlaps -----------------------------------------------------------------------------------


def test_bookings_no_overlaps_per_machine(trainer_lab: Database) -> None:
    book(trainer_lab, "Quinn Qualified", at(60), at(120))
    assert refused(lambda: book(trainer_lab, "Pete Printtrainer", at(90), at(150))) == "taken"
    assert refused(lambda: book(trainer_lab, "Pete Printtrainer", at(30), at(180))) == "taken"
    with pytest.raises(BookingError) as info:
        book(trainer_lab, "Pete Printtrainer", at(60), at(90))
    assert (
        str(info.value) == "taken: This time is already booked (2026-11-18 11:00:00+01:00 to "
        "2026-11-18 12:00:00+01:00). Please choose another."
    )
    # Back to back, and the same time on another machine, are fine.
    book(trainer_lab, "Pete Printtrainer", at(120), at(180))
    book(trainer_lab, "Pete Printtrainer", at(0), at(60))
    book(trainer_lab, "Tina Trainer", at(60), at(120), "laser-1")


def test_bookings_cancelled_time_can_be_booked_again(trainer_lab: Database) -> None:
    first = book(trainer_lab, "Quinn Qualified", at(120), at(180))
    cancel(trainer_lab, first, "Quinn Qualified", at(0))
    book(trainer_lab, "Pete Printtrainer", at(120), at(180))


# -- opening hours and closed days -----------------------------------------------------------------


def test_bookings_inside_the_sites_opening_hours(trainer_lab: Database) -> None:
    # 19:30-20:30 runs past closing; 19:30-20:00 ends exactly at it.
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(570), at(630))) == "closed"
    book(trainer_lab, "Quinn Qualified", at(570), at(600))
    # Opening: 08:00 on the dot is fine, 07:30 is not.
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(-150, 1), at(-90, 1))) == "closed"
    book(trainer_lab, "Quinn Qualified", at(-120, 1), at(-60, 1))
    # Saturday: the lab is closed all day.
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(0, 3), at(60, 3))) == "closed"


def test_bookings_machine_hours_win_over_the_sites(trainer_lab: Database) -> None:
    with trainer_lab.session() as s:
        printer = _machine(s, "printer-1")
        s.add(
            OpeningHours(
                site_id=printer.site_id, machine_id=printer.id, weekday=2, opens=time(12), closes=time(14)
            )
        )
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(120))) == "closed"
    book(trainer_lab, "Quinn Qualified", at(120), at(240))
    book(trainer_lab, "Quinn Qualified", at(60), at(120), "laser-1")  # the laser keeps the site's hours
    # The printer has hours only on Wednesdays now: Thursday is closed for it.
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(120, 1), at(180, 1))) == "closed"


def test_bookings_closed_days_site_wide_and_per_machine(trainer_lab: Database) -> None:
    with trainer_lab.session() as s:
        printer = _machine(s, "printer-1")
        s.add(ClosedDay(site_id=printer.site_id, day=date(2026, 11, 19), reason="holiday"))
        s.add(
            ClosedDay(
                site_id=printer.site_id, machine_id=printer.id, day=date(2026, 11, 20), reason="service"
            )
        )
    for machine in ("printer-1", "laser-1"):
        assert (
            refused(lambda m=machine: book(trainer_lab, "Quinn Qualified", at(0, 1), at(60, 1), m))
            == "closed"
        )
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(0, 2), at(60, 2))) == "closed"
    book(trainer_lab, "Quinn Qualified", at(0, 2), at(60, 2), "laser-1")


# -- slot length and grid --------------------------------------------------------------------------


def test_bookings_slot_length_and_grid(trainer_lab: Database) -> None:
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(60))) == "bad_times"
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(30))) == "bad_times"
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(80))) == "too_short"
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(0), at(270))) == "too_long"
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(75), at(135))) == "off_grid"
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(105))) == "off_grid"
    book(trainer_lab, "Quinn Qualified", at(0), at(240))  # the longest there is


def test_bookings_policy_of_the_site_changes_the_limits(trainer_lab: Database) -> None:
    _policy(trainer_lab, min_slot_min=15, max_slot_min=60, slot_step_min=15)
    book(trainer_lab, "Quinn Qualified", at(15), at(30))
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(60), at(135))) == "too_long"


# -- weekly quota ----------------------------------------------------------------------------------


def test_bookings_weekly_quota_per_person(trainer_lab: Database) -> None:
    book(trainer_lab, "Quinn Qualified", at(0, 1), at(240, 1))
    book(trainer_lab, "Quinn Qualified", at(0, 2), at(240, 2))  # 8 hours this week: the quota
    with pytest.raises(BookingError) as info:
        book(trainer_lab, "Quinn Qualified", at(60), at(90), "laser-1")  # on any machine
    assert (info.value.code, info.value.params) == ("quota", {"used": "8", "quota": "8"})
    book(trainer_lab, "Quinn Qualified", at(0, 5), at(240, 5))  # next Monday: a new week
    book(trainer_lab, "Pete Printtrainer", at(60), at(90))  # others have their own
    # Staff may book past a participant's quota.
    book(trainer_lab, "Quinn Qualified", at(60), at(90), "laser-1", actor="Tina Trainer")


def test_bookings_cohort_quota_overrides_the_sites(trainer_lab: Database) -> None:
    with trainer_lab.session() as s:
        site = s.scalar(select(Site))
        assert site is not None
        s.add(CohortQuota(site_id=site.id, cohort="Cohort A", weekly_hours=1.5))
    _policy(trainer_lab, weekly_quota_h=2.0)
    book(trainer_lab, "Quinn Qualified", at(60), at(150))  # Quinn is in Cohort A: 1.5 h
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(180), at(210))) == "quota"
    # Bo has no cohort: the site's 2 hours.
    book(trainer_lab, "Bo Blocked", at(180), at(300))
    assert refused(lambda: book(trainer_lab, "Bo Blocked", at(360), at(390))) == "quota"


# -- lead time and max ahead -----------------------------------------------------------------------


def test_bookings_lead_time_and_max_ahead(trainer_lab: Database) -> None:
    _policy(trainer_lab, min_lead_min=60, max_ahead_days=14)
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(30), at(90))) == "lead_time"
    book(trainer_lab, "Quinn Qualified", at(60), at(90))  # exactly the lead time
    book(trainer_lab, "Quinn Qualified", at(30), at(60), "laser-1", actor="Tina Trainer")  # staff may
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(-60), at(-30))) == "in_the_past"
    assert (
        refused(lambda: book(trainer_lab, "Quinn Qualified", at(-60), at(-30), actor="Tina Trainer"))
        == "in_the_past"
    )
    book(trainer_lab, "Quinn Qualified", at(0, 14), at(30, 14))  # 14 days ahead to the minute
    assert refused(lambda: book(trainer_lab, "Quinn Qualified", at(30, 14), at(60, 14))) == "too_far_ahead"
    book(trainer_lab, "Pete Printtrainer", at(0, 15), at(30, 15), actor="Tina Trainer")


# -- cancel and move -------------------------------------------------------------------------------


def test_bookings_participant_cancels_until_the_deadline_staff_any_time(trainer_lab: Database) -> None:
    early = book(trainer_lab, "Quinn Qualified", at(120), at(180))
    late = book(trainer_lab, "Quinn Qualified", at(120), at(180), "laser-1")
    assert refused(lambda: cancel(trainer_lab, late, "Quinn Qualified", at(61))) == "too_late"
    cancelled = cancel(trainer_lab, early, "Quinn Qualified", at(60))  # exactly 60 minutes before
    assert cancelled.status == BookingStatus.CANCELLED and cancelled.cancelled_at == at(60)
    assert refused(lambda: cancel(trainer_lab, early, "Quinn Qualified", at(60))) == "not_active"
    assert refused(lambda: cancel(trainer_lab, late, "Bea Briefed", at(0))) == "not_yours"
    assert cancel(trainer_lab, late, "Tina Trainer", at(150)).status == BookingStatus.CANCELLED
    over = book(trainer_lab, "Quinn Qualified", at(0), at(30), actor="Tina Trainer")
    assert refused(lambda: cancel(trainer_lab, over, "Tina Trainer", at(30))) == "over"


def test_bookings_move_keeps_the_rules(trainer_lab: Database) -> None:
    mine = book(trainer_lab, "Quinn Qualified", at(120), at(360))  # 4 hours
    book(trainer_lab, "Quinn Qualified", at(0, 1), at(240, 1))  # 8 hours this week
    book(trainer_lab, "Pete Printtrainer", at(0, 2), at(60, 2))
    with trainer_lab.session() as s:
        s.execute(update(Booking).where(Booking.id == mine).values(reminded_at=at(0)))
    # Its own hours do not count twice against the quota.
    moved = move(trainer_lab, mine, at(150), at(390), "Quinn Qualified", at(0))
    assert (moved.starts_at, moved.ends_at, moved.reminded_at) == (at(150), at(390), None)
    assert refused(lambda: move(trainer_lab, mine, at(0, 2), at(120, 2), "Quinn Qualified", at(0))) == "taken"
    assert refused(lambda: move(trainer_lab, mine, at(0, 3), at(60, 3), "Quinn Qualified", at(0))) == "closed"
    assert refused(lambda: move(trainer_lab, mine, at(160), at(220), "Quinn Qualified", at(0))) == "off_grid"
    assert (
        refused(lambda: move(trainer_lab, mine, at(120, 2), at(390, 2), "Quinn Qualified", at(0)))
        == "too_long"
    )
    assert refused(lambda: move(trainer_lab, mine, at(120), at(180), "Quinn Qualified", at(91))) == "too_late"
    assert refused(lambda: move(trainer_lab, mine, at(120), at(180), "Bea Briefed", at(0))) == "not_yours"
    unchanged = _get(trainer_lab, mine)
    assert (unchanged.starts_at, unchanged.ends_at) == (at(150), at(390))
    assert move(trainer_lab, mine, at(120), at(180), "Tina Trainer", at(100)).starts_at == at(120)


def test_bookings_cancel_reads_the_booking_again_under_the_lock(trainer_lab: Database) -> None:
    """A booking object read before the scheduler released it must not be cancelled (or moved)
    as if it were still booked: the release that came first stands."""
    booking_id = book(trainer_lab, "Quinn Qualified", at(0), at(60), actor="Tina Trainer")
    with trainer_lab.session() as s:
        stale = s.get(Booking, booking_id)
        assert stale is not None and stale.status == BookingStatus.BOOKED
        assert release(trainer_lab, at(15)) == [booking_id]  # in another session, committed
        tina = _person(s, "Tina Trainer")
        assert refused(lambda: bookings.cancel(s, stale, tina, at(16))) == "not_active"
        assert refused(lambda: bookings.move(s, stale, at(120), at(180), tina, at(16))) == "not_active"
    released = _get(trainer_lab, booking_id)
    assert (released.status, released.no_show, released.cancelled_at) == (BookingStatus.RELEASED, True, None)


# -- no-shows --------------------------------------------------------------------------------------


def test_bookings_no_show_released_after_the_policys_minutes(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(0), at(60), actor="Tina Trainer")
    assert release(trainer_lab, at(14, 0) + timedelta(seconds=59)) == []
    assert release(trainer_lab, at(15)) == [booking_id]
    assert release(trainer_lab, at(16)) == []  # once
    released = _get(trainer_lab, booking_id)
    assert (released.status, released.no_show, released.released_at) == (BookingStatus.RELEASED, True, at(15))
    # The freed time can be booked by someone else.
    book(trainer_lab, "Pete Printtrainer", at(30), at(60), actor="Tina Trainer", now=at(16))


def test_bookings_holder_who_tapped_in_is_not_released(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(60), at(120))
    tap_in(trainer_lab, at(70))
    assert release(trainer_lab, at(80)) == []
    assert _get(trainer_lab, booking_id).checked_in_at == at(70)


def test_bookings_check_in_at_the_exact_boundaries(trainer_lab: Database) -> None:
    first = book(trainer_lab, "Quinn Qualified", at(60), at(120))
    second = book(trainer_lab, "Quinn Qualified", at(180), at(240))
    tap_in(trainer_lab, at(120))  # the first's end: not the first one's any more
    assert _get(trainer_lab, first).checked_in_at is None
    tap_in(trainer_lab, at(165))  # the guard time (15 minutes) before the second: an early tap
    assert _get(trainer_lab, second).checked_in_at == at(165)
    third = book(trainer_lab, "Quinn Qualified", at(300), at(330))
    tap_in(trainer_lab, at(300))  # the start itself
    assert _get(trainer_lab, third).checked_in_at == at(300)


def test_bookings_walk_in_running_into_the_booking_counts_as_check_in(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(120), at(180))
    session = tap_in(trainer_lab, at(60))  # a walk-in an hour before, still running
    assert _get(trainer_lab, booking_id).checked_in_at is None
    assert release(trainer_lab, at(135)) == []
    booking = _get(trainer_lab, booking_id)
    assert (booking.status, booking.no_show, booking.checked_in_at) == (BookingStatus.BOOKED, False, at(60))
    with trainer_lab.session() as s:
        assert s.get(MachineSession, session) is not None


def test_bookings_ended_walk_in_does_not_count(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(120), at(180))
    session = tap_in(trainer_lab, at(60))
    with trainer_lab.session() as s:
        s.execute(update(MachineSession).where(MachineSession.id == session).values(ended_at=at(90)))
    assert release(trainer_lab, at(135)) == [booking_id]


def test_bookings_late_offline_session_withdraws_the_no_show(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(60), at(120))
    assert release(trainer_lab, at(75)) == [booking_id]
    tap_in(trainer_lab, at(62), offline=True)  # the Pi was offline; its outbox arrives later
    booking = _get(trainer_lab, booking_id)
    assert (booking.status, booking.no_show, booking.checked_in_at) == (BookingStatus.BOOKED, False, at(62))
    assert booking.released_at is None


def test_bookings_late_session_after_someone_rebooked_keeps_the_release(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(60), at(120))
    assert release(trainer_lab, at(75)) == [booking_id]
    other = book(trainer_lab, "Pete Printtrainer", at(90), at(120), now=at(76))
    tap_in(trainer_lab, at(62), offline=True)
    booking = _get(trainer_lab, booking_id)
    assert (booking.status, booking.no_show) == (BookingStatus.RELEASED, False), "no overlap, not a no-show"
    assert _get(trainer_lab, other).status == BookingStatus.BOOKED


def test_bookings_repeated_no_shows_block_new_bookings(trainer_lab: Database) -> None:
    for day in (0, 1, 2):
        book(trainer_lab, "Quinn Qualified", at(0, day), at(30, day), actor="Tina Trainer")
        assert len(release(trainer_lab, at(15, day))) == 1
    now = at(30, 2)
    with pytest.raises(BookingError) as info:
        book(trainer_lab, "Quinn Qualified", at(60, 5), at(90, 5), now=now)
    # Blocked for 14 days after the last no-show (Friday 20 November, 10:15): until 4 December.
    assert (info.value.code, info.value.params) == ("no_show_block", {"count": 3, "date": date(2026, 12, 4)})
    book(trainer_lab, "Quinn Qualified", at(60, 5), at(90, 5), actor="Tina Trainer", now=now)  # staff may
    book(trainer_lab, "Quinn Qualified", at(60, 16), at(90, 16), now=at(16, 16))  # the block is over


def test_bookings_two_no_shows_do_not_block(trainer_lab: Database) -> None:
    for day in (0, 1):
        book(trainer_lab, "Quinn Qualified", at(0, day), at(30, day), actor="Tina Trainer")
        release(trainer_lab, at(15, day))
    book(trainer_lab, "Quinn Qualified", at(60, 5), at(90, 5), now=at(30, 1))


def test_bookings_cancelled_while_the_holders_session_runs(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(60), at(120))
    session = tap_in(trainer_lab, at(60))
    cancel(trainer_lab, booking_id, "Tina Trainer", at(90))
    with trainer_lab.session() as s:
        running = s.get(MachineSession, session)
        assert running is not None and running.ended_at is None, "the session is not cut"
        assert _machine(s, "printer-1").live_session_id == session
    assert release(trainer_lab, at(100)) == []
    booking = _get(trainer_lab, booking_id)
    assert (booking.status, booking.no_show) == (BookingStatus.CANCELLED, False)


# -- races -----------------------------------------------------------------------------------------


def _together(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released at the same moment; each result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except Exception as exc:  # the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_bookings_race_two_people_one_slot_exactly_one_wins(trainer_lab: Database) -> None:
    with trainer_lab.session() as s:
        quinn, pete, printer = (
            _person(s, "Quinn Qualified"),
            _person(s, "Pete Printtrainer"),
            _machine(s, "printer-1"),
        )

    def attempt(person: Person, start: datetime, ready: threading.Barrier) -> str:
        with trainer_lab.session() as s:  # a session of its own, objects loaded in it
            me, machine = s.get(Person, person.id), s.get(Machine, printer.id)
            assert me is not None and machine is not None
            ready.wait()
            return bookings.create(s, me, machine, start, start + timedelta(minutes=60), me, T).id

    for round_ in range(5):
        start = at(60 * round_)
        ready = threading.Barrier(2)
        results = _together(
            lambda s=start, r=ready: attempt(quinn, s, r), lambda s=start, r=ready: attempt(pete, s, r)
        )
        won = [r for r in results if isinstance(r, str)]
        lost = [r for r in results if isinstance(r, BookingError)]
        assert (len(won), len(lost)) == (1, 1), results
        assert lost[0].code == "taken"
        with trainer_lab.session() as s:
            rows = s.scalars(select(Booking).where(Booking.starts_at == start)).all()
            assert [b.id for b in rows] == won


def test_bookings_lock_timeout_is_taken_not_a_crash(
    trainer_lab: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bookings, "LOCK_TIMEOUT_MS", 200)
    holder = trainer_lab.new_session()
    try:
        bookings.create(
            holder,
            _person(holder, "Quinn Qualified"),
            _machine(holder, "printer-1"),
            at(60),
            at(120),
            _person(holder, "Quinn Qualified"),
            T,
        )  # not committed: it holds the machine's lock
        with trainer_lab.session() as s:
            if s.get_bind().dialect.name == "sqlite":
                s.execute(text("PRAGMA busy_timeout = 200"))
            pete = _person(s, "Pete Printtrainer")
            printer = _machine(s, "printer-1")
            with pytest.raises(BookingError) as info:
                bookings.create(s, pete, printer, at(180), at(240), pete, T)
            assert info.value.code == "taken"
            s.rollback()
            if s.get_bind().dialect.name == "sqlite":
                s.execute(text("PRAGMA busy_timeout = 10000"))
        holder.commit()
    finally:
        holder.close()
    with trainer_lab.session() as s:
        assert len(s.scalars(select(Booking)).all()) == 1


def test_bookings_release_does_not_overwrite_a_check_in_of_the_same_moment(trainer_lab: Database) -> None:
    booking_id = book(trainer_lab, "Quinn Qualified", at(0), at(60), actor="Tina Trainer")
    checking_in = trainer_lab.new_session()
    try:
        with trainer_lab.session() as s:
            printer_id = _machine(s, "printer-1").id
            quinn_id = _person(s, "Quinn Qualified").id
        assert bookings.check_in(checking_in, printer_id, quinn_id, at(14)) is not None
        checking_in.flush()  # written, not committed: the release must wait for it
        results: list[Any] = []
        releaser = threading.Thread(target=lambda: results.append(release(trainer_lab, at(15))))
        releaser.start()
        releaser.join(0.5)
        checking_in.commit()
        releaser.join(30)
    finally:
        checking_in.close()
    assert results == [[]]
    booking = _get(trainer_lab, booking_id)
    assert (booking.status, booking.no_show, booking.checked_in_at) == (BookingStatus.BOOKED, False, at(14))


def test_bookings_staff_see_and_lift_a_no_show_block(trainer_lab: Database) -> None:
    for day in (0, 1, 2):
        book(trainer_lab, "Quinn Qualified", at(0, day), at(30, day), actor="Tina Trainer")
        assert len(release(trainer_lab, at(15, day))) == 1
    now = at(30, 2)
    with trainer_lab.session() as s:
        site_id = _person(s, "Quinn Qualified").site_id
        blocked = bookings.blocked_people(s, site_id, now)
        assert [(b.person.name, b.no_shows, b.until) for b in blocked] == [
            ("Quinn Qualified", 3, at(15, 2) + timedelta(days=14))
        ]
        quinn = _person(s, "Quinn Qualified")
        # Nobody lifts their own block, and a participant lifts nobody's.
        assert refused(lambda: bookings.lift_block(s, quinn, quinn, now)) == "not_staff"
        bookings.lift_block(s, quinn, _person(s, "Tina Trainer"), now)
        s.commit()
    with trainer_lab.session() as s:
        assert bookings.blocked_people(s, site_id, now) == []
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "booking.block_lifted"))
        assert entry is not None and entry.subject == f"person:{_person(s, 'Quinn Qualified').id}"
        assert entry.detail["no_shows"] == 3 and entry.actor_label.startswith("Tina Trainer")
        assert (
            refused(
                lambda: bookings.lift_block(s, _person(s, "Quinn Qualified"), _person(s, "Tina Trainer"), now)
            )
            == "not_blocked"
        )
    book(trainer_lab, "Quinn Qualified", at(60, 5), at(90, 5), now=now)  # may book again at once
    # The no-shows before the lift no longer count: two more (Monday's, Tuesday's) do not block.
    book(trainer_lab, "Quinn Qualified", at(0, 6), at(30, 6), actor="Tina Trainer", now=now)
    assert len(release(trainer_lab, at(15, 6))) == 2
    book(trainer_lab, "Quinn Qualified", at(60, 7), at(90, 7), now=at(16, 6))
