"""The server's half of the trainer flows: sign-offs the bridge records, hours that ingestion counts.

The bridge is driven without a broker here (its answers are read back from the access log);
tests/e2e/test_trainer_flow.py runs the same flows on the real broker with agents.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from server.adapters.bridge import Bridge
from server.db import Database
from server.models import (
    AccessDecision,
    Competency,
    Device,
    Level,
    Machine,
    MachineType,
    Person,
    Qualification,
    QualificationAction,
    Requirement,
    StepKind,
    StepRecord,
    TrainingStep,
)
from server.services import allowlists, training
from server.services.ingest import ingest_event
from tests.conftest import BEA, PETE, TINA
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import badge_hash, key_bytes
from werkbank_protocol.messages import AuthReq, SessionEnded, SessionStarted

QUINN = "04A224B2C35E80"


def _certify(db: Database, device_id: str, badge: str, now: datetime, trainer: str = TINA) -> dict[str, Any]:
    """An auth/req in mode certify answered by the bridge; the answer as recorded."""
    bridge = Bridge(db, "mqtt://127.0.0.1:9", clock=lambda: now)  # never connected: answers go nowhere
    request = AuthReq(
        v=1, id=str(uuid.uuid4()), ts=format_ts(now), badge=badge, mode="certify", trainer_badge=trainer
    )
    bridge._answer_taps([(device_id, request)])
    assert bridge.wait_for_decision_log(5.0)  # written just after the answer
    bridge.decision_log.close()
    with db.session() as s:
        row = s.get(AccessDecision, request.id)
        assert row is not None
        return row.response


def _supervise(db: Database, device_id: str, badge: str, trainer_badge: str, now: datetime) -> str:
    """An auth/req in mode supervise answered (allowed) by the bridge; the session id it handed out."""
    return _unlock(db, device_id, badge, now, mode="supervise", trainer_badge=trainer_badge)


def _unlock(
    db: Database,
    device_id: str,
    badge: str,
    now: datetime,
    mode: str = "use",
    trainer_badge: str | None = None,
) -> str:
    """An auth/req answered (allowed) by the bridge; the session id it handed out."""
    bridge = Bridge(db, "mqtt://127.0.0.1:9", clock=lambda: now)  # never connected: answers go nowhere
    request = AuthReq(
        v=1,
        id=str(uuid.uuid4()),
        ts=format_ts(now),
        badge=badge,
        mode=mode,
        trainer_badge=trainer_badge,
    )
    bridge._answer_taps([(device_id, request)])
    assert bridge.wait_for_decision_log(5.0)  # written just after the answer
    bridge.decision_log.close()
    with db.session() as s:
        row = s.get(AccessDecision, request.id)
        assert row is not None and row.decision == "allow", row and row.response
        assert row.session_id is not None
        return row.session_id


def _ingest(db: Database, device_id: str, event: SessionStarted | SessionEnded, now: datetime) -> None:
    """A device's event, stored as the bridge's ingest half stores it."""
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        ingest_event(s, device, event, now)


def _grant(db: Database, name: str, slug: str, level: Level) -> None:
    with db.session() as s:
        person = s.scalar(select(Person).where(Person.name == name))
        competency = s.scalar(select(Competency).where(Competency.slug == slug))
        assert person and competency
        s.add(
            Qualification(
                person_id=person.id,
                competency_id=competency.id,
                action=QualificationAction.GRANTED,
                level=level,
                valid_until=None,
                reason="test",
            )
        )


def _counts(db: Database) -> tuple[int, int]:
    with db.session() as s:
        return (
            s.scalar(select(func.count()).select_from(StepRecord)) or 0,
            s.scalar(select(func.count()).select_from(Qualification)) or 0,
        )


def test_training_certify_with_nothing_due_says_so(trainer_lab: Database, clock) -> None:
    answer = _certify(trainer_lab, "pi-printer-1", QUINN, clock())
    assert (answer["decision"], answer["reason"], answer["session"]) == ("deny", "not_qualified", None)
    assert answer["message"]["en"] == "Quinn has no practical sign-off due on this machine."


def test_training_certify_records_every_required_signoff(trainer_lab: Database, clock) -> None:
    # The laser now also requires printing: Bea, supervised in both, is signed off in both at once.
    with trainer_lab.session() as s:
        laser = s.scalar(select(MachineType).where(MachineType.slug == "co2-laser"))
        printing = s.scalar(select(Competency).where(Competency.slug == "fdm-printing"))
        assert laser and printing
        s.add(Requirement(machine_type_id=laser.id, competency_id=printing.id, min_level=Level.INDEPENDENT))
    _grant(trainer_lab, "Bea Briefed", "fdm-printing", Level.SUPERVISED)
    _grant(trainer_lab, "Bea Briefed", "laser-safety", Level.SUPERVISED)
    steps, quals = _counts(trainer_lab)

    answer = _certify(trainer_lab, "pi-laser-1", BEA, clock())
    assert (answer["decision"], answer["reason"], answer["session"]) == ("allow", "ok", None)
    assert answer["message"]["en"] == "Sign-off recorded for Bea."
    assert _counts(trainer_lab) == (steps + 2, quals + 2)
    with trainer_lab.session() as s:
        levels = s.scalars(select(Qualification.level).order_by(Qualification.id.desc()).limit(2)).all()
        assert list(levels) == [Level.INDEPENDENT, Level.INDEPENDENT]
        sources = set(s.scalars(select(StepRecord.source)))
        assert sources == {"machine"}


def test_training_certify_right_after_the_unlock_is_filed_under_the_trainers_session(
    trainer_lab: Database, clock
) -> None:
    """Tina unlocks and signs Bea off at once: the device's session_started is not stored yet
    (the ingest half stores it a few milliseconds after the answer), and the sign-off is still
    filed under the session the server handed Tina. Once that session has ended, it is not."""
    now = clock()
    tinas = _unlock(trainer_lab, "pi-printer-1", TINA, now)
    _grant(trainer_lab, "Bea Briefed", "fdm-printing", Level.SUPERVISED)

    answer = _certify(trainer_lab, "pi-printer-1", BEA, now + timedelta(seconds=2))
    assert (answer["decision"], answer["reason"]) == ("allow", "ok")
    with trainer_lab.session() as s:
        assert s.scalar(select(StepRecord.session_id).where(StepRecord.source == "machine")) == tinas

    for event in (
        SessionStarted(v=1, id=str(uuid.uuid4()), ts=format_ts(now), session=tinas, badge=TINA),
        SessionEnded(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(now + timedelta(seconds=5)),
            session=tinas,
            reason="tap_out",
            unlocked_s=5.0,
        ),
    ):
        _ingest(trainer_lab, "pi-printer-1", event, clock())
    with trainer_lab.session() as s:
        tina = s.scalar(select(Person.id).where(Person.name == "Tina Trainer"))
        printer = s.scalar(select(Device.machine_id).where(Device.id == "pi-printer-1"))
        assert tina is not None and printer is not None
        assert training._trainer_session(s, printer, tina) is None


def test_training_certify_refused_in_one_competency_records_none(trainer_lab: Database, clock) -> None:
    with trainer_lab.session() as s:
        laser = s.scalar(select(MachineType).where(MachineType.slug == "co2-laser"))
        printing = s.scalar(select(Competency).where(Competency.slug == "fdm-printing"))
        safety = s.scalar(select(Competency).where(Competency.slug == "laser-safety"))
        assert laser and printing and safety
        s.add(Requirement(machine_type_id=laser.id, competency_id=printing.id, min_level=Level.INDEPENDENT))
        # On the laser, the sign-off also waits for two more supervised hours.
        s.add(
            TrainingStep(
                competency_id=safety.id,
                position=9,
                kind=StepKind.SUPERVISED_HOURS,
                name="More supervised cutting",
                leads_to=Level.INDEPENDENT,
                hours=2.0,
            )
        )
    _grant(trainer_lab, "Bea Briefed", "fdm-printing", Level.SUPERVISED)
    _grant(trainer_lab, "Bea Briefed", "laser-safety", Level.SUPERVISED)
    before = _counts(trainer_lab)

    answer = _certify(trainer_lab, "pi-laser-1", BEA, clock())
    assert (answer["decision"], answer["reason"]) == ("deny", "not_qualified")
    assert answer["message"]["en"] == "0 of 2 supervised hours done. Sign off when all are done."
    assert _counts(trainer_lab) == before, "the printing sign-off was not recorded either"


def test_training_supervised_hours_count_in_any_event_order(trainer_lab: Database, clock) -> None:
    """session_ended may arrive before session_started (a replayed outbox): the level follows
    whichever completes the session. The session is one the server decided (mode supervise with
    Tina): before issue 11 this test fed a session no decision stood behind, which no longer
    grants anything on the device's word (tests/server/test_device_claims.py)."""
    start = clock() - timedelta(minutes=10)
    session = _supervise(trainer_lab, "pi-printer-1", BEA, TINA, start)
    ended = SessionEnded(
        v=1,
        id=str(uuid.uuid4()),
        ts=format_ts(start + timedelta(seconds=10)),
        session=session,
        reason="tap_out",
        unlocked_s=10.0,
    )
    started = SessionStarted(
        v=1,
        id=str(uuid.uuid4()),
        ts=format_ts(start),
        session=session,
        badge=BEA,
        mode="supervise",
        trainer_badge=TINA,
    )
    _ingest(trainer_lab, "pi-printer-1", ended, clock())
    _ingest(trainer_lab, "pi-printer-1", started, clock())
    with trainer_lab.session() as s:
        bea = s.scalar(select(Person).where(Person.name == "Bea Briefed"))
        tina = s.scalar(select(Person).where(Person.name == "Tina Trainer"))
        assert bea and tina
        newest = s.scalar(
            select(Qualification)
            .join(Competency, Competency.id == Qualification.competency_id)
            .where(Qualification.person_id == bea.id, Competency.slug == "fdm-printing")
            .order_by(Qualification.id.desc())
            .limit(1)
        )
        assert newest is not None
        assert (newest.level, newest.granted_by_id) == (Level.SUPERVISED, tina.id)


