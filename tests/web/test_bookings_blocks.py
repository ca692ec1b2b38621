"""What stops a booking is shown before "Book": a no-show block on the week and on the book page,
a missing qualification on the book page, and a trainer offered to whoever needs one. Staff see
who is blocked for no-shows and lift a block (audited)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import (
    AuditLog,
    Booking,
    BookingStatus,
    Competency,
    Level,
    Person,
    Qualification,
    QualificationAction,
    Site,
)
from tests.web.conftest import AuthActions, Lab, english, sign_in
from tests.web.test_bookings_pages import (
    _person_id,
    add_booking,
    add_bookings,
    bookings_of,
    tomorrow_at,
    week_page,
)


@pytest.fixture
def booking_lab(lab: Lab) -> Lab:
    return add_bookings(lab)


def _three_no_shows(lab: Lab, email: str) -> None:
    now = datetime.now(UTC)
    for days in (1, 2, 3):
        booking_id = add_booking(
            lab, email, now - timedelta(days=days, hours=2), status=BookingStatus.RELEASED
        )
        with db.session() as s:
            booking = s.get(Booking, booking_id)
            assert booking is not None
            booking.no_show = True
            booking.released_at = now - timedelta(days=days, hours=1)
            s.commit()


def _start(when: datetime) -> str:
    return f"{when:%Y-%m-%dT%H:%M}"


def test_blocks_a_blocked_participant_sees_the_block_before_booking(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    _three_no_shows(booking_lab, booking_lab.participant)
    auth.login(booking_lab.participant)
    start = tomorrow_at(10)
    week = week_page(client, start)
    assert "You missed 3 bookings. You can book again from" in week
    assert "/bookings/machines/prusa-a/book" not in week  # no free slot leads to "Book"
    page = client.get(f"/bookings/machines/prusa-a/book?start={_start(start)}").get_data(as_text=True)
    assert "You missed 3 bookings." in page
    assert 'name="duration_min"' not in page and ">Book</button>" not in page
    mine = client.get("/bookings/mine").get_data(as_text=True)
    assert "You missed 3 bookings." in mine


def test_blocks_a_participant_not_trained_sees_why_before_booking(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login(booking_lab.participant)
    page = client.get(f"/bookings/machines/laser-1/book?start={_start(tomorrow_at(10))}").get_data(
        as_text=True
    )
    assert (
        "You are not trained on the CO2 laser cutter yet" in page
    )  # said to the person, who books for themselves
    assert ">Book</button>" not in page


def test_blocks_a_participant_who_needs_a_trainer_is_offered_one(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    ada, tina = _person_id(booking_lab.participant), _person_id(booking_lab.trainer)
    with db.session() as s:
        laser = s.scalar(select(Competency).where(Competency.slug == "laser"))
        assert laser is not None
        s.add(
            Qualification(
                person_id=ada, competency_id=laser.id, action=QualificationAction.GRANTED, level=Level.BRIEFED
            )
        )
        s.commit()
    auth.login(booking_lab.participant)
    start = tomorrow_at(10)
    page = client.get(f"/bookings/machines/laser-1/book?start={_start(start)}").get_data(as_text=True)
    assert "only with a trainer" in page
    assert 'name="trainer_id"' in page and f'value="{tina}"' in page
    assert "Alex Admin" not in page  # only trainers who train the laser are offered
    assert 'name="person_id"' not in page  # participants book for themselves
    response = client.post(
        "/bookings/machines/laser-1/book",
        data={"start": _start(start), "duration_min": "60", "trainer_id": tina},
    )
    assert response.status_code == 302
    (booking,) = bookings_of(booking_lab.participant)
    assert booking.trainer_id == tina


def test_blocks_staff_list_blocked_people_and_lift_a_block(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    _three_no_shows(booking_lab, booking_lab.participant)
    auth.login(booking_lab.trainer)
    listed = client.get("/bookings/blocked").get_data(as_text=True)
    assert "Ada Lovelace" in listed and "Bob Builder" not in listed
    ada = _person_id(booking_lab.participant)
    assert f"/bookings/blocked/{ada}/lift" in listed
    response = client.post(f"/bookings/blocked/{ada}/lift")
    assert response.status_code == 302
    assert "No one is blocked" in client.get("/bookings/blocked").get_data(as_text=True)
    with db.session() as s:
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "booking.block_lifted"))
        assert entry is not None and entry.subject == f"person:{ada}"
    auth.logout()
    auth.login(booking_lab.participant)
    start = tomorrow_at(10)
    response = client.post(
        "/bookings/machines/prusa-a/book", data={"start": _start(start), "duration_min": "60"}
    )
    assert response.status_code == 302


def test_blocks_staff_of_another_site_cannot_lift(booking_lab: Lab, client: FlaskClient) -> None:
    _three_no_shows(booking_lab, booking_lab.participant)
    with db.session() as s:
        ada = s.scalar(select(Person).where(Person.email == booking_lab.participant))
        trainer = s.scalar(select(Person).where(Person.email == booking_lab.trainer))
        assert ada is not None and trainer is not None
        sued = s.scalar(select(Site).where(Site.slug == "sued"))
        assert sued is not None
        trainer.site_id = sued.id
        s.commit()
        ada_id, trainer_id = ada.id, trainer.id
    sign_in(english(client), trainer_id)
    assert "Ada Lovelace" not in client.get("/bookings/blocked").get_data(as_text=True)
    response = client.post(f"/bookings/blocked/{ada_id}/lift")
    assert response.status_code == 404
    with db.session() as s:
        assert s.scalar(select(AuditLog).where(AuditLog.action == "booking.block_lifted")) is None
