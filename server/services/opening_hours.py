"""Opening hours: the one rule of whose hours apply to a machine, and the hours as a few lines
of text for the admin pages.

One line per set of days, e.g.::

    mon-fri 09:00-18:00
    sat 10:00-14:00

Days are English (``mon`` … ``sun``) or German (``mo`` … ``so``) abbreviations, as a range
(``mon-fri``), a list (``mon,wed``) or both; a day may have several lines (a lunch break).
Days without a line are closed. Empty text means no hours of its own: a site is then open
at all times, a machine follows its site. The decision reads the hours on every tap, so a
change applies at once.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import time
from typing import Any, TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from server.i18n import N_
from server.models import Machine, OpeningHours

DAY_NAMES: dict[str, int] = {
    **{name: i for i, name in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))},
    **{name: i for i, name in enumerate(("mo", "di", "mi", "do", "fr", "sa", "so"))},
}
H = TypeVar("H")


def effective(own: Sequence[H], site: Sequence[H]) -> Sequence[H]:
    """The rule: a machine's own opening hours when it has any, else its site's. Every reader of
    opening hours (the decision, bookings, usage, the booking grid) goes through here."""
    return own or site


def machine_hours(db: Session, machine: Machine) -> list[OpeningHours]:
    """The opening hours that apply to ``machine`` (:func:`effective`), in one query."""
    rows = db.scalars(
        select(OpeningHours).where(
            or_(
                OpeningHours.machine_id == machine.id,
                and_(OpeningHours.site_id == machine.site_id, OpeningHours.machine_id.is_(None)),
            )
        )
    ).all()
    own = [r for r in rows if r.machine_id == machine.id]
    return list(effective(own, [r for r in rows if r.machine_id is None]))


SHORT = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LINE = re.compile(
    r"^(?P<days>[a-zA-Z,\-\u2013 ]+?)\s+"
    r"(?P<opens>\d{1,2}[:.]\d{2})\s*[-\u2013]\s*(?P<closes>\d{1,2}[:.]\d{2})$"
)


class HoursError(ValueError):
    """Text that is not opening hours. ``message`` is a translatable template (``N_``) naming the
    line and what is expected, filled from ``params`` in the reader's language."""

    def __init__(self, message: str, **params: Any) -> None:
        self.message = message
        self.params = params
        super().__init__(message.format(**params))

    def text(self, translate: Callable[[str], str]) -> str:
        return translate(self.message).format(**self.params)


@dataclass(frozen=True, order=True)
class Interval:
    weekday: int  # Monday = 0
    opens: time
    closes: time


def _time(text: str, line_no: int) -> time:
    hours, minutes = (int(part) for part in re.split(r"[:.]", text))
    if hours == 24 and minutes == 0:
        return time(23, 59)
    if not (0 <= hours < 24 and 0 <= minutes < 60):
        raise HoursError(
            N_("Line {line}: {time} is not a time of day (00:00 to 24:00)."), line=line_no, time=text
        )
    return time(hours, minutes)


def _days(text: str, line_no: int) -> list[int]:
    days: list[int] = []
    for part in re.split(r"\s*,\s*", text.strip().lower()):
        ends = [p.strip() for p in re.split(r"[-\u2013]", part)]
        if len(ends) > 2 or any(end not in DAY_NAMES for end in ends):
            raise HoursError(
                N_("Line {line}: {days} is not a day. Use mon … sun or mo … so, e.g. mon-fri."),
                line=line_no,
                days=part,
            )
        first, last = DAY_NAMES[ends[0]], DAY_NAMES[ends[-1]]
        if last < first:
            raise HoursError(
                N_("Line {line}: {days} runs backwards. Write the days from Monday on."),
                line=line_no,
                days=part,
            )
        days.extend(range(first, last + 1))
    return days


def parse(text: str) -> list[Interval]:
    """The intervals the text describes, sorted; raises HoursError for the first bad line."""
    intervals: list[Interval] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise HoursError(N_("Line {line}: write days and times like mon-fri 09:00-18:00."), line=line_no)
        opens = _time(match["opens"], line_no)
        closes = _time(match["closes"], line_no)
        if closes <= opens:
            raise HoursError(
                N_("Line {line}: the closing time must be after the opening time."), line=line_no
            )
        for day in _days(match["days"], line_no):
            intervals.append(Interval(day, opens, closes))
    intervals.sort()
    for before, after in itertools.pairwise(intervals):
        if before.weekday == after.weekday and after.opens < before.closes:
            raise HoursError(
                N_("Two lines overlap on {day}. Give each time only once."), day=SHORT[before.weekday]
            )
    return intervals


def format_hours(rows: Iterable[OpeningHours | Interval]) -> str:
    """The text for rows, days with the same times joined into ranges (``mon-fri 09:00-18:00``)."""
    by_times: dict[tuple[time, time], list[int]] = {}
    for row in sorted(rows, key=lambda r: (r.opens, r.closes, r.weekday)):
        by_times.setdefault((row.opens, row.closes), []).append(row.weekday)
    lines: list[tuple[int, str]] = []
    for (opens, closes), days in by_times.items():
        lines.append((days[0], f"{_ranges(sorted(set(days)))} {opens:%H:%M}-{closes:%H:%M}"))
    return "\n".join(text for _, text in sorted(lines))


def _ranges(days: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = days[0]
    for day in [*days[1:], None]:
        if day is not None and day == prev + 1:
            prev = day
            continue
        parts.append(SHORT[start] if start == prev else f"{SHORT[start]}-{SHORT[prev]}")
        if day is not None:
            start = prev = day
    return ",".join(parts)


def replace(db: Session, site_id: int, machine_id: int | None, intervals: Iterable[Interval]) -> None:
    """Make ``intervals`` the site's own (machine_id None) or the machine's opening hours."""
    owner = OpeningHours.machine_id == machine_id if machine_id else OpeningHours.machine_id.is_(None)
    # Row by row through the session, not one DELETE statement: the flush hooks (the usage
    # figures' open hours) see hours that were removed, too.
    for row in db.scalars(select(OpeningHours).where(OpeningHours.site_id == site_id, owner)):
        db.delete(row)
    for iv in intervals:
        db.add(
            OpeningHours(
                site_id=site_id, machine_id=machine_id, weekday=iv.weekday, opens=iv.opens, closes=iv.closes
            )
        )
