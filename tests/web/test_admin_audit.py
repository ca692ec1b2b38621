"""The audit log reads as sentences in the reader's language, with local times, and filters by
person, action and local days."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog, Competency, Level, Machine, Person
from server.services import bookings, training
from tests.web.conftest import AuthActions, Lab
from tests.web.test_bookings_pages import add_bookings, tomorrow_at


def _person(s, email: str) -> Person:  # type: ignore[no-untyped-def]
    found = s.scalar(select(Person).where(Person.email == email))
    assert found is not None
    return found


def _real_entries(lab: Lab) -> None:
    """A grant, a booking and its move, made by the services as the pages make them."""
    add_bookings(lab)
    now = datetime.now(UTC)
    with db.session() as s:
        admin = _person(s, lab.admin)
        ada = _person(s, lab.participant)
        bob = _person(s, lab.other_participant)
        laser = s.scalar(select(Competency).where(Competency.slug == "laser"))
        assert laser is not None
        training.grant(s, ada, laser, Level.BRIEFED, admin, "Briefing on Monday", now, now.date())
        machine = s.get(Machine, lab.machines["prusa-a"])
        assert machine is not None
        start = tomorrow_at(10)
        booking = bookings.create(s, bob, machine, start, start + timedelta(hours=1), bob, now)
        bookings.move(s, booking, start + timedelta(hours=2), start + timedelta(hours=3), bob, now)
        s.commit()


def test_audit_entries_read_as_sentences_with_local_times(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    _real_entries(lab)
    auth.login(lab.admin)
    html = client.get("/admin/audit").get_data(as_text=True)
    assert "Granted Laser cutting at level Briefed to Ada Lovelace." in html
    # 12:00 to 13:00 in Berlin (11:00 UTC in winter): the local time.
    assert re.search(r"Moved the booking of Bob Builder on Prusa A to [^<]*12:00.PM.1:00.PM", html)
    assert '{"machine"' not in html and "+00:00" not in html  # no raw JSON, no UTC stamps
    # German, for an admin who reads German.
    client.get("/language/de")
    german = client.get("/admin/audit").get_data(as_text=True)
    assert "Ada Lovelace hat Laserschneiden auf Stufe Eingewiesen erhalten." in german


def test_audit_unknown_actions_fall_back_to_a_readable_list(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    with db.session() as s:
        s.add(
            AuditLog(
                at=datetime.now(UTC),
                action="gadget.tuned",
                subject="gadget:7",
                detail={"colour_mode": "dark", "since": "2026-11-18T09:30:00+00:00", "sizes": [1, 2]},
            )
        )
        s.commit()
    auth.login(lab.admin)
    html = client.get("/admin/audit").get_data(as_text=True)
    assert "gadget.tuned" in html
    assert "Colour mode" in html and "dark" in html
    assert "10:30" in html  # the ISO time, in local time
    assert "1, 2" in html


def test_audit_filters_by_person_action_and_local_days(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    _real_entries(lab)
    # 23:30 UTC on 17 November is 00:30 on 18 November in Berlin.
    late = datetime(2026, 11, 17, 23, 30, tzinfo=UTC)
    with db.session() as s:
        s.add(AuditLog(at=late, action="site.update", subject="site:1", detail={"name": ["A", "B"]}))
        s.commit()
    auth.login(lab.admin)
    ada_only = client.get("/admin/audit?person=Ada").get_data(as_text=True)
    assert "Ada Lovelace" in ada_only and "Bob Builder" not in ada_only
    bob_only = client.get("/admin/audit?person=bob%40lab.test").get_data(as_text=True)
    assert "Moved the booking" in bob_only and "Granted" not in bob_only
    moves = client.get("/admin/audit?action=booking.move").get_data(as_text=True)
    assert "Moved the booking" in moves and "Booked Prusa A" not in moves
    on_18th = client.get("/admin/audit?from=2026-11-18&to=2026-11-18").get_data(as_text=True)
    assert "site:1" in on_18th or "A → B" in on_18th
    on_17th = client.get("/admin/audit?from=2026-11-17&to=2026-11-17").get_data(as_text=True)
    assert "A → B" not in on_17th
    bad = client.get("/admin/audit?from=yesterday")
    assert bad.status_code == 400 and "is not a date" in bad.get_data(as_text=True)
