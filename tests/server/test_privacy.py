"""Personal data: export all of it, erase it (hours kept under a pseudonym), purge by retention."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from server.db import Database
from server.models import (
    AccessDecision,
    ApiToken,
    AuditLog,
    Base,
    Competency,
    Device,
    MachineSession,
    Notification,
    Person,
    StepRecord,
)
from server.services import lab_keys, privacy, training
from server.services.ingest import ingest_event
from tests.hours_support import assert_totals_match
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionEnded, SessionStarted

QUINN_BADGE = "04A224B2C35E80"
NOW = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


def _person(s: Session, name: str) -> Person:
    found = s.scalar(select(Person).where(Person.name == name))
    assert found is not None
    return found


def _traces(s: Session, quinn: Person, tina: Person) -> str:
    """Give Quinn a session (events, tap decision), a note, a notification, a token, audit entries."""
    device = s.get(Device, "pi-printer-1")
    assert device is not None
    session_id = str(uuid.uuid4())
    start = SessionStarted(
        v=1, id=str(uuid.uuid4()), ts=format_ts(NOW), session=session_id, badge=QUINN_BADGE
    )
    end = SessionEnded(
        v=1,
        id=str(uuid.uuid4()),
        ts=format_ts(NOW + timedelta(hours=2)),
        session=session_id,
        reason="tap_out",
        unlocked_s=7200.0,
        run_s=6000.0,
    )
    ingest_event(s, device, start)
    ingest_event(s, device, end)
    s.add(
        AccessDecision(
            id=str(uuid.uuid4()),
            device_id=device.id,
            machine_id=device.machine_id,
            badge_uid=QUINN_BADGE,
            person_id=quinn.id,
            decision="allow",
            reason="ok",
            response={"person": "Quinn", "message": {"en": "Hello Quinn!"}},
        )
    )
    safety = s.scalar(select(Competency).where(Competency.slug == "laser-safety"))
    assert safety is not None
    training.revoke(s, quinn, safety, tina, "Quinn Qualified left the laser alone", NOW, date(2026, 11, 18))
    s.add(Notification(person_id=quinn.id, kind="expiring", key="k1", params={"competency": "x"}))
    s.add(
        Notification(
            person_id=tina.id, kind="expiring_trainer", key="k2", params={"person": "Quinn Qualified"}
        )
    )
    s.add(ApiToken(person_id=quinn.id, name="mine", token_hash="a" * 64, prefix="wb_aaaaaaaaa"))
    s.flush()
    return session_id


def test_privacy_export_holds_everything_and_is_audited(lab: Database) -> None:
    with lab.session() as s:
        quinn, tina = _person(s, "Quinn Qualified"), _person(s, "Tina Trainer")
        session_id = _traces(s, quinn, tina)
        data = privacy.export(s, quinn, tina, NOW)
        s.commit()
        dumped = json.dumps(data)  # JSON-ready: nothing that json cannot write
    assert data["person"]["email"] == "quinn@test.local"
    assert [b["uid"] for b in data["badges"]] == [QUINN_BADGE]
    assert [x["id"] for x in data["sessions"]] == [session_id] and data["sessions"][0]["unlocked_s"] == 7200.0
    assert {q["action"] for q in data["qualifications"]} >= {"granted", "revoked"}
    assert data["tap_decisions"] and data["api_tokens"][0]["prefix"] == "wb_aaaaaaaaa"
    assert "token_hash" not in dumped and "password" not in dumped
    with lab.session() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "person.export")).one()
        assert entry.subject == f"person:{quinn.id}" and entry.actor_id == tina.id


def test_privacy_export_names_steps_and_competencies_in_the_persons_language(lab: Database) -> None:
    """A German reader's export says "Sicherheits- und Slicer-Einweisung", an English one's
    "Safety and slicer briefing"; the slugs stay the same for both."""
    with lab.session() as s:
        quinn, tina = _person(s, "Quinn Qualified"), _person(s, "Tina Trainer")
        printing = s.scalar(select(Competency).where(Competency.slug == "fdm-printing"))
        assert printing is not None
        briefing = printing.steps[0]
        briefing.name_de = "Sicherheits- und Slicer-Einweisung"
        quinn.site.name_de = "Testwerkstatt"
        s.add(
            StepRecord(
                person_id=quinn.id,
                competency_id=printing.id,
                step_id=briefing.id,
                recorded_by_id=tina.id,
                source="web",
                recorded_at=NOW,
            )
        )
        s.flush()
        exported = {}
        for language in ("de", "en"):
            quinn.language = language
            exported[language] = privacy.export(s, quinn, tina, NOW)
    for language, step, competency, site in (
        ("de", "Sicherheits- und Slicer-Einweisung", "FDM-3D-Druck", "Testwerkstatt"),
        ("en", "Safety and slicer briefing", "FDM 3D printing", "Test Lab"),
    ):
        data = exported[language]
        [record] = data["training_steps"]
        assert (record["step"], record["competency"], record["competency_name"]) == (
            step,
            "fdm-printing",
            competency,
        ), language
        names = {q["competency"]: q["competency_name"] for q in data["qualifications"]}
        assert names["fdm-printing"] == competency, language
        assert data["person"]["site_name"] == site
    german = json.dumps(exported["de"], ensure_ascii=False)
    assert "Safety and slicer briefing" not in german and "FDM 3D printing" not in german


def test_privacy_erase_leaves_no_trace_but_keeps_the_hours(lab: Database) -> None:
    with lab.session() as s:
        quinn, tina = _person(s, "Quinn Qualified"), _person(s, "Tina Trainer")
        _traces(s, quinn, tina)
        s.commit()
        quinn_id = quinn.id
        label = privacy.erase(s, quinn, tina, NOW)
        s.commit()
    with lab.session() as s:
        key = lab_keys.pseudonym_key(s)
    assert label == privacy.pseudonym(quinn_id, key) and label.startswith("Person ")
    with lab.session() as s:
        # Nothing in any table still names Quinn, her email or her badge.
        everything = []
        for table in Base.metadata.sorted_tables:
            everything += [str(tuple(row)) for row in s.execute(text(f'SELECT * FROM "{table.name}"'))]
        blob = "\n".join(everything)
        for trace in ("Quinn Qualified", "quinn@test.local", QUINN_BADGE):
            assert trace not in blob, trace
        person = s.get(Person, quinn_id)
        assert person is not None and person.name == label and not person.active and person.erased_at
        hours = s.scalar(
            select(func.sum(MachineSession.unlocked_s)).where(MachineSession.person_id == quinn_id)
        )
        assert hours == 7200.0, "machine hours stay, under the pseudonym"
        assert assert_totals_match(s)["printer-1"] == 7200.0
        assert s.scalar(select(func.count()).select_from(ApiToken)) == 0
        tina_note = s.scalars(select(Notification).where(Notification.kind == "expiring_trainer")).one()
        assert tina_note.params == {"person": label}
        erased = s.scalars(select(AuditLog).where(AuditLog.action == "person.erase")).one()
        assert erased.detail == {"pseudonym": label} and erased.actor_id == tina.id


def test_privacy_erasing_again_keeps_the_label_given_first(lab: Database) -> None:
    """Someone erased before pseudonyms were keyed keeps their label (it is their name since, and
    reports call them by it); erasing them again changes nothing."""
    with lab.session() as s:
        quinn, tina = _person(s, "Quinn Qualified"), _person(s, "Tina Trainer")
        first = privacy.erase(s, quinn, tina, NOW)
        assert privacy.erase(s, quinn, tina, NOW) == first == quinn.name
        quinn.name = "Person 0a1b2c3d"  # as an erasure before the key named her
        assert privacy.erase(s, quinn, tina, NOW) == "Person 0a1b2c3d" == quinn.name


def test_privacy_nobody_erases_themselves(lab: Database) -> None:
    with lab.session() as s:
        tina = _person(s, "Tina Trainer")
        with pytest.raises(privacy.PrivacyError):
            privacy.erase(s, tina, tina, NOW)


def test_privacy_retention_purges_ended_participants_only(lab: Database) -> None:
    later = datetime.now(UTC) + timedelta(days=220)  # about 7 months after the lab was loaded
    with lab.session() as s:
        assert privacy.purge_ended(s, later, 0) == [], "0 months: retention off"
        ivy = _person(s, "Ivy Inactive")
        ivy_id = ivy.id
        assert privacy.purge_ended(s, later, 12) == [], "not long enough ago"
        erased = privacy.purge_ended(s, later, 6)
        s.commit()
    with lab.session() as s:
        assert erased == [privacy.pseudonym(ivy_id, lab_keys.pseudonym_key(s))]
    with lab.session() as s:
        assert s.get(Person, ivy_id).erased_at is not None  # type: ignore[union-attr]
        assert _person(s, "Quinn Qualified").erased_at is None, "active participants stay"
        assert _person(s, "Tina Trainer").erased_at is None
        assert privacy.purge_ended(s, later, 6) == [], "an erased person is not erased again"


def test_privacy_retention_job_runs_only_when_configured(lab: Database) -> None:
    from server.adapters.scheduler import build_scheduler, purge_personal_data

    assert "purge_personal_data" not in {j.id for j in build_scheduler(lab, {}).get_jobs()}
    [job] = [
        j for j in build_scheduler(lab, {"RETENTION_MONTHS": 6}).get_jobs() if j.id == "purge_personal_data"
    ]
    assert job.args[1] == 6
    assert purge_personal_data(lab, 6, datetime.now(UTC) + timedelta(days=220)) == 1  # Ivy Inactive
    with lab.session() as s:
        assert s.scalar(select(func.count()).select_from(Person).where(Person.erased_at.is_not(None))) == 1
