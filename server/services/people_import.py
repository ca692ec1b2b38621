"""Importing a cohort of people from a CSV file: check every row, then import all rows or none.

The format is documented in docs/csv-import.md. :func:`parse` reads and checks the whole
file against itself and the database and returns every problem it finds (row number,
column, a message a person can act on); :func:`apply` writes a checked file in the caller's
transaction. Matching rule: a row updates the person with the same ``external_id``, else
the person with the same email; a row whose ``external_id`` and email point to two
different people is reported. Empty cells leave an existing person's value as it is;
roles, site and the active flag of an existing person are never changed by an import.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import Badge, BadgeStatus, Person, utcnow
from server.services import audit
from server.services.badges import normalise_uid
from werkbank_protocol.messages import BADGE_PATTERN

MAX_BYTES = 1_000_000
MAX_ROWS = 2_000
LANGUAGES = ("de", "en")
COLUMNS = ("name", "email", "language", "cohort", "programme", "external_id", "badge")
# German spreadsheets often carry German headings; these are accepted too.
ALIASES = {
    "e-mail": "email",
    "mail": "email",
    "sprache": "language",
    "kohorte": "cohort",
    "gruppe": "cohort",
    "programm": "programme",
    "program": "programme",
    "teilnehmernummer": "external_id",
    "id": "external_id",
    "ausweis": "badge",
    "badge_uid": "badge",
    "uid": "badge",
}
LIMITS = {"name": 200, "email": 254, "cohort": 100, "programme": 100, "external_id": 64}
EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
BADGE = re.compile(BADGE_PATTERN)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the file. ``row`` is the spreadsheet row (the header is row 1);
    ``message`` is an untranslated message id with ``%(name)s`` placeholders from ``params``."""

    row: int | None
    column: str | None
    message: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    number: int
    name: str
    email: str | None
    language: str | None
    cohort: str | None
    programme: str | None
    external_id: str | None
    badge: str | None
    person_id: int | None = None  # the existing person this row updates


@dataclass
class Checked:
    rows: list[Row]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.rows)


@dataclass(frozen=True)
class Result:
    created: int
    updated: int
    badges: int


def decode(data: bytes) -> str | Problem:
    if len(data) > MAX_BYTES:
        return Problem(
            None,
            None,
            N_("The file is too large (%(size)d kB). At most %(limit)d kB, please split it."),
            {"size": len(data) // 1000, "limit": MAX_BYTES // 1000},
        )
    try:
        # utf-8-sig drops the byte order mark Excel writes in front of "CSV UTF-8" files.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Problem(
            None,
            None,
            N_('The file is not UTF-8 text. In Excel, save it as "CSV UTF-8 (comma delimited)".'),
        )


def _delimiter(text: str) -> str:
    header = text.split("\n", 1)[0]
    return ";" if header.count(";") > header.count(",") else ","


def parse(db: Session, data: bytes) -> Checked:
    """Read and check the whole file; every problem is reported, nothing is written."""
    text = decode(data)
    if isinstance(text, Problem):
        return Checked([], [text])
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text)))
    while records and not any(cell.strip() for cell in records[-1]):
        records.pop()
    if not records:
        return Checked([], [Problem(None, None, N_("The file is empty."))])
    header = [ALIASES.get(h.strip().lower(), h.strip().lower()) for h in records[0]]
    problems: list[Problem] = []
    unknown = [h for h in header if h and h not in COLUMNS]
    if unknown:
        problems.append(
            Problem(
                1,
                None,
                N_("Unknown columns: %(columns)s. Allowed: %(allowed)s."),
                {"columns": ", ".join(unknown), "allowed": ", ".join(COLUMNS)},
            )
        )
    doubled = sorted({h for h in header if h and header.count(h) > 1})
    if doubled:
        problems.append(
            Problem(1, None, N_("Columns named twice: %(columns)s."), {"columns": ", ".join(doubled)})
        )
    if "name" not in header:
        problems.append(Problem(1, None, N_('The first row must name the columns, with at least "name".')))
    if problems:
        return Checked([], problems)
    body = [
        (number, cells) for number, cells in enumerate(records[1:], start=2) if any(c.strip() for c in cells)
    ]
    if not body:
        return Checked([], [Problem(None, None, N_("The file has no people in it, only the header row."))])
    if len(body) > MAX_ROWS:
        return Checked(
            [],
            [
                Problem(
                    None,
                    None,
                    N_("The file has %(rows)d people; at most %(limit)d per import. Please split it."),
                    {"rows": len(body), "limit": MAX_ROWS},
                )
            ],
        )
    rows = []
    for number, cells in body:
        if len(cells) > len(header):
            problems.append(
                Problem(
                    number,
                    None,
                    N_("This row has %(cells)d cells but the header only %(columns)d columns."),
                    {"cells": len(cells), "columns": len(header)},
                )
            )
            continue
        values = {h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header) if h}
        row, row_problems = _check_row(number, values)
        problems.extend(row_problems)
        if row is not None:
            rows.append(row)
    problems.extend(_check_duplicates(rows))
    problems.extend(_check_database(db, rows))
    problems.sort(key=lambda p: p.row or 0)
    return Checked(rows, problems)


