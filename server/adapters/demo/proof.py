"""Demo data for the proof documents (docs/proof.md): a letterhead per site, cohort timetables,
check-ins at the entrance for the last months, briefings with signatures, exits with follow-ups
and programme targets, so that the attendance sheet, the certificates, the briefing proof list
and the funder report's outcomes have something to show on first start; and one programme that
asks a few optional questions with a consent text (docs/privacy.md, "Programme data").

One function, :func:`add_proof_demo`, on any lab (the demo lab of ``werkbank up`` or the years of
``werkbank demo-data``); it adds nothing when the database has check-ins already (idempotent).
"""

from __future__ import annotations

import base64
import io
import random
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.models import (
    Attendance,
    BriefingConfirmation,
    Consent,
    ConsentText,
    ExitReason,
    FieldKind,
    FollowUpStatus,
    MachineSession,
    ParticipantExit,
    ParticipantValue,
    Person,
    ProgrammeField,
    ProgrammeTarget,
    Site,
    SpecialValue,
    StepKind,
    StepRecord,
    TrainingStep,
)
from server.services import attendance
from server.services.training import add_months

CONTENT_VERSION = "2026-1"
# A simple mark for the letterhead (an SVG data: URL: no file to ship, no network).
LOGO_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="48" viewBox="0 0 120 48">'
    '<rect width="48" height="48" rx="8" fill="#1f5f8b"/>'
    '<path d="M8 12 L16 36 L24 18 L32 36 L40 12" stroke="#fff" stroke-width="5" fill="none"/>'
    '<text x="56" y="32" font-family="DejaVu Sans, sans-serif" font-size="18" fill="#1f5f8b">Lab</text></svg>'
)
LOGO = "data:image/svg+xml;base64," + base64.b64encode(LOGO_SVG.encode()).decode()
MAX_PEOPLE = 400  # check-ins for this many participants per site at most (the demo stays quick)
MAX_SIGNATURES = 300


def signature_png(rng: random.Random) -> str:
    """A hand-drawn-looking line, as the signature pad would post it."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (300, 100), "white")
    points = [(15 + i * 27, 50 + rng.randint(-30, 30)) for i in range(11)]
    ImageDraw.Draw(image).line(points, fill="black", width=3, joint="curve")
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def add_proof_demo(db: Session, now: datetime, seed: int = 19, months: int = 2) -> dict[str, int]:
    """Add the demo's proof data; returns what was added (all zero when it was there already)."""
    added: Counter[str] = _programme_data(db, now)
    if db.scalar(select(func.count(Attendance.id))):
        return dict(added)
    rng = random.Random(seed)
    for step in db.scalars(select(TrainingStep).where(TrainingStep.kind == StepKind.BRIEFING)):
        step.content_version = step.content_version or CONTENT_VERSION
    for site in db.scalars(select(Site).order_by(Site.id)):
        # A German lab's letterhead: its German name above the street.
        site.address = site.address or f"{site.name_de or site.name}\nWerkstraße 1\n10115 Berlin"
        site.logo = site.logo or LOGO
        added += _site(db, site, now, rng, months)
    if not db.scalar(select(func.count(ParticipantExit.id))):
        added += _former(db, now, rng)
    added += _briefings(db, now, rng)
    added += _targets(db)
    db.flush()
    return dict(added)


