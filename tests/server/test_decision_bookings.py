"""The decision and bookings: only the holder (or a trainer of the type) during a booking, walk-ins
until the next booking, the exact boundaries, the guard time, cancelled bookings, the cache.

A hand-moved clock (Wed 2026-11-18, 10:00 in Berlin). On the laser, Quinn holds the bookings and
Pete (independent on the laser, a trainer only on printers) is the other qualified person; Tina is
a trainer of both types.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from server.db import Database
from server.models import Booking, BookingStatus, Machine, Person
from server.services import bookings
from server.services.decision import AccessResult, Decider, Tap, decide
from tests.conftest import PETE, TINA

QUINN = "04A224B2C35E80"
T = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)  # the `clock` fixture's now: 10:00 in Berlin


def at(minutes: float) -> datetime:
    """``minutes`` after 10:00 Berlin (09:00 UTC)."""
    return T + timedelta(minutes=minutes)


def _person(s: object, name: str) -> Person:
    found = s.scalar(select(Person).where(Person.name == name))  # type: ignore[attr-defined]
    assert found is not None
    return found  # type: ignore[no-any-return]


def _book(
    db: Database,
    name: str,
    start: datetime,
    end: datetime,
    machine: str = "laser-1",
    status: BookingStatus = BookingStatus.BOOKED,
) -> str:
    """A booking row as the booking service leaves it (the rule checks are not the point here)."""
    with db.session() as s:
        m = s.scalar(select(Machine).where(Machine.slug == machine))
        assert m is not None
        booking = Booking(
            machine_id=m.id, person_id=_person(s, name).id, starts_at=start, ends_at=end, status=status
        )
        s.add(booking)
        s.execute(update(Machine).where(Machine.id == m.id).values(booking_seq=Machine.booking_seq + 1))
        s.flush()
        return booking.id


def _decide(db: Database, uid: str, now: datetime, machine: str = "laser-1") -> AccessResult:
    with db.session() as s:
        m = s.scalar(select(Machine).where(Machine.slug == machine))
        assert m is not None
        return decide(s, m, uid, now)


def test_decision_bookings_holder_gets_until_the_end_of_their_booking(trainer_lab: Database) -> None:
    _book(trainer_lab, "Quinn Qualified", at(0), at(60))
    decision = _decide(trainer_lab, QUINN, at(30))
    assert (decision.allowed, decision.reason) == (True, "ok")
    assert decision.until == at(60) and decision.until_booking


def test_decision_bookings_other_person_is_told_when_back_to_back_bookings_end(trainer_lab: Database) -> None:
    _book(trainer_lab, "Quinn Qualified", at(0), at(60))
    _book(trainer_lab, "Tina Trainer", at(60), at(120))  # back to back
    _book(trainer_lab, "Quinn Qualified", at(150), at(180))  # after a gap: free in between
    decision = _decide(trainer_lab, PETE, at(30))
    assert (decision.allowed, decision.reason) == (False, "booked_by_other")
    assert decision.until is None and decision.session_id is None
    assert decision.message["en"].startswith("This machine is booked. It is free again at ")
    assert decision.message["de"].startswith("Diese Maschine ist gebucht. Wieder frei ab ")
    # 11:00 UTC is 12:00 in Berlin: the end of Tina's booking, in each reader's clock format.
    assert decision.message["en"].endswith("12:00\u202fPM.")
    assert decision.message["de"].endswith("12:00.")


def test_decision_bookings_trainer_of_the_type_is_exempt(trainer_lab: Database) -> None:
    _book(trainer_lab, "Quinn Qualified", at(0), at(60))
    _book(trainer_lab, "Quinn Qualified", at(0), at(60), machine="printer-1")
    tina = _decide(trainer_lab, TINA, at(30))
    assert tina.allowed and tina.trainer_here and not tina.until_booking
    assert tina.until == at(30 + 120), "the laser's maximum session, not the booking"
    # Pete trains on printers, not on the laser: exempt on one, refused on the other.
    assert _decide(trainer_lab, PETE, at(30), machine="printer-1").allowed
    assert _decide(trainer_lab, PETE, at(30)).reason == "booked_by_other"


def test_decision_bookings_walk_in_before_a_booking_lasts_until_it_starts(trainer_lab: Database) -> None:
    _book(trainer_lab, "Quinn Qualified", at(60), at(120))
    walk_in = _decide(trainer_lab, PETE, at(10))
    assert walk_in.allowed and walk_in.until == at(60) and walk_in.until_booking
    assert walk_in.message["en"].startswith("Hello Pete! Unlocked until ")
    assert walk_in.message["en"].endswith(": then the machine is booked. Tap again when you are done.")
    assert "Dann ist die Maschine gebucht." in walk_in.message["de"]
    holder = _decide(trainer_lab, QUINN, at(60))
    assert "booked" not in holder.message["en"], "the holder's own booking: the usual greeting"
    # A booking after the machine's maximum session changes nothing.
    early = _decide(trainer_lab, PETE, at(-70))
    assert early.allowed and early.until == at(50) and not early.until_booking


def test_decision_bookings_tap_at_the_exact_booking_boundary(trainer_lab: Database) -> None:
    _book(trainer_lab, "Quinn Qualified", at(60), at(120))
    # now == starts_at: the booking's time, the holder's only.
    assert _decide(trainer_lab, PETE, at(60)).reason == "booked_by_other"
    holder = _decide(trainer_lab, QUINN, at(60))
    assert holder.allowed and holder.until == at(120) and holder.until_booking
    # One moment before: a walk-in, until the booking starts.
    before = _decide(trainer_lab, PETE, at(60) - timedelta(seconds=1))
    assert before.allowed and before.until == at(60) and before.until_booking
    # now == ends_at: free for everyone, the booking no longer limits anyone.
    after = _decide(trainer_lab, PETE, at(120))
    assert after.allowed and after.until == at(240) and not after.until_booking
    again = _decide(trainer_lab, QUINN, at(120))
    assert again.allowed and again.until == at(240) and not again.until_booking


def test_decision_bookings_holder_early_tap_in_the_guard_time(trainer_lab: Database) -> None:
    _book(trainer_lab, "Quinn Qualified", at(60), at(120))  # guard time: 15 minutes
    early = _decide(trainer_lab, QUINN, at(50))
    assert early.allowed and early.until == at(120) and early.until_booking
    # Before the guard time, the booking does not end the session (it is not hers yet).
    before = _decide(trainer_lab, QUINN, at(40))
    assert before.allowed and before.until == at(40 + 120) and not before.until_booking


@pytest.mark.parametrize("status", [BookingStatus.CANCELLED, BookingStatus.RELEASED])
def test_decision_bookings_cancelled_or_released_booking_no_longer_blocks(
    trainer_lab: Database, status: BookingStatus
) -> None:
    _book(trainer_lab, "Quinn Qualified", at(0), at(60), status=status)
    decision = _decide(trainer_lab, PETE, at(30))
    assert decision.allowed and decision.until == at(150) and not decision.until_booking


def test_decision_bookings_decider_sees_a_new_booking_at_once(trainer_lab: Database, clock) -> None:
    """A booking made through the booking service (its rules: Quinn is qualified, 10:30-11:30 Berlin
    is in the opening hours) bumps the machine's booking_seq: the bridge's cache reads afresh."""
    decider = Decider()

    def tap(uid: str, now: datetime) -> tuple[bool, str, datetime | None]:
        with trainer_lab.engine.begin() as conn:
            (result,) = decider.decide(conn, [Tap("pi-laser-1", uid)], now)
        assert not isinstance(result, Exception)
        verdict = result[1]
        return verdict.allowed, verdict.reason, verdict.until

    assert tap(PETE, clock()) == (True, "ok", at(120))
    assert tap(PETE, clock()) == (True, "ok", at(120)), "from the cache"
    with trainer_lab.session() as s:
        quinn = _person(s, "Quinn Qualified")
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert laser is not None
        bookings.create(s, quinn, laser, at(30), at(90), actor=quinn, now=clock())
    assert tap(PETE, clock()) == (True, "ok", at(30)), "a walk-in until Quinn's booking"
    assert tap(PETE, at(30)) == (False, "booked_by_other", None)
    assert tap(QUINN, at(30)) == (True, "ok", at(90))
    with trainer_lab.session() as s:
        booking = s.scalar(select(Booking))
        assert booking is not None
        bookings.cancel(s, booking, _person(s, "Tina Trainer"), clock())  # staff: past the deadline
    assert tap(PETE, at(30)) == (True, "ok", at(150)), "the cancellation too, at once"
