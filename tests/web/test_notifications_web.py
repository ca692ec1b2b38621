"""Notifications on a page: the partial lists unread ones, "mark read" takes them away.

The partial is shown on a tiny test page (the real pages that include it belong to other
work), logged in through the real login form; with CSRF switched on where it matters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, timedelta

import pytest
from flask import Flask, render_template_string
from flask.testing import FlaskClient
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from server.adapters.web.auth import current, login_required
from server.adapters.web.l10n import current_language
from server.extensions import db
from server.models import Competency, Level, Notification, Person
from server.services import notifications, training
from tests.web.conftest import PASSWORD, AuthActions, Lab, english, seed_lab

# What a page does to show them (me.html will do the same).
PAGE = '{% include "_notifications.html" %}'


@login_required
def _test_page() -> ResponseReturnValue:
    user = current()
    assert user is not None
    return render_template_string(
        "<main>{% set notifications = notifications_for(user.id, language) %}" + PAGE + "</main>",
        user=user,
        language=current_language(),
    )


def _with_test_page(app: Flask) -> Flask:
    app.add_url_rule("/_test/notifications", "test_notifications", _test_page)
    return app


@pytest.fixture
def page_app(make_app: Callable[..., Flask]) -> Flask:
    return _with_test_page(make_app())


@pytest.fixture
def page_client(page_app: Flask) -> FlaskClient:
    return english(page_app.test_client())


def _expiring_lasers(today: date) -> None:
    """Ada (English) and Bob (German) hold a laser briefing ending in 10 days; remind them."""
    with db.session() as s:
        laser = Competency(
            slug="laser-safety", name="Laser safety briefing", name_de="Laser-Sicherheitsunterweisung"
        )
        s.add(laser)
        s.flush()
        for email in ("ada@lab.test", "bob@lab.test"):
            person = s.scalars(select(Person).where(Person.email == email)).one()
            s.add(
                training.Qualification(
                    person_id=person.id,
                    competency_id=laser.id,
                    action=training.QualificationAction.GRANTED,
                    level=Level.INDEPENDENT,
                    valid_until=today + timedelta(days=10),
                )
            )
        s.flush()
        notifications.remind_expiring(s, today)


def _unread(email: str) -> list[Notification]:
    with db.session() as s:
        person = s.scalars(select(Person).where(Person.email == email)).one()
        return list(notifications.unread(s, person.id))


TODAY = date(2026, 11, 18)


def test_notifications_partial_lists_unread_in_the_readers_language(
    page_app: Flask, page_client: FlaskClient, password_hash: str
) -> None:
    lab = seed_lab(password_hash)
    _expiring_lasers(TODAY)
    auth = AuthActions(page_client)
    auth.login(lab.participant)  # Ada reads English
    html = page_client.get("/_test/notifications").get_data(as_text=True)
    assert "News for you" in html
    assert "Your Laser safety briefing expires on November 28, 2026. Ask a trainer to renew it." in html
    [mine] = _unread(lab.participant)
    assert f'name="id" value="{mine.id}"' in html
    assert 'action="/notifications/read"' in html and 'name="csrf_token"' in html
    assert "Bob Builder" not in html  # the trainer's reminder is not hers
    auth.logout()

    auth.login(lab.other_participant)  # Bob's profile says German
    html = page_client.get("/_test/notifications").get_data(as_text=True)
    assert "Neues für Sie" in html and "Als gelesen markieren" in html
    assert "Ihre Qualifikation Laser-Sicherheitsunterweisung läuft am 28. November 2026 ab." in html


def test_notifications_partial_is_empty_without_news(page_client: FlaskClient, password_hash: str) -> None:
    lab = seed_lab(password_hash)
    AuthActions(page_client).login(lab.participant)
    html = page_client.get("/_test/notifications").get_data(as_text=True)
    assert html == "<main></main>"


def test_notifications_mark_read_with_the_forms_csrf_token(
    make_app: Callable[..., Flask], password_hash: str
) -> None:
    app = _with_test_page(make_app(WTF_CSRF_ENABLED=True))
    client = english(app.test_client())
    lab = seed_lab(password_hash)
    _expiring_lasers(TODAY)

    login_page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login_page)
    assert token is not None
    client.post("/login", data={"email": lab.participant, "password": PASSWORD, "csrf_token": token[1]})

    html = client.get("/_test/notifications").get_data(as_text=True)
    form_token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert form_token is not None
    [mine] = _unread(lab.participant)

    forged = client.post("/notifications/read", data={"id": str(mine.id)})
    assert forged.status_code == 400  # no token: nothing happens
    assert len(_unread(lab.participant)) == 1

    response = client.post(
        "/notifications/read",
        data={"id": str(mine.id), "next": "/_test/notifications", "csrf_token": form_token[1]},
    )
    assert response.status_code == 302 and response.headers["Location"] == "/_test/notifications"
    assert _unread(lab.participant) == []
    assert "News for you" not in client.get("/_test/notifications").get_data(as_text=True)


def test_notifications_mark_read_leaves_other_peoples_alone(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    _expiring_lasers(TODAY)
    [adas] = _unread(lab.participant)
    auth.login(lab.other_participant)
    response = client.post("/notifications/read", data={"id": [str(adas.id), "x"], "next": "//evil.example"})
    assert response.status_code == 302 and response.headers["Location"] == "/me"  # no foreign redirect
    assert len(_unread(lab.participant)) == 1
    assert len(_unread(lab.other_participant)) == 1


def test_notifications_mark_read_needs_login(client: FlaskClient, lab: Lab) -> None:
    _expiring_lasers(TODAY)
    [adas] = _unread(lab.participant)
    response = client.post("/notifications/read", data={"id": str(adas.id)})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert len(_unread(lab.participant)) == 1
    with db.session() as s:
        stored = s.get(Notification, adas.id)
        assert stored is not None and stored.read_at is None
