"""The catalogue: complete German, current with the code, and used by the pages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog
from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.pofile import read_po
from flask.testing import FlaskClient

from tests.web.conftest import CATALOG_DIR, AuthActions, Lab

ROOT = CATALOG_DIR.parents[1]
# The same keywords as `make extract`.
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None, "lazy_gettext": None, "N_": None}
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|%\(\w+\)\d*d|\{\w+\}")


def _read(path: Path) -> Catalog:
    with path.open("rb") as f:
        return read_po(f)


def _ids(catalog: Catalog) -> set[str]:
    return {m.id if isinstance(m.id, str) else m.id[0] for m in catalog if m.id}


@pytest.fixture(scope="module")
def template() -> Catalog:
    return _read(CATALOG_DIR / "messages.pot")


@pytest.fixture(scope="module")
def german() -> Catalog:
    return _read(CATALOG_DIR / "de" / "LC_MESSAGES" / "messages.po")


def test_catalogue_german_translates_every_message(template: Catalog, german: Catalog) -> None:
    untranslated = []
    for message in template:
        if not message.id:
            continue
        found = german.get(message.id)
        strings = found.string if found is not None else None
        values = strings if isinstance(strings, tuple) else (strings,)
        if found is None or "fuzzy" in found.flags or not all(values):
            untranslated.append(message.id)
    assert not untranslated, f"translate these in de/LC_MESSAGES/messages.po: {untranslated}"


def test_catalogue_german_keeps_placeholders(german: Catalog) -> None:
    broken = [
        (m.id, m.string)
        for m in german
        if m.id
        and isinstance(m.id, str)
        and sorted(PLACEHOLDER.findall(m.id)) != sorted(PLACEHOLDER.findall(str(m.string)))
    ]
    assert not broken, f"placeholders differ between English and German: {broken}"


def test_catalogue_template_is_current(template: Catalog) -> None:
    """Fails when a string was added or changed in the code without `make extract`."""
    with (ROOT / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)  # type: ignore[no-untyped-call]
    in_code = {
        msgid if isinstance(msgid, str) else msgid[0]
        for _file, _line, msgid, _comments, _context in extract_from_dir(
            str(ROOT), method_map, options_map, keywords=KEYWORDS
        )
    }
    assert in_code - _ids(template) == set(), "new strings: run `make extract` and translate them"
    assert _ids(template) - in_code == set(), "stale strings: run `make extract`"


def test_catalogue_every_language_has_a_catalogue() -> None:
    from server.config import Config

    for language in Config.LANGUAGES:
        assert (CATALOG_DIR / language / "LC_MESSAGES" / "messages.po").exists(), language


def test_i18n_language_switch_shows_german(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)  # an English profile
    assert "Machine hours today" in client.get("/").get_data(as_text=True)
    response = client.get("/language/de", query_string={"next": "/"})
    assert response.status_code == 302 and response.headers["Location"] == "/"
    html = client.get("/").get_data(as_text=True)
    assert '<html lang="de">' in html
    assert "Maschinenstunden heute" in html
    assert "Belegt von Ada Lovelace" in html
    assert "Läuft, 42 % fertig" in html
    assert "Abmelden" in html
    data = client.get("/live.json").get_json()
    laser = next(m for m in data["machines"] if m["slug"] == "laser-1")
    assert laser["state_label"] == "Belegt"
    assert laser["hours_total_label"] == "0 Std. 40 Min."
    assert laser["device"]["last_seen_label"].startswith("Zuletzt gesehen vor ")


def test_i18n_language_switch_back_to_english(client: FlaskClient, lab: Lab) -> None:
    client.get("/language/de")
    assert "Passwort" in client.get("/login").get_data(as_text=True)
    client.get("/language/en")
    assert "Password" in client.get("/login").get_data(as_text=True)


def test_i18n_language_choice_survives_login(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    client.get("/language/de")
    auth.login(lab.trainer)
    assert "Maschinen" in client.get("/").get_data(as_text=True)


def test_i18n_profile_language_without_choice(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.other_participant)  # Bob's profile says German
    html = client.get("/me").get_data(as_text=True)
    assert "Meine Schulung" in html and "offline" in html


def test_i18n_unknown_language_is_404(client: FlaskClient) -> None:
    assert client.get("/language/xx").status_code == 404


def test_i18n_language_switch_ignores_foreign_next(client: FlaskClient) -> None:
    response = client.get("/language/de", query_string={"next": "https://evil.example/"})
    assert response.headers["Location"] == "/"


def test_i18n_login_page_german_for_german_browser(client: FlaskClient) -> None:
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de-DE,de;q=0.9"
    html = client.get("/login").get_data(as_text=True)
    assert "Anmelden" in html and "Passwort vergessen?" in html


def test_i18n_machine_messages_in_german() -> None:
    from server.i18n import gettext_in

    assert gettext_in("de", "Unknown badge. Please register it at the front desk.") == (
        "Unbekannter Ausweis. Bitte am Empfang registrieren lassen."
    )
