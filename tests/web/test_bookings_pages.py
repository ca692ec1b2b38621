"""Booking pages: the week and day grids, booking in two taps, refusals, my bookings (cancel,
move), all bookings for staff, and the calendar feeds."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from icalendar import Calendar
from sqlalchemy import func, select

from server.extensions import db
from server.models import (
    AuditLog,
    Booking,
    BookingPolicy,
    BookingStatus,
    ClosedDay,
    Competency,
    Level,
    MachineType,
    OpeningHours,
    Person,
    Qualification,
    QualificationAction,
)
from tests.web.conftest import TZ, AuthActions, Lab
from tests.web.test_web_training import add_training


def add_bookings(lab: Lab) -> Lab:
    """The trained lab; Ada and Bob may use the printers on their own (not the laser)."""
    add_training(lab)
    with db.session() as s:
        printing = s.scalar(select(Competency).where(Competency.slug == "printing"))
        assert printing is not None
        for email in (lab.participant, lab.other_participant):
            s.add(
                Qualification(
                    person_id=_person_id(email),
                    competency_id=printing.id,
                    action=QualificationAction.GRANTED,
                    level=Level.INDEPENDENT,
                )
            )
        s.commit()
    return lab


@pytest.fixture
def booking_lab(lab: Lab) -> Lab:
    return add_bookings(lab)


def _person_id(email: str) -> int:
    with db.session() as s:
        found = s.scalar(select(Person.id).where(Person.email == email))
    assert found is not None
    return found


def tomorrow_at(hour: int, minute: int = 0) -> datetime:
    day = datetime.now(UTC).astimezone(TZ).date() + timedelta(days=1)
    return datetime.combine(day, time(hour, minute), tzinfo=TZ)


def week_of(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def add_booking(
    lab: Lab,
    email: str,
    start: datetime,
    minutes: int = 60,
    slug: str = "prusa-a",
    status: BookingStatus = BookingStatus.BOOKED,
) -> str:
    """A booking straight into the database (the rules are the service's tests' business)."""
    with db.session() as s:
        booking = Booking(
            machine_id=lab.machines[slug],
            person_id=_person_id(email),
            starts_at=start,
            ends_at=start + timedelta(minutes=minutes),
            status=status,
        )
        s.add(booking)
        s.commit()
        return booking.id


def bookings_of(email: str) -> list[Booking]:
    with db.session() as s:
        return list(
            s.scalars(
                select(Booking).where(Booking.person_id == _person_id(email)).order_by(Booking.starts_at)
            )
        )


def cell(html: str, start: datetime) -> str:
    """The grid cell of the slot starting at ``start``: its state and contents."""
    iso = start.astimezone(TZ).strftime("%Y-%m-%dT%H:%M")
    found = re.search(
        rf'<td class="slot[^"]*" data-state="(\w+)" data-start="{iso}"[^>]*>(.*?)</td>', html, re.S
    )
    assert found is not None, f"no cell for {iso}"
    return f"{found.group(1)}: {found.group(2)}"


def week_page(client: FlaskClient, start: datetime, slug: str = "prusa-a") -> str:
    response = client.get(f"/bookings/machines/{slug}?week={week_of(start.date())}")
    assert response.status_code == 200
    return response.get_data(as_text=True)


# -- the grids ----------------------------------------------------------------------------------------


def test_bookings_week_shows_free_mine_and_names_only_to_staff(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(12))
    auth.login(booking_lab.participant)
    html = week_page(client, tomorrow_at(10))
    assert cell(html, tomorrow_at(10)).startswith("mine:")
    assert cell(html, tomorrow_at(12)).startswith("booked:")
    assert "booked" in cell(html, tomorrow_at(12))
    assert "Bob" not in html
    free = cell(html, tomorrow_at(14))
    assert free.startswith("free:")
    assert f"/bookings/machines/prusa-a/book?start={tomorrow_at(14):%Y-%m-%dT%H:%M}" in free

    auth.logout()
    auth.login(booking_lab.trainer)
    html = week_page(client, tomorrow_at(10))
    assert "Bob" in cell(html, tomorrow_at(12))
    assert "Ada" in cell(html, tomorrow_at(10))


def test_bookings_week_shows_opening_hours_and_closed_days(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    day = tomorrow_at(0).date()
    with db.session() as s:
        for weekday in range(7):
            s.add(OpeningHours(site_id=booking_lab.site_id, weekday=weekday, opens=time(9), closes=time(17)))
        s.add(ClosedDay(site_id=booking_lab.site_id, day=day + timedelta(days=1), reason="holiday"))
        s.commit()
    auth.login(booking_lab.participant)
    html = week_page(client, tomorrow_at(10))
    assert ">08:30<" not in html and ">09:00<" in html and ">16:30<" in html and ">17:00<" not in html
    assert cell(html, tomorrow_at(9)).startswith("free:")
    assert cell(html, tomorrow_at(9) + timedelta(days=1)).startswith("closed:")


def test_bookings_site_day_shows_every_machine_with_a_link_to_its_week(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    add_booking(booking_lab, booking_lab.participant, tomorrow_at(10), slug="prusa-b")
    auth.login(booking_lab.participant)
    day = tomorrow_at(0).date()
    response = client.get(f"/bookings/site?day={day.isoformat()}")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    for name in ("Prusa A", "Prusa B", "Laser 1"):
        assert name in html
    assert f"/bookings/machines/prusa-a?week={week_of(day)}" in html
    assert f"?day={(day + timedelta(days=1)).isoformat()}" in html
    assert f"?day={(day - timedelta(days=1)).isoformat()}" in html
    assert 'data-state="mine"' in html


# -- booking in two taps -----------------------------------------------------------------------------


def test_bookings_two_taps_create_exactly_one_booking(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login(booking_lab.participant)
    start = tomorrow_at(10)
    html = week_page(client, start)
    link = re.search(r'href="([^"]+)"', cell(html, start))
    assert link is not None
    confirm = client.get(link.group(1).replace("&amp;", "&"))
    page = confirm.get_data(as_text=True)
    assert confirm.status_code == 200
    assert "Prusa A" in page and 'name="duration_min"' in page
    # The policy's lengths: 30 min to 4 h, on the 30-minute grid.
    assert re.findall(r'<option value="(\d+)"', page) == [str(m) for m in range(30, 241, 30)]
    response = client.post(
        "/bookings/machines/prusa-a/book", data={"start": f"{start:%Y-%m-%dT%H:%M}", "duration_min": "90"}
    )
    assert response.status_code == 302
    assert "/bookings/mine" in response.headers["Location"]
    (booking,) = bookings_of(booking_lab.participant)
    assert booking.starts_at == start.astimezone(UTC)
    assert booking.ends_at - booking.starts_at == timedelta(minutes=90)
    mine = client.get("/bookings/mine").get_data(as_text=True)
    assert "Booked: Prusa A" in mine
    assert f'data-booking-id="{booking.id}" data-status="booked"' in mine


def test_bookings_length_choices_stop_at_the_next_booking(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(11))
    auth.login(booking_lab.participant)
    page = client.get(f"/bookings/machines/prusa-a/book?start={tomorrow_at(10):%Y-%m-%dT%H:%M}")
    assert re.findall(r'<option value="(\d+)"', page.get_data(as_text=True)) == ["30", "60"]


def _post_book(client: FlaskClient, start: datetime, minutes: int, slug: str = "prusa-a") -> str:
    response = client.post(
        f"/bookings/machines/{slug}/book",
        data={"start": f"{start:%Y-%m-%dT%H:%M}", "duration_min": str(minutes)},
    )
    assert response.status_code == 400
    return response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("overlap", "This time is already booked"),
        ("quota", "This week you have 0 of 1 hours booked. This booking does not fit."),
        ("not_qualified", "You are not trained on the CO2 laser cutter yet."),
        ("too_long", "A booking lasts at most 240 minutes."),
    ],
)
def test_bookings_refusal_shows_the_reason_and_stores_nothing(
    case: str, message: str, booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    start, minutes, slug = tomorrow_at(10), 60, "prusa-a"
    if case == "overlap":
        add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(10, 30))
    elif case == "quota":
        with db.session() as s:
            s.add(BookingPolicy(site_id=booking_lab.site_id, weekly_quota_h=1.0))
            s.commit()
        minutes = 120
    elif case == "not_qualified":
        slug = "laser-1"
    else:
        minutes = 300
    auth.login(booking_lab.participant)
    with db.session() as s:
        before = s.scalar(select(func.count(Booking.id)))
    page = _post_book(client, start, minutes, slug)
    assert message in page
    assert 'role="alert"' in page
    with db.session() as s:
        assert s.scalar(select(func.count(Booking.id))) == before
    assert bookings_of(booking_lab.participant) == []


def test_bookings_trainer_books_a_supervised_slot_for_a_participant(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login(booking_lab.trainer)
    start = tomorrow_at(10)
    page = client.get(f"/bookings/machines/laser-1/book?start={start:%Y-%m-%dT%H:%M}").get_data(as_text=True)
    assert 'name="person_id"' in page and 'name="trainer_id"' in page
    ada, tina = _person_id(booking_lab.participant), _person_id(booking_lab.trainer)
    # Ada is not briefed on the laser yet: even with a trainer, refused.
    response = client.post(
        "/bookings/machines/laser-1/book",
        data={"start": f"{start:%Y-%m-%dT%H:%M}", "duration_min": "60", "person_id": ada, "trainer_id": tina},
    )
    assert response.status_code == 400
    assert "needs the safety briefing" in response.get_data(as_text=True)
    with db.session() as s:
        laser = s.scalar(select(Competency).where(Competency.slug == "laser"))
        assert laser is not None
        s.add(
            Qualification(
                person_id=ada, competency_id=laser.id, action=QualificationAction.GRANTED, level=Level.BRIEFED
            )
        )
        s.commit()
    response = client.post(
        "/bookings/machines/laser-1/book",
        data={"start": f"{start:%Y-%m-%dT%H:%M}", "duration_min": "60", "person_id": ada, "trainer_id": tina},
    )
    assert response.status_code == 302
    (booking,) = bookings_of(booking_lab.participant)
    assert booking.trainer_id == tina
    assert booking.machine_id == booking_lab.machines["laser-1"]


def test_bookings_participant_cannot_book_for_someone_else(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login(booking_lab.participant)
    start = tomorrow_at(10)
    response = client.post(
        "/bookings/machines/prusa-a/book",
        data={
            "start": f"{start:%Y-%m-%dT%H:%M}",
            "duration_min": "60",
            "person_id": _person_id(booking_lab.other_participant),
        },
    )
    assert response.status_code == 302  # the person field is ignored: Ada books for herself
    assert bookings_of(booking_lab.other_participant) == []
    assert len(bookings_of(booking_lab.participant)) == 1


# -- my bookings: cancel and move --------------------------------------------------------------------


def test_bookings_cancel_after_confirming(booking_lab: Lab, client: FlaskClient, auth: AuthActions) -> None:
    booking_id = add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    auth.login(booking_lab.participant)
    mine = client.get("/bookings/mine").get_data(as_text=True)
    assert f"/bookings/{booking_id}/cancel" in mine
    confirm = client.get(f"/bookings/{booking_id}/cancel")
    assert "Cancel this booking?" in confirm.get_data(as_text=True)
    assert bookings_of(booking_lab.participant)[0].status == BookingStatus.BOOKED
    response = client.post(f"/bookings/{booking_id}/cancel", follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "Booking cancelled: Prusa A" in page
    assert f'data-booking-id="{booking_id}" data-status="cancelled"' in page
    assert bookings_of(booking_lab.participant)[0].status == BookingStatus.CANCELLED


def test_bookings_cancel_deadline_holds_for_participants_not_for_staff(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=30)
    booking_id = add_booking(booking_lab, booking_lab.participant, soon)
    auth.login(booking_lab.participant)
    response = client.post(f"/bookings/{booking_id}/cancel")
    assert response.status_code == 400
    assert "Too late to change" in response.get_data(as_text=True)
    assert bookings_of(booking_lab.participant)[0].status == BookingStatus.BOOKED
    auth.logout()
    auth.login(booking_lab.trainer)
    response = client.post(f"/bookings/{booking_id}/cancel")
    assert response.status_code == 302
    assert bookings_of(booking_lab.participant)[0].status == BookingStatus.CANCELLED


def test_bookings_others_bookings_are_not_found_for_participants(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    booking_id = add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(10))
    auth.login(booking_lab.participant)
    assert client.get(f"/bookings/{booking_id}/cancel").status_code == 404
    assert client.post(f"/bookings/{booking_id}/cancel").status_code == 404
    assert client.get(f"/bookings/{booking_id}/move").status_code == 404
    assert bookings_of(booking_lab.other_participant)[0].status == BookingStatus.BOOKED


def test_bookings_move_through_the_week_view(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    booking_id = add_booking(booking_lab, booking_lab.participant, tomorrow_at(10), minutes=90)
    auth.login(booking_lab.participant)
    response = client.get(f"/bookings/{booking_id}/move")
    assert response.status_code == 302
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "tap a free time" in html
    # The booking's own time counts as free while moving it; free slots lead to the move page.
    own = cell(html, tomorrow_at(10))
    assert own.startswith("free:") and f"/bookings/{booking_id}/move?start=" in own
    target = tomorrow_at(15)
    confirm = client.get(f"/bookings/{booking_id}/move?start={target:%Y-%m-%dT%H:%M}").get_data(as_text=True)
    assert '<option value="90" selected>' in confirm
    response = client.post(
        f"/bookings/{booking_id}/move",
        data={"start": f"{target:%Y-%m-%dT%H:%M}", "duration_min": "90"},
        follow_redirects=True,
    )
    assert "Booking moved: Prusa A" in response.get_data(as_text=True)
    (booking,) = bookings_of(booking_lab.participant)
    assert booking.starts_at == target.astimezone(UTC)
    assert booking.ends_at == (target + timedelta(minutes=90)).astimezone(UTC)


def test_bookings_move_onto_a_taken_time_is_refused(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    booking_id = add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(15))
    auth.login(booking_lab.participant)
    target = tomorrow_at(15)
    response = client.post(
        f"/bookings/{booking_id}/move", data={"start": f"{target:%Y-%m-%dT%H:%M}", "duration_min": "60"}
    )
    assert response.status_code == 400
    assert "This time is already booked" in response.get_data(as_text=True)
    (booking,) = bookings_of(booking_lab.participant)
    assert booking.starts_at == tomorrow_at(10).astimezone(UTC)


def test_bookings_mine_shows_past_cancelled_and_released_with_their_status(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    yesterday = tomorrow_at(10) - timedelta(days=2)
    add_booking(booking_lab, booking_lab.participant, yesterday)
    add_booking(
        booking_lab, booking_lab.participant, yesterday + timedelta(hours=2), status=BookingStatus.RELEASED
    )
    add_booking(booking_lab, booking_lab.participant, tomorrow_at(10), status=BookingStatus.CANCELLED)
    auth.login(booking_lab.participant)
    html = client.get("/bookings/mine").get_data(as_text=True)
    for status, label in (("over", "Over"), ("released", "Released (not used)"), ("cancelled", "Cancelled")):
        assert f'data-status="{status}"' in html
        assert label in html
    assert "/cancel" not in html and "/move" not in html
    assert "No bookings coming up." in html


# -- all bookings (staff) ----------------------------------------------------------------------------


def test_bookings_all_filters_by_person_machine_status_and_dates(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    a = add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    b = add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(12), slug="prusa-b")
    c = add_booking(
        booking_lab,
        booking_lab.other_participant,
        tomorrow_at(9) + timedelta(days=3),
        status=BookingStatus.CANCELLED,
    )
    auth.login(booking_lab.participant)
    assert client.get("/bookings/all").status_code == 403
    auth.logout()
    auth.login(booking_lab.admin)

    def ids(query: str) -> set[str]:
        response = client.get(f"/bookings/all{query}")
        assert response.status_code == 200
        return set(re.findall(r'<tr data-booking-id="([^"]+)"', response.get_data(as_text=True)))

    assert ids("") == {a, b, c}
    assert ids("?q=bob") == {b, c}
    assert ids("?machine=prusa-b") == {b}
    assert ids("?status=cancelled") == {c}
    assert ids("?status=upcoming") == {a, b}
    day = tomorrow_at(0).date()
    assert ids(f"?from={day + timedelta(days=2)}") == {c}
    assert ids(f"?to={day}") == {a, b}
    assert ids("?from=nonsense&status=nonsense") == {a, b, c}
    page = client.get("/bookings/all").get_data(as_text=True)
    assert f"/bookings/{a}/cancel?next=" in page


# -- calendar feeds ------------------------------------------------------------------------------------


def _token(email: str) -> str | None:
    with db.session() as s:
        return s.scalar(select(Person.calendar_token).where(Person.email == email))


def _events(client: FlaskClient, url: str) -> dict[str, dict[str, str]]:
    response = client.get(url)
    assert response.status_code == 200
    assert response.mimetype == "text/calendar"
    calendar = Calendar.from_ical(response.data)
    out = {}
    for event in calendar.walk("VEVENT"):
        out[str(event["UID"])] = {
            "summary": str(event["SUMMARY"]),
            "status": str(event["STATUS"]),
            "start": event.decoded("DTSTART").isoformat(),
            "end": event.decoded("DTEND").isoformat(),
        }
    return out


def test_bookings_person_feed_lists_my_bookings_and_the_link_rotates(
    booking_lab: Lab, app: Flask, client: FlaskClient, auth: AuthActions
) -> None:
    mine = add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    gone = add_booking(booking_lab, booking_lab.participant, tomorrow_at(14), status=BookingStatus.CANCELLED)
    add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(12))
    auth.login(booking_lab.participant)
    assert "Calendar link" in client.get("/bookings/mine").get_data(as_text=True)
    assert _token(booking_lab.participant) is None
    client.post("/bookings/calendar-link")
    token = _token(booking_lab.participant)
    assert token is not None
    assert f"/bookings/feed/{token}.ics" in client.get("/bookings/mine").get_data(as_text=True)
    auth.logout()  # calendar apps do not log in

    events = _events(client, f"/bookings/feed/{token}.ics")
    assert set(events) == {mine, gone}
    assert events[mine] == {
        "summary": "Prusa A (Werkbank)",
        "status": "CONFIRMED",
        "start": tomorrow_at(10).astimezone(UTC).isoformat(),
        "end": tomorrow_at(11).astimezone(UTC).isoformat(),
    }
    assert events[gone]["status"] == "CANCELLED"
    assert client.get("/bookings/feed/not-a-token.ics").status_code == 404

    auth.login(booking_lab.participant)
    client.post("/bookings/calendar-link")
    new = _token(booking_lab.participant)
    assert new is not None and new != token
    assert client.get(f"/bookings/feed/{token}.ics").status_code == 404
    assert client.get(f"/bookings/feed/{new}.ics").status_code == 200
    with db.session() as s:
        actions = list(s.scalars(select(AuditLog.action).where(AuditLog.action.like("calendar.%"))))
    assert actions == ["calendar.create", "calendar.rotate"]


def test_bookings_machine_feed_names_holders_only_for_staff(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    ada_booking = add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    bob_booking = add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(12))
    add_booking(booking_lab, booking_lab.other_participant, tomorrow_at(12), slug="prusa-b")
    with db.session() as s:
        for email, token in ((booking_lab.participant, "ada-token"), (booking_lab.trainer, "tina-token")):
            person = s.scalar(select(Person).where(Person.email == email))
            assert person is not None
            person.calendar_token = token
        s.commit()
    as_ada = _events(client, "/bookings/machines/prusa-a/feed/ada-token.ics")
    assert set(as_ada) == {ada_booking, bob_booking}
    assert as_ada[bob_booking]["summary"] == "Prusa A: booked"
    as_tina = _events(client, "/bookings/machines/prusa-a/feed/tina-token.ics")
    assert as_tina[bob_booking]["summary"] == "Prusa A: Bob Builder"
    assert client.get("/bookings/machines/prusa-a/feed/wrong.ics").status_code == 404
    assert client.get("/bookings/machines/nope/feed/ada-token.ics").status_code == 404


# -- German ------------------------------------------------------------------------------------------


def test_bookings_pages_in_german(booking_lab: Lab, client: FlaskClient, auth: AuthActions) -> None:
    add_booking(booking_lab, booking_lab.participant, tomorrow_at(10))
    auth.login(booking_lab.other_participant)  # Bob reads German
    mine = client.get("/bookings/mine").get_data(as_text=True)
    assert "Meine Buchungen" in mine and "Kalender-Link" in mine
    week = week_page(client, tomorrow_at(10))
    assert "belegt" in cell(week, tomorrow_at(10))
    assert "frei" in cell(week, tomorrow_at(14))
    page = _post_book(client, tomorrow_at(10), 60)
    assert "Diese Zeit ist schon gebucht" in page


@pytest.mark.parametrize(
    "url",
    [
        "/bookings/machines/prusa-a?week=9999-W52",
        "/bookings/machines/prusa-a?week=nonsense",
        "/bookings/machines/prusa-a?move=nope",
        "/bookings/site?day=9999-12-31",
        "/bookings/site?week=2026-W99",
        "/bookings/machines/prusa-a/book?start=9999-12-31T23:30",
        "/bookings/machines/prusa-a/book?start=yesterday",
        "/bookings/machines/bambu/book?start=2030-01-07T10:00",
        "/bookings/all?page=99999999999999999999&from=9999-12-31",
    ],
)
def test_bookings_nonsense_in_the_url_is_never_a_server_error(
    url: str, booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login(booking_lab.admin)
    assert client.get(url).status_code in (200, 302, 404)
    response = client.post(
        "/bookings/machines/prusa-a/book",
        data={"start": "2030-01-07T10:00", "duration_min": "1" + "0" * 30, "person_id": "9" * 30},
    )
    assert response.status_code == 400


def test_bookings_refusal_in_german_names_the_machine_type_in_german(
    booking_lab: Lab, client: FlaskClient, auth: AuthActions
) -> None:
    with db.session() as s:
        laser = s.scalar(select(MachineType).where(MachineType.slug == "laser"))
        assert laser is not None
        laser.name_de = "CO2-Laserschneider"
        s.commit()
    auth.login(booking_lab.participant)
    client.get("/language/de")
    page = _post_book(client, tomorrow_at(10), 60, "laser-1")
    # Ada books for herself: the refusal speaks to her ("Ihre"), never of her by name.
    assert "Für CO2-Laserschneider fehlt noch Ihre Einweisung." in page
    assert "Ada Lovelace ist" not in page
    assert "CO2 laser cutter" not in page
