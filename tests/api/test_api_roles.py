"""Every API route against every role: admin, trainer, participant, and no token at all."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from tests.api.conftest import PREFIX, Api, ApiLab, slot

ROLES = ("admin", "trainer", "participant", None)
OK, CREATED, UNAUTHORIZED, FORBIDDEN = 200, 201, 401, 403


def _all(status: int) -> dict[str | None, int]:
    return {"admin": status, "trainer": status, "participant": status, None: UNAUTHORIZED}


def _admin(status: int) -> dict[str | None, int]:
    return {"admin": status, "trainer": FORBIDDEN, "participant": FORBIDDEN, None: UNAUTHORIZED}


def _staff(status: int) -> dict[str | None, int]:
    return {"admin": status, "trainer": status, "participant": FORBIDDEN, None: UNAUTHORIZED}


# (method, path, body, expected status by role). {ada} and {bob} are person ids, {step} the
# fdm-printing briefing. Ada is the participant's own person; Bob is someone else.
MATRIX: list[tuple[str, str, Any, dict[str | None, int]]] = [
    ("GET", "/openapi.json", None, {"admin": OK, "trainer": OK, "participant": OK, None: OK}),
    ("GET", "/people", None, _all(OK)),
    ("GET", "/people/{ada}", None, _all(OK)),
    ("GET", "/people/{bob}", None, _staff(OK)),
    ("POST", "/people", {"name": "New Person", "site": "nord", "email": "new@lab.test"}, _admin(CREATED)),
    ("PATCH", "/people/{bob}", {"cohort": "Cohort B"}, _admin(OK)),
    ("GET", "/badges", None, _all(OK)),
    ("GET", "/badges?person_id={bob}", None, _admin(OK)),
    ("POST", "/badges", {"uid": "CAFEF00D", "person_id": "{bob}"}, _admin(CREATED)),
    ("PATCH", "/badges/DEADBEEF", {"status": "blocked"}, _admin(OK)),
    ("GET", "/machines", None, _all(OK)),
    ("GET", "/machines/laser-1", None, _all(OK)),
    ("GET", "/qualifications", None, _all(OK)),
    ("GET", "/qualifications?person_id={bob}", None, _staff(OK)),
    (
        "POST",
        "/qualifications/grant",
        {"person_id": "{bob}", "competency": "fdm-printing", "level": "briefed", "reason": "prior course"},
        _staff(CREATED),
    ),
    ("POST", "/qualifications/renew", {"person_id": "{ada}", "competency": "laser-safety"}, _staff(CREATED)),
    (
        "POST",
        "/qualifications/revoke",
        {"person_id": "{ada}", "competency": "fdm-printing", "reason": "unsafe use"},
        _staff(CREATED),
    ),
    ("POST", "/training/steps", {"person_id": "{bob}", "step_id": "{step}"}, _staff(CREATED)),
    ("GET", "/sessions", None, _all(OK)),
    ("GET", "/sessions?person_id={ada}", None, _all(OK)),
    ("GET", "/sessions?person_id={bob}", None, _staff(OK)),
    ("GET", "/bookings", None, _all(OK)),
    ("GET", "/bookings?person_id={ada}", None, _all(OK)),
    ("GET", "/bookings?person_id={bob}", None, _staff(OK)),
    ("GET", "/bookings/{booking_id}", None, _all(OK)),
    (
        "POST",
        "/bookings",
        {"machine": "laser-1", "starts_at": "{t10}", "ends_at": "{t11}", "person_id": "{ada}"},
        _all(CREATED),
    ),
    ("POST", "/bookings/{booking_id}/cancel", None, _all(OK)),
    ("POST", "/bookings/{booking_id}/move", {"starts_at": "{t12}", "ends_at": "{t13}"}, _all(OK)),
]


def _fill(value: Any, lab: ApiLab) -> Any:
    names: dict[str, Any] = {
        "ada": lab.people["ada"],
        "bob": lab.people["bob"],
        "step": lab.steps["fdm-printing/briefing"],
        "booking_id": lab.bookings["ada"],
    }
    now = datetime.now(UTC)
    names |= {f"t{h}": slot(now, 1, h).isoformat() for h in (10, 11, 12, 13)}
    if isinstance(value, str):
        whole = re.fullmatch(r"\{(\w+)\}", value)
        if whole:
            return names[whole.group(1)]
        return value.format(**names)
    if isinstance(value, dict):
        return {k: _fill(v, lab) for k, v in value.items()}
    return value


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r or "no-token")
@pytest.mark.parametrize(
    ("method", "path", "body", "expected"), MATRIX, ids=[f"{m} {p}" for m, p, _, _ in MATRIX]
)
def test_api_roles_every_route_refuses_the_wrong_role(
    api: Api,
    lab: ApiLab,
    role: str | None,
    method: str,
    path: str,
    body: Any,
    expected: dict[str | None, int],
) -> None:
    path = _fill(path, lab)
    response = api.call(method, path, role, json=_fill(body, lab) if body is not None else None)
    assert response.status_code == expected[role], response.get_json()


def _template(rule: str) -> str:
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.removeprefix(PREFIX))


def test_api_roles_matrix_covers_every_route_and_every_view_is_marked(app: Flask) -> None:
    covered = {(m, re.sub(r"\?.*", "", p)) for m, p, _, _ in MATRIX}
    covered = {(m, re.sub(r"\{(ada|bob)\}", "{person_id}", p)) for m, p in covered}
    covered = {(m, p.replace("/DEADBEEF", "/{uid}").replace("/laser-1", "/{slug}")) for m, p in covered}
    found = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(PREFIX + "/"):
            continue
        view = app.view_functions[rule.endpoint]
        assert rule.endpoint.startswith("api."), rule.rule
        assert getattr(view, "access", "").startswith("api:"), f"{rule.rule} has no api: access marker"
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            found.add((method, _template(rule.rule)))
    assert found == covered


def test_api_roles_web_views_are_not_api_views(app: Flask) -> None:
    for rule in app.url_map.iter_rules():
        access = getattr(app.view_functions[rule.endpoint], "access", "")
        assert access.startswith("api:") == rule.rule.startswith(PREFIX + "/"), rule.rule
