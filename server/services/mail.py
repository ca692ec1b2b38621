"""E-mail for notifications, through the lab's SMTP server when one is configured.

Each notification is e-mailed at most once: it is claimed (``emailed_at`` set, committed)
before it is handed to the SMTP server and released again only when the server refused
it. A crash between the two loses that one e-mail (the notification stays on the person's
page) rather than sending it twice. People without an e-mail address, inactive people and
notifications already read in the app are not e-mailed.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from server.db import Database
from server.i18n import N_, gettext_in
from server.models import Notification, Person, utcnow
from server.services import notifications

log = logging.getLogger(__name__)

# Notifications older than this are not e-mailed any more (say, when SMTP is configured
# long after they were made): they would arrive out of date.
MAX_AGE = timedelta(days=14)
BATCH = 200

GREETING = N_("Hello {name},")
FOOTER = N_("This is a message from Werkbank. You also find it on your page there.")


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 587
    user: str | None = None
    password: str | None = None
    sender: str = "werkbank@localhost"
    starttls: bool = True
    timeout_s: float = 30.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SmtpSettings | None:
        """The settings of ``WERKBANK_SMTP_*``, or None when no SMTP host is configured."""
        host = config.get("SMTP_HOST")
        if not host:
            return None
        return cls(
            host=str(host),
            port=int(config.get("SMTP_PORT") or 587),
            user=config.get("SMTP_USER") or None,
            password=config.get("SMTP_PASSWORD") or None,
            sender=str(config.get("SMTP_FROM") or "werkbank@localhost"),
            starttls=bool(config.get("SMTP_STARTTLS", True)),
        )


@dataclass
class MailReport:
    sent: int = 0
    failed: int = 0


def compose(notification: Notification, person: Person, sender: str) -> EmailMessage:
    """The e-mail for ``notification``: subject and plain-text body in the person's language."""
    language = notifications.language_of(person)
    body = "\n\n".join(
        (
            gettext_in(language, GREETING).format(name=person.name),
            notifications.render(notification, language),
            gettext_in(language, FOOTER),
            "Werkbank",
        )
    )
    message = EmailMessage()
    message.set_content(body + "\n")  # first: set_content drops Content-* headers set before it
    message["From"] = sender
    message["To"] = formataddr((person.name, person.email or ""))
    message["Subject"] = notifications.render_subject(notification, language)
    message["Content-Language"] = language
    message["Message-ID"] = make_msgid(idstring=f"werkbank-{notification.id}")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no out-of-office replies, please
    return message


def pending(db: Session, now: datetime, limit: int = BATCH) -> list[int]:
    """Ids of notifications still to e-mail: unread, unsent, recent, to an active person with an address."""
    return list(
        db.scalars(
            select(Notification.id)
            .join(Person, Person.id == Notification.person_id)
            .where(
                Notification.emailed_at.is_(None),
                Notification.read_at.is_(None),
                Notification.created_at >= now - MAX_AGE,
                Person.active.is_(True),
                Person.email.is_not(None),
                Person.email != "",
            )
            .order_by(Notification.id)
            .limit(limit)
        )
    )


def _claim(db: Session, notification_id: int, now: datetime) -> bool:
    result = db.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.emailed_at.is_(None))
        .values(emailed_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def _release(database: Database, notification_id: int) -> None:
    with database.session() as db:
        db.execute(
            update(Notification)
            .where(Notification.id == notification_id)
            .values(emailed_at=None)
            .execution_options(synchronize_session=False)
        )


def _connect(settings: SmtpSettings) -> smtplib.SMTP:
    smtp = smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s)
    try:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.user:
            smtp.login(settings.user, settings.password or "")
    except BaseException:
        smtp.close()
        raise
    return smtp


def send_pending(database: Database, settings: SmtpSettings, now: datetime | None = None) -> MailReport:
    """E-mail every pending notification over one SMTP connection; never raises for SMTP trouble.

    A failure is logged and counted; the notification stays unsent and is tried again on the
    next run. Opens its own short database sessions (one per e-mail), like every scheduler job.
    """
    now = now or utcnow()
    report = MailReport()
    with database.session() as db:
        ids = pending(db, now)
    if not ids:
        return report
    try:
        smtp = _connect(settings)
    except OSError as exc:  # refused, timed out, TLS or login failed
        report.failed = len(ids)
        log.warning(
            "e-mail: cannot connect or log in to %s:%s (%s); %d to retry",
            settings.host,
            settings.port,
            exc,
            len(ids),
        )
        return report
    try:
        for notification_id in ids:
            try:
                with database.session() as db:
                    if not _claim(db, notification_id, now):
                        continue  # sent meanwhile
                    notification = db.get(Notification, notification_id)
                    assert notification is not None
                    message = compose(notification, notification.person, settings.sender)
            except Exception:  # one we cannot write (odd data): the claim rolled back; go on
                report.failed += 1
                log.exception("e-mail: notification %d could not be composed", notification_id)
                continue
            try:
                smtp.send_message(message)
            except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors; bad addresses ValueErrors
                _release(database, notification_id)
                report.failed += 1
                log.warning("e-mail: notification %d not sent (%s); retried next run", notification_id, exc)
                connection_lost = isinstance(exc, smtplib.SMTPServerDisconnected) or (
                    isinstance(exc, OSError) and not isinstance(exc, smtplib.SMTPException)
                )
                if connection_lost:  # the rest waits for the next run
                    report.failed += len(ids) - ids.index(notification_id) - 1
                    break
                continue
            report.sent += 1
    finally:
        try:
            smtp.quit()
        except OSError:
            smtp.close()
    if report.sent or report.failed:
        log.info("e-mail: %d sent, %d failed", report.sent, report.failed)
    return report
