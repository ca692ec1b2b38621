"""Bookings as iCalendar (RFC 5545) feeds: whose token opens a feed, which bookings a feed
holds, and the calendar text. The routes (``server/adapters/web/calendar_feeds.py``) choose the words.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from icalendar import Calendar, Event
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from server.models import Booking, BookingStatus, Machine, Person
from server.services import bookings

# A feed shows the last two months and what is ahead, at most this many bookings.
FEED_PAST_DAYS = 60
FEED_LIMIT = 500


def person_by_token(db: Session, token: str) -> Person | None:
    """The active person whose calendar link ends in ``token`` (None: no such link)."""
    if not token or len(token) > 64:
        return None
    person = db.scalar(select(Person).where(Person.calendar_token == token))
    if person is None or not person.active:
        return None
    return person


def person_bookings(db: Session, person: Person, now: datetime) -> list[Booking]:
    return bookings.of_person(db, person.id, now - timedelta(days=FEED_PAST_DAYS), limit=FEED_LIMIT)


def machine_bookings(db: Session, machine: Machine, now: datetime) -> list[Booking]:
    return list(
        db.scalars(
            select(Booking)
            .where(
                Booking.machine_id == machine.id,
                Booking.ends_at > now - timedelta(days=FEED_PAST_DAYS),
            )
            .options(selectinload(Booking.person))
            .order_by(Booking.starts_at)
            .limit(FEED_LIMIT)
        )
    )


def calendar(name: str, events: Sequence[Booking], summary: Callable[[Booking], str], now: datetime) -> bytes:
    """The feed's iCalendar text: one event per booking (a cancelled or released one as
    ``CANCELLED``, so calendar apps drop it)."""
    cal = Calendar()
    cal.add("prodid", "-//Werkbank//Bookings//EN")
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    cal.add("x-wr-calname", name)
    for b in events:
        event = Event()
        event.add("uid", b.id)
        event.add("dtstamp", now)
        event.add("dtstart", b.starts_at.astimezone(UTC))
        event.add("dtend", b.ends_at.astimezone(UTC))
        event.add("summary", summary(b))
        event.add("location", f"{b.machine.name}, {b.machine.site.name}")
        event.add("status", "CONFIRMED" if b.status == BookingStatus.BOOKED else "CANCELLED")
        cal.add_component(event)
    return bytes(cal.to_ical())
