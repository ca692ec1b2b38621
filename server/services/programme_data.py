"""Participant data a programme asks for (docs/privacy.md, "Programme data"): the fields and the
versioned consent texts admins set up per programme, the values staff enter on a participant's
page, the participant's consent and its withdrawal, and the special categories of personal data
(GDPR Art. 9) kept apart.

Rules (where the issue left room, these are our choices):

* A programme is the name in ``Person.programme``. Its fields ask for text, a date, one of a list
  of options, or yes/no; each is required or optional, ordinary or a special category, and needs
  the participant's consent or not (a field the programme's contract or a legal duty covers, such
  as a Jobcenter customer number, does not). A special category always needs consent: the explicit
  consent of Art. 9(2)(a) is the basis a lab has.
* Once a field has answers its kind, its special flag and its need for consent no longer change,
  and an option in use is not removed: the answers would then sit in the wrong table, without
  their basis, or point at nothing. Make a new field instead.
* A consent text is never edited: a changed text is a new version. Staff record that the person
  agreed to the programme's current version (which version, in which language, on which day, by
  whom); consent to an earlier version still counts until withdrawn, and the page says that a
  newer one exists.
* Who enters data and records or withdraws consent: the staff rule for records
  (``training.check_records``): trainers at their own site, admins anywhere, nobody on their own
  record. Special categories: admins only, seeing them included; every view, change and export of
  them is audited (``programme.special_viewed``, ``programme.special_changed``,
  ``programme.special_exported``). Refusals are audited as ``training.refused`` and counted.
* A value of a field that needs consent is taken only while the consent stands. Withdrawing the
  consent **erases** (deletes) the values of every field of the programme that needs it, ordinary
  and special: GDPR Art. 17(1)(b), nothing hidden that could come back. The consent rows stay
  (what was agreed, when, withdrawn when and by whom) as the lab's proof that it had the basis.
* A required field must have a value when the form is saved (one that needs consent only while the
  consent stands). A form with any bad value changes nothing; the refusal is logged (never the
  values) and counted in :data:`REJECTED`.
* The audit log never holds a value, only field keys: erasing a person could not find a value in it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from server.i18n import N_, Localised
from server.models import (
    Consent,
    ConsentText,
    FieldKind,
    ParticipantValue,
    Person,
    ProgrammeField,
    ProgrammeTarget,
    SpecialValue,
)
from server.services import audit, training
from server.services.training import Attempt, TrainingError

log = logging.getLogger(__name__)

MAX_PROGRAMME = 100
MAX_LABEL = 200
MAX_TEXT = 500
MAX_OPTIONS = 50
MAX_OPTION = 100
MAX_CONSENT_TEXT = 20000
EARLIEST = date(1900, 1, 1)
LATEST = date(2100, 12, 31)
YES, NO = "yes", "no"
# Control characters (a NUL byte would make PostgreSQL refuse the row; none belongs in a value).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

SPECIAL_ONLY = N_("Only admins see and change special categories of personal data.")

KIND_LABELS: dict[FieldKind, str] = {
    FieldKind.TEXT: N_("Text"),
    FieldKind.DATE: N_("Date"),
    FieldKind.CHOICE: N_("Choice"),
    FieldKind.YES_NO: N_("Yes or no"),
}

# Refused forms by reason in this process (each is logged, never with the values).
REJECTED: Counter[str] = Counter()
_rejected_lock = threading.Lock()


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a form: the form field it belongs to ("" for the whole form), a
    translatable message (``N_``) with ``{name}`` placeholders, and their values."""

    field: str
    message: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


class ProgrammeDataError(ValueError):
    """A form the rules refuse; nothing was changed. ``problems`` say what and where."""

    def __init__(self, problems: list[Problem], *, reason: str) -> None:
        self.problems = problems
        self.reason = reason
        # In English with the values filled in, for logs and tests; pages translate each problem.
        texts = [p.message.format(**{k: str(v) for k, v in p.params.items()}) for p in problems]
        super().__init__(f"{reason}: " + "; ".join(texts))


ValueTable = type[ParticipantValue] | type[SpecialValue]


def _table(special: bool) -> ValueTable:
    """Where a field's values live: special categories in a table of their own."""
    return SpecialValue if special else ParticipantValue


