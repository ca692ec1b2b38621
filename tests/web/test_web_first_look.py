"""What people missed in their first minutes: participants see which machine is free now (and
nobody else's name), "My training" pages its sessions, and a trainer's view of a person shows
badges, sessions, hours and bookings (people of the trainer's own site only)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import Badge, BadgeStatus, Booking, MachineSession, OpeningHours, Person, Site
from tests.web.conftest import AuthActions, Lab


def _person(email: str) -> Person:
    with db.session() as s:
        found = s.scalar(select(Person).where(Person.email == email))
        assert found is not None
        s.expunge(found)
        return found


def _add_sessions(lab: Lab, person_id: int, count: int) -> None:
    start = datetime.now(UTC) - timedelta(days=5)
    with db.session() as s:
        for i in range(count):
            s.add(
                MachineSession(
                    id=f"many-{i:02d}",
                    machine_id=lab.machines["prusa-a"],
                    device_id="pi-prusa-a",
                    person_id=person_id,
                    started_at=start - timedelta(hours=i),
                    ended_at=start - timedelta(hours=i) + timedelta(minutes=10),
                    unlocked_s=600.0,
                )
            )
        s.commit()


# -- machines now, for participants ------------------------------------------------------------------


def test_first_look_participant_sees_which_machine_is_free_now(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    auth.login(lab.other_participant)  # Bob: Ada holds the laser right now
    client.get("/language/en")  # Bob's profile says German
    html = client.get("/machines/now").get_data(as_text=True)
    assert client.get("/machines/now").status_code == 200
    tiles = dict(re.findall(r'data-slug="([\w-]+)" data-state="(\w+)"', html))
    assert tiles == {
        "prusa-a": "available",
        "laser-1": "in_use",
        "prusa-b": "offline",
        "bambu": "maintenance",
    }
    assert "Ada Lovelace" not in html and "Ada" not in html  # nobody else's name
    assert "pi-prusa-a" not in html  # nor the devices
    assert 'href="/machines/now"' in html  # in the navigation
    data = client.get("/machines/now.json").get_json()
    laser = next(m for m in data["machines"] if m["slug"] == "laser-1")
    assert laser["state_label"] == "In use" and "Ada" not in str(data)
    free = next(m for m in data["machines"] if m["slug"] == "prusa-a")
    assert free["state_label"] == "Free" and free["book_url"].startswith("/bookings/machines/prusa-a")


def test_first_look_the_holder_reads_that_it_is_theirs(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    auth.login(lab.participant)  # Ada holds the laser
    laser = next(m for m in client.get("/machines/now.json").get_json()["machines"] if m["slug"] == "laser-1")
    assert laser["state_label"] == "In use by you"


def test_first_look_a_booking_now_shows_as_booked(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    now = datetime.now(UTC)
    ada = _person(lab.participant)
    with db.session() as s:
        s.add(
            Booking(
                machine_id=lab.machines["prusa-a"],
                person_id=ada.id,
                starts_at=now - timedelta(minutes=5),
                ends_at=now + timedelta(minutes=55),
            )
        )
        s.commit()
    auth.login(lab.other_participant)
    client.get("/language/en")
    prusa = next(m for m in client.get("/machines/now.json").get_json()["machines"] if m["slug"] == "prusa-a")
    assert prusa["state"] == "booked" and prusa["state_label"] == "Booked"
    assert "Ada" not in prusa["detail"]


def test_first_look_outside_the_opening_hours_a_free_machine_reads_closed(
    client: FlaskClient, auth: AuthActions, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 6 in the morning the lab (open 9 to 18 on weekdays) refuses every badge: no machine
    is "free" then; the page says when it opens, today or on the next open day."""
    import server.adapters.web.overview

    with db.session() as s:
        for weekday in range(5):
            s.add(OpeningHours(site_id=lab.site_id, weekday=weekday, opens=time(9), closes=time(18)))
        s.commit()
    berlin = ZoneInfo("Europe/Berlin")
    auth.login(lab.other_participant)
    client.get("/language/en")

    def prusa_at(when: datetime) -> dict[str, str]:
        monkeypatch.setattr(server.adapters.web.overview, "_now", lambda: when.astimezone(UTC))
        machines = client.get("/machines/now.json").get_json()["machines"]
        found: dict[str, str] = next(m for m in machines if m["slug"] == "prusa-a")
        return found

    monday_early = prusa_at(datetime(2026, 11, 23, 6, 0, tzinfo=berlin))
    assert (monday_early["state"], monday_early["state_label"]) == ("closed", "Closed")
    assert monday_early["detail"] == "Opens at 9:00\u202fAM"
    sunday = prusa_at(datetime(2026, 11, 22, 12, 0, tzinfo=berlin))
    assert sunday["state"] == "closed" and sunday["detail"] == "Opens on Mon, Nov 23, 9:00\u202fAM"
    monday_noon = prusa_at(datetime(2026, 11, 23, 12, 0, tzinfo=berlin))
    assert (monday_noon["state"], monday_noon["state_label"]) == ("available", "Free")


