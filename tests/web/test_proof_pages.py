"""Certificates (issue, PDF, public verification, revocation, cohorts), safety briefings on
record (signature pad, due list, proof list PDF) and exits against a programme's target, through
the pages, under the staff rule."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image, ImageDraw
from sqlalchemy import func, select

from server.adapters.scheduler import prompt_follow_ups
from server.adapters.web.reports import CSV_DELIMITER
from server.extensions import db
from server.models import (
    AuditLog,
    BriefingConfirmation,
    Certificate,
    Competency,
    Level,
    MachineType,
    Notification,
    ParticipantExit,
    Person,
    ProgrammeTarget,
    Qualification,
    QualificationAction,
    Requirement,
    Site,
    StepRecord,
    TrainingStep,
)
from server.services import privacy
from tests.web.conftest import Lab, english, sign_in
from tests.web.documents_support import ink, pdf_pages, pdf_text


def _id(email: str) -> int:
    with db.session() as s:
        found = s.scalar(select(Person.id).where(Person.email == email))
    assert found is not None
    return found


@pytest.fixture
def trained(lab: Lab) -> dict[str, int]:
    """Laser safety (briefing v2026-1, sign-off) required by the laser; Tina trains it, Ada holds
    it (granted by Tina, briefed by Tina 13 months ago), Bob holds nothing."""
    now = datetime.now(UTC)
    with db.session() as s:
        safety = Competency(
            slug="laser-safety", name="Laser safety", name_de="Lasersicherheit", validity_months=12
        )
        s.add(safety)
        s.flush()
        briefing = TrainingStep(
            competency_id=safety.id,
            position=0,
            kind="briefing",
            name="Laser briefing",
            name_de="Laserunterweisung",
            leads_to=Level.BRIEFED,
            content_version="2026-1",
        )
        signoff = TrainingStep(
            competency_id=safety.id,
            position=1,
            kind="signoff",
            name="Laser sign-off",
            leads_to=Level.INDEPENDENT,
        )
        s.add_all([briefing, signoff])
        laser = s.scalar(select(MachineType).where(MachineType.slug == "laser"))
        assert laser is not None
        s.add(Requirement(machine_type_id=laser.id, competency_id=safety.id, min_level=Level.INDEPENDENT))
        tina = s.scalar(select(Person).where(Person.email == lab.trainer))
        ada = s.scalar(select(Person).where(Person.email == lab.participant))
        assert tina is not None and ada is not None
        ada.programme, ada.cohort = "Jobcenter Nord", "Kohorte 1"
        s.add(
            Qualification(
                person_id=tina.id,
                competency_id=safety.id,
                action=QualificationAction.GRANTED,
                level=Level.TRAINER,
                valid_until=date(2099, 1, 1),
                created_at=now - timedelta(days=900),
            )
        )
        s.flush()
        s.add(
            StepRecord(
                person_id=ada.id,
                competency_id=safety.id,
                step_id=briefing.id,
                recorded_by_id=tina.id,
                recorded_at=now - timedelta(days=400),
            )
        )
        s.add(
            Qualification(
                person_id=ada.id,
                competency_id=safety.id,
                action=QualificationAction.GRANTED,
                level=Level.INDEPENDENT,
                valid_until=(now + timedelta(days=60)).date(),
                granted_by_id=tina.id,
                created_at=now - timedelta(days=300),
            )
        )
        s.flush()
        return {"safety": safety.id, "briefing": briefing.id, "tina": tina.id, "ada": ada.id}


def _signature(blank: bool = False) -> str:
    image = Image.new("RGB", (600, 200), "white")
    if not blank:
        ImageDraw.Draw(image).line([(40, 150), (200, 60), (380, 140), (560, 50)], fill="black", width=4)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def _issue(
    client: FlaskClient, person_id: int, kind: str = "competence", language: str = "en"
) -> Certificate:
    response = client.post(
        f"/certificates/people/{person_id}/issue", data={"kind": kind, "language": language}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    with db.session() as s:
        certificate = s.scalars(select(Certificate).order_by(Certificate.id.desc())).first()
        assert certificate is not None
        s.expunge(certificate)
    return certificate


# -- certificates ---------------------------------------------------------------------------------


def test_certificates_competence_pass_pdf_has_the_facts_and_a_verification_code(
    client: FlaskClient, lab: Lab, trained: dict[str, int], tmp_path: Path
) -> None:
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"])
    response = client.get(f"/certificates/{certificate.code}.pdf")
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = pdf_text(response.data, tmp_path)
    for expected in (
        "Competence pass",
        "Ada Lovelace",
        "Laser safety",
        "Independent",
        "Tina Trainer",
        "Laser briefing",
    ):
        assert expected in text, expected
    code = certificate.code
    assert f"{code[:4]}-{code[4:8]}-{code[8:]}" in text and f"/v/{code[:4]}-" in text
    pages = pdf_pages(response.data, tmp_path)
    assert len(pages) == 1 and ink(pages[0]) > 0.01
    with db.session() as s:
        issued = s.scalar(select(AuditLog).where(AuditLog.action == "certificate.issued"))
        assert issued is not None and issued.detail["code"] == code


def test_certificates_in_german(
    client: FlaskClient, lab: Lab, trained: dict[str, int], tmp_path: Path
) -> None:
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"], language="de")
    text = pdf_text(client.get(f"/certificates/{certificate.code}.pdf").data, tmp_path)
    assert "Kompetenzpass" in text and "Lasersicherheit" in text and "Selbstständig" in text
    # The steps done, in German too (the step has a German name).
    assert "Laserunterweisung" in text and "Laser briefing" not in text


def test_certificates_verification_in_german_names_the_lab_in_german_and_tells_expired(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    """A German reader of the check page sees the lab's German name, hours with a decimal
    comma, and a qualification that had expired when the pass was issued as expired."""
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        site.name, site.name_de = "Test Lab North", "Testwerkstatt Nord"
        s.add(
            Qualification(
                person_id=trained["ada"],
                competency_id=trained["safety"],
                action=QualificationAction.EXPIRED,
                level=Level.INDEPENDENT,
                valid_until=date(2026, 3, 3),
            )
        )
        s.commit()
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"], language="de")
    german = client.application.test_client()
    german.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    text = german.get(f"/v/{certificate.code}").get_data(as_text=True)
    assert 'data-verdict="valid"' in text
    assert "Testwerkstatt Nord" in text and "Test Lab North" not in text
    assert "Abgelaufen am 3. März 2026" in text and "Gültig bis" not in text
    # Hours present, with a decimal comma (the seeded sessions make 0.8 h).
    attended = _issue(client, trained["ada"], kind="participation", language="de")
    assert attended.facts["hours"] == 0.8
    assert "<dd>0,8</dd>" in german.get(f"/v/{attended.code}").get_data(as_text=True)
    english_text = english(client.application.test_client()).get(f"/v/{certificate.code}")
    assert "Test Lab North" in english_text.get_data(as_text=True)
    assert "Expired on March 3, 2026" in english_text.get_data(as_text=True)


def test_certificates_participation_has_period_days_and_hours(
    client: FlaskClient, lab: Lab, trained: dict[str, int], tmp_path: Path
) -> None:
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"], kind="participation")
    text = pdf_text(client.get(f"/certificates/{certificate.code}.pdf").data, tmp_path)
    assert "Certificate of participation" in text and "Jobcenter Nord" in text
    assert certificate.facts["days"] >= 1 and certificate.facts["hours"] > 0  # the seeded sessions


def test_certificates_verification_page_tells_genuine_revoked_tampered_and_unknown(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"])
    employer = english(client.application.test_client())
    code = certificate.code
    page = employer.get(f"/v/{code[:4]}-{code[4:8]}-{code[8:]}".lower())
    assert page.status_code == 200 and 'data-verdict="valid"' in page.get_data(as_text=True)
    assert "Ada Lovelace" in page.get_data(as_text=True) and page.headers["X-Robots-Tag"] == "noindex"
    assert employer.get("/v/ZZZZ-ZZZZ-ZZ").status_code == 404

    # Someone edits the stored facts (a level raised in the database): no longer genuine.
    with db.session() as s:
        row = s.get(Certificate, certificate.id)
        assert row is not None
        facts = dict(row.facts)
        facts["competencies"] = [{**facts["competencies"][0], "level": "trainer"}]
        row.facts = facts
    assert 'data-verdict="tampered"' in employer.get(f"/v/{code}").get_data(as_text=True)
    with db.session() as s:
        row = s.get(Certificate, certificate.id)
        assert row is not None
        row.facts = certificate.facts

    assert (
        client.post(f"/certificates/{code}/revoke", data={"reason": "issued by mistake"}).status_code == 302
    )
    assert 'data-verdict="revoked"' in employer.get(f"/v/{code}").get_data(as_text=True)


def test_certificates_staff_rule_own_and_other_site_refused_and_audited(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["tina"])
    own = client.post(
        f"/certificates/people/{trained['tina']}/issue", data={"kind": "competence", "language": "en"}
    )
    assert own.status_code == 403
    with db.session() as s:
        other = s.scalar(select(Site).where(Site.slug == "sued"))
        assert other is not None
        far = Person(site_id=other.id, name="Sam South")
        s.add(far)
        s.flush()
        far_id = far.id
    assert (
        client.post(f"/certificates/people/{far_id}/issue", data={"kind": "participation"}).status_code == 403
    )
    with db.session() as s:
        assert s.scalars(select(Certificate)).all() == []
        codes = [
            e.detail["code"] for e in s.scalars(select(AuditLog).where(AuditLog.action == "training.refused"))
        ]
        assert codes == ["own_records", "other_site"]


def test_certificates_holder_downloads_own_but_not_others(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"])
    sign_in(client, trained["ada"])
    assert client.get(f"/certificates/{certificate.code}.pdf").status_code == 200
    sign_in(client, _id(lab.other_participant))
    assert client.get(f"/certificates/{certificate.code}.pdf").status_code == 404
    assert client.post(f"/certificates/{certificate.code}/revoke", data={"reason": "x"}).status_code == 403


def test_certificates_for_a_cohort_in_one_pdf(
    client: FlaskClient, lab: Lab, trained: dict[str, int], tmp_path: Path
) -> None:
    with db.session() as s:
        bob = s.scalar(select(Person).where(Person.email == lab.other_participant))
        assert bob is not None
        bob.cohort = "Kohorte 1"
    sign_in(client, trained["tina"])
    response = client.post(
        "/certificates/cohort", data={"cohort": "Kohorte 1", "kind": "participation", "language": "de"}
    )
    assert response.status_code == 200 and response.mimetype == "application/pdf"
    text = pdf_text(response.data, tmp_path)
    assert text.count("Teilnahmebescheinigung") == 2 and "Ada Lovelace" in text and "Bob Builder" in text
    assert len(pdf_pages(response.data, tmp_path)) == 2
    # A competence pass only for who holds a competency: Bob is skipped, Ada gets hers.
    passes = client.post(
        "/certificates/cohort", data={"cohort": "Kohorte 1", "kind": "competence", "language": "en"}
    )
    assert passes.status_code == 200 and passes.headers["X-Werkbank-Skipped"] == "1"


def test_certificates_of_an_erased_person_read_as_withdrawn(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"])
    with db.session() as s:
        ada = s.get(Person, trained["ada"])
        assert ada is not None
        privacy.erase(s, ada, None, datetime.now(UTC))
    page = english(client.application.test_client()).get(f"/v/{certificate.code}")
    text = page.get_data(as_text=True)
    assert 'data-verdict="erased"' in text and "Ada" not in text


# -- briefings --------------------------------------------------------------------------------------


def test_briefings_recorded_with_signature_and_content_version(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["tina"])
    page = client.get(f"/briefings/people/{trained['ada']}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "signature.js" in html and "<canvas" in html and "<script>" not in html
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    response = client.post(
        f"/briefings/people/{trained['ada']}",
        data={"step_id": trained["briefing"], "signature": _signature()},
    )
    assert response.status_code == 302
    with db.session() as s:
        confirmation = s.scalars(select(BriefingConfirmation)).one()
        assert confirmation.content_version == "2026-1"
        assert confirmation.signature.startswith("data:image/png;base64,")
        assert confirmation.record.recorded_by_id == trained["tina"]
    assert "2026-1" in client.get(f"/briefings/people/{trained['ada']}").get_data(as_text=True)


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        ("", "Please let the participant sign on the pad."),
        ("data:image/svg+xml;base64,PHN2Zy8+", "Please let the participant sign on the pad."),
        ("data:image/png;base64,bm90IGEgcG5n", "Please let the participant sign on the pad."),
        (None, "The pad is empty. Please let the participant sign."),
    ],
)
def test_briefings_refuse_a_missing_blank_or_forged_signature(
    client: FlaskClient, lab: Lab, trained: dict[str, int], signature: str | None, message: str
) -> None:
    sign_in(client, trained["tina"])
    data = {
        "step_id": trained["briefing"],
        "signature": _signature(blank=True) if signature is None else signature,
    }
    response = client.post(f"/briefings/people/{trained['ada']}", data=data)
    assert response.status_code == 400 and message in response.get_data(as_text=True)
    with db.session() as s:
        assert s.scalars(select(BriefingConfirmation)).all() == []


def test_briefings_due_list_and_inspection_proof_pdf(
    client: FlaskClient, lab: Lab, trained: dict[str, int], tmp_path: Path
) -> None:
    sign_in(client, trained["tina"])
    due = client.get("/briefings/due").get_data(as_text=True)
    assert "Ada Lovelace" in due and "overdue" in due  # briefed 400 days ago
    client.post(
        f"/briefings/people/{trained['ada']}",
        data={"step_id": trained["briefing"], "signature": _signature()},
    )
    assert "Ada Lovelace" not in client.get("/briefings/due").get_data(as_text=True)

    response = client.get("/briefings/proof.pdf", query_string={"machine_type": "laser"})
    assert response.status_code == 200
    text = pdf_text(response.data, tmp_path)
    assert "Proof of safety briefings" in text and "CO2 laser cutter" in text and "DGUV" in text
    assert "Ada Lovelace" in text and "2026-1" in text and "Tina Trainer" in text
    assert ink(pdf_pages(response.data, tmp_path, dpi=72)[0]) > 0.01
    with db.session() as s:
        assert s.scalar(select(AuditLog).where(AuditLog.action == "briefing.proof")) is not None


def test_briefings_nobody_signs_off_their_own_briefing(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["tina"])
    response = client.post(
        f"/briefings/people/{trained['tina']}",
        data={"step_id": trained["briefing"], "signature": _signature()},
    )
    assert response.status_code == 403
    with db.session() as s:
        assert s.scalars(select(BriefingConfirmation)).all() == []


# -- outcomes -----------------------------------------------------------------------------------------


def test_outcomes_exit_follow_up_and_report_against_target(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    year = datetime.now(UTC).year
    left = date(year, 1, 15)
    sign_in(client, trained["tina"])
    response = client.post(
        f"/outcomes/people/{trained['ada']}/exit", data={"on": left.isoformat(), "reason": "employment"}
    )
    assert response.status_code == 302
    sign_in(client, _id(lab.admin))
    assert (
        client.post(
            "/outcomes/targets", data={"programme": "Jobcenter Nord", "year": year, "integrations": 4}
        ).status_code
        == 302
    )
    args = {"site": "nord", "from": f"{year}-01", "to": f"{year}-12"}
    page = client.get("/reports/funder", query_string=args)
    html = page.get_data(as_text=True)
    assert 'data-table="outcomes"' in html and "Integrations against the target" in html
    body = client.get("/reports/funder-outcomes.csv", query_string=args).data.decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(body), delimiter=CSV_DELIMITER))
    header, row = rows[0], rows[1]
    values = dict(zip(header, row, strict=True))
    assert values["Programme"] == "Jobcenter Nord" and values["Employment"] == "1"
    assert values["Integrations"] == "1" and values["Target of the year"] == "4"
    assert values["Target reached (%)"] == "25.0"

    # Six months after the exit the site's admins are asked for the follow-up, once.
    assert prompt_follow_ups(db, datetime(year, 7, 16, 8, tzinfo=UTC)) == 1
    assert prompt_follow_ups(db, datetime(year, 7, 17, 8, tzinfo=UTC)) == 0
    with db.session() as s:
        note = s.scalars(select(Notification).where(Notification.kind == "follow_up_due")).one()
        assert note.person_id == _id(lab.admin)
    assert (
        client.post(
            f"/outcomes/people/{trained['ada']}/follow-up", data={"on": f"{year}-07-20", "status": "employed"}
        ).status_code
        == 302
    )
    with db.session() as s:
        entry = s.scalars(select(ParticipantExit)).one()
        assert (
            entry.follow_up_status == "employed"
            and s.scalars(select(ProgrammeTarget)).one().integrations == 4
        )


def test_outcomes_participants_cannot_record_exits(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    sign_in(client, trained["ada"])
    assert (
        client.post(
            f"/outcomes/people/{trained['ada']}/exit", data={"on": "2026-01-01", "reason": "employment"}
        ).status_code
        == 403
    )
    with db.session() as s:
        assert s.scalars(select(ParticipantExit)).all() == []


# -- without WeasyPrint --------------------------------------------------------------------------


def test_pdfs_without_weasyprint_give_a_page_with_the_print_view(
    client: FlaskClient,
    lab: Lab,
    trained: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When WeasyPrint (or pango) cannot be loaded, a PDF request answers with a page that says
    so and links the print view (HTTP 503, not a crash), logged and counted; the print view
    works, and the PDF export is not audited as made."""
    import sys

    from server.services import documents

    with db.session() as s:
        bob = s.scalar(select(Person).where(Person.email == lab.other_participant))
        assert bob is not None
        bob.cohort = "Kohorte 1"
    sign_in(client, trained["tina"])
    english(client)
    certificate = _issue(client, trained["ada"])
    monkeypatch.setitem(sys.modules, "weasyprint", None)  # `from weasyprint import HTML` fails
    monkeypatch.setattr(documents, "FAILED", documents.FAILED.__class__())
    with db.session() as s:
        audited = s.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == "attendance.export"))
    month = datetime.now(UTC).strftime("%Y-%m")
    asked = {
        f"/attendance/sheet.pdf?month={month}": "/attendance/sheet/print",
        "/briefings/proof.pdf?machine_type=laser": "/briefings/proof",
        f"/certificates/{certificate.code}.pdf": "/certificates/print",
    }
    for url, view in asked.items():
        with caplog.at_level("ERROR"):
            response = client.get(url)
        assert response.status_code == 503, url
        assert response.mimetype == "text/html"
        html = response.get_data(as_text=True)
        assert "This server cannot make PDFs at the moment." in html
        found = re.search(r'href="([^"]+)" data-print-view', html)
        assert found is not None, html
        print_url = found.group(1).replace("&amp;", "&")
        assert print_url.startswith(view), print_url
        page = client.get(print_url)
        assert page.status_code == 200 and page.mimetype == "text/html", print_url
        assert "WeasyPrint" in caplog.text
    assert dict(documents.FAILED) == {"attendance_sheet": 1, "briefing_proof": 1, "certificates": 1}
    assert "Laser safety" in client.get(f"/certificates/print?code={certificate.code}").get_data(as_text=True)
    with db.session() as s:
        after = s.scalar(select(func.count(AuditLog.id)).where(AuditLog.action == "attendance.export"))
    assert after == audited + 1  # the sheet's print view, not the refused PDF
    # The cohort's certificates: issued, then the page offers all of them in one print view.
    response = client.post(
        "/certificates/cohort", data={"cohort": "Kohorte 1", "kind": "competence", "language": "en"}
    )  # Bob holds nothing: skipped
    assert response.status_code == 503
    assert "/certificates/print?code=" in response.get_data(as_text=True)
    # German too.
    client.get("/language/de")
    german = client.get(f"/certificates/{certificate.code}.pdf").get_data(as_text=True)
    assert "Dieser Server kann gerade keine PDFs erstellen." in german


