"""Reminders of expiring qualifications, in the app and by e-mail through a real SMTP server.

The SMTP server is aiosmtpd on a free port, speaking real SMTP (with login) to smtplib.
"""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import func, select, update

from server.adapters.scheduler import email_notifications, expire_qualifications, remind_expiring
from server.db import Database
from server.models import Competency, Notification, Person, Site
from server.services import notifications, training
from server.services.mail import SmtpSettings
from tests.conftest import Clock

# Eddie's laser safety briefing is valid until 3 March 2026: inside 30 days from 10 February.
IN_WINDOW = datetime(2026, 2, 10, 9, 0, tzinfo=UTC)


def _id(db: Database, name: str) -> int:
    with db.session() as s:
        return int(s.scalars(select(Person.id).where(Person.name == name)).one())


def _texts(db: Database, name: str, language: str) -> list[str]:
    with db.session() as s:
        return [notifications.render(n, language) for n in notifications.unread(s, _id(db, name))]


def _renew_laser(db: Database, name: str, day: date) -> date:
    """A trainer renews ``name``'s laser briefing on ``day``; returns its new last valid day."""
    with db.session() as s:
        person = s.scalars(select(Person).where(Person.name == name)).one()
        tina = s.scalars(select(Person).where(Person.name == "Tina Trainer")).one()
        laser = s.scalars(select(Competency).where(Competency.slug == "laser-safety")).one()
        entry = training.renew(s, person, laser, tina, "briefed again", datetime.now(UTC), day)
        assert entry.valid_until is not None
        return entry.valid_until


# -- in the app ----------------------------------------------------------------------------------


def test_notifications_remind_holder_and_trainer_once(lab: Database) -> None:
    assert remind_expiring(lab, IN_WINDOW) == 2
    assert remind_expiring(lab, IN_WINDOW) == 0  # the next run: nobody hears it twice
    assert _texts(lab, "Eddie Expired", "en") == [
        "Your Laser safety briefing expires on March 3, 2026. Ask a trainer to renew it."
    ]
    assert _texts(lab, "Eddie Expired", "de") == [
        "Ihre Qualifikation Laser-Sicherheitsunterweisung läuft am 3. März 2026 ab. "
        "Bitte beim Trainer-Team verlängern lassen."
    ]
    assert _texts(lab, "Tina Trainer", "en") == [
        "Eddie Expired's Laser safety briefing expires on March 3, 2026."
    ]
    assert _texts(lab, "Quinn Qualified", "en") == []


def test_notifications_nothing_outside_thirty_days(lab: Database) -> None:
    with lab.session() as s:
        assert notifications.remind_expiring(s, date(2026, 1, 31)) == 0  # 31 days before 3 March
        assert notifications.remind_expiring(s, date(2026, 2, 1)) == 2  # 30 days before


def test_notifications_expired_after_reminder_is_a_new_notification(lab: Database, clock: Clock) -> None:
    remind_expiring(lab, IN_WINDOW)
    expire_qualifications(lab, clock.now)
    assert _texts(lab, "Eddie Expired", "en") == [
        "Your Laser safety briefing expired on March 3, 2026. Ask a trainer to renew it.",
        "Your Laser safety briefing expires on March 3, 2026. Ask a trainer to renew it.",
    ]


def test_notifications_renewal_is_reminded_again_next_year(lab: Database) -> None:
    remind_expiring(lab, IN_WINDOW)
    until = _renew_laser(lab, "Eddie Expired", date(2026, 2, 20))
    assert until == date(2027, 2, 20)
    with lab.session() as s:
        assert notifications.remind_expiring(s, date(2026, 2, 21)) == 0  # the renewal is newest now
        assert notifications.remind_expiring(s, date(2027, 2, 1)) == 2
    assert _texts(lab, "Eddie Expired", "en")[0] == (
        "Your Laser safety briefing expires on February 20, 2027. Ask a trainer to renew it."
    )


def test_notifications_renewal_settles_the_old_reminders(lab: Database, clock: Clock) -> None:
    remind_expiring(lab, IN_WINDOW)
    expire_qualifications(lab, clock.now)
    assert len(_texts(lab, "Eddie Expired", "en")) == 2
    _renew_laser(lab, "Eddie Expired", clock.now.date())
    remind_expiring(lab, clock.now)
    assert _texts(lab, "Eddie Expired", "en") == []
    assert _texts(lab, "Tina Trainer", "en") == []


