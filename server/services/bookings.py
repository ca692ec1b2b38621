"""Bookings: reserve a machine for a time, cancel, move, release no-shows.

The one place that writes bookings; the web pages, the JSON API and the scheduler call it
with the database session they opened, and commit themselves. The decision reads bookings
on its own (``decision.py``): during a booking only its holder (or a trainer of the machine
type) is let in; a walk-in before a booking is let in only until the booking starts.

Rules (our choices where the issue left room are marked *):

* A person may book a machine only if the decision would let them use it then (qualified,
  valid on the booking's day), or, for a *supervised booking*, with a trainer of the machine
  type named on the booking and the person at least briefed.
* No overlaps per machine. Two people booking one slot at once: each booking transaction
  first bumps the machine's ``booking_seq`` (a row write, so SQLite's write lock or
  PostgreSQL's row lock serialises them); the second sees the first's booking and is refused.
* Inside the opening hours of the machine (or its site) on a day that is not closed.
* Slot length between the policy's minimum and maximum, on its grid (``slot_step_min``)*.
* A weekly quota of booked hours per person (ISO week of the booking, in the site's time
  zone), from the person's cohort quota or else the site's.
* Lead time: at least ``min_lead_min`` before the start*, at most ``max_ahead_days`` ahead*.
* Cancel or move until ``cancel_deadline_min`` before the start (staff at any time)*.
* ``no_show_limit`` no-shows within ``no_show_window_days`` block new bookings for
  ``no_show_block_days`` after the last one*.

Every change is in the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import (
    Booking,
    BookingPolicy,
    BookingStatus,
    ClosedDay,
    CohortQuota,
    Level,
    LocalName,
    Machine,
    MachineSession,
    Notification,
    Person,
)
from server.services import audit, notifications, opening_hours, qualifications, training
from server.services.decision import load_requirements


class BookingError(ValueError):
    """A booking the rules refuse. ``message`` is a translatable template (``N_``) with
    ``{name}`` placeholders filled from ``params`` in the reader's language."""

    def __init__(self, code: str, message: str, **params: Any) -> None:
        self.code = code
        self.message = message
        self.params = params
        super().__init__(f"{code}: {message.format(**{k: str(v) for k, v in params.items()})}")


@dataclass(frozen=True)
class Policy:
    min_slot_min: int = 30
    max_slot_min: int = 240
    slot_step_min: int = 30
    min_lead_min: int = 0
    max_ahead_days: int = 14
    cancel_deadline_min: int = 60
    weekly_quota_h: float = 8.0
    no_show_after_min: int = 15
    no_show_limit: int = 3
    no_show_window_days: int = 30
    no_show_block_days: int = 14
    reminder_before_min: int = 60


POLICY_FIELDS = tuple(Policy.__dataclass_fields__)


def policy_for(db: Session, site_id: int) -> Policy:
    row = db.scalar(select(BookingPolicy).where(BookingPolicy.site_id == site_id))
    if row is None:
        return Policy()
    return Policy(**{name: getattr(row, name) for name in POLICY_FIELDS})


def weekly_quota(db: Session, person: Person, policy: Policy) -> float:
    if person.cohort:
        found = db.scalar(
            select(CohortQuota.weekly_hours).where(
                CohortQuota.site_id == person.site_id, CohortQuota.cohort == person.cohort
            )
        )
        if found is not None:
            return float(found)
    return policy.weekly_quota_h


# -- reading ---------------------------------------------------------------------------------------


def active(db: Session, machine_ids: Sequence[int], start: datetime, end: datetime) -> list[Booking]:
    """Booked (not cancelled or released) bookings of these machines overlapping [start, end)."""
    if not machine_ids:
        return []
    return list(
        db.scalars(
            select(Booking)
            .where(
                Booking.machine_id.in_(machine_ids),
                Booking.status == BookingStatus.BOOKED,
                Booking.starts_at < end,
                Booking.ends_at > start,
            )
            .order_by(Booking.starts_at)
        )
    )