def _rows(db: Session, table: ValueTable, *where: Any) -> list[ParticipantValue | SpecialValue]:
    """The rows of ``table`` (one of the two value tables) that match ``where``."""
    # A union of two mapped classes makes select() infer their common base; both have the same columns.
    return cast(list[ParticipantValue | SpecialValue], list(db.scalars(select(table).where(*where))))


def refuse(problems: list[Problem], reason: str, subject: str) -> ProgrammeDataError:
    """The error for a refused form, logged (where, never the values) and counted by ``reason``."""
    with _rejected_lock:
        REJECTED[reason] += 1
    log.warning(
        "programme data refused (%s) for %s: %s", reason, subject, ", ".join(p.field or "-" for p in problems)
    )
    return ProgrammeDataError(problems, reason=reason)


# -- programmes, fields and consent texts (admins) ----------------------------------------------


def programmes(db: Session) -> list[str]:
    """Every programme name in use: participants', targets', and those with fields or consent texts."""
    names: set[str] = set()
    for column in (
        Person.programme,
        ProgrammeTarget.programme,
        ProgrammeField.programme,
        ConsentText.programme,
    ):
        names.update(n for n in db.scalars(select(column).distinct()) if n)
    return sorted(names, key=str.casefold)


def check_programme(name: str) -> str:
    """The programme name as given, stripped; refused when empty, too long or with control characters."""
    text = (name or "").strip()
    if not text or len(text) > MAX_PROGRAMME or CONTROL.search(text):
        raise refuse(
            [
                Problem(
                    "programme",
                    N_("Give the programme's name (at most {max} characters)."),
                    {"max": MAX_PROGRAMME},
                )
            ],
            "programme_name",
            "programme",
        )
    return text


def fields_of(db: Session, programme: str | None, *, special: bool | None = None) -> list[ProgrammeField]:
    """The fields of ``programme`` in their order; ``special`` True/False: only those/the others."""
    if not programme:
        return []
    query = select(ProgrammeField).where(ProgrammeField.programme == programme)
    if special is not None:
        query = query.where(ProgrammeField.special.is_(special))
    return list(db.scalars(query.order_by(ProgrammeField.position, ProgrammeField.id)))


def answers(db: Session, programme_field: ProgrammeField) -> int:
    """How many people have a value for the field."""
    table = _table(programme_field.special)
    return db.scalar(select(func.count()).select_from(table).where(table.field_id == programme_field.id)) or 0


def consent_texts(db: Session, programme: str) -> list[ConsentText]:
    """The programme's consent texts, newest version first."""
    return list(
        db.scalars(
            select(ConsentText).where(ConsentText.programme == programme).order_by(ConsentText.version.desc())
        )
    )


def current_text(db: Session, programme: str | None) -> ConsentText | None:
    if not programme:
        return None
    return db.scalar(
        select(ConsentText)
        .where(ConsentText.programme == programme)
        .order_by(ConsentText.version.desc())
        .limit(1)
    )


@dataclass(frozen=True)
class FieldSpec:
    """A field as the admin's form gives it. ``options``: one option a line, ``English | Deutsch``."""

    label: str
    label_de: str | None
    kind: FieldKind
    options: str
    required: bool
    special: bool
    needs_consent: bool


def slug(text: str, taken: Iterable[str] = (), *, length: int = 40) -> str:
    """A key for ``text``: lower-case ASCII letters, digits and ``_``, not one of ``taken``."""
    plain = unicodedata.normalize("NFKD", text.replace("ß", "ss")).encode("ascii", "ignore").decode()
    base = re.sub(r"[^a-z0-9]+", "_", plain.lower()).strip("_")[: length - 4] or "field"
    used = set(taken)
    key, number = base, 2
    while key in used:
        key, number = f"{base}_{number}", number + 1
    return key


