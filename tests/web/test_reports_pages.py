"""The funder report's pages: the report, the print view, CSV and XLSX read back, bad
filters refused without change, every export in the audit log, German headers."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openpyxl import load_workbook
from sqlalchemy import delete, func, select

from server.adapters.web import reports as reports_web
from server.extensions import db
from server.models import AuditLog, LabKey, Person
from tests.server.report_factory import Scenario, build_scenario
from tests.web.conftest import english, sign_in

Q1 = "site=nord&from=2026-01&to=2026-03"


@dataclass
class Setup:
    world: Scenario
    admin_id: int


@pytest.fixture
def setup(app: Flask) -> Setup:
    with db.session() as s:
        world = build_scenario(s)
        admin = Person(
            site_id=world.ids["nord"],
            name="Alex Admin",
            email="admin@lab.test",
            is_admin=True,
            is_participant=False,
            language="en",
        )
        s.add(admin)
        s.flush()
        return Setup(world, admin.id)


def _client(app: Flask, person_id: int, language: str | None = None) -> FlaskClient:
    client = english(app.test_client())
    sign_in(client, person_id)
    if language:
        with client.session_transaction() as session:
            session["language"] = language
    return client


@pytest.fixture
def admin(app: Flask, setup: Setup) -> FlaskClient:
    return _client(app, setup.admin_id)


def _exports() -> list[AuditLog]:
    with db.session() as s:
        return list(
            s.scalars(select(AuditLog).where(AuditLog.action == "report.export").order_by(AuditLog.id))
        )


def _csv(body: bytes) -> list[list[str]]:
    assert body.startswith("\ufeff".encode())  # the BOM: Excel reads it as UTF-8
    return list(csv.reader(io.StringIO(body.decode("utf-8-sig")), delimiter=";"))


def test_reports_page_shows_the_quarter(admin: FlaskClient, setup: Setup) -> None:
    response = admin.get(f"/reports/funder?{Q1}")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for name in ("Ada Lovelace", "Ben Builder", "Cem Carver", "Eli Etcher", setup.world.label("gus")):
        assert name in page
    for absent in ("Dora Drill", "Fay Faraway"):
        assert absent not in page
    assert 'data-figure="participants">5<' in page
    assert 'data-figure="new">1<' in page
    assert 'data-figure="finished">2<' in page
    assert 'data-figure="hours">10.0<' in page
    assert "Tina Trainer" in page  # Ben's trainer
    assert "January 2026 to March 2026: whole months in the site" in page
    # The exports and the print view carry the same filters.
    for endpoint in ("/reports/funder.csv?", "/reports/funder.xlsx?", "/reports/funder/print?"):
        assert endpoint in page
    assert "from=2026-01&amp;to=2026-03" in page
    assert _exports() == []  # looking is not exporting


def test_reports_page_with_pseudonyms_names_nobody(admin: FlaskClient, setup: Setup) -> None:
    page = admin.get(f"/reports/funder?{Q1}&pseudonyms=1").get_data(as_text=True)
    for name in ("Ada Lovelace", "Ben Builder", "Tina Trainer"):
        assert name not in page
    assert setup.world.label("ada") in page
    assert setup.world.label("tina") in page
    assert "Names are replaced by pseudonyms." in page


def test_reports_page_keeps_the_pseudonym_key_it_makes(admin: FlaskClient, setup: Setup) -> None:
    """Shown before anything made the lab's pseudonym key, the report makes it once and keeps it:
    later pages and exports use the same pseudonyms, and no page makes another key. (On
    PostgreSQL the key made before was thrown away with each request's transaction; SQLite's
    savepoint commits on its own, ingest.py says why.)"""
    from server.services import lab_keys, privacy

    with db.session() as s:
        s.execute(delete(LabKey).where(LabKey.name == lab_keys.PSEUDONYM))
    assert admin.get(f"/reports/funder?{Q1}").status_code == 200
    with db.session() as s:
        made = s.get(LabKey, lab_keys.PSEUDONYM)
        assert made is not None, "kept after the page"
        key = lab_keys.pseudonym_key(s)
    page = admin.get(f"/reports/funder?{Q1}&pseudonyms=1").get_data(as_text=True)
    assert privacy.pseudonym(setup.world.ids["ada"], key) in page
    with db.session() as s:
        assert [k.secret for k in s.scalars(select(LabKey).where(LabKey.name == lab_keys.PSEUDONYM))] == [
            made.secret
        ]


def test_reports_page_filters_by_cohort_and_defaults(admin: FlaskClient, setup: Setup) -> None:
    page = admin.get(f"/reports/funder?{Q1}&cohort=Cohort+B").get_data(as_text=True)
    assert "Cem Carver" in page and "Eli Etcher" in page
    assert "Ada Lovelace" not in page
    assert admin.get("/reports/").status_code == 302


def test_reports_first_visit_shows_the_year_so_far_in_local_months(
    admin: FlaskClient, setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 23:30 UTC on 31 December 2026 is already January 2027 in Berlin.
    monkeypatch.setattr(reports_web, "_now", lambda: datetime(2026, 12, 31, 23, 30, tzinfo=UTC))
    page = admin.get("/reports/funder").get_data(as_text=True)
    assert '<option value="nord" selected>' in page  # the admin's own site
    assert 'name="from" type="month" value="2027-01"' in page
    assert 'name="to" type="month" value="2027-01"' in page
    monkeypatch.setattr(reports_web, "_now", lambda: datetime(2026, 5, 10, 9, 0, tzinfo=UTC))
    page = admin.get("/reports/funder?cohort=Cohort+A").get_data(as_text=True)
    assert 'value="2026-01"' in page and 'value="2026-05"' in page
    assert 'data-figure="participants">3<' in page  # Ada, Ben, Gus from January to May
    # Quick links: last year's quarters and this year's so far, the cohort kept.
    assert ">Q2 2026<" in page and ">Q3 2026<" not in page and ">Q4 2025<" in page
    assert "cohort=Cohort+A&amp;programme=&amp;from=2026-04&amp;to=2026-06" in page


def test_reports_csv_one_row_per_participant(admin: FlaskClient, setup: Setup) -> None:
    response = admin.get(f"/reports/funder.csv?{Q1}")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert 'filename="funder-report_nord_2026-01_2026-03.csv"' in response.headers["Content-Disposition"]
    rows = _csv(response.data)
    header = rows[0]
    assert header[:10] == [
        "Participant",
        "Cohort",
        "Programme",
        "New",
        "Active",
        "Finished",
        "Sessions",
        "Machine hours",
        "Run hours",
        "Supervised hours",
    ]
    assert header[10:12] == ["Hours: CO2 laser cutter", "Hours: FDM 3D printer"]
    by_name = {row[0]: dict(zip(header, row, strict=True)) for row in rows[1:]}
    assert len(by_name) == 5
    ada = by_name["Ada Lovelace"]
    assert (ada["Machine hours"], ada["Run hours"], ada["Supervised hours"], ada["Sessions"]) == (
        "6.5",
        "5.0",
        "0.5",
        "6",
    )
    assert (ada["Hours: CO2 laser cutter"], ada["Hours: FDM 3D printer"]) == ("3.5", "3.0")
    ben = by_name["Ben Builder"]
    assert (ben["New"], ben["Active"], ben["Finished"]) == ("yes", "yes", "no")
    assert ben["Qualifications granted"] == "1"
    assert "Laser safety" in ben["Qualifications"] and "2026-01-01" in ben["Qualifications"]
    assert by_name["Cem Carver"]["Finished"] == "yes"
    [entry] = _exports()
    assert entry.actor_id == setup.admin_id
    assert entry.detail == {
        "format": "csv",
        "site": "nord",
        "cohort": "",
        "programme": "",
        "from": "2026-01",
        "to": "2026-03",
        "pseudonyms": False,
    }


def test_reports_csv_in_german(app: Flask, setup: Setup) -> None:
    german = _client(app, setup.admin_id, language="de")
    rows = _csv(german.get(f"/reports/funder.csv?{Q1}").data)
    header = rows[0]
    assert header[:3] == ["Teilnehmer/in", "Gruppe", "Programm"]
    assert "Maschinenstunden" in header
    ada = dict(zip(header, next(r for r in rows if r[0] == "Ada Lovelace"), strict=True))
    assert ada["Maschinenstunden"] == "6,5"  # a decimal comma, as German Excel reads it
    assert ada["Neu"] == "nein"


def test_reports_page_in_german(app: Flask, setup: Setup) -> None:
    page = _client(app, setup.admin_id, language="de").get(f"/reports/funder?{Q1}").get_data(as_text=True)
    assert "<h1>Bericht für Fördergeber</h1>" in page
    assert "Januar 2026 bis März 2026: ganze Monate in der Ortszeit des Standorts." in page
    assert 'data-figure="hours">10,0<' in page
    assert "Vergebene Qualifikationen" in page and "Eingewiesen" in page


def test_reports_qualifications_csv_names_trainers_unless_pseudonyms(
    admin: FlaskClient, setup: Setup
) -> None:
    rows = _csv(admin.get(f"/reports/funder-qualifications.csv?{Q1}").data)
    assert rows[0] == [
        "Date",
        "Participant",
        "Cohort",
        "Programme",
        "Competency",
        "Level",
        "Action",
        "Valid until",
        "Trainer",
    ]
    assert rows[1:] == [
        [
            "2026-01-01",
            "Ben Builder",
            "Cohort A",
            "P1",
            "Laser safety",
            "Briefed",
            "Granted",
            "",
            "Tina Trainer",
        ]
    ]
    hidden = _csv(admin.get(f"/reports/funder-qualifications.csv?{Q1}&pseudonyms=1").data)
    assert hidden[1][1] == setup.world.label("ben")
    assert hidden[1][8] == setup.world.label("tina")
    assert [e.detail["format"] for e in _exports()] == ["csv-qualifications", "csv-qualifications"]
    assert [e.detail["pseudonyms"] for e in _exports()] == [False, True]


def test_reports_xlsx_sheets_numbers_and_dates(admin: FlaskClient, setup: Setup) -> None:
    response = admin.get(f"/reports/funder.xlsx?{Q1}&cohort=Cohort+A")
    assert response.status_code == 200
    assert response.mimetype == "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    assert 'filename="funder-report_nord_2026-01_2026-03.xlsx"' in response.headers["Content-Disposition"]
    book = load_workbook(io.BytesIO(response.data))
    assert book.sheetnames == [
        "Summary",
        "Participants",
        "Qualifications",
        "Hours by group",
        "Machines",
        "Outcomes",
    ]
    for ws in book.worksheets:
        assert ws.freeze_panes == "A2"
        assert all(cell.font.bold for cell in ws[1])
        assert ws.column_dimensions["A"].width >= 8

    people = book["Participants"]
    header = [c.value for c in people[1]]
    ada = next(row for row in people.iter_rows(min_row=2) if row[0].value == "Ada Lovelace")
    hours = ada[header.index("Machine hours")]
    assert hours.value == 6.5 and isinstance(hours.value, float)
    assert hours.number_format == "0.0"
    assert ada[header.index("Sessions")].value == 6
    assert {row[0].value for row in people.iter_rows(min_row=2)} == {
        "Ada Lovelace",
        "Ben Builder",
        setup.world.label("gus"),
    }

    quals = book["Qualifications"]
    day = quals["A2"]
    assert isinstance(day.value, datetime) and day.value.date().isoformat() == "2026-01-01"
    assert day.is_date
    assert quals["I2"].value == "Tina Trainer"

    groups = book["Hours by group"]
    rows = [[c.value for c in row] for row in groups.iter_rows(min_row=2)]
    assert rows[0] == ["Cohort A", "P1", 3, 9.0, 6.0, 3.5, 5.5]  # hours: all, run, laser, printer
    assert rows[-1][0] == "Total"

    summary = {row[0].value: row[1] for row in book["Summary"].iter_rows(min_row=2)}
    assert summary["Participants"].value == 3
    assert summary["Machine hours"].value == 9.0
    assert summary["First month"].is_date
    assert summary["Cohort"].value == "Cohort A"
    [entry] = _exports()
    assert entry.detail["format"] == "xlsx" and entry.detail["cohort"] == "Cohort A"


def test_reports_xlsx_headers_in_german(app: Flask, setup: Setup) -> None:
    german = _client(app, setup.admin_id, language="de")
    book = load_workbook(io.BytesIO(german.get(f"/reports/funder.xlsx?{Q1}").data))
    assert [c.value for c in book["Participants"][1]][:2] == ["Teilnehmer/in", "Gruppe"]
    assert book["Qualifications"]["A2"].number_format == "DD.MM.YYYY"
    summary = {row[0].value: row[1].value for row in book["Summary"].iter_rows(min_row=2)}
    assert summary["Standort"] == "Lernwerkstatt Nord"


def test_reports_print_view_has_a_header_and_no_navigation(admin: FlaskClient, setup: Setup) -> None:
    response = admin.get(f"/reports/funder/print?{Q1}&pseudonyms=1")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'class="bar"' not in page and "<form" not in page
    assert "Lernwerkstatt Nord" in page
    assert "January 2026 \u2013 March 2026" in page
    assert "Ada Lovelace" not in page
    assert [e.detail["format"] for e in _exports()] == ["print"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("site=nord&from=2026-13&to=2026-03", "Give the first month as year and month"),
        ("site=nord&from=2026-01&to=March", "Give the last month as year and month"),
        ("site=nord&from=2026-04&to=2026-03", "The first month comes after the last month."),
        ("site=nord&from=2021-01&to=2026-01", "at most 60 months"),
        ("site=atlantis&from=2026-01&to=2026-03", "There is no site called"),
        ("site=%00&from=2026-01&to=2026-03", "There is no site called"),
        ("site=nord&from=2026-01%00&to=2026-03", "Give the first month as year and month"),
        ("site=nord&from=2026-01%0A&to=2026-03", "Give the first month as year and month"),
        ("site=nord&cohort=Cohort+Z&from=2026-01&to=2026-03", "There is no cohort called"),
        ("site=nord&programme=%00&from=2026-01&to=2026-03", "There is no programme called"),
        ("site=nord&from=2026-01&to=2026-03&pseudonyms=maybe", "Pseudonyms are either on"),
    ],
)
def test_reports_bad_filters_are_refused(admin: FlaskClient, setup: Setup, query: str, message: str) -> None:
    page = admin.get(f"/reports/funder?{query}")
    assert page.status_code == 400
    assert message in page.get_data(as_text=True)
    assert "Ada Lovelace" not in page.get_data(as_text=True)
    for export in ("funder.csv", "funder-qualifications.csv", "funder.xlsx", "funder/print"):
        response = admin.get(f"/reports/{export}?{query}")
        assert response.status_code == 400
        assert message in response.get_data(as_text=True)
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 0


def test_reports_only_for_admins(app: Flask, setup: Setup) -> None:
    trainer = _client(app, setup.world.ids["tina"])
    assert trainer.get(f"/reports/funder.csv?{Q1}").status_code == 403
    assert trainer.get(f"/reports/funder?{Q1}").status_code == 403
    assert _exports() == []


def test_reports_exports_keep_formulas_as_text(app: Flask, admin: FlaskClient, setup: Setup) -> None:
    with db.session() as s:
        ada = s.get(Person, setup.world.ids["ada"])
        assert ada is not None
        ada.name = '=HYPERLINK("http://evil.test","x")'
    rows = _csv(admin.get(f"/reports/funder.csv?{Q1}").data)
    assert '\'=HYPERLINK("http://evil.test","x")' in [row[0] for row in rows]
    book = load_workbook(io.BytesIO(admin.get(f"/reports/funder.xlsx?{Q1}").data))
    cell = next(
        row[0] for row in book["Participants"].iter_rows(min_row=2) if "HYPERLINK" in str(row[0].value)
    )
    assert cell.data_type == "s"
    assert cell.value == '=HYPERLINK("http://evil.test","x")'


def test_reports_page_shows_markup_in_names_as_text(admin: FlaskClient, setup: Setup) -> None:
    """The long tables' rows are built in Python, not by the template: names, groups, trainers
    and competencies are still escaped there."""
    from server.models import Competency

    with db.session() as s:
        ben = s.get(Person, setup.world.ids["ben"])
        tina = s.get(Person, setup.world.ids["tina"])
        assert ben is not None and tina is not None
        ben.name = '<img src=x onerror="alert(1)">'
        ben.cohort = "A & B's <group>"
        tina.name = "<b>Tina</b>"
        for competency in s.scalars(select(Competency)):
            competency.name = "Laser <safety>"
    page = admin.get(f"/reports/funder?{Q1}").get_data(as_text=True)
    assert "<img" not in page and "<b>Tina" not in page and "Laser <safety>" not in page
    participants = page[page.index('data-table="participants"') : page.index('data-table="qualifications"')]
    qualifications = page[page.index('data-table="qualifications"') : page.index('data-table="groups"')]
    for table in (participants, qualifications):
        assert ">&lt;img src=x onerror=&#34;alert(1)&#34;&gt;</td>" in table
    assert '<td data-label="Cohort">A &amp; B&#39;s &lt;group&gt;</td>' in participants
    assert ">Laser &lt;safety&gt; (Briefed)</td>" in participants  # Ben's qualifications
    assert '<td data-label="Competency">Laser &lt;safety&gt;</td>' in qualifications
    assert '<td data-label="Trainer">&lt;b&gt;Tina&lt;/b&gt;</td>' in qualifications


def _metered(setup: Setup) -> None:
    """Daily aggregates with energy: the nord printer 2.5 kWh over two days of January (one hour
    unmetered), the laser 12.25 kWh in March by Cohort B; the southern printer 9 kWh (not nord's)."""
    from datetime import date

    from server.models import Machine, UsageDaily

    with db.session() as s:
        machines = {m.slug: m for m in s.scalars(select(Machine))}

        def day(slug: str, when: date, cohort: str, wh: float, gap_s: float = 0.0) -> None:
            m = machines[slug]
            s.add(
                UsageDaily(
                    machine_id=m.id,
                    day=when,
                    cohort=cohort,
                    site_id=m.site_id,
                    machine_type_id=m.machine_type_id,
                    sessions=1,
                    unlocked_s=3600.0,
                    energy_wh=wh,
                    energy_gap_s=gap_s,
                )
            )

        day("prusa-a", date(2026, 1, 5), "Cohort A", 1000.0)
        day("prusa-a", date(2026, 1, 6), "Cohort A", 1500.0, gap_s=3600.0)
        day("laser-1", date(2026, 3, 2), "Cohort B", 12250.0)
        day("laser-1", date(2026, 4, 1), "Cohort B", 7000.0)  # after the period
        day("sued-1", date(2026, 2, 2), "Cohort A", 9000.0)


def test_reports_machines_and_energy_on_page_csv_and_xlsx(
    app: Flask, admin: FlaskClient, setup: Setup
) -> None:
    _metered(setup)
    page = admin.get(f"/reports/funder?{Q1}").get_data(as_text=True)
    assert "Machines and energy" in page and "12.2" in page  # 12.25 kWh, one decimal

    response = admin.get(f"/reports/funder-machines.csv?{Q1}")
    assert response.status_code == 200
    assert 'filename="funder-machines_nord_2026-01_2026-03.csv"' in response.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).lstrip("\ufeff")), delimiter=";"))
    assert rows[0] == ["Machine", "Machine type", "Sessions", "Machine hours", "Energy kWh", "Unmetered h"]
    by_name = {r[0]: r[1:] for r in rows[1:]}
    assert by_name["Laser-1"] == ["CO2 laser cutter", "1", "1.0", "12.2", "0.0"]
    assert by_name["Prusa-A"] == ["FDM 3D printer", "2", "2.0", "2.5", "1.0"]
    assert by_name["Total"] == [
        "",
        "3",
        "3.0",
        "14.8",
        "1.0",
    ]  # 14.75 kWh; the southern printer is not nord's
    assert "Sued-1" not in by_name

    cohort_b = admin.get(f"/reports/funder-machines.csv?{Q1}&cohort=Cohort+B").get_data(as_text=True)
    assert "Prusa-A" not in cohort_b and "Laser-1" in cohort_b

    book = load_workbook(io.BytesIO(admin.get(f"/reports/funder.xlsx?{Q1}").data))
    sheet = [[c.value for c in row] for row in book["Machines"].iter_rows(min_row=2)]
    assert sheet[-1] == ["Total", None, 3, 3.0, 14.8, 1.0]
    summary = {row[0].value: row[1].value for row in book["Summary"].iter_rows(min_row=2)}
    assert summary["Energy kWh"] == 14.8

    german = _client(app, setup.admin_id, language="de")
    text = german.get(f"/reports/funder-machines.csv?{Q1}").get_data(as_text=True)
    assert "Energie kWh" in text and "12,2" in text
    assert "Maschinen und Energie" in german.get(f"/reports/funder?{Q1}").get_data(as_text=True)
