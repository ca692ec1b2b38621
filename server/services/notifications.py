"""What the app tells people: qualifications about to expire, and ones that expired.

A :class:`Notification` stores a kind and plain parameters (names, an ISO date), never
finished text: it is rendered in the reader's language when shown on a page or e-mailed.

Who hears about a qualification (our choice where the issue left room):

* its holder, whatever their role (a trainer's own briefing lapses too);
* the trainers who could renew it: active people of the holder's site who hold the same
  competency at trainer level, valid today. The trainer who once granted it is not asked
  specially: they may have left, or moved to another site, and any trainer there can renew.
  When the site has no such trainer, its admins hear it instead (admins may train every
  competency), so the reminder never goes nowhere.

Each reminder has a ``key`` unique per person (``expiring:<entry id>:<valid until>``,
``expired:<entry id>``): the scheduler may run as often as it likes, each person hears
each thing once. A renewal appends a new entry, so its own expiry is reminded anew.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_time
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.i18n import LANGUAGES, N_, gettext_in, local_date
from server.models import (
    Competency,
    Level,
    Notification,
    Person,
    Qualification,
    QualificationAction,
    utcnow,
)
from server.services import qualifications
from server.services.qualifications import EXPIRES_SOON_DAYS, qualification_state

# Reminded when the pages start saying "expires soon".
REMIND_DAYS = EXPIRES_SOON_DAYS

# The holder's own reminder, and the one their trainers get.
EXPIRING = "expiring"
TRAINEE_EXPIRING = "trainee_expiring"
EXPIRED = "expired"
TRAINEE_EXPIRED = "trainee_expired"

# Bookings (server.services.bookings): a reminder before one, and notice that one was released.
BOOKING_REMINDER = "booking_reminder"
BOOKING_RELEASED = "booking_released"
# Outcomes (server.services.outcomes): six months after an exit, ask where the person stands.
FOLLOW_UP_DUE = "follow_up_due"
QUALIFICATION_KINDS = (EXPIRING, TRAINEE_EXPIRING, EXPIRED, TRAINEE_EXPIRED)
# For admins: an offline session of someone who was not allowed (server.services.reconcile).
OFFLINE_NOT_ALLOWED = "offline_not_allowed"
# For admins: a device silent too long while its lab is open (server.services.devices).
DEVICE_OFFLINE = "device_offline"
# For admins: a backup run failed (server.adapters.backup).
BACKUP_FAILED = "backup_failed"
# For admins: a device's events wait unstored, or its offline allow-list is old (devices.notify_health).
DEVICE_OUTBOX_STUCK = "device_outbox_stuck"
DEVICE_ALLOWLIST_OLD = "device_allowlist_old"

# Why an offline session was not allowed, completing OFFLINE_NOT_ALLOWED's text.
OFFLINE_REASONS: dict[str, str] = {
    "unknown_badge": N_("the badge is not registered"),
    "badge_blocked": N_("the badge was blocked"),
    "person_inactive": N_("the account was not active"),
    "not_qualified": N_("{competency} was missing"),
    "qualification_revoked": N_("{competency} had been revoked"),
    "qualification_expired": N_("{competency} had expired"),
    "trainer_required": N_("{competency} was not enough without a trainer"),
}

TEXTS: dict[str, str] = {
    EXPIRING: N_("Your {competency} expires on {date}. Ask a trainer to renew it."),
    TRAINEE_EXPIRING: N_("{person}'s {competency} expires on {date}."),
    # The same words the machine says when it refuses an expired qualification.
    EXPIRED: N_("Your {competency} expired on {date}. Ask a trainer to renew it."),
    TRAINEE_EXPIRED: N_("{person}'s {competency} expired on {date}."),
    BOOKING_REMINDER: N_("Reminder: you booked {machine} on {date} from {start} to {end}."),
    BOOKING_RELEASED: N_(
        "Your booking of {machine} on {date} at {start} was released: you had not tapped in "
        "{minutes} minutes after its start. Missed bookings can block new ones for a while."
    ),
    OFFLINE_NOT_ALLOWED: N_(
        "{person} used {machine} on {date} at {start} while it was offline, but was not allowed to: "
        "{reason}. If the session still runs, the machine locks once a running job ends. Please talk "
        "to {person}."
    ),
    FOLLOW_UP_DUE: N_(
        "{person} left the programme six months ago ({date}). Please record where they stand now."
    ),
    DEVICE_OFFLINE: N_(
        "The device at {machine} has been offline since {start} on {date}, while the lab is open. "
        "Check its power and network; until it is back, nobody can unlock {machine}."
    ),
    BACKUP_FAILED: N_(
        "The backup on {date} at {start} failed: {error}. Until a backup succeeds, a lost server "
        "would lose everything since the last good one. On the server, backup-status.json in the "
        "backup folder and `journalctl -u werkbank-backup` say more."
    ),
    DEVICE_OUTBOX_STUCK: N_(
        "Events of the device at {machine} have waited {minutes} minutes for the server to store "
        "them ({count} waiting). The machine still works, but its sessions are missing from hours "
        "and reports until they arrive. Check that the bridge runs and hears the device (its log, "
        "/readyz)."
    ),
    DEVICE_ALLOWLIST_OLD: N_(
        "The device at {machine} holds an offline allow-list issued {hours} hours ago (version "
        "{version}); the server issues a new one every 6 hours. While the server is unreachable "
        "the machine decides by this list, so a badge blocked or a qualification revoked since may "
        "still unlock it. Check the bridge's log for {machine}."
    ),
}

SUBJECTS: dict[str, str] = {
    EXPIRING: N_("Your {competency} expires soon"),
    TRAINEE_EXPIRING: N_("{person}'s {competency} expires soon"),
    EXPIRED: N_("Your {competency} has expired"),
    TRAINEE_EXPIRED: N_("{person}'s {competency} has expired"),
    BOOKING_REMINDER: N_("Your booking of {machine} at {start}"),
    BOOKING_RELEASED: N_("Your booking of {machine} was released"),
    OFFLINE_NOT_ALLOWED: N_("{person} used {machine} without being allowed"),
    FOLLOW_UP_DUE: N_("Six-month follow-up for {person}"),
    DEVICE_OFFLINE: N_("{machine} is offline"),
    BACKUP_FAILED: N_("The backup failed"),
    DEVICE_OUTBOX_STUCK: N_("{machine}: events are not arriving"),
    DEVICE_ALLOWLIST_OLD: N_("{machine}: the offline allow-list is old"),
}


def language_of(person: Person) -> str:
    """The person's language if we have a catalogue for it, else the first one (German)."""
    return person.language if person.language in LANGUAGES else LANGUAGES[0]


