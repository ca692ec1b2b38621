"""The German catalogue follows docs/glossary.md: one German word per domain term, the reader
addressed as "Sie", and no word the glossary rules out."""

from __future__ import annotations

import re
from pathlib import Path

from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "docs" / "glossary.md"
CATALOGUE = ROOT / "server" / "translations" / "de" / "LC_MESSAGES" / "messages.po"
PLACEHOLDER = re.compile(r"\{[^}]*\}|%\([^)]*\)[sd]")
# Second person singular, informal: never ("du", "dich", "dein …").
INFORMAL = re.compile(r"\b(du|dich|dir|dein|deine|deinen|deiner)\b", re.IGNORECASE)


def _terms() -> list[tuple[str, list[str], list[str]]]:
    """(English, German forms, never) from the glossary's first table."""
    rows = []
    text = GLOSSARY.read_text(encoding="utf-8")
    table = text.split("| English | German | never in German |", 1)[1].split("\n\n", 1)[0]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        english, german, never = cells[0], cells[1], cells[2]
        rows.append(
            (
                english,
                [g.strip() for g in german.split(",") if g.strip()],
                [re.sub(r"\s*\(.*\)", "", n).strip() for n in never.split(",") if n.strip()],
            )
        )
    return rows


def _stem(word: str) -> str:
    """Enough of a German word to match its inflections (Ausweis-e, Sitzung-en, verlänger-t)."""
    word = word.split("/", maxsplit=1)[0]
    return word[:-1] if word.endswith(("n", "e")) and len(word) > 6 else word


def _messages() -> list[tuple[str, str]]:
    with CATALOGUE.open("rb") as f:
        catalogue = read_po(f)
    out = []
    for message in catalogue:
        if not message.id:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        out.extend((i, s or "") for i, s in zip(ids, strings, strict=False))
    return out


def test_glossary_german_texts_use_the_glossary_words() -> None:
    terms = _terms()
    assert len(terms) >= 20
    wrong = []
    for msgid, msgstr in _messages():
        english = PLACEHOLDER.sub("", msgid)
        for term, german, _never in terms:
            if not re.search(rf"\b{re.escape(term)}s?\b", english, re.IGNORECASE):
                continue
            if re.search(rf"\b{re.escape(term)}\b", msgstr):
                continue  # a literal name kept as it is (a CSV column: "badge")
            if not any(_stem(g).lower() in msgstr.lower() for g in german):
                wrong.append(f"{term!r} should be {german[0]!r}: {msgid!r} => {msgstr!r}")
    assert not wrong, "\n".join(wrong)


def test_glossary_german_texts_avoid_the_words_ruled_out_and_say_sie() -> None:
    never = [(term, word) for term, _german, words in _terms() for word in words]
    wrong = []
    for msgid, msgstr in _messages():
        for term, word in never:
            if re.search(rf"\b{re.escape(word)}", msgstr, re.IGNORECASE):
                wrong.append(f"{word!r} (for {term!r}) in {msgstr!r}")
        if INFORMAL.search(msgstr):
            wrong.append(f"informal address in {msgstr!r} (for {msgid!r})")
    assert not wrong, "\n".join(wrong)
