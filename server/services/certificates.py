"""Certificates people can use: a participation certificate and a competence pass, signed by
the lab and verifiable by anyone, online under a short URL or offline with the lab's public key.

A certificate stores its *facts* as they stood when it was issued (names, period, hours,
competencies with level, date, trainer, supervised hours and steps), as plain JSON, and a
signature over their canonical form (sorted keys, no spaces, UTF-8): **Ed25519** under the lab's
signing key (``server.services.lab_keys``, made on first use; its public half is published), as
``ed25519:<key id>:<signature, base64url>``. Anyone with the public key checks the facts without
the server (:func:`check_offline`); the verification page checks them too, and whether the lab
revoked the certificate since. Certificates issued before were signed with HMAC-SHA256 under
``WERKBANK_CERTIFICATE_KEY`` (else a key derived from ``SECRET_KEY``): a hex signature, which
only the server can check, and still does (:func:`hmac_key`). An edited row no longer verifies
either way. The code in the URL is 10 random characters (50 bits): it cannot be guessed, so the
page needs no login.

Issuing follows the staff rule (``training.check_records``: trainers at their own site,
admins anywhere, nobody for themselves); every issue and revocation is audited. When a person
is erased (server.services.privacy) their certificates' facts are erased too and the
certificates read as withdrawn.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import (
    Certificate,
    CertificateKind,
    Competency,
    MachineSession,
    ParticipantExit,
    Person,
    Qualification,
    QualificationAction,
    StepKind,
    StepRecord,
)
from server.services import attendance, audit, lab_keys, qualifications, training
from server.services.training import TrainingError

# Crockford's base32 without I, L, O, U: nothing to misread on paper.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 10
LANGUAGES = ("de", "en")
ERASED = "erased"


ED25519 = "ed25519"


def hmac_key(config: Any) -> bytes:
    """The key certificates issued before Ed25519 were signed with (HMAC-SHA256): its own setting,
    else one derived from SECRET_KEY (so changing SECRET_KEY without setting this one makes those
    certificates fail to verify)."""
    own = config.get("CERTIFICATE_KEY")
    if own:
        return str(own).encode()
    return hmac.new(str(config["SECRET_KEY"]).encode(), b"werkbank certificates", hashlib.sha256).digest()


def canonical(facts: dict[str, Any]) -> bytes:
    return json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def hmac_signature(facts: dict[str, Any], key: bytes) -> str:
    """The old signature: HMAC-SHA256, hex (certificates issued before Ed25519)."""
    return hmac.new(key, canonical(facts), hashlib.sha256).hexdigest()


def sign(facts: dict[str, Any], key_id: str, private: Ed25519PrivateKey) -> str:
    """``ed25519:<key id>:<signature>`` (base64url without padding) over the canonical facts."""
    raw = private.sign(canonical(facts))
    return f"{ED25519}:{key_id}:{base64.urlsafe_b64encode(raw).decode().rstrip('=')}"


def check_offline(facts: dict[str, Any], signature: str, public_keys: dict[str, Ed25519PublicKey]) -> bool:
    """Whether ``signature`` (``ed25519:<key id>:<base64url>``) is the lab's over ``facts``, by
    one of its public keys (key id to key), as anyone can check it without the server."""
    parts = signature.split(":")
    if len(parts) != 3 or parts[0] != ED25519 or parts[1] not in public_keys:
        return False
    try:
        raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
        public_keys[parts[1]].verify(raw, canonical(facts))
    except (InvalidSignature, ValueError):
        return False
    return True


def check(db: Session, facts: dict[str, Any], signature: str, legacy_key: bytes) -> bool:
    """The signature of stored facts: Ed25519 by a key of the lab, or the old HMAC."""
    if signature.startswith(f"{ED25519}:"):
        keys = {k.key_id: k.key for k in lab_keys.public_keys(db)}
        return check_offline(facts, signature, keys)
    return hmac.compare_digest(signature, hmac_signature(facts, legacy_key))


def signed_document(certificate: Certificate) -> dict[str, Any]:
    """What an employer keeps to check a certificate offline: the facts exactly as signed, the
    signature, and how (docs/proof.md, "Checking offline")."""
    algorithm = ED25519 if certificate.signature.startswith(f"{ED25519}:") else "hmac-sha256"
    return {
        "format": "werkbank-certificate/1",
        "algorithm": algorithm,
        "key_id": certificate.signature.split(":")[1] if algorithm == ED25519 else None,
        "signed": "the facts' canonical JSON: sorted keys, no spaces, UTF-8",
        "facts": certificate.facts,
        "signature": certificate.signature,
    }


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def pretty_code(code: str) -> str:
    """``ABCD-EFGH-JK``: easier to type from paper."""
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def normal_code(text: str) -> str:
    """What someone typed (lower case, dashes, O for 0) as the stored code."""
    cleaned = (
        text.upper().replace("-", "").replace(" ", "").replace("O", "0").replace("I", "1").replace("L", "1")
    )
    return cleaned


# -- facts ----------------------------------------------------------------------------------------


def _day(when: datetime, tz: str) -> date:
    return when.astimezone(ZoneInfo(tz)).date()


def _default_period(
    person: Person, now: datetime, left_on: date | None, first_seen: datetime | None
) -> tuple[date, date]:
    """From the person's start (joining, or their first session when earlier) to their exit, or
    today."""
    tz = person.site.timezone
    first = min(_day(person.created_at, tz), _day(first_seen, tz) if first_seen else _day(now, tz))
    return first, left_on if left_on is not None else _day(now, tz)


def _participation(
    person: Person, first: date, last: date, days: dict[date, attendance.Day]
) -> dict[str, Any]:
    if last < first:
        raise TrainingError("bad_period", N_("The period ends before it starts."))
    present = [d for day, d in days.items() if first <= day <= last and d.present]
    return {
        "kind": CertificateKind.PARTICIPATION.value,
        "person": person.name,
        "lab": person.site.name,
        "lab_de": person.site.name_de or person.site.name,
        "programme": person.programme,
        "cohort": person.cohort,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "days": len(present),
        "hours": round(sum(d.present_s for d in present) / 3600.0, 1),
    }


def participation_facts(
    db: Session, person: Person, now: datetime, first: date | None = None, last: date | None = None
) -> dict[str, Any]:
    """The period (default: from the person's start to their exit, or today), the days and hours
    present in it, the programme and cohort."""
    left_on = db.scalar(select(ParticipantExit.left_on).where(ParticipantExit.person_id == person.id))
    first_seen = (
        db.scalar(select(func.min(MachineSession.started_at)).where(MachineSession.person_id == person.id))
        if first is None
        else None
    )
    default_first, default_last = _default_period(person, now, left_on, first_seen)
    first = default_first if first is None else first
    last = default_last if last is None else last
    if last < first:
        raise TrainingError("bad_period", N_("The period ends before it starts."))
    days = attendance.presence(db, [person.id], first, last, person.site.timezone, now).get(person.id, {})
    return _participation(person, first, last, days)


def participation_facts_of(
    db: Session, people: Sequence[Person], now: datetime
) -> dict[int, dict[str, Any] | TrainingError]:
    """:func:`participation_facts` over the default periods of many people of one site (a
    cohort's certificates) in a few queries instead of five per person: their exits, first
    sessions and presence over the span of all their periods at once, then each person's days
    cut to their own period (presence is counted per local day, so the days are the same). A
    person whose period cannot be certified has the refusal instead."""
    if not people:
        return {}
    ids = [p.id for p in people]
    exits: dict[int, date] = {
        person_id: left_on
        for person_id, left_on in db.execute(
            select(ParticipantExit.person_id, ParticipantExit.left_on).where(
                ParticipantExit.person_id.in_(ids)
            )
        )
    }
    first_seen: dict[int, datetime] = {
        person_id: started
        for person_id, started in db.execute(
            select(MachineSession.person_id, func.min(MachineSession.started_at))
            .where(MachineSession.person_id.in_(ids))
            .group_by(MachineSession.person_id)
        )
        if person_id is not None and started is not None
    }
    periods = {p.id: _default_period(p, now, exits.get(p.id), first_seen.get(p.id)) for p in people}
    tz = people[0].site.timezone
    if any(p.site_id != people[0].site_id for p in people):
        raise ValueError("participation_facts_of: people of one site only")  # pragma: no cover
    days = attendance.presence(
        db,
        ids,
        min(first for first, _ in periods.values()),
        max(max(first, last) for first, last in periods.values()),
        tz,
        now,
    )
    out: dict[int, dict[str, Any] | TrainingError] = {}
    for person in people:
        first, last = periods[person.id]
        try:
            out[person.id] = _participation(person, first, last, days.get(person.id, {}))
        except TrainingError as refused:
            out[person.id] = refused
    return out


def competence_facts(db: Session, person: Person, now: datetime) -> dict[str, Any]:
    """Each competency the person holds (not revoked): its level, since when, granted by whom,
    valid until, the supervised hours and the steps done with date and trainer."""
    tz = person.site.timezone
    today = _day(now, tz)
    items = []
    for competency in db.scalars(select(Competency).order_by(Competency.name)):
        entry = qualifications.newest(db, person.id, competency.id)
        state = qualifications.state_of(entry, today)
        if entry is None or state is None or state.revoked:
            continue
        # The date and trainer of the level held: the newest grant (a renewal keeps the level).
        granted = (
            db.scalar(
                select(Qualification)
                .where(
                    Qualification.person_id == person.id,
                    Qualification.competency_id == competency.id,
                    Qualification.action == QualificationAction.GRANTED,
                    Qualification.level == entry.level,
                )
                .order_by(Qualification.id.desc())
                .limit(1)
            )
            or entry
        )
        trainer = db.get(Person, granted.granted_by_id) if granted.granted_by_id else None
        steps = []
        for record in db.scalars(
            select(StepRecord)
            .where(StepRecord.person_id == person.id, StepRecord.competency_id == competency.id)
            .order_by(StepRecord.recorded_at)
        ):
            if record.step.kind == StepKind.SUPERVISED_HOURS:
                continue
            steps.append(
                {
                    "step": record.step.name,
                    "step_de": record.step.name_de or record.step.name,
                    "kind": record.step.kind,
                    "on": _day(record.recorded_at, tz).isoformat(),
                    "trainer": record.recorded_by.name if record.recorded_by else None,
                }
            )
        items.append(
            {
                "competency": competency.name,
                "competency_de": competency.name_de or competency.name,
                "level": entry.level.value,
                "since": _day(granted.created_at, tz).isoformat(),
                "trainer": trainer.name if trainer is not None else None,
                "valid_until": state.valid_until.isoformat() if state.valid_until else None,
                "expired": state.expired,
                "supervised_hours": round(training.supervised_hours(db, person.id, competency.id), 1),
                "steps": steps,
            }
        )
    return {
        "kind": CertificateKind.COMPETENCE.value,
        "person": person.name,
        "lab": person.site.name,
        "lab_de": person.site.name_de or person.site.name,
        "programme": person.programme,
        "competencies": items,
    }


# -- issuing ----------------------------------------------------------------------------------------


def _check(actor: Person, person: Person, language: str) -> None:
    training.check_records(actor, person, "certificate")
    if language not in LANGUAGES:
        raise TrainingError("bad_language", N_("Certificates are made in German or English."))
    if person.erased_at is not None:
        raise TrainingError("erased", N_("This person's data was erased."))


def _competence(db: Session, person: Person, now: datetime) -> dict[str, Any]:
    facts = competence_facts(db, person, now)
    if not facts["competencies"]:
        raise TrainingError(
            "no_competencies",
            N_("{person} holds no competency yet: there is nothing to certify."),
            person=person.name,
        )
    return facts


def _record(
    db: Session,
    actor: Person,
    person: Person,
    kind: CertificateKind,
    language: str,
    now: datetime,
    facts: dict[str, Any],
) -> Certificate:
    """Sign (Ed25519, the lab's key) and store the facts as a certificate, audited."""
    facts["issued"] = _day(now, person.site.timezone).isoformat()
    facts["issued_by"] = actor.name
    code = new_code()
    while db.scalar(select(Certificate.id).where(Certificate.code == code)) is not None:
        code = new_code()  # pragma: no cover - 50 bits rarely collide
    facts["code"] = code
    certificate = Certificate(
        code=code,
        kind=kind,
        person_id=person.id,
        site_id=person.site_id,
        language=language,
        facts=facts,
        signature=sign(facts, *lab_keys.signing_key(db)),
        issued_at=now,
        issued_by_id=actor.id,
    )
    db.add(certificate)
    audit.record(
        db,
        actor,
        "certificate.issued",
        f"person:{person.id}",
        {"person": person.name, "kind": kind.value, "code": code, "language": language},
        at=now,
    )
    db.flush()
    return certificate


def issue(
    db: Session,
    actor: Person,
    person: Person,
    kind: CertificateKind,
    language: str,
    now: datetime,
    *,
    first: date | None = None,
    last: date | None = None,
) -> Certificate:
    _check(actor, person, language)
    if kind == CertificateKind.PARTICIPATION:
        facts = participation_facts(db, person, now, first, last)
    else:
        facts = _competence(db, person, now)
    return _record(db, actor, person, kind, language, now, facts)


def issue_for_cohort(
    db: Session,
    actor: Person,
    site_id: int,
    cohort: str,
    kind: CertificateKind,
    language: str,
    now: datetime,
) -> tuple[list[Certificate], list[tuple[Person, TrainingError]]]:
    """One certificate for each active participant of the cohort at the site; those that cannot
    have one (no competency yet) are returned with the reason instead. Participation facts
    are computed for the whole cohort at once (:func:`participation_facts_of`)."""
    people = db.scalars(
        select(Person)
        .where(
            Person.site_id == site_id,
            Person.cohort == cohort,
            Person.is_participant.is_(True),
            Person.erased_at.is_(None),
        )
        .order_by(Person.name)
    ).all()
    participation = participation_facts_of(db, people, now) if kind == CertificateKind.PARTICIPATION else {}
    issued: list[Certificate] = []
    skipped: list[tuple[Person, TrainingError]] = []
    for person in people:
        try:
            _check(actor, person, language)
            if kind == CertificateKind.PARTICIPATION:
                facts = participation[person.id]
                if isinstance(facts, TrainingError):
                    raise facts
            else:
                facts = _competence(db, person, now)
            issued.append(_record(db, actor, person, kind, language, now, facts))
        except TrainingError as refused:
            if refused.forbidden:
                raise
            skipped.append((person, refused))
    return issued, skipped


def revoke(db: Session, actor: Person, certificate: Certificate, reason: str | None, now: datetime) -> None:
    training.check_records(actor, certificate.person, "certificate")
    text = (reason or "").strip()
    if not text:
        raise TrainingError("reason_required", N_("Please give a reason."))
    if certificate.revoked_at is None:
        certificate.revoked_at = now
        certificate.revoked_by_id = actor.id
        certificate.revoke_reason = text
        audit.record(
            db,
            actor,
            "certificate.revoked",
            f"person:{certificate.person_id}",
            {"code": certificate.code, "reason": text},
            at=now,
        )
        db.flush()


def of_person(db: Session, person_id: int) -> list[Certificate]:
    return list(
        db.scalars(
            select(Certificate).where(Certificate.person_id == person_id).order_by(Certificate.id.desc())
        )
    )


def by_code(db: Session, code: str) -> Certificate | None:
    return db.scalar(select(Certificate).where(Certificate.code == normal_code(code)))


@dataclass(frozen=True)
class Verification:
    """What the public page tells an employer."""

    certificate: Certificate | None
    genuine: bool  # the signature matches the stored facts
    revoked: bool
    erased: bool

    @property
    def valid(self) -> bool:
        return self.certificate is not None and self.genuine and not self.revoked


def verify(db: Session, code: str, legacy_key: bytes) -> Verification:
    """The certificate of ``code``, whether its signature (Ed25519, or the old HMAC under
    ``legacy_key``) matches its stored facts, and whether it was revoked or withdrawn."""
    certificate = by_code(db, code)
    if certificate is None:
        return Verification(None, False, False, False)
    erased = certificate.revoke_reason == ERASED
    genuine = not erased and check(db, certificate.facts, certificate.signature, legacy_key)
    return Verification(certificate, genuine, certificate.revoked_at is not None, erased)


def forget(db: Session, person: Person, now: datetime) -> int:
    """The person is being erased: their certificates keep no facts and read as withdrawn."""
    count = 0
    for certificate in db.scalars(select(Certificate).where(Certificate.person_id == person.id)):
        certificate.facts = {}
        certificate.revoked_at = certificate.revoked_at or now
        certificate.revoke_reason = ERASED
        count += 1
    return count