def parse_options(
    text: str, before: list[dict[str, str]] | None = None
) -> tuple[list[dict[str, str]], list[Problem]]:
    """The options of a choice from the form's lines (``English | Deutsch`` or one label for both).

    An option keeps its key while its English label stays the same, so answers keep pointing at it."""
    keys = {o["en"]: o["key"] for o in before or []}
    options: list[dict[str, str]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, line in enumerate((text or "").splitlines(), start=1):
        if not line.strip():
            continue
        english, _bar, german = (part.strip() for part in line.partition("|"))
        english = english or german
        if (
            not english
            or len(english) > MAX_OPTION
            or len(german) > MAX_OPTION
            or CONTROL.search(english + german)
        ):
            problems.append(
                Problem(
                    "options",
                    N_("Line {line}: an option has a label of at most {max} characters."),
                    {"line": number, "max": MAX_OPTION},
                )
            )
            continue
        if english.casefold() in seen:
            problems.append(
                Problem(
                    "options",
                    N_("Line {line}: “{option}” is there twice."),
                    {"line": number, "option": english},
                )
            )
            continue
        seen.add(english.casefold())
        key = keys.get(english) or slug(english, [o["key"] for o in options] + list(keys.values()))
        options.append({"key": key, "en": english, "de": german or english})
    if not problems and not 2 <= len(options) <= MAX_OPTIONS:
        problems.append(
            Problem("options", N_("Give between 2 and {max} options, one a line."), {"max": MAX_OPTIONS})
        )
    return options, problems


def save_field(
    db: Session,
    actor: Person,
    programme: str,
    spec: FieldSpec,
    now: datetime,
    existing: ProgrammeField | None = None,
) -> ProgrammeField:
    """Add a field to ``programme`` (or change ``existing``); audited. Raises ProgrammeDataError."""
    programme = check_programme(programme)
    problems: list[Problem] = []
    label = (spec.label or "").strip()
    label_de = (spec.label_de or "").strip() or None
    if not label or len(label) > MAX_LABEL or CONTROL.search(label):
        problems.append(Problem("label", N_("Give a label of at most {max} characters."), {"max": MAX_LABEL}))
    if label_de is not None and (len(label_de) > MAX_LABEL or CONTROL.search(label_de)):
        problems.append(
            Problem("label_de", N_("Give a label of at most {max} characters."), {"max": MAX_LABEL})
        )
    options: list[dict[str, str]] | None = None
    if spec.kind == FieldKind.CHOICE:
        options, option_problems = parse_options(spec.options, existing.options if existing else None)
        problems += option_problems
    if spec.special and not spec.needs_consent:
        problems.append(
            Problem(
                "needs_consent",
                N_("A special category needs the participant's explicit consent (GDPR Art. 9)."),
            )
        )
    if existing is not None:
        used = answers(db, existing)
        if used:
            for name, before, after in (
                ("kind", existing.kind, spec.kind),
                ("special", existing.special, spec.special),
                ("needs_consent", existing.needs_consent, spec.needs_consent),
            ):
                if before != after:
                    problems.append(
                        Problem(
                            name,
                            N_(
                                "{count} people have answered this field: its kind, special category "
                                "and consent can no longer change. Make a new field instead."
                            ),
                            {"count": used},
                        )
                    )
            if options is not None and existing.kind == FieldKind.CHOICE:
                kept = {o["key"] for o in options}
                for gone in (o for o in existing.options or [] if o["key"] not in kept):
                    in_use = _option_answers(db, existing, gone["key"])
                    if in_use:
                        problems.append(
                            Problem(
                                "options",
                                N_("{count} answers are “{option}”: keep that option."),
                                {"count": in_use, "option": gone["en"]},
                            )
                        )
    if problems:
        raise refuse(problems, "field_form", f"programme {programme!r}")
    values: dict[str, Any] = {
        "label": label,
        "label_de": label_de,
        "kind": spec.kind,
        "options": options,
        "required": bool(spec.required),
        "special": bool(spec.special),
        "needs_consent": bool(spec.needs_consent or spec.special),
    }
    if existing is None:
        taken = [f.key for f in fields_of(db, programme)]
        position = 1 + max((f.position for f in fields_of(db, programme)), default=-1)
        existing = ProgrammeField(programme=programme, key=slug(label, taken), position=position, **values)
        db.add(existing)
        db.flush()
        audit.record(
            db,
            actor,
            "programme.field_created",
            f"programme_field:{existing.id}",
            {"programme": programme, "key": existing.key, **_plain(values)},
            at=now,
        )
        return existing
    changes: dict[str, list[Any]] = {}
    for name, value in values.items():
        before = getattr(existing, name)
        if _plain({name: before}) != _plain({name: value}):
            changes[name] = [_plain({name: before})[name], _plain({name: value})[name]]
            setattr(existing, name, value)
    if changes:
        audit.record(
            db,
            actor,
            "programme.field_changed",
            f"programme_field:{existing.id}",
            {"programme": programme, "key": existing.key, "changes": changes},
            at=now,
        )
    db.flush()
    return existing


def _plain(values: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.value if isinstance(v, FieldKind) else v) for k, v in values.items()}


