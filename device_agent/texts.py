"""The texts the agent shows at the machine by itself, in German and English.

The server's own messages come with its answers; these are the agent's: a machine in use, an
offline unlock or refusal, a job that keeps the machine unlocked, the trainer's hints, the
"ending soon" warning. Each says what to do next.
"""

from __future__ import annotations

# What the agent says by itself (the server's own messages come with its answers).
# Short, and each says what to do next: many people at the machine are new to German.
LOCAL_MESSAGES: dict[str, dict[str, str]] = {
    "in_use": {
        "de": "Maschine ist belegt. Bitte warten, bis sie frei ist.",
        "en": "Machine in use. Please wait until it is free.",
    },
    "offline_ok": {
        "de": "Freigegeben (offline). Zum Beenden Karte wieder auflegen.",
        "en": "Unlocked (offline). Tap again to finish.",
    },
    "offline_denied": {
        "de": "Server nicht erreichbar und Karte nicht freigegeben. Bitte Trainer fragen.",
        "en": "Server unreachable and badge not cleared. Please ask a trainer.",
    },
    "unreadable": {
        "de": "Karte nicht lesbar. Bitte noch einmal auflegen.",
        "en": "Card not readable. Please tap again.",
    },
    "session_ended": {
        "de": "Sitzung beendet. Danke!",
        "en": "Session ended. Thank you!",
    },
    "job_running": {
        "de": "Auftrag läuft: Die Maschine sperrt, sobald er fertig ist.",
        "en": "Job running: the machine locks when it ends.",
    },
    # Appended to the server's greeting when a trainer unlocks ({s}: the window's seconds).
    "trainer_window": {
        "de": "Trainer: In {s} s Karte der Person auflegen = betreuen, eigene Karte = Abnahme.",
        "en": "Trainer: within {s} s, tap a participant's badge to supervise, or yours to sign off.",
    },
    "signoff_armed": {
        "de": "Abnahme: Jetzt die Karte der Person auflegen.",
        "en": "Sign-off: now tap the participant's badge.",
    },
    "server_needed": {
        "de": "Server nicht erreichbar: Betreuen und Abnahme gehen nur mit Server. Bitte später noch einmal.",
        "en": "Server unreachable: supervising and sign-off need the server. Please try again later.",
    },
    # Shown once, [session] warn_before_end_s before the session's until ({m}: whole minutes left).
    "ending_soon": {
        "de": "Ihre Zeit endet in {m} Min. Bitte zum Ende kommen: Danach sperrt die Maschine.",
        "en": "Your time ends in {m} min. Please finish: then the machine locks.",
    },
    # An offline session whose badge a newer allow-list no longer lists.
    "access_withdrawn": {
        "de": "Freigabe entzogen: Die Maschine sperrt (ein laufender Auftrag wird noch fertig). "
        "Bitte Trainer fragen.",
        "en": "Access withdrawn: the machine locks (a running job finishes first). Please ask a trainer.",
    },
    # Offline, the card did not prove the badge's key (or a plain UID where the list needs proof).
    "badge_not_genuine": {
        "de": "Diese Karte ist kein gültiger Ausweis. Bitte am Empfang fragen.",
        "en": "This card is not a valid badge. Please ask at the front desk.",
    },
    # An entrance reader (`[reader] mode = "checkin"`) without an answer: the tap is kept.
    "checkin_stored": {
        "de": "Server nicht erreichbar: Ihr Kommen/Gehen ist gespeichert und wird nachgetragen.",
        "en": "Server unreachable: your check-in or check-out is stored and will be counted.",
    },
    "job_running_handover": {
        "de": "Ein Auftrag läuft. Betreuung erst starten, wenn er fertig ist.",
        "en": "A job is running. Start supervising when it has ended.",
    },
}


def trainer_greeting(greeting: dict[str, str], seconds: float) -> dict[str, str]:
    """The server's (or the offline) greeting with the trainer window's hint appended."""
    hint = LOCAL_MESSAGES["trainer_window"]
    return {
        language: f"{greeting.get(language, '')} {text.format(s=f'{seconds:g}')}".strip()
        for language, text in hint.items()
    }


def ending_soon(minutes: int) -> dict[str, str]:
    """The "ending soon" warning with the whole minutes left."""
    return {k: v.format(m=minutes) for k, v in LOCAL_MESSAGES["ending_soon"].items()}
