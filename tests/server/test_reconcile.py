"""Offline sessions checked when they arrive: who was not allowed at the start, by what was known then."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from server.db import Database
from server.models import AuditLog, Badge, Device, MachineSession, Notification, Person
from server.services import audit, mail, notifications, reconcile
from server.services.ingest import ingest_event
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionEnded, SessionStarted

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


def _offline(db: Database, device_id: str, badge: str, at: datetime = T0) -> MachineSession:
    """An offline session reported now (T0 + 1 h) that began at ``at``."""
    session = str(uuid.uuid4())
    with db.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        event = SessionStarted(
            v=1, id=str(uuid.uuid4()), ts=format_ts(at), session=session, badge=badge, offline=True
        )
        ingest_event(s, device, event, T0 + timedelta(hours=1))
    with db.session() as s:
        row = s.get(MachineSession, session)
        assert row is not None
        return row


@pytest.mark.parametrize(
    ("device_id", "badge", "reason"),
    [
        ("pi-laser-1", "04A224B2C35E80", None),  # Quinn: qualified
        ("pi-laser-1", "CAFEF00D", "unknown_badge"),
        ("pi-printer-1", "B10CB10C", "badge_blocked"),  # Bo
        ("pi-laser-1", "1AC71AC7", "person_inactive"),  # Ivy
        ("pi-laser-1", "DEADBEEF", "not_qualified"),  # Uma
        ("pi-laser-1", "0BADCAFE", "qualification_expired"),  # Eddie, since 3 March
        ("pi-laser-1", "5A5A5A5A", "trainer_required"),  # Sam: supervised only
    ],
)
def test_reconcile_flags_whoever_the_server_would_have_refused(
    lab: Database, device_id: str, badge: str, reason: str | None
) -> None:
    row = _offline(lab, device_id, badge)
    assert (row.flag, row.flag_reason) == (("not_allowed_offline", reason) if reason else (None, None))
    with lab.session() as s:
        tina = s.scalar(select(Person).where(Person.email == "tina@test.local"))
        assert tina is not None
        told = notifications.unread(s, tina.id)
        assert len(told) == (1 if reason else 0)
        locks = reconcile.due_locks(s, T0 + timedelta(hours=1))
        assert [lock.session_id for lock in locks] == ([row.id] if reason else [])
    with lab.session() as s:
        assert reconcile.due_locks(s, T0 + timedelta(hours=1)) == []  # once


def test_reconcile_goes_by_what_was_known_when_the_session_began(lab: Database) -> None:
    later = T0 + timedelta(minutes=30)
    with lab.session() as s:
        s.execute(update(Badge).where(Badge.uid == "B10CB10C").values(status_changed_at=later))
        ivy = s.scalar(select(Person).where(Person.name == "Ivy Inactive"))
        assert ivy is not None
        audit.record(s, None, "person.deactivate", f"person:{ivy.id}", at=later)
    assert _offline(lab, "pi-printer-1", "B10CB10C").flag is None  # blocked only afterwards
    # Deactivated afterwards: active then, but never trained on the laser.
    assert _offline(lab, "pi-laser-1", "1AC71AC7").flag_reason == "not_qualified"
    assert (
        _offline(lab, "pi-printer-1", "B10CB10C", later + timedelta(minutes=1)).flag_reason == "badge_blocked"
    )


def test_reconcile_notifies_the_sites_admins_in_their_language_and_is_audited(lab: Database) -> None:
    row = _offline(lab, "pi-laser-1", "0BADCAFE", T0)
    _offline(lab, "pi-laser-1", "0BADCAFE", T0)  # another session: another notice
    with lab.session() as s:
        # The same session's start reported again under another event id changes nothing.
        device = s.get(Device, "pi-laser-1")
        assert device is not None
        again = SessionStarted(
            v=1, id=str(uuid.uuid4()), ts=format_ts(T0), session=row.id, badge="0BADCAFE", offline=True
        )
        ingest_event(s, device, again, T0 + timedelta(hours=1))
        ended = SessionEnded(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(T0 + timedelta(minutes=5)),
            session=row.id,
            reason="remote_lock",
            unlocked_s=300,
        )
        ingest_event(s, device, ended, T0 + timedelta(hours=1))
    with lab.session() as s:
        tina = s.scalar(select(Person).where(Person.email == "tina@test.local"))
        assert tina is not None
        notes = s.scalars(select(Notification).where(Notification.person_id == tina.id)).all()
        assert len(notes) == 2
        note = next(n for n in notes if n.params["session_id"] == row.id)
        assert notifications.render(note, "en") == (
            "Eddie Expired used Laser 1 on November 18, 2026 at 10:00 while it was offline, but was not "
            "allowed to: Laser safety briefing had expired. If the session still runs, the machine locks "
            "once a running job ends. Please talk to Eddie Expired."
        )
        assert "Laser-Sicherheitsunterweisung war abgelaufen" in notifications.render(note, "de")
        email = mail.compose(note, tina, "werkbank@lab.test")  # Tina reads German
        assert email["Subject"] == "Eddie Expired hat Laser 1 ohne Berechtigung benutzt"
        assert "durfte das aber nicht: Laser-Sicherheitsunterweisung war abgelaufen" in email.get_content()
        flagged = s.scalars(select(AuditLog).where(AuditLog.action == reconcile.FLAG_ACTION)).all()
        assert len(flagged) == 2 and flagged[0].detail["reason"] == "qualification_expired"
        # The first session has ended meanwhile: only the second is still to be locked.
        assert len(reconcile.due_locks(s, T0 + timedelta(hours=1))) == 1
