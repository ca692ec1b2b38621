"""The audit log in words: a sentence per kind of entry, in the reader's language, with times in
the site's time zone; anything else as a readable list of its details (never raw JSON).

The entries keep what the services wrote (slugs, ids, UTC times); only their reading is made
here, so an old entry reads in today's words and language.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import flask_babel  # type: ignore[import-untyped,unused-ignore]
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.adapters.web.l10n import _, current_language, date_label
from server.i18n import N_
from server.models import AuditLog, Competency, Level, Machine, MachineStatus, Person, Site, in_language
from server.services.training import LEVEL_LABELS

# What the action filter offers, and the heading of an entry that has no sentence of its own.
ACTION_LABELS: dict[str, str] = {
    "badge.assign": N_("Badge assigned"),
    "badge.assigned": N_("Badge assigned"),
    "badge.block": N_("Badge blocked"),
    "badge.unblock": N_("Badge unblocked"),
    "badge.replace": N_("Badge replaced"),
    "booking.create": N_("Booking made"),
    "booking.cancel": N_("Booking cancelled"),
    "booking.move": N_("Booking moved"),
    "booking.release": N_("Booking released (no-show)"),
    "booking.no_show_withdrawn": N_("No-show withdrawn"),
    "booking.block_lifted": N_("No-show block lifted"),
    "booking.lock_session": N_("Machine locked for a booking"),
    "calendar.create": N_("Calendar link made"),
    "calendar.rotate": N_("Calendar link replaced"),
    "login.succeeded": N_("Logged in"),
    "login.failed": N_("Login failed"),
    "login.throttled": N_("Logins paused"),
    "machine.create": N_("Machine added"),
    "machine.update": N_("Machine changed"),
    "machine.status": N_("Machine state set"),
    "session.closed": N_("Session closed by an admin"),
    "opening_hours.update": N_("Opening hours changed"),
    "people.import": N_("People imported"),
    "person.create": N_("Person added"),
    "person.created": N_("Person added"),
    "person.update": N_("Person changed"),
    "person.updated": N_("Person changed"),
    "person.activate": N_("Person activated"),
    "person.deactivate": N_("Person deactivated"),
    "person.export": N_("Personal data exported"),
    "person.erase": N_("Personal data erased"),
    "programme.field_created": N_("Programme field added"),
    "programme.field_changed": N_("Programme field changed"),
    "programme.field_moved": N_("Programme field moved"),
    "programme.field_deleted": N_("Programme field deleted"),
    "programme.consent_text_added": N_("Consent text added"),
    "programme.consent_recorded": N_("Consent recorded"),
    "programme.consent_withdrawn": N_("Consent withdrawn"),
    "programme.values_changed": N_("Programme data changed"),
    "programme.special_changed": N_("Special categories changed"),
    "programme.special_viewed": N_("Special categories viewed"),
    "programme.special_exported": N_("Special categories exported"),
    "qualification.granted": N_("Qualification granted"),
    "qualification.renewed": N_("Qualification renewed"),
    "qualification.revoked": N_("Qualification revoked"),
    "qualification.expired": N_("Qualification expired"),
    "report.export": N_("Report exported"),
    "site.create": N_("Site added"),
    "site.update": N_("Site changed"),
    "token.created": N_("API token made"),
    "token.revoked": N_("API token revoked"),
    "training.step": N_("Training step recorded"),
    "training.refused": N_("Training change refused"),
}

# One sentence per kind of entry; %(name)s are filled by ``_Reader.params``. An entry whose
# details lack a name the sentence needs reads as its heading and its list instead.
SENTENCES: dict[str, str] = {
    "qualification.granted": N_("Granted %(competency)s at level %(level)s to %(person)s."),
    "qualification.renewed": N_("Renewed %(competency)s of %(person)s until %(valid_until)s."),
    "qualification.revoked": N_("Revoked %(competency)s of %(person)s."),
    "qualification.expired": N_("%(competency)s of %(person)s expired."),
    "training.step": N_("Recorded “%(step)s” (%(competency)s) for %(person)s."),
    "training.refused": N_("Refused the %(change)s of %(competency)s for %(person)s (%(code)s)."),
    "booking.create": N_("Booked %(machine)s for %(person)s, %(when)s."),
    "booking.cancel": N_("Cancelled the booking of %(person)s on %(machine)s, %(when)s."),
    "booking.move": N_("Moved the booking of %(person)s on %(machine)s to %(when)s."),
    "booking.release": N_("Released the booking of %(person)s on %(machine)s, %(when)s: nobody came."),
    "booking.no_show_withdrawn": N_(
        "%(person)s came after all: the no-show on %(machine)s, %(when)s, is withdrawn."
    ),
    "booking.block_lifted": N_(
        "Lifted the no-show block of %(person)s (%(no_shows)s no-shows, blocked until %(until)s)."
    ),
    "booking.lock_session": N_("Locked %(machine)s for the booking of %(holder)s (session of %(person)s)."),
    "badge.assign": N_("Assigned badge %(uid)s to %(person)s."),
    "badge.assigned": N_("Assigned badge %(uid)s to %(person)s."),
    "badge.block": N_("Blocked badge %(uid)s of %(person)s."),
    "badge.unblock": N_("Unblocked badge %(uid)s of %(person)s."),
    "badge.replace": N_("Replaced badge %(uid)s of %(person)s with %(new_uid)s."),
    "person.create": N_("Added %(person)s."),
    "person.created": N_("Added %(person)s."),
    "person.update": N_("Changed %(person)s."),
    "person.updated": N_("Changed %(person)s."),
    "person.activate": N_("Activated %(person)s."),
    "person.deactivate": N_("Deactivated %(person)s."),
    "person.export": N_("Exported the personal data of %(person)s."),
    "person.erase": N_("Erased the personal data of %(pseudonym)s."),
    "login.succeeded": N_("%(person)s logged in from %(address)s."),
    "login.failed": N_("A login failed from %(address)s."),
    "login.throttled": N_("Logins from %(address)s are paused: too many failed attempts."),
    "people.import": N_("Imported %(file)s: %(created)s new, %(updated)s updated."),
    "report.export": N_("Exported the funder report (%(format)s)."),
    "machine.create": N_("Added the machine %(machine)s."),
    "machine.update": N_("Changed the machine %(machine)s."),
    "machine.status": N_("Set %(machine)s to “%(status)s”."),
    "session.closed": N_("Closed the session of %(person)s on %(machine)s: %(reason)s"),
    "site.create": N_("Added the site %(site)s."),
    "site.update": N_("Changed the site %(site)s."),
    "opening_hours.update": N_("Changed the opening hours of %(place)s."),
    "token.created": N_("Made the API token “%(name)s” for %(person)s."),
    "token.revoked": N_("Revoked the API token “%(name)s” of %(person)s."),
    "calendar.create": N_("%(person)s made a calendar link."),
    "programme.field_created": N_("Added the field “%(label)s” to the programme %(programme)s."),
    "programme.field_changed": N_("Changed the field “%(key)s” of the programme %(programme)s."),
    "programme.field_deleted": N_(
        "Deleted the field “%(label)s” of the programme %(programme)s with %(answers_deleted)s answers."
    ),
    "programme.consent_text_added": N_("Added version %(version)s of the consent text of %(programme)s."),
    "programme.consent_recorded": N_(
        "Recorded the consent of %(person)s to version %(version)s (%(programme)s)."
    ),
    "programme.consent_withdrawn": N_(
        "%(person)s withdrew their consent (%(programme)s): %(erased)s answers and "
        "%(erased_special)s special ones erased."
    ),
    "programme.values_changed": N_("Changed the programme data of %(person)s."),
    "programme.special_changed": N_("Changed the special categories of %(person)s."),
    "programme.special_viewed": N_("Viewed the special categories of %(person)s."),
    "programme.special_exported": N_(
        "Exported special categories of %(people)s participants (pseudonymised)."
    ),
    "calendar.rotate": N_("%(person)s replaced their calendar link."),
}

CHANGE_WORDS: dict[str, str] = {
    "grant": N_("grant"),
    "renew": N_("renewal"),
    "revoke": N_("revocation"),
    "step": N_("training step"),
}

STATUS_WORDS: dict[str, str] = {
    MachineStatus.AVAILABLE.value: N_("Available"),
    MachineStatus.MAINTENANCE.value: N_("Maintenance"),
    MachineStatus.DISABLED.value: N_("Disabled"),
}

NONE = "\u2013"  # an empty value, before or after a change
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
_ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def action_label(action: str) -> str:
    return _(ACTION_LABELS[action]) if action in ACTION_LABELS else action


@dataclass
class Line:
    """One entry as the page shows it."""

    sentence: str
    heading: str
    subject: str
    details: list[tuple[str, str]] = field(default_factory=list)
    has_sentence: bool = True


@dataclass
class _Names:
    """Names for the ids and slugs on one page of entries, looked up once."""

    people: dict[int, str]
    machines_by_id: dict[int, str]
    machines_by_slug: dict[str, str]
    competencies: dict[str, str]
    sites: dict[int, str]
    # A site's English name, as details written at the time hold it -> its name for the reader.
    site_names: dict[str, str]


def describe(db: Session, entries: Iterable[AuditLog]) -> list[Line]:
    """Each entry as a sentence (and its details as a list), in the reader's language."""
    entries = list(entries)
    reader = _Reader(_names(db, entries))
    return [reader.line(e) for e in entries]


