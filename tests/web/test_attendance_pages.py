"""The attendance pages: a cohort's month as a page, print view and PDF (read back as text and
pictures), corrections by trainers (never on their own records, never at another site)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from server.extensions import db
from server.models import Attendance, AttendanceCorrection, AuditLog, Person, Site
from server.services import attendance
from tests.web.conftest import Lab, sign_in
from tests.web.documents_support import ink, pdf_pages, pdf_text

BERLIN = ZoneInfo("Europe/Berlin")


def _month_ago() -> date:
    """The first day of last month (a whole month in the past: no day still to come)."""
    today = datetime.now(BERLIN).date()
    return (today.replace(day=1) - timedelta(days=1)).replace(day=1)


def _at(day: date, hh: int, mm: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm), tzinfo=BERLIN).astimezone(UTC)


@pytest.fixture
def cohort(lab: Lab) -> date:
    """Ada and Bob in "Kohorte 1" of the "Jobcenter Nord" programme, expected Mon-Fri; Ada was
    there on the first Monday of last month 08:30-16:00, Bob on no day."""
    month = _month_ago()
    monday = month + timedelta(days=(7 - month.weekday()) % 7)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        site.address = "Hafenstraße 1\n20457 Hamburg"
        for email in (lab.participant, lab.other_participant):
            p = s.scalar(select(Person).where(Person.email == email))
            assert p is not None
            p.cohort, p.programme = "Kohorte 1", "Jobcenter Nord"
            p.created_at = _at(month, 8) - timedelta(days=40)
        ada = s.scalar(select(Person).where(Person.email == lab.participant))
        assert ada is not None
        s.add(
            Attendance(
                person_id=ada.id,
                site_id=site.id,
                checked_in_at=_at(monday, 8, 30),
                checked_out_at=_at(monday, 16),
            )
        )
        attendance.set_timetable(s, site.id, "Kohorte 1", [(d, time(9), time(15)) for d in range(5)])
    return month


def _login(client: FlaskClient, email: str) -> int:
    with db.session() as s:
        person_id = s.scalar(select(Person.id).where(Person.email == email))
    assert person_id is not None
    sign_in(client, person_id)
    return person_id


def test_attendance_sheet_pdf_has_lab_programme_hours_and_signature_lines(
    client: FlaskClient, lab: Lab, cohort: date, tmp_path: Path
) -> None:
    _login(client, lab.trainer)
    args = {"month": cohort.strftime("%Y-%m"), "cohort": "Kohorte 1"}
    page = client.get("/attendance/", query_string=args)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Ada Lovelace" in html and "Bob Builder" in html

    response = client.get("/attendance/sheet.pdf", query_string=args)
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = pdf_text(response.data, tmp_path)
    for expected in (
        "Attendance sheet",
        "Lernwerkstatt Nord",
        "Hafenstraße 1",
        "Jobcenter Nord",
        "Kohorte 1",
    ):
        assert expected in text
    ada_line = next(line for line in text.splitlines() if "Ada Lovelace" in line)
    bob_line = next(line for line in text.splitlines() if "Bob Builder" in line)
    assert "7.5" in ada_line  # 08:30-16:00
    assert bob_line.count("A") >= 15  # absent on every weekday of the month
    assert "Signature and stamp of the lab" in text and "Place, date" in text
    pages = pdf_pages(response.data, tmp_path)
    assert len(pages) == 1 and ink(pages[0]) > 0.02
    with db.session() as s:
        exported = s.scalar(select(AuditLog).where(AuditLog.action == "attendance.export"))
        assert exported is not None and exported.detail["kind"] == "pdf" and exported.detail["people"] == 2


def test_attendance_sheet_in_german(client: FlaskClient, lab: Lab, cohort: date, tmp_path: Path) -> None:
    _login(client, lab.trainer)
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    with client.session_transaction() as session:
        session["language"] = "de"
    args = {"month": cohort.strftime("%Y-%m"), "cohort": "Kohorte 1"}
    text = pdf_text(client.get("/attendance/sheet.pdf", query_string=args).data, tmp_path)
    assert "Anwesenheitsliste" in text and "Unterschrift" in text
    assert "7,5" in next(line for line in text.splitlines() if "Ada Lovelace" in line)
    printed = client.get("/attendance/sheet/print", query_string=args)
    assert printed.status_code == 200 and "Anwesenheitsliste" in printed.get_data(as_text=True)


def test_attendance_sheet_refuses_a_bad_month_and_unknown_cohort(client: FlaskClient, lab: Lab) -> None:
    _login(client, lab.trainer)
    assert client.get("/attendance/", query_string={"month": "2026-13"}).status_code == 400
    assert client.get("/attendance/sheet.pdf", query_string={"cohort": "Nobody"}).status_code == 400


def test_attendance_participants_see_no_sheets(client: FlaskClient, lab: Lab, cohort: date) -> None:
    _login(client, lab.participant)
    assert (
        client.get("/attendance/sheet.pdf", query_string={"month": cohort.strftime("%Y-%m")}).status_code
        == 403
    )


def test_attendance_trainer_corrects_a_day_with_a_reason(client: FlaskClient, lab: Lab, cohort: date) -> None:
    _login(client, lab.trainer)
    with db.session() as s:
        bob = s.scalar(select(Person).where(Person.email == lab.other_participant))
        assert bob is not None
        bob_id = bob.id
    day = cohort + timedelta(days=(7 - cohort.weekday()) % 7)
    response = client.post(
        f"/attendance/people/{bob_id}/correct",
        data={"day": day.isoformat(), "hours": "6,5", "reason": "Paper list, badge forgotten"},
    )
    assert response.status_code == 302
    page = client.get(f"/attendance/people/{bob_id}", query_string={"month": cohort.strftime("%Y-%m")})
    assert "Paper list, badge forgotten" in page.get_data(as_text=True)
    with db.session() as s:
        assert s.scalars(select(AttendanceCorrection)).one().present_s == 6.5 * 3600

    # Without a reason: refused, nothing stored.
    refused = client.post(f"/attendance/people/{bob_id}/correct", data={"day": day.isoformat(), "hours": "1"})
    assert refused.status_code == 400 and "Please give a reason." in refused.get_data(as_text=True)
    with db.session() as s:
        assert len(s.scalars(select(AttendanceCorrection)).all()) == 1


def test_attendance_nobody_corrects_their_own_day(client: FlaskClient, lab: Lab, cohort: date) -> None:
    trainer_id = _login(client, lab.trainer)
    response = client.post(
        f"/attendance/people/{trainer_id}/correct",
        data={"day": cohort.isoformat(), "hours": "8", "reason": "I was there"},
    )
    assert response.status_code == 403
    with db.session() as s:
        assert s.scalars(select(AttendanceCorrection)).all() == []
        refused = s.scalar(select(AuditLog).where(AuditLog.action == "training.refused"))
        assert refused is not None and refused.detail["code"] == "own_records"


def test_attendance_trainers_act_only_at_their_site(client: FlaskClient, lab: Lab, cohort: date) -> None:
    with db.session() as s:
        other = s.scalar(select(Site).where(Site.slug == "sued"))
        assert other is not None
        far = Person(site_id=other.id, name="Sam South", is_participant=True)
        s.add(far)
        s.flush()
        far_id = far.id
    _login(client, lab.trainer)
    assert client.get(f"/attendance/people/{far_id}").status_code == 404
    response = client.post(
        f"/attendance/people/{far_id}/correct", data={"day": cohort.isoformat(), "hours": "8", "reason": "x"}
    )
    assert response.status_code == 403
    with db.session() as s:
        assert s.scalars(select(AttendanceCorrection)).all() == []
        refused = s.scalar(select(AuditLog).where(AuditLog.action == "training.refused"))
        assert refused is not None and refused.detail["code"] == "other_site"


def test_attendance_admin_sets_a_timetable(client: FlaskClient, lab: Lab, cohort: date) -> None:
    _login(client, lab.admin)
    response = client.post(
        "/attendance/timetable", data={"cohort": "Kohorte 1", "hours": "mo,mi 09:00-13:00"}
    )
    assert response.status_code == 302
    with db.session() as s:
        assert sorted(t.weekday for t in attendance.timetable(s, lab.site_id, "Kohorte 1")) == [0, 2]
    bad = client.post("/attendance/timetable", data={"cohort": "Kohorte 1", "hours": "someday 9-5"})
    assert bad.status_code == 400