def of_person(db: Session, person_id: int, since: datetime, limit: int = 100) -> list[Booking]:
    return list(
        db.scalars(
            select(Booking)
            .where(Booking.person_id == person_id, Booking.ends_at > since)
            .order_by(Booking.starts_at)
            .limit(limit)
        )
    )


def booked_hours_in_week(
    db: Session, person_id: int, day: date, tz: ZoneInfo, exclude: str | None = None
) -> float:
    monday = day - timedelta(days=day.weekday())
    start = datetime.combine(monday, time(0), tzinfo=tz)
    end = start + timedelta(days=7)
    query = select(Booking).where(
        Booking.person_id == person_id,
        Booking.status == BookingStatus.BOOKED,
        Booking.starts_at < end,
        Booking.ends_at > start,
    )
    if exclude is not None:
        query = query.where(Booking.id != exclude)
    return sum(b.hours for b in db.scalars(query))


def _block_until(
    released: Sequence[datetime], policy: Policy, now: datetime, lifted_at: datetime | None
) -> tuple[datetime, int] | None:
    """The no-show rule: ``no_show_limit`` no-shows released within ``no_show_window_days`` (and
    after staff last lifted a block) block new bookings for ``no_show_block_days`` after the
    last one. (Until when, how many counted), or None: not blocked."""
    since = now - timedelta(days=policy.no_show_window_days)
    counted = sorted(t for t in released if t >= since and (lifted_at is None or t > lifted_at))
    if policy.no_show_limit <= 0 or len(counted) < policy.no_show_limit:
        return None
    until = counted[-1] + timedelta(days=policy.no_show_block_days)
    return (until, len(counted)) if until > now else None


def _released_no_shows(db: Session, person_ids: Sequence[int], since: datetime) -> dict[int, list[datetime]]:
    found: dict[int, list[datetime]] = {}
    rows = db.execute(
        select(Booking.person_id, Booking.released_at).where(
            Booking.person_id.in_(person_ids), Booking.no_show.is_(True), Booking.released_at >= since
        )
    )
    for person_id, released_at in rows:
        if released_at is not None:
            found.setdefault(person_id, []).append(released_at)
    return found


def no_show_block(db: Session, person_id: int, policy: Policy, now: datetime) -> datetime | None:
    """Until when the person may not book because of repeated no-shows (None: may book)."""
    lifted_at = db.scalar(select(Person.no_show_block_lifted_at).where(Person.id == person_id))
    since = now - timedelta(days=policy.no_show_window_days)
    released = _released_no_shows(db, [person_id], since).get(person_id, [])
    block = _block_until(released, policy, now, lifted_at)
    return block[0] if block is not None else None


@dataclass(frozen=True)
class NoShowBlock:
    """A person who may not book for now: how many no-shows counted, the last one, until when."""

    person: Person
    no_shows: int
    last: datetime
    until: datetime


def blocked_people(db: Session, site_id: int, now: datetime) -> list[NoShowBlock]:
    """Everyone of the site blocked from booking by repeated no-shows, soonest free last."""
    policy = policy_for(db, site_id)
    since = now - timedelta(days=policy.no_show_window_days)
    candidates = select(Booking.person_id).where(Booking.no_show.is_(True), Booking.released_at >= since)
    people = {
        p.id: p
        for p in db.scalars(select(Person).where(Person.site_id == site_id, Person.id.in_(candidates)))
    }
    released = _released_no_shows(db, list(people), since)
    out = []
    for person_id, times in released.items():
        person = people[person_id]
        block = _block_until(times, policy, now, person.no_show_block_lifted_at)
        if block is not None:
            out.append(NoShowBlock(person, block[1], max(times), block[0]))
    return sorted(out, key=lambda b: (-b.until.timestamp(), b.person.name))