def _ids(entries: list[AuditLog], kind: str) -> set[int]:
    found = set()
    for e in entries:
        prefix, _sep, rest = e.subject.partition(":")
        if prefix == kind and rest.isdigit():
            found.add(int(rest))
        if kind == "person" and isinstance(e.detail.get("person_id"), int):
            found.add(e.detail["person_id"])
    return found


def _names(db: Session, entries: list[AuditLog]) -> _Names:
    language = current_language()
    people_ids = _ids(entries, "person")
    machine_ids = _ids(entries, "machine")
    site_ids = _ids(entries, "site")
    people = {
        pid: name for pid, name in db.execute(select(Person.id, Person.name).where(Person.id.in_(people_ids)))
    }
    machines = list(db.scalars(select(Machine)))
    return _Names(
        people=people,
        machines_by_id={m.id: m.name for m in machines if m.id in machine_ids},
        machines_by_slug={m.slug: m.name for m in machines},
        competencies={
            c.slug: in_language(c.name, c.name_de, language) for c in db.scalars(select(Competency))
        },
        sites={
            sid: in_language(name, name_de, language)
            for sid, name, name_de in db.execute(
                select(Site.id, Site.name, Site.name_de).where(Site.id.in_(site_ids))
            )
        },
        site_names={
            name: in_language(name, name_de, language)
            for name, name_de in db.execute(select(Site.name, Site.name_de))
        },
    )


