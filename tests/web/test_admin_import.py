"""The CSV import of a cohort: all rows or none, every bad row reported, re-import updates."""

from __future__ import annotations

import io

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from server.extensions import db
from server.models import AuditLog, Badge, Person
from server.services import people_import
from tests.web.admin_support import BOB_BADGE, count, seed_training
from tests.web.conftest import AuthActions, Lab

GOOD = (
    "name,email,language,cohort,programme,external_id,badge\n"
    "Grace Hopper,grace@lab.test,en,2026-A,Digital,TN-1,04:a2:24:b2:c3:5e:81\n"
    "Jürgen Müller,,de,2026-A,Digital,TN-2,\n"
    "\n"
    '"Weber, Jonas",jonas@lab.test,,2026-A,Digital,TN-3,CAFEBABE\n'
)


@pytest.fixture
def admin(client: FlaskClient, auth: AuthActions, lab: Lab) -> FlaskClient:
    seed_training(lab.site_id)
    auth.login(lab.admin)
    return client


def upload(client: FlaskClient, lab: Lab, data: bytes | str, name: str = "cohort.csv") -> TestResponse:
    body = data.encode("utf-8") if isinstance(data, str) else data
    return client.post(
        "/admin/people/import",
        data={"file": (io.BytesIO(body), name), "site_id": str(lab.site_id)},
        content_type="multipart/form-data",
    )


def _people() -> dict[str, Person]:
    with db.session() as s:
        people = {p.name: p for p in s.scalars(select(Person))}
        s.expunge_all()
        return people


def test_admin_import_good_file_imports_every_row(admin: FlaskClient, lab: Lab) -> None:
    response = upload(admin, lab, GOOD)
    assert response.status_code == 200
    assert "3 people imported, 0 updated, 2 badges assigned" in response.get_data(as_text=True)
    people = _people()
    grace, juergen, jonas = people["Grace Hopper"], people["Jürgen Müller"], people["Weber, Jonas"]
    assert (grace.email, grace.language, grace.cohort, grace.external_id) == (
        "grace@lab.test",
        "en",
        "2026-A",
        "TN-1",
    )
    assert juergen.email is None and juergen.language == "de"
    assert jonas.language == "de"  # empty: the default
    assert all(p.is_participant and p.active and p.site_id == lab.site_id for p in (grace, juergen, jonas))
    with db.session() as s:
        badge = s.scalar(select(Badge).where(Badge.uid == "04A224B2C35E81"))
        assert badge is not None and badge.person_id == grace.id
        entry = s.scalar(select(AuditLog).where(AuditLog.action == "people.import"))
        assert entry is not None and entry.subject == "file:cohort.csv"
        assert (entry.detail["created"], entry.detail["updated"], entry.detail["badges"]) == (3, 0, 2)


def test_admin_import_three_bad_rows_reports_all_and_imports_none(admin: FlaskClient, lab: Lab) -> None:
    bad = (
        "name,email,language,badge\n"
        "Grace Hopper,grace@lab.test,en,\n"  # row 2: fine
        ",nobody@lab.test,en,\n"  # row 3: no name
        "Alan Turing,alan-at-lab,en,\n"  # row 4: bad email
        "Jonas Weber,jonas@lab.test,fr,12345\n"  # row 5: unknown language and bad badge
        "Edsger Dijkstra,GRACE@lab.test,en,\n"  # row 6: email twice in the file
        f"Barbara Liskov,barbara@lab.test,en,{BOB_BADGE}\n"  # row 7: badge belongs to Bob
        "Ken Thompson,ada@lab.test,en,\n"  # row 8: an existing person's email: an update, fine
    )
    before = count(Person)
    response = upload(admin, lab, bad)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert "Nobody was imported" in html
    rows = [cells.split("</tr>")[0] for cells in html.split("<tbody>")[1].split("<tr>")[1:]]
    found = {(r.split("</td>")[0].rsplit(">", 1)[1], r.split("</td>")[1].rsplit(">", 1)[1]) for r in rows}
    assert found == {
        ("3", "name"),
        ("4", "email"),
        ("5", "language"),
        ("5", "badge"),
        ("6", "email"),
        ("7", "badge"),
    }
    assert "The name is missing." in html
    assert "&#34;alan-at-lab&#34; is not an email address." in html
    assert "&#34;grace@lab.test&#34; is already in row 2 of this file." in html
    assert "The badge DEADBEEF is already assigned to Bob Builder." in html
    assert count(Person) == before
    assert _people()["Ada Lovelace"].name == "Ada Lovelace"
    assert count(AuditLog, AuditLog.action == "people.import") == 0