def _option_answers(db: Session, programme_field: ProgrammeField, key: str) -> int:
    table = _table(programme_field.special)
    return (
        db.scalar(
            select(func.count())
            .select_from(table)
            .where(table.field_id == programme_field.id, table.value == key)
        )
        or 0
    )


def move_field(db: Session, actor: Person, programme_field: ProgrammeField, step: int, now: datetime) -> None:
    """Move the field one place up (-1) or down (+1) in its programme's form."""
    order = fields_of(db, programme_field.programme)
    index = next(i for i, f in enumerate(order) if f.id == programme_field.id)
    other = index + (1 if step > 0 else -1)
    if not 0 <= other < len(order):
        return
    order[index], order[other] = order[other], order[index]
    for position, f in enumerate(order):
        f.position = position
    audit.record(
        db,
        actor,
        "programme.field_moved",
        f"programme_field:{programme_field.id}",
        {"programme": programme_field.programme, "key": programme_field.key, "position": other},
        at=now,
    )
    db.flush()


def delete_field(
    db: Session, actor: Person, programme_field: ProgrammeField, confirmed: bool, now: datetime
) -> int:
    """Delete a field and, when the admin confirmed it, every answer to it. Returns the answers deleted."""
    used = answers(db, programme_field)
    if used and not confirmed:
        raise refuse(
            [
                Problem(
                    "confirm",
                    N_("{count} people have answered this field. Tick the box to delete their answers too."),
                    {"count": used},
                )
            ],
            "field_delete",
            f"programme field {programme_field.id}",
        )
    table = _table(programme_field.special)
    db.execute(delete(table).where(table.field_id == programme_field.id))
    audit.record(
        db,
        actor,
        "programme.field_deleted",
        f"programme_field:{programme_field.id}",
        {
            "programme": programme_field.programme,
            "key": programme_field.key,
            "label": programme_field.label,
            "special": programme_field.special,
            "answers_deleted": used,
        },
        at=now,
    )
    db.delete(programme_field)
    db.flush()
    return used


def add_consent_text(
    db: Session, actor: Person, programme: str, text: str | None, text_de: str | None, now: datetime
) -> ConsentText:
    """The programme's next consent text version (version 1 first); audited."""
    programme = check_programme(programme)
    english = (text or "").strip() or None
    german = (text_de or "").strip() or None
    problems: list[Problem] = []
    if english is None and german is None:
        problems.append(Problem("text", N_("Give the text in English, in German, or both.")))
    for name, value in (("text", english), ("text_de", german)):
        if value is not None and (len(value) > MAX_CONSENT_TEXT or "\x00" in value):
            problems.append(
                Problem(name, N_("A consent text has at most {max} characters."), {"max": MAX_CONSENT_TEXT})
            )
    if problems:
        raise refuse(problems, "consent_text", f"programme {programme!r}")
    latest = current_text(db, programme)
    made = ConsentText(
        programme=programme,
        version=(latest.version + 1) if latest else 1,
        text=english,
        text_de=german,
        created_at=now,
        created_by_id=actor.id,
    )
    db.add(made)
    db.flush()
    audit.record(
        db,
        actor,
        "programme.consent_text_added",
        f"consent_text:{made.id}",
        {"programme": programme, "version": made.version},
        at=now,
    )
    return made


# -- a person's data (staff) --------------------------------------------------------------------


def active_consent(db: Session, person_id: int, programme: str | None) -> Consent | None:
    """The person's consent for ``programme`` that stands (the newest not withdrawn), if any."""
    if not programme:
        return None
    return db.scalar(
        select(Consent)
        .where(Consent.person_id == person_id, Consent.programme == programme, Consent.withdrawn_at.is_(None))
        .order_by(Consent.agreed_at.desc(), Consent.id.desc())
        .limit(1)
    )


