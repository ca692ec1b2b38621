"""The overview page, /live.json and "my sessions": what staff and participants see."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update

from server.extensions import db
from server.models import Device, Machine, MachineStatus, OpeningHours
from server.services.live import LiveState, live_state
from tests.web.conftest import AuthActions, Lab

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def _tiles(client: FlaskClient) -> dict[str, dict[str, Any]]:
    return {m["slug"]: m for m in client.get("/live.json").get_json()["machines"]}


def test_overview_lists_machines_with_live_state(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    html = client.get("/").get_data(as_text=True)
    for name in ("Prusa A", "Laser 1", "Prusa B", "Bambu X1"):
        assert name in html
    assert "Southern Printer" not in html  # another site's machine
    assert 'data-state="available"' in html
    assert 'data-state="in_use"' in html
    assert 'data-state="offline"' in html
    assert 'data-state="maintenance"' in html
    assert "In use by Ada Lovelace" in html
    assert "Running, 42 % done" in html
    assert "Device offline" in html
    assert "werkbank.js" in html and "werkbank.css" in html
    assert '<meta http-equiv="refresh"' in html  # the no-JavaScript fallback, inside <noscript>


def test_overview_shows_latest_sessions(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.admin)
    html = client.get("/").get_data(as_text=True)
    body = html.split("data-live-sessions", 1)[1].split("</tbody>", 1)[0]
    assert body.count("<tr") == 4  # the other site's session is not listed
    assert "Bob Builder" in body
    assert "still open" in body
    assert ">offline<" in body


def test_overview_machine_hours_today_and_total(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    tiles = _tiles(client)
    laser = tiles["laser-1"]
    # 30 min two days ago + 10 min today; the open session adds nothing until it ends.
    assert laser["hours_total_s"] == 2400.0
    assert laser["hours_today_s"] == 600.0
    assert laser["hours_total_label"] == "0 h 40 min"
    assert laser["hours_today_label"] == "0 h 10 min"
    assert tiles["prusa-a"]["hours_today_s"] == tiles["prusa-a"]["hours_total_s"] == 900.0
    assert tiles["prusa-b"]["hours_total_s"] == 0.0


def test_overview_total_grows_when_a_session_ends_through_ingestion(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    """The laser's open session ends (the agent's event, ingested as the bridge does): the next
    poll of /live.json and the page show its unlocked time in the machine's total."""
    import uuid

    from server.services.ingest import ingest_event
    from werkbank_protocol import format_ts
    from werkbank_protocol.messages import SessionEnded

    auth.login(lab.trainer)
    assert _tiles(client)["laser-1"]["hours_total_s"] == 2400.0
    end = SessionEnded(
        v=1,
        id=str(uuid.uuid4()),
        ts=format_ts(datetime.now(UTC) - timedelta(seconds=1)),
        session=lab.laser_session_id,
        reason="tap_out",
        unlocked_s=120.0,
        run_s=60.0,
    )
    with db.session() as s:
        device = s.get(Device, "pi-laser-1")
        assert device is not None
        assert ingest_event(s, device, end).refused is None
    laser = _tiles(client)["laser-1"]
    assert laser["hours_total_s"] == 2520.0 and laser["hours_total_label"] == "0 h 42 min"
    html = client.get("/").get_data(as_text=True)
    assert "0 h 42 min" in html


