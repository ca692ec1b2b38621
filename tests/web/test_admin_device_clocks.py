"""The devices page shows a device whose clock is off the server's."""

from __future__ import annotations

from flask.testing import FlaskClient
from sqlalchemy import update

from server.extensions import db
from server.models import Device
from tests.web.conftest import AuthActions, Lab


def test_admin_devices_show_a_skewed_clock(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    with db.session() as s:
        s.execute(update(Device).where(Device.id == "pi-prusa-a").values(clock_offset_s=3600.2))
        s.execute(update(Device).where(Device.id == "pi-laser-1").values(clock_offset_s=-0.4))
        s.execute(update(Device).where(Device.id == "pi-prusa-b").values(clock_offset_s=-5.0))
    auth.login(lab.admin)
    html = client.get("/admin/devices").get_data(as_text=True)
    row = html.split('data-device="pi-prusa-a"')[1].split("</tr>")[0]
    assert "Clock 1 hour behind" in row
    ahead = html.split('data-device="pi-prusa-b"')[1].split("</tr>")[0]
    assert "Clock 5 seconds ahead" in ahead
    in_step = html.split('data-device="pi-laser-1"')[1].split("</tr>")[0]
    assert "Clock" not in in_step  # within the tolerance: nothing to see
