"""Bookings over the API: the web's rules, 409 for a taken time, 422 for a refused rule, only
one's own for participants; every answer checked against the OpenAPI document.

Ada (participant, qualified on printers and the laser) holds a booking of printer-1 tomorrow
10:00-11:00 in Berlin (tests/api/conftest.py). Bob is not trained on anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from server.extensions import db
from server.models import AuditLog, Booking
from tests.api.conftest import Api, ApiLab, error_code, slot

NOW = datetime.now(UTC)


def t(hour: int, minutes: int = 0, days: int = 1) -> str:
    return slot(NOW, days, hour, minutes).isoformat()


def _count() -> tuple[int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count(Booking.id))) or 0,
            s.scalar(select(func.count(AuditLog.id))) or 0,
        )


def _book(api: Api, as_: str, **body: Any) -> Any:
    return api.post(
        "/bookings", {"machine": "laser-1", "starts_at": t(10), "ends_at": t(11), **body}, as_=as_
    )


def test_api_bookings_participant_books_and_sees_only_their_own(api: Api, lab: ApiLab) -> None:
    made = _book(api, "participant", note="  first cut  ")
    assert made.status_code == 201, made.get_json()
    booking = made.get_json()
    assert booking["person_id"] == lab.people["ada"] and booking["machine"] == "laser-1"
    assert (booking["status"], booking["note"], booking["no_show"]) == ("booked", "first cut", False)
    assert booking["starts_at"] == slot(NOW, 1, 10).strftime("%Y-%m-%dT%H:%M:%SZ")
    # Staff book for others.
    staff = api.post(
        "/bookings",
        {"machine": "printer-1", "starts_at": t(14), "ends_at": t(15), "person_id": lab.people["ada"]},
        as_="trainer",
    )
    assert staff.status_code == 201, staff.get_json()
    mine = api.get("/bookings", as_="participant").get_json()["items"]
    assert [b["starts_at"][11:16] for b in mine] == [
        slot(NOW, 1, h).strftime("%H:%M") for h in (10, 10, 14)
    ], "earliest first"
    assert {b["person_id"] for b in mine} == {lab.people["ada"]}
    assert api.get("/bookings", as_="other").get_json()["items"] == []  # Bob has none
    assert api.get(f"/bookings/{booking['id']}", as_="participant").get_json() == booking
    assert api.get(f"/bookings/{booking['id']}", as_="other").status_code == 403


def test_api_bookings_list_filters(api: Api, lab: ApiLab) -> None:
    assert _book(api, "participant").status_code == 201
    cancelled = _book(api, "participant", starts_at=t(12), ends_at=t(13)).get_json()
    assert api.post(f"/bookings/{cancelled['id']}/cancel", None, as_="participant").status_code == 200

    def ids(**params: Any) -> int:
        return len(api.get("/bookings", as_="trainer", **params).get_json()["items"])

    assert ids() == 3
    assert ids(machine="laser-1") == 2
    assert ids(machine="printer-1", person_id=lab.people["ada"]) == 1
    assert ids(status="cancelled") == 1
    assert ids(status="booked") == 2
    assert ids(**{"from": t(11), "to": t(12)}) == 0  # 11:00-12:00 touches 10-11 and 12-13 only
    assert ids(**{"from": t(10, 30), "to": t(12, 30)}) == 3
    assert ids(**{"from": t(11)}) == 1
    assert ids(to=t(10)) == 0
    assert ids(person_id=lab.people["bob"]) == 0


def test_api_bookings_taken_is_409_and_changes_nothing(api: Api, lab: ApiLab) -> None:
    before = _count()
    response = api.post(
        "/bookings",
        {
            "machine": "printer-1",
            "starts_at": t(10, 30),
            "ends_at": t(11, 30),
            "person_id": lab.people["ada"],
        },
        as_="trainer",
    )
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "taken"
    assert error["message"].startswith("This time is already booked (")
    assert _count() == before


def test_api_bookings_rules_refuse_with_422_and_the_rules_message(api: Api, lab: ApiLab) -> None:
    before = _count()
    off_grid = _book(api, "participant", starts_at=t(10, 15), ends_at=t(11, 15))
    assert (off_grid.status_code, error_code(off_grid)) == (422, "off_grid")
    assert off_grid.get_json()["error"]["message"] == "Bookings start and end on the 30-minute grid."
    untrained = _book(api, "other")
    assert (untrained.status_code, error_code(untrained)) == (422, "not_qualified")
    # Bob books for himself: the API speaks to him too.
    assert "You are not trained on the CO2 laser cutter yet" in untrained.get_json()["error"]["message"]
    long = _book(api, "participant", ends_at=t(15))
    assert (long.status_code, error_code(long)) == (422, "too_long")
    past = _book(api, "participant", starts_at=t(10, days=-1), ends_at=t(11, days=-1))
    assert (past.status_code, error_code(past)) == (422, "in_the_past")
    backwards = _book(api, "participant", starts_at=t(11), ends_at=t(10))
    assert (backwards.status_code, error_code(backwards)) == (422, "bad_times")
    unknown = _book(api, "participant", machine="no-such-machine")
    assert (unknown.status_code, error_code(unknown)) == (422, "unknown_machine")
    nobody = _book(api, "trainer", person_id=999999)
    assert (nobody.status_code, error_code(nobody)) == (422, "unknown_person")
    assert nobody.get_json()["error"]["fields"] == {"person_id": "no such person"}
    for_bob = _book(api, "participant", person_id=lab.people["bob"])
    assert (for_bob.status_code, error_code(for_bob)) == (403, "not_yours")
    naive = _book(api, "participant", starts_at="2026-12-01T10:00:00")
    assert naive.status_code == 400 and "starts_at" in naive.get_json()["error"]["fields"]
    assert _count() == before


def test_api_bookings_supervised_booking_names_a_trainer(api: Api, lab: ApiLab) -> None:
    wrong = _book(api, "admin", person_id=lab.people["bob"], trainer_id=lab.people["lara"])
    assert (wrong.status_code, error_code(wrong)) == (422, "briefing_required")
    made = _book(api, "admin", person_id=lab.people["ada"], trainer_id=lab.people["lara"])
    assert made.status_code == 201 and made.get_json()["trainer_id"] == lab.people["lara"]


def test_api_bookings_cancel(api: Api, lab: ApiLab) -> None:
    booking_id = lab.bookings["ada"]
    assert api.post(f"/bookings/{booking_id}/cancel", None, as_="other").status_code == 403
    odd = api.post(f"/bookings/{booking_id}/cancel", {"reason": "x"}, as_="participant")
    assert odd.status_code == 400
    cancelled = api.post(f"/bookings/{booking_id}/cancel", {}, as_="participant")
    assert cancelled.status_code == 200
    body = cancelled.get_json()
    assert body["status"] == "cancelled" and body["cancelled_at"] is not None
    again = api.post(f"/bookings/{booking_id}/cancel", None, as_="participant")
    assert (again.status_code, error_code(again)) == (422, "not_active")
    assert api.post("/bookings/no-such-booking/cancel", None).status_code == 404


def test_api_bookings_move(api: Api, lab: ApiLab) -> None:
    booking_id = lab.bookings["ada"]
    other = _book(api, "participant", machine="printer-1", starts_at=t(13), ends_at=t(14)).get_json()
    moved = api.post(
        f"/bookings/{booking_id}/move", {"starts_at": t(11), "ends_at": t(12)}, as_="participant"
    )
    assert moved.status_code == 200
    assert moved.get_json()["starts_at"] == slot(NOW, 1, 11).strftime("%Y-%m-%dT%H:%M:%SZ")
    taken = api.post(
        f"/bookings/{booking_id}/move", {"starts_at": t(13), "ends_at": t(14)}, as_="participant"
    )
    assert (taken.status_code, error_code(taken)) == (409, "taken")
    assert api.get(f"/bookings/{other['id']}").get_json()["status"] == "booked"
    assert api.get(f"/bookings/{booking_id}").get_json()["starts_at"] == moved.get_json()["starts_at"]
    missing = api.post(f"/bookings/{booking_id}/move", {"starts_at": t(11)}, as_="participant")
    assert missing.status_code == 400 and missing.get_json()["error"]["fields"] == {
        "ends_at": "Object missing required field `ends_at`"
    }


def test_api_bookings_odd_queries_are_400(api: Api) -> None:
    for params in (
        {"from": t(12), "to": t(11)},
        {"from": "tomorrow"},
        {"status": "maybe"},
        {"from_": t(10)},
        {"machine": "Not A Slug"},
    ):
        response = api.get("/bookings", **params)
        assert response.status_code == 400, params
        assert response.get_json()["error"]["fields"], params
    assert api.get("/bookings/" + "x" * 500).status_code == 404