def _site(db: Session, site: Site, now: datetime, rng: random.Random, months: int) -> Counter[str]:
    added: Counter[str] = Counter()
    tz = ZoneInfo(site.timezone)
    today = now.astimezone(tz).date()
    for cohort in attendance.cohorts(db, site.id):
        if not attendance.timetable(db, site.id, cohort):
            attendance.set_timetable(db, site.id, cohort, [(d, time(9), time(15)) for d in range(4)])
            added["timetables"] += 1
    people = db.scalars(
        select(Person)
        .where(Person.site_id == site.id, Person.is_participant.is_(True), Person.erased_at.is_(None))
        .order_by(Person.id)
    ).all()
    start = (today.replace(day=1) - timedelta(days=1)).replace(day=1)
    for _ in range(months - 1):
        start = (start - timedelta(days=1)).replace(day=1)
    checked_in = 0
    for person in people:
        if person.active and person.cohort and checked_in < MAX_PEOPLE:
            checked_in += 1
            weekdays = attendance.expected_weekdays(db, site.id, person.cohort)
            joined = datetime.combine(start, time(0), tzinfo=tz).astimezone(UTC)
            # A lab loaded just now: its participants joined at the start of the demo months.
            # People whose joining the demo story wrote (a cohort that began last week) keep it:
            # nobody new this week was present in the months before.
            if person.created_at >= now - timedelta(days=1):
                person.created_at = min(person.created_at, joined)
            day = max(start, person.created_at.astimezone(tz).date())
            while day < today:
                if day.weekday() in weekdays and rng.random() < 0.85:
                    came = datetime.combine(day, time(8, 40), tzinfo=tz) + timedelta(
                        minutes=rng.randint(0, 35)
                    )
                    forgot = rng.random() < 0.04
                    went = None if forgot else came + timedelta(hours=5, minutes=rng.randint(30, 110))
                    if came < person.created_at:  # the joining day, before the record was made
                        day += timedelta(days=1)
                        continue
                    stay = Attendance(
                        person_id=person.id,
                        site_id=site.id,
                        checked_in_at=came.astimezone(UTC),
                        checked_out_at=went.astimezone(UTC) if went else None,
                        device_id=f"entrance-{site.slug}",
                    )
                    db.add(stay)
                    added["check-ins"] += 1
                day += timedelta(days=1)
        elif (
            not person.active
            and db.scalar(select(ParticipantExit.id).where(ParticipantExit.person_id == person.id)) is None
        ):
            added += _exit(db, person, now, tz, rng)
    db.flush()
    added["auto-closed"] += len(attendance.close_forgotten(db, now))
    return added


REASONS = (
    (ExitReason.EMPLOYMENT, 0.38),
    (ExitReason.APPRENTICESHIP, 0.14),
    (ExitReason.FURTHER_TRAINING, 0.2),
    (ExitReason.OTHER, 0.28),
)
FOLLOW_UP = {
    ExitReason.EMPLOYMENT: FollowUpStatus.EMPLOYED,
    ExitReason.APPRENTICESHIP: FollowUpStatus.APPRENTICESHIP,
    ExitReason.FURTHER_TRAINING: FollowUpStatus.FURTHER_TRAINING,
    ExitReason.OTHER: FollowUpStatus.UNEMPLOYED,
}


def _exit(db: Session, person: Person, now: datetime, tz: ZoneInfo, rng: random.Random) -> Counter[str]:
    last = db.scalar(select(func.max(MachineSession.started_at)).where(MachineSession.person_id == person.id))
    left = (last or person.created_at + timedelta(days=200)).astimezone(tz).date()
    left = min(left, now.astimezone(tz).date())
    reason = rng.choices([r for r, _ in REASONS], weights=[w for _, w in REASONS])[0]
    due = add_months(left, 6)
    entry = ParticipantExit(
        person_id=person.id,
        site_id=person.site_id,
        programme=person.programme,
        left_on=left,
        reason=reason,
        recorded_at=now,
        follow_up_due=due,
    )
    if due <= now.astimezone(tz).date() and rng.random() < 0.7:
        entry.follow_up_status = FOLLOW_UP[reason] if rng.random() < 0.8 else FollowUpStatus.UNKNOWN
        entry.follow_up_on = due + timedelta(days=rng.randint(0, 20))
    db.add(entry)
    return Counter(exits=1)


FORMER = ("Jana Schulz", "Murat Yilmaz", "Olga Petrova", "Tom Becker", "Sara Haddad", "Leon Wagner")


