"""Personal data (GDPR): export everything stored about a person, erase a person, purge by retention.

The export includes the person's programme data, special categories and consents
(server.services.programme_data); erasing deletes them.

Erasing keeps what the lab must report (machine hours, sessions, jobs, bookings and the
qualification history, counted per person) under a pseudonym and removes what identifies
the person: name, email, password, programme number, calendar and API tokens, badges and
every copy of their badge UIDs (sessions, tap decisions, stored events), free-text notes and
reasons about them, their notifications, and their name in other people's notifications and
in the audit log. The person row stays (so totals still add up) as "Person 1a2b3c4d" (the
keyed pseudonym of :func:`pseudonym`), inactive, with ``erased_at`` set; cohort and programme
stay for group statistics.

Every export and erase is in the audit log (the erase entry names only the pseudonym).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, cast, delete, func, or_, select
from sqlalchemy.orm import Session

from server.models import (
    AccessDecision,
    ApiToken,
    AuditLog,
    Booking,
    Job,
    MachineSession,
    Notification,
    Person,
    Qualification,
    StepRecord,
    StoredEvent,
)
from server.services import audit, lab_keys, programme_data

FORMAT_VERSION = 1


class PrivacyError(ValueError):
    """A request the rules refuse (e.g. erasing yourself), with a message a person can act on."""


def pseudonym(person_id: int, key: bytes) -> str:
    """A stable label for a person without their name: the same id gives the same label under
    the lab's pseudonym key (``lab_keys.pseudonym_key``), in every export. Keyed (HMAC-SHA256), so
    that nobody without the key can make the label of a person number, or of every number, and
    so find whom a label stands for."""
    digest = hmac.new(key, f"werkbank-person-{person_id}".encode(), hashlib.sha256).hexdigest()[:8]
    return f"Person {digest}"


def label_of(person_id: int, name: str | None, erased: bool, key: bytes) -> str:
    """How exports without names call a person: an erased person by the label they were given
    when erased (their name since; erasures before the key kept their unkeyed label), anyone
    else by :func:`pseudonym`."""
    if erased and name:
        return name
    return pseudonym(person_id, key)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _row(obj: Any, fields: Iterable[str]) -> dict[str, Any]:
    return {name: _iso(getattr(obj, name)) for name in fields}


def export(db: Session, person: Person, actor: Person | None, now: datetime) -> dict[str, Any]:
    """Everything stored about ``person``, as plain JSON-ready data; the export is audited.

    Names of sites, competencies and training steps are given in the person's language."""
    language = person.language or "en"
    uids = [b.uid for b in person.badges]
    sessions = list(db.scalars(select(MachineSession).where(MachineSession.person_id == person.id)))
    session_ids = [s.id for s in sessions]
    jobs = list(db.scalars(select(Job).where(Job.session_id.in_(session_ids)))) if session_ids else []
    decisions = list(
        db.scalars(
            select(AccessDecision).where(
                or_(AccessDecision.person_id == person.id, AccessDecision.badge_uid.in_(uids or [""]))
            )
        )
    )
    entries = list(
        db.scalars(
            select(AuditLog).where(
                or_(AuditLog.actor_id == person.id, AuditLog.subject == f"person:{person.id}")
            )
        )
    )
    data: dict[str, Any] = {
        "format": "werkbank-person-export",
        "version": FORMAT_VERSION,
        "exported_at": now.isoformat(),
        "person": _row(
            person,
            (
                "id",
                "name",
                "email",
                "language",
                "cohort",
                "programme",
                "external_id",
                "active",
                "is_participant",
                "is_trainer",
                "is_admin",
                "created_at",
            ),
        )
        | {"site": person.site.slug, "site_name": person.site.display_name(language)},
        "badges": [
            _row(b, ("uid", "status", "issued_at", "status_changed_at", "note")) for b in person.badges
        ],
        # Names that are data are in the person's own language (the export is theirs to read);
        # the slugs beside them stay as they are, for a machine to read.
        "qualifications": [
            _row(q, ("action", "level", "valid_until", "reason", "created_at", "granted_by_id"))
            | {
                "competency": q.competency.slug,
                "competency_name": q.competency.display_name(language),
            }
            for q in db.scalars(select(Qualification).where(Qualification.person_id == person.id))
        ],
        "training_steps": [
            _row(r, ("step_id", "source", "session_id", "note", "recorded_at", "recorded_by_id"))
            | {
                "step": r.step.display_name(language),
                "competency": r.step.competency.slug,
                "competency_name": r.step.competency.display_name(language),
            }
            for r in db.scalars(select(StepRecord).where(StepRecord.person_id == person.id))
        ],
        "sessions": [
            _row(
                s,
                (
                    "id",
                    "device_id",
                    "badge_uid",
                    "mode",
                    "offline",
                    "started_at",
                    "ended_at",
                    "end_reason",
                    "unlocked_s",
                    "run_s",
                    "energy_wh",
                    "trainer_id",
                ),
            )
            | {"machine": s.machine.slug}
            for s in sessions
        ],
        "jobs": [
            _row(
                j,
                (
                    "id",
                    "session_id",
                    "kind",
                    "file",
                    "started_at",
                    "finished_at",
                    "status",
                    "duration_s",
                    "filament_mm",
                    "filament_g",
                ),
            )
            for j in jobs
        ],
        "bookings": [
            _row(
                b,
                (
                    "id",
                    "starts_at",
                    "ends_at",
                    "status",
                    "note",
                    "created_at",
                    "checked_in_at",
                    "no_show",
                    "trainer_id",
                ),
            )
            | {"machine": b.machine.slug}
            for b in db.scalars(select(Booking).where(Booking.person_id == person.id))
        ],
        "tap_decisions": [
            _row(d, ("id", "device_id", "badge_uid", "mode", "decision", "reason", "decided_at"))
            for d in decisions
        ],
        "notifications": [
            _row(n, ("kind", "params", "created_at", "read_at", "emailed_at"))
            for n in db.scalars(select(Notification).where(Notification.person_id == person.id))
        ],
        "api_tokens": [
            _row(t, ("name", "prefix", "created_at", "last_used_at", "expires_at", "revoked_at"))
            for t in db.scalars(select(ApiToken).where(ApiToken.person_id == person.id))
        ],
        "audit_log": [_row(e, ("at", "actor_label", "action", "subject", "detail")) for e in entries],
    }
    # The programme's data about the person, special categories included: it is theirs.
    data |= programme_data.export_person(db, person)
    detail = {"sections": sorted(data), "special_categories": len(data["special_categories"])}
    audit.record(db, actor, "person.export", f"person:{person.id}", detail, at=now)
    return data


