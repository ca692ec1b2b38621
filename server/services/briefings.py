"""Safety briefings on record (DGUV Vorschrift 1 §4: instruct before work, repeat at least once
a year, and keep proof): who was briefed on which content version, when, by which trainer, and
their own confirmation, a signature drawn on the trainer's tablet.

A briefing is a :class:`~server.models.StepRecord` of a briefing step, as the training service
records it (the first briefing may grant a level), plus a :class:`BriefingConfirmation` with the
content version and the signature. A repeat briefing of someone who is past that level is a
record of its own under the same staff rule. *Due*: the last briefing of a competency the person
holds is older than a year (or the competency's validity, when shorter) or coming up to it.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import (
    BriefingConfirmation,
    Competency,
    MachineType,
    Person,
    Qualification,
    Requirement,
    StepKind,
    StepRecord,
    TrainingStep,
)
from server.services import audit, qualifications, training
from server.services.training import TrainingError, add_months

REPEAT_MONTHS = 12
MAX_SIGNATURE_BYTES = 200 * 1024
PNG_PREFIX = "data:image/png;base64,"


def check_signature(data_url: str | None) -> str:
    """The signature pad's PNG as a data: URL: a real PNG, not too big, not blank."""
    if not data_url or not data_url.startswith(PNG_PREFIX):
        raise TrainingError("signature_missing", N_("Please let the participant sign on the pad."))
    if len(data_url) > MAX_SIGNATURE_BYTES * 4 // 3 + len(PNG_PREFIX) + 4:
        raise TrainingError(
            "signature_too_big", N_("The signature is too large. Clear the pad and sign again.")
        )
    try:
        raw = base64.b64decode(data_url[len(PNG_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise TrainingError("signature_missing", N_("Please let the participant sign on the pad.")) from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format != "PNG" or image.width > 2000 or image.height > 1000:
                raise TrainingError("signature_missing", N_("Please let the participant sign on the pad."))
            drawn = image.convert("LA")
            # Ink: any pixel that is both visible and not white.
            alpha = drawn.getchannel("A").point(lambda a: 255 if a > 32 else 0)
            dark = drawn.getchannel("L").point(lambda v: 255 if v < 200 else 0)
            from PIL import ImageChops

            if ImageChops.multiply(alpha, dark).getbbox() is None:
                raise TrainingError(
                    "signature_blank", N_("The pad is empty. Please let the participant sign.")
                )
    except (UnidentifiedImageError, OSError):
        raise TrainingError("signature_missing", N_("Please let the participant sign on the pad.")) from None
    return data_url


def record(
    db: Session,
    actor: Person,
    person: Person,
    step: TrainingStep,
    signature: str | None,
    now: datetime,
    today: date,
    note: str | None = None,
) -> tuple[StepRecord, Qualification | None]:
    """Record a briefing with the participant's signature. A briefing that is the person's next
    step goes through the training service (and may grant its level); a repeat of one already
    done is recorded under the same staff rule."""
    if step.kind != StepKind.BRIEFING:
        raise TrainingError("not_a_briefing", N_("Only briefings are signed here."))
    competency = step.competency
    training.check_staff(db, actor, person, competency, today, "step")
    data_url = check_signature(signature)
    pending = training.progress(db, person.id, competency, today)
    granted: Qualification | None = None
    if any(sp.step.id == step.id and not sp.done for sp in pending.steps):
        entry, granted = training.record_step(db, person, step, actor, now, today, note=note)
    else:
        entry = StepRecord(
            person_id=person.id,
            competency_id=competency.id,
            step_id=step.id,
            recorded_by_id=actor.id,
            source="web",
            note=(note or "").strip() or None,
            recorded_at=now,
        )
        db.add(entry)
        db.flush()
    db.add(
        BriefingConfirmation(
            step_record_id=entry.id, content_version=step.content_version, signature=data_url, signed_at=now
        )
    )
    audit.record(
        db,
        actor,
        "briefing.recorded",
        f"person:{person.id}",
        {
            "person": person.name,
            "competency": competency.slug,
            "step": step.name,
            "content_version": step.content_version,
            "signed": True,
        },
        at=now,
    )
    db.flush()
    return entry, granted


@dataclass
class Briefed:
    """One briefing on record."""

    record: StepRecord
    confirmation: BriefingConfirmation | None

    @property
    def on(self) -> datetime:
        return self.record.recorded_at


def history(
    db: Session, person_ids: list[int], competency_ids: list[int] | None = None
) -> dict[int, list[Briefed]]:
    """Briefing records per person, newest first."""
    if not person_ids:
        return {}
    query = (
        select(StepRecord, BriefingConfirmation)
        .join(TrainingStep, TrainingStep.id == StepRecord.step_id)
        .outerjoin(BriefingConfirmation, BriefingConfirmation.step_record_id == StepRecord.id)
        .where(StepRecord.person_id.in_(person_ids), TrainingStep.kind == StepKind.BRIEFING)
    )
    if competency_ids is not None:
        query = query.where(StepRecord.competency_id.in_(competency_ids))
    out: dict[int, list[Briefed]] = {pid: [] for pid in person_ids}
    for entry, confirmation in db.execute(query.order_by(StepRecord.recorded_at.desc())):
        out[entry.person_id].append(Briefed(entry, confirmation))
    return out


def repeat_months(competency: Competency) -> int:
    return min(REPEAT_MONTHS, competency.validity_months or REPEAT_MONTHS)


@dataclass
class Due:
    person: Person
    competency: Competency
    last: date | None  # None: never briefed on record
    due: date


def due(db: Session, site_id: int, today: date, within_days: int = 30) -> list[Due]:
    """Holders (at the site, active) of competencies that have a briefing step, whose last
    briefing is older than the repeat interval or will be within ``within_days``."""
    out: list[Due] = []
    competencies = [
        c
        for c in db.scalars(select(Competency).order_by(Competency.name))
        if any(s.kind == StepKind.BRIEFING for s in c.steps)
    ]
    people = db.scalars(
        select(Person).where(Person.site_id == site_id, Person.active.is_(True)).order_by(Person.name)
    ).all()
    records = history(db, [p.id for p in people], [c.id for c in competencies])
    for person in people:
        for competency in competencies:
            state = qualifications.state_of(qualifications.newest(db, person.id, competency.id), today)
            if state is None or state.revoked:
                continue
            mine = [b for b in records.get(person.id, []) if b.record.competency_id == competency.id]
            tz = ZoneInfo(person.site.timezone)
            last = mine[0].on.astimezone(tz).date() if mine else None
            due_on = add_months(last, repeat_months(competency)) if last else today
            if (due_on - today).days <= within_days:
                out.append(Due(person, competency, last, due_on))
    return sorted(out, key=lambda d: (d.due, d.person.name))


@dataclass
class ProofRow:
    person: Person
    briefings: list[Briefed]
    current: bool  # briefed within the repeat interval


def proof_list(db: Session, site_id: int, machine_type: MachineType, today: date) -> list[ProofRow]:
    """Everyone at the site who may use (or is training on) machines of this type, with every
    briefing on record for its competencies: what an inspector asks to see."""
    competency_ids = list(
        db.scalars(select(Requirement.competency_id).where(Requirement.machine_type_id == machine_type.id))
    )
    if not competency_ids:
        return []
    holders = db.scalars(
        select(Person)
        .join(Qualification, Qualification.person_id == Person.id)
        .where(Person.site_id == site_id, Qualification.competency_id.in_(competency_ids))
        .distinct()
        .order_by(Person.name)
    ).all()
    records = history(db, [p.id for p in holders], competency_ids)
    rows = []
    months = min(
        repeat_months(c) for c in db.scalars(select(Competency).where(Competency.id.in_(competency_ids)))
    )
    for person in holders:
        state = [
            qualifications.state_of(qualifications.newest(db, person.id, cid), today)
            for cid in competency_ids
        ]
        if all(s is None or s.revoked for s in state):
            continue
        mine = records.get(person.id, [])
        tz = ZoneInfo(person.site.timezone)
        current = bool(mine) and add_months(mine[0].on.astimezone(tz).date(), months) >= today
        rows.append(ProofRow(person, mine, current))
    return rows


def briefing_steps(db: Session) -> list[TrainingStep]:
    return list(
        db.scalars(
            select(TrainingStep)
            .where(TrainingStep.kind == StepKind.BRIEFING)
            .order_by(TrainingStep.competency_id, TrainingStep.position)
        )
    )