def test_training_allowlist_marks_trainers_of_this_machine_type_only(trainer_lab: Database, clock) -> None:
    with trainer_lab.session() as s:
        flags = {}
        for slug in ("printer-1", "laser-1"):
            machine = s.scalar(select(Machine).where(Machine.slug == slug))
            assert machine is not None
            document = allowlists.build(s, machine, clock(), 7)
            by_hash = {e["badge_hash"]: e["trainer"] for e in document["entries"]}
            key = key_bytes(machine.allowlist_key)
            flags[slug] = (by_hash[badge_hash(key, PETE)], by_hash[badge_hash(key, TINA)])
    assert flags == {"printer-1": (True, True), "laser-1": (False, True)}


def test_training_certify_for_someone_of_another_site_is_refused_and_audited(
    trainer_lab: Database, clock
) -> None:
    """The staff rule holds at the machine too: Pete, a printer trainer (not an admin), signs off
    only people of his own site."""
    from server.models import AuditLog, Site

    _grant(trainer_lab, "Bea Briefed", "fdm-printing", Level.SUPERVISED)
    with trainer_lab.session() as s:
        elsewhere = Site(slug="elsewhere", name="Elsewhere", timezone="Europe/Berlin")
        s.add(elsewhere)
        s.flush()
        bea = s.scalar(select(Person).where(Person.name == "Bea Briefed"))
        assert bea is not None
        bea.site_id = elsewhere.id
        bea_id = bea.id
    before = _counts(trainer_lab)
    answer = _certify(trainer_lab, "pi-printer-1", BEA, clock(), trainer=PETE)
    assert (answer["decision"], answer["reason"]) == ("deny", "not_qualified")
    assert answer["message"]["en"] == "This person belongs to another site. Ask a trainer there."
    assert answer["message"]["de"].startswith("Diese Person gehört zu einem anderen Standort.")
    assert _counts(trainer_lab) == before
    with trainer_lab.session() as s:
        [entry] = s.scalars(select(AuditLog).where(AuditLog.action == "training.refused")).all()
        assert entry.subject == f"person:{bea_id}"
        assert entry.detail["code"] == "other_site" and entry.detail["source"] == "machine"
