"""Qualifications and training steps over the API, through the training service's rules."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from server.extensions import db
from server.models import AuditLog, Qualification, StepRecord
from tests.api.conftest import Api, ApiLab, error_code


def _history() -> tuple[int, int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count(Qualification.id))) or 0,
            s.scalar(select(func.count(StepRecord.id))) or 0,
            s.scalar(select(func.count(AuditLog.id))) or 0,
        )


def _current(api: Api, person_id: int) -> dict[str, str]:
    items = api.get("/qualifications", person_id=person_id, current_only="true").get_json()["items"]
    return {q["competency"]: q["level"] for q in items}


def test_training_trainer_grants_and_the_qualification_appears(api: Api, lab: ApiLab) -> None:
    bob = lab.people["bob"]
    assert _current(api, bob) == {}
    granted = api.post(
        "/qualifications/grant",
        {
            "person_id": bob,
            "competency": "fdm-printing",
            "level": "independent",
            "reason": "course at the VHS",
        },
        as_="trainer",
    )
    assert granted.status_code == 201
    entry = granted.get_json()
    assert entry["action"] == "granted" and entry["granted_by_id"] == lab.people["tina"]
    assert entry["valid_until"] is None and entry["reason"] == "course at the VHS"
    assert _current(api, bob) == {"fdm-printing": "independent"}
    seen = api.get("/qualifications", as_="trainer", person_id=bob, competency="fdm-printing")
    assert [q["id"] for q in seen.get_json()["items"]] == [entry["id"]]
    with db.session() as s:
        audit = s.scalar(select(AuditLog).where(AuditLog.action == "qualification.granted"))
        assert audit is not None and audit.actor_id == lab.people["tina"]


def test_training_laser_only_trainer_may_not_grant_printing(api: Api, lab: ApiLab) -> None:
    before = _history()
    body = {"person_id": lab.people["bob"], "competency": "fdm-printing", "level": "briefed", "reason": "x"}
    refused = api.post("/qualifications/grant", body, as_="laser_trainer")
    assert refused.status_code == 403 and error_code(refused) == "not_a_trainer"
    assert refused.get_json()["error"]["message"] == "You are not a trainer for FDM 3D printing."
    steps = api.post(
        "/training/steps",
        {"person_id": lab.people["bob"], "step_id": lab.steps["fdm-printing/briefing"]},
        as_="laser_trainer",
    )
    assert steps.status_code == 403 and error_code(steps) == "not_a_trainer"
    # Nothing changed; the audit log holds the two refusals.
    assert _history() == (before[0], before[1], before[2] + 2)
    laser = api.post(
        "/qualifications/grant",
        {**body, "competency": "laser-safety", "level": "independent"},
        as_="laser_trainer",
    )
    assert laser.status_code == 201 and laser.get_json()["valid_until"] is not None


def test_training_only_admins_grant_the_trainer_level(api: Api, lab: ApiLab) -> None:
    body = {
        "person_id": lab.people["bob"],
        "competency": "fdm-printing",
        "level": "trainer",
        "reason": "new staff",
    }
    refused = api.post("/qualifications/grant", body, as_="trainer")
    assert refused.status_code == 403 and error_code(refused) == "admin_only"
    assert api.post("/qualifications/grant", body, as_="admin").status_code == 201
    bob = api.get(f"/people/{lab.people['bob']}").get_json()
    assert "trainer" in bob["roles"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "field"),
    [
        ("grant", {"competency": "fdm-printing", "level": "briefed"}, 400, "invalid_body", "reason"),
        (
            "grant",
            {"competency": "fdm-printing", "level": "briefed", "reason": "  "},
            422,
            "reason_required",
            None,
        ),
        (
            "grant",
            {"competency": "fdm-printing", "level": "master", "reason": "x"},
            400,
            "invalid_body",
            "level",
        ),
        (
            "grant",
            {"competency": "welding", "level": "briefed", "reason": "x"},
            422,
            "unknown_competency",
            "competency",
        ),
        (
            "grant",
            {"competency": "fdm-printing", "level": "briefed", "reason": None},
            400,
            "invalid_body",
            "reason",
        ),
        ("revoke", {"competency": "fdm-printing"}, 400, "invalid_body", "reason"),
        ("revoke", {"competency": "fdm-printing", "reason": ""}, 422, "reason_required", None),
        ("revoke", {"competency": "laser-safety", "reason": "x"}, 422, "nothing_to_revoke", None),
        ("renew", {"competency": "fdm-printing"}, 422, "does_not_expire", None),
        ("renew", {"competency": "laser-safety", "until": "2030-01-01"}, 400, "invalid_body", "until"),
    ],
)
def test_training_bad_requests_change_nothing(
    api: Api, lab: ApiLab, path: str, body: dict[str, Any], status: int, code: str, field: str | None
) -> None:
    before = _history()
    response = api.post(f"/qualifications/{path}", {"person_id": lab.people["bob"], **body}, as_="trainer")
    error = response.get_json()["error"]
    assert response.status_code == status and error["code"] == code, error
    if field is not None:
        assert field in error["fields"]
    assert "{" not in error["message"]  # the service's template, filled in
    assert _history() == before


def test_training_unknown_person_and_wrong_types(api: Api, lab: ApiLab) -> None:
    before = _history()
    nobody = api.post(
        "/qualifications/grant",
        {"person_id": 9999, "competency": "fdm-printing", "level": "briefed", "reason": "x"},
        as_="trainer",
    )
    assert nobody.status_code == 422 and error_code(nobody) == "unknown_person"
    text_id = api.post(
        "/qualifications/grant",
        {
            "person_id": str(lab.people["bob"]),
            "competency": "fdm-printing",
            "level": "briefed",
            "reason": "x",
        },
    )
    assert text_id.status_code == 400 and "person_id" in text_id.get_json()["error"]["fields"]
    assert _history() == before


def test_training_revoke_and_renew(api: Api, lab: ApiLab) -> None:
    ada = lab.people["ada"]
    renewed = api.post(
        "/qualifications/renew", {"person_id": ada, "competency": "laser-safety"}, as_="laser_trainer"
    )
    assert renewed.status_code == 201 and renewed.get_json()["action"] == "renewed"
    revoked = api.post(
        "/qualifications/revoke",
        {"person_id": ada, "competency": "fdm-printing", "reason": "ignored the enclosure rule"},
        as_="trainer",
    )
    assert revoked.status_code == 201 and revoked.get_json()["action"] == "revoked"
    assert _current(api, ada) == {"laser-safety": "independent"}
    history = api.get("/qualifications", person_id=ada, competency="fdm-printing").get_json()["items"]
    assert [q["action"] for q in history] == ["granted", "revoked"]
    revoked_only = api.get("/qualifications", person_id=ada, action="revoked").get_json()["items"]
    assert [q["competency"] for q in revoked_only] == ["fdm-printing"]
    # Ada sees her own history, in the same shape.
    own = api.get("/qualifications", as_="participant").get_json()["items"]
    assert {q["person_id"] for q in own} == {ada} and len(own) == 4


def test_training_steps_complete_levels(api: Api, lab: ApiLab) -> None:
    bob = lab.people["bob"]
    signoff_first = api.post(
        "/training/steps", {"person_id": bob, "step_id": lab.steps["fdm-printing/signoff"]}, as_="trainer"
    )
    assert signoff_first.status_code == 422 and error_code(signoff_first) == "out_of_order"

    briefing = api.post(
        "/training/steps",
        {"person_id": bob, "step_id": lab.steps["fdm-printing/briefing"], "note": "knows the nozzle is hot"},
        as_="trainer",
    )
    assert briefing.status_code == 201
    result = briefing.get_json()
    assert result["record"]["source"] == "api" and result["record"]["kind"] == "briefing"
    assert result["record"]["note"] == "knows the nozzle is hot"
    assert result["qualification"]["level"] == "briefed"

    again = api.post(
        "/training/steps", {"person_id": bob, "step_id": lab.steps["fdm-printing/briefing"]}, as_="trainer"
    )
    assert again.status_code == 422 and error_code(again) == "already_done"

    signoff = api.post(
        "/training/steps", {"person_id": bob, "step_id": lab.steps["fdm-printing/signoff"]}, as_="trainer"
    )
    assert signoff.status_code == 201 and signoff.get_json()["qualification"]["level"] == "independent"
    assert _current(api, bob) == {"fdm-printing": "independent"}

    unknown = api.post("/training/steps", {"person_id": bob, "step_id": 9999}, as_="trainer")
    assert unknown.status_code == 422 and error_code(unknown) == "unknown_step"
    own = api.post(
        "/training/steps",
        {"person_id": lab.people["tina"], "step_id": lab.steps["laser-safety/briefing"]},
        as_="trainer",
    )
    assert own.status_code == 403 and error_code(own) == "own_training"