def _scrub(value: Any, terms: dict[str, str | None]) -> Any:
    """``value`` with every string that contains one of ``terms`` replaced (recursively)."""
    if isinstance(value, str):
        for term, replacement in terms.items():
            if term and term in value:
                value = value.replace(term, replacement) if replacement is not None else None
                if value is None:
                    return None
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, terms) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, terms) for v in value]
    return value


def erase(db: Session, person: Person, actor: Person | None, now: datetime) -> str:
    """Remove the person's personal data; keep their hours and history under a pseudonym.

    Returns the pseudonym. Idempotent: erasing an erased person changes nothing more.
    """
    if actor is not None and actor.id == person.id:
        raise PrivacyError("You cannot erase yourself. Ask another admin.")
    # Erasing again keeps the label given the first time (it may be from before the key).
    label = person.name if person.erased_at is not None else pseudonym(person.id, lab_keys.pseudonym_key(db))
    uids = [b.uid for b in person.badges]
    # What identifies the person wherever it was copied: replaced by the pseudonym (names) or
    # removed (email, badge UIDs, programme number).
    terms: dict[str, str | None] = {}
    if person.name and person.erased_at is None:
        terms[person.name] = label
    for secret in (person.email, person.external_id, *uids):
        if secret:
            terms[secret] = None

    session_ids = list(db.scalars(select(MachineSession.id).where(MachineSession.person_id == person.id)))
    for session in db.scalars(select(MachineSession).where(MachineSession.person_id == person.id)):
        session.badge_uid = None
    if session_ids:
        for stored in db.scalars(select(StoredEvent).where(StoredEvent.session_id.in_(session_ids))):
            payload = dict(stored.payload)
            for key in ("badge", "trainer_badge"):
                if payload.get(key) in uids:
                    payload[key] = None
            stored.payload = payload
    for decision in db.scalars(
        select(AccessDecision).where(
            or_(AccessDecision.person_id == person.id, AccessDecision.badge_uid.in_(uids or [""]))
        )
    ):
        decision.badge_uid = ""
        decision.response = {}
    for record in db.scalars(select(StepRecord).where(StepRecord.person_id == person.id)):
        record.note = None
    for entry in db.scalars(select(Qualification).where(Qualification.person_id == person.id)):
        entry.reason = None
    for booking in db.scalars(select(Booking).where(Booking.person_id == person.id)):
        booking.note = None
    _erase_proof(db, person, now)
    db.execute(delete(Notification).where(Notification.person_id == person.id))
    db.execute(delete(ApiToken).where(ApiToken.person_id == person.id))
    if terms:
        matches = [cast(Notification.params, String).contains(term) for term in terms if term]
        for note in db.scalars(select(Notification).where(or_(*matches))):
            note.params = _scrub(note.params, terms)
        audit_matches = [AuditLog.actor_id == person.id, AuditLog.subject == f"person:{person.id}"]
        audit_matches += [cast(AuditLog.detail, String).contains(term) for term in terms if term]
        audit_matches += [AuditLog.actor_label.contains(term) for term in terms if term]
        audit_matches += [AuditLog.subject.contains(term) for term in terms if term]
        for logged in db.scalars(select(AuditLog).where(or_(*audit_matches))):
            logged.detail = _scrub(logged.detail, terms) or {}
            logged.actor_label = _scrub(logged.actor_label, terms) or label
            logged.subject = _scrub(logged.subject, terms) or f"person:{person.id}"
            if logged.actor_id == person.id:
                logged.actor_label = label
    for badge in list(person.badges):
        db.delete(badge)
    person.name = label
    person.email = None
    person.password_hash = None
    person.external_id = None
    person.calendar_token = None
    person.active = False
    person.is_trainer = False
    person.is_admin = False
    if person.erased_at is None:
        person.erased_at = now
    db.flush()
    # The deleted badges stay in the loaded collection until it is read again: a second erasure
    # in this session would delete them twice (SQLAlchemy warns that no row matched).
    db.expire(person, ["badges"])
    audit.record(db, actor, "person.erase", f"person:{person.id}", {"pseudonym": label}, at=now)
    return label