def test_notifications_go_to_the_sites_trainers_else_its_admins(lab: Database) -> None:
    with lab.session() as s:
        north = Site(slug="north", name="North", timezone="Europe/Berlin")
        s.add(north)
        s.flush()
        admin = Person(site_id=north.id, name="Alex Admin", is_admin=True, is_participant=False)
        pia = Person(site_id=north.id, name="Pia Participant", language="en")
        s.add_all([admin, pia])
        s.flush()
        laser = s.scalars(select(Competency).where(Competency.slug == "laser-safety")).one()
        tina = s.scalars(select(Person).where(Person.name == "Tina Trainer")).one()
        training.grant(
            s, pia, laser, training.Level.INDEPENDENT, tina, "prior course", IN_WINDOW, date(2025, 3, 1)
        )
        # Tina trains lasers at the test lab, not at North: North's admin hears it.
        assert [p.name for p in notifications.trainers_for(s, pia, laser, date(2026, 2, 10))] == [
            "Alex Admin"
        ]
        eddie = s.scalars(select(Person).where(Person.name == "Eddie Expired")).one()
        assert [p.name for p in notifications.trainers_for(s, eddie, laser, date(2026, 2, 10))] == [
            "Tina Trainer"
        ]
    remind_expiring(lab, IN_WINDOW)
    assert _texts(lab, "Alex Admin", "en") == [
        "Pia Participant's Laser safety briefing expires on March 1, 2026."
    ]
    assert "Pia Participant's" not in " ".join(_texts(lab, "Tina Trainer", "en"))


def test_notifications_mark_read_only_ones_own(lab: Database) -> None:
    remind_expiring(lab, IN_WINDOW)
    eddie, tina = _id(lab, "Eddie Expired"), _id(lab, "Tina Trainer")
    with lab.session() as s:
        [tinas] = notifications.unread(s, tina)
        [eddies] = notifications.unread(s, eddie)
        assert notifications.mark_read(s, eddie, [tinas.id]) == 0
        assert notifications.mark_read(s, eddie, [eddies.id, eddies.id]) == 1
        assert notifications.mark_read(s, eddie, [eddies.id]) == 0
    with lab.session() as s:
        assert notifications.unread(s, eddie) == []
        assert len(notifications.unread(s, tina)) == 1
    assert remind_expiring(lab, IN_WINDOW) == 0  # read is not forgotten: no second reminder


def test_notifications_inactive_holder_is_not_reminded(lab: Database) -> None:
    with lab.session() as s:
        s.execute(update(Person).where(Person.name == "Eddie Expired").values(active=False))
    assert remind_expiring(lab, IN_WINDOW) == 0


# -- by e-mail -----------------------------------------------------------------------------------


