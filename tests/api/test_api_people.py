"""People and badges: reading, creating, changing, refusing bad input without changing anything."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from server.extensions import db
from server.models import AuditLog, Badge, BadgeStatus, Machine, Person
from tests.api.conftest import Api, ApiLab, error_code


def _counts() -> tuple[int, int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count(Person.id))) or 0,
            s.scalar(select(func.count(Badge.id))) or 0,
            s.scalar(select(func.count(AuditLog.id))) or 0,
        )


def test_people_participant_sees_only_themselves(api: Api, lab: ApiLab) -> None:
    listed = api.get("/people", as_="participant").get_json()
    assert [p["id"] for p in listed["items"]] == [lab.people["ada"]]
    assert listed["next_offset"] is None
    me = api.get(f"/people/{lab.people['ada']}", as_="participant").get_json()
    assert me["roles"] == ["participant"] and me["cohort"] == "Cohort A" and me["site"] == "nord"
    other = api.get(f"/people/{lab.people['bob']}", as_="participant")
    assert other.status_code == 403 and error_code(other) == "forbidden"
    # Even an id that does not exist: a participant learns nothing about other ids.
    assert api.get("/people/9999", as_="participant").status_code == 403
    assert api.get("/people/9999", as_="admin").status_code == 404


def test_people_filters(api: Api, lab: ApiLab) -> None:
    def emails(**params: Any) -> list[str]:
        return [p["email"] for p in api.get("/people", as_="trainer", **params).get_json()["items"]]

    assert emails(role="trainer") == ["tina@lab.test", "lara@lab.test"]
    assert emails(active="false") == ["ina@lab.test"]
    assert emails(email="ADA@lab.test") == ["ada@lab.test"]
    assert emails(cohort="Cohort A") == ["ada@lab.test"]
    assert emails(site="sued") == []


def test_people_pagination_walks_every_person_once(api: Api, lab: ApiLab) -> None:
    seen: list[int] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        body = api.get("/people", limit=2, offset=offset).get_json()
        assert body["limit"] == 2 and len(body["items"]) <= 2
        seen += [p["id"] for p in body["items"]]
        offset = body["next_offset"]
        pages += 1
    assert pages == 3 and seen == sorted(lab.people.values())
    assert api.get("/people", limit=500).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "501"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"active": "maybe"}, "active"),
        ({"role": "wizard"}, "role"),
        ({"person": "3"}, "person"),
    ],
)
def test_people_bad_query_is_400_naming_the_parameter(api: Api, params: dict[str, str], field: str) -> None:
    response = api.get("/people", **params)
    assert response.status_code == 400 and error_code(response) == "invalid_query"
    assert field in response.get_json()["error"]["fields"]


def test_people_create_and_update_are_audited(api: Api, lab: ApiLab) -> None:
    created = api.post(
        "/people",
        {
            "name": "  Grace   Hopper ",
            "site": "nord",
            "email": "Grace@Lab.test",
            "roles": ["participant", "trainer"],
            "cohort": "Cohort B",
            "language": "en",
            "external_id": "P-1001",
        },
    )
    assert created.status_code == 201
    person = created.get_json()
    assert person["name"] == "Grace Hopper" and person["email"] == "grace@lab.test"
    assert person["roles"] == ["participant", "trainer"] and person["active"] is True

    patched = api.patch(f"/people/{person['id']}", {"roles": ["admin"], "cohort": None, "site": "sued"})
    assert patched.status_code == 200
    after = patched.get_json()
    assert after["roles"] == ["admin"] and after["cohort"] is None and after["site"] == "sued"
    assert after["email"] == "grace@lab.test"  # absent fields stay
    unchanged = api.patch(f"/people/{person['id']}", {"cohort": None})
    assert unchanged.status_code == 200

    with db.session() as s:
        entries = s.scalars(
            select(AuditLog).where(AuditLog.subject == f"person:{person['id']}").order_by(AuditLog.id)
        ).all()
        assert [e.action for e in entries] == ["person.created", "person.updated"]
        assert entries[1].detail["before"] == {
            "roles": ["participant", "trainer"],
            "cohort": "Cohort B",
            "site": "nord",
        }
        assert entries[1].actor_id == lab.people["admin"]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"name": "X", "site": "nord", "email": "ADA@lab.test"}, 409, "duplicate_email", "email"),
        ({"name": "X", "site": "nord", "bogus": 1}, 400, "invalid_body", "bogus"),
        ({"name": 7, "site": "nord"}, 400, "invalid_body", "name"),
        ({"name": "X", "site": "nord", "active": "yes"}, 400, "invalid_body", "active"),
        ({"name": "X", "site": "nord", "email": "not-an-email"}, 400, "invalid_body", "email"),
        ({"name": "X", "site": "nord", "roles": ["boss"]}, 400, "invalid_body", "roles[0]"),
        ({"name": "   ", "site": "nord"}, 400, "invalid_body", "name"),
        ({"site": "nord"}, 400, "invalid_body", "name"),
        ({"name": "X", "site": "atlantis"}, 422, "unknown_site", "site"),
        ([{"name": "X"}], 400, "invalid_body", None),
    ],
)
def test_people_create_bad_body_changes_nothing(
    api: Api, lab: ApiLab, body: Any, status: int, code: str, field: str | None
) -> None:
    before = _counts()
    response = api.post("/people", body)
    assert response.status_code == status and error_code(response) == code, response.get_json()
    if field is not None:
        assert field in response.get_json()["error"]["fields"], response.get_json()
    assert _counts() == before


def test_people_update_refuses_taken_email_and_bad_json(api: Api, lab: ApiLab) -> None:
    before = _counts()
    taken = api.patch(f"/people/{lab.people['bob']}", {"email": "ada@lab.test"})
    assert taken.status_code == 409 and error_code(taken) == "duplicate_email"
    broken = api.call("PATCH", f"/people/{lab.people['bob']}", data="{not json")
    assert broken.status_code == 400 and error_code(broken) == "invalid_json"
    empty = api.call("PATCH", f"/people/{lab.people['bob']}", data="")
    assert empty.status_code == 400
    missing = api.patch("/people/9999", {"cohort": "x"})
    assert missing.status_code == 404 and error_code(missing) == "not_found"
    assert _counts() == before
    with db.session() as s:
        bob = s.get(Person, lab.people["bob"])
        assert bob is not None and bob.email == "bob@lab.test"


def test_badges_participant_sees_own_admin_all(api: Api, lab: ApiLab) -> None:
    own = api.get("/badges", as_="participant").get_json()["items"]
    assert [b["uid"] for b in own] == ["04A224B2C35E80"]
    everyone = api.get("/badges").get_json()["items"]
    assert {b["uid"] for b in everyone} == {"04A224B2C35E80", "DEADBEEF", "0BADCAFE"}
    lost = api.get("/badges", status="lost").get_json()["items"]
    assert [b["uid"] for b in lost] == ["0BADCAFE"]
    assert api.get("/badges", as_="trainer").get_json()["items"] == []


def test_badges_assign_and_block_are_audited_and_dirty_the_allowlists(api: Api, lab: ApiLab) -> None:
    with db.session() as s:
        for machine in s.scalars(select(Machine)):
            machine.allowlist_dirty = False
    created = api.post("/badges", {"uid": "cafef00d", "person_id": lab.people["bob"], "note": "spare"})
    assert created.status_code == 201
    badge = created.get_json()
    assert badge["uid"] == "CAFEF00D" and badge["status"] == "active" and badge["status_changed_at"] is None

    blocked = api.patch("/badges/cafef00d", {"status": "blocked"})
    assert blocked.status_code == 200
    assert blocked.get_json()["status"] == "blocked" and blocked.get_json()["status_changed_at"] is not None
    with db.session() as s:
        stored = s.scalar(select(Badge).where(Badge.uid == "CAFEF00D"))
        assert stored is not None and stored.status == BadgeStatus.BLOCKED
        actions = s.scalars(select(AuditLog.action).where(AuditLog.action.like("badge.%"))).all()
        assert actions == ["badge.assigned", "badge.blocked"]
        assert all(m.allowlist_dirty for m in s.scalars(select(Machine)))


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"uid": "DEADBEEF", "person_id": 1}, 409, "duplicate_uid", "uid"),
        ({"uid": "XYZ", "person_id": 1}, 400, "invalid_body", "uid"),
        ({"uid": "DEADBEEF0", "person_id": 1}, 400, "invalid_body", "uid"),
        ({"uid": "CAFEF00D", "person_id": "1"}, 400, "invalid_body", "person_id"),
        ({"uid": "CAFEF00D", "person_id": 9999}, 422, "unknown_person", "person_id"),
        ({"uid": "CAFEF00D"}, 400, "invalid_body", "person_id"),
    ],
)
def test_badges_bad_body_changes_nothing(
    api: Api, lab: ApiLab, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    before = _counts()
    response = api.post("/badges", body)
    assert response.status_code == status and error_code(response) == code, response.get_json()
    assert field in response.get_json()["error"]["fields"]
    assert _counts() == before


def test_badges_update_refuses_bad_status_and_unknown_uid(api: Api, lab: ApiLab) -> None:
    before = _counts()
    bad = api.patch("/badges/DEADBEEF", {"status": "stolen"})
    assert bad.status_code == 400 and "status" in bad.get_json()["error"]["fields"]
    assert api.patch("/badges/FFFFFFFF", {"status": "lost"}).status_code == 404
    assert _counts() == before


def test_api_errors_are_json_for_unknown_paths_and_methods(api: Api) -> None:
    unknown = api.client.get(
        "/api/v1/nothing-here", headers={"Authorization": f"Bearer {api.lab.tokens['admin']}"}
    )
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "not_found"
    wrong = api.call("DELETE", "/people")
    assert wrong.status_code == 405 and error_code(wrong) == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]
    # Outside the API, a 404 is still a page.
    assert api.client.get("/nothing-here").mimetype == "text/html"


def test_people_admin_cannot_lock_themselves_out(api: Api, lab: ApiLab) -> None:
    me = lab.people["admin"]
    for body in ({"active": False}, {"roles": ["participant"]}):
        refused = api.patch(f"/people/{me}", body)
        assert refused.status_code == 422 and error_code(refused) == "own_admin"
    assert api.patch(f"/people/{me}", {"roles": ["admin", "trainer"]}).status_code == 200