def _erase_proof(db: Session, person: Person, now: datetime) -> None:
    """Certificates, briefing signatures, programme data and consents of an erased person: the
    facts and pictures go; hours, exits and the dates of briefings stay under the pseudonym."""
    from server.models import (
        AttendanceCorrection,
        BriefingConfirmation,
        Consent,
        ParticipantExit,
        ParticipantValue,
        SpecialValue,
    )
    from server.services import certificates

    certificates.forget(db, person, now)
    records = select(StepRecord.id).where(StepRecord.person_id == person.id)
    for confirmation in db.scalars(
        select(BriefingConfirmation).where(BriefingConfirmation.step_record_id.in_(records))
    ):
        confirmation.signature = ""
    for correction in db.scalars(
        select(AttendanceCorrection).where(AttendanceCorrection.person_id == person.id)
    ):
        correction.reason = "-"
    for exit_ in db.scalars(select(ParticipantExit).where(ParticipantExit.person_id == person.id)):
        exit_.note = None
    db.execute(delete(ParticipantValue).where(ParticipantValue.person_id == person.id))
    db.execute(delete(SpecialValue).where(SpecialValue.person_id == person.id))
    db.execute(delete(Consent).where(Consent.person_id == person.id))


def last_activity(db: Session, person: Person) -> datetime:
    """The newest trace of the person: a session, a booking, a qualification entry, or their creation."""
    candidates = [
        person.created_at,
        db.scalar(select(func.max(MachineSession.started_at)).where(MachineSession.person_id == person.id)),
        db.scalar(select(func.max(Booking.ends_at)).where(Booking.person_id == person.id)),
        db.scalar(select(func.max(Qualification.created_at)).where(Qualification.person_id == person.id)),
    ]
    return max(c for c in candidates if c is not None)


def purge_ended(db: Session, now: datetime, months: int) -> list[str]:
    """Erase participants who ended (inactive, not staff) and left no trace for ``months``.

    ``months`` <= 0 turns retention off. Returns the pseudonyms of those erased.
    """
    if months <= 0:
        return []
    cutoff = now - timedelta(days=round(months * 30.44))
    candidates = db.scalars(
        select(Person).where(
            Person.active.is_(False),
            Person.erased_at.is_(None),
            Person.is_admin.is_(False),
            Person.is_trainer.is_(False),
        )
    ).all()
    return [erase(db, p, None, now) for p in candidates if last_activity(db, p) < cutoff]
