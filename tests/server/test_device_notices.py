"""Admins hear of a device offline too long while its lab is open (app notification, then e-mail)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from server.db import Database
from server.models import Device, Machine, Notification, Person
from server.scheduler import notify_offline_devices
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