def test_briefings_content_version_set_on_the_admin_page_is_recorded_and_on_the_proof_list(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    """An admin sets a briefing step's content version (audited); briefings recorded after that
    keep the new version, earlier ones their own; the proof list shows each. Bad input is refused
    with the reason and changes nothing."""
    from server.adapters.web.admin import base

    step_url = f"/admin/steps/{trained['briefing']}"
    form = {
        "kind": "briefing",
        "name": "Laser briefing",
        "name_de": "Laserunterweisung",
        "leads_to": "briefed",
    }
    sign_in(client, trained["tina"])
    client.post(
        f"/briefings/people/{trained['ada']}",
        data={"step_id": trained["briefing"], "signature": _signature()},
    )
    sign_in(client, _id(lab.admin))
    english(client)
    assert 'value="2026-1"' in client.get(step_url).get_data(as_text=True)
    refused_before = sum(base.REFUSED.values())
    for bad, message in (
        ("2026 <b>", "A version is letters, digits, dots, dashes and slashes"),
        ("x" * 41, "40"),
    ):
        response = client.post(step_url, data={**form, "content_version": bad})
        assert response.status_code == 400 and message in response.get_data(as_text=True)
    signoff = {"kind": "signoff", "name": "Laser sign-off", "leads_to": "independent", "content_version": "1"}
    with db.session() as s:
        signoff_id = s.scalar(select(TrainingStep.id).where(TrainingStep.name == "Laser sign-off"))
    response = client.post(f"/admin/steps/{signoff_id}", data=signoff)
    assert response.status_code == 400
    assert "Only briefings have a content version" in response.get_data(as_text=True)
    assert sum(base.REFUSED.values()) == refused_before + 3
    with db.session() as s:
        assert s.get(TrainingStep, trained["briefing"]).content_version == "2026-1"  # type: ignore[union-attr]
    assert client.post(step_url, data={**form, "content_version": " 2026-2 "}).status_code == 302
    with db.session() as s:
        assert s.get(TrainingStep, trained["briefing"]).content_version == "2026-2"  # type: ignore[union-attr]
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "step.update")).one()
        assert logged.detail == {"content_version": ["2026-1", "2026-2"]}
    competency_page = client.get(f"/admin/competencies/{trained['safety']}").get_data(as_text=True)
    assert "content version 2026-2" in competency_page
    # A briefing now records 2026-2; the one before keeps 2026-1.
    sign_in(client, trained["tina"])
    english(client)
    assert "content version 2026-2" in client.get(f"/briefings/people/{trained['ada']}").get_data(
        as_text=True
    )
    client.post(
        f"/briefings/people/{trained['ada']}",
        data={"step_id": trained["briefing"], "signature": _signature()},
    )
    with db.session() as s:
        versions = [
            c.content_version
            for c in s.scalars(select(BriefingConfirmation).order_by(BriefingConfirmation.id))
        ]
    assert versions == ["2026-1", "2026-2"]
    proof = client.get("/briefings/proof?machine_type=laser").get_data(as_text=True)
    assert "<td>2026-2</td>" in proof and "<td>2026-1</td>" in proof


