"""People and badges on the admin pages: search, create, edit, deactivate; assign, replace, block, unblock."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog, Badge, BadgeStatus, Machine, Person
from server.security import verify_password
from server.services.decision import decide
from tests.web.admin_support import ADA_BADGE, BOB_BADGE, audit_actions, count, seed_training
from tests.web.conftest import PASSWORD, AuthActions, Lab, english, seed_lab


@pytest.fixture
def ids(lab: Lab) -> dict[str, int]:
    return seed_training(lab.site_id)


@pytest.fixture
def admin(client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int]) -> FlaskClient:
    auth.login(lab.admin)
    return client


def _person(person_id: int) -> Person:
    with db.session() as s:
        person = s.get(Person, person_id)
        assert person is not None
        s.expunge(person)
        return person


def _badge(uid: str) -> Badge:
    with db.session() as s:
        badge = s.scalar(select(Badge).where(Badge.uid == uid))
        assert badge is not None
        s.expunge(badge)
        return badge


def _form(lab: Lab, **changes: str) -> dict[str, str]:
    data = {
        "name": "Grace Hopper",
        "email": "Grace@Lab.test",
        "is_participant": "y",
        "language": "en",
        "site_id": str(lab.site_id),
        "cohort": "2026-A",
        "programme": "Digital",
        "external_id": "TN-7",
        "active": "y",
        "password": "",
    }
    data.update(changes)
    return data


# -- the list ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ({"q": "lovelace"}, ["Ada Lovelace"], ["Bob Builder"]),
        ({"q": "bob@lab"}, ["Bob Builder"], ["Ada Lovelace"]),
        ({"q": "beef"}, ["Bob Builder"], ["Ada Lovelace"]),  # part of a badge UID
        ({"role": "trainer"}, ["Tina Trainer"], ["Ada Lovelace"]),
        ({"active": "no"}, ["Ina Inactive"], ["Ada Lovelace"]),
        ({}, ["Ada Lovelace", "Alex Admin"], ["Ina Inactive"]),
    ],
)
def test_admin_people_search_and_filters(
    admin: FlaskClient, query: dict[str, str], shown: list[str], hidden: list[str]
) -> None:
    html = admin.get("/admin/people", query_string=query).get_data(as_text=True)
    for name in shown:
        assert name in html
    for name in hidden:
        assert name not in html


def test_admin_people_search_by_cohort(admin: FlaskClient, ids: dict[str, int]) -> None:
    with db.session() as s:
        person = s.get(Person, ids["bob"])
        assert person is not None
        person.cohort = "Herbst-2026"
    html = admin.get("/admin/people?q=herbst").get_data(as_text=True)
    assert "Bob Builder" in html and "Ada Lovelace" not in html


# -- create and edit -----------------------------------------------------------------------------


def test_admin_person_create_with_password(admin: FlaskClient, lab: Lab) -> None:
    response = admin.post("/admin/people/new", data=_form(lab, password="a long enough secret"))
    assert response.status_code == 302
    with db.session() as s:
        grace = s.scalar(select(Person).where(Person.email == "grace@lab.test"))
        assert grace is not None
        assert (grace.name, grace.cohort, grace.external_id, grace.language) == (
            "Grace Hopper",
            "2026-A",
            "TN-7",
            "en",
        )
        assert grace.is_participant and not grace.is_trainer and grace.active
        assert verify_password(grace.password_hash, "a long enough secret").ok
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "person.create"))
        assert entry is not None and entry.subject == f"person:{grace.id}"
        assert "password_hash" not in entry.detail and entry.detail["password_set"] is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "This field is required."),
        ({"email": "not-an-address"}, "This is not an email address."),
        ({"email": "ADA@lab.test"}, "Ada Lovelace already has this email address."),
        ({"password": "short"}, "The password needs 10 to 1024 characters."),
        ({"language": "fr"}, "Not a valid choice"),
    ],
)
def test_admin_person_create_refuses_bad_input(
    admin: FlaskClient, lab: Lab, changes: dict[str, str], message: str
) -> None:
    before = count(Person)
    response = admin.post("/admin/people/new", data=_form(lab, **changes))
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html
    assert 'aria-invalid="true"' in html
    assert count(Person) == before


def test_admin_person_edit_changes_db_and_audits(admin: FlaskClient, lab: Lab, ids: dict[str, int]) -> None:
    data = _form(lab, name="Ada King", email="ada@lab.test", external_id="TN-1", is_trainer="y")
    assert admin.post(f"/admin/people/{ids['ada']}", data=data).status_code == 302
    ada = _person(ids["ada"])
    assert (ada.name, ada.external_id, ada.is_trainer) == ("Ada King", "TN-1", True)
    with db.session() as s:
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "person.update"))
        assert entry is not None
        assert entry.detail["name"] == ["Ada Lovelace", "Ada King"]
        assert entry.actor_label.startswith("Alex Admin")


def test_admin_person_edit_duplicate_external_id_changes_nothing(
    admin: FlaskClient, lab: Lab, ids: dict[str, int]
) -> None:
    assert (
        admin.post(
            f"/admin/people/{ids['bob']}",
            data=_form(lab, name="Bob Builder", email="bob@lab.test", external_id="TN-9"),
        ).status_code
        == 302
    )
    response = admin.post(
        f"/admin/people/{ids['ada']}",
        data=_form(lab, name="Ada Changed", email="ada@lab.test", external_id="TN-9"),
    )
    assert response.status_code == 400
    assert "Bob Builder already has this external ID." in response.get_data(as_text=True)
    assert _person(ids["ada"]).name == "Ada Lovelace"


def test_admin_cannot_demote_or_deactivate_self(admin: FlaskClient, lab: Lab) -> None:
    with db.session() as s:
        me = s.scalar(select(Person).where(Person.email == lab.admin))
        assert me is not None
        my_id = me.id
    data = _form(lab, name="Alex Admin", email=lab.admin, external_id="", is_participant="")
    response = admin.post(f"/admin/people/{my_id}", data=data)  # no is_admin: the box was unticked
    assert response.status_code == 400
    assert "You cannot take away your own admin role." in response.get_data(as_text=True)
    assert _person(my_id).is_admin


def test_admin_person_deactivate_keeps_history_and_blocks_login(
    admin: FlaskClient, client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int]
) -> None:
    response = admin.post(f"/admin/people/{ids['ada']}/active", data={"active": "0"})
    assert response.status_code == 302
    ada = _person(ids["ada"])
    assert not ada.active
    assert count(Person) == 5  # never deleted
    assert "person.deactivate" in audit_actions()
    auth.logout()
    assert auth.login(lab.participant).status_code == 401
    auth.login(lab.admin)
    admin.post(f"/admin/people/{ids['ada']}/active", data={"active": "1"})
    assert _person(ids["ada"]).active


# -- badges --------------------------------------------------------------------------------------


def test_admin_badge_assign_normalises_uid(admin: FlaskClient, ids: dict[str, int]) -> None:
    response = admin.post(
        f"/admin/people/{ids['ada']}/badges", data={"assign-uid": "de:ad:be:ef:01:02:03", "assign-note": ""}
    )
    assert response.status_code == 302
    badge = _badge("DEADBEEF010203")
    assert badge.person_id == ids["ada"] and badge.status == BadgeStatus.ACTIVE
    assert audit_actions()[-1] == "badge.assign"


@pytest.mark.parametrize(
    ("uid", "message"),
    [
        ("12345", "Not a badge UID"),
        ("ZZZZZZZZ", "Not a badge UID"),
        (BOB_BADGE.lower(), "This badge is already assigned to Bob Builder."),
        ("", "This field is required."),
    ],
)
def test_admin_badge_assign_refuses_bad_uid(
    admin: FlaskClient, ids: dict[str, int], uid: str, message: str
) -> None:
    before = count(Badge)
    response = admin.post(f"/admin/people/{ids['ada']}/badges", data={"assign-uid": uid})
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert count(Badge) == before


def test_admin_badge_replace_marks_old_lost_in_one_step(admin: FlaskClient, ids: dict[str, int]) -> None:
    old = _badge(ADA_BADGE)
    response = admin.post(
        f"/admin/badges/{old.id}/replace",
        data={f"replace-{old.id}-uid": "CAFEBABE", f"replace-{old.id}-note": "lost on the bus"},
    )
    assert response.status_code == 302
    assert _badge(ADA_BADGE).status == BadgeStatus.LOST
    assert _badge(ADA_BADGE).status_changed_at is not None
    new = _badge("CAFEBABE")
    assert new.person_id == ids["ada"] and new.status == BadgeStatus.ACTIVE
    with db.session() as s:
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "badge.replace"))
        assert (
            entry is not None
            and entry.subject == f"badge:{ADA_BADGE}"
            and entry.detail["new_uid"] == "CAFEBABE"
        )


def test_admin_badge_replace_with_taken_uid_changes_nothing(admin: FlaskClient, ids: dict[str, int]) -> None:
    old = _badge(ADA_BADGE)
    response = admin.post(f"/admin/badges/{old.id}/replace", data={f"replace-{old.id}-uid": BOB_BADGE})
    assert response.status_code == 400
    assert "already assigned to Bob Builder" in response.get_data(as_text=True)
    assert _badge(ADA_BADGE).status == BadgeStatus.ACTIVE


def test_admin_badge_block_needs_a_note(admin: FlaskClient, ids: dict[str, int]) -> None:
    badge = _badge(ADA_BADGE)
    response = admin.post(f"/admin/badges/{badge.id}/block", data={f"block-{badge.id}-note": ""})
    assert response.status_code == 400
    assert _badge(ADA_BADGE).status == BadgeStatus.ACTIVE


def test_admin_badge_block_takes_effect_at_the_next_tap(
    admin: FlaskClient, lab: Lab, ids: dict[str, int]
) -> None:
    now = datetime.now(UTC)
    with db.session() as s:
        machine = s.get(Machine, lab.machines["prusa-a"])
        assert machine is not None
        assert decide(s, machine, ADA_BADGE, now).reason != "badge_blocked"
    badge = _badge(ADA_BADGE)
    response = admin.post(
        f"/admin/badges/{badge.id}/block",
        data={f"block-{badge.id}-note": "reported lost"},
        follow_redirects=True,
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f'data-badge="{ADA_BADGE}" data-status="blocked"' in html
    assert "reported lost" in html
    with db.session() as s:
        machine = s.get(Machine, lab.machines["prusa-a"])
        assert machine is not None
        assert machine.allowlist_dirty  # the offline allow-lists are republished too
        decision = decide(s, machine, ADA_BADGE, datetime.now(UTC))
        assert (decision.allowed, decision.reason) == (False, "badge_blocked")
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "badge.block"))
        assert entry is not None and entry.detail["note"] == "reported lost"


def test_admin_badge_unblock(admin: FlaskClient, ids: dict[str, int]) -> None:
    badge = _badge(ADA_BADGE)
    admin.post(f"/admin/badges/{badge.id}/block", data={f"block-{badge.id}-note": "found again?"})
    assert admin.post(f"/admin/badges/{badge.id}/unblock").status_code == 302
    assert _badge(ADA_BADGE).status == BadgeStatus.ACTIVE
    assert audit_actions()[-2:] == ["badge.block", "badge.unblock"]
    # A lost badge cannot be unblocked: nothing changes.
    admin.post(f"/admin/badges/{badge.id}/replace", data={f"replace-{badge.id}-uid": "CAFEBABE"})
    admin.post(f"/admin/badges/{badge.id}/unblock")
    assert _badge(ADA_BADGE).status == BadgeStatus.LOST


def test_admin_badge_block_with_csrf_on(make_app: Callable[..., Flask], password_hash: str) -> None:
    """With CSRF protection on (as in production), the person page's forms carry their token."""
    app = make_app(WTF_CSRF_ENABLED=True)
    lab = seed_lab(password_hash)
    seed_training(lab.site_id)
    client = english(app.test_client())
    token = re.search(
        r'name="csrf_token" type="hidden" value="([^"]+)"', client.get("/login").get_data(as_text=True)
    )
    assert token is not None
    client.post("/login", data={"email": lab.admin, "password": PASSWORD, "csrf_token": token.group(1)})
    badge = _badge(ADA_BADGE)
    html = client.get(f"/admin/people/{badge.person_id}").get_data(as_text=True)
    assert (
        client.post(f"/admin/badges/{badge.id}/block", data={f"block-{badge.id}-note": "x"}).status_code
        == 400
    )
    found = re.search(rf'name="block-{badge.id}-csrf_token" type="hidden" value="([^"]+)"', html)
    assert found is not None
    data = {f"block-{badge.id}-note": "lost", f"block-{badge.id}-csrf_token": found.group(1)}
    assert client.post(f"/admin/badges/{badge.id}/block", data=data).status_code == 302
    assert _badge(ADA_BADGE).status == BadgeStatus.BLOCKED


def test_admin_pages_in_german(admin: FlaskClient, ids: dict[str, int]) -> None:
    admin.get("/language/de")
    html = admin.get(f"/admin/people/{ids['ada']}").get_data(as_text=True)
    assert "Diesen Ausweis sperren" in html and "Neuen Ausweis zuordnen" in html
    badge = _badge(ADA_BADGE)
    response = admin.post(f"/admin/badges/{badge.id}/block", data={f"block-{badge.id}-note": ""})
    assert "Bitte die markierten Felder korrigieren." in response.get_data(as_text=True)
