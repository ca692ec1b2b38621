"""Bookings over the API: list, read, book, cancel and move.

Every change goes through :mod:`server.services.bookings`, the same rules as the web pages
(who may book, opening hours, slot grid, quotas, deadlines, no overlaps). A refused rule
answers with its code and English message: 409 ``taken`` when the time is booked already
(also when another booking of the machine holds it at that moment), 403 ``not_yours``,
else 422. Participants see and change only their own bookings; trainers and admins all.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from server.adapters.api import schemas as s
from server.adapters.api.auth import (
    api_access,
    current_person,
    may_see_at_machine,
    require_sight,
    visible_at_machines,
)
from server.adapters.api.common import answer, bp, page, paged, read_body, read_query
from server.adapters.api.errors import ApiError
from server.extensions import get_db
from server.models import Booking, BookingStatus, Machine, Person, utcnow
from server.services import bookings


def _utc(when: datetime | None) -> datetime | None:
    return when.astimezone(UTC) if when is not None else None


def booking_out(booking: Booking) -> s.BookingOut:
    return s.BookingOut(
        id=booking.id,
        machine=booking.machine.slug,
        person_id=booking.person_id,
        trainer_id=booking.trainer_id,
        starts_at=booking.starts_at.astimezone(UTC),
        ends_at=booking.ends_at.astimezone(UTC),
        status=booking.status.value,
        note=booking.note,
        created_at=booking.created_at.astimezone(UTC),
        created_by_id=booking.created_by_id,
        cancelled_at=_utc(booking.cancelled_at),
        checked_in_at=_utc(booking.checked_in_at),
        released_at=_utc(booking.released_at),
        no_show=booking.no_show,
    )


@bp.get("/bookings")
@api_access("read")
def list_bookings() -> ResponseReturnValue:
    q = read_query(s.BookingsQuery)
    me = current_person()
    require_sight(me, "bookings", q.person_id)
    if q.from_ is not None and q.to is not None and q.to <= q.from_:
        raise ApiError(400, "invalid_query", "`to` is not after `from`.", {"to": "not after from"})
    query = select(Booking).options(selectinload(Booking.machine)).order_by(Booking.starts_at, Booking.id)
    query = visible_at_machines(query, me, "bookings", Booking.person_id, Booking.machine_id)
    if q.person_id is not None:
        query = query.where(Booking.person_id == q.person_id)
    if q.machine is not None:
        query = query.join(Machine, Machine.id == Booking.machine_id).where(Machine.slug == q.machine)
    if q.from_ is not None:
        query = query.where(Booking.ends_at > q.from_)
    if q.to is not None:
        query = query.where(Booking.starts_at < q.to)
    if q.status is not None:
        query = query.where(Booking.status == BookingStatus(q.status))
    rows, meta = page(get_db(), query, q)
    return paged([booking_out(b) for b in rows], meta)


def _booking(db: Session, booking_id: str) -> Booking:
    """The booking, if the caller may see it: 404 when there is none, 403 when it is not theirs."""
    found = db.get(Booking, booking_id) if len(booking_id) <= 36 and "\x00" not in booking_id else None
    if found is None:
        raise ApiError(404, "not_found", f"No booking {booking_id!r}.")
    me = current_person()
    if not may_see_at_machine(me, "bookings", found.person_id, found.machine.site_id):
        require_sight(me, "bookings", found.person_id)  # the 403 with its reason
        raise ApiError(403, "forbidden", "This token may read only the bookings of its own site.")
    return found


@bp.get("/bookings/<booking_id>")
@api_access("read")
def get_booking(booking_id: str) -> ResponseReturnValue:
    return answer(booking_out(_booking(get_db(), booking_id)))


def _person(db: Session, person_id: int, field: str) -> Person:
    person = db.get(Person, person_id)
    if person is None:
        raise ApiError(422, "unknown_person", f"No person with id {person_id}.", {field: "no such person"})
    return person


@bp.post("/bookings")
@api_access("read")
def create_booking() -> ResponseReturnValue:
    body = read_body(s.BookingCreate)
    db = get_db()
    me = current_person()
    machine = db.scalar(select(Machine).where(Machine.slug == body.machine))
    if machine is None:
        raise ApiError(
            422, "unknown_machine", f"No machine {body.machine!r}.", {"machine": "no such machine"}
        )
    person = _person(db, body.person_id, "person_id") if body.person_id is not None else me
    trainer = _person(db, body.trainer_id, "trainer_id") if body.trainer_id is not None else None
    booking = bookings.create(
        db, person, machine, body.starts_at, body.ends_at, me, utcnow(), trainer=trainer, note=body.note
    )
    db.commit()
    return answer(booking_out(booking), 201)


@bp.post("/bookings/<booking_id>/cancel")
@api_access("read")
def cancel_booking(booking_id: str) -> ResponseReturnValue:
    if request.get_data(cache=True).strip():  # a body is optional; if given, it must be `{}`
        read_body(s.BookingCancel)
    db = get_db()
    booking = bookings.cancel(db, _booking(db, booking_id), current_person(), utcnow())
    db.commit()
    return answer(booking_out(booking))


@bp.post("/bookings/<booking_id>/move")
@api_access("read")
def move_booking(booking_id: str) -> ResponseReturnValue:
    body = read_body(s.BookingMove)
    db = get_db()
    booking = bookings.move(
        db, _booking(db, booking_id), body.starts_at, body.ends_at, current_person(), utcnow()
    )
    db.commit()
    return answer(booking_out(booking))