def lift_block(db: Session, person: Person, actor: Person, now: datetime) -> NoShowBlock:
    """Staff let a blocked person book again at once (audited). The no-shows stay recorded (the
    dashboards and reports count them); they just no longer count towards a block."""
    if not (actor.is_admin or actor.is_trainer) or actor.id == person.id:
        raise BookingError("not_staff", N_("Only trainers and admins can lift someone else's block."))
    if not training.serves(actor, person):
        raise BookingError("not_staff", N_("This person belongs to another site. Ask a trainer there."))
    policy = policy_for(db, person.site_id)
    since = now - timedelta(days=policy.no_show_window_days)
    times = _released_no_shows(db, [person.id], since).get(person.id, [])
    block = _block_until(times, policy, now, person.no_show_block_lifted_at)
    if block is None:
        raise BookingError("not_blocked", N_("{person} is not blocked."), person=person.name)
    person.no_show_block_lifted_at = now
    lifted = NoShowBlock(person, block[1], max(times), block[0])
    audit.record(
        db,
        actor,
        "booking.block_lifted",
        f"person:{person.id}",
        {
            "person": person.name,
            "no_shows": lifted.no_shows,
            "until": lifted.until.astimezone(UTC).isoformat(),
        },
        at=now,
    )
    db.flush()
    return lifted


def is_open(db: Session, machine: Machine, start: datetime, end: datetime) -> bool:
    """Is [start, end) inside the opening hours of one day that is not closed?

    No opening hours at all (neither the machine's nor its site's) means always open.
    """
    tz = ZoneInfo(machine.site.timezone)
    local_start, local_end = start.astimezone(tz), end.astimezone(tz)
    day = local_start.date()
    closed = db.scalar(
        select(func.count(ClosedDay.id)).where(
            ClosedDay.site_id == machine.site_id,
            ClosedDay.day == day,
            (ClosedDay.machine_id.is_(None)) | (ClosedDay.machine_id == machine.id),
        )
    )
    if closed:
        return False
    hours = opening_hours.machine_hours(db, machine)
    if not hours:
        return True
    for h in hours:
        if h.weekday != day.weekday():
            continue
        opens = datetime.combine(day, h.opens, tzinfo=tz)
        closes = datetime.combine(day, h.closes, tzinfo=tz)
        if opens <= local_start and local_end <= closes:
            return True
    return False


def booking_eligibility(
    db: Session,
    machine: Machine,
    person: Person,
    trainer: Person | None,
    day: date,
    reader: Person | None = None,
) -> BookingError | None:
    """Would the decision let ``person`` use ``machine`` on ``day``? (None: yes.)

    Alone: every competency the machine type requires, valid on that day, at its level.
    With a trainer (a supervised booking): the trainer holds each at trainer level and the
    person is at least briefed, as at the machine. The refusal speaks to ``reader`` (who
    asked): "you" when they book for themselves, the person's name when staff book for them.
    """
    reqs = load_requirements(db, machine.machine_type_id)
    machine_name = machine.machine_type.local_name
    yours = reader is None or reader.id == person.id
    if trainer is not None:
        refusal = _supervisor_refusal(db, reqs, machine_name, trainer, person, day)
        if refusal is not None:
            return refusal
    for req in reqs:
        state = qualifications.state_of(qualifications.newest(db, person.id, req.competency_id), day)
        competency = LocalName(req.competency_name, req.competency_name_de)
        if state is None or state.level is None or state.revoked:
            if trainer is not None:
                return BookingError(
                    "briefing_required",
                    N_("You need the safety briefing for the {machine} first. Ask a trainer.")
                    if yours
                    else N_("{person} needs the safety briefing for the {machine} first."),
                    person=person.name,
                    machine=machine_name,
                )
            return BookingError(
                "not_qualified",
                N_("You are not trained on the {machine} yet. Ask a trainer for a briefing.")
                if yours
                else N_("{person} is not trained on the {machine} yet. Ask a trainer for a briefing."),
                person=person.name,
                machine=machine_name,
            )
        if state.expired:
            return BookingError(
                "qualification_expired",
                N_("Your {competency} is no longer valid on that day. Ask a trainer to renew it.")
                if yours
                else N_("{competency} is no longer valid on that day. Ask a trainer to renew it."),
                person=person.name,
                competency=competency,
            )
        if trainer is None and state.level.rank < Level(req.min_level).rank:
            return BookingError(
                "trainer_required",
                N_("You may use the {machine} only with a trainer. Ask a trainer to book it with you.")
                if yours
                else N_("{person} may use the {machine} only with a trainer. Book together with a trainer."),
                person=person.name,
                machine=machine_name,
            )
    return None


