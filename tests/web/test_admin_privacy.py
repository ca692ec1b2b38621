"""Personal data on the admin person page: download everything, erase with a typed confirmation."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog, Badge, Person
from tests.web.admin_support import ADA_BADGE, seed_training
from tests.web.conftest import AuthActions, Lab


@pytest.fixture
def ids(lab: Lab) -> dict[str, int]:
    return seed_training(lab.site_id)


@pytest.fixture
def admin(client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int]) -> FlaskClient:
    auth.login(lab.admin)
    return client


def test_admin_privacy_download_is_everything_about_the_person(
    admin: FlaskClient, ids: dict[str, int]
) -> None:
    page = admin.get(f"/admin/people/{ids['ada']}").get_data(as_text=True)
    assert "Download all data (JSON)" in page
    response = admin.post(f"/admin/people/{ids['ada']}/export")
    assert response.status_code == 200
    assert "attachment" in response.headers["Content-Disposition"]
    data = json.loads(response.get_data(as_text=True))
    assert data["person"]["name"] == "Ada Lovelace" and ADA_BADGE in [b["uid"] for b in data["badges"]]
    assert {"sessions", "qualifications", "bookings", "audit_log"} <= set(data)
    with db.session() as s:
        assert s.scalars(select(AuditLog).where(AuditLog.action == "person.export")).one()


def test_admin_privacy_erase_needs_the_typed_name(admin: FlaskClient, ids: dict[str, int]) -> None:
    wrong = admin.post(f"/admin/people/{ids['ada']}/erase", data={"confirm": "Ada"}, follow_redirects=True)
    assert "type the person&#39;s name exactly" in wrong.get_data(as_text=True)
    with db.session() as s:
        ada = s.get(Person, ids["ada"])
        assert ada is not None and ada.name == "Ada Lovelace" and ada.erased_at is None

    done = admin.post(
        f"/admin/people/{ids['ada']}/erase", data={"confirm": "Ada Lovelace"}, follow_redirects=True
    )
    page = done.get_data(as_text=True)
    assert "Personal data erased" in page and "Ada Lovelace" not in page
    with db.session() as s:
        ada = s.get(Person, ids["ada"])
        assert ada is not None and ada.name.startswith("Person ") and ada.email is None and not ada.active
        assert s.scalar(select(Badge).where(Badge.uid == ADA_BADGE)) is None
        assert s.scalars(select(AuditLog).where(AuditLog.action == "person.erase")).one()


def test_admin_privacy_admin_cannot_erase_themselves(admin: FlaskClient, lab: Lab) -> None:
    with db.session() as s:
        me = s.scalar(select(Person).where(Person.email == lab.admin))
        assert me is not None
        my_id, my_name = me.id, me.name
    admin.post(f"/admin/people/{my_id}/erase", data={"confirm": my_name})
    with db.session() as s:
        assert s.get(Person, my_id).erased_at is None  # type: ignore[union-attr]