# -- rendering -------------------------------------------------------------------------------------


def _values(notification: Notification, language: str) -> dict[str, str]:
    params = notification.params or {}
    names = params.get("competency") or {}
    competency = str(names.get(language) or names.get("en") or "") if isinstance(names, dict) else str(names)
    day = params.get("date")
    reason = OFFLINE_REASONS.get(str(params.get("reason", "")))
    return {
        "reason": gettext_in(language, reason).format(competency=competency) if reason else "",
        "competency": competency,
        "person": str(params.get("person", "")),
        "date": local_date(date.fromisoformat(day), language) if day else "",
        # Bookings: the machine's name and its times in the reader's locale, in the site's zone
        # (older notifications carry the local times as text: "14:30").
        "machine": str(params.get("machine", "")),
        "start": _clock(params, "starts_at", "start", language),
        "end": _clock(params, "ends_at", "end", language),
        "minutes": str(params.get("minutes", "")),
        "error": str(params.get("error", "")),
        # Device health notices: events waiting, hours, the allow-list's version.
        "count": str(params.get("count", "")),
        "hours": str(params.get("hours", "")),
        "version": str(params.get("version", "")),
    }


def _clock(params: dict[str, Any], key: str, old_key: str, language: str) -> str:
    when, tz = params.get(key), params.get("tz")
    if not (isinstance(when, str) and isinstance(tz, str)):
        return str(params.get(old_key, ""))
    local = datetime.fromisoformat(when).astimezone(ZoneInfo(tz))
    return format_time(local, "short", locale=language)


