"""Every admin page: shown to admins, refused to trainers and participants; nav, devices, audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from server.extensions import db
from server.models import AuditLog, Device, Machine, Site, TrainingStep
from tests.web.admin_support import seed_training
from tests.web.conftest import AuthActions, Lab


@pytest.fixture
def ids(lab: Lab) -> dict[str, int]:
    return seed_training(lab.site_id)


def _pages(lab: Lab, ids: dict[str, int]) -> list[str]:
    with db.session() as s:
        step = s.scalar(select(TrainingStep.id).order_by(TrainingStep.id))
    return [
        "/admin/",
        "/admin/sites",
        "/admin/sites/new",
        f"/admin/sites/{lab.site_id}",
        "/admin/people",
        "/admin/people?q=ada&role=participant&active=all",
        "/admin/people/new",
        f"/admin/people/{ids['ada']}",
        "/admin/people/import",
        "/admin/people/import/format",
        "/admin/people/import/example.csv",
        "/admin/machine-types",
        "/admin/machine-types/new",
        "/admin/machines",
        "/admin/machines/new",
        f"/admin/machines/{lab.machines['laser-1']}",
        "/admin/competencies",
        "/admin/competencies/new",
        f"/admin/competencies/{ids['fdm']}",
        f"/admin/steps/{step}",
        "/admin/devices",
        "/admin/audit",
        "/admin/audit?action=badge.block",
    ]


def test_admin_pages_render_for_admin(
    client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int]
) -> None:
    auth.login(lab.admin)
    for path in _pages(lab, ids):
        response = client.get(path)
        assert response.status_code == 200, path
        if response.mimetype == "text/html":
            assert 'class="subnav"' in response.get_data(as_text=True), path


@pytest.mark.parametrize("role", ["trainer", "participant"])
def test_admin_pages_refuse_other_roles(
    client: FlaskClient, auth: AuthActions, lab: Lab, ids: dict[str, int], role: str
) -> None:
    auth.login(getattr(lab, role))
    for path in _pages(lab, ids):
        assert client.get(path).status_code == 403, path
    # Posts too: nothing changes for a participant who forges a form.
    assert client.post(f"/admin/people/{ids['ada']}/active", data={"active": "0"}).status_code == 403
    assert (
        client.post("/admin/sites/new", data={"slug": "x1", "name": "X", "timezone": "UTC"}).status_code
        == 403
    )


def test_admin_pages_anonymous_is_sent_to_login(client: FlaskClient, lab: Lab) -> None:
    response = client.get("/admin/people")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_admin_every_view_is_admin_only(app: Flask) -> None:
    admin_views = [
        (rule.rule, app.view_functions[rule.endpoint])
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith("admin.")
    ]
    assert len(admin_views) > 20
    assert [path for path, view in admin_views if getattr(view, "access", None) != "admin"] == []
    assert all(path.startswith("/admin") for path, _view in admin_views)


def test_admin_nav_link_only_for_admins(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    assert 'href="/admin/"' not in client.get("/").get_data(as_text=True)
    auth.logout()
    auth.login(lab.admin)
    assert 'href="/admin/"' in client.get("/").get_data(as_text=True)


def test_admin_devices_show_state_version_and_allowlist(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    with db.session() as s:
        s.execute(
            update(Device)
            .where(Device.id == "pi-prusa-a")
            .values(agent_version="1.4.2", config_hash="abcdef0123456789", allowlist_version=3)
        )
        s.execute(update(Machine).where(Machine.id == lab.machines["prusa-a"]).values(allowlist_version=5))
        s.execute(
            update(Device)
            .where(Device.id == "pi-prusa-b")
            .values(last_seen=datetime.now(UTC) - timedelta(hours=2))
        )
    auth.login(lab.admin)
    html = client.get("/admin/devices").get_data(as_text=True)
    row = html.split('data-device="pi-prusa-a"')[1].split("</tr>")[0]
    assert "Online" in row and "1.4.2" in row and "abcdef012345" in row
    assert "3 / 5" in row and "behind" in row
    assert f'href="/admin/machines/{lab.machines["prusa-a"]}"' in row
    offline = html.split('data-device="pi-prusa-b"')[1].split("</tr>")[0]
    assert "Offline" in offline and "2 hours ago" in offline


def test_admin_audit_log_newest_first_filtered_and_paged(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    start = datetime.now(UTC) - timedelta(days=1)
    with db.session() as s:
        for i in range(60):
            s.add(AuditLog(at=start + timedelta(minutes=i), action="test.a", subject=f"thing:{i}", detail={}))
        s.add(AuditLog(at=start, action="test.b", subject="other", detail={"x": 1}))
    auth.login(lab.admin)
    html = client.get("/admin/audit").get_data(as_text=True)
    assert html.index("thing:59") < html.index("thing:58")
    assert "thing:5<" not in html  # on page 2 (50 per page)
    assert "Page 1 of 2" in html
    page2 = client.get("/admin/audit?page=2").get_data(as_text=True)
    assert "thing:5<" in page2
    only_b = client.get("/admin/audit?action=test.b").get_data(as_text=True)
    assert "other" in only_b and "thing:1<" not in only_b


def test_admin_site_create_edit_and_bad_timezone(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.admin)
    response = client.post(
        "/admin/sites/new", data={"slug": "west", "name": "Werkstatt West", "timezone": "Europe/Vienna"}
    )
    assert response.status_code == 302
    with db.session() as s:
        site = s.scalar(select(Site).where(Site.slug == "west"))
        assert site is not None and site.timezone == "Europe/Vienna"
        site_id = site.id
    response = client.post(
        f"/admin/sites/{site_id}", data={"slug": "west", "name": "West", "timezone": "Mars/Olympus"}
    )
    assert response.status_code == 400
    assert "Unknown time zone" in response.get_data(as_text=True)
    response = client.post(
        f"/admin/sites/{site_id}", data={"slug": "nord", "name": "West", "timezone": "UTC"}
    )
    assert response.status_code == 400
    assert "Another site already has this short name." in response.get_data(as_text=True)
    with db.session() as s:
        site = s.get(Site, site_id)
        assert site is not None and (site.name, site.slug, site.timezone) == (
            "Werkstatt West",
            "west",
            "Europe/Vienna",
        )
    assert (
        client.post(
            f"/admin/sites/{site_id}", data={"slug": "west", "name": "West", "timezone": "UTC"}
        ).status_code
        == 302
    )
    with db.session() as s:
        entries = s.scalars(
            select(AuditLog).where(AuditLog.subject == f"site:{site_id}").order_by(AuditLog.id)
        ).all()
        assert [e.action for e in entries] == ["site.create", "site.update"]
        assert entries[1].detail == {"name": ["Werkstatt West", "West"], "timezone": ["Europe/Vienna", "UTC"]}