# -- signatures: Ed25519, checkable offline -------------------------------------------------------


def _offline_check(document: dict[str, object], keys: dict[str, object]) -> bool:
    """What an employer does with nothing but the `cryptography` package: the facts' canonical
    JSON, the signature, the lab's published public key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    parts = str(document["signature"]).split(":")
    if len(parts) != 3:
        return False
    algorithm, key_id, signature = parts
    published = {k["key_id"]: k["public_key"] for k in keys["keys"]}  # type: ignore[index,attr-defined]
    if algorithm != "ed25519" or key_id not in published:
        return False
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(published[key_id]))
    message = json.dumps(document["facts"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    try:
        public.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)), message.encode())
    except InvalidSignature:
        return False
    return True


def _leaves(value: object, path: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _leaves(item, (*path, key))]
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _leaves(item, (*path, i))]
    return [path]


def _changed(facts: dict[str, object], path: tuple[object, ...]) -> dict[str, object]:
    copy = json.loads(json.dumps(facts))
    *parents, last = path
    holder = copy
    for key in parents:
        holder = holder[key]
    old = holder[last]
    holder[last] = (
        (old + 1)
        if isinstance(old, int | float) and not isinstance(old, bool)
        else (not old if isinstance(old, bool) else f"{old}x" if old is not None else "x")
    )
    return copy  # type: ignore[no-any-return]


def test_certificates_are_signed_with_ed25519_and_check_offline_with_the_published_key(
    client: FlaskClient, lab: Lab, trained: dict[str, int], tmp_path: Path
) -> None:
    from server.services import certificates

    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"])
    employer = english(client.application.test_client())
    keys = employer.get("/v/keys.json").get_json()
    [key] = keys["keys"]
    assert key["current"] and key["pem"].startswith("-----BEGIN PUBLIC KEY-----")
    assert certificate.signature.startswith(f"ed25519:{key['key_id']}:")
    document = employer.get(f"/v/{certificate.code}/signed.json").get_json()
    assert document["facts"] == certificate.facts and document["key_id"] == key["key_id"]
    assert _offline_check(document, keys)
    page = employer.get("/v/keys").get_data(as_text=True)
    assert key["key_id"] in page and key["public_key"] in page
    verify_page = employer.get(f"/v/{certificate.code}").get_data(as_text=True)
    assert 'data-verdict="valid"' in verify_page and f"/v/{certificate.code}/signed.json" in verify_page
    text = pdf_text(client.get(f"/certificates/{certificate.code}.pdf").data, tmp_path)
    assert key["key_id"] in text  # the paper names the key it was signed with

    # Any signed field changed, the signature or its key id: no longer the lab's, offline or here.
    paths = _leaves(certificate.facts)
    assert {("person",), ("code",), ("issued",), ("issued_by",), ("competencies", 0, "level")} <= set(paths)
    for path in paths:
        forged = {**document, "facts": _changed(certificate.facts, path)}
        assert not _offline_check(forged, keys), path
    algorithm, key_id, signature = certificate.signature.split(":")
    flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
    for bad in (f"{algorithm}:{key_id}:{flipped}", f"{algorithm}:{'0' * 16}:{signature}", "0" * 64):
        assert not _offline_check({**document, "signature": bad}, keys)
        assert not certificates.check_offline(
            certificate.facts, bad, {key["key_id"]: _public(key["public_key"])}
        )
    for path in (("person",), ("competencies", 0, "level"), ("issued",)):
        with db.session() as s:
            row = s.get(Certificate, certificate.id)
            assert row is not None
            row.facts = _changed(certificate.facts, path)
        assert 'data-verdict="tampered"' in employer.get(f"/v/{certificate.code}").get_data(as_text=True)
    with db.session() as s:
        row = s.get(Certificate, certificate.id)
        assert row is not None
        row.facts = certificate.facts
    assert 'data-verdict="valid"' in employer.get(f"/v/{certificate.code}").get_data(as_text=True)
    # Revoked: the signature still holds, the page says it no longer stands.
    client.post(f"/certificates/{certificate.code}/revoke", data={"reason": "issued by mistake"})
    assert 'data-verdict="revoked"' in employer.get(f"/v/{certificate.code}").get_data(as_text=True)
    assert employer.get("/v/ZZZZ-ZZZZ-ZZ/signed.json").status_code == 404


def _public(b64: str) -> object:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64))


def test_certificates_signed_with_hmac_before_still_verify(
    client: FlaskClient, lab: Lab, trained: dict[str, int]
) -> None:
    """A certificate issued before Ed25519 (HMAC under the certificate key) still reads as
    genuine, and as tampered when edited; its page says it can only be checked there."""
    from server.services import certificates

    sign_in(client, trained["tina"])
    certificate = _issue(client, trained["ada"])
    old_key = certificates.hmac_key(client.application.config)
    with db.session() as s:
        row = s.get(Certificate, certificate.id)
        assert row is not None
        row.signature = certificates.hmac_signature(certificate.facts, old_key)
    employer = english(client.application.test_client())
    page = employer.get(f"/v/{certificate.code}").get_data(as_text=True)
    assert 'data-verdict="valid"' in page and "only this page can check it" in page
    assert employer.get(f"/v/{certificate.code}/signed.json").get_json()["algorithm"] == "hmac-sha256"
    with db.session() as s:
        row = s.get(Certificate, certificate.id)
        assert row is not None
        row.facts = {**certificate.facts, "person": "Someone Else"}
    assert 'data-verdict="tampered"' in employer.get(f"/v/{certificate.code}").get_data(as_text=True)
