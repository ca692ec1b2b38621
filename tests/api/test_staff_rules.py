"""The staff rule, through the web pages and the API alike: nobody changes their own
qualifications (admins included); trainers act only on people of their own site and only in
competencies they train. Every refusal changes nothing, says why, and is audited and counted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from server.extensions import db
from server.models import (
    AuditLog,
    Booking,
    Competency,
    Level,
    Machine,
    MachineSession,
    Person,
    Qualification,
    QualificationAction,
    Site,
    StepRecord,
)
from server.security import hash_password
from server.services import qualifications, training
from tests.api.conftest import ROLE_EMAILS, Api, ApiLab, error_code
from tests.web.conftest import PASSWORD, english

CHANNELS = ("web", "api")


@dataclass
class Outcome:
    status: int
    text: str  # the API's error code, or the web page's text


@pytest.fixture(scope="module")
def password_hash() -> str:
    return hash_password(PASSWORD)


@pytest.fixture
def staff_lab(lab: ApiLab, password_hash: str) -> ApiLab:
    """The API lab plus web passwords for its staff, and Sam South, a printer user of the other site."""
    with db.session() as s:
        for email in ROLE_EMAILS.values():
            person = s.scalar(select(Person).where(Person.email == email))
            assert person is not None
            person.password_hash = password_hash
        sued = s.scalar(select(Site).where(Site.slug == "sued"))
        fdm = s.scalar(select(Competency).where(Competency.slug == "fdm-printing"))
        assert sued is not None and fdm is not None
        sam = Person(site_id=sued.id, name="Sam South", email="sam@lab.test", language="en")
        s.add(sam)
        s.flush()
        s.add(
            Qualification(
                person_id=sam.id,
                competency_id=fdm.id,
                action=QualificationAction.GRANTED,
                level=Level.INDEPENDENT,
                valid_until=date(2099, 1, 1),
                reason="test lab",
            )
        )
        s.flush()
        lab.people["sam"] = sam.id
    return lab


@pytest.fixture
def act(app: Flask, api: Api, staff_lab: ApiLab) -> Callable[..., Outcome]:
    """Make one change as a role, over the web form or the API: the same request either way."""
    clients: dict[str, FlaskClient] = {}

    def web_client(role: str) -> FlaskClient:
        if role not in clients:
            client = english(app.test_client())
            login = client.post("/login", data={"email": ROLE_EMAILS[role], "password": PASSWORD})
            assert login.status_code == 302
            client.get("/language/en")  # whatever the profile says: the assertions read English
            clients[role] = client
        return clients[role]

    def run(channel: str, role: str, change: str, person: str, competency: str, **extra: str) -> Outcome:
        person_id = staff_lab.people[person]
        if channel == "api":
            body: dict[str, object] = {"person_id": person_id}
            if change == "step":
                body["step_id"] = staff_lab.steps[f"{competency}/briefing"]
                response = api.post("/training/steps", body, as_=role)
            else:
                body.update(competency=competency, **extra)
                response = api.post(f"/qualifications/{change}", body, as_=role)
            ok = response.status_code == 201
            return Outcome(response.status_code, "" if ok else error_code(response))
        with db.session() as s:
            competency_id = s.scalar(select(Competency.id).where(Competency.slug == competency))
        form = {"competency_id": str(competency_id), **extra}
        if change == "step":
            form = {"step_id": str(staff_lab.steps[f"{competency}/briefing"])}
        path = {"step": "steps"}.get(change, change)
        response = web_client(role).post(f"/training/people/{person_id}/{path}", data=form)
        return Outcome(response.status_code, response.get_data(as_text=True))

    return run


def _changes() -> tuple[int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count(Qualification.id))) or 0,
            s.scalar(select(func.count(StepRecord.id))) or 0,
        )


def _refusals() -> list[tuple[int | None, str, dict[str, object]]]:
    with db.session() as s:
        rows = s.execute(
            select(AuditLog.actor_id, AuditLog.subject, AuditLog.detail)
            .where(AuditLog.action == "training.refused")
            .order_by(AuditLog.id)
        )
        return [(actor, subject, dict(detail)) for actor, subject, detail in rows]


def _assert_refused(outcome: Outcome, channel: str, code: str, message: str) -> None:
    assert outcome.status == 403, outcome.text[:500]
    if channel == "api":
        assert outcome.text == code
    else:
        assert message in outcome.text


OWN = "You cannot change your own qualifications or training. Ask another trainer."


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize(
    ("role", "change", "competency", "extra"),
    [
        # The finding: a trainer renewed her own trainer level by a year.
        ("trainer", "renew", "laser-safety", {}),
        ("trainer", "revoke", "fdm-printing", {"reason": "cover my tracks"}),
        ("trainer", "grant", "laser-safety", {"level": "independent", "reason": "me"}),
        ("laser_trainer", "step", "laser-safety", {}),
        # Admins included: nobody grants themselves anything.
        ("admin", "grant", "fdm-printing", {"level": "trainer", "reason": "promote myself"}),
    ],
)
def test_staff_nobody_changes_their_own_qualifications(
    act: Callable[..., Outcome],
    staff_lab: ApiLab,
    channel: str,
    role: str,
    change: str,
    competency: str,
    extra: dict[str, str],
) -> None:
    myself = ROLE_EMAILS[role].split("@")[0]
    before = _changes()
    counted = training.REFUSALS["own_training"]
    outcome = act(channel, role, change, myself, competency, **extra)
    _assert_refused(outcome, channel, "own_training", OWN)
    assert _changes() == before
    assert training.REFUSALS["own_training"] == counted + 1
    [(actor, subject, detail)] = _refusals()
    assert actor == staff_lab.people[myself] and subject == f"person:{staff_lab.people[myself]}"
    assert detail["code"] == "own_training" and detail["change"] == change
    assert detail["competency"] == competency and detail["source"] == channel


def test_staff_own_renewal_leaves_the_trainer_level_as_it_was(
    act: Callable[..., Outcome], staff_lab: ApiLab
) -> None:
    """The finding as reported: the renewal would have moved Tina's trainer level a year on."""
    with db.session() as s:
        before = qualifications.newest(s, staff_lab.people["tina"], _competency(s, "laser-safety"))
        assert before is not None
        until = before.valid_until
    for channel in CHANNELS:
        assert act(channel, "trainer", "renew", "tina", "laser-safety").status == 403
    with db.session() as s:
        after = qualifications.newest(s, staff_lab.people["tina"], _competency(s, "laser-safety"))
        assert after is not None and after.id == before.id and after.valid_until == until


