"""Opening hours on the admin pages: an admin sets a site's and a machine's hours, taps follow at once."""

from __future__ import annotations

from datetime import UTC, datetime

from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog, Machine, OpeningHours, Site
from server.services.decision import decide
from tests.web.admin_support import ADA_BADGE, seed_training
from tests.web.conftest import AuthActions, Lab

# Sunday 6 December 2026, 12:00 in Berlin; the Monday after, 10:00 and 17:30.
SUNDAY_NOON = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)
MONDAY_TEN = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
MONDAY_HALF_FIVE = datetime(2026, 12, 7, 16, 30, tzinfo=UTC)


def _site_form(site: Site, hours: str) -> dict[str, str]:
    return {"slug": site.slug, "name": site.name, "timezone": site.timezone, "opening_hours": hours}


def _reason(machine_id: int, when: datetime) -> str:
    with db.session() as s:
        machine = s.get(Machine, machine_id)
        assert machine is not None
        return decide(s, machine, ADA_BADGE, when).reason


def test_site_hours_saved_shown_audited_and_followed_at_the_machine(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    seed_training(lab.site_id)
    printer = lab.machines["prusa-a"]
    assert _reason(printer, SUNDAY_NOON) != "outside_opening_hours"
    auth.login(lab.admin)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        form = _site_form(site, "Mo-Fr 09:00-17:00\nsat 10:00-14:00")
    response = client.post(f"/admin/sites/{lab.site_id}", data=form)
    assert response.status_code == 302
    assert _reason(printer, SUNDAY_NOON) == "outside_opening_hours"
    assert _reason(printer, MONDAY_TEN) != "outside_opening_hours"
    assert _reason(printer, MONDAY_HALF_FIVE) == "outside_opening_hours"
    page = client.get(f"/admin/sites/{lab.site_id}").get_data(as_text=True)
    assert "mon-fri 09:00-17:00\nsat 10:00-14:00" in page
    listing = client.get("/admin/sites").get_data(as_text=True)
    assert "mon-fri 09:00-17:00\nsat 10:00-14:00" in listing and "Always open" in listing  # the other site
    with db.session() as s:
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "opening_hours.update"))
        assert entry is not None and entry.subject == f"site:{lab.site_id}"
        assert entry.detail["opening_hours"] == ["", "mon-fri 09:00-17:00\nsat 10:00-14:00"]
    # Saving the same hours again changes nothing and logs nothing more.
    assert client.post(f"/admin/sites/{lab.site_id}", data=form).status_code == 302
    with db.session() as s:
        assert len(s.scalars(select(AuditLog).where(AuditLog.action == "opening_hours.update")).all()) == 1


def test_a_machine_keeps_its_own_hours_and_empty_gives_back_the_sites(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    seed_training(lab.site_id)
    printer = lab.machines["prusa-a"]
    auth.login(lab.admin)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        client.post(f"/admin/sites/{lab.site_id}", data=_site_form(site, "mon-fri 09:00-17:00"))
        machine = s.get(Machine, printer)
        assert machine is not None
        form = {
            "slug": machine.slug,
            "name": machine.name,
            "site_id": str(machine.site_id),
            "machine_type_id": str(machine.machine_type_id),
            "status": machine.status.value,
            "max_session_min": str(machine.max_session_min),
            "idle_timeout_min": str(machine.idle_timeout_min),
            "guard_min": str(machine.guard_min),
        }
    assert client.get(f"/admin/machines/{printer}").status_code == 200
    response = client.post(f"/admin/machines/{printer}", data={**form, "opening_hours": "so 11:00-13:00"})
    assert response.status_code == 302
    assert _reason(printer, SUNDAY_NOON) != "outside_opening_hours"
    assert _reason(printer, MONDAY_TEN) == "outside_opening_hours"
    assert _reason(lab.machines["laser-1"], MONDAY_TEN) != "outside_opening_hours"
    assert "sun 11:00-13:00" in client.get(f"/admin/machines/{printer}").get_data(as_text=True)
    assert client.post(f"/admin/machines/{printer}", data={**form, "opening_hours": ""}).status_code == 302
    assert _reason(printer, SUNDAY_NOON) == "outside_opening_hours"
    assert _reason(printer, MONDAY_TEN) != "outside_opening_hours"


def test_bad_hours_are_refused_in_the_users_language_and_nothing_changes(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    auth.login(lab.admin)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        good = _site_form(site, "mon-fri 09:00-17:00")
    assert client.post(f"/admin/sites/{lab.site_id}", data=good).status_code == 302
    bad = {**good, "name": "Renamed", "opening_hours": "mon-fri 09:00-17:00\nfri-mon 10:00-11:00"}
    response = client.post(f"/admin/sites/{lab.site_id}", data=bad)
    assert response.status_code == 400
    assert "Line 2: fri-mon runs backwards" in response.get_data(as_text=True)
    client.get("/language/de")
    response = client.post(f"/admin/sites/{lab.site_id}", data={**bad, "opening_hours": "montag 9-17"})
    assert response.status_code == 400
    assert "Zeile 1" in response.get_data(as_text=True)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None and site.name == good["name"]
        rows = s.scalars(select(OpeningHours).where(OpeningHours.site_id == lab.site_id)).all()
        assert sorted(r.weekday for r in rows) == [0, 1, 2, 3, 4]


def test_a_post_without_the_hours_field_leaves_the_hours_alone(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    auth.login(lab.admin)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        form = _site_form(site, "sat 10:00-14:00")
    client.post(f"/admin/sites/{lab.site_id}", data=form)
    del form["opening_hours"]
    assert client.post(f"/admin/sites/{lab.site_id}", data=form).status_code == 302
    with db.session() as s:
        rows = s.scalars(select(OpeningHours).where(OpeningHours.site_id == lab.site_id)).all()
        assert [r.weekday for r in rows] == [5]
