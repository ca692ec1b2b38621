"""The queue of supervised sessions a device reported without the server: who may confirm or
reject them, and what a confirmation grants (issue 11)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from server.db import Database
from server.models import AuditLog, Competency, Device, MachineSession, Person, SessionReview
from server.services import supervision, training
from server.services.ingest import ingest_event
from server.services.training import TrainingError
from tests.conftest import BEA, LARA, OTTO, PETE
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionEnded, SessionStarted


def _offline_supervised(
    db: Database, badge: str, now: datetime, *, device_id: str = "pi-printer-1", end: bool = True
) -> str:
    """What a Pi reports for a supervised session it opened without the server: a claim."""
    session = str(uuid.uuid4())
    start = now - timedelta(minutes=30)
    events: list[Any] = [
        SessionStarted(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(start),
            session=session,
            badge=badge,
            offline=True,
            mode="supervise",
            trainer_badge=LARA,
        )
    ]
    if end:
        events.append(
            SessionEnded(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(now),
                session=session,
                reason="tap_out",
                unlocked_s=1800,
            )
        )
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        for event in events:
            assert ingest_event(s, device, event, now).new
    return session


def _person(s: Any, name: str) -> Person:
    found = s.scalar(select(Person).where(Person.name == name))
    assert found is not None
    return found


def _queue(db: Database, name: str, now: datetime) -> list[tuple[str, str]]:
    with db.session() as s:
        rows = supervision.pending(s, _person(s, name), now.date())
        return [(r.person.name if r.person else "", r.machine.slug) for r in rows]


def test_supervision_queue_shows_each_trainer_what_they_may_confirm(claims_lab: Database, clock: Any) -> None:
    now = clock()
    _offline_supervised(claims_lab, BEA, now)  # at a printer
    _offline_supervised(claims_lab, BEA, now, device_id="pi-laser-1")
    _offline_supervised(claims_lab, PETE, now)  # Pete's own session
    _offline_supervised(claims_lab, OTTO, now)  # a person of another site
    _offline_supervised(claims_lab, BEA, now, end=False)  # still open: its hours are not known yet
    assert _queue(claims_lab, "Pete Printtrainer", now) == [("Bea Briefed", "printer-1")]
    assert _queue(claims_lab, "Lara Lasertrainer", now) == [("Bea Briefed", "laser-1")]
    # Tina trains both (and is an admin): everything of her site but her own.
    assert sorted(_queue(claims_lab, "Tina Trainer", now)) == [
        ("Bea Briefed", "laser-1"),
        ("Bea Briefed", "printer-1"),
        ("Pete Printtrainer", "printer-1"),
    ]
    assert _queue(claims_lab, "Bea Briefed", now) == []


def test_supervision_confirmed_session_counts_in_the_confirming_trainers_name(
    claims_lab: Database, clock: Any
) -> None:
    now = clock()
    session = _offline_supervised(claims_lab, BEA, now)
    with claims_lab.session() as s:
        row = s.get(MachineSession, session)
        assert row is not None
        granted = supervision.confirm(s, row, _person(s, "Pete Printtrainer"), now, now.date())
        assert [(g.competency.slug, g.level.value) for g in granted] == [("fdm-printing", "supervised")]
    with claims_lab.session() as s:
        row = s.get(MachineSession, session)
        assert row is not None and row.trainer is not None and row.reviewed_by is not None
        assert (row.mode, row.trainer.name, row.review) == (
            "supervise",
            "Pete Printtrainer",
            SessionReview.CONFIRMED,
        )
        bea = _person(s, "Bea Briefed")
        newest = training.history(s, bea.id)[0]
        pete = _person(s, "Pete Printtrainer")
        assert (newest.level.value, newest.granted_by_id) == ("supervised", pete.id)
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "session.supervision_confirmed")).one()
        assert (logged.actor_id, logged.detail["session"]) == (pete.id, session)
    assert _queue(claims_lab, "Tina Trainer", now) == []


@pytest.mark.parametrize(
    ("reviewer", "whose", "device_id", "code"),
    [
        ("Lara Lasertrainer", BEA, "pi-printer-1", "not_a_trainer"),  # trains the laser, not printers
        ("Pete Printtrainer", PETE, "pi-printer-1", "own_training"),
        ("Pete Printtrainer", OTTO, "pi-printer-1", "other_site"),
        ("Bea Briefed", PETE, "pi-printer-1", "not_a_trainer"),
    ],
)
def test_supervision_review_is_refused_outside_a_trainers_rights(
    claims_lab: Database, clock: Any, reviewer: str, whose: str, device_id: str, code: str
) -> None:
    now = clock()
    session = _offline_supervised(claims_lab, whose, now, device_id=device_id)
    for review in (supervision.confirm, supervision.reject):
        with claims_lab.session() as s:
            row = s.get(MachineSession, session)
            assert row is not None
            with pytest.raises(TrainingError) as refused:
                review(s, row, _person(s, reviewer), now, now.date())
            assert refused.value.code == code
        with claims_lab.session() as s:
            row = s.get(MachineSession, session)
            assert row is not None and (row.mode, row.review) == ("use", SessionReview.PENDING)
            # No review was recorded (the reconciliation of the offline session may be audited).
            reviews = select(AuditLog).where(AuditLog.action.like("session.supervision_%"))
            assert s.scalars(reviews).all() == []


def test_supervision_rejected_session_stays_hours_of_use_and_is_audited(
    claims_lab: Database, clock: Any
) -> None:
    now = clock()
    session = _offline_supervised(claims_lab, BEA, now)
    open_session = _offline_supervised(claims_lab, BEA, now, end=False)
    with claims_lab.session() as s:
        pete = _person(s, "Pete Printtrainer")
        row = s.get(MachineSession, session)
        assert row is not None
        supervision.reject(s, row, pete, now, now.date())
    with claims_lab.session() as s:
        pete = _person(s, "Pete Printtrainer")
        row = s.get(MachineSession, session)
        assert row is not None and (row.mode, row.trainer_id, row.review) == (
            "use",
            None,
            SessionReview.REJECTED,
        )
        printing = s.scalar(select(Competency.id).where(Competency.slug == "fdm-printing"))
        assert printing is not None
        assert training.supervised_hours(s, _person(s, "Bea Briefed").id, printing) == 0
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "session.supervision_rejected")).one()
        assert logged.actor_id == pete.id
        # Decided once: a second answer is refused, and an open session waits for its end.
        with pytest.raises(TrainingError) as again:
            supervision.confirm(s, row, pete, now, now.date())
        assert again.value.code == "not_pending"
        still_open = s.get(MachineSession, open_session)
        assert still_open is not None
        with pytest.raises(TrainingError) as early:
            supervision.confirm(s, still_open, pete, now, now.date())
        assert early.value.code == "not_ended"
