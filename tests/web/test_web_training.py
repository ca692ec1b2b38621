"""Trainer pages and the participant's page: find, record, grant, renew, revoke, see progress."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from server.extensions import db
from server.models import (
    AuditLog,
    Badge,
    Competency,
    Level,
    Machine,
    MachineSession,
    MachineType,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    StepKind,
    TrainingStep,
)
from tests.web.conftest import AuthActions, Lab


@pytest.fixture
def trained_lab(lab: Lab) -> Lab:
    return add_training(lab)


def add_training(lab: Lab) -> Lab:
    """The seeded lab plus laser and printing competencies with steps; Tina trains lasers only."""
    with db.session() as s:
        laser = Competency(slug="laser", name="Laser cutting", name_de="Laserschneiden", validity_months=12)
        laser.steps = [
            TrainingStep(
                position=0, kind=StepKind.BRIEFING, name="Laser safety briefing", leads_to=Level.BRIEFED
            ),
            TrainingStep(
                position=1,
                kind=StepKind.SUPERVISED_HOURS,
                name="Supervised cutting",
                leads_to=Level.SUPERVISED,
                hours=1.0,
            ),
            TrainingStep(
                position=2, kind=StepKind.SIGNOFF, name="Laser sign-off", leads_to=Level.INDEPENDENT
            ),
        ]
        printing = Competency(slug="printing", name="3D printing", name_de="3D-Druck")
        printing.steps = [
            TrainingStep(
                position=0, kind=StepKind.BRIEFING, name="Printer briefing", leads_to=Level.INDEPENDENT
            )
        ]
        s.add_all([laser, printing])
        s.flush()
        for slug, competency in (("laser", laser), ("fdm", printing)):
            machine_type = s.scalar(select(MachineType).where(MachineType.slug == slug))
            assert machine_type is not None
            s.add(Requirement(machine_type_id=machine_type.id, competency_id=competency.id))
        tina = _person_by_email(s, lab.trainer)
        s.add(
            Qualification(
                person_id=tina.id,
                competency_id=laser.id,
                action=QualificationAction.GRANTED,
                level=Level.TRAINER,
                valid_until=date(2099, 1, 1),
            )
        )
        ada = _person_by_email(s, lab.participant)
        s.add(Badge(uid="04A1B2C3D4E5F6", person_id=ada.id))
        s.commit()
    return lab


def _person_by_email(s, email: str) -> Person:  # type: ignore[no-untyped-def]
    found = s.scalar(select(Person).where(Person.email == email))
    assert found is not None
    return found


def _ids(lab: Lab) -> tuple[int, int, dict[str, int]]:
    with db.session() as s:
        ada = _person_by_email(s, lab.participant)
        tina = _person_by_email(s, lab.trainer)
        steps = {step.name: step.id for step in s.scalars(select(TrainingStep))}
        return ada.id, tina.id, steps


def _competency_id(slug: str) -> int:
    with db.session() as s:
        found = s.scalar(select(Competency.id).where(Competency.slug == slug))
        assert found is not None
        return found


def _history(person_id: int) -> list[tuple[str, str, str]]:
    with db.session() as s:
        rows = s.execute(
            select(Competency.slug, Qualification.action, Qualification.level)
            .join(Competency)
            .where(Qualification.person_id == person_id)
            .order_by(Qualification.id)
        )
        return [(slug, action.value, level.value) for slug, action, level in rows]


def _supervised_hours(person_id: int, trainer_id: int, hours: float) -> None:
    with db.session() as s:
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert laser is not None
        start = datetime.now(UTC) - timedelta(hours=hours + 1)
        s.add(
            MachineSession(
                id=str(uuid.uuid4()),
                machine_id=laser.id,
                device_id="pi-laser-1",
                person_id=person_id,
                trainer_id=trainer_id,
                mode="supervise",
                started_at=start,
                ended_at=start + timedelta(hours=hours),
                unlocked_s=hours * 3600,
                end_reason="tap_out",
            )
        )
        s.commit()


def test_training_trainer_finds_a_participant_by_name_and_badge(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    auth.login(trained_lab.trainer)
    by_name = client.get("/training/people?q=lovel").get_data(as_text=True)
    assert "Ada Lovelace" in by_name and "Bob Builder" not in by_name
    by_badge = client.get("/training/people?q=04a1b2c3d4e5f6").get_data(as_text=True)
    assert "Ada Lovelace" in by_badge
    nobody = client.get("/training/people?q=zzz").get_data(as_text=True)
    assert "Nobody found" in nobody


def test_training_trainer_takes_a_participant_from_briefing_to_independent(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, tina_id, steps = _ids(trained_lab)
    auth.login(trained_lab.trainer)
    page = client.get(f"/training/people/{ada_id}").get_data(as_text=True)
    assert "Record: Laser safety briefing" in page
    # Tina trains lasers only: no record button for the printer briefing.
    assert "Record: Printer briefing" not in page

    done = client.post(f"/training/people/{ada_id}/steps", data={"step_id": steps["Laser safety briefing"]})
    assert done.status_code == 302
    page = client.get(f"/training/people/{ada_id}").get_data(as_text=True)
    assert "Ada Lovelace now holds Laser cutting at level Briefed" in page
    assert _history(ada_id) == [("laser", "granted", "briefed")]

    # The sign-off is refused while supervised hours are missing; nothing changes.
    early = client.post(f"/training/people/{ada_id}/steps", data={"step_id": steps["Laser sign-off"]})
    assert early.status_code == 400
    assert "Finish the steps for the level" in early.get_data(as_text=True)
    assert _history(ada_id) == [("laser", "granted", "briefed")]

    _supervised_hours(ada_id, tina_id, 1.0)
    # The hours were counted at the machine; the next level came with the session's end
    # (in the bridge). Here the page computes progress from the session: 100 % of hours.
    page = client.get(f"/training/people/{ada_id}").get_data(as_text=True)
    assert "1 of 1 h done" in page

    with db.session() as s:
        from server.services import training

        person = s.get(Person, ada_id)
        session = s.scalars(select(MachineSession).where(MachineSession.mode == "supervise")).one()
        assert person is not None
        training.advance_after_session(s, session, datetime.now(UTC), date.today())
        s.commit()
    signed = client.post(f"/training/people/{ada_id}/steps", data={"step_id": steps["Laser sign-off"]})
    assert signed.status_code == 302
    assert _history(ada_id)[-1] == ("laser", "granted", "independent")

    # The participant sees it on her own page.
    auth.logout()
    auth.login(trained_lab.participant)
    me = client.get("/me").get_data(as_text=True)
    assert "Laser cutting" in me and "Independent" in me
    assert "Valid until" in me


def test_training_laser_trainer_cannot_grant_printing(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, _tina, steps = _ids(trained_lab)
    auth.login(trained_lab.trainer)
    refused = client.post(f"/training/people/{ada_id}/steps", data={"step_id": steps["Printer briefing"]})
    # 403: the staff rule refuses who asks (a missing reason would be a 400).
    assert refused.status_code == 403
    assert "You are not a trainer for 3D printing" in refused.get_data(as_text=True)
    grant = client.post(
        f"/training/people/{ada_id}/grant",
        data={"competency_id": _competency_id("printing"), "level": "independent", "reason": "Knows it"},
    )
    assert grant.status_code == 403
    assert _history(ada_id) == []


def test_training_revoke_needs_a_reason_and_is_audited(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, _tina, steps = _ids(trained_lab)
    auth.login(trained_lab.trainer)
    client.post(f"/training/people/{ada_id}/steps", data={"step_id": steps["Laser safety briefing"]})
    laser = _competency_id("laser")
    no_reason = client.post(f"/training/people/{ada_id}/revoke", data={"competency_id": laser, "reason": ""})
    assert no_reason.status_code == 400
    assert "Please give a reason." in no_reason.get_data(as_text=True)
    revoked = client.post(
        f"/training/people/{ada_id}/revoke",
        data={"competency_id": laser, "reason": "Left the laser unattended"},
    )
    assert revoked.status_code == 302
    assert _history(ada_id)[-1] == ("laser", "revoked", "briefed")
    with db.session() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "qualification.revoked")).one()
        assert entry.detail["reason"] == "Left the laser unattended"
        assert entry.actor_label.startswith("Tina Trainer")


def test_training_renew_extends_a_year(client: FlaskClient, auth: AuthActions, trained_lab: Lab) -> None:
    ada_id, _tina, steps = _ids(trained_lab)
    auth.login(trained_lab.trainer)
    client.post(f"/training/people/{ada_id}/steps", data={"step_id": steps["Laser safety briefing"]})
    renewed = client.post(
        f"/training/people/{ada_id}/renew", data={"competency_id": _competency_id("laser"), "reason": ""}
    )
    assert renewed.status_code == 302
    assert _history(ada_id)[-1] == ("laser", "renewed", "briefed")


def test_training_admin_grants_trainer_level(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    _ada, tina_id, _steps = _ids(trained_lab)
    auth.login(trained_lab.admin)
    granted = client.post(
        f"/training/people/{tina_id}/grant",
        data={
            "competency_id": _competency_id("printing"),
            "level": "trainer",
            "reason": "Trainer course 2026",
        },
    )
    assert granted.status_code == 302
    assert ("printing", "granted", "trainer") in _history(tina_id)


def test_training_people_of_another_site_are_not_found(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    with db.session() as s:
        other_site = s.scalar(select(func.max(Person.site_id)))
        stranger = Person(site_id=(other_site or 0) + 1, name="Far Away")
        from server.models import Site

        site = Site(slug="west", name="West", timezone="Europe/Berlin")
        s.add(site)
        s.flush()
        stranger.site_id = site.id
        s.add(stranger)
        s.commit()
        stranger_id = stranger.id
    auth.login(trained_lab.trainer)
    assert client.get(f"/training/people/{stranger_id}").status_code == 404
    assert "Far Away" not in client.get("/training/people?q=far").get_data(as_text=True)


def test_training_participant_page_shows_next_step_and_expiring_soon(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, tina_id, _steps = _ids(trained_lab)
    with db.session() as s:
        s.add(
            Qualification(
                person_id=ada_id,
                competency_id=_competency_id("laser"),
                action=QualificationAction.GRANTED,
                level=Level.BRIEFED,
                valid_until=date.today() + timedelta(days=10),
                granted_by_id=tina_id,
            )
        )
        s.commit()
    auth.login(trained_lab.participant)
    me = client.get("/me").get_data(as_text=True)
    assert "Expires soon" in me
    assert "Next: Supervised cutting. Work at the machine with a trainer: 1 h left." in me
    # Printing has not started: listed as something she can start, with its first step.
    assert re.search(r"3D printing</strong>: Next: Printer briefing\. Ask a trainer\.", me)
    # Her sessions come with their jobs.
    assert "benchy.gcode" in me


def test_training_participant_page_tells_expired_from_expiring_soon(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    """A validity that ended yesterday is listed as expired, one that ends today as expiring
    soon (the participant's own calendar day, at her site)."""
    ada_id, tina_id, _steps = _ids(trained_lab)
    with db.session() as s:
        ada = s.get(Person, ada_id)
        assert ada is not None
        today = datetime.now(ZoneInfo(ada.site.timezone)).date()
        for slug, until in (("laser", today - timedelta(days=1)), ("printing", today)):
            s.add(
                Qualification(
                    person_id=ada_id,
                    competency_id=_competency_id(slug),
                    action=QualificationAction.GRANTED,
                    level=Level.BRIEFED if slug == "laser" else Level.INDEPENDENT,
                    valid_until=until,
                    granted_by_id=tina_id,
                )
            )
        s.commit()
    auth.login(trained_lab.participant)
    me = client.get("/me").get_data(as_text=True)

    def section(anchor: str) -> str:
        found = re.search(rf'<section[^>]*id="{anchor}".*?</section>', me, re.S)
        return found.group(0) if found else ""

    assert "Laser cutting" in section("expired") and "Expired on" in section("expired")
    assert "Laser cutting" not in section("expires-soon")
    assert "3D printing" in section("expires-soon") and "3D printing" not in section("expired")


def test_training_participant_page_in_german(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    # Bob reads German (his profile says so).
    auth.login(trained_lab.other_participant)
    me = client.get("/me").get_data(as_text=True)
    assert "Meine Schulung" in me
    assert "Laserschneiden" in me


@pytest.mark.parametrize("who", ["participant", "other_participant"])
def test_training_pages_refuse_participants(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab, who: str
) -> None:
    ada_id, _tina, steps = _ids(trained_lab)
    auth.login(getattr(trained_lab, who))
    assert client.get("/training/people").status_code == 403
    assert (
        client.post(
            f"/training/people/{ada_id}/steps", data={"step_id": steps["Printer briefing"]}
        ).status_code
        == 403
    )
    assert _history(ada_id) == []


def test_training_reminder_shows_on_the_participant_page_until_read(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    from server.services import notifications

    ada_id, tina_id, _steps = _ids(trained_lab)
    with db.session() as s:
        s.add(
            Qualification(
                person_id=ada_id,
                competency_id=_competency_id("laser"),
                action=QualificationAction.GRANTED,
                level=Level.BRIEFED,
                valid_until=date.today() + timedelta(days=10),
                granted_by_id=tina_id,
            )
        )
        s.flush()
        notifications.remind_expiring(s, date.today())
        s.commit()
    auth.login(trained_lab.participant)
    me = client.get("/me").get_data(as_text=True)
    assert "News for you" in me and "Laser cutting" in me
    ids = re.findall(r'name="id" value="(\d+)"', me)
    assert ids
    client.post("/notifications/read", data={"id": ids[0], "next": "/me"})
    assert "News for you" not in client.get("/me").get_data(as_text=True)


# -- supervised sessions a machine reported without the server (issue 11) --------------------------

ADA_BADGE = "04A1B2C3D4E5F6"


def _brief(person_id: int, trainer_id: int, slug: str = "laser") -> None:
    with db.session() as s:
        s.add(
            Qualification(
                person_id=person_id,
                competency_id=_competency_id(slug),
                action=QualificationAction.GRANTED,
                level=Level.BRIEFED,
                valid_until=date.today() + timedelta(days=300),
                granted_by_id=trainer_id,
            )
        )
        s.commit()


def _reported_supervised(device_id: str, badge: str = ADA_BADGE, hours: float = 1.0) -> str:
    """A Pi reports a supervised session it opened offline, through the real ingestion."""
    from server.services.ingest import ingest_event
    from werkbank_protocol import format_ts
    from werkbank_protocol.messages import SessionEnded, SessionStarted

    now = datetime.now(UTC)
    session = str(uuid.uuid4())
    events = [
        SessionStarted(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(now - timedelta(hours=hours)),
            session=session,
            badge=badge,
            offline=True,
            mode="supervise",
        ),
        SessionEnded(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(now),
            session=session,
            reason="tap_out",
            unlocked_s=hours * 3600,
        ),
    ]
    from server.models import Device

    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        for event in events:
            assert ingest_event(s, device, event, now).new
        s.commit()
    return session


def _session_row(session_id: str) -> tuple[str, str | None, str | None]:
    with db.session() as s:
        row = s.get(MachineSession, session_id)
        assert row is not None
        return row.mode, row.trainer.name if row.trainer else None, row.review


def test_training_trainer_confirms_a_reported_supervised_session(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, tina_id, _steps = _ids(trained_lab)
    _brief(ada_id, tina_id)
    session = _reported_supervised("pi-laser-1")
    # Reported, not yet confirmed: no supervised hours, no level.
    assert _history(ada_id) == [("laser", "granted", "briefed")]
    auth.login(trained_lab.trainer)
    page = client.get("/training/people").get_data(as_text=True)
    assert "Supervised sessions awaiting confirmation" in page
    queue = page.split('id="reviews"', 1)[1].split("</section>", 1)[0]
    assert "Ada Lovelace" in queue and "Laser 1" in queue and "1 h 00 min" in queue
    assert "0 of 1 h done" in client.get(f"/training/people/{ada_id}").get_data(as_text=True)

    confirmed = client.post(f"/training/sessions/{session}/confirm", follow_redirects=True)
    assert confirmed.status_code == 200
    text = confirmed.get_data(as_text=True)
    assert "Confirmed: the session of Ada Lovelace on Laser 1 counts as supervised." in text
    assert "Ada Lovelace now holds Laser cutting at level Supervised." in text
    assert 'id="reviews"' not in text, "the queue is empty now"
    assert _history(ada_id)[-1] == ("laser", "granted", "supervised")
    assert _session_row(session) == ("supervise", "Tina Trainer", "confirmed")
    with db.session() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "session.supervision_confirmed")).one()
        assert entry.actor_label.startswith("Tina Trainer") and entry.detail["session"] == session
        granted = s.scalars(select(Qualification).order_by(Qualification.id.desc()).limit(1)).one()
        assert granted.granted_by_id == tina_id


def test_training_trainer_rejects_a_reported_session_in_german(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, tina_id, _steps = _ids(trained_lab)
    _brief(ada_id, tina_id)
    session = _reported_supervised("pi-laser-1")
    with db.session() as s:
        tina = s.get(Person, tina_id)
        assert tina is not None
        tina.language = "de"
        s.commit()
    auth.login(trained_lab.trainer)
    page = client.get("/training/people").get_data(as_text=True)
    assert "Betreute Sitzungen, die auf Bestätigung warten" in page
    assert "Bestätigen" in page and "Ablehnen" in page
    rejected = client.post(f"/training/sessions/{session}/reject", follow_redirects=True)
    assert rejected.status_code == 200
    assert "Abgelehnt: Die Sitzung von Ada Lovelace an Laser 1 zählt nicht als betreut." in rejected.get_data(
        as_text=True
    )
    assert _history(ada_id) == [("laser", "granted", "briefed")]
    assert _session_row(session) == ("use", None, "rejected")
    with db.session() as s:
        entry = s.scalars(select(AuditLog).where(AuditLog.action == "session.supervision_rejected")).one()
        assert entry.actor_label.startswith("Tina Trainer")


def test_training_reported_session_is_only_for_trainers_of_that_machine(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    """Tina trains lasers only: a session reported at a printer is not hers to confirm."""
    ada_id, _tina_id, _steps = _ids(trained_lab)
    session = _reported_supervised("pi-prusa-a")
    auth.login(trained_lab.trainer)
    assert 'id="reviews"' not in client.get("/training/people").get_data(as_text=True)
    refused = client.post(f"/training/sessions/{session}/confirm")
    assert refused.status_code == 400
    assert "You are not a trainer for Prusa A." in refused.get_data(as_text=True)
    assert _session_row(session) == ("use", None, "pending")
    assert _history(ada_id) == []


def test_training_reported_session_of_another_site_is_not_found(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    from server.models import Site

    with db.session() as s:
        west = Site(slug="west", name="West", timezone="Europe/Berlin")
        s.add(west)
        s.flush()
        stranger = Person(site_id=west.id, name="Far Away")
        s.add(stranger)
        s.flush()
        s.add(Badge(uid="FA4AFA4A", person_id=stranger.id))
        s.commit()
    session = _reported_supervised("pi-laser-1", badge="FA4AFA4A")
    auth.login(trained_lab.trainer)
    assert "Far Away" not in client.get("/training/people").get_data(as_text=True)
    assert client.post(f"/training/sessions/{session}/confirm").status_code == 404
    assert _session_row(session) == ("use", None, "pending")


def test_training_participant_cannot_confirm_their_own_reported_session(
    client: FlaskClient, auth: AuthActions, trained_lab: Lab
) -> None:
    ada_id, tina_id, _steps = _ids(trained_lab)
    _brief(ada_id, tina_id)
    session = _reported_supervised("pi-laser-1")
    auth.login(trained_lab.participant)
    assert client.post(f"/training/sessions/{session}/confirm").status_code == 403
    assert _session_row(session) == ("use", None, "pending")
    assert _history(ada_id) == [("laser", "granted", "briefed")]
