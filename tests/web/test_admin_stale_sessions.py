"""The admin start page lists sessions a dead device left open; an admin closes one on its page
with a reason and an end no later than its last evidence (server.services.stale_sessions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask.testing import FlaskClient
from sqlalchemy import select, update

from server.extensions import db
from server.models import AuditLog, Device, MachineSession
from tests.web.conftest import AuthActions, Lab

TZ = ZoneInfo("Europe/Berlin")


def _pi_died(lab: Lab) -> tuple[datetime, datetime]:
    """The laser's Pi went silent 40 minutes ago with Ada's session (2 hours old) open."""
    now = datetime.now(UTC).replace(microsecond=0)
    started, died = now - timedelta(hours=2), now - timedelta(minutes=40)
    with db.session() as s:
        s.execute(
            update(MachineSession).where(MachineSession.id == lab.laser_session_id).values(started_at=started)
        )
        s.execute(update(Device).where(Device.id == "pi-laser-1").values(online=False, last_seen=died))
    return started, died


def _local(when: datetime) -> str:
    return when.astimezone(TZ).replace(tzinfo=None).isoformat()


def test_admin_closes_a_session_a_dead_device_left_open(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    auth.login(lab.admin)
    index = client.get("/admin/").get_data(as_text=True)
    assert "Sessions left open by an offline device" not in index  # every device is fine

    _started, died = _pi_died(lab)
    index = client.get("/admin/").get_data(as_text=True)
    row = index.split(f'data-session="{lab.laser_session_id}"')[1].split("</tr>")[0]
    assert "Ada Lovelace" in row and "40 minutes ago" in row
    assert f"/admin/sessions/{lab.laser_session_id}" in row

    page = client.get(f"/admin/sessions/{lab.laser_session_id}").get_data(as_text=True)
    assert "Close this session" in page
    assert f'value="{_local(died)}"' in page  # the last evidence, as the end to start from

    url = f"/admin/sessions/{lab.laser_session_id}/close"
    too_late = client.post(url, data={"end": _local(died + timedelta(seconds=1)), "reason": "Pi dead"})
    assert too_late.status_code == 400
    assert "The end cannot be later than the last sign of this session." in too_late.get_data(as_text=True)
    no_reason = client.post(url, data={"end": _local(died), "reason": " "})
    assert no_reason.status_code == 400 and "Please give a reason." in no_reason.get_data(as_text=True)
    garbled = client.post(url, data={"end": "yesterday", "reason": "Pi dead"})
    assert garbled.status_code == 400
    with db.session() as s:
        session = s.get(MachineSession, lab.laser_session_id)
        assert session is not None and session.ended_at is None

    end = died - timedelta(minutes=10)
    closed = client.post(url, data={"end": _local(end), "reason": "SD card died"})
    assert closed.status_code == 302
    with db.session() as s:
        session = s.get(MachineSession, lab.laser_session_id)
        assert session is not None and session.ended_at == end and session.end_reason == "closed_by_admin"
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "session.closed"))
        assert entry is not None and entry.detail["reason"] == "SD card died"
    page = client.get(f"/admin/sessions/{lab.laser_session_id}").get_data(as_text=True)
    assert 'data-ended="yes"' in page and "Close this session" not in page
    assert "Sessions left open by an offline device" not in client.get("/admin/").get_data(as_text=True)
    audit = client.get("/admin/audit").get_data(as_text=True)
    assert "Session closed by an admin" in audit and "SD card died" in audit
    # Closed once: a second close is refused.
    again = client.post(url, data={"end": _local(end), "reason": "again"})
    assert again.status_code == 400 and "This session is not open." in again.get_data(as_text=True)


def test_a_session_whose_device_is_online_is_not_offered_nor_closed(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    auth.login(lab.admin)
    page = client.get(f"/admin/sessions/{lab.laser_session_id}").get_data(as_text=True)
    assert "Close this session" not in page and "Its device is online and will end it itself." in page
    now = datetime.now(UTC)
    refused = client.post(
        f"/admin/sessions/{lab.laser_session_id}/close",
        data={"end": _local(now - timedelta(minutes=1)), "reason": "looks stuck"},
    )
    assert refused.status_code == 400
    with db.session() as s:
        session = s.get(MachineSession, lab.laser_session_id)
        assert session is not None and session.ended_at is None


def test_only_admins_see_and_close_stale_sessions(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    _pi_died(lab)
    auth.login(lab.trainer)
    assert client.get(f"/admin/sessions/{lab.laser_session_id}").status_code == 403
    now = datetime.now(UTC)
    post = client.post(
        f"/admin/sessions/{lab.laser_session_id}/close",
        data={"end": _local(now - timedelta(hours=1)), "reason": "x"},
    )
    assert post.status_code == 403
    with db.session() as s:
        session = s.get(MachineSession, lab.laser_session_id)
        assert session is not None and session.ended_at is None