def consents_of(db: Session, person_id: int) -> list[Consent]:
    """Every consent the person gave, newest first (withdrawn ones included)."""
    return list(
        db.scalars(
            select(Consent)
            .where(Consent.person_id == person_id)
            .order_by(Consent.agreed_at.desc(), Consent.id.desc())
        )
    )


@dataclass(frozen=True)
class Answer:
    value: str
    recorded_at: datetime | None
    recorded_by_id: int | None


def values_of(db: Session, person_id: int, *, special: bool) -> dict[int, Answer]:
    """The person's values by field id, from the ordinary or the special table."""
    table = _table(special)
    rows = _rows(db, table, table.person_id == person_id)
    return {r.field_id: Answer(r.value, r.recorded_at, r.recorded_by_id) for r in rows}


def check_special(actor: Person, person: Person, change: str) -> None:
    """Special categories are for admins only: raise a staff-rule refusal for anyone else."""
    if not (actor.active and actor.is_admin):
        raise TrainingError(
            "admin_only",
            SPECIAL_ONLY,
            attempt=Attempt(change, actor.id, person.id, person.name, ""),
            competency="",
        )


def view_special(db: Session, actor: Person, person: Person, now: datetime) -> dict[int, Answer]:
    """The person's special-category values for an admin; the view is audited."""
    check_special(actor, person, "special_view")
    found = values_of(db, person.id, special=True)
    audit.record(
        db,
        actor,
        "programme.special_viewed",
        f"person:{person.id}",
        {"person": person.name, "programme": person.programme or "", "values": len(found)},
        at=now,
    )
    return found


def _no_programme(person: Person) -> ProgrammeDataError:
    return refuse(
        [Problem("", N_("This person has no programme. An admin sets it on the person's page."))],
        "no_programme",
        f"person {person.id}",
    )


def check_value(programme_field: ProgrammeField, raw: str) -> tuple[str | None, Problem | None]:
    """The value to store for what the form sent (None: empty), or what is wrong with it."""
    text = (raw or "").strip()
    name = f"field-{programme_field.id}"
    label = programme_field.local_name
    if not text:
        return None, None
    if CONTROL.search(text):
        return None, Problem(name, N_("{field}: remove the control characters."), {"field": label})
    if programme_field.kind == FieldKind.TEXT:
        if len(text) > MAX_TEXT:
            return None, Problem(
                name, N_("{field}: at most {max} characters, please."), {"field": label, "max": MAX_TEXT}
            )
        return text, None
    if programme_field.kind == FieldKind.DATE:
        day = _date(text)
        if day is None or not EARLIEST <= day <= LATEST:
            return None, Problem(
                name, N_("{field}: give a date such as 2026-03-31 (or 31.03.2026)."), {"field": label}
            )
        return day.isoformat(), None
    if programme_field.kind == FieldKind.CHOICE:
        if text not in {o["key"] for o in programme_field.options or []}:
            return None, Problem(name, N_("{field}: pick one of the options."), {"field": label})
        return text, None
    if text not in (YES, NO):
        return None, Problem(name, N_("{field}: answer yes or no."), {"field": label})
    return text, None


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    try:
        return datetime.strptime(text, "%d.%m.%Y").date()
    except ValueError:
        return None