def _former(db: Session, now: datetime, rng: random.Random) -> Counter[str]:
    """The small demo lab has no one who left yet: a few former participants of each programme
    this year, so the funder report shows outcomes against the target."""
    added: Counter[str] = Counter()
    groups = db.execute(
        select(Person.site_id, Person.programme, Person.cohort)
        .where(Person.programme.is_not(None), Person.is_participant.is_(True))
        .distinct()
    ).all()
    for site_id, programme, cohort in groups:
        site = db.get(Site, site_id)
        assert site is not None
        tz = ZoneInfo(site.timezone)
        today = now.astimezone(tz).date()
        for i, name in enumerate(FORMER):
            joined = now - timedelta(days=300 + 20 * i)
            person = Person(
                site_id=site_id,
                name=name,
                programme=programme,
                cohort=cohort,
                active=False,
                language="de",
                created_at=joined,
            )
            db.add(person)
            db.flush()
            left = max(today.replace(month=1, day=1), today - timedelta(days=30 + 25 * i))
            person.created_at = min(joined, datetime.combine(left, time(9), tzinfo=tz).astimezone(UTC))
            db.add(
                ParticipantExit(
                    person_id=person.id,
                    site_id=site_id,
                    programme=programme,
                    left_on=left,
                    reason=REASONS[i % len(REASONS)][0],
                    recorded_at=now,
                    follow_up_due=add_months(left, 6),
                )
            )
            added["exits"] += 1
    return added


def _briefings(db: Session, now: datetime, rng: random.Random) -> Counter[str]:
    """A signature for the briefings of the last 14 months (older ones were on paper)."""
    since = now - timedelta(days=425)
    records = db.scalars(
        select(StepRecord)
        .join(TrainingStep, TrainingStep.id == StepRecord.step_id)
        .outerjoin(BriefingConfirmation, BriefingConfirmation.step_record_id == StepRecord.id)
        .where(
            TrainingStep.kind == StepKind.BRIEFING,
            StepRecord.recorded_at >= since,
            BriefingConfirmation.id.is_(None),
        )
        .order_by(StepRecord.recorded_at.desc())
        .limit(MAX_SIGNATURES)
    ).all()
    for record in records:
        db.add(
            BriefingConfirmation(
                step_record_id=record.id,
                content_version=record.step.content_version,
                signature=signature_png(rng),
                signed_at=record.recorded_at,
            )
        )
    return Counter(signatures=len(records))


def _targets(db: Session) -> Counter[str]:
    """A target per programme and year: about half of that year's exits as integrations, and
    the current year's from the last one (a funder sets it ahead)."""
    added: Counter[str] = Counter()
    rows = db.execute(
        select(ParticipantExit.programme, ParticipantExit.left_on).where(
            ParticipantExit.programme.is_not(None)
        )
    ).all()
    exits: Counter[tuple[str, int]] = Counter((p, d.year) for p, d in rows if p)
    programmes = {p for p, _ in exits} | set(
        db.scalars(select(Person.programme).where(Person.programme.is_not(None)).distinct())
    )
    this_year = date.today().year
    for programme in sorted(p for p in programmes if p):
        years = {y for p, y in exits if p == programme} | {this_year}
        for year in sorted(years):
            if db.scalar(
                select(ProgrammeTarget.id).where(
                    ProgrammeTarget.programme == programme, ProgrammeTarget.year == year
                )
            ):
                continue
            base = exits.get((programme, year)) or exits.get((programme, year - 1)) or 4
            db.add(ProgrammeTarget(programme=programme, year=year, integrations=max(1, round(base * 0.5))))
            added["targets"] += 1
    return added


