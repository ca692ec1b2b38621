"""Programme data (server.services.programme_data): fields set up per programme, values checked
by kind, consent in versions and its withdrawal, special categories for admins only, and the
person's data in their GDPR export and gone after erasure."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from server.db import Database
from server.models import (
    AuditLog,
    Base,
    Consent,
    FieldKind,
    ParticipantValue,
    Person,
    ProgrammeField,
    Site,
    SpecialValue,
)
from server.services import lab_keys, privacy, programme_data
from server.services.programme_data import FieldSpec, ProgrammeDataError
from server.services.training import TrainingError

NOW = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)
ESF = "ESF Plus"
SECRET = "Diabetes, insulin twice a day"


def spec(label: str, kind: FieldKind = FieldKind.TEXT, **kw: object) -> FieldSpec:
    values: dict[str, object] = {
        "label": label,
        "label_de": None,
        "kind": kind,
        "options": "",
        "required": False,
        "special": False,
        "needs_consent": True,
    }
    values.update(kw)
    return FieldSpec(**values)  # type: ignore[arg-type]


@pytest.fixture
def people(database: Database) -> dict[str, int]:
    """Site nord: admin Alex, trainer Tina, participant Ada (programme ESF Plus); site sued:
    trainer Sven."""
    with database.session() as s:
        nord = Site(slug="nord", name="Nord", timezone="Europe/Berlin")
        sued = Site(slug="sued", name="Süd", timezone="Europe/Berlin")
        s.add_all([nord, sued])
        s.flush()
        made = {
            "alex": Person(site_id=nord.id, name="Alex Admin", is_admin=True, is_participant=False),
            "tina": Person(site_id=nord.id, name="Tina Trainer", is_trainer=True, is_participant=False),
            "ada": Person(
                site_id=nord.id, name="Ada Lovelace", programme=ESF, cohort="A", email="ada@x.test"
            ),
            "sven": Person(site_id=sued.id, name="Sven Süd", is_trainer=True, is_participant=False),
        }
        s.add_all(made.values())
        s.commit()
        return {k: p.id for k, p in made.items()}


def _get(s: Session, ids: dict[str, int], name: str) -> Person:
    found = s.get(Person, ids[name])
    assert found is not None
    return found


@pytest.fixture
def setup(database: Database, people: dict[str, int]) -> dict[str, int]:
    """ESF Plus asks: a customer number (text, required, no consent needed), a school
    qualification (choice, consent), the day out of work since (date, consent), and a health
    note (text, special); consent text version 1."""
    with database.session() as s:
        alex = _get(s, people, "alex")
        number = programme_data.save_field(
            s, alex, ESF, spec("Customer number", required=True, needs_consent=False), NOW
        )
        school = programme_data.save_field(
            s,
            alex,
            ESF,
            spec("School", FieldKind.CHOICE, options="None | Keiner\nAbitur", label_de="Schule"),
            NOW,
        )
        since = programme_data.save_field(s, alex, ESF, spec("Out of work since", FieldKind.DATE), NOW)
        health = programme_data.save_field(s, alex, ESF, spec("Health", special=True), NOW)
        programme_data.add_consent_text(s, alex, ESF, "I agree.", "Ich willige ein.", NOW)
        s.commit()
        return {"number": number.id, "school": school.id, "since": since.id, "health": health.id}


def _consent(s: Session, ids: dict[str, int], actor: str = "tina") -> Consent:
    text_ = programme_data.current_text(s, ESF)
    assert text_ is not None
    return programme_data.record_consent(
        s, _get(s, ids, actor), _get(s, ids, "ada"), text_.id, "de", NOW.date(), NOW
    )


def test_programme_data_nothing_is_asked_by_default(database: Database, people: dict[str, int]) -> None:
    with database.session() as s:
        tina, ada = _get(s, people, "tina"), _get(s, people, "ada")
        assert programme_data.fields_of(s, ESF) == [] and programme_data.current_text(s, ESF) is None
        assert programme_data.save_values(s, tina, ada, {}, NOW, special=False) == []
        assert s.scalar(select(func.count()).select_from(AuditLog)) == 0


def test_programme_data_fields_keys_options_and_audit(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        school = s.get(ProgrammeField, setup["school"])
        assert school is not None and school.key == "school" and school.kind == FieldKind.CHOICE
        assert school.options == [
            {"key": "none", "en": "None", "de": "Keiner"},
            {"key": "abitur", "en": "Abitur", "de": "Abitur"},
        ]
        health = s.get(ProgrammeField, setup["health"])
        assert health is not None and health.special and health.needs_consent
        # A second "School" gets a key of its own.
        alex = _get(s, people, "alex")
        again = programme_data.save_field(s, alex, ESF, spec("School"), NOW)
        assert again.key == "school_2" and again.position == 4
        created = s.scalars(select(AuditLog).where(AuditLog.action == "programme.field_created")).all()
        assert len(created) == 5 and created[1].detail["key"] == "school"
        version = s.scalars(select(AuditLog).where(AuditLog.action == "programme.consent_text_added")).one()
        assert version.detail == {"programme": ESF, "version": 1}


@pytest.mark.parametrize(
    ("field_spec", "where", "says"),
    [
        (spec(""), "label", "label"),
        (spec("Health", special=True, needs_consent=False), "needs_consent", "explicit consent"),
        (spec("School", FieldKind.CHOICE, options="Only one"), "options", "between 2"),
        (spec("School", FieldKind.CHOICE, options="A\nB\na"), "options", "twice"),
        (spec("X" * 201), "label", "at most 200"),
    ],
)
def test_programme_data_bad_field_forms_change_nothing(
    database: Database, people: dict[str, int], field_spec: FieldSpec, where: str, says: str
) -> None:
    before = programme_data.REJECTED["field_form"]
    with database.session() as s:
        with pytest.raises(ProgrammeDataError) as refused:
            programme_data.save_field(s, _get(s, people, "alex"), ESF, field_spec, NOW)
        s.rollback()
        assert refused.value.problems[0].field == where and says in str(refused.value)
        assert s.scalar(select(func.count()).select_from(ProgrammeField)) == 0
    assert programme_data.REJECTED["field_form"] == before + 1


def test_programme_data_answered_fields_keep_kind_basis_and_used_options(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people)
        tina, ada, alex = _get(s, people, "tina"), _get(s, people, "ada"), _get(s, people, "alex")
        programme_data.save_values(
            s,
            tina,
            ada,
            {f"field-{setup['number']}": "123", f"field-{setup['school']}": "abitur"},
            NOW,
            special=False,
        )
        school = s.get(ProgrammeField, setup["school"])
        assert school is not None
        with pytest.raises(ProgrammeDataError, match="can no longer change"):
            programme_data.save_field(s, alex, ESF, spec("School", FieldKind.TEXT), NOW, school)
        with pytest.raises(ProgrammeDataError, match="keep that option"):
            programme_data.save_field(
                s, alex, ESF, spec("School", FieldKind.CHOICE, options="None\nOther"), NOW, school
            )
        # Relabelling and adding options is fine; the answer keeps its option.
        programme_data.save_field(
            s,
            alex,
            ESF,
            spec("School leaving", FieldKind.CHOICE, options="None\nAbitur | Abi\nOther", required=True),
            NOW,
            school,
        )
        assert [o["key"] for o in school.options or []] == ["none", "abitur", "other"]
        # Deleting needs the admin to confirm that the answers go too.
        with pytest.raises(ProgrammeDataError, match="Tick the box"):
            programme_data.delete_field(s, alex, school, False, NOW)
        assert programme_data.delete_field(s, alex, school, True, NOW) == 1
        assert s.get(ParticipantValue, (ada.id, setup["school"])) is None


def test_programme_data_values_are_checked_and_a_bad_form_changes_nothing(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people)
        tina, ada = _get(s, people, "tina"), _get(s, people, "ada")
        programme_data.save_values(s, tina, ada, {f"field-{setup['number']}": "123"}, NOW, special=False)
        s.commit()
    before = programme_data.REJECTED["values_form"]
    bad = [
        ({f"field-{setup['number']}": ""}, "Customer number is required."),
        ({f"field-{setup['number']}": "1", f"field-{setup['since']}": "31.02.2026"}, "give a date"),
        ({f"field-{setup['number']}": "1", f"field-{setup['since']}": "1850-01-01"}, "give a date"),
        ({f"field-{setup['number']}": "1", f"field-{setup['school']}": "phd"}, "pick one of the options"),
        ({f"field-{setup['number']}": "x" * 501}, "at most 500 characters"),
        ({f"field-{setup['number']}": "12\x003"}, "control characters"),
    ]
    for form, says in bad:
        with database.session() as s:
            with pytest.raises(ProgrammeDataError) as refused:
                programme_data.save_values(
                    s,
                    _get(s, people, "tina"),
                    _get(s, people, "ada"),
                    form,
                    NOW + timedelta(hours=1),
                    special=False,
                )
            s.rollback()
            assert says in str(refused.value), (form, str(refused.value))
    with database.session() as s:
        stored = s.get(ParticipantValue, (people["ada"], setup["number"]))
        assert stored is not None and stored.value == "123" and stored.recorded_at == NOW
        assert s.scalar(select(func.count()).select_from(ParticipantValue)) == 1
    assert programme_data.REJECTED["values_form"] == before + len(bad)
    # A German date as typed is read too.
    with database.session() as s:
        programme_data.save_values(
            s,
            _get(s, people, "tina"),
            _get(s, people, "ada"),
            {f"field-{setup['number']}": "123", f"field-{setup['since']}": "01.03.2025"},
            NOW,
            special=False,
        )
        stored = s.get(ParticipantValue, (people["ada"], setup["since"]))
        assert stored is not None and stored.value == "2025-03-01"


def test_programme_data_needs_consent_and_the_audit_log_holds_no_values(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        tina, ada = _get(s, people, "tina"), _get(s, people, "ada")
        form = {f"field-{setup['number']}": "123D45", f"field-{setup['school']}": "abitur"}
        with pytest.raises(ProgrammeDataError, match="School needs the participant's consent"):
            programme_data.save_values(s, tina, ada, form, NOW, special=False)
        # Without consent the required field that needs none is still taken alone.
        assert programme_data.save_values(
            s, tina, ada, {f"field-{setup['number']}": "123D45"}, NOW, special=False
        ) == ["customer_number"]
        consent = _consent(s, people)
        assert (
            consent.version == 1 and consent.text == "Ich willige ein." and consent.recorded_by_id == tina.id
        )
        assert programme_data.save_values(s, tina, ada, form, NOW, special=False) == ["school"]
        s.commit()
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "programme.values_changed")).all()
        assert [e.detail["fields"] for e in logged] == [["customer_number"], ["school"]]
        everything = " ".join(str(e.detail) for e in s.scalars(select(AuditLog)))
        assert "123D45" not in everything
        assert "abitur" not in " ".join(str(e.detail) for e in logged)  # (the field's options name it)


def test_programme_data_consent_versions_language_and_day(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        tina, ada, alex = _get(s, people, "tina"), _get(s, people, "ada"), _get(s, people, "alex")
        first = programme_data.current_text(s, ESF)
        assert first is not None
        with pytest.raises(ProgrammeDataError, match="today or earlier"):
            programme_data.record_consent(s, tina, ada, first.id, "en", NOW.date() + timedelta(days=1), NOW)
        with pytest.raises(ProgrammeDataError, match="does not exist in that language"):
            programme_data.record_consent(s, tina, ada, first.id, "fr", NOW.date(), NOW)
        earlier = programme_data.record_consent(s, tina, ada, first.id, "en", date(2026, 11, 2), NOW)
        assert earlier.agreed_at.date() == date(2026, 11, 2) and earlier.text == "I agree."
        with pytest.raises(ProgrammeDataError, match="recorded already"):
            programme_data.record_consent(s, tina, ada, first.id, "en", NOW.date(), NOW)
        second = programme_data.add_consent_text(s, alex, ESF, "I agree, v2.", None, NOW)
        # Version 1 still counts until the person agrees to version 2; version 1 is no longer offered.
        standing = programme_data.active_consent(s, ada.id, ESF)
        assert standing is not None and standing.version == 1
        with pytest.raises(ProgrammeDataError, match="not the current consent text"):
            programme_data.record_consent(s, tina, ada, first.id, "en", NOW.date(), NOW)
        programme_data.record_consent(s, tina, ada, second.id, "en", NOW.date(), NOW)
        standing = programme_data.active_consent(s, ada.id, ESF)
        assert standing is not None and standing.version == 2


def test_programme_data_withdrawal_erases_what_depended_on_it(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people)
        tina, ada, alex = _get(s, people, "tina"), _get(s, people, "ada"), _get(s, people, "alex")
        programme_data.save_values(
            s,
            tina,
            ada,
            {
                f"field-{setup['number']}": "123",
                f"field-{setup['school']}": "none",
                f"field-{setup['since']}": "2025-01-01",
            },
            NOW,
            special=False,
        )
        programme_data.save_values(s, alex, ada, {f"field-{setup['health']}": SECRET}, NOW, special=True)
        s.commit()
        done = programme_data.withdraw_consent(s, tina, ada, ESF, NOW + timedelta(days=1))
        s.commit()
        assert (done.version, done.erased, done.erased_special) == (1, 2, 1)
        kept = s.scalars(select(ParticipantValue)).all()
        assert [(v.field_id, v.value) for v in kept] == [(setup["number"], "123")]
        assert s.scalars(select(SpecialValue)).all() == []
        consent = s.scalars(select(Consent)).one()
        assert consent.withdrawn_at == NOW + timedelta(days=1) and consent.withdrawn_by_id == tina.id
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "programme.consent_withdrawn")).one()
        assert entry.detail["erased"] == 2 and entry.detail["erased_special"] == 1
        with pytest.raises(ProgrammeDataError, match="no consent to withdraw"):
            programme_data.withdraw_consent(s, tina, ada, ESF, NOW)


@pytest.mark.parametrize(
    ("actor", "special", "code"),
    [
        ("tina", True, "admin_only"),
        ("sven", False, "other_site"),
        ("sven", True, "other_site"),
        ("ada", False, "not_a_trainer"),
    ],
)
def test_programme_data_staff_rule_and_special_categories_for_admins_only(
    database: Database, people: dict[str, int], setup: dict[str, int], actor: str, special: bool, code: str
) -> None:
    with database.session() as s:
        _consent(s, people, "alex")
        who, ada = _get(s, people, actor), _get(s, people, "ada")
        form = {f"field-{setup['health']}": SECRET} if special else {f"field-{setup['number']}": "1"}
        with pytest.raises(TrainingError) as refused:
            programme_data.save_values(s, who, ada, form, NOW, special=special)
        assert refused.value.code == code and refused.value.forbidden
        if special:
            with pytest.raises(TrainingError):
                programme_data.view_special(s, who, ada, NOW)


def test_programme_data_nobody_enters_their_own(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        alex = _get(s, people, "alex")
        alex.programme = ESF
        with pytest.raises(TrainingError) as refused:
            programme_data.save_values(s, alex, alex, {f"field-{setup['number']}": "1"}, NOW, special=False)
        assert refused.value.code == "own_records"
        text_ = programme_data.current_text(s, ESF)
        assert text_ is not None
        with pytest.raises(TrainingError):
            programme_data.record_consent(s, alex, alex, text_.id, "en", NOW.date(), NOW)


def test_programme_data_admin_views_special_categories_audited(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people)
        alex, ada = _get(s, people, "alex"), _get(s, people, "ada")
        assert programme_data.save_values(
            s, alex, ada, {f"field-{setup['health']}": SECRET}, NOW, special=True
        ) == ["health"]
        seen = programme_data.view_special(s, alex, ada, NOW)
        assert seen[setup["health"]].value == SECRET
        # Kept apart: never in the ordinary table.
        assert s.scalar(select(func.count()).select_from(ParticipantValue)) == 0
        actions = [e.action for e in s.scalars(select(AuditLog).order_by(AuditLog.id))]
        assert actions[-2:] == ["programme.special_changed", "programme.special_viewed"]


def test_programme_data_in_the_gdpr_export_and_gone_after_erasure(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people)
        tina, alex, ada = _get(s, people, "tina"), _get(s, people, "alex"), _get(s, people, "ada")
        programme_data.save_values(
            s,
            tina,
            ada,
            {f"field-{setup['number']}": "123D45", f"field-{setup['school']}": "none"},
            NOW,
            special=False,
        )
        programme_data.save_values(s, alex, ada, {f"field-{setup['health']}": SECRET}, NOW, special=True)
        s.commit()
        data = privacy.export(s, ada, alex, NOW)
        s.commit()
    by_field = {row["field"]: row for row in data["programme_data"]}
    assert by_field["customer_number"]["value"] == "123D45"
    assert by_field["school"]["shown_as"] == "None" and by_field["school"]["label_de"] == "Schule"
    assert data["special_categories"][0]["value"] == SECRET
    assert data["consents"][0]["version"] == 1 and data["consents"][0]["text"] == "Ich willige ein."
    with database.session() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "person.export")).one()
        assert entry.detail["special_categories"] == 1
        privacy.erase(s, _get(s, people, "ada"), _get(s, people, "alex"), NOW)
        s.commit()
        blob = "\n".join(
            str(tuple(row))
            for table in Base.metadata.sorted_tables
            for row in s.execute(text(f'SELECT * FROM "{table.name}"'))
        )
        for trace in (SECRET, "123D45"):  # (the consent text itself is the programme's, not hers)
            assert trace not in blob, trace
        for table in (ParticipantValue, SpecialValue, Consent):
            assert s.scalar(select(func.count()).select_from(table)) == 0


def test_programme_data_erased_by_the_retention_rule(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people, "alex")
        alex, ada = _get(s, people, "alex"), _get(s, people, "ada")
        programme_data.save_values(s, alex, ada, {f"field-{setup['health']}": SECRET}, NOW, special=True)
        ada.active = False
        ada.created_at = NOW - timedelta(days=800)
        s.commit()
        erased = privacy.purge_ended(s, NOW + timedelta(days=1), 12)
        assert erased == [privacy.pseudonym(people["ada"], lab_keys.pseudonym_key(s))]
        s.commit()
        assert s.scalar(select(func.count()).select_from(SpecialValue)) == 0
        assert s.scalar(select(func.count()).select_from(Consent)) == 0


def test_programme_data_export_table_of_a_report(
    database: Database, people: dict[str, int], setup: dict[str, int]
) -> None:
    with database.session() as s:
        _consent(s, people)
        alex, ada = _get(s, people, "alex"), _get(s, people, "ada")
        programme_data.save_values(s, alex, ada, {f"field-{setup['health']}": SECRET}, NOW, special=True)
        table = programme_data.export_table(s, [ada.id, people["tina"]], [ESF, ""], special=True)
        assert [f.key for f in table.fields] == ["health"]
        assert table.values == {(ada.id, setup["health"]): SECRET}
        ordinary = programme_data.export_table(s, [ada.id], [ESF], special=False)
        assert [f.key for f in ordinary.fields] == ["customer_number", "school", "out_of_work_since"]