def _competency(s: object, slug: str) -> int:
    found = s.scalar(select(Competency.id).where(Competency.slug == slug))  # type: ignore[attr-defined]
    assert found is not None
    return int(found)


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize(
    ("change", "extra"),
    [
        ("grant", {"level": "briefed", "reason": "knows printers"}),
        ("renew", {}),
        ("revoke", {"reason": "unsafe"}),
        ("step", {}),
    ],
)
def test_staff_trainer_acts_only_on_people_of_their_site(
    act: Callable[..., Outcome], staff_lab: ApiLab, channel: str, change: str, extra: dict[str, str]
) -> None:
    competency = "laser-safety" if change == "renew" else "fdm-printing"
    if change == "renew":  # something Sam holds that can be renewed
        with db.session() as s:
            s.add(
                Qualification(
                    person_id=staff_lab.people["sam"],
                    competency_id=_competency(s, "laser-safety"),
                    action=QualificationAction.GRANTED,
                    level=Level.INDEPENDENT,
                    valid_until=date(2099, 1, 1),
                )
            )
    if change == "step":  # Sam starts over: the briefing would be his next step
        with db.session() as s:
            s.add(
                Qualification(
                    person_id=staff_lab.people["sam"],
                    competency_id=_competency(s, "fdm-printing"),
                    action=QualificationAction.REVOKED,
                    level=Level.INDEPENDENT,
                    reason="test",
                )
            )
    before = _changes()
    outcome = act(channel, "trainer", change, "sam", competency, **extra)
    _assert_refused(
        outcome, channel, "other_site", "This person belongs to another site. Ask a trainer there."
    )
    assert _changes() == before
    [(actor, subject, detail)] = _refusals()
    assert actor == staff_lab.people["tina"] and subject == f"person:{staff_lab.people['sam']}"
    assert detail["code"] == "other_site" and detail["change"] == change
    # The admin, who serves every site, may (the rule limits trainers, not the admin's reach).
    assert act(channel, "admin", change, "sam", competency, **extra).status in (201, 302)


@pytest.mark.parametrize("channel", CHANNELS)
def test_staff_trainer_acts_only_in_competencies_they_train(
    act: Callable[..., Outcome], staff_lab: ApiLab, channel: str
) -> None:
    before = _changes()
    outcome = act(channel, "laser_trainer", "grant", "bob", "fdm-printing", level="briefed", reason="x")
    _assert_refused(outcome, channel, "not_a_trainer", "You are not a trainer for FDM 3D printing.")
    assert _changes() == before
    [(_actor, _subject, detail)] = _refusals()
    assert detail["code"] == "not_a_trainer"


@pytest.mark.parametrize("channel", CHANNELS)
def test_staff_refusals_of_the_persons_state_are_not_breaches(
    act: Callable[..., Outcome], staff_lab: ApiLab, channel: str
) -> None:
    """A missing reason or nothing to renew is the person's state, not the trainer overstepping:
    refused as before (not 403), and not in the audit log as a breach."""
    outcome = act(channel, "trainer", "renew", "bob", "laser-safety")
    assert outcome.status in (400, 422)
    assert _refusals() == []