def test_live_json_shape(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    response = client.get("/live.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    data = response.get_json()
    assert set(data) == {"site", "updated_at", "updated_label", "refresh_s", "machines", "sessions"}
    assert data["refresh_s"] == 3
    assert data["site"] == {"name": "Lernwerkstatt Nord", "timezone": "Europe/Berlin"}
    assert ISO.match(data["updated_at"])
    assert [m["slug"] for m in data["machines"]] == ["bambu", "laser-1", "prusa-a", "prusa-b"]
    machine_keys = {
        "id", "slug", "name", "type", "state", "state_label", "detail", "user", "running", "progress",
        "running_label", "device", "hours_today_s", "hours_total_s", "hours_today_label", "hours_total_label",
    }  # fmt: skip
    for machine in data["machines"]:
        assert set(machine) == machine_keys
        assert set(machine["device"]) == {"id", "online", "last_seen", "label", "last_seen_label"}
    laser = next(m for m in data["machines"] if m["slug"] == "laser-1")
    assert laser["state"] == "in_use" and laser["user"] == "Ada Lovelace"
    assert laser["running"] is True and laser["progress"] == 42.0
    assert laser["device"]["online"] is True and ISO.match(laser["device"]["last_seen"])
    assert re.fullmatch(r"Last seen \d+ seconds ago", laser["device"]["last_seen_label"])
    session_keys = {
        "id", "machine", "person", "started_at", "ended_at", "started_label", "ended_label", "open",
        "duration_s", "duration_label", "offline", "offline_label", "jobs",
    }  # fmt: skip
    assert len(data["sessions"]) == 4
    for row in data["sessions"]:
        assert set(row) == session_keys
    newest = data["sessions"][0]
    assert newest["id"] == lab.laser_session_id and newest["open"] is True and newest["ended_at"] is None
    assert newest["duration_s"] is not None and 170 < newest["duration_s"] < 300
    jobs = {row["id"]: row["jobs"] for row in data["sessions"]}
    assert jobs["s-prusa-today"] == 2 and jobs["s-laser-today"] == 0
    offline = {row["id"]: row["offline"] for row in data["sessions"]}
    assert offline["s-laser-today"] is True and offline["s-prusa-today"] is False


def test_live_json_follows_changes(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    assert _tiles(client)["prusa-b"]["state"] == "offline"
    with db.session() as s:
        s.execute(update(Device).where(Device.id == "pi-prusa-b").values(online=True))
    assert _tiles(client)["prusa-b"]["state"] == "available"


def test_overview_times_in_site_timezone(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    data = client.get("/live.json").get_json()
    row = next(r for r in data["sessions"] if r["id"] == "s-laser-old")
    started = datetime.fromisoformat(row["started_at"])
    berlin = started.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    # Two days ago: date and time, in Berlin time, e.g. "11/20/26, 2:05 PM".
    hour = berlin.strftime("%I").lstrip("0") + ":" + berlin.strftime("%M")
    assert hour in row["started_label"], (row["started_label"], berlin)


def test_overview_empty_site(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    from server.models import Person, Site

    with db.session() as s:
        empty = Site(slug="leer", name="Leer", timezone="Europe/Berlin")
        s.add(empty)
        s.flush()
        s.execute(update(Person).where(Person.email == lab.trainer).values(site_id=empty.id))
    auth.login(lab.trainer)
    html = client.get("/").get_data(as_text=True)
    assert "No machines at this site yet." in html
    assert "No sessions yet." in html


def test_me_shows_own_sessions_and_hours(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.participant)
    html = client.get("/me").get_data(as_text=True)
    assert "My training" in html
    # Ada: 30 min on the laser two days ago + 15 min on Prusa A today (+ an open session).
    assert "0 h 45 min" in html
    assert "Laser 1" in html and "Prusa A" in html
    assert "Bob Builder" not in html  # only her own sessions
    assert html.count("<tr data-flag") == 3
    assert 'aria-label="Main"' in html and "/live.json" not in html


def test_live_state_order_of_importance() -> None:
    machine = Machine(status=MachineStatus.AVAILABLE, live_state="locked", live_session_id=None)
    online = Device(online=True)
    assert live_state(machine, online) == LiveState.AVAILABLE
    assert live_state(machine, None) == LiveState.OFFLINE
    assert live_state(machine, Device(online=False)) == LiveState.OFFLINE
    machine.live_state = "fault"
    assert live_state(machine, online) == LiveState.FAULT
    machine.live_session_id = "s1"
    assert live_state(machine, online) == LiveState.IN_USE
    machine.status = MachineStatus.MAINTENANCE
    assert live_state(machine, online) == LiveState.MAINTENANCE
    machine.status = MachineStatus.DISABLED
    assert live_state(machine, online) == LiveState.DISABLED


def test_overview_device_last_seen_is_relative(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    with db.session() as s:
        s.execute(
            update(Device)
            .where(Device.id == "pi-prusa-b")
            .values(last_seen=datetime.now(UTC) - timedelta(hours=3, minutes=1))
        )
    auth.login(lab.trainer)
    assert _tiles(client)["prusa-b"]["device"]["last_seen_label"] == "Last seen 3 hours ago"


def test_overview_lists_only_the_latest_20_sessions(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    from server.models import MachineSession

    start = datetime.now(UTC) - timedelta(days=10)
    with db.session() as s:
        for i in range(25):
            s.add(
                MachineSession(
                    id=f"bulk-{i:02d}",
                    machine_id=lab.machines["prusa-a"],
                    device_id="pi-prusa-a",
                    started_at=start - timedelta(hours=i),
                    ended_at=start - timedelta(hours=i) + timedelta(minutes=5),
                    unlocked_s=300.0,
                )
            )
    auth.login(lab.trainer)
    sessions = client.get("/live.json").get_json()["sessions"]
    assert len(sessions) == 20
    # Newest first: the seeded recent ones, then the bulk from ten days ago in order.
    assert sessions[0]["id"] == lab.laser_session_id
    assert [row["id"] for row in sessions[4:7]] == ["bulk-00", "bulk-01", "bulk-02"]


@pytest.mark.parametrize("others_before_h", [0, 12], ids=["interleaved", "one-machine-fills-the-list"])
def test_overview_lists_the_newest_20_of_every_machine_of_the_site(
    client: FlaskClient, auth: AuthActions, lab: Lab, others_before_h: int
) -> None:
    """The newest 20 across the site's machines, whichever machines they are on: one machine
    with many recent sessions, others with older ones interleaved (or all older than its 20th),
    times shared by two sessions at the boundary, sessions with only an end time, and the other
    site's newer ones left out; the same order as sorting every session of the site."""
    from sqlalchemy import select

    from server.models import MachineSession

    # Newer than the lab's own sessions, so that the busy machine alone can fill the list.
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    with db.session() as s:
        elsewhere = s.scalar(select(Machine.id).where(Machine.slug == "sued-1"))

        def add(sid: str, machine_id: int | None, start: datetime | None, end: datetime | None) -> None:
            s.add(
                MachineSession(
                    id=sid,
                    machine_id=machine_id,
                    device_id="pi-x",
                    started_at=start,
                    ended_at=end,
                    unlocked_s=60.0 if end else None,
                )
            )

        for i in range(30):  # busy: one every hour, pairs sharing a start time
            at = base - timedelta(hours=i // 2)
            add(f"busy-{i:02d}", lab.machines["prusa-a"], at, at + timedelta(minutes=1))
        for i in range(30):  # quiet: every five hours, in between the busy machine's
            at = base - timedelta(hours=others_before_h + 5 * i, minutes=30)
            add(f"quiet-{i:02d}", lab.machines["prusa-b"], at, at + timedelta(minutes=1))
        for i in range(3):  # "ended" came before "started": ordered by the end
            end = base - timedelta(hours=others_before_h + 3 * i, minutes=45)
            add(f"ended-{i}", lab.machines["bambu"], None, end)
        for i in range(25):
            add(f"other-{i:02d}", elsewhere, base + timedelta(hours=1, minutes=i), None)
    with db.session() as s:
        rows = s.scalars(
            select(MachineSession)
            .join(Machine, Machine.id == MachineSession.machine_id)
            .where(Machine.site_id == lab.site_id)
        ).all()
        expected = sorted(
            rows,
            key=lambda r: (-(r.started_at or r.ended_at or r.created_at).timestamp(), r.id),
        )[:20]
        want = [r.id for r in expected]
    auth.login(lab.trainer)
    got = [row["id"] for row in client.get("/live.json").get_json()["sessions"]]
    assert got == want
    shown = {w.split("-")[0] for w in want}
    assert shown == ({"busy", "quiet", "ended"} if others_before_h == 0 else {"busy"})


def test_overview_hours_label_stays_short_for_a_broken_record(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    """A session stored before issue 11 may hold unlocked_s = 1e300 (a device's word); ingestion
    refuses such numbers now, and the label of one already stored says so in a few characters
    instead of 300 digits."""
    from server.models import MachineSession

    with db.session() as s:
        s.execute(update(MachineSession).where(MachineSession.id == "s-laser-old").values(unlocked_s=1e300))
        s.commit()
    auth.login(lab.trainer)
    laser = _tiles(client)["laser-1"]
    assert laser["hours_total_label"] == "over 1000000 h"
    html = client.get("/").get_data(as_text=True)
    assert not re.search(r"\d{20}", html)


def test_overview_a_free_machine_reads_closed_outside_the_opening_hours(
    client: FlaskClient, auth: AuthActions, lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staff see the same state as participants (/machines/now): a free machine while the lab is
    closed reads "Closed" with when it opens, not "Free"; machines in use stay in use."""
    import server.adapters.web.overview

    with db.session() as s:
        for weekday in range(5):
            s.add(OpeningHours(site_id=lab.site_id, weekday=weekday, opens=time(9), closes=time(18)))
        s.commit()
    berlin = ZoneInfo("Europe/Berlin")
    auth.login(lab.trainer)

    def at(when: datetime, language: str = "en") -> tuple[dict[str, dict[str, Any]], str]:
        monkeypatch.setattr(server.adapters.web.overview, "_now", lambda: when.astimezone(UTC))
        client.get(f"/language/{language}")
        return _tiles(client), client.get("/").get_data(as_text=True)

    early, html = at(datetime(2026, 11, 23, 6, 0, tzinfo=berlin))
    assert (early["prusa-a"]["state"], early["prusa-a"]["state_label"]) == ("closed", "Closed")
    assert early["prusa-a"]["detail"] == "Opens at 9:00\u202fAM"
    assert early["laser-1"]["state"] == "in_use"  # someone still printing: in use, not closed
    assert 'data-state="closed"' in html and "Opens at 9:00" in html
    german, html = at(datetime(2026, 11, 22, 12, 0, tzinfo=berlin), "de")
    assert german["prusa-a"]["state_label"] == "Geschlossen"
    assert german["prusa-a"]["detail"].startswith("Öffnet am ")
    noon, _html = at(datetime(2026, 11, 23, 12, 0, tzinfo=berlin))
    assert (noon["prusa-a"]["state"], noon["prusa-a"]["state_label"]) == ("available", "Available")
    assert noon["prusa-a"]["detail"] == ""
