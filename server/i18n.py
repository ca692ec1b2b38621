"""Translations outside a web request: machine messages are sent in German *and* English.

The web pages use Flask-Babel; the bridge has no request, so it loads the same
catalogue (server/translations) directly through Babel.
"""

from __future__ import annotations

from datetime import date, datetime
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, format_time
from babel.support import NullTranslations, Translations

CATALOG_DIR = Path(__file__).resolve().parent / "translations"
LANGUAGES = ("de", "en")


def N_(text: str) -> str:
    return text


@lru_cache(maxsize=8)
def translations(language: str) -> NullTranslations:
    return Translations.load(str(CATALOG_DIR), [language], domain="messages")


def gettext_in(language: str, msgid: str) -> str:
    return translations(language).gettext(msgid)


def local_time(when: datetime, language: str, tz: str) -> str:
    """``14:30`` today, else ``Mo., 14:30`` within a week, in the site's time zone."""
    local = when.astimezone(ZoneInfo(tz))
    today = datetime.now(ZoneInfo(tz)).date()
    if local.date() == today:
        return format_time(local, "HH:mm", locale=language)
    return format_datetime(local, "EEE d MMM, HH:mm", locale=language)


def local_date(day: date, language: str) -> str:
    """``3. März 2026`` / ``3 March 2026``."""
    return format_date(day, "d. MMMM yyyy" if language == "de" else "d MMMM yyyy", locale=language)