@dataclass
class Inbox:
    """What a real SMTP server received (aiosmtpd's handler hooks)."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(message, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"werkbank", b"s3cret")
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.messages if address in rcpt]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    port = _free_port()
    controller = Controller(
        inbox,
        hostname="127.0.0.1",
        port=port,
        authenticator=inbox.authenticate,
        auth_require_tls=False,  # no certificate in the test; production uses STARTTLS
    )
    controller.start()
    settings = SmtpSettings(
        host="127.0.0.1",
        port=port,
        user="werkbank",
        password="s3cret",
        sender="Werkbank <werkbank@test.local>",
        starttls=False,
        timeout_s=5,
    )
    yield inbox, settings
    controller.stop()


def _give_email(db: Database, name: str, address: str, language: str) -> None:
    with db.session() as s:
        s.execute(update(Person).where(Person.name == name).values(email=address, language=language))


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")  # SMTP lines end in CRLF on the wire


def test_notifications_emailed_in_each_persons_language(
    lab: Database, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    _give_email(lab, "Eddie Expired", "eddie@test.local", "de")
    _renew_laser(lab, "Quinn Qualified", date(2026, 1, 20))  # English; valid until 20 January 2027
    remind_expiring(lab, IN_WINDOW)
    remind_expiring(lab, datetime(2027, 1, 5, 9, 0, tzinfo=UTC))

    report = email_notifications(lab, settings)
    assert (report.sent, report.failed) == (4, 0)  # Eddie, Quinn, and Tina twice (as their trainer)
    assert inbox.logins == ["werkbank"]

    [german] = inbox.to("eddie@test.local")
    assert german["Subject"] == "Laser-Sicherheitsunterweisung läuft bald ab"
    assert german["From"] == "Werkbank <werkbank@test.local>"
    assert german["To"] == "Eddie Expired <eddie@test.local>"
    assert german["Content-Language"] == "de"
    assert _body(german).startswith(
        "Hallo Eddie Expired,\n\n"
        "Ihre Qualifikation Laser-Sicherheitsunterweisung läuft am 3. März 2026 ab. "
        "Bitte beim Trainer-Team verlängern lassen.\n"
    )
    [english] = inbox.to("quinn@test.local")
    assert english["Subject"] == "Your Laser safety briefing expires soon"
    assert _body(english).startswith(
        "Hello Quinn Qualified,\n\n"
        "Your Laser safety briefing expires on January 20, 2027. Ask a trainer to renew it.\n"
    )
    # Tina has no language of her own: German, the default.
    assert sorted(m["Subject"] for m in inbox.to("tina@test.local")) == [
        "Eddie Expired: Laser-Sicherheitsunterweisung läuft bald ab",
        "Quinn Qualified: Laser-Sicherheitsunterweisung läuft bald ab",
    ]

    again = email_notifications(lab, settings)
    assert (again.sent, again.failed) == (0, 0)
    assert len(inbox.messages) == 4  # never twice
    with lab.session() as s:
        assert s.scalar(select(func.count()).where(Notification.emailed_at.is_(None))) == 0


def test_notifications_email_skips_people_without_address(
    lab: Database, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    remind_expiring(lab, IN_WINDOW)  # Eddie (no e-mail address) and Tina
    report = email_notifications(lab, settings)
    assert report.sent == 1
    assert [rcpt for rcpt, _m in inbox.messages] == [["tina@test.local"]]
    assert _texts(lab, "Eddie Expired", "en") != []  # he still sees it in the app


def test_notifications_email_failure_is_retried_next_run(
    lab: Database, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    _give_email(lab, "Eddie Expired", "eddie@test.local", "en")
    remind_expiring(lab, IN_WINDOW)

    nobody_listens = SmtpSettings(host="127.0.0.1", port=_free_port(), starttls=False, timeout_s=2)
    down = email_notifications(lab, nobody_listens)
    assert (down.sent, down.failed) == (0, 2)

    wrong_password = SmtpSettings(**{**settings.__dict__, "password": "wrong"})
    refused = email_notifications(lab, wrong_password)
    assert (refused.sent, refused.failed) == (0, 2)

    inbox.refuse = {"eddie@test.local"}
    half = email_notifications(lab, settings)
    assert (half.sent, half.failed) == (1, 1)
    assert inbox.to("tina@test.local") and not inbox.to("eddie@test.local")

    inbox.refuse = set()
    rest = email_notifications(lab, settings)
    assert (rest.sent, rest.failed) == (1, 0)
    assert len(inbox.to("eddie@test.local")) == 1 and len(inbox.to("tina@test.local")) == 1


def test_notifications_email_an_unsendable_address_does_not_stop_the_others(
    lab: Database, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    _give_email(lab, "Eddie Expired", "eddie@bäckerei.test", "de")  # the server has no SMTPUTF8
    remind_expiring(lab, IN_WINDOW)
    report = email_notifications(lab, settings)
    assert (report.sent, report.failed) == (1, 1)
    assert [rcpt for rcpt, _m in inbox.messages] == [["tina@test.local"]]


def test_notifications_read_in_the_app_are_not_emailed(
    lab: Database, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    remind_expiring(lab, IN_WINDOW)
    tina = _id(lab, "Tina Trainer")
    with lab.session() as s:
        notifications.mark_read(s, tina, [n.id for n in notifications.unread(s, tina)])
    assert email_notifications(lab, settings).sent == 0
    assert inbox.messages == []
