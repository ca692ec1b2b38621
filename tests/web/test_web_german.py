"""German stays German: a German reader sees the German names of sites, machine types,
competencies and training steps, is addressed as "Sie" on their own page, and is told plainly
when today's booking times are over rather than that the lab is closed."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from server.extensions import db
from server.models import MachineType, OpeningHours, Person, Site, TrainingStep
from tests.web.conftest import TZ, AuthActions, Lab
from tests.web.test_web_training import add_training

GERMAN = {
    "FDM 3D printer": "FDM-3D-Drucker",
    "CO2 laser cutter": "CO2-Laserschneider",
    "Laser safety briefing": "Laser-Sicherheitsunterweisung",
    "Supervised cutting": "Schneiden unter Aufsicht",
    "Printer briefing": "Einweisung am Drucker",
}


def _german_lab(lab: Lab) -> Lab:
    add_training(lab)
    with db.session() as s:
        for english, german in GERMAN.items():
            s.execute(update(MachineType).where(MachineType.name == english).values(name_de=german))
            s.execute(update(TrainingStep).where(TrainingStep.name == english).values(name_de=german))
        s.execute(
            update(Site).where(Site.id == lab.site_id).values(name="North workshop", name_de="Werkstatt Nord")
        )
        s.commit()
    return lab


def _german(client: FlaskClient) -> FlaskClient:
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    return client


def _login_german(client: FlaskClient, email: str) -> None:
    _german(client)
    assert AuthActions(client).login(email).status_code in (302, 303)
    with db.session() as s:
        s.execute(update(Person).where(Person.email == email).values(language="de"))
        s.commit()
    client.get("/language/de")


def test_german_overview_names_machine_types_and_site_in_german(client: FlaskClient, lab: Lab) -> None:
    _german_lab(lab)
    _login_german(client, lab.trainer)
    page = client.get("/").get_data(as_text=True)
    assert "CO2-Laserschneider" in page and "FDM-3D-Drucker" in page and "Werkstatt Nord" in page
    assert "CO2 laser cutter" not in page and "FDM 3D printer" not in page and "North workshop" not in page
    live = client.get("/live.json").get_json()
    assert {m["type"] for m in live["machines"]} == {"CO2-Laserschneider", "FDM-3D-Drucker"}
    assert live["site"]["name"] == "Werkstatt Nord"


def test_german_training_page_names_the_next_step_in_german(client: FlaskClient, lab: Lab) -> None:
    _german_lab(lab)
    _login_german(client, lab.other_participant)
    page = client.get("/me").get_data(as_text=True)
    assert "Als Nächstes: Laser-Sicherheitsunterweisung" in page
    assert "Einweisung am Drucker" in page
    assert "Laser safety briefing" not in page and "Printer briefing" not in page


def test_german_booking_refusal_speaks_to_the_reader(client: FlaskClient, lab: Lab) -> None:
    """Bob (no training) books the laser himself: "Sie", never his own name in the third person."""
    _german_lab(lab)
    _login_german(client, lab.other_participant)
    day = datetime.now(UTC).astimezone(TZ).date() + timedelta(days=1)
    start = datetime.combine(day, time(10), tzinfo=TZ).strftime("%Y-%m-%dT%H:%M")
    refused = client.post("/bookings/machines/laser-1/book", data={"start": start, "duration_min": "60"})
    text = refused.get_data(as_text=True)
    assert refused.status_code == 400
    assert "Für CO2-Laserschneider fehlt noch Ihre Einweisung." in text
    assert "Bob Builder ist" not in text and "CO2 laser cutter" not in text


def test_german_site_day_says_todays_times_are_over_not_closed(
    client: FlaskClient, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 23:55 the day grid is empty because every slot of today is past, not because the lab
    is closed: the page says which. A day without opening hours is closed."""
    today = datetime.now(UTC).astimezone(TZ).date()
    late = datetime.combine(today, time(23, 55), tzinfo=TZ)
    monkeypatch.setattr("server.adapters.web.bookings._now", lambda: late)
    with db.session() as s:
        s.add(OpeningHours(site_id=lab.site_id, weekday=today.weekday(), opens=time(9), closes=time(21)))
        s.commit()
    _login_german(client, lab.participant)
    page = client.get("/bookings/site").get_data(as_text=True)
    assert "Die Zeiten für heute sind vorbei." in page
    assert "geschlossen" not in page.split("<main", 1)[-1].split("slot-legend", 1)[0]
    tomorrow = today + timedelta(days=1)
    closed_day = client.get(f"/bookings/site?day={tomorrow.isoformat()}").get_data(as_text=True)
    assert "An diesem Tag ist geschlossen." in closed_day
