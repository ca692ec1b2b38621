"""Odd input anywhere answers 4xx in the error shape, never 500, and changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from server.extensions import db
from server.models import AuditLog
from tests.api.conftest import Api, ApiLab

HUGE = 2**70

ODD_BODIES: list[tuple[str, str, Any]] = [
    ("POST", "/people", {"name": "A\u0000B", "site": "nord"}),
    ("POST", "/people", {"name": "x" * 10_000, "site": "nord"}),
    ("POST", "/people", {"name": "A", "site": "nord", "roles": "admin"}),
    ("POST", "/people", None),
    ("POST", "/people", [[[[[]]]]]),
    ("PATCH", "/people/{ada}", {"external_id": ""}),
    ("PATCH", "/people/{ada}", {"language": "Deutsch"}),
    ("PATCH", f"/people/{HUGE}", {"cohort": "x"}),
    ("POST", "/badges", {"uid": "DEADBEEF", "person_id": HUGE}),
    ("POST", "/badges", {"uid": 12345678, "person_id": 1}),
    ("PATCH", "/badges/%00", {"status": "lost"}),
    ("PATCH", "/badges/DEADBEEF", {"status": None}),
    (
        "POST",
        "/qualifications/grant",
        {"person_id": -1, "competency": "x", "level": "briefed", "reason": "x"},
    ),
    ("POST", "/qualifications/grant", {"person_id": 1.5, "competency": "fdm-printing", "level": "briefed"}),
    ("POST", "/qualifications/revoke", {"person_id": True, "competency": "fdm-printing", "reason": "x"}),
    ("POST", "/training/steps", {"person_id": "{ada}", "step_id": HUGE}),
    ("POST", "/training/steps", {"person_id": "{ada}", "step_id": 1, "note": 5}),
    ("POST", "/bookings", {"machine": "laser-1", "starts_at": "2026-12-01T10:00:00Z"}),
    ("POST", "/bookings", {"machine": "laser-1", "starts_at": 5, "ends_at": 6}),
    (
        "POST",
        "/bookings",
        {"machine": "laser-1", "starts_at": "2026-12-01T10:00:00Z", "ends_at": "2026-12-01T11:00Z", "x": 1},
    ),
    (
        "POST",
        "/bookings",
        {
            "machine": "laser-1",
            "starts_at": "2026-12-01T10:00:00Z",
            "ends_at": "2026-12-01T11:00:00Z",
            "person_id": HUGE,
        },
    ),
    ("POST", "/bookings/%00/cancel", {}),
    ("POST", "/bookings/x/move", {"starts_at": "soon", "ends_at": "later"}),
]

ODD_QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("/people", {"offset": str(HUGE)}),
    ("/people", {"cohort": "a\u0000b"}),
    ("/people", {"email": "x" * 300}),
    ("/badges", {"person_id": str(HUGE)}),
    ("/sessions", {"since": "2026-13-45T99:00:00Z"}),
    ("/sessions", {"open": ""}),
    ("/qualifications", {"current_only": "sometimes"}),
    ("/machines", {"status": "on fire"}),
    ("/bookings", {"to": "2026-02-30T10:00:00Z"}),
    ("/bookings", {"person_id": "0"}),
]


def _audit_count() -> int:
    with db.session() as s:
        return s.scalar(select(func.count(AuditLog.id))) or 0


@pytest.mark.parametrize(("method", "path", "body"), ODD_BODIES, ids=[f"{m} {p}" for m, p, _ in ODD_BODIES])
def test_robustness_odd_bodies_are_refused(api: Api, lab: ApiLab, method: str, path: str, body: Any) -> None:
    before = _audit_count()
    path = path.replace("{ada}", str(lab.people["ada"]))
    if isinstance(body, dict):
        body = {k: lab.people["ada"] if v == "{ada}" else v for k, v in body.items()}
    response = api.call(method, path, json=body) if body is not None else api.call(method, path, data="null")
    assert 400 <= response.status_code < 500, response.get_json()
    assert _audit_count() == before


@pytest.mark.parametrize(("path", "params"), ODD_QUERIES, ids=[p for p, _ in ODD_QUERIES])
def test_robustness_odd_queries_are_400(api: Api, path: str, params: dict[str, Any]) -> None:
    response = api.get(path, **params)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["fields"]


def test_robustness_huge_ids_in_paths_are_404(api: Api) -> None:
    assert api.get(f"/people/{HUGE}").status_code == 404
    assert api.get("/machines/" + "x" * 500).status_code == 404
