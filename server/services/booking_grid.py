"""The booking grid: what one machine's slots are on some days, for the booking pages.

Loads what a grid needs for a machine and a span of days (its opening hours, else the site's,
closed days, bookings, the site's policy) and says, slot by slot, whether it is closed, booked,
the viewer's own, past, not bookable yet or free, and which lengths a booking from a start may
have. The grid only *shows* what is free; whether a booking may be made is the answer of
:mod:`server.services.bookings`. The pages (``server/adapters/web/bookings.py``) turn a :class:`Slot`
into words and links.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from server.models import Booking, ClosedDay, Machine, MachineStatus, OpeningHours
from server.services import opening_hours
from server.services.bookings import Policy, active, policy_for

# Days without opening hours are open all day (the service's rule); the grid then shows these.
DEFAULT_DAY = (time(8, 0), time(20, 0))

SlotState = Literal["free", "mine", "booked", "past", "closed", "later"]


@dataclass
class Slot:
    """One slot of one machine as the grid sees it; ``booking`` is set for ``mine``/``booked``."""

    state: SlotState
    start: datetime
    booking: Booking | None = None
    first: bool = True  # the first slot of a booking carries its label


@dataclass
class MachineDays:
    """What one machine's grid needs for some days: hours, closed days, bookings, policy."""

    machine: Machine
    tz: ZoneInfo
    policy: Policy
    step: int
    hours: list[OpeningHours]
    closed: set[date]
    bookings: list[Booking] = field(default_factory=list)

    @classmethod
    def load(cls, db: Session, machine: Machine, first: date, last: date) -> MachineDays:
        tz = ZoneInfo(machine.site.timezone)
        policy = policy_for(db, machine.site_id)
        hours = opening_hours.machine_hours(db, machine)
        closed = set(
            db.scalars(
                select(ClosedDay.day).where(
                    ClosedDay.site_id == machine.site_id,
                    ClosedDay.day >= first,
                    ClosedDay.day <= last,
                    or_(ClosedDay.machine_id.is_(None), ClosedDay.machine_id == machine.id),
                )
            )
        )
        start = datetime.combine(first, time(0), tzinfo=tz)
        end = datetime.combine(last + timedelta(days=1), time(0), tzinfo=tz)
        found = active(db, [machine.id], start, end)
        step = policy.slot_step_min if policy.slot_step_min > 0 else policy.min_slot_min or 30
        return cls(machine, tz, policy, step, hours, closed, found)

    def intervals(self, day: date) -> list[tuple[int, int]]:
        """The day's opening hours as minutes after midnight (none: closed)."""
        if day in self.closed:
            return []
        if not self.hours:
            return [(minutes_of(DEFAULT_DAY[0]), minutes_of(DEFAULT_DAY[1]))]
        return sorted(
            (minutes_of(h.opens), minutes_of(h.closes) or 24 * 60)
            for h in self.hours
            if h.weekday == day.weekday()
        )

    def slot_minutes(self, day: date) -> list[int]:
        return [m for a, b in self.intervals(day) for m in range(a, b - self.step + 1, self.step)]

    def closes_after(self, start: datetime) -> datetime | None:
        """When the opening interval holding ``start`` ends (None: not inside one)."""
        local = start.astimezone(self.tz)
        minute = local.hour * 60 + local.minute
        for a, b in self.intervals(local.date()):
            if a <= minute < b:
                return datetime.combine(local.date(), time(0), tzinfo=self.tz) + timedelta(minutes=b)
        return None

    def slot(
        self,
        day: date,
        minute: int,
        viewer_id: int,
        staff: bool,
        now: datetime,
        moving: Booking | None,
    ) -> Slot:
        """The slot of ``day`` starting ``minute`` after midnight, as ``viewer_id`` sees it
        (``moving``: a booking being moved, whose own time counts as free)."""
        start = datetime.combine(day, time(0), tzinfo=self.tz) + timedelta(minutes=minute)
        end = start + timedelta(minutes=self.step)
        if not any(a <= minute and minute + self.step <= b for a, b in self.intervals(day)):
            return Slot("closed", start)
        for b in self.bookings:
            if b.starts_at < end and b.ends_at > start and (moving is None or b.id != moving.id):
                first = b.starts_at >= start
                return Slot("mine" if b.person_id == viewer_id else "booked", start, b, first)
        if start < now + timedelta(minutes=0 if staff else self.policy.min_lead_min):
            return Slot("past", start)
        if self.machine.status != MachineStatus.AVAILABLE:
            return Slot("closed", start)
        if not staff and start > now + timedelta(days=self.policy.max_ahead_days):
            return Slot("later", start)
        return Slot("free", start)

    def durations(self, start: datetime, exclude: Booking | None) -> list[int]:
        """Lengths in minutes the policy allows from ``start``, up to the next booking (other
        than ``exclude``) and the closing time."""
        policy = self.policy
        limit = start + timedelta(minutes=policy.max_slot_min)
        closes = self.closes_after(start)
        if closes is not None:
            limit = min(limit, closes)
        for b in self.bookings:
            if exclude is not None and b.id == exclude.id:
                continue
            if b.ends_at > start:
                limit = min(limit, max(b.starts_at, start))
        out = []
        minutes = max(policy.min_slot_min, self.step)
        while start + timedelta(minutes=minutes) <= limit:
            out.append(minutes)
            minutes += self.step
        return out


def minutes_of(t: time) -> int:
    return t.hour * 60 + t.minute


def union(minute_lists: Iterable[list[int]]) -> list[int]:
    """The rows of a grid over several days or machines: every slot start any of them has."""
    return sorted({m for minutes in minute_lists for m in minutes})


def site_machines(db: Session, site_id: int) -> list[Machine]:
    """The machines of a site a person can book or see bookings of (not disabled), by name."""
    return list(
        db.scalars(
            select(Machine)
            .where(Machine.site_id == site_id, Machine.status != MachineStatus.DISABLED)
            .order_by(Machine.name)
        )
    )
