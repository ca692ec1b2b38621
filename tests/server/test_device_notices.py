"""Admins hear of a device offline too long while its lab is open (app notification, then e-mail)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from server.adapters.scheduler import notify_device_health, notify_offline_devices
from server.db import Database
from server.models import Device, Machine, Notification, Person
from server.services import notifications

# Test Lab (tests/data/lab.yaml) opens Monday to Friday, 08:00-20:00 Europe/Berlin.
TUESDAY_NOON = datetime(2026, 11, 17, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
SATURDAY_NOON = datetime(2026, 11, 21, 11, 0, tzinfo=UTC)


def _silent(lab: Database, device_id: str, since: datetime) -> None:
    with lab.session() as s:
        for device in s.scalars(select(Device)):
            device.online = device.id != device_id
            device.last_seen = since
        device = s.get(Device, device_id)
        assert device is not None
        device.online = False


def _notices(lab: Database) -> list[tuple[str, str]]:
    with lab.session() as s:
        rows = s.execute(
            select(Person.email, Notification)
            .join(Person, Person.id == Notification.person_id)
            .where(Notification.kind == notifications.DEVICE_OFFLINE)
        ).all()
        return [(email, notifications.render(n, "en")) for email, n in rows]


def test_device_offline_during_opening_hours_notifies_the_admins_once(lab: Database) -> None:
    _silent(lab, "pi-printer-1", TUESDAY_NOON - timedelta(minutes=20))
    assert notify_offline_devices(lab, TUESDAY_NOON) == 1
    with lab.session() as s:
        printer = s.scalar(select(Machine.name).where(Machine.slug == "printer-1"))
    assert _notices(lab) == [
        (
            "tina@test.local",
            f"The device at {printer} has been offline since 11:40 on November 17, 2026, while "
            f"the lab is open. Check its power and network; until it is back, nobody can unlock {printer}.",
        )
    ]
    # The scheduler runs every minute: the same outage is told once.
    assert notify_offline_devices(lab, TUESDAY_NOON + timedelta(minutes=1)) == 0
    assert len(_notices(lab)) == 1


def test_device_offline_briefly_or_while_closed_notifies_nobody(lab: Database) -> None:
    _silent(lab, "pi-printer-1", TUESDAY_NOON - timedelta(minutes=5))
    assert notify_offline_devices(lab, TUESDAY_NOON) == 0
    _silent(lab, "pi-printer-1", SATURDAY_NOON - timedelta(hours=3))
    assert notify_offline_devices(lab, SATURDAY_NOON) == 0
    assert _notices(lab) == []


# -- health: events not arriving, an old allow-list (devices.notify_health) -----------------------


def _report(
    lab: Database,
    device_id: str,
    at: datetime,
    oldest_s: float | None = None,
    depth: int = 0,
    allowlist_age_s: float | None = 60.0,
    online: bool = True,
) -> None:
    """What the bridge stores from the device's live status (tests/server/test_device_health.py)."""
    with lab.session() as s:
        device = s.get(Device, device_id)
        assert device is not None
        device.online, device.last_seen, device.health_reported_at = online, at, at
        device.outbox_depth, device.outbox_oldest_s = depth, oldest_s
        device.allowlist_age_s, device.allowlist_version = allowlist_age_s, 7


def _health_notices(lab: Database, language: str = "en") -> list[tuple[str, str, bool]]:
    with lab.session() as s:
        rows = s.execute(
            select(Person.email, Notification)
            .join(Person, Person.id == Notification.person_id)
            .where(
                Notification.kind.in_((notifications.DEVICE_OUTBOX_STUCK, notifications.DEVICE_ALLOWLIST_OLD))
            )
            .order_by(Notification.id)
        ).all()
        return [(email, notifications.render(n, language), n.read_at is not None) for email, n in rows]


