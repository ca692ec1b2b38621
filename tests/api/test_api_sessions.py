"""Machines with live state and device; sessions with jobs, filtered and scoped to the reader."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.api.conftest import Api, ApiLab, error_code


def _ids(api: Api, as_: str = "admin", **params: str | int) -> list[str]:
    response = api.get("/sessions", as_=as_, **params)
    assert response.status_code == 200, response.get_json()
    return [s["id"] for s in response.get_json()["items"]]


def test_sessions_participant_sees_only_own(api: Api, lab: ApiLab) -> None:
    assert _ids(api, "participant") == ["s-ada-1", "s-ada-2", "s-ada-live"]
    assert _ids(api, "participant", person_id=lab.people["ada"]) == ["s-ada-1", "s-ada-2", "s-ada-live"]
    assert _ids(api, "participant", machine="printer-1") == ["s-ada-1", "s-ada-2"]
    other = api.get("/sessions", as_="participant", person_id=lab.people["bob"])
    assert other.status_code == 403 and error_code(other) == "forbidden"
    # Bob's own token sees Bob's session and nothing of Ada's.
    assert _ids(api, "other") == ["s-bob-1"]


def test_sessions_staff_filters_and_jobs(api: Api, lab: ApiLab) -> None:
    assert _ids(api, "trainer") == ["s-ada-1", "s-bob-1", "s-ada-2", "s-ada-live"]
    assert _ids(api, machine="laser-1") == ["s-ada-live"]
    assert _ids(api, open="true") == ["s-ada-live"]
    assert _ids(api, open="false", person_id=lab.people["ada"]) == ["s-ada-1", "s-ada-2"]
    now = datetime.now(UTC)
    since = (now - timedelta(days=2, hours=1)).isoformat()
    until = (now - timedelta(hours=1)).isoformat()
    assert _ids(api, since=since, until=until) == ["s-bob-1", "s-ada-2"]
    first = api.get("/sessions", person_id=lab.people["ada"], limit=1).get_json()
    assert first["next_offset"] == 1
    session = first["items"][0]
    assert session["machine"] == "printer-1" and session["unlocked_s"] == 3600.0
    assert session["started_at"].endswith("Z")
    assert [(j["file"], j["status"], j["filament_g"]) for j in session["jobs"]] == [
        ("benchy.gcode", "done", 12.5)
    ]


def test_sessions_bad_times_are_400(api: Api, lab: ApiLab) -> None:
    naive = api.get("/sessions", since="2026-01-01T00:00:00")
    assert naive.status_code == 400 and "since" in naive.get_json()["error"]["fields"]
    backwards = api.get("/sessions", since="2026-02-01T00:00:00Z", until="2026-01-01T00:00:00Z")
    assert backwards.status_code == 400 and "until" in backwards.get_json()["error"]["fields"]
    assert api.get("/sessions", since="yesterday").status_code == 400
    repeated = api.client.get(
        "/api/v1/sessions?machine=laser-1&machine=printer-1",
        headers={"Authorization": f"Bearer {lab.tokens['admin']}"},
    )
    assert repeated.status_code == 400 and "machine" in repeated.get_json()["error"]["fields"]


def test_machines_live_state_and_device(api: Api, lab: ApiLab) -> None:
    machines = {m["slug"]: m for m in api.get("/machines", as_="participant").get_json()["items"]}
    assert list(machines) == ["printer-1", "laser-1", "printer-2"]
    printer = machines["printer-1"]
    assert printer["device"]["id"] == "pi-printer-1" and printer["device"]["online"] is True
    assert printer["device"]["last_seen"].endswith("Z") and printer["device"]["agent_version"] == "0.1.0"
    assert printer["requires"] == [{"competency": "fdm-printing", "min_level": "independent"}]
    assert (
        machines["laser-1"]["live"]["state"] == "running" and machines["laser-1"]["live"]["running"] is True
    )
    assert machines["laser-1"]["device"]["online"] is False
    assert machines["printer-2"]["device"] is None and machines["printer-2"]["status"] == "maintenance"

    one = api.get("/machines/laser-1", as_="participant").get_json()
    assert one == machines["laser-1"]
    assert [m["slug"] for m in api.get("/machines", status="maintenance").get_json()["items"]] == [
        "printer-2"
    ]
    assert [m["slug"] for m in api.get("/machines", site="nord", type="co2-laser").get_json()["items"]] == [
        "laser-1"
    ]
    missing = api.get("/machines/nothing")
    assert missing.status_code == 404 and error_code(missing) == "not_found"
