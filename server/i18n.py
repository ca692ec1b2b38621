"""Translations outside a web request: machine messages are sent in German *and* English.

The web pages use Flask-Babel; the bridge has no request, so it loads the same
catalogue (server/translations) directly through Babel.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date, format_skeleton, format_time
from babel.numbers import format_decimal
from babel.support import NullTranslations, Translations

CATALOG_DIR = Path(__file__).resolve().parent / "translations"
LANGUAGES = ("de", "en")


def N_(text: str) -> str:
    return text


@runtime_checkable
class Localised(Protocol):
    """A placeholder value that knows its words in every language (a name with its German
    form, a catalogue text): formatted for the reader when the reader is known."""

    def in_language(self, language: str) -> str: ...


@dataclass(frozen=True)
class CatalogText:
    """A catalogue text (``N_``) used as a placeholder value, e.g. a level's label."""

    msgid: str

    def __str__(self) -> str:
        return self.msgid

    def in_language(self, language: str) -> str:
        return gettext_in(language, self.msgid)


@lru_cache(maxsize=8)
def translations(language: str) -> NullTranslations:
    return Translations.load(str(CATALOG_DIR), [language], domain="messages")


def gettext_in(language: str, msgid: str) -> str:
    return translations(language).gettext(msgid)


def local_time(when: datetime, language: str, tz: str) -> str:
    """``14:30`` today, else ``Mo., 7. Dez., 14:30`` / ``Mon, Dec 7, 2:30 PM``, in the site's
    time zone, in the reader's locale formats (never a pattern of our own).

    Every answered tap words a time or two in each language, and Babel takes about 0.05 ms for
    one: the words of a minute are remembered (the formats show no seconds; a locale whose
    short time did would be formatted afresh each time)."""
    zone = ZoneInfo(tz)
    local = when.astimezone(zone)
    today = datetime.now(zone).date()
    if not _shows_seconds(language):
        local = local.replace(second=0, microsecond=0)
    return _local_time(local, language, tz, today)


@lru_cache(maxsize=16)
def _shows_seconds(language: str) -> bool:
    return "s" in Locale.parse(language).time_formats["short"].pattern


@lru_cache(maxsize=4096)
def _local_time(local: datetime, language: str, tz: str, today: date) -> str:
    """:func:`local_time` of a moment in ``tz`` already (``tz`` keeps apart equal moments of two zones)."""
    clock = format_time(local, "short", locale=language)
    if local.date() == today:
        return clock
    day = format_skeleton("MMMEd", local, locale=language)
    pattern: str = Locale.parse(language).datetime_formats["short"]  # "{1}, {0}": date, time
    return pattern.format(clock, day)


@lru_cache(maxsize=1024)
def local_date(day: date, language: str) -> str:
    """``3. März 2026`` / ``March 3, 2026``."""
    return format_date(day, "long", locale=language)


def local_number(value: float, language: str, digits: int = 1) -> str:
    """``3,5`` / ``3.5``: at most ``digits`` decimals, none when the value is whole."""
    pattern = "#,##0." + "#" * digits if digits > 0 else "#,##0"
    return format_decimal(value, format=pattern, locale=language)