def test_admin_import_excel_bom_semicolons(admin: FlaskClient, lab: Lab) -> None:
    excel = "\ufeffName;E-Mail;Sprache;Kohorte\r\nJürgen Müller;juergen@lab.test;DE;Herbst 2026\r\n"
    response = upload(admin, lab, excel.encode("utf-8"))
    assert response.status_code == 200, response.get_data(as_text=True)
    juergen = _people()["Jürgen Müller"]
    assert (juergen.email, juergen.language, juergen.cohort) == ("juergen@lab.test", "de", "Herbst 2026")


def test_admin_import_again_updates_instead_of_duplicating(admin: FlaskClient, lab: Lab) -> None:
    upload(admin, lab, GOOD)
    before = count(Person)
    again = (
        "external_id;name;email;cohort;badge\n"
        "TN-1;Grace Brewster Hopper;grace@lab.test;2026-B;04A224B2C35E81\n"  # same badge: kept, not doubled
        "TN-2;Jürgen Müller;juergen@lab.test;;\n"  # email added, cohort kept
        ";Ada Lovelace;ADA@lab.test;2026-B;\n"  # matched by email
    )
    response = upload(admin, lab, again)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "0 people imported, 3 updated, 0 badges assigned" in response.get_data(as_text=True)
    assert count(Person) == before
    people = _people()
    assert people["Grace Brewster Hopper"].cohort == "2026-B"
    assert people["Jürgen Müller"].email == "juergen@lab.test"
    assert people["Jürgen Müller"].cohort == "2026-A"
    assert people["Ada Lovelace"].cohort == "2026-B"
    assert count(Badge, Badge.uid == "04A224B2C35E81") == 1


def test_admin_import_id_and_email_of_two_people_is_reported(admin: FlaskClient, lab: Lab) -> None:
    upload(admin, lab, GOOD)
    response = upload(admin, lab, "name,email,external_id\nGrace Hopper,ada@lab.test,TN-1\n")
    assert response.status_code == 400
    assert "belongs to Ada Lovelace, but the external_id" in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "The file is empty."),
        (b"name,email\n", "only the header row"),
        (b"email,colour\nx@lab.test,red\n", "Unknown columns: colour"),
        ("name\nJ\u00fcrgen\n".encode("latin-1"), "not UTF-8"),
        (b"name\n" + b"x" * (people_import.MAX_BYTES + 10), "The file is too large"),
        (b"name\n" + b"Someone\n" * (people_import.MAX_ROWS + 1), "at most 2000 per import"),
        (b"name,email\nA,a@lab.test,extra\n", "This row has 3 cells"),
    ],
)
def test_admin_import_refuses_broken_files(admin: FlaskClient, lab: Lab, data: bytes, message: str) -> None:
    before = count(Person)
    response = upload(admin, lab, data)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert count(Person) == before


def test_admin_import_without_file_is_refused(admin: FlaskClient, lab: Lab) -> None:
    response = admin.post("/admin/people/import", data={"site_id": str(lab.site_id)})
    assert response.status_code == 400


def test_admin_import_example_file_imports(admin: FlaskClient, lab: Lab) -> None:
    example = admin.get("/admin/people/import/example.csv")
    assert example.mimetype == "text/csv" and example.data.startswith(b"\xef\xbb\xbf")
    assert upload(admin, lab, example.data).status_code == 200


def test_admin_import_counts_read_right_in_the_singular(admin: FlaskClient, lab: Lab) -> None:
    one_bad = "name,email\n,nobody@lab.test\n"
    html = upload(admin, lab, one_bad).get_data(as_text=True)
    assert "1 problem found." in html and "1 problems" not in html
    admin.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    admin.get("/language/de")
    german = upload(admin, lab, one_bad).get_data(as_text=True)
    assert "1 Problem gefunden." in german and "1 Probleme" not in german
    admin.get("/language/en")
    done = upload(admin, lab, "name,badge\nGrace Hopper,CAFEBABE\n").get_data(as_text=True)
    assert "1 person imported, 0 updated, 1 badge assigned" in done
