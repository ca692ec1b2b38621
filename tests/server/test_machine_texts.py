"""Times and dates in machine messages: remembered per minute, never mixed up between zones."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from server.i18n import local_date, local_time
from server.services.machine_texts import render


def test_a_time_is_worded_in_the_sites_zone_and_the_same_minute_alike() -> None:
    moment = datetime(2026, 11, 18, 13, 30, 59, 999_000, tzinfo=UTC)
    berlin = local_time(moment, "de", "Europe/Berlin")
    assert "14:30" in berlin
    # The same moment in another zone is worded for that zone, not taken from memory.
    assert "08:30" in local_time(moment, "de", "America/New_York")
    assert "13:30" in local_time(moment, "de", "UTC")
    # Seconds do not show: the same minute is worded alike, the next one differently.
    assert local_time(moment - timedelta(seconds=59), "de", "Europe/Berlin") == berlin
    assert "14:31" in local_time(moment + timedelta(seconds=1), "de", "Europe/Berlin")
    assert "2:30" in local_time(moment, "en", "Europe/Berlin")


def test_today_shows_the_time_only_another_day_the_date_too() -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    assert local_time(now, "en", "UTC") == local_time(now, "en", "UTC").split(", ")[-1]
    later = local_time(now + timedelta(days=3), "en", "UTC")
    assert later != local_time(now, "en", "UTC") and "," in later


def test_rendered_messages_carry_counts_names_and_dates() -> None:
    message = render("session_limit", "Europe/Berlin", count=2)
    assert "2" in message["de"] and "2" in message["en"]
    expired = render("qualification_expired", "Europe/Berlin", competency="Laser", date=date(2026, 3, 3))
    assert local_date(date(2026, 3, 3), "de") in expired["de"] and "Laser" in expired["en"]
    assert "März" in expired["de"] and "March" in expired["en"]