def _supervisor_refusal(
    db: Session, reqs: Sequence[Any], machine_name: LocalName, trainer: Person, person: Person, day: date
) -> BookingError | None:
    """May ``trainer`` supervise ``person`` on a machine with these requirements on ``day``?"""
    if trainer.id == person.id or not (trainer.active and trainer.is_trainer):
        return BookingError(
            "trainer_invalid", N_("{trainer} cannot supervise this booking."), trainer=trainer.name
        )
    for req in reqs:
        state = qualifications.state_of(qualifications.newest(db, trainer.id, req.competency_id), day)
        if state is None or not state.usable or state.level != Level.TRAINER:
            return BookingError(
                "trainer_invalid",
                N_("{trainer} is not a trainer for the {machine}."),
                trainer=trainer.name,
                machine=machine_name,
            )
    return None


def supervisors(db: Session, machine: Machine, person: Person, day: date) -> list[Person]:
    """The trainers of the machine's site who may supervise ``person`` on it on ``day``: those a
    supervised booking would accept."""
    reqs = load_requirements(db, machine.machine_type_id)
    machine_name = LocalName(machine.machine_type.name, machine.machine_type.name_de)
    trainers = db.scalars(
        select(Person)
        .where(Person.site_id == machine.site_id, Person.active.is_(True), Person.is_trainer.is_(True))
        .order_by(Person.name)
    )
    return [t for t in trainers if _supervisor_refusal(db, reqs, machine_name, t, person, day) is None]


def block_refusal(db: Session, person: Person, now: datetime) -> BookingError | None:
    """The refusal a person blocked for repeated no-shows meets (None: not blocked)."""
    policy = policy_for(db, person.site_id)
    blocked = no_show_block(db, person.id, policy, now)
    if blocked is None:
        return None
    return BookingError(
        "no_show_block",
        N_("You missed {count} bookings. You can book again from {date}."),
        count=policy.no_show_limit,
        date=blocked.astimezone(ZoneInfo(person.site.timezone)).date(),
    )


# -- writing ---------------------------------------------------------------------------------------


# How long a booking waits for another one on the same machine to commit (PostgreSQL; SQLite
# waits its busy timeout). Longer means the other transaction is stuck: refuse, never hang.
LOCK_TIMEOUT_MS = 5000

TAKEN = N_("This time was just booked by someone else. Please choose another.")


