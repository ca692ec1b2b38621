"""German all the way through: a German participant, trainer and admin walk every page of the
demo lab in a real browser (Playwright with Debian's Chromium), and no English shows.

English is found two ways: text of the catalogue in its English form (an element reading a
msgid whose German differs, or a phrase of several words from one), and the English name of
data that has a German one (a machine type, competency, training step or site). Each page's
screenshot (JPEG) lands in var/screenshots/german/ (not in git) for a person to look at.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from babel.messages.pofile import read_po
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import make_server

from server.extensions import db
from server.models import Competency, MachineType, Site, TrainingStep
from tests.web.test_web_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "var" / "screenshots" / "german"
CATALOGUE = ROOT / "server" / "translations" / "de" / "LC_MESSAGES" / "messages.po"
PLACEHOLDER = re.compile(r"\{[^}]*\}|%\([^)]*\)[sd]|%%")
# (login, password, where to start): the demo's German participant, trainer and admin.
WALKERS = (
    ("sara@demo.werkbank.local", "demo-participant", "/me"),
    ("tom@demo.werkbank.local", "demo-trainer", "/training/people"),
    ("admin@demo.werkbank.local", "demo-admin", "/admin/"),
)
PAGES_PER_WALKER = 40
# Not pages: downloads, feeds, the language switch, logging out.
SKIP = re.compile(r"\.(csv|xlsx|ics|json|txt|pdf)$|/logout|/language/|/static/|/feed/")


def _english_catalogue() -> tuple[set[str], list[re.Pattern[str]]]:
    """(English texts an element may not read exactly, English phrases no page may contain)."""
    with CATALOGUE.open("rb") as f:
        catalogue = read_po(f)
    german_words = " ".join(str(m.string) for m in catalogue if m.id)
    whole: set[str] = set()
    phrases: list[re.Pattern[str]] = []
    for message in catalogue:
        if not message.id or not message.string:
            continue
        ids = message.id if isinstance(message.id, tuple) else (message.id,)
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        for msgid, msgstr in zip(ids, strings, strict=False):
            if not msgstr or msgid == msgstr:
                continue  # the same in both languages ("Status", "Admin", "Online")
            if "%" not in msgid and "{" not in msgid:
                whole.add(msgid.strip())
            for piece in PLACEHOLDER.split(msgid):
                part = piece.strip(" .,:;()-\u2013")
                # Several words, not a name or a code that German uses too.
                if part.count(" ") >= 1 and len(part) >= 10 and part not in german_words:
                    phrases.append(re.compile(rf"(?<!\w){re.escape(part)}(?!\w)"))
    # A German text that happens to be an English msgid too ("Details") is German here.
    whole -= {str(m.string).strip() for m in catalogue if m.id and isinstance(m.string, str)}
    return whole, phrases


def _english_names() -> list[tuple[str, re.Pattern[str]]]:
    """The English names of data that has a different German one."""
    names = []
    with db.session() as s:
        for model in (MachineType, Competency, TrainingStep, Site):
            for row in s.scalars(select(model)):
                if row.name_de and row.name_de != row.name and row.name not in row.name_de:
                    names.append((row.name, re.compile(rf"(?<!\w){re.escape(row.name)}(?!\w)")))
    return names


@pytest.fixture
def demo_server(make_app: Callable[..., Flask]) -> Iterator[str]:
    """The demo lab of `make run` (loaded and populated as `werkbank up` does), served by werkzeug."""
    from server.cli import DEMO_FILE
    from server.demo.story import populate
    from server.services.lab_file import load, parse

    app = make_app()
    with db.session() as s:
        load(s, parse(DEMO_FILE.read_text(encoding="utf-8")))
    with db.session() as s:
        populate(s, seed=1, now=datetime.now(UTC))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkbank-german-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


# The text of every element (its own text nodes), and the words of tooltips, labels and buttons.
TEXTS_JS = """() => {
  const out = [];
  // Text marked as another language on purpose (the language switch says "English" in English).
  const foreign = (el) => { const marked = el.closest('[lang]'); return marked && marked.lang !== 'de'; };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const parent = node.parentElement;
    if (!parent || ['SCRIPT', 'STYLE', 'NOSCRIPT'].includes(parent.tagName)) continue;
    // The CSV format page shows the format reference of docs/ as it is (English, like all docs).
    if (parent.closest('pre.doc') || foreign(parent)) continue;
    const text = node.textContent.replace(/\\s+/g, ' ').trim();
    if (text) out.push(text);
  }
  for (const el of document.querySelectorAll('[title], [aria-label], [placeholder], input[type=submit]')) {
    if (foreign(el)) continue;
    for (const attr of ['title', 'aria-label', 'placeholder', 'value']) {
      const value = el.getAttribute(attr);
      if (value && (attr !== 'value' || el.type === 'submit')) out.push(value.trim());
    }
  }
  return out;
}"""


def _pattern(path: str) -> str:
    """One page per route: /training/people/12 and /13, /bookings/machines/laser-1 and
    /printer-2 are the same page (a path segment with a digit is an id or a slug)."""
    return "/".join("N" if re.search(r"\d", part) else part for part in path.split("/"))


def test_german_browser_every_page_in_german_for_participant_trainer_and_admin(demo_server: str) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (never `playwright install`).")
    from playwright.sync_api import sync_playwright

    begun = time.monotonic()
    base = demo_server
    whole, phrases = _english_catalogue()
    names = _english_names()
    assert len(whole) > 200 and len(phrases) > 200 and len(names) >= 8
    SHOTS.mkdir(parents=True, exist_ok=True)
    found: list[str] = []
    walked: dict[str, int] = {}
    # Each route once, by the first walker who reaches it: the participant's pages, then the
    # trainer's, then the admin's (a minute at most on a busy two-core machine).
    seen: set[str] = set()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for email, password, start in WALKERS:
                context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="de-DE")
                page = context.new_page()
                page.goto(f"{base}/login")
                page.get_by_label("E-Mail").fill(email)
                page.get_by_label("Passwort").fill(password)
                page.get_by_role("button", name="Anmelden").click()
                page.wait_for_load_state("load")
                who = email.split("@")[0]
                queue = [urljoin(base, start)]
                count = 0
                while queue and count < PAGES_PER_WALKER:
                    url = queue.pop(0)
                    key = _pattern(urlsplit(url).path)
                    if key in seen and count > 0:  # a walker's own start page always
                        continue
                    seen.add(key)
                    response = page.goto(url, wait_until="domcontentloaded")
                    if response is None or response.status != 200:
                        continue
                    count += 1
                    assert page.locator("html").get_attribute("lang") == "de", url
                    texts: list[str] = page.evaluate(TEXTS_JS)
                    body = "\n".join(texts)
                    where = f"{who} {urlsplit(url).path}"
                    found += [f"{where}: English text {t!r}" for t in texts if t in whole]
                    found += [f"{where}: English phrase {p.pattern!r}" for p in phrases if p.search(body)]
                    found += [f"{where}: English name {n!r}" for n, p in names if p.search(body)]
                    page.screenshot(path=str(SHOTS / f"{who}-{count:02d}.jpg"), type="jpeg", quality=70)
                    for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
                        target = href.split("#", 1)[0]
                        if target.startswith(base) and not SKIP.search(urlsplit(target).path):
                            queue.append(target)
                walked[who] = count
                context.close()
        finally:
            browser.close()
    assert walked["sara"] >= 4 and walked["tom"] >= 3 and walked["admin"] >= 12, walked
    assert sum(walked.values()) >= 30, walked
    assert not found, f"{len(found)} English texts on German pages:\n" + "\n".join(sorted(set(found))[:80])
    print(f"walked {walked} in {time.monotonic() - begun:.1f} s")
