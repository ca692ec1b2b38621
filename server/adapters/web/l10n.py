"""Typed doors to Flask-Babel for the web pages: translation, and times in the site's time zone.

Flask-Babel ships no type information; wrapping the few functions we use keeps
``mypy --strict`` meaningful in the views. ``pybabel extract`` finds ``_()`` and
``_l()`` calls here and everywhere else by name.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import flask_babel  # type: ignore[import-untyped,unused-ignore]

from server.i18n import Localised, local_number


def _(msgid: str, **variables: Any) -> str:
    """Translate now (inside a request), with ``%(name)s`` variables."""
    return str(flask_babel.gettext(msgid, **variables))


def _l(msgid: str) -> Any:
    """Translate later, when rendered: for texts defined at import time (form labels).

    Returns Flask-Babel's LazyString, which WTForms renders like a ``str``.
    """
    return flask_babel.lazy_gettext(msgid)


def current_language() -> str:
    return str(flask_babel.get_locale() or "en")


class Named(Protocol):
    """A site, machine type, competency or training step: a name with its German form."""

    def display_name(self, language: str) -> str: ...


def local_name(thing: Named) -> str:
    """The name in the reader's language (the ``local_name`` filter in templates)."""
    return thing.display_name(current_language())


def number(value: float, digits: int = 1) -> str:
    """``3,5`` for German readers, ``3.5`` for English ones (the ``number`` filter in templates)."""
    return local_number(float(value), current_language(), digits)


def local_date(when: datetime) -> str:
    """The calendar day of ``when`` in the user's (the site's) time zone, ISO format."""
    local: datetime = flask_babel.to_user_timezone(when)
    return local.date().isoformat()


def when_label(when: datetime, now: datetime) -> str:
    """``10:05`` for today, else the short date and time, in the site's time zone."""
    if local_date(when) == local_date(now):
        return str(flask_babel.format_time(when, "short"))
    return str(flask_babel.format_datetime(when, "short"))


def clock_label(when: datetime) -> str:
    """``10:05:33``: when the page was last updated."""
    return str(flask_babel.format_time(when, "medium"))


def ago_label(when: datetime, now: datetime) -> str:
    """``2 minutes ago`` (``vor 2 Minuten``)."""
    return str(flask_babel.format_timedelta(when - now, granularity="second", add_direction=True))


def span_label(seconds: float) -> str:
    """A rounded length of time in words: ``1 hour``, ``3 seconds`` (``1 Stunde``)."""
    return str(flask_babel.format_timedelta(timedelta(seconds=seconds), granularity="second"))


# More than this is no measurement (ingestion bounds every session at a week since issue 11;
# a record stored before then may hold anything): the label says so in a few characters.
LABEL_MAX_HOURS = 1_000_000


def duration_label(seconds: float) -> str:
    """Hours and minutes, the way machine hours are counted: ``3 h 05 min``."""
    if not math.isfinite(seconds) or seconds > LABEL_MAX_HOURS * 3600:
        return _("over %(hours)d h", hours=LABEL_MAX_HOURS)
    minutes = round(max(seconds, 0.0) / 60)
    return _("%(hours)d h %(minutes)02d min", hours=minutes // 60, minutes=minutes % 60)


def start_of_today(now: datetime) -> datetime:
    """Midnight of today in the user's (the site's) time zone, as an aware datetime."""
    # zoneinfo, not the pytz zone Flask-Babel holds: replace() on a pytz datetime keeps
    # the offset of ``now``, which is an hour off on the days the clocks change.
    tz = ZoneInfo(str(flask_babel.get_timezone()))
    return datetime.combine(now.astimezone(tz).date(), time(0), tzinfo=tz)


def date_label(day: date) -> str:
    """A calendar day the way the reader writes it: ``18.11.2026`` / ``Nov 18, 2026``."""
    return str(flask_babel.format_date(day, "medium"))


class Refusal(Protocol):
    """What services raise when their rules refuse (e.g. ``TrainingError``)."""

    message: str
    params: dict[str, Any]


def error_text(error: Refusal) -> str:
    """A service's refusal (``message`` a ``N_`` template with ``{name}`` placeholders, ``params``)
    in the reader's language."""
    language = current_language()
    params: dict[str, Any] = {}
    for key, value in error.params.items():
        if isinstance(value, date):
            params[key] = date_label(value)
        elif isinstance(value, Localised):
            params[key] = value.in_language(language)
        elif isinstance(value, float):
            params[key] = local_number(value, language)
        else:
            params[key] = value
    return _(error.message).format(**params)
