"""Opening hours as text (the admin pages' field): what is accepted, how it reads back, what is refused."""

from __future__ import annotations

from datetime import time

import pytest

from server.services.opening_hours import HoursError, Interval, format_hours, parse


def test_ranges_lists_german_days_and_a_lunch_break_read_back_joined() -> None:
    text = "Mo-Fr 09:00-12:00\nmon-fri 13:00\u201318:00\n\nsat,so 10.00 - 14:00\n"
    intervals = parse(text)
    assert Interval(0, time(9), time(12)) in intervals
    assert Interval(4, time(13), time(18)) in intervals
    assert Interval(6, time(10), time(14)) in intervals
    assert len(intervals) == 5 + 5 + 2
    assert format_hours(intervals) == "mon-fri 09:00-12:00\nmon-fri 13:00-18:00\nsat-sun 10:00-14:00"
    assert parse(format_hours(intervals)) == intervals


def test_gaps_in_days_read_back_as_a_list_and_midnight_is_the_last_minute() -> None:
    intervals = parse("mon,wed-thu,sun 08:00-24:00")
    assert [iv.weekday for iv in intervals] == [0, 2, 3, 6]
    assert intervals[0].closes == time(23, 59)
    assert format_hours(intervals) == "mon,wed-thu,sun 08:00-23:59"


def test_empty_text_means_no_hours_of_its_own() -> None:
    assert parse("") == []
    assert parse("  \n \n") == []
    assert format_hours([]) == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("funday 09:00-10:00", "Line 1: funday is not a day"),
        ("mon 25:00-26:00", "Line 1: 25:00 is not a time of day"),
        ("mon 09:70-10:00", "Line 1: 09:70 is not a time of day"),
        ("fri-mon 09:00-10:00", "Line 1: fri-mon runs backwards"),
        ("mon 10:00-09:00", "Line 1: the closing time must be after the opening time"),
        ("mon 10:00-10:00", "Line 1: the closing time must be after the opening time"),
        ("mon-fri 09:00-12:00\ntue 11:00-13:00", "Two lines overlap on tue"),
        ("tue 9-12", "Line 1: write days and times like mon-fri 09:00-18:00"),
        ("\n09:00-12:00", "Line 2: write days and times"),
        ("mon-tue-wed 09:00-12:00", "Line 1: mon-tue-wed is not a day"),
    ],
)
def test_bad_lines_are_refused_with_the_line_and_what_to_write(text: str, expected: str) -> None:
    with pytest.raises(HoursError) as caught:
        parse(text)
    assert str(caught.value).startswith(expected)