def test_staff_web_page_offers_no_buttons_for_own_qualifications(
    act: Callable[..., Outcome], app: Flask, staff_lab: ApiLab
) -> None:
    client = english(app.test_client())
    client.post("/login", data={"email": ROLE_EMAILS["trainer"], "password": PASSWORD})
    own = client.get(f"/training/people/{staff_lab.people['tina']}").get_data(as_text=True)
    assert f"/training/people/{staff_lab.people['tina']}/renew" not in own
    other = client.get(f"/training/people/{staff_lab.people['ada']}").get_data(as_text=True)
    assert f"/training/people/{staff_lab.people['ada']}/renew" in other
    # People of another site are not shown at all.
    assert client.get(f"/training/people/{staff_lab.people['sam']}").status_code == 404


def test_staff_refusal_in_german_on_the_web(app: Flask, staff_lab: ApiLab) -> None:
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    client.post("/login", data={"email": ROLE_EMAILS["trainer"], "password": PASSWORD})
    with db.session() as s:
        competency_id = _competency(s, "laser-safety")
    response = client.post(
        f"/training/people/{staff_lab.people['tina']}/renew", data={"competency_id": competency_id}
    )
    assert response.status_code == 403
    assert "Sie können Ihre eigenen Qualifikationen" in response.get_data(as_text=True)


def test_staff_rule_holds_at_the_service_for_any_caller(staff_lab: ApiLab) -> None:
    """The rule is the service's, not the pages': a caller that skips every page check is refused too."""
    with db.session() as s:
        tina = s.get(Person, staff_lab.people["tina"])
        sam = s.get(Person, staff_lab.people["sam"])
        laser = s.get(Competency, _competency(s, "laser-safety"))
        assert tina is not None and sam is not None and laser is not None
        today = date(2026, 12, 1)
        with pytest.raises(training.TrainingError) as own:
            training.renew(s, tina, laser, tina, None, datetime.now(UTC), today)
        assert own.value.code == "own_training" and own.value.forbidden
        assert not training.may_change(s, tina, sam, laser, today)
        with pytest.raises(training.TrainingError) as elsewhere:
            training.grant(s, sam, laser, Level.BRIEFED, tina, "x", datetime.now(UTC), today)
        assert elsewhere.value.code == "other_site"


def test_staff_trainer_reads_only_people_of_their_site_over_the_api(api: Api, staff_lab: ApiLab) -> None:
    """Trainers read people, qualifications, sessions and bookings of their own site only (the
    web pages answer 404 for the others); admins read every site, participants themselves."""
    sam = staff_lab.people["sam"]
    with db.session() as s:
        printer_2 = s.scalar(select(Machine).where(Machine.slug == "printer-2"))
        assert printer_2 is not None
        start = datetime.now(UTC) - timedelta(days=1)
        s.add(
            MachineSession(
                id="s-sam-1",
                machine_id=printer_2.id,
                device_id="pi-printer-2",
                person_id=sam,
                started_at=start,
                ended_at=start + timedelta(hours=1),
                unlocked_s=3600.0,
            )
        )
        booking = Booking(
            machine_id=printer_2.id,
            person_id=sam,
            starts_at=start + timedelta(days=3),
            ends_at=start + timedelta(days=3, hours=1),
            created_by_id=sam,
        )
        s.add(booking)
        s.flush()
        sams_booking = booking.id

    def ids(path: str, role: str, key: str = "id", **params: object) -> list[object]:
        answer = api.get(path, as_=role, limit=200, **params)
        assert answer.status_code == 200, answer.get_json()
        return [item[key] for item in answer.get_json()["items"]]

    assert sam not in ids("/people", "trainer")
    assert sam in ids("/people", "admin")
    assert ids("/people", "trainer", site="sued") == []
    refused = api.get(f"/people/{sam}", as_="trainer")
    assert refused.status_code == 403 and error_code(refused) == "forbidden"
    assert api.get(f"/people/{staff_lab.people['ada']}", as_="trainer").status_code == 200
    assert api.get(f"/people/{sam}", as_="admin").status_code == 200

    assert sam not in ids("/qualifications", "trainer", key="person_id")
    assert sam in ids("/qualifications", "admin", key="person_id")
    assert api.get("/qualifications", as_="trainer", person_id=sam).status_code == 403
    assert ids("/qualifications", "trainer", key="person_id", person_id=staff_lab.people["ada"])

    assert "s-sam-1" not in ids("/sessions", "trainer")
    assert "s-sam-1" in ids("/sessions", "admin")
    assert api.get("/sessions", as_="trainer", person_id=sam).status_code == 403
    assert sams_booking not in ids("/bookings", "trainer")
    assert sams_booking in ids("/bookings", "admin")
    assert api.get(f"/bookings/{sams_booking}", as_="trainer").status_code == 403
    assert api.get(f"/bookings/{staff_lab.bookings['ada']}", as_="trainer").status_code == 200
