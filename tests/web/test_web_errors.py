"""Error pages: an unknown address and a crash answer with a page in the reader's language, in
the app's own style and with the security headers; the JSON API keeps answering JSON."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from tests.web.conftest import Lab, sign_in


def _headers_are_set(response: object) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"


def test_errors_unknown_address_is_a_styled_page_in_english_and_german(app: Flask) -> None:
    client = app.test_client()
    english = client.get("/no-such-page", headers={"Accept-Language": "en"})
    assert english.status_code == 404 and english.mimetype == "text/html"
    html = english.get_data(as_text=True)
    assert "werkbank.css" in html and '<html lang="en">' in html
    assert "This page does not exist." in html
    assert "Back to the start page" in html
    assert "Not Found" not in html  # not werkzeug's own page
    _headers_are_set(english)
    german = client.get("/no-such-page", headers={"Accept-Language": "de"}).get_data(as_text=True)
    assert '<html lang="de">' in german and "Diese Seite gibt es nicht." in german


def test_errors_a_view_that_answers_404_gets_the_same_page(app: Flask, lab: Lab) -> None:
    client = app.test_client()
    sign_in(client, _person_id(lab.trainer))
    response = client.get("/training/people/999999", headers={"Accept-Language": "en"})
    assert response.status_code == 404
    assert "This page does not exist." in response.get_data(as_text=True)


def test_errors_wrong_method_is_a_page_too(app: Flask) -> None:
    response = app.test_client().delete("/login", headers={"Accept-Language": "en"})
    assert response.status_code == 405 and response.mimetype == "text/html"
    assert "werkbank.css" in response.get_data(as_text=True)
    _headers_are_set(response)


def test_errors_a_crash_is_a_calm_page_with_the_headers(make_app: Callable[..., Flask]) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    def boom() -> str:
        raise RuntimeError("the disk is full")

    boom.access = "public"  # type: ignore[attr-defined]
    app.add_url_rule("/boom", "boom", boom)
    client = app.test_client()
    response = client.get("/boom", headers={"Accept-Language": "de"})
    assert response.status_code == 500 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "werkbank.css" in html and "Auf dem Server ist etwas schiefgegangen." in html
    assert "the disk is full" not in html  # no internals for the visitor
    _headers_are_set(response)
    english = client.get("/boom", headers={"Accept-Language": "en"}).get_data(as_text=True)
    assert "Something went wrong on the server." in english


def test_errors_the_api_keeps_answering_json(app: Flask) -> None:
    response = app.test_client().get("/api/v1/no-such-thing")
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "not_found"


def _person_id(email: str) -> int:
    from sqlalchemy import select

    from server.extensions import db
    from server.models import Person

    with db.session() as s:
        found = s.scalar(select(Person.id).where(Person.email == email))
    assert found is not None
    return found