def test_first_look_machines_now_is_for_logged_in_people(client: FlaskClient, lab: Lab) -> None:
    assert client.get("/machines/now").status_code == 302
    assert client.get("/machines/now.json").status_code in (302, 401)


# -- My training, page by page ------------------------------------------------------------------------


def test_first_look_my_training_pages_its_sessions(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    _add_sessions(lab, _person(lab.participant).id, 47)  # 50 with Ada's own three
    auth.login(lab.participant)
    first = client.get("/me").get_data(as_text=True)
    assert first.count("<tr data-flag") == 10
    assert "Page 1 of 5" in first
    last = client.get("/me?page=5").get_data(as_text=True)
    assert last.count("<tr data-flag") == 10 and "Page 5 of 5" in last
    assert client.get("/me?page=999").get_data(as_text=True).count("<tr data-flag") == 10
    assert "Page 1 of 5" in client.get("/me?page=nonsense").get_data(as_text=True)


# -- a person, as a trainer sees them -----------------------------------------------------------------


def test_first_look_trainer_sees_badges_sessions_hours_and_bookings(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    ada = _person(lab.participant)
    with db.session() as s:
        s.add(Badge(uid="04A1B2C3D4E5F6", person_id=ada.id))
        s.add(Badge(uid="DEADBEEF", person_id=ada.id, status=BadgeStatus.LOST))
        s.add(
            Booking(
                machine_id=lab.machines["prusa-a"],
                person_id=ada.id,
                starts_at=datetime.now(UTC) + timedelta(days=1),
                ends_at=datetime.now(UTC) + timedelta(days=1, hours=1),
            )
        )
        s.commit()
    _add_sessions(lab, ada.id, 14)
    auth.login(lab.trainer)
    html = client.get(f"/training/people/{ada.id}").get_data(as_text=True)
    badges = html.split('id="badges"')[1].split("</section>")[0]
    assert "E5F6" in badges and "04A1B2C3D4E5F6" not in badges  # trainers see the end of a UID only
    assert "Lost" in badges
    hours = html.split('id="hours"')[1].split("</section>")[0]
    assert "3 h 05 min" in hours  # 30 + 15 min seeded, 14 x 10 min added (the open session adds nothing)
    sessions = html.split('id="sessions"')[1].split("</section>")[0]
    assert sessions.count("<tr data-flag") == 10 and "Page 1 of 2" in sessions
    bookings = html.split('id="bookings"')[1].split("</section>")[0]
    assert "Prusa A" in bookings
    auth.logout()
    auth.login(lab.admin)
    admin_view = client.get(f"/training/people/{ada.id}").get_data(as_text=True)
    assert "04A1B2C3D4E5F6" in admin_view.split('id="badges"')[1].split("</section>")[0]


def test_first_look_trainer_of_another_site_does_not_see_the_person(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    with db.session() as s:
        sued = s.scalar(select(Site).where(Site.slug == "sued"))
        assert sued is not None
        s.add(Person(site_id=sued.id, name="Sam South", email="sam@lab.test", language="en"))
        s.commit()
    auth.login(lab.trainer)
    assert client.get(f"/training/people/{_person('sam@lab.test').id}").status_code == 404


def test_first_look_trainer_pages_through_many_people(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    with db.session() as s:
        for i in range(58):
            s.add(Person(site_id=lab.site_id, name=f"Zoe {i:02d}", language="en"))
        s.commit()
    auth.login(lab.trainer)
    first = client.get("/training/people").get_data(as_text=True)
    assert first.count("/training/people/") == 50 and "Page 1 of 2" in first
    second = client.get("/training/people?page=2").get_data(as_text=True)
    # 58 + Ada and Bob: 60 active participants (inactive Ina is not listed without a search).
    assert second.count("/training/people/") == 10 and "Zoe 57" in second
    assert "q=Zoe" in client.get("/training/people?q=Zoe").get_data(as_text=True)
