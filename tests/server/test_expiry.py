"""The scheduler's expiry job: qualifications end at their date, machines learn it, once.

The lab's Eddie Expired holds the laser safety briefing valid until 3 March 2026.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy import func, select, update

from server.adapters.scheduler import (
    build_scheduler,
    day_begun_at_every_site,
    expire_qualifications,
    singleton_lock,
)
from server.db import Database
from server.models import (
    AuditLog,
    Competency,
    Level,
    Machine,
    Notification,
    Person,
    QualificationAction,
    Site,
)
from server.services import allowlists, notifications, training
from server.services.qualifications import expiring_window, qualification_state
from tests.conftest import Clock
from werkbank_protocol.allowlist import badge_hash, key_bytes

EDDIE_BADGE = "0BADCAFE"
QUINN_BADGE = "04A224B2C35E80"


def _person(db: Database, name: str) -> int:
    with db.session() as s:
        return int(s.scalars(select(Person.id).where(Person.name == name)).one())


def _laser_history(db: Database, name: str) -> list[QualificationAction]:
    with db.session() as s:
        person = s.scalars(select(Person).where(Person.name == name)).one()
        laser = next(c for c in s.scalars(select(Competency)) if c.slug == "laser-safety")
        return [q.action for q in training.history(s, person.id, laser.id)]


def _publish(db: Database) -> None:
    """What the bridge does after publishing: the lists are clean again."""
    with db.session() as s:
        s.execute(update(Machine).values(allowlist_dirty=False))


def test_expiry_job_expires_once_and_reissues_allowlists(lab: Database, clock: Clock) -> None:
    _publish(lab)
    assert expire_qualifications(lab, clock.now) == 1
    with lab.session() as s:
        laser = s.scalars(select(Machine).where(Machine.slug == "laser-1")).one()
        assert laser.allowlist_dirty, "the bridge must reissue the laser's allow-list"
        key = key_bytes(laser.allowlist_key)
        hashes = {e["badge_hash"] for e in allowlists.build(s, laser, clock.now, 7)["entries"]}
    assert badge_hash(key, EDDIE_BADGE) not in hashes
    assert badge_hash(key, QUINN_BADGE) in hashes
    assert _laser_history(lab, "Eddie Expired") == [QualificationAction.EXPIRED, QualificationAction.GRANTED]

    _publish(lab)
    clock.advance(hours=1)
    assert expire_qualifications(lab, clock.now) == 0  # the next hourly run, or a restart
    assert _laser_history(lab, "Eddie Expired") == [QualificationAction.EXPIRED, QualificationAction.GRANTED]
    with lab.session() as s:
        assert not s.scalars(select(Machine.allowlist_dirty).where(Machine.slug == "laser-1")).one()
        audits = s.scalar(select(func.count()).where(AuditLog.action == "qualification.expired"))
        assert audits == 1


def test_expiry_job_waits_for_the_sites_midnight(lab: Database) -> None:
    # 3 March is Eddie's last valid day: 23:00 in Berlin is still inside it.
    assert expire_qualifications(lab, datetime(2026, 3, 3, 22, 0, tzinfo=UTC)) == 0
    assert _laser_history(lab, "Eddie Expired") == [QualificationAction.GRANTED]
    # 00:30 on 4 March in Berlin (still 3 March in UTC).
    assert expire_qualifications(lab, datetime(2026, 3, 3, 23, 30, tzinfo=UTC)) == 1


def test_expiry_job_tells_the_holder_and_the_trainer(lab: Database, clock: Clock) -> None:
    expire_qualifications(lab, clock.now)
    expire_qualifications(lab, clock.now)
    eddie, tina = _person(lab, "Eddie Expired"), _person(lab, "Tina Trainer")
    with lab.session() as s:
        [mine] = notifications.unread(s, eddie)
        [theirs] = notifications.unread(s, tina)
        assert notifications.render(mine, "en") == (
            "Your Laser safety briefing expired on March 3, 2026. Ask a trainer to renew it."
        )
        assert notifications.render(mine, "de") == (
            "Ihre Qualifikation Laser-Sicherheitsunterweisung ist am 3. März 2026 abgelaufen. "
            "Bitte beim Trainer-Team verlängern lassen."
        )
        assert notifications.render(theirs, "de") == (
            "Eddie Expired: Laser-Sicherheitsunterweisung ist am 3. März 2026 abgelaufen."
        )
        assert s.scalar(select(func.count()).select_from(Notification)) == 2


def test_expiry_of_someone_who_left_tells_nobody(lab: Database, clock: Clock) -> None:
    with lab.session() as s:
        s.execute(update(Person).where(Person.name == "Eddie Expired").values(active=False))
    assert expire_qualifications(lab, clock.now) == 1  # the history is still kept right
    with lab.session() as s:
        assert s.scalar(select(func.count()).select_from(Notification)) == 0


def test_expiry_renewed_qualification_does_not_expire(lab: Database, clock: Clock) -> None:
    with lab.session() as s:
        eddie = s.scalars(select(Person).where(Person.name == "Eddie Expired")).one()
        tina = s.scalars(select(Person).where(Person.name == "Tina Trainer")).one()
        laser = s.scalars(select(Competency).where(Competency.slug == "laser-safety")).one()
        training.renew(
            s, eddie, laser, tina, "briefed again", datetime(2026, 3, 1, tzinfo=UTC), date(2026, 3, 1)
        )
    assert expire_qualifications(lab, clock.now) == 0
    assert _laser_history(lab, "Eddie Expired")[0] == QualificationAction.RENEWED


def test_expiry_site_today_is_the_latest_midnight(lab: Database) -> None:
    now = datetime(2026, 3, 3, 23, 30, tzinfo=UTC)  # 4 March in Berlin, 3 March in New York
    with lab.session() as s:
        assert day_begun_at_every_site(s, now) == date(2026, 3, 4)
        s.add(Site(slug="nyc", name="New York", timezone="America/New_York"))
        s.flush()
        assert day_begun_at_every_site(s, now) == date(2026, 3, 3)


def test_scheduler_runs_expiry_at_start_and_hourly(lab: Database) -> None:
    scheduler = build_scheduler(lab, {})
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert {"refresh_allowlists", "silent_devices", "expire_qualifications", "remind_expiring"} <= set(jobs)
    assert "email_notifications" not in jobs  # no SMTP host: notifications stay in the app
    expire = jobs["expire_qualifications"]
    assert expire.next_run_time <= datetime.now(UTC)  # at start: a restart catches up
    assert str(expire.trigger.fields[6]) == "1"  # minute 1 of every hour
    with_mail = build_scheduler(lab, {"SMTP_HOST": "mail.example.org", "SMTP_PORT": 2525})
    [email] = [j for j in with_mail.get_jobs() if j.id == "email_notifications"]
    assert email.args[1].host == "mail.example.org" and email.args[1].port == 2525


def test_scheduler_lock_lets_only_one_scheduler_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lock.sqlite'}"
    database = Database()
    database.init(url)
    try:
        with singleton_lock(database, url) as first:
            assert first
            with singleton_lock(database, url) as second:
                assert not second
        with singleton_lock(database, url) as again:
            assert again
    finally:
        database.dispose()


def test_expires_soon_ends_where_expired_begins() -> None:
    """From the last valid day to 30 days ahead a qualification "expires soon"; the day after
    its last valid day it is expired, and expired or revoked is never "expires soon"."""
    today = date(2026, 3, 3)
    granted, expired, revoked = (
        QualificationAction.GRANTED,
        QualificationAction.EXPIRED,
        QualificationAction.REVOKED,
    )

    def soon(action: QualificationAction, until: date | None) -> tuple[bool, bool]:
        state = qualification_state(Level.INDEPENDENT, action, until, today)
        return state.expires_soon(today), state.expired

    assert soon(granted, date(2026, 3, 2)) == (False, True)  # ended yesterday
    assert soon(granted, date(2026, 3, 3)) == (True, False)  # its last day
    assert soon(granted, date(2026, 4, 2)) == (True, False)  # 30 days ahead
    assert soon(granted, date(2026, 4, 3)) == (False, False)  # 31 days ahead
    assert soon(granted, None) == (False, False)  # never ends
    # The scheduler's entry stays expired, whatever its date says (the demo's Jonas).
    assert soon(expired, date(2026, 3, 10)) == (False, True)
    assert soon(expired, date(2026, 3, 2)) == (False, True)
    assert not soon(revoked, date(2026, 3, 10))[0]
    assert expiring_window(today) == (date(2026, 3, 3), date(2026, 4, 2))
