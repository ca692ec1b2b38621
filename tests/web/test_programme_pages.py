"""Programme data through the pages: admins set up a programme's fields and consent text, staff
enter a participant's values and consent, special categories only for admins (every role tried,
every refusal audited), bad forms refused with a clear message and nothing changed, exports
(special categories only pseudonymised), the GDPR download, and the German pages."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openpyxl import load_workbook
from sqlalchemy import func, select

from server.adapters.web.reports import CSV_DELIMITER
from server.extensions import db
from server.models import (
    AuditLog,
    Consent,
    ConsentText,
    FieldKind,
    ParticipantValue,
    Person,
    ProgrammeField,
    Site,
    SpecialValue,
)
from server.services import lab_keys, privacy, programme_data
from tests.web.conftest import Lab, english, sign_in

ESF = "ESF Plus"
SECRET = "Epilepsy, no laser work alone"


def _id(email: str) -> int:
    with db.session() as s:
        found = s.scalar(select(Person.id).where(Person.email == email))
    assert found is not None
    return found


@pytest.fixture
def ids(lab: Lab) -> dict[str, int]:
    """Ada is in ESF Plus; Sven trains at the other site."""
    with db.session() as s:
        ada = s.scalars(select(Person).where(Person.email == lab.participant)).one()
        ada.programme, ada.cohort = ESF, "A"
        sued = s.scalars(select(Site).where(Site.slug == "sued")).one()
        sven = Person(
            site_id=sued.id, name="Sven Süd", email="sven@lab.test", is_trainer=True, is_participant=False
        )
        s.add(sven)
        s.commit()
        return {
            "ada": ada.id,
            "sven": sven.id,
            "tina": _id(lab.trainer),
            "alex": _id(lab.admin),
            "bob": _id(lab.other_participant),
        }


def client_for(app: Flask, person_id: int | None, language: str = "en") -> FlaskClient:
    client = english(app.test_client())
    if person_id is not None:
        sign_in(client, person_id)
    if language != "en":
        with client.session_transaction() as session:
            session["language"] = language
    return client


def add_field(admin: FlaskClient, **values: str) -> int:
    data = {
        "field-label": "",
        "field-label_de": "",
        "field-kind": "text",
        "field-options": "",
        "field-needs_consent": "y",
    }
    data.update({f"field-{k}": v for k, v in values.items()})
    data = {k: v for k, v in data.items() if v != ""}
    response = admin.post("/admin/programmes/fields", query_string={"programme": ESF}, data=data)
    return response.status_code


@pytest.fixture
def fields(app: Flask, ids: dict[str, int]) -> dict[str, int]:
    """Set up through the admin pages: customer number (required, no consent), school (choice),
    health (special), and consent text version 1."""
    admin = client_for(app, ids["alex"])
    assert (
        add_field(admin, label="Customer number", label_de="Kundennummer", required="y", needs_consent="")
        == 302
    )
    assert (
        add_field(
            admin, label="School", label_de="Schulabschluss", kind="choice", options="None | Keiner\nAbitur"
        )
        == 302
    )
    assert add_field(admin, label="Health", label_de="Gesundheit", special="y") == 302
    response = admin.post(
        "/admin/programmes/consent-texts",
        query_string={"programme": ESF},
        data={"consent-text": "I agree to the data above.", "consent-text_de": "Ich willige ein."},
    )
    assert response.status_code == 302
    with db.session() as s:
        return {f.key: f.id for f in s.scalars(select(ProgrammeField))}


def _consent(app: Flask, ids: dict[str, int]) -> None:
    with db.session() as s:
        text_id = s.scalars(select(ConsentText.id)).one()
    response = client_for(app, ids["tina"]).post(
        f"/programme/people/{ids['ada']}/consent",
        data={
            "consent_text_id": text_id,
            "language": "de",
            "agreed_on": datetime.now(UTC).date().isoformat(),
        },
    )
    assert response.status_code == 302


def _special(app: Flask, ids: dict[str, int], fields: dict[str, int]) -> None:
    response = client_for(app, ids["alex"]).post(
        f"/programme/people/{ids['ada']}/special",
        data={"programme": ESF, f"field-{fields['health']}": SECRET},
    )
    assert response.status_code == 302


def _audit(action: str) -> list[AuditLog]:
    with db.session() as s:
        return list(s.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


def test_programme_pages_admin_sets_up_fields_and_consent(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    admin = client_for(app, ids["alex"])
    listing = admin.get("/admin/programmes").get_data(as_text=True)
    assert f'data-programme="{ESF}"' in listing
    page = admin.get("/admin/programmes/setup", query_string={"programme": ESF}).get_data(as_text=True)
    assert "Customer number" in page and "special category" in page and "I agree to the data above." in page
    assert set(fields) == {"customer_number", "school", "health"}
    # Edit a field: the options stay in the form, relabelling works and is audited.
    form = admin.get(f"/admin/programmes/fields/{fields['school']}").get_data(as_text=True)
    assert "None | Keiner" in form
    response = admin.post(
        f"/admin/programmes/fields/{fields['school']}",
        data={
            "label": "School leaving",
            "kind": "choice",
            "options": "None | Keiner\nAbitur\nOther",
            "needs_consent": "y",
        },
    )
    assert response.status_code == 302
    assert _audit("programme.field_changed")[-1].detail["changes"]["label"] == ["School", "School leaving"]
    # Move and delete (no answers yet: no confirmation needed).
    assert (
        admin.post(f"/admin/programmes/fields/{fields['health']}/move", data={"direction": "up"}).status_code
        == 302
    )
    with db.session() as s:
        health = s.get(ProgrammeField, fields["health"])
        assert health is not None and health.position == 1
    assert admin.post(f"/admin/programmes/fields/{fields['school']}/delete").status_code == 302
    with db.session() as s:
        assert s.get(ProgrammeField, fields["school"]) is None


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (
            {"field-label": "School", "field-kind": "choice", "field-options": "Only one"},
            "Give between 2 and 50 options",
        ),
        ({"field-label": "Health", "field-kind": "text", "field-special": "y"}, "explicit consent"),
        ({"field-label": "", "field-kind": "text"}, "This field is required."),
        ({"field-label": "X", "field-kind": "colour"}, "Not a valid choice"),
    ],
)
def test_programme_pages_bad_field_forms_are_refused_and_change_nothing(
    app: Flask, ids: dict[str, int], data: dict[str, str], says: str
) -> None:
    admin = client_for(app, ids["alex"])
    response = admin.post("/admin/programmes/fields", query_string={"programme": ESF}, data=data)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert says in html
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ProgrammeField)) == 0
    assert _audit("programme.field_created") == []


def test_programme_pages_trainer_enters_values_and_consent(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    tina = client_for(app, ids["tina"])
    # The participant's training page links to the programme data.
    assert f"/programme/people/{ids['ada']}" in tina.get(f"/training/people/{ids['ada']}").get_data(
        as_text=True
    )
    page = tina.get(f"/programme/people/{ids['ada']}").get_data(as_text=True)
    assert "Customer number" in page and "No consent recorded." in page and "Ich willige ein." not in page
    assert "I agree to the data above." in page  # Ada reads English: the text in her language
    # Special categories: not even their label for a trainer.
    assert "Health" not in page and "Special categories" not in page
    # Without consent, the school question is locked; the customer number needs none.
    response = tina.post(
        f"/programme/people/{ids['ada']}/values",
        data={"programme": ESF, f"field-{fields['customer_number']}": "123D4567"},
    )
    assert response.status_code == 302
    _consent(app, ids)
    response = tina.post(
        f"/programme/people/{ids['ada']}/values",
        data={
            "programme": ESF,
            f"field-{fields['customer_number']}": "123D4567",
            f"field-{fields['school']}": "abitur",
        },
    )
    assert response.status_code == 302
    page = tina.get(f"/programme/people/{ids['ada']}").get_data(as_text=True)
    assert 'data-consent="1"' in page and "Agreed to version 1" in page and 'value="abitur" selected' in page
    with db.session() as s:
        consent = s.scalars(select(Consent)).one()
        assert consent.recorded_by_id == ids["tina"] and consent.language == "de" and consent.version == 1
        assert s.scalar(select(func.count()).select_from(ParticipantValue)) == 2
    assert [e.detail["fields"] for e in _audit("programme.values_changed")] == [
        ["customer_number"],
        ["school"],
    ]
    assert _audit("programme.consent_recorded")[0].detail["version"] == 1


@pytest.mark.parametrize(
    ("form", "says"),
    [
        ({"customer_number": ""}, "Customer number is required."),
        ({"customer_number": "1", "school": "phd"}, "School: pick one of the options."),
        ({"customer_number": "x" * 501}, "Customer number: at most 500 characters, please."),
        ({"customer_number": "1\x002"}, "Customer number: remove the control characters."),
    ],
)
def test_programme_pages_bad_values_get_a_clear_error_and_change_nothing(
    app: Flask, ids: dict[str, int], fields: dict[str, int], form: dict[str, str], says: str
) -> None:
    _consent(app, ids)
    tina = client_for(app, ids["tina"])
    data = {
        "programme": ESF,
        f"field-{fields['customer_number']}": "123",
        f"field-{fields['school']}": "none",
    }
    assert tina.post(f"/programme/people/{ids['ada']}/values", data=data).status_code == 302
    before = programme_data.REJECTED["values_form"]
    bad = {"programme": ESF, **{f"field-{fields[k]}": v for k, v in form.items()}}
    response = tina.post(f"/programme/people/{ids['ada']}/values", data=bad)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert says in html and 'aria-invalid="true"' in html
    with db.session() as s:
        stored = {v.field_id: v.value for v in s.scalars(select(ParticipantValue))}
    assert stored == {fields["customer_number"]: "123", fields["school"]: "none"}
    assert programme_data.REJECTED["values_form"] == before + 1
    assert len(_audit("programme.values_changed")) == 1


def test_programme_pages_stale_form_and_missing_consent_day_are_refused(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    tina = client_for(app, ids["tina"])
    response = tina.post(
        f"/programme/people/{ids['ada']}/values",
        data={"programme": "Other", f"field-{fields['customer_number']}": "1"},
    )
    assert response.status_code == 400 and "programme changed since the page was loaded" in response.get_data(
        as_text=True
    )
    response = tina.post(
        f"/programme/people/{ids['ada']}/consent", data={"consent_text_id": "x", "agreed_on": ""}
    )
    assert response.status_code == 400 and "Give the consent text and the day" in response.get_data(
        as_text=True
    )
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ParticipantValue)) == 0
        assert s.scalar(select(func.count()).select_from(Consent)) == 0


def test_programme_pages_withdrawal_erases_and_is_audited(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    _consent(app, ids)
    tina = client_for(app, ids["tina"])
    tina.post(
        f"/programme/people/{ids['ada']}/values",
        data={
            "programme": ESF,
            f"field-{fields['customer_number']}": "123",
            f"field-{fields['school']}": "none",
        },
    )
    _special(app, ids, fields)
    unconfirmed = tina.post(f"/programme/people/{ids['ada']}/consent/withdraw", data={"programme": ESF})
    assert unconfirmed.status_code == 400 and "Tick the box" in unconfirmed.get_data(as_text=True)
    response = tina.post(
        f"/programme/people/{ids['ada']}/consent/withdraw", data={"programme": ESF, "confirm": "1"}
    )
    assert response.status_code == 302
    with db.session() as s:
        assert [(v.field_id, v.value) for v in s.scalars(select(ParticipantValue))] == [
            (fields["customer_number"], "123")
        ]
        assert s.scalar(select(func.count()).select_from(SpecialValue)) == 0
        consent = s.scalars(select(Consent)).one()
        assert consent.withdrawn_at is not None and consent.withdrawn_by_id == ids["tina"]
    entry = _audit("programme.consent_withdrawn")[0]
    assert entry.detail["erased"] == 1 and entry.detail["erased_special"] == 1
    page = tina.get(f"/programme/people/{ids['ada']}").get_data(as_text=True)
    assert "No consent recorded." in page and "Consents so far" in page


@pytest.mark.parametrize("role", ["anonymous", "participant", "trainer", "other_trainer", "admin"])
def test_programme_pages_special_categories_for_each_role(
    app: Flask, ids: dict[str, int], fields: dict[str, int], role: str
) -> None:
    _consent(app, ids)
    _special(app, ids, fields)
    person = {
        "anonymous": None,
        "participant": ids["ada"],
        "trainer": ids["tina"],
        "other_trainer": ids["sven"],
        "admin": ids["alex"],
    }[role]
    client = client_for(app, person)
    refusals = len(_audit("training.refused"))
    views = len(_audit("programme.special_viewed"))
    url = f"/programme/people/{ids['ada']}/special"
    shown = client.get(url)
    changed = client.post(url, data={"programme": ESF, f"field-{fields['health']}": "changed"})
    main = client.get(f"/programme/people/{ids['ada']}")
    if role == "admin":
        assert shown.status_code == 200 and SECRET in shown.get_data(as_text=True)
        assert changed.status_code == 302
        assert "Show special categories" in main.get_data(as_text=True)
        assert len(_audit("programme.special_viewed")) == views + 1
        assert _audit("programme.special_changed")[-1].detail["fields"] == ["health"]
        return
    if role == "anonymous":
        assert shown.status_code == 302 and "/login" in shown.headers["Location"]
        assert changed.status_code == 302 and main.status_code == 302
    else:
        assert shown.status_code == 403 and changed.status_code == 403
        assert SECRET not in shown.get_data(as_text=True) + changed.get_data(as_text=True)
        # Both refusals audited as a refusal of the staff rule, and counted.
        refused = _audit("training.refused")[refusals:]
        assert [e.detail["code"] for e in refused] == ["admin_only", "admin_only"]
        assert all(e.actor_id == person and e.subject == f"person:{ids['ada']}" for e in refused)
        if role == "trainer":
            assert main.status_code == 200 and SECRET not in main.get_data(as_text=True)
            assert "Health" not in main.get_data(as_text=True)
        elif role == "other_trainer":
            assert main.status_code == 404
        else:
            assert main.status_code == 403
    assert len(_audit("programme.special_viewed")) == views
    with db.session() as s:
        assert s.scalars(select(SpecialValue.value)).one() == SECRET


def test_programme_pages_staff_rule_refusals_are_audited(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    _consent(app, ids)
    form = {"programme": ESF, f"field-{fields['customer_number']}": "999"}
    # Another site's trainer: refused (403), audited, and not shown the person's page.
    sven = client_for(app, ids["sven"])
    response = sven.post(f"/programme/people/{ids['ada']}/values", data=form)
    assert response.status_code == 403 and "Ada" not in response.get_data(as_text=True)
    withdraw = sven.post(
        f"/programme/people/{ids['ada']}/consent/withdraw", data={"programme": ESF, "confirm": "1"}
    )
    assert withdraw.status_code == 403
    # Nobody on their own record: the admin is put in the programme, and may not fill it in.
    with db.session() as s:
        alex = s.get(Person, ids["alex"])
        assert alex is not None
        alex.programme = ESF
        s.commit()
    own = client_for(app, ids["alex"]).post(f"/programme/people/{ids['alex']}/values", data=form)
    assert own.status_code == 403 and "You cannot change your own records" in own.get_data(as_text=True)
    assert [e.detail["code"] for e in _audit("training.refused")] == [
        "other_site",
        "other_site",
        "own_records",
    ]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ParticipantValue)) == 0
        consent = s.scalars(select(Consent)).one()
        assert consent.withdrawn_at is None


def test_programme_pages_participant_cannot_see_or_enter(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    ada = client_for(app, ids["ada"])
    assert ada.get(f"/programme/people/{ids['ada']}").status_code == 403
    assert ada.post(f"/programme/people/{ids['ada']}/values", data={"programme": ESF}).status_code == 403
    assert ada.get("/admin/programmes").status_code == 403


def _rows(body: bytes) -> list[dict[str, str]]:
    rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=CSV_DELIMITER))
    return [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]


def test_programme_pages_exports_special_categories_only_pseudonymised(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    _consent(app, ids)
    client_for(app, ids["tina"]).post(
        f"/programme/people/{ids['ada']}/values",
        data={
            "programme": ESF,
            f"field-{fields['customer_number']}": "123D4567",
            f"field-{fields['school']}": "none",
        },
    )
    _special(app, ids, fields)
    admin = client_for(app, ids["alex"])
    year = datetime.now(UTC).year
    named = {"site": "nord", "from": f"{year}-01", "to": f"{year}-12"}
    # Ordinary fields with names (the report's names), option labels in the reader's language.
    rows = {
        r["Participant"]: r
        for r in _rows(admin.get("/reports/funder-programme-data.csv", query_string=named).data)
    }
    assert rows["Ada Lovelace"]["Customer number"] == "123D4567" and rows["Ada Lovelace"]["School"] == "None"
    assert "Health" not in rows["Ada Lovelace"]
    # Special categories: refused under names, nothing exported or audited as exported.
    before = programme_data.REJECTED["special_export_named"]
    refused = admin.get("/reports/funder-special-categories.csv", query_string=named)
    assert refused.status_code == 400 and "only under pseudonyms" in refused.get_data(as_text=True)
    assert programme_data.REJECTED["special_export_named"] == before + 1
    assert _audit("programme.special_exported") == []
    page = admin.get("/reports/funder", query_string=named).get_data(as_text=True)
    assert "funder-programme-data.csv" in page and "funder-special-categories.csv" not in page
    pseudonymised = {**named, "pseudonyms": "1"}
    assert "funder-special-categories.csv" in admin.get(
        "/reports/funder", query_string=pseudonymised
    ).get_data(as_text=True)
    response = admin.get("/reports/funder-special-categories.csv", query_string=pseudonymised)
    assert response.status_code == 200
    body = response.data.decode("utf-8-sig")
    with db.session() as s:  # the key the export was made with: kept by the view, not made anew here
        label = privacy.pseudonym(ids["ada"], lab_keys.pseudonym_key(s))
    special_rows = {r["Pseudonym"]: r for r in _rows(response.data)}
    assert special_rows[label]["Health"] == SECRET
    assert list(special_rows[label]) == ["Pseudonym", "Cohort", "Programme", "Health"]
    for trace in ("Ada", "Lovelace", "ada@lab.test", "123D4567"):
        assert trace not in body
    exported = _audit("programme.special_exported")[0]
    assert exported.detail["fields"] == ["health"] and exported.detail["values"] == 1
    assert exported.detail["pseudonyms"] is True
    # The workbook carries the ordinary fields, never a special category.
    book = load_workbook(io.BytesIO(admin.get("/reports/funder.xlsx", query_string=pseudonymised).data))
    sheet = book["Programme data"]
    cells = [str(c.value) for row in sheet.iter_rows() for c in row]
    assert "Customer number" in cells and label in cells
    everything = [str(c.value) for ws in book.worksheets for row in ws.iter_rows() for c in row]
    assert SECRET not in everything and "Health" not in everything


def test_programme_pages_gdpr_download_holds_programme_data(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    _consent(app, ids)
    _special(app, ids, fields)
    response = client_for(app, ids["alex"]).post(f"/admin/people/{ids['ada']}/export")
    data = json.loads(response.data)
    assert data["special_categories"][0]["value"] == SECRET and data["consents"][0]["version"] == 1
    assert _audit("person.export")[0].detail["special_categories"] == 1


def test_programme_pages_in_german(app: Flask, ids: dict[str, int], fields: dict[str, int]) -> None:
    alex = client_for(app, ids["alex"], language="de")
    page = alex.get(f"/programme/people/{ids['ada']}").get_data(as_text=True)
    assert "Programmdaten" in page and "Einwilligung" in page and "Kundennummer" in page
    assert "Besondere Kategorien" in page
    refused = alex.post(
        f"/programme/people/{ids['ada']}/values",
        data={"programme": ESF, f"field-{fields['customer_number']}": ""},
    )
    assert refused.status_code == 400 and "Kundennummer ist erforderlich." in refused.get_data(as_text=True)
    setup = alex.get("/admin/programmes/setup", query_string={"programme": ESF}).get_data(as_text=True)
    assert "Besondere Kategorie" in setup and "Einwilligungstext" in setup


def test_programme_pages_demo_lab_shows_one_programme(app: Flask) -> None:
    """The demo: one programme asks four optional questions under one consent text."""
    from pathlib import Path

    from server.adapters.demo.proof import add_proof_demo
    from server.services.lab_file import load, parse

    demo = Path(__file__).resolve().parents[2] / "server" / "adapters" / "demo" / "demo.yaml"
    with db.session() as s:
        load(s, parse(demo.read_text(encoding="utf-8")))
    with db.session() as s:
        added = add_proof_demo(s, datetime.now(UTC))
        s.commit()
    assert added["programme fields"] == 4 and added["consents"] >= 1
    with db.session() as s:
        fields = list(s.scalars(select(ProgrammeField)))
        assert {f.programme for f in fields} == {ESF} and not any(f.required for f in fields)
        assert [f.kind for f in fields if f.special] == [FieldKind.YES_NO]
        assert s.scalar(select(func.count()).select_from(ConsentText)) == 1
        admin = s.scalars(select(Person.id).where(Person.is_admin.is_(True))).first()
        holder = s.scalars(select(Consent.person_id)).first()
        assert admin is not None and holder is not None
    page = client_for(app, admin).get(f"/programme/people/{holder}").get_data(as_text=True)
    assert "Höchster Schulabschluss" in page or "Highest school qualification" in page


def test_programme_pages_consent_of_an_earlier_programme_is_withdrawn_from_the_list(
    app: Flask, ids: dict[str, int], fields: dict[str, int]
) -> None:
    _consent(app, ids)
    tina = client_for(app, ids["tina"])
    tina.post(
        f"/programme/people/{ids['ada']}/values",
        data={
            "programme": ESF,
            f"field-{fields['customer_number']}": "123",
            f"field-{fields['school']}": "none",
        },
    )
    with db.session() as s:
        ada = s.get(Person, ids["ada"])
        assert ada is not None
        ada.programme = "Jugend digital"
        s.commit()
    page = tina.get(f"/programme/people/{ids['ada']}").get_data(as_text=True)
    assert f'name="programme" value="{ESF}"' in page
    response = tina.post(
        f"/programme/people/{ids['ada']}/consent/withdraw", data={"programme": ESF, "confirm": "1"}
    )
    assert response.status_code == 302
    with db.session() as s:
        assert [v.field_id for v in s.scalars(select(ParticipantValue))] == [fields["customer_number"]]
        assert s.scalars(select(Consent)).one().withdrawn_at is not None