def save_values(
    db: Session,
    actor: Person,
    person: Person,
    submitted: Mapping[str, str],
    now: datetime,
    *,
    special: bool,
) -> list[str]:
    """Store the values of the person's programme fields (ordinary or special) from a form
    (``field-<id>`` → text). All or nothing; audited with the keys that changed, never the values.
    Returns those keys."""
    training.check_records(actor, person, "special_data" if special else "programme_data")
    if special:
        check_special(actor, person, "special_data")
    if not person.programme:
        raise _no_programme(person)
    consent = active_consent(db, person.id, person.programme)
    table = _table(special)
    stored = {r.field_id: r for r in _rows(db, table, table.person_id == person.id)}
    problems: list[Problem] = []
    wanted: dict[int, str | None] = {}
    fields = fields_of(db, person.programme, special=special)
    for f in fields:
        name = f"field-{f.id}"
        value, problem = check_value(f, str(submitted.get(name, "")))
        if problem is not None:
            problems.append(problem)
            continue
        if f.needs_consent and consent is None:
            if value is not None:
                problems.append(
                    Problem(
                        name,
                        N_("{field} needs the participant's consent: record it first."),
                        {"field": f.local_name},
                    )
                )
            continue  # no consent: nothing stored, nothing required
        if value is None and f.required:
            problems.append(Problem(name, N_("{field} is required."), {"field": f.local_name}))
            continue
        wanted[f.id] = value
    if problems:
        raise refuse(problems, "values_form", f"person {person.id}")
    changed: list[str] = []
    by_id = {f.id: f for f in fields}
    for field_id, value in wanted.items():
        row = stored.get(field_id)
        if value is None:
            if row is not None:
                db.delete(row)
                changed.append(by_id[field_id].key)
            continue
        if row is None:
            db.add(
                table(
                    person_id=person.id,
                    field_id=field_id,
                    value=value,
                    recorded_at=now,
                    recorded_by_id=actor.id,
                )
            )
            changed.append(by_id[field_id].key)
        elif row.value != value:
            row.value, row.recorded_at, row.recorded_by_id = value, now, actor.id
            changed.append(by_id[field_id].key)
    if changed:
        audit.record(
            db,
            actor,
            "programme.special_changed" if special else "programme.values_changed",
            f"person:{person.id}",
            {"person": person.name, "programme": person.programme, "fields": changed},
            at=now,
        )
    db.flush()
    return changed


def record_consent(
    db: Session,
    actor: Person,
    person: Person,
    consent_text_id: int,
    language: str,
    agreed_on: date,
    now: datetime,
) -> Consent:
    """Record that ``person`` agreed to their programme's current consent text, on ``agreed_on``."""
    training.check_records(actor, person, "consent")
    if not person.programme:
        raise _no_programme(person)
    current = current_text(db, person.programme)
    subject = f"person {person.id}"
    if current is None or current.id != consent_text_id:
        raise refuse(
            [
                Problem(
                    "consent_text_id",
                    N_("This is not the current consent text of the person's programme. Reload the page."),
                )
            ],
            "consent_form",
            subject,
        )
    problems: list[Problem] = []
    text = current.text_de if language == "de" else current.text if language == "en" else None
    if not text:
        problems.append(Problem("language", N_("The consent text does not exist in that language.")))
    tz = ZoneInfo(person.site.timezone)
    today = now.astimezone(tz).date()
    if not date(2000, 1, 1) <= agreed_on <= today:
        problems.append(Problem("agreed_on", N_("Give the day the person agreed: today or earlier.")))
    standing = active_consent(db, person.id, person.programme)
    if standing is not None and standing.version == current.version:
        problems.append(
            Problem(
                "",
                N_("The person's consent to version {version} is recorded already."),
                {"version": current.version},
            )
        )
    if problems:
        raise refuse(problems, "consent_form", subject)
    agreed_at = (
        now if agreed_on == today else datetime.combine(agreed_on, time(12), tzinfo=tz).astimezone(UTC)
    )
    consent = Consent(
        person_id=person.id,
        programme=person.programme,
        text=text or "",
        consent_text_id=current.id,
        version=current.version,
        language=language,
        agreed_at=agreed_at,
        recorded_by_id=actor.id,
        recorded_at=now,
    )
    db.add(consent)
    db.flush()
    audit.record(
        db,
        actor,
        "programme.consent_recorded",
        f"person:{person.id}",
        {
            "person": person.name,
            "programme": person.programme,
            "version": current.version,
            "language": language,
            "agreed_on": agreed_on.isoformat(),
        },
        at=now,
    )
    return consent


@dataclass(frozen=True)
class Withdrawal:
    version: int | None
    erased: int  # ordinary values erased
    erased_special: int