def _lock_machine(db: Session, machine_id: int) -> None:
    """First write of every booking transaction: serialises booking changes per machine.

    A lock we cannot get in time (another booking of this machine holds it) is a
    :class:`BookingError` ``taken``: the caller rolls back, nothing changed.
    """
    try:
        if db.get_bind().dialect.name == "postgresql":
            db.execute(text(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}"))
        db.execute(
            update(Machine).where(Machine.id == machine_id).values(booking_seq=Machine.booking_seq + 1)
        )
    except OperationalError as exc:  # SQLite "database is locked", PostgreSQL lock_not_available
        raise BookingError("taken", TAKEN) from exc


def _check(
    db: Session,
    person: Person,
    machine: Machine,
    starts_at: datetime,
    ends_at: datetime,
    actor: Person,
    now: datetime,
    trainer: Person | None,
    exclude: str | None = None,
) -> None:
    if starts_at.tzinfo is None or ends_at.tzinfo is None:
        raise ValueError("booking times must be aware")
    policy = policy_for(db, machine.site_id)
    staff = actor.is_admin or actor.is_trainer
    tz = ZoneInfo(machine.site.timezone)
    length_min = (ends_at - starts_at).total_seconds() / 60
    if ends_at <= starts_at:
        raise BookingError("bad_times", N_("The end must be after the start."))
    if not person.active:
        raise BookingError(
            "person_inactive",
            N_("Your account is not active. Please ask at the front desk.")
            if actor.id == person.id
            else N_("{person} is not active."),
            person=person.name,
        )
    if length_min < policy.min_slot_min:
        raise BookingError(
            "too_short", N_("A booking lasts at least {minutes} minutes."), minutes=policy.min_slot_min
        )
    if length_min > policy.max_slot_min:
        raise BookingError(
            "too_long", N_("A booking lasts at most {minutes} minutes."), minutes=policy.max_slot_min
        )
    step = policy.slot_step_min
    local = starts_at.astimezone(tz)
    if step > 0 and ((local.hour * 60 + local.minute) % step or local.second or length_min % step):
        raise BookingError(
            "off_grid", N_("Bookings start and end on the {minutes}-minute grid."), minutes=step
        )
    if starts_at < now + timedelta(minutes=policy.min_lead_min) and not staff:
        if starts_at < now:
            raise BookingError("in_the_past", N_("This time has passed. Please choose a later one."))
        raise BookingError(
            "lead_time", N_("Book at least {minutes} minutes ahead."), minutes=policy.min_lead_min
        )
    if starts_at < now - timedelta(minutes=step or 1):
        raise BookingError("in_the_past", N_("This time has passed. Please choose a later one."))
    if starts_at > now + timedelta(days=policy.max_ahead_days) and not staff:
        raise BookingError(
            "too_far_ahead", N_("You can book at most {days} days ahead."), days=policy.max_ahead_days
        )
    if machine.status.value != "available":
        raise BookingError("machine_unavailable", N_("This machine cannot be booked now."))
    if not is_open(db, machine, starts_at, ends_at):
        raise BookingError(
            "closed", N_("The lab is closed at that time. Please choose a time in the opening hours.")
        )
    refusal = booking_eligibility(db, machine, person, trainer, starts_at.astimezone(tz).date(), actor)
    if refusal is not None:
        raise refusal
    if not staff:
        blocked = block_refusal(db, person, now)
        if blocked is not None:
            raise blocked
        quota = weekly_quota(db, person, policy)
        used = booked_hours_in_week(db, person.id, local.date(), tz, exclude=exclude)
        if used + length_min / 60 > quota + 1e-9:
            raise BookingError(
                "quota",
                N_("This week you have {used} of {quota} hours booked. This booking does not fit."),
                used=f"{used:g}",
                quota=f"{quota:g}",
            )
    clash = [b for b in active(db, [machine.id], starts_at, ends_at) if b.id != exclude]
    if clash:
        first = clash[0]
        raise BookingError(
            "taken",
            N_("This time is already booked ({start} to {end}). Please choose another."),
            start=first.starts_at.astimezone(tz),
            end=first.ends_at.astimezone(tz),
        )


def precheck(
    db: Session,
    person: Person,
    machine: Machine,
    starts_at: datetime,
    ends_at: datetime,
    actor: Person,
    now: datetime,
    *,
    trainer: Person | None = None,
    exclude: str | None = None,
) -> BookingError | None:
    """What :func:`create` (or :func:`move`, with ``exclude``) would refuse now, without booking:
    for pages that show a refusal before the person taps "Book"."""
    try:
        _check(db, person, machine, starts_at, ends_at, actor, now, trainer, exclude)
    except BookingError as refused:
        return refused
    return None


def create(
    db: Session,
    person: Person,
    machine: Machine,
    starts_at: datetime,
    ends_at: datetime,
    actor: Person,
    now: datetime,
    *,
    trainer: Person | None = None,
    note: str | None = None,
) -> Booking:
    """Book ``machine`` for ``person``. Participants book for themselves; staff for anyone."""
    if actor.id != person.id and not (actor.is_admin or actor.is_trainer):
        raise BookingError("not_yours", N_("You can only book for yourself."))
    _lock_machine(db, machine.id)
    _check(db, person, machine, starts_at, ends_at, actor, now, trainer)
    booking = Booking(
        machine_id=machine.id,
        person_id=person.id,
        trainer_id=trainer.id if trainer else None,
        starts_at=starts_at,
        ends_at=ends_at,
        note=(note or "").strip() or None,
        created_at=now,
        created_by_id=actor.id,
    )
    db.add(booking)
    db.flush()
    audit.record(
        db, actor, "booking.create", f"booking:{booking.id}", _detail(booking, machine, person), at=now
    )
    return booking


def _may_change(booking: Booking, actor: Person, now: datetime) -> None:
    if actor.id != booking.person_id and not (actor.is_admin or actor.is_trainer):
        raise BookingError("not_yours", N_("This is not your booking."))
    if booking.status != BookingStatus.BOOKED:
        raise BookingError("not_active", N_("This booking was cancelled or released already."))
    if booking.ends_at <= now:
        raise BookingError("over", N_("This booking is over."))


def _deadline_check(db: Session, booking: Booking, actor: Person, now: datetime) -> None:
    if actor.is_admin or actor.is_trainer:
        return
    policy = policy_for(db, booking.machine.site_id)
    deadline = booking.starts_at - timedelta(minutes=policy.cancel_deadline_min)
    if now > deadline:
        raise BookingError(
            "too_late",
            N_("Too late to change: bookings can be changed until {minutes} minutes before they start."),
            minutes=policy.cancel_deadline_min,
        )


def cancel(db: Session, booking: Booking, actor: Person, now: datetime) -> Booking:
    """Cancel a booking. A session its holder already runs goes on (never cut power)."""
    _lock_machine(db, booking.machine_id)
    db.refresh(booking)  # as it is now, under the lock: a release or another change may have come first
    _may_change(booking, actor, now)
    _deadline_check(db, booking, actor, now)
    booking.status = BookingStatus.CANCELLED
    booking.cancelled_at = now
    booking.cancelled_by_id = actor.id
    audit.record(db, actor, "booking.cancel", f"booking:{booking.id}", _detail(booking), at=now)
    db.flush()
    return booking


def move(
    db: Session, booking: Booking, starts_at: datetime, ends_at: datetime, actor: Person, now: datetime
) -> Booking:
    """Move a booking to another time on the same machine, by the same rules as a new one."""
    _lock_machine(db, booking.machine_id)
    db.refresh(booking)
    _may_change(booking, actor, now)
    _deadline_check(db, booking, actor, now)
    _check(
        db,
        booking.person,
        booking.machine,
        starts_at,
        ends_at,
        actor,
        now,
        booking.trainer,
        exclude=booking.id,
    )
    old = (booking.starts_at.isoformat(), booking.ends_at.isoformat())
    booking.starts_at, booking.ends_at = starts_at, ends_at
    booking.reminded_at = None
    audit.record(
        db, actor, "booking.move", f"booking:{booking.id}", {**_detail(booking), "from": list(old)}, at=now
    )
    db.flush()
    return booking


def check_in(db: Session, machine_id: int, person_id: int | None, at: datetime) -> Booking | None:
    """A session of ``person_id`` started at ``at``: the booking it belongs to is checked in.

    Counts from the guard time before the booking (an early tap) to its end. A session that
    arrives late (an offline session, ingested after the scheduler released the booking as a
    no-show) withdraws the no-show: the holder was there. The booking is booked again unless
    someone else booked the freed time meanwhile.

    Written as one conditional UPDATE, so that a release running at the same moment cannot
    overwrite it, nor it a cancellation.
    """
    if person_id is None:
        return None
    machine = db.get(Machine, machine_id)
    guard = timedelta(minutes=machine.guard_min if machine else 15)
    booking = db.scalar(
        select(Booking)
        .where(
            Booking.machine_id == machine_id,
            Booking.person_id == person_id,
            (Booking.status == BookingStatus.BOOKED)
            | ((Booking.status == BookingStatus.RELEASED) & Booking.no_show.is_(True)),
            Booking.starts_at <= at + guard,
            Booking.ends_at > at,
            Booking.checked_in_at.is_(None),
        )
        .order_by(Booking.starts_at)
        .limit(1)
    )
    if booking is None:
        return None
    values: dict[str, Any] = {"checked_in_at": at, "no_show": False}
    if booking.status == BookingStatus.RELEASED:
        others = [
            b for b in active(db, [machine_id], booking.starts_at, booking.ends_at) if b.id != booking.id
        ]
        if not others:
            values.update(status=BookingStatus.BOOKED, released_at=None)
    result = db.execute(
        update(Booking)
        .where(
            Booking.id == booking.id,
            Booking.checked_in_at.is_(None),
            (Booking.status == BookingStatus.BOOKED)
            | ((Booking.status == BookingStatus.RELEASED) & Booking.no_show.is_(True)),
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    db.refresh(booking)
    if not getattr(result, "rowcount", 0):
        return None
    if values.get("status") == BookingStatus.BOOKED:
        audit.record(db, None, "booking.no_show_withdrawn", f"booking:{booking.id}", _detail(booking), at=at)
    return booking


def _holder_was_there(db: Session, booking: Booking, until: datetime) -> datetime | None:
    """When the holder's session on the machine covering the booking's start began, if any: a
    walk-in that began before the booking (and its guard time) and is still running counts."""
    return db.scalar(
        select(MachineSession.started_at)
        .where(
            MachineSession.machine_id == booking.machine_id,
            MachineSession.person_id == booking.person_id,
            MachineSession.started_at < until,
            # A session never closed long ago (a lost end) is not this one.
            MachineSession.started_at > booking.starts_at - timedelta(days=1),
            (MachineSession.ended_at.is_(None)) | (MachineSession.ended_at > booking.starts_at),
        )
        .order_by(MachineSession.started_at)
        .limit(1)
    )


def release_no_shows(db: Session, now: datetime) -> list[Booking]:
    """Release every booking whose holder has not tapped in within the policy's minutes of its start.

    A holder whose session runs into the booking (a walk-in that began before it) is checked
    in instead. The release is a conditional UPDATE: a check-in committed at the same moment
    wins, and the booking is not counted as a no-show.
    """
    candidates = db.scalars(
        select(Booking).where(
            Booking.status == BookingStatus.BOOKED,
            Booking.checked_in_at.is_(None),
            Booking.starts_at <= now,
        )
    ).all()
    released = []
    policies: dict[int, Policy] = {}
    for booking in candidates:
        site_id = booking.machine.site_id
        policy = policies.setdefault(site_id, policy_for(db, site_id))
        due = booking.starts_at + timedelta(minutes=policy.no_show_after_min)
        if now < due:
            continue
        _lock_machine(db, booking.machine_id)
        there = _holder_was_there(db, booking, min(due, booking.ends_at))
        if there is not None:
            db.execute(
                update(Booking)
                .where(Booking.id == booking.id, Booking.checked_in_at.is_(None))
                .values(checked_in_at=there)
                .execution_options(synchronize_session=False)
            )
            db.refresh(booking)
            continue
        result = db.execute(
            update(Booking)
            .where(
                Booking.id == booking.id,
                Booking.status == BookingStatus.BOOKED,
                Booking.checked_in_at.is_(None),
            )
            .values(status=BookingStatus.RELEASED, released_at=now, no_show=True)
            .execution_options(synchronize_session=False)
        )
        db.refresh(booking)
        if not getattr(result, "rowcount", 0):
            continue  # checked in or cancelled at this very moment
        audit.record(db, None, "booking.release", f"booking:{booking.id}", _detail(booking), at=now)
        released.append(booking)
    db.flush()
    return released


# -- telling the holder ----------------------------------------------------------------------------


def _notify(db: Session, booking: Booking, kind: str, key: str, at: datetime, **extra: Any) -> bool:
    """One notification about ``booking`` for its holder (once per ``key``); False when known."""
    person = booking.person
    if not person.active:
        return False
    known = db.scalar(
        select(func.count(Notification.id)).where(
            Notification.person_id == person.id, Notification.key == key
        )
    )
    if known:
        return False
    start = booking.starts_at.astimezone(ZoneInfo(booking.machine.site.timezone))
    params: dict[str, Any] = {
        "booking_id": booking.id,
        "machine": booking.machine.name,
        "date": start.date().isoformat(),
        # The reader's clock format is chosen when the notification is shown or e-mailed.
        "starts_at": booking.starts_at.astimezone(UTC).isoformat(),
        "ends_at": booking.ends_at.astimezone(UTC).isoformat(),
        "tz": booking.machine.site.timezone,
        **extra,
    }
    db.add(Notification(person_id=person.id, kind=kind, key=key, params=params, created_at=at))
    db.flush()
    return True


def notify_released(db: Session, released: Sequence[Booking], now: datetime) -> int:
    """Tell each holder that their booking was released as a no-show. Returns how many were told."""
    made = 0
    for booking in released:
        minutes = policy_for(db, booking.machine.site_id).no_show_after_min
        made += _notify(
            db,
            booking,
            notifications.BOOKING_RELEASED,
            f"booking_released:{booking.id}",
            now,
            minutes=minutes,
        )
    return made


def remind_due(db: Session, now: datetime) -> int:
    """Remind holders of bookings that start within their site's ``reminder_before_min``, once
    per booking (``reminded_at``; a moved booking is reminded again). A booking made inside
    that window is not reminded: its holder just booked it. Returns how many were reminded."""
    widest = max(
        [Policy().reminder_before_min, *db.scalars(select(BookingPolicy.reminder_before_min))], default=0
    )
    due = db.scalars(
        select(Booking)
        .where(
            Booking.status == BookingStatus.BOOKED,
            Booking.reminded_at.is_(None),
            Booking.starts_at > now,
            Booking.starts_at <= now + timedelta(minutes=widest),
        )
        .order_by(Booking.starts_at)
    ).all()
    made = 0
    policies: dict[int, Policy] = {}
    for booking in due:
        site_id = booking.machine.site_id
        before = timedelta(minutes=policies.setdefault(site_id, policy_for(db, site_id)).reminder_before_min)
        if before <= timedelta(0) or booking.starts_at > now + before:
            continue
        claimed = db.execute(
            update(Booking)
            .where(Booking.id == booking.id, Booking.reminded_at.is_(None))
            .values(reminded_at=now)
            .execution_options(synchronize_session=False)
        )
        if not getattr(claimed, "rowcount", 0):
            continue  # reminded meanwhile
        if booking.created_at.astimezone(UTC) > booking.starts_at - before:
            continue
        key = f"booking_reminder:{booking.id}:{booking.starts_at.astimezone(UTC).isoformat()}"
        made += _notify(db, booking, notifications.BOOKING_REMINDER, key, now)
    return made


def _detail(booking: Booking, machine: Machine | None = None, person: Person | None = None) -> dict[str, Any]:
    machine = machine or booking.machine
    person = person or booking.person
    return {
        "machine": machine.slug,
        "person": person.name,
        "starts_at": booking.starts_at.astimezone(UTC).isoformat(),
        "ends_at": booking.ends_at.astimezone(UTC).isoformat(),
        "trainer_id": booking.trainer_id,
    }