class _Reader:
    def __init__(self, names: _Names) -> None:
        self.names = names

    def line(self, entry: AuditLog) -> Line:
        detail = entry.detail if isinstance(entry.detail, dict) else {"detail": entry.detail}
        params = self.params(entry, detail)
        heading = action_label(entry.action)
        subject = params.get("subject_name") or entry.subject
        details = [
            (_key_label(k), self.value(k, v)) for k, v in detail.items() if v not in (None, "", [], {})
        ]
        template = SENTENCES.get(entry.action)
        if template is not None:
            try:
                return Line(_(template, **params), heading, subject, details)
            except (KeyError, ValueError, TypeError):
                pass  # details of an older shape: the list below still says everything
        return Line(heading, heading, subject, details, has_sentence=False)

    def params(self, entry: AuditLog, detail: dict[str, Any]) -> dict[str, Any]:
        prefix, _sep, rest = entry.subject.partition(":")
        params: dict[str, Any] = {}
        for key, value in detail.items():
            if isinstance(value, str | int | float):
                params[key] = self.value(key, value)
        subject_name = None
        if prefix == "person" and rest.isdigit():
            subject_name = self.names.people.get(int(rest))
            params.setdefault("person", subject_name or entry.subject)
        elif prefix == "machine" and rest.isdigit():
            subject_name = self.names.machines_by_id.get(int(rest))
            params["machine"] = subject_name or entry.subject
        elif prefix == "site" and rest.isdigit():
            subject_name = self.names.sites.get(int(rest))
            params["site"] = subject_name or detail.get("name") or entry.subject
        elif prefix == "badge":
            params["uid"] = rest
        elif prefix == "file":
            params["file"] = rest
        if "person" not in params and isinstance(detail.get("person_id"), int):
            params["person"] = self.names.people.get(detail["person_id"], "")
        if isinstance(detail.get("machine"), str):
            params["machine"] = self.names.machines_by_slug.get(detail["machine"], detail["machine"])
        if isinstance(detail.get("competency"), str):
            params["competency"] = self.names.competencies.get(detail["competency"], detail["competency"])
        if isinstance(detail.get("level"), str) and detail["level"] in {lv.value for lv in Level}:
            params["level"] = _(LEVEL_LABELS[Level(detail["level"])])
        if isinstance(detail.get("change"), str):
            params["change"] = _(CHANGE_WORDS.get(detail["change"], detail["change"]))
        if isinstance(detail.get("status"), str):
            params["status"] = _(STATUS_WORDS.get(detail["status"], detail["status"]))
        if "starts_at" in detail and "ends_at" in detail:
            params["when"] = _span(detail["starts_at"], detail["ends_at"])
        if prefix in ("site", "machine"):
            params["place"] = subject_name or entry.subject
        params["subject_name"] = subject_name
        return params

    def value(self, key: str, value: Any) -> str:
        """A detail's value in words: times local, lists joined, a change as "before → after"."""
        if isinstance(value, bool):
            return _("yes") if value else _("no")
        if isinstance(value, str):
            return _time_text(value)
        if isinstance(value, list):
            if len(value) == 2 and key not in ("sections", "sizes"):
                # apply_changes writes {field: [before, after]}; "from" of a move is a span.
                if key == "from" and all(isinstance(v, str) for v in value):
                    return _span(value[0], value[1])
                before, after = self.value(key, value[0]) or NONE, self.value(key, value[1]) or NONE
                return f"{before} \u2192 {after}"
            return ", ".join(self.value(key, v) for v in value)
        if isinstance(value, dict):
            return "; ".join(f"{_key_label(k)}: {self.value(k, v)}" for k, v in value.items())
        if value is None:
            return ""
        if isinstance(value, str) and value in self.names.site_names:
            return self.names.site_names[value]
        return str(value)


