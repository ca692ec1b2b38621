"""The scheduler's booking jobs: no-shows released (and their holders told), reminders before a
booking, once each, in the app and by e-mail through a real SMTP server (aiosmtpd, as in
test_notifications.py). A hand-moved clock: now is Wed 2026-11-18, 10:00 in Berlin.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from server.adapters.scheduler import email_notifications, release_no_shows, remind_bookings
from server.db import Database
from server.models import Booking, BookingPolicy, BookingStatus, Machine, Notification, Person, Site
from server.services import bookings, notifications
from server.services.mail import SmtpSettings
from tests.server import test_notifications
from tests.server.test_notifications import Inbox, _body

smtp_server = test_notifications.smtp_server  # the real SMTP server fixture, shared

T = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)  # Wed 10:00 in Berlin


def at(minutes: float, days: int = 0) -> datetime:
    return T + timedelta(days=days, minutes=minutes)


def _person(s: object, name: str) -> Person:
    found = s.scalar(select(Person).where(Person.name == name))  # type: ignore[attr-defined]
    assert found is not None
    return found  # type: ignore[no-any-return]


def book(
    db: Database, who: str, start: datetime, end: datetime, now: datetime = T, machine: str = "printer-1"
) -> str:
    with db.session() as s:
        m = s.scalar(select(Machine).where(Machine.slug == machine))
        assert m is not None
        tina = _person(s, "Tina Trainer")
        return bookings.create(s, _person(s, who), m, start, end, tina, now).id


def texts(db: Database, name: str, language: str) -> list[str]:
    with db.session() as s:
        return [notifications.render(n, language) for n in notifications.unread(s, _person(s, name).id)]


def _email(db: Database, name: str, address: str, language: str) -> None:
    with db.session() as s:
        s.execute(update(Person).where(Person.name == name).values(email=address, language=language))


# -- no-shows --------------------------------------------------------------------------------------


def test_booking_jobs_release_no_shows_tells_the_holder_once(lab: Database) -> None:
    booking_id = book(lab, "Quinn Qualified", at(0), at(60))
    assert release_no_shows(lab, at(14)) == 0
    assert texts(lab, "Quinn Qualified", "en") == []
    assert release_no_shows(lab, at(15)) == 1
    assert release_no_shows(lab, at(16)) == 0
    with lab.session() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        assert (booking.status, booking.no_show) == (BookingStatus.RELEASED, True)
    assert texts(lab, "Quinn Qualified", "en") == [
        "Your booking of Printer 1 on November 18, 2026 at 10:00\u202fAM was released: you had not tapped in "
        "15 minutes after its start. Missed bookings can block new ones for a while."
    ]
    assert texts(lab, "Quinn Qualified", "de") == [
        "Ihre Buchung von Printer 1 am 18. November 2026 um 10:00 wurde freigegeben: Sie hatten sich "
        "15 Minuten nach Beginn nicht mit dem Ausweis angemeldet. Versäumte Buchungen können neue "
        "Buchungen eine Zeit lang sperren."
    ]
    assert texts(lab, "Tina Trainer", "en") == [], "only the holder hears it"


def test_booking_jobs_release_follows_the_sites_policy(lab: Database) -> None:
    with lab.session() as s:
        site = s.scalar(select(Site))
        assert site is not None
        s.add(BookingPolicy(site_id=site.id, no_show_after_min=30))
    book(lab, "Quinn Qualified", at(0), at(60))
    assert release_no_shows(lab, at(29)) == 0
    assert release_no_shows(lab, at(30)) == 1
    assert "not tapped in 30 minutes" in texts(lab, "Quinn Qualified", "en")[0]


def test_booking_jobs_release_is_emailed(lab: Database, smtp_server: tuple[Inbox, SmtpSettings]) -> None:
    inbox, settings = smtp_server
    book(lab, "Quinn Qualified", at(0), at(60))
    release_no_shows(lab, at(15))
    report = email_notifications(lab, settings, at(16))
    assert (report.sent, report.failed) == (1, 0)
    [message] = inbox.to("quinn@test.local")
    assert message["Subject"] == "Your booking of Printer 1 was released"
    assert _body(message).startswith(
        "Hello Quinn Qualified,\n\nYour booking of Printer 1 on November 18, 2026 "
        "at 10:00\u202fAM was released"
    )
    assert email_notifications(lab, settings, at(17)).sent == 0


# -- reminders -------------------------------------------------------------------------------------


def test_booking_jobs_remind_once_before_the_booking(lab: Database) -> None:
    booking_id = book(lab, "Quinn Qualified", at(120), at(180))
    assert remind_bookings(lab, at(59)) == 0  # 61 minutes before: not yet
    assert remind_bookings(lab, at(60)) == 1
    assert remind_bookings(lab, at(61)) == 0
    assert texts(lab, "Quinn Qualified", "en") == [
        "Reminder: you booked Printer 1 on November 18, 2026 from 12:00\u202fPM to 1:00\u202fPM."
    ]
    assert texts(lab, "Quinn Qualified", "de") == [
        "Erinnerung: Sie haben Printer 1 am 18. November 2026 von 12:00 bis 13:00 gebucht."
    ]
    with lab.session() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None and booking.reminded_at == at(60)


def test_booking_jobs_moved_booking_is_reminded_again(lab: Database) -> None:
    booking_id = book(lab, "Quinn Qualified", at(120), at(180))
    assert remind_bookings(lab, at(60)) == 1
    with lab.session() as s:
        booking = s.get(Booking, booking_id)
        assert booking is not None
        bookings.move(s, booking, at(240), at(300), _person(s, "Tina Trainer"), at(70))
    assert remind_bookings(lab, at(170)) == 0
    assert remind_bookings(lab, at(180)) == 1
    assert texts(lab, "Quinn Qualified", "en")[0].endswith("from 2:00\u202fPM to 3:00\u202fPM.")


def test_booking_jobs_no_reminder_for_cancelled_late_made_or_switched_off(lab: Database) -> None:
    cancelled = book(lab, "Quinn Qualified", at(120), at(180))
    with lab.session() as s:
        booking = s.get(Booking, cancelled)
        assert booking is not None
        bookings.cancel(s, booking, _person(s, "Quinn Qualified"), at(0))
    book(lab, "Quinn Qualified", at(60), at(90), machine="laser-1", now=at(20))  # made 40 minutes before
    assert remind_bookings(lab, at(60)) == 0
    assert texts(lab, "Quinn Qualified", "en") == []
    with lab.session() as s:
        site = s.scalar(select(Site))
        assert site is not None
        s.add(BookingPolicy(site_id=site.id, reminder_before_min=0))
    book(lab, "Quinn Qualified", at(0, 1), at(60, 1))
    assert remind_bookings(lab, at(-30, 1)) == 0


def test_booking_jobs_reminder_emailed_in_the_holders_language(
    lab: Database, smtp_server: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, settings = smtp_server
    _email(lab, "Bo Blocked", "bo@test.local", "de")
    book(lab, "Bo Blocked", at(120), at(180))
    book(lab, "Quinn Qualified", at(120), at(180), machine="laser-1")
    assert remind_bookings(lab, at(60)) == 2
    report = email_notifications(lab, settings, at(61))
    assert (report.sent, report.failed) == (2, 0)
    [german] = inbox.to("bo@test.local")
    assert german["Subject"] == "Ihre Buchung von Printer 1 um 12:00"
    assert _body(german).startswith(
        "Hallo Bo Blocked,\n\n"
        "Erinnerung: Sie haben Printer 1 am 18. November 2026 von 12:00 bis 13:00 gebucht.\n"
    )
    [english] = inbox.to("quinn@test.local")
    assert english["Subject"] == "Your booking of Laser 1 at 12:00\u202fPM"
    with lab.session() as s:
        assert s.scalars(select(Notification.emailed_at)).all() == [at(61), at(61)]


def test_booking_jobs_run_every_minute_in_the_scheduler(lab: Database) -> None:
    from server.adapters.scheduler import build_scheduler

    jobs = {job.id: job for job in build_scheduler(lab, {}).get_jobs()}
    for name, function in (("release_no_shows", release_no_shows), ("remind_bookings", remind_bookings)):
        assert jobs[name].func is function
        assert jobs[name].trigger.interval == timedelta(minutes=1)
        assert jobs[name].args == (lab,)
