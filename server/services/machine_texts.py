"""What the participant reads at the machine, per decision reason, in German and English.

Short, and always saying what to do next.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Any

from server.i18n import LANGUAGES, N_, Localised, gettext_in, local_date, local_number, local_time

MESSAGES: dict[str, str] = {
    "ok": N_("Hello {name}! Unlocked until {until}. Tap again when you are done."),
    # A walk-in before someone else's booking: the session ends when the booking begins.
    "ok_until_booking": N_(
        "Hello {name}! Unlocked until {until}: then the machine is booked. Tap again when you are done."
    ),
    "unknown_badge": N_("Unknown badge. Please register it at the front desk."),
    "badge_blocked": N_("This badge is blocked. Please ask at the front desk."),
    "person_inactive": N_("Your account is not active. Please ask at the front desk."),
    "not_qualified": N_("You are not trained on the {machine} yet. Ask a trainer for a briefing."),
    "qualification_expired": N_("Your {competency} expired on {date}. Ask a trainer to renew it."),
    "machine_maintenance": N_("This machine is in maintenance. Please use another one."),
    "booked_by_other": N_("This machine is booked. It is free again at {free_at}."),
    "outside_opening_hours": N_("The lab is closed now. It opens again at {opens}."),
    "outside_opening_hours_unknown": N_("The lab is closed now."),
    "session_limit": N_("You already use {count} machines. Finish one first."),
    "trainer_required": N_("You may use this machine only with a trainer. Ask a trainer to tap first."),
    "trainer_not_qualified": N_("The trainer's badge is not valid for this machine. Ask another trainer."),
    "bad_request": N_("Reading failed. Please tap your badge again."),
    "badge_not_genuine": N_("This card is not a valid badge. Please ask at the front desk."),
    # At an enrolment station.
    "enrol_writing": N_("Writing the badge. Keep the card on the reader."),
    "in_use": N_("Machine in use. Please wait until it is free."),
    # A trainer at the machine (modes supervise and certify).
    "supervised_ok": N_("Hello {name}! {trainer} supervises you until {until}. Tap again when you are done."),
    "briefing_required": N_("You need the safety briefing for the {machine} first. Ask a trainer."),
    "trainer_is_participant": N_("Trainers cannot supervise or sign off themselves. Ask another trainer."),
    "signoff_recorded": N_("Sign-off recorded for {name}."),
    "signoff_recorded_level": N_("Sign-off recorded for {name}: now {level} in {competency}."),
    "nothing_to_sign_off": N_("{name} has no practical sign-off due on this machine."),
    # The entrance reader (mode checkin).
    "checked_in": N_("Welcome, {name}! Checked in at {time}. Tap again when you leave."),
    "checked_out": N_("Goodbye, {name}! Checked out at {time}."),
    "checked_in_already": N_("You are checked in, {name}. Tap again when you leave."),
}


def render(key: str, tz: str, **params: Any) -> dict[str, str]:
    """The message for ``key`` in every language, with dates and times in the site's time zone."""
    return render_text(MESSAGES[key], tz, **params)


def render_text(template: str, tz: str, **params: Any) -> dict[str, str]:
    """A catalogue template (``N_``, e.g. a TrainingError's message) in every language."""
    out: dict[str, str] = {}
    for language in LANGUAGES:
        values = {name: _format(value, language, tz) for name, value in params.items()}
        out[language] = gettext_in(language, template).format(**values)
    return out


def _format(value: Any, language: str, tz: str) -> str:
    if isinstance(value, str):  # most placeholders (a first name): before the Protocol check, which is slow
        return value
    if isinstance(value, datetime):
        return local_time(value, language, tz)
    if isinstance(value, date):
        return local_date(value, language)
    if isinstance(value, float):  # "3,5" / "3.5" (supervised hours in a training rule's message)
        return local_number(value, language)
    if isinstance(value, int):  # a count
        return str(value)
    if isinstance(value, Localised):  # a name with its German form, a level's label
        return value.in_language(language)
    if isinstance(value, dict):  # {"de": ..., "en": ...}: a name that has translations of its own
        return str(value.get(language) or value.get("en") or next(iter(value.values()), ""))
    if isinstance(value, Callable):  # type: ignore[arg-type]
        return str(value(language))
    return str(value)