def render(notification: Notification, language: str) -> str:
    """The notification's text in ``language``: ``Your Laser safety briefing expires on 3 March 2026. …``"""
    template = TEXTS.get(notification.kind)
    if template is None:  # a kind this version does not know (written by a newer one)
        return notification.kind
    return gettext_in(language, template).format(**_values(notification, language))


def render_subject(notification: Notification, language: str) -> str:
    """A short line for an e-mail's subject."""
    template = SUBJECTS.get(notification.kind)
    if template is None:
        return "Werkbank"
    return gettext_in(language, template).format(**_values(notification, language))


# -- reading and marking ---------------------------------------------------------------------------


def unread(db: Session, person_id: int) -> Sequence[Notification]:
    """The person's unread notifications, newest first."""
    return db.scalars(
        select(Notification)
        .where(Notification.person_id == person_id, Notification.read_at.is_(None))
        .order_by(Notification.created_at.desc(), Notification.id.desc())
    ).all()


def mark_read(db: Session, person_id: int, ids: Iterable[int], now: datetime | None = None) -> int:
    """Mark the person's own notifications among ``ids`` read; other people's are ignored.

    Returns how many were unread before.
    """
    wanted = list({int(i) for i in ids})
    if not wanted:
        return 0
    result = db.execute(
        update(Notification)
        .where(
            Notification.person_id == person_id,
            Notification.id.in_(wanted),
            Notification.read_at.is_(None),
        )
        .values(read_at=now or utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- creating --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _About:
    """One qualification entry someone should hear about."""

    entry_id: int
    holder: Person
    competency: Competency
    valid_until: date


def _params(about: _About) -> dict[str, Any]:
    competency = about.competency
    return {
        "person": about.holder.name,
        "person_id": about.holder.id,
        "competency": {"en": competency.name, "de": competency.display_name("de")},
        "competency_id": competency.id,
        "date": about.valid_until.isoformat(),
        "qualification_id": about.entry_id,
    }


def trainers_for(db: Session, holder: Person, competency: Competency, today: date) -> list[Person]:
    """Who is told about ``holder``'s ``competency``: the site's trainers for it, else its admins."""
    candidates = db.scalars(
        select(Person)
        .where(
            Person.site_id == holder.site_id,
            Person.active.is_(True),
            Person.id != holder.id,
            Person.is_trainer.is_(True) | Person.is_admin.is_(True),
        )
        .order_by(Person.id)
    ).all()
    if not candidates:
        return []
    newest = qualifications.newest_ids(
        Qualification.competency_id == competency.id,
        Qualification.person_id.in_([p.id for p in candidates]),
    )
    trainer_ids = {
        entry.person_id
        for entry in db.scalars(select(Qualification).where(Qualification.id.in_(newest)))
        if entry.level == Level.TRAINER
        and qualification_state(entry.level, entry.action, entry.valid_until, today).usable
    }
    trainers = [p for p in candidates if p.id in trainer_ids and p.is_trainer]
    return trainers or [p for p in candidates if p.is_admin]


def _notify(db: Session, about: _About, kind: str, trainer_kind: str, key: str, today: date) -> int:
    if not about.holder.active:
        return 0  # someone who left: neither they nor their trainers need to hear it
    recipients: list[tuple[Person, str]] = [(about.holder, kind)]
    recipients += [(t, trainer_kind) for t in trainers_for(db, about.holder, about.competency, today)]
    known = set(
        db.scalars(
            select(Notification.person_id).where(
                Notification.key == key, Notification.person_id.in_([p.id for p, _ in recipients])
            )
        )
    )
    made = 0
    for person, what in recipients:
        if person.id in known:
            continue
        db.add(Notification(person_id=person.id, kind=what, key=key, params=_params(about)))
        made += 1
    db.flush()
    return made


def remind_expiring(db: Session, today: date, within_days: int = REMIND_DAYS) -> int:
    """Tell holders and their trainers about every qualification that ends within ``within_days``.

    A qualification counts when its newest history entry is a grant or renewal valid until a
    day from ``today`` to ``today + within_days``. Returns how many notifications were made
    (0 when run again the same day).
    """
    latest = qualifications.newest_entries()
    due = db.scalars(
        select(Qualification)
        .join(latest, latest.c.id == Qualification.id)
        .join(Person, Person.id == Qualification.person_id)
        .where(
            Person.active.is_(True),
            Qualification.action.in_((QualificationAction.GRANTED, QualificationAction.RENEWED)),
            Qualification.valid_until.is_not(None),
            Qualification.valid_until >= today,
            Qualification.valid_until <= today + timedelta(days=within_days),
        )
        .order_by(Qualification.valid_until, Qualification.id)
    ).all()
    made = 0
    for entry in due:
        assert entry.valid_until is not None  # filtered above; for the type checker
        about = _About(entry.id, entry.person, entry.competency, entry.valid_until)
        key = f"expiring:{entry.id}:{entry.valid_until.isoformat()}"
        made += _notify(db, about, EXPIRING, TRAINEE_EXPIRING, key, today)
    return made


def settle_renewed(db: Session, today: date, now: datetime | None = None) -> int:
    """Mark read the expiry notifications whose qualification was renewed (or granted anew) since.

    Nobody needs to be told "expires on 3 March" after a trainer renewed it; read ones are
    not e-mailed either. Returns how many were settled.
    """
    open_ones = db.scalars(
        select(Notification).where(Notification.read_at.is_(None), Notification.kind.in_(QUALIFICATION_KINDS))
    ).all()
    settled = 0
    for notification in open_ones:
        params = notification.params or {}
        try:
            person_id, competency_id = int(params["person_id"]), int(params["competency_id"])
            about = int(params["qualification_id"])
        except (KeyError, TypeError, ValueError):
            continue
        newest = qualifications.newest(db, person_id, competency_id)
        if (
            newest is not None
            and newest.id > about
            and newest.action in (QualificationAction.GRANTED, QualificationAction.RENEWED)
            and qualification_state(newest.level, newest.action, newest.valid_until, today).usable
        ):
            notification.read_at = now or utcnow()
            settled += 1
    db.flush()
    return settled


def notify_expired(db: Session, entries: Iterable[Qualification], today: date) -> int:
    """Tell holders and their trainers about ``expired`` history entries (``training.expire_due``'s)."""
    made = 0
    for entry in entries:
        if entry.action != QualificationAction.EXPIRED or entry.valid_until is None:
            continue
        about = _About(entry.id, entry.person, entry.competency, entry.valid_until)
        made += _notify(db, about, EXPIRED, TRAINEE_EXPIRED, f"expired:{entry.id}", today)
    return made


# -- backups ---------------------------------------------------------------------------------------


def backup_failed(db: Session, at: datetime, error: str, tz: str) -> int:
    """Tell every active admin that the backup run of ``at`` failed (``error`` says why, as the
    system reported it). Returns how many were told."""
    admins = db.scalars(
        select(Person).where(Person.is_admin.is_(True), Person.active.is_(True)).order_by(Person.id)
    ).all()
    key = f"backup_failed:{at.isoformat()}"
    params = {
        "date": at.astimezone(ZoneInfo(tz)).date().isoformat(),
        "starts_at": at.isoformat(),
        "tz": tz,
        "error": error,
    }
    for admin in admins:
        db.add(Notification(person_id=admin.id, kind=BACKUP_FAILED, key=key, params=params, created_at=at))
    db.flush()
    return len(admins)