def test_device_events_waiting_ten_minutes_tell_the_admins_once_per_episode(lab: Database) -> None:
    now = SATURDAY_NOON  # any time: events that do not arrive are news while the lab is closed too
    _report(lab, "pi-printer-1", now, oldest_s=9 * 60, depth=3)
    assert notify_device_health(lab, now) == 0  # under ten minutes: an ack may still come
    now += timedelta(minutes=2)
    _report(lab, "pi-printer-1", now, oldest_s=11 * 60, depth=4)
    assert notify_device_health(lab, now) == 1
    with lab.session() as s:
        printer = s.scalar(select(Machine.name).where(Machine.slug == "printer-1"))
    told = (
        f"Events of the device at {printer} have waited 11 minutes for the server to store them (4 "
        "waiting). The machine still works, but its sessions are missing from hours and reports until "
        "they arrive. Check that the bridge runs and hears the device (its log, /readyz)."
    )
    assert _health_notices(lab) == [("tina@test.local", told, False)]
    # Every minute the job runs again, and the device reports it still: told once.
    for _ in range(3):
        now += timedelta(minutes=1)
        _report(lab, "pi-printer-1", now, oldest_s=(now - SATURDAY_NOON).total_seconds() + 9 * 60, depth=5)
        assert notify_device_health(lab, now) == 0
    # The events arrive: the episode ends, and its notice is settled (not e-mailed any more).
    now += timedelta(minutes=1)
    _report(lab, "pi-printer-1", now, oldest_s=None, depth=0)
    assert notify_device_health(lab, now) == 0
    assert _health_notices(lab) == [("tina@test.local", told, True)]
    # It happens again later: a new episode, told again.
    now += timedelta(hours=2)
    _report(lab, "pi-printer-1", now, oldest_s=12 * 60, depth=1)
    assert notify_device_health(lab, now) == 1
    assert [read for _e, _t, read in _health_notices(lab)] == [True, False]


def test_device_old_allowlist_tells_the_admins_in_their_language(lab: Database) -> None:
    now = TUESDAY_NOON
    _report(lab, "pi-laser-1", now, allowlist_age_s=23 * 3600)
    assert notify_device_health(lab, now) == 0
    now += timedelta(hours=2)
    _report(lab, "pi-laser-1", now, allowlist_age_s=25 * 3600 + 10)
    assert notify_device_health(lab, now) == 1
    with lab.session() as s:
        laser = s.scalar(select(Machine.name).where(Machine.slug == "laser-1"))
        notice = s.scalar(select(Notification).where(Notification.kind == notifications.DEVICE_ALLOWLIST_OLD))
        assert notice is not None
        assert notifications.render_subject(notice, "en") == f"{laser}: the offline allow-list is old"
        assert (
            notifications.render_subject(notice, "de") == f"{laser}: Die Offline-Freigabeliste ist veraltet"
        )
    ((_email, english, _read),) = _health_notices(lab, "en")
    assert english.startswith(
        f"The device at {laser} holds an offline allow-list issued 25 hours ago (version 7)"
    )
    ((_email, german, _read),) = _health_notices(lab, "de")
    assert german.startswith(f"Das Gerät an {laser} hält eine Offline-Freigabeliste, die vor 25 Stunden")
    now += timedelta(minutes=1)
    _report(lab, "pi-laser-1", now, allowlist_age_s=25 * 3600 + 70)
    assert notify_device_health(lab, now) == 0
    now += timedelta(minutes=1)
    _report(lab, "pi-laser-1", now, allowlist_age_s=30.0)  # a new list arrived
    assert notify_device_health(lab, now) == 0
    assert [read for _e, _t, read in _health_notices(lab)] == [True]


def test_device_health_of_an_offline_or_silent_device_neither_begins_nor_ends_an_episode(
    lab: Database,
) -> None:
    now = TUESDAY_NOON
    # Offline with bad figures (its last report): the offline notice is the one that speaks.
    _report(lab, "pi-printer-1", now, oldest_s=3600, depth=9, online=False)
    # Online, but its last report is ten minutes old (an agent that stopped reporting).
    _report(lab, "pi-laser-1", now - timedelta(minutes=10), allowlist_age_s=3 * 86400)
    assert notify_device_health(lab, now) == 0
    # A device whose episode began goes offline with it unresolved: it stays begun, not told again.
    _report(lab, "pi-printer-1", now, oldest_s=3600, depth=9)
    assert notify_device_health(lab, now) == 1
    _report(lab, "pi-printer-1", now + timedelta(minutes=1), oldest_s=None, depth=0, online=False)
    assert notify_device_health(lab, now + timedelta(minutes=1)) == 0
    _report(lab, "pi-printer-1", now + timedelta(minutes=30), oldest_s=5400, depth=9)
    assert notify_device_health(lab, now + timedelta(minutes=30)) == 0
    assert [read for _e, _t, read in _health_notices(lab)] == [False]