def _key_label(key: str) -> str:
    words = key.replace("_", " ").strip()
    # The catalogue has most detail keys as labels elsewhere ("People", "Month"): in the reader's
    # language where it does, else as written.
    return str(flask_babel.gettext(words[:1].upper() + words[1:]))


def _parse_time(text: str) -> datetime | None:
    if not _ISO_TIME.match(text):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _time_text(text: str) -> str:
    """An ISO time in the reader's site time zone; an ISO day as the reader writes days."""
    parsed = _parse_time(text)
    if parsed is not None:
        return str(flask_babel.format_datetime(parsed, "short"))
    if _ISO_DAY.match(text):
        try:
            return date_label(date.fromisoformat(text))
        except ValueError:
            return text
    return text


def _span(start: Any, end: Any) -> str:
    first = _parse_time(start) if isinstance(start, str) else None
    last = _parse_time(end) if isinstance(end, str) else None
    if first is None or last is None:
        return f"{start} \u2013 {end}"
    same_day = flask_babel.to_user_timezone(first).date() == flask_babel.to_user_timezone(last).date()
    end_text: Callable[[datetime, str], Any] = (
        flask_babel.format_time if same_day else flask_babel.format_datetime
    )
    return f"{flask_babel.format_datetime(first, 'short')}\u2013{end_text(last, 'short')}"
