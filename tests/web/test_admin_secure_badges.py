"""Secure badges on the admin pages: the site's card rule, weaker UID badges shown, issuing a secure badge."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import (
    BadgeEnrolment,
    CardSecurity,
    Device,
    EnrolmentStatus,
    Machine,
    Site,
)
from tests.web.admin_support import ADA_BADGE, audit_actions, seed_training
from tests.web.conftest import AuthActions, Lab


@pytest.fixture
def ids(lab: Lab) -> dict[str, int]:
    return seed_training(lab.site_id)


@pytest.fixture
def admin(client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int]) -> FlaskClient:
    auth.login(lab.admin)
    return client


@pytest.fixture
def station(lab: Lab) -> str:
    """A device of one of the site's machines, flagged as enrolment station."""
    with db.session() as s:
        machine = s.scalars(
            select(Machine).where(Machine.site_id == lab.site_id).order_by(Machine.id)
        ).first()
        assert machine is not None
        if machine.device is None:
            s.add(Device(id="pi-front-desk", machine_id=machine.id))
            s.flush()
            s.refresh(machine)
        assert machine.device is not None
        machine.device.enrolment_station = True
        s.commit()
        return machine.device.id


def _enrolments() -> list[BadgeEnrolment]:
    with db.session() as s:
        rows = list(s.scalars(select(BadgeEnrolment).order_by(BadgeEnrolment.created_at)))
        for row in rows:
            s.expunge(row)
        return rows


def test_admin_person_page_marks_uid_badges_as_weaker(admin: FlaskClient, ids: dict[str, int]) -> None:
    page = admin.get(f"/admin/people/{ids['ada']}").get_data(as_text=True)
    assert ADA_BADGE in page
    assert 'data-kind="uid"' in page and "can be copied" in page


def test_admin_issues_and_cancels_a_secure_badge(
    admin: FlaskClient, ids: dict[str, int], station: str
) -> None:
    page = admin.get(f"/admin/people/{ids['ada']}").get_data(as_text=True)
    assert "Issue a secure badge" in page and station in page
    response = admin.post(f"/admin/people/{ids['ada']}/enrolments", data={"enrol-device_id": station})
    assert response.status_code == 302
    (enrolment,) = _enrolments()
    assert (enrolment.person_id, enrolment.device_id, enrolment.status) == (
        ids["ada"],
        station,
        EnrolmentStatus.PENDING,
    )
    assert audit_actions()[-1] == "badge.enrol_start"
    page = admin.get(f"/admin/people/{ids['ada']}").get_data(as_text=True)
    assert f"Secure badge waiting at {station}" in page

    assert admin.post(f"/admin/enrolments/{enrolment.id}/cancel").status_code == 302
    assert _enrolments()[0].status == EnrolmentStatus.CANCELLED
    assert audit_actions()[-1] == "badge.enrol_cancel"


def test_admin_cannot_issue_at_a_device_that_is_no_station(
    admin: FlaskClient, ids: dict[str, int], lab: Lab
) -> None:
    with db.session() as s:
        device = s.scalars(select(Device).join(Machine).where(Machine.site_id == lab.site_id)).first()
        assert device is not None and not device.enrolment_station
        plain = device.id
    response = admin.post(f"/admin/people/{ids['ada']}/enrolments", data={"enrol-device_id": plain})
    assert response.status_code == 400
    assert _enrolments() == []


def test_admin_site_card_rule_is_saved_and_audited(admin: FlaskClient, lab: Lab) -> None:
    form = admin.get(f"/admin/sites/{lab.site_id}").get_data(as_text=True)
    assert "Only secure badges unlock" in form
    response = admin.post(
        f"/admin/sites/{lab.site_id}",
        data={
            "slug": "nord",
            "name": "Lernwerkstatt Nord",
            "timezone": "Europe/Berlin",
            "card_security": "secure_required",
        },
    )
    assert response.status_code == 302
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None and site.card_security == CardSecurity.SECURE_REQUIRED
    assert "site.card_security" in audit_actions()