CONSENT_DE = (
    "Ich bin damit einverstanden, dass die Einrichtung meine Angaben zu Schulabschluss, "
    "Arbeitslosigkeit und Unterstützungsbedarf für die Durchführung und den Nachweis der Maßnahme "
    "speichert und dem Fördergeber nur unter einem Pseudonym meldet. Ich kann diese Einwilligung "
    "jederzeit widerrufen; die Angaben werden dann gelöscht."
)
CONSENT_EN = (
    "I agree that the lab stores my school qualification, how long I have been out of work and my "
    "support needs to run and report the programme, and reports them to the funder only under a "
    "pseudonym. I can withdraw this consent at any time; the data are then erased."
)
SCHOOL = [
    {"key": "none", "en": "None", "de": "Ohne Abschluss"},
    {"key": "lower_secondary", "en": "Lower secondary", "de": "Hauptschulabschluss"},
    {"key": "intermediate", "en": "Intermediate", "de": "Mittlerer Schulabschluss"},
    {"key": "upper_secondary", "en": "Upper secondary", "de": "Abitur oder Fachabitur"},
    {"key": "abroad", "en": "From abroad", "de": "Im Ausland erworben"},
]


def _programme_data(db: Session, now: datetime) -> Counter[str]:
    """The programme most participants are in asks four optional questions (one a special
    category) under a consent text; three of its participants agreed and have answers. Nothing
    is required: the other programmes ask for nothing. Once only (no fields yet)."""
    added: Counter[str] = Counter()
    if db.scalar(select(func.count(ProgrammeField.id))):
        return added
    counts = db.execute(
        select(Person.programme, func.count())
        .where(Person.programme.is_not(None), Person.is_participant.is_(True), Person.erased_at.is_(None))
        .group_by(Person.programme)
    ).all()
    if not counts:
        return added
    programme = sorted(counts, key=lambda row: (-row[1], row[0]))[0][0]
    fields = [
        ProgrammeField(
            programme=programme,
            key="jobcenter_customer_number",
            label="Jobcenter customer number",
            label_de="Kundennummer beim Jobcenter",
            kind=FieldKind.TEXT,
            needs_consent=False,  # the programme's contract with the Jobcenter is the basis
            position=0,
        ),
        ProgrammeField(
            programme=programme,
            key="school",
            label="Highest school qualification",
            label_de="Höchster Schulabschluss",
            kind=FieldKind.CHOICE,
            options=SCHOOL,
            position=1,
        ),
        ProgrammeField(
            programme=programme,
            key="unemployed_since",
            label="Out of work since",
            label_de="Arbeitslos seit",
            kind=FieldKind.DATE,
            position=2,
        ),
        ProgrammeField(
            programme=programme,
            key="support_needs",
            label="Needs support because of a disability or illness",
            label_de="Unterstützungsbedarf wegen Behinderung oder Erkrankung",
            kind=FieldKind.YES_NO,
            special=True,
            position=3,
        ),
    ]
    db.add_all(fields)
    text = ConsentText(programme=programme, version=1, text=CONSENT_EN, text_de=CONSENT_DE, created_at=now)
    db.add(text)
    db.flush()
    added["programme fields"] = len(fields)
    people = db.scalars(
        select(Person)
        .where(Person.programme == programme, Person.is_participant.is_(True), Person.active.is_(True))
        .order_by(Person.id)
        .limit(3)
    ).all()
    for number, person in enumerate(people):
        agreed = now - timedelta(days=30 + number)
        db.add(
            Consent(
                person_id=person.id,
                programme=programme,
                text=CONSENT_DE if person.language == "de" else CONSENT_EN,
                consent_text_id=text.id,
                version=1,
                language="de" if person.language == "de" else "en",
                agreed_at=agreed,
                recorded_at=agreed,
            )
        )
        answers = {
            fields[0].id: f"123D{4567 + number:05d}",
            fields[1].id: SCHOOL[(number + 1) % len(SCHOOL)]["key"],
            fields[2].id: (agreed.date() - timedelta(days=400 + 90 * number)).isoformat(),
        }
        for field_id, value in answers.items():
            db.add(ParticipantValue(person_id=person.id, field_id=field_id, value=value, recorded_at=agreed))
        if number == 0:
            db.add(SpecialValue(person_id=person.id, field_id=fields[3].id, value="yes", recorded_at=agreed))
        added["consents"] += 1
    db.flush()
    return added