def withdraw_consent(db: Session, actor: Person, person: Person, programme: str, now: datetime) -> Withdrawal:
    """The person withdrew their consent for ``programme``: every standing consent of it is marked
    withdrawn and the values of its fields that need consent are erased (ordinary and special)."""
    training.check_records(actor, person, "consent_withdrawal")
    standing = list(
        db.scalars(
            select(Consent).where(
                Consent.person_id == person.id, Consent.programme == programme, Consent.withdrawn_at.is_(None)
            )
        )
    )
    if not standing:
        raise refuse(
            [Problem("", N_("There is no consent to withdraw."))], "consent_withdrawal", f"person {person.id}"
        )
    for consent in standing:
        consent.withdrawn_at, consent.withdrawn_by_id = now, actor.id
    depending = select(ProgrammeField.id).where(
        ProgrammeField.programme == programme, ProgrammeField.needs_consent.is_(True)
    )
    erased: dict[bool, int] = {}
    for special in (False, True):
        table = _table(special)
        where = (table.person_id == person.id, table.field_id.in_(depending))
        erased[special] = db.scalar(select(func.count()).select_from(table).where(*where)) or 0
        db.execute(delete(table).where(*where))
    version = max((c.version or 0 for c in standing), default=0) or None
    audit.record(
        db,
        actor,
        "programme.consent_withdrawn",
        f"person:{person.id}",
        {
            "person": person.name,
            "programme": programme,
            "version": version,
            "erased": erased[False],
            "erased_special": erased[True],
        },
        at=now,
    )
    db.flush()
    return Withdrawal(version, erased[False], erased[True])


# -- exports -------------------------------------------------------------------------------------


def export_person(db: Session, person: Person) -> dict[str, Any]:
    """The person's programme data for their GDPR export: every value (special ones too: it is
    their data), with the field's labels, and every consent with the words agreed to."""
    out: dict[str, Any] = {}
    for special, name in ((False, "programme_data"), (True, "special_categories")):
        found = values_of(db, person.id, special=special)
        fields = (
            {f.id: f for f in db.scalars(select(ProgrammeField).where(ProgrammeField.id.in_(list(found))))}
            if found
            else {}
        )
        out[name] = [
            {
                "programme": fields[field_id].programme,
                "field": fields[field_id].key,
                "label": fields[field_id].label,
                "label_de": fields[field_id].label_de,
                "value": answer.value,
                "shown_as": option_label(fields[field_id], answer.value, "en"),
                "recorded_at": answer.recorded_at.isoformat() if answer.recorded_at else None,
            }
            for field_id, answer in sorted(found.items())
        ]
    out["consents"] = [
        {
            "programme": c.programme,
            "version": c.version,
            "language": c.language,
            "text": c.text,
            "agreed_at": c.agreed_at.isoformat(),
            "recorded_at": c.recorded_at.isoformat() if c.recorded_at else None,
            "withdrawn_at": c.withdrawn_at.isoformat() if c.withdrawn_at else None,
        }
        for c in consents_of(db, person.id)
    ]
    return out


def option_label(programme_field: ProgrammeField, value: str, language: str) -> str:
    """A choice's value as its option's label in ``language``; anything else as it is stored."""
    if programme_field.kind == FieldKind.CHOICE:
        for option in programme_field.options or []:
            if option["key"] == value:
                return option["de"] if language == "de" else option["en"]
    return value


@dataclass(frozen=True)
class ExportTable:
    """Programme data of a list of people for a report: the fields (by programme and position)
    and the values by (person id, field id)."""

    fields: list[ProgrammeField]
    values: dict[tuple[int, int], str]


def export_table(
    db: Session, person_ids: list[int], programmes_: Iterable[str], *, special: bool
) -> ExportTable:
    """The fields of ``programmes_`` (ordinary or special) and the values ``person_ids`` have."""
    names = sorted({p for p in programmes_ if p}, key=str.casefold)
    fields = [f for name in names for f in fields_of(db, name, special=special)]
    values: dict[tuple[int, int], str] = {}
    if fields and person_ids:
        table = _table(special)
        field_ids = [f.id for f in fields]
        for start in range(0, len(person_ids), 500):  # bound the IN list
            chunk = person_ids[start : start + 500]
            for row in _rows(db, table, table.person_id.in_(chunk), table.field_id.in_(field_ids)):
                values[(row.person_id, row.field_id)] = row.value
    return ExportTable(fields, values)


def audit_special_export(
    db: Session, actor: Person | None, table: ExportTable, people: int, detail: dict[str, Any]
) -> None:
    """Special categories left the lab (pseudonymised): which fields, for how many people."""
    audit.record(
        db,
        actor,
        "programme.special_exported",
        "report:funder",
        {**detail, "fields": [f.key for f in table.fields], "people": people, "values": len(table.values)},
    )


def localised(value: Any, language: str) -> Any:
    """A problem's parameter for the reader (a field's label in their language)."""
    return value.in_language(language) if isinstance(value, Localised) else value
