"""Machine types, machines, competencies and training steps on the admin pages."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import (
    AuditLog,
    Competency,
    Level,
    Machine,
    MachineStatus,
    MachineType,
    Requirement,
    StepRecord,
    TrainingStep,
)
from tests.web.admin_support import audit_actions, count, seed_training
from tests.web.conftest import AuthActions, Lab


@pytest.fixture
def ids(lab: Lab) -> dict[str, int]:
    return seed_training(lab.site_id)


@pytest.fixture
def admin(client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int]) -> FlaskClient:
    auth.login(lab.admin)
    return client


def _steps(competency_id: int) -> list[tuple[str, str, float | None]]:
    with db.session() as s:
        rows = s.scalars(
            select(TrainingStep)
            .where(TrainingStep.competency_id == competency_id)
            .order_by(TrainingStep.position)
        )
        return [(r.name, r.kind, r.hours) for r in rows]


# -- machine types and machines ------------------------------------------------------------------


def test_admin_machine_type_create_with_requirements(admin: FlaskClient, ids: dict[str, int]) -> None:
    data = {
        "slug": "resin",
        "name": "Resin printer",
        "name_de": "Harzdrucker",
        "job_kind": "print",
        f"req_{ids['fdm']}": "independent",
        f"req_{ids['safety']}": "briefed",
        f"req_{ids['laser']}": "",
    }
    assert admin.post("/admin/machine-types/new", data=data).status_code == 302
    with db.session() as s:
        resin = s.scalar(select(MachineType).where(MachineType.slug == "resin"))
        assert resin is not None and resin.name_de == "Harzdrucker"
        required = {r.competency.slug: r.min_level for r in resin.requirements}
        assert required == {"fdm": Level.INDEPENDENT, "laser-safety": Level.BRIEFED}
    html = admin.get("/admin/machine-types").get_data(as_text=True)
    assert "3D printing (Independent)" in html


def test_admin_machine_type_edit_drops_and_changes_requirements(
    admin: FlaskClient, ids: dict[str, int]
) -> None:
    with db.session() as s:
        laser = s.scalar(select(MachineType).where(MachineType.slug == "laser"))
        assert laser is not None
        laser_id = laser.id
    data = {
        "slug": "laser",
        "name": "CO2 laser cutter",
        "job_kind": "cut",
        f"req_{ids['safety']}": "briefed",
        f"req_{ids['laser']}": "",
        f"req_{ids['fdm']}": "",
    }
    assert admin.post(f"/admin/machine-types/{laser_id}", data=data).status_code == 302
    with db.session() as s:
        required = {
            r.competency_id: r.min_level
            for r in s.scalars(select(Requirement).where(Requirement.machine_type_id == laser_id))
        }
        assert required == {ids["safety"]: Level.BRIEFED}
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "machine_type.update"))
        assert entry is not None
        assert entry.detail == {
            "requires:laser": ["independent", None],
            "requires:laser-safety": [None, "briefed"],
        }


def test_admin_machine_type_bad_input_changes_nothing(admin: FlaskClient) -> None:
    before = count(MachineType)
    response = admin.post(
        "/admin/machine-types/new", data={"slug": "fdm", "name": "Dup", "job_kind": "print"}
    )
    assert response.status_code == 400
    assert "Another machine type already has this short name." in response.get_data(as_text=True)
    response = admin.post(
        "/admin/machine-types/new", data={"slug": "Bad Slug!", "name": "", "job_kind": "weld"}
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "lower-case letters, digits and dashes" in html and "Not a valid choice" in html
    assert count(MachineType) == before


def _machine_form(lab: Lab, **changes: str) -> dict[str, str]:
    with db.session() as s:
        fdm = s.scalar(select(MachineType.id).where(MachineType.slug == "fdm"))
    data = {
        "slug": "prusa-c",
        "name": "Prusa C",
        "site_id": str(lab.site_id),
        "machine_type_id": str(fdm),
        "status": "available",
        "max_session_min": "180",
        "idle_timeout_min": "10",
        "guard_min": "15",
    }
    data.update(changes)
    return data


def test_admin_machine_create_and_status_change_is_audited(admin: FlaskClient, lab: Lab) -> None:
    assert admin.post("/admin/machines/new", data=_machine_form(lab)).status_code == 302
    with db.session() as s:
        machine = s.scalar(select(Machine).where(Machine.slug == "prusa-c"))
        assert machine is not None and machine.max_session_min == 180
        machine_id = machine.id
    data = _machine_form(lab, status="maintenance", idle_timeout_min="20")
    assert admin.post(f"/admin/machines/{machine_id}", data=data).status_code == 302
    with db.session() as s:
        machine = s.get(Machine, machine_id)
        assert machine is not None
        assert (machine.status, machine.idle_timeout_min) == (MachineStatus.MAINTENANCE, 20)
        status = s.scalar(select(AuditLog).where(AuditLog.action == "machine.status"))
        assert status is not None and status.detail == {"status": ["available", "maintenance"]}
        assert status.subject == f"machine:{machine_id}"
    assert audit_actions()[-3:] == ["machine.create", "machine.status", "machine.update"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_session_min": "0"}, "Number must be between 1 and 1440."),
        ({"idle_timeout_min": "soon"}, "Not a valid integer value."),
        ({"slug": "laser-1"}, "Another machine already has this short name."),
        ({"status": "broken"}, "Not a valid choice"),
    ],
)
def test_admin_machine_bad_input_changes_nothing(
    admin: FlaskClient, lab: Lab, changes: dict[str, str], message: str
) -> None:
    machine_id = lab.machines["prusa-a"]
    response = admin.post(
        f"/admin/machines/{machine_id}", data=_machine_form(lab, **{"slug": "prusa-a", **changes})
    )
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    with db.session() as s:
        machine = s.get(Machine, machine_id)
        assert machine is not None and (machine.name, machine.max_session_min) == ("Prusa A", 240)


# -- competencies --------------------------------------------------------------------------------


def test_admin_competency_create_and_edit(admin: FlaskClient, ids: dict[str, int]) -> None:
    data = {
        "slug": "cnc",
        "name": "CNC milling",
        "name_de": "CNC-Fräsen",
        "validity_months": "24",
        "prerequisite_id": "",
    }
    response = admin.post("/admin/competencies/new", data=data)
    assert response.status_code == 302
    with db.session() as s:
        cnc = s.scalar(select(Competency).where(Competency.slug == "cnc"))
        assert cnc is not None and cnc.validity_months == 24 and cnc.prerequisite_id is None
        cnc_id = cnc.id
    data.update(validity_months="", prerequisite_id=str(ids["fdm"]))
    assert admin.post(f"/admin/competencies/{cnc_id}", data=data).status_code == 302
    with db.session() as s:
        cnc = s.get(Competency, cnc_id)
        assert cnc is not None and cnc.validity_months is None and cnc.prerequisite_id == ids["fdm"]
    assert audit_actions()[-2:] == ["competency.create", "competency.update"]


def test_admin_competency_prerequisite_cycle_is_refused(admin: FlaskClient, ids: dict[str, int]) -> None:
    # laser needs laser-safety; making laser-safety need laser would close a circle.
    data = {
        "slug": "laser-safety",
        "name": "Laser safety",
        "validity_months": "12",
        "prerequisite_id": str(ids["laser"]),
    }
    response = admin.post(f"/admin/competencies/{ids['safety']}", data=data)
    assert response.status_code == 400
    assert "This would make a circle" in response.get_data(as_text=True)
    with db.session() as s:
        safety = s.get(Competency, ids["safety"])
        assert safety is not None and safety.prerequisite_id is None
    # Itself is not even offered.
    data["prerequisite_id"] = str(ids["safety"])
    assert admin.post(f"/admin/competencies/{ids['safety']}", data=data).status_code == 400


# -- steps ---------------------------------------------------------------------------------------


def test_admin_step_add_edit_and_reorder(admin: FlaskClient, ids: dict[str, int]) -> None:
    fdm = ids["fdm"]
    data = {
        "step-kind": "supervised_hours",
        "step-name": "More practice",
        "step-leads_to": "independent",
        "step-hours": "3.5",
    }
    assert admin.post(f"/admin/competencies/{fdm}/steps", data=data).status_code == 302
    assert _steps(fdm)[-1] == ("More practice", "supervised_hours", 3.5)
    with db.session() as s:
        new_id = s.scalar(select(TrainingStep.id).where(TrainingStep.name == "More practice"))
    assert admin.post(f"/admin/steps/{new_id}/move", data={"direction": "up"}).status_code == 302
    assert [name for name, _k, _h in _steps(fdm)] == ["Intro", "Practice", "More practice", "Sign-off"]
    edit = {"kind": "briefing", "name": "Safety talk", "leads_to": "briefed", "hours": ""}
    assert admin.post(f"/admin/steps/{new_id}", data=edit).status_code == 302
    assert _steps(fdm)[2] == ("Safety talk", "briefing", None)
    assert audit_actions()[-3:] == ["step.create", "step.move", "step.update"]


@pytest.mark.parametrize(
    ("kind", "hours", "message"),
    [
        ("supervised_hours", "", "Supervised hours need a number of hours"),
        ("supervised_hours", "0", "Supervised hours need a number of hours"),
        ("briefing", "2", "Only supervised hours have hours"),
        ("signoff", "1.5", "Only supervised hours have hours"),
        ("supervised_hours", "lots", "Not a valid float value."),
    ],
)
def test_admin_step_hours_only_for_supervised_hours(
    admin: FlaskClient, ids: dict[str, int], kind: str, hours: str, message: str
) -> None:
    before = _steps(ids["fdm"])
    data = {"step-kind": kind, "step-name": "X", "step-leads_to": "supervised", "step-hours": hours}
    response = admin.post(f"/admin/competencies/{ids['fdm']}/steps", data=data)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert _steps(ids["fdm"]) == before


def test_admin_step_delete_only_when_unused(admin: FlaskClient, ids: dict[str, int]) -> None:
    with db.session() as s:
        steps = {st.name: st.id for st in s.scalars(select(TrainingStep))}
        s.add(StepRecord(person_id=ids["ada"], competency_id=ids["fdm"], step_id=steps["Intro"]))
    admin.post(f"/admin/steps/{steps['Intro']}/delete")
    assert "Intro" in [name for name, _k, _h in _steps(ids["fdm"])]
    assert admin.post(f"/admin/steps/{steps['Practice']}/delete").status_code == 302
    assert [name for name, _k, _h in _steps(ids["fdm"])] == ["Intro", "Sign-off"]
    with db.session() as s:
        positions = list(
            s.scalars(select(TrainingStep.position).where(TrainingStep.competency_id == ids["fdm"]))
        )
        assert sorted(positions) == [0, 1]
    assert audit_actions()[-1] == "step.delete"
