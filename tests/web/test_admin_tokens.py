"""API tokens on a person's admin page: made once and shown once, used by a program, revoked."""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import ApiToken, AuditLog, Person
from tests.web.admin_support import person_by_email
from tests.web.conftest import AuthActions, Lab


def _person_id(email: str) -> int:
    with db.session() as s:
        return person_by_email(s, email).id


def _api_people(client: FlaskClient, secret: str) -> int:
    return client.get("/api/v1/people", headers={"Authorization": f"Bearer {secret}"}).status_code


def test_admin_makes_a_token_that_works_once_shown_then_revokes_it(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    trainer_id = _person_id(lab.trainer)
    auth.login(lab.admin)
    response = client.post(
        f"/admin/people/{trainer_id}/tokens", data={"token-name": "course export", "token-expires_days": "30"}
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    page = response.get_data(as_text=True)
    found = re.search(r"<code class=\"token-secret\" data-token>(wb_[0-9a-f]{48})</code>", page)
    assert found is not None
    secret = found.group(1)
    assert "course export" in page
    # Shown once: the person page afterwards lists the token by its prefix, never in full.
    again = client.get(f"/admin/people/{trainer_id}").get_data(as_text=True)
    assert secret not in again and secret[:12] in again and "valid until" in again
    client.post("/logout")
    assert _api_people(client, secret) == 200
    with db.session() as s:
        token = s.scalar(select(ApiToken).where(ApiToken.person_id == trainer_id))
        assert token is not None and token.expires_at is not None and token.last_used_at is not None
        made = s.scalar(select(AuditLog).where(AuditLog.action == "token.created"))
        assert made is not None and made.subject == f"person:{trainer_id}" and made.actor_id is not None
        token_id = token.id

    auth.login(lab.admin)
    assert client.post(f"/admin/people/{trainer_id}/tokens/{token_id}/revoke").status_code == 302
    assert "revoked" in client.get(f"/admin/people/{trainer_id}").get_data(as_text=True)
    assert _api_people(client, secret) == 401
    with db.session() as s:
        assert s.scalar(select(AuditLog).where(AuditLog.action == "token.revoked")) is not None


def test_a_token_without_a_name_or_with_a_bad_expiry_is_refused_and_none_is_made(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    person_id = _person_id(lab.participant)
    auth.login(lab.admin)
    for data in ({"token-name": ""}, {"token-name": "x", "token-expires_days": "0"}):
        response = client.post(f"/admin/people/{person_id}/tokens", data=data)
        assert response.status_code == 400
        assert "data-token>" not in response.get_data(as_text=True)
    other = _person_id(lab.trainer)
    with db.session() as s:
        assert s.scalars(select(ApiToken)).all() == []
    # A token id of another person is not found under this person's address.
    client.post(f"/admin/people/{other}/tokens", data={"token-name": "t"})
    with db.session() as s:
        token_id = s.scalar(select(ApiToken.id))
    assert client.post(f"/admin/people/{person_id}/tokens/{token_id}/revoke").status_code == 404


def test_no_token_for_a_deactivated_person(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    with db.session() as s:
        inactive = s.scalar(select(Person).where(Person.email == lab.inactive))
        assert inactive is not None
        person_id = inactive.id
    auth.login(lab.admin)
    assert "Make a new token" not in client.get(f"/admin/people/{person_id}").get_data(as_text=True)
    response = client.post(f"/admin/people/{person_id}/tokens", data={"token-name": "x"})
    assert response.status_code == 303
    with db.session() as s:
        assert s.scalars(select(ApiToken)).all() == []