def _check_row(number: int, values: dict[str, str]) -> tuple[Row | None, list[Problem]]:
    problems = []

    def bad(column: str, message: str, **params: Any) -> None:
        problems.append(Problem(number, column, message, params))

    for column, limit in LIMITS.items():
        if len(values.get(column, "")) > limit:
            bad(column, N_("Too long: at most %(limit)d characters."), limit=limit)
    name = values.get("name", "")
    if not name:
        bad("name", N_("The name is missing."))
    email = values.get("email", "").lower() or None
    if email is not None and not EMAIL.match(email):
        bad("email", N_('"%(value)s" is not an email address.'), value=email)
    language = values.get("language", "").lower() or None
    if language is not None and language not in LANGUAGES:
        bad("language", N_('Unknown language "%(value)s": use de or en.'), value=language)
    badge = normalise_uid(values.get("badge", "")) or None
    if badge is not None and not BADGE.match(badge):
        bad(
            "badge",
            N_('"%(value)s" is not a badge UID: 8, 14 or 20 hex digits (0-9, A-F).'),
            value=values.get("badge", ""),
        )
    if problems:
        return None, problems
    return (
        Row(
            number=number,
            name=name,
            email=email,
            language=language,
            cohort=values.get("cohort") or None,
            programme=values.get("programme") or None,
            external_id=values.get("external_id") or None,
            badge=badge,
        ),
        [],
    )


def _check_duplicates(rows: list[Row]) -> list[Problem]:
    problems = []
    for column in ("email", "external_id", "badge"):
        first: dict[str, int] = {}
        for row in rows:
            value = getattr(row, column)
            if value is None:
                continue
            if value in first:
                problems.append(
                    Problem(
                        row.number,
                        column,
                        N_('"%(value)s" is already in row %(other)d of this file.'),
                        {"value": value, "other": first[value]},
                    )
                )
            else:
                first[value] = row.number
    return problems


def _check_database(db: Session, rows: list[Row]) -> list[Problem]:
    emails = [r.email for r in rows if r.email]
    ids = [r.external_id for r in rows if r.external_id]
    uids = [r.badge for r in rows if r.badge]
    by_email = {
        (p.email or "").lower(): p
        for p in db.scalars(select(Person).where(func.lower(Person.email).in_(emails)))
    }
    by_external = {p.external_id: p for p in db.scalars(select(Person).where(Person.external_id.in_(ids)))}
    badges = {b.uid: b for b in db.scalars(select(Badge).where(Badge.uid.in_(uids)))}
    problems = []
    matched: dict[int, int] = {}  # person id -> the row that updates them
    for row in rows:
        match_id = by_external.get(row.external_id) if row.external_id else None
        match_email = by_email.get(row.email) if row.email else None
        if match_id is not None and match_email is not None and match_id.id != match_email.id:
            problems.append(
                Problem(
                    row.number,
                    "email",
                    N_(
                        'The email "%(email)s" belongs to %(other)s, but the external_id "%(id)s" '
                        "to %(person)s. Correct one of them."
                    ),
                    {
                        "email": row.email,
                        "other": match_email.name,
                        "id": row.external_id,
                        "person": match_id.name,
                    },
                )
            )
            continue
        person = match_id or match_email
        if person is not None:
            if person.id in matched:
                problems.append(
                    Problem(
                        row.number,
                        None,
                        N_("Row %(other)d of this file already updates %(person)s."),
                        {"other": matched[person.id], "person": person.name},
                    )
                )
                continue
            matched[person.id] = row.number
            row.person_id = person.id
        if row.badge is not None:
            badge = badges.get(row.badge)
            if badge is not None and (person is None or badge.person_id != person.id):
                problems.append(
                    Problem(
                        row.number,
                        "badge",
                        N_("The badge %(uid)s is already assigned to %(other)s."),
                        {"uid": row.badge, "other": badge.person.name},
                    )
                )
    return problems


def apply(db: Session, checked: Checked, site_id: int, actor: Person | None, filename: str) -> Result:
    """Write a checked file (``checked.ok``) in the caller's transaction, and audit it."""
    if not checked.ok:
        raise ValueError("only a file without problems can be imported")
    created = updated = badges = 0
    now = utcnow()
    for row in checked.rows:
        if row.person_id is not None:
            person = db.get(Person, row.person_id)
            assert person is not None
            updated += 1
            person.name = row.name
            for column in ("email", "language", "cohort", "programme", "external_id"):
                value = getattr(row, column)
                if value is not None:
                    setattr(person, column, value)
        else:
            person = Person(
                site_id=site_id,
                name=row.name,
                email=row.email,
                language=row.language or "de",
                cohort=row.cohort,
                programme=row.programme,
                external_id=row.external_id,
                is_participant=True,
            )
            db.add(person)
            created += 1
        if row.badge is not None and not any(b.uid == row.badge for b in person.badges):
            db.add(Badge(uid=row.badge, person=person, status=BadgeStatus.ACTIVE, issued_at=now))
            badges += 1
    audit.record(
        db,
        actor,
        "people.import",
        f"file:{filename[:150]}",
        {
            "rows": len(checked.rows),
            "created": created,
            "updated": updated,
            "badges": badges,
            "site_id": site_id,
        },
    )
    db.flush()
    return Result(created, updated, badges)
