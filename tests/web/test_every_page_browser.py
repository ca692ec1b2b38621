"""Every page of the app, on a 390 px phone and a 1366 px laptop, in a real headless Chromium
(Debian's), on the demo lab of `make run`, as its German participant, trainer and admin.

The pages are the app's own list: every rule of Flask's ``url_map`` that answers GET, less the
few that are no page (:data:`NOT_PAGES`: probes, JSON, downloads, the JSON API). A page route
added without a visit in :func:`visits` fails the test before the browser starts. Each page must
answer without an error, be no wider than the screen, cut off no button and draw none that is
hard to read, scroll no table sideways without its first column in view, log no error, load
nothing from elsewhere and show no English (text of the catalogue, the English name of data
that has a German one, a number with a decimal point). Screenshots land in
var/screenshots/pages/ (not in git) for a person to look at: ``<who>-<endpoint>-<width>.png``,
the whole page up to 6000 px.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from sqlalchemy import select

from server.extensions import db
from server.models import (
    Booking,
    BookingStatus,
    CertificateKind,
    Competency,
    Machine,
    MachineSession,
    MachineType,
    Person,
    ProgrammeField,
    Site,
)
from server.services import certificates
from tests.web.demo_support import ADMIN, PARTICIPANT, TRAINEE, TRAINER, served_demo
from tests.web.test_german_browser import TEXTS_JS, _english_catalogue, _english_names
from tests.web.test_web_browser import CHROMIUM, CHROMIUM_ARGS

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

pytestmark = pytest.mark.browser

SHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots" / "pages"
WIDTHS: tuple[ViewportSize, ...] = ({"width": 390, "height": 844}, {"width": 1366, "height": 768})

# GET routes that are no page, with why. Everything else in the url_map must be visited.
NOT_PAGES: dict[str, str] = {
    "static": "files",
    "health.healthz": "probe",
    "health.readyz": "probe",
    "health.metrics": "Prometheus text",
    "web.live_json": "JSON for the overview's refresh",
    "web.availability_json": "JSON for the machines-now refresh",
    "auth.set_language": "redirects back after switching the language",
    "admin.csv_example": "CSV download",
    "attendance.sheet_pdf": "PDF",
    "briefings.proof_pdf": "PDF",
    "certificates.pdf": "PDF",
    "verify.keys_json": "JSON: the lab's public keys",
    "verify.signed": "JSON: a certificate's signed facts",
    "certificates.print_view": "print view, when no PDF can be made (test_proof_pages)",
    "bookings.person_feed": "iCalendar feed",
    "bookings.machine_feed": "iCalendar feed",
    "reports.funder_csv": "CSV download",
    "reports.funder_qualifications_csv": "CSV download",
    "reports.funder_outcomes_csv": "CSV download",
    "reports.funder_machines_csv": "CSV download",
    "reports.funder_programme_data_csv": "CSV download",
    "reports.funder_special_csv": "CSV download (pseudonymised)",
    "reports.funder_xlsx": "XLSX download",
}
# Whole blueprints that are no pages.
NOT_PAGE_BLUEPRINTS: dict[str, str] = {"api": "the JSON API (docs/api.md)"}

LOGINS = {"jonas": PARTICIPANT, "sara": TRAINEE, "tom": TRAINER, "admin": ADMIN}


@dataclass(frozen=True)
class Visit:
    who: str  # a key of LOGINS, or "guest"
    path: str
    status: int = 200
    whole_on_laptop: str = ""  # a table (selector) that must show every column at 1366 px


def page_endpoints(app: Flask) -> set[str]:
    """Every endpoint of the url_map that answers GET and is a page."""
    found = set()
    for rule in app.url_map.iter_rules():
        if "GET" not in (rule.methods or ()) or rule.endpoint in NOT_PAGES:
            continue
        if rule.endpoint.split(".", 1)[0] in NOT_PAGE_BLUEPRINTS:
            continue
        found.add(rule.endpoint)
    return found


@dataclass
class DemoIds:
    jonas: int
    trainee_south: int  # a participant of Tom's site
    competency: int
    step: int
    machine_type: int
    machine: int
    site: int
    booking: str  # Jonas's coming booking of printer-1
    book_at: str  # a free start on printer-1 (local time, as the week grid links it)
    move_to: str
    certificate: str
    programme: str  # the demo programme that asks for participant data
    programme_field: int
    session: str  # a machine session (its admin page: closing one a dead device left open)


def visits(ids: DemoIds) -> dict[str, list[Visit]]:
    """Who opens each page, at which address (ids of the demo lab)."""
    return {
        "auth.login": [Visit("guest", "/login")],
        "verify.certificate": [Visit("guest", f"/v/{ids.certificate}")],
        "verify.keys": [Visit("guest", "/v/keys")],
        # The participant's pages.
        "web.overview": [Visit("jonas", "/"), Visit("tom", "/")],
        "web.me": [Visit("jonas", "/me"), Visit("sara", "/me")],
        "web.availability": [Visit("jonas", "/machines/now")],
        "bookings.site_day": [Visit("jonas", "/bookings/site")],
        "bookings.machine_week": [Visit("jonas", "/bookings/machines/printer-1")],
        "bookings.book": [
            Visit("jonas", f"/bookings/machines/printer-1/book?start={ids.book_at}"),
            # Sara prints only with a trainer: the page offers her one.
            Visit("sara", f"/bookings/machines/printer-1/book?start={ids.book_at}"),
        ],
        "bookings.mine": [Visit("jonas", "/bookings/mine")],
        "bookings.cancel": [Visit("jonas", f"/bookings/{ids.booking}/cancel")],
        "bookings.move": [
            Visit("jonas", f"/bookings/{ids.booking}/move"),  # to the week, to pick a new start
            Visit("jonas", f"/bookings/{ids.booking}/move?start={ids.move_to}"),
        ],
        # The trainer's.
        "training.people": [Visit("tom", "/training/people")],
        "training.person": [Visit("tom", f"/training/people/{ids.trainee_south}")],
        "attendance.index": [Visit("tom", "/attendance/")],
        "attendance.person": [Visit("tom", f"/attendance/people/{ids.trainee_south}")],
        "attendance.sheet_print": [Visit("tom", "/attendance/sheet/print")],
        "briefings.due": [Visit("tom", "/briefings/due")],
        "briefings.person": [Visit("tom", f"/briefings/people/{ids.trainee_south}")],
        "briefings.proof": [Visit("tom", "/briefings/proof")],
        "certificates.person": [Visit("tom", f"/certificates/people/{ids.trainee_south}")],
        "certificates.cohort": [Visit("tom", "/certificates/cohort")],
        "outcomes.person": [Visit("tom", f"/outcomes/people/{ids.trainee_south}")],
        "programme.person": [Visit("tom", f"/programme/people/{ids.trainee_south}")],
        "programme.special": [Visit("admin", f"/programme/people/{ids.trainee_south}/special")],
        "bookings.all_bookings": [Visit("tom", "/bookings/all")],
        "bookings.blocked": [Visit("tom", "/bookings/blocked")],
        # The admin's.
        "admin.index": [Visit("admin", "/admin/")],
        "admin.programmes": [Visit("admin", "/admin/programmes")],
        "admin.programme": [Visit("admin", f"/admin/programmes/setup?programme={quote(ids.programme)}")],
        "admin.programme_field": [Visit("admin", f"/admin/programmes/fields/{ids.programme_field}")],
        "admin.audit_log": [Visit("admin", "/admin/audit")],
        "admin.devices": [Visit("admin", "/admin/devices")],
        "admin.session_page": [Visit("admin", f"/admin/sessions/{ids.session}")],
        "admin.sites": [Visit("admin", "/admin/sites")],
        "admin.site_new": [Visit("admin", "/admin/sites/new")],
        "admin.site_edit": [Visit("admin", f"/admin/sites/{ids.site}")],
        "admin.people": [Visit("admin", "/admin/people")],
        "admin.person_new": [Visit("admin", "/admin/people/new")],
        "admin.person": [Visit("admin", f"/admin/people/{ids.jonas}")],
        "admin.people_import_page": [Visit("admin", "/admin/people/import")],
        "admin.csv_format": [Visit("admin", "/admin/people/import/format")],
        "admin.competencies_list": [Visit("admin", "/admin/competencies")],
        "admin.competency_new": [Visit("admin", "/admin/competencies/new")],
        "admin.competency": [Visit("admin", f"/admin/competencies/{ids.competency}")],
        "admin.step_edit": [Visit("admin", f"/admin/steps/{ids.step}")],
        "admin.machine_types": [Visit("admin", "/admin/machine-types")],
        "admin.machine_type_new": [Visit("admin", "/admin/machine-types/new")],
        "admin.machine_type_edit": [Visit("admin", f"/admin/machine-types/{ids.machine_type}")],
        "admin.machines": [Visit("admin", "/admin/machines")],
        "admin.machine_new": [Visit("admin", "/admin/machines/new")],
        "admin.machine_edit": [Visit("admin", f"/admin/machines/{ids.machine}")],
        "attendance.timetable": [Visit("admin", "/attendance/timetable")],
        "outcomes.targets": [Visit("admin", "/outcomes/targets")],
        # Its 14 columns (16 with energy), with German heads, fit a laptop (docs/dashboards.md).
        "dashboards.usage": [Visit("admin", "/dashboards/usage", whole_on_laptop="#machine-table")],
        "dashboards.learning": [Visit("admin", "/dashboards/learning")],
        "reports.index": [Visit("admin", "/reports/")],
        "reports.funder": [Visit("admin", "/reports/funder")],
        "reports.funder_print": [Visit("admin", "/reports/funder/print")],
    }


# No page is an error page; the styled 404 is walked too (it is no route).
EXTRA = (Visit("jonas", "/no-such-page", 404), Visit("guest", "/no-such-page", 404))


def _ids(app: Flask) -> DemoIds:
    """Ids of the demo lab, plus what it lacks for some pages: a coming booking of Jonas's and a
    certificate of his to verify."""
    now = datetime.now(UTC)
    with db.session() as s:

        def one(model: Any, *where: Any) -> Any:
            found = s.scalars(select(model).where(*where).limit(1)).first()
            assert found is not None, (model, where)
            return found

        jonas = one(Person, Person.email == PARTICIPANT[0])
        trainer = one(Person, Person.email == "trainer@demo.werkbank.local")
        south = one(Site, Site.slug == "demo-sued")
        trainee = one(Person, Person.site_id == south.id, Person.cohort.is_not(None), Person.email.is_(None))
        laser = one(Competency, Competency.slug == "laser-safety")
        printer = one(Machine, Machine.slug == "printer-1")
        tz = ZoneInfo(printer.site.timezone)
        # A weekday at least two days ahead, with two free hours on printer-1 (open 9 to 21).
        day = (now + timedelta(days=2)).astimezone(tz).date()
        while day.weekday() >= 5:
            day += timedelta(days=1)
        taken = [
            (b.starts_at, b.ends_at)
            for b in s.scalars(select(Booking).where(Booking.machine_id == printer.id))
            if b.status == BookingStatus.BOOKED
        ]
        free = []
        for hour in range(9, 20):
            start = datetime(day.year, day.month, day.day, hour, tzinfo=tz)
            if all(e <= start or b >= start + timedelta(hours=1) for b, e in taken):
                free.append(start)
        assert len(free) >= 3, free
        booking = Booking(
            machine_id=printer.id,
            person_id=jonas.id,
            starts_at=free[0].astimezone(UTC),
            ends_at=(free[0] + timedelta(hours=1)).astimezone(UTC),
            status=BookingStatus.BOOKED,
            created_at=now,
            created_by_id=jonas.id,
        )
        s.add(booking)
        issued = certificates.issue(s, trainer, jonas, CertificateKind.COMPETENCE, "de", now)
        s.commit()
        field = s.scalars(select(ProgrammeField).order_by(ProgrammeField.id)).first()
        assert field is not None, "the demo asks for programme data"
        return DemoIds(
            jonas=jonas.id,
            trainee_south=trainee.id,
            competency=laser.id,
            step=laser.steps[0].id,
            machine_type=one(MachineType, MachineType.slug == "co2-laser").id,
            machine=one(Machine, Machine.slug == "laser-1").id,
            site=one(Site, Site.slug == "demo-lab").id,
            booking=str(booking.id),
            book_at=free[1].strftime("%Y-%m-%dT%H:%M"),
            move_to=free[2].strftime("%Y-%m-%dT%H:%M"),
            certificate=certificates.pretty_code(issued.code),
            programme=field.programme,
            programme_field=field.id,
            session=one(MachineSession, MachineSession.started_at.is_not(None)).id,
        )


@pytest.fixture
def demo(make_app: Callable[..., Flask]) -> Iterator[tuple[str, Flask]]:
    with served_demo(make_app) as (base, app):
        yield base, app


# Buttons (and links drawn as buttons) that are cut off: wider than their own box, or reaching
# past the screen's right edge outside a box that scrolls sideways (a wide table's box); and
# buttons whose words do not stand out from what is behind them (white on white).
BUTTONS_JS = """(width) => {
  const out = [];
  const scrolls = (el) => {
    for (let p = el.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll') return true;
    }
    return false;
  };
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const luminance = ([r, g, b]) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const behind = (el) => {
    for (let p = el; p; p = p.parentElement) {
      const c = rgb(getComputedStyle(p).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.5)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const selector = 'button, .button, input[type=submit], select, input, textarea';
  for (const el of document.querySelectorAll(selector)) {
    const r = el.getBoundingClientRect();
    if (!r.width || getComputedStyle(el).visibility === 'hidden' || el.type === 'hidden') continue;
    const text = (el.innerText || el.value || el.name || el.tagName).trim().slice(0, 40);
    if (el.tagName !== 'INPUT' && el.tagName !== 'SELECT' && el.scrollWidth > el.clientWidth + 1)
      out.push('cut inside: ' + text);
    if (r.right > width + 1 && !scrolls(el)) out.push('past the edge: ' + text);
    if (el.matches('button, .button') && text) {
      const [a, b] = [luminance(rgb(getComputedStyle(el).color)), luminance(behind(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      if (ratio < 3) out.push('hard to read (' + ratio.toFixed(1) + ':1): ' + text);
    }
  }
  return out;
}"""
# A number written the English way on a German page ("3.0 Stunden"); dates (07.12.2026,
# 07.12.26) and addresses (127.0.0.1) have more than one point and are not matched.
ENGLISH_DECIMAL = re.compile(r"(?<![\d.])\d+\.\d+(?![\d.])")
# The words a person reads, outside the charts' drawing instructions (an SVG's coordinates).
READ_JS = """() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const parent = walker.currentNode.parentElement;
    if (!parent || parent.closest('script, style, svg, pre.doc')) continue;
    const text = walker.currentNode.textContent.replace(/\\s+/g, ' ').trim();
    if (text) out.push(text);
  }
  return out;
}"""


class English:
    """What reads as English on a German page (see tests/web/test_german_browser.py), and
    numbers written the English way."""

    def __init__(self) -> None:
        self.whole, self.phrases = _english_catalogue()
        self.names = _english_names()
        with db.session() as s:  # names that are data may hold numbers ("Betriebe 4.0")
            self.data = sorted(
                {n for n in s.scalars(select(Person.cohort)) if n}
                | {n for n in s.scalars(select(Person.programme)) if n}
                | set(s.scalars(select(Machine.name))),
                key=len,
                reverse=True,
            )

    def found(self, texts: list[str], read: list[str]) -> list[str]:
        body = "\n".join(texts)
        numbers = []
        for text in read:
            bare = text
            for name in self.data:
                bare = bare.replace(name, "")
            numbers += [f"English number {text!r}"] if ENGLISH_DECIMAL.search(bare) else []
        return (
            [f"English text {t!r}" for t in texts if t in self.whole]
            + [f"English {part!r}" for part, p in self.phrases if part in body and p.search(body)]
            + [f"English name {n!r}" for n, p in self.names if p.search(body)]
            + numbers
        )


# One round trip per page: its language and width, the buttons' faults, and (when asked) its
# words, as English detection reads them and as a person reads them.
PAGE_JS = f"""([width, words]) => {{
  return {{
    lang: document.documentElement.lang,
    wide: document.documentElement.scrollWidth,
    buttons: ({BUTTONS_JS})(width),
    // Tables that scroll sideways in their box without their first column staying in view.
    scrolled: Array.from(document.querySelectorAll('main *')).filter(el => {{
      if (el.scrollWidth <= el.clientWidth + 1) return false;  // cheap first: most fit
      const o = getComputedStyle(el).overflowX;
      if (o !== 'auto' && o !== 'scroll') return false;
      const first = el.querySelector('tbody tr > :first-child');
      return !first || getComputedStyle(first).position !== 'sticky';
    }}).map(el => (el.id || el.className || el.tagName) + ' ' + el.scrollWidth + '/' + el.clientWidth),
    texts: words ? ({TEXTS_JS})() : [],
    read: words ? ({READ_JS})() : [],
  }};
}}"""


def _check(page: Page, width: int, english: English | None) -> list[str]:
    """What is wrong with the page on screen now."""
    seen: dict[str, Any] = page.evaluate(PAGE_JS, [width, english is not None])
    found = [] if seen["lang"] == "de" else ["not in German"]
    if seen["wide"] > width:
        found.append(f"{seen['wide']} px wide")
    found += seen["buttons"]
    found += [f"scrolls sideways, its first column out of view: {box}" for box in seen["scrolled"]]
    if english is not None:
        found += english.found(seen["texts"], seen["read"])
    return found


# The top of a very long page is enough to look at (the funder report is 30 000 px on a phone).
SHOT_MAX_HEIGHT = 6000


def _shot(page: Page, path: Path, width: int) -> None:
    height = min(page.evaluate("document.documentElement.scrollHeight"), SHOT_MAX_HEIGHT)
    page.screenshot(path=str(path), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})


# About 55 s on a two-core machine shared with other work; the default 120 s is too close when
# `make test` runs three workers beside it.
@pytest.mark.timeout(300)
def test_every_page_at_phone_and_laptop_width(demo: tuple[str, Flask]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (`make test` does this).")
    from playwright.sync_api import sync_playwright

    begun = time.monotonic()
    base, app = demo
    ids = _ids(app)
    plan = visits(ids)
    pages = page_endpoints(app)
    assert pages - set(plan) == set(), (
        "page routes nobody walks: add them to visits() or, if they are no page, to NOT_PAGES"
    )
    assert set(plan) - pages == set(), "visits() names endpoints the app no longer has"
    assert set(NOT_PAGES) <= {r.endpoint for r in app.url_map.iter_rules()}, "stale NOT_PAGES entries"

    english = English()
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    requested: list[str] = []
    walks: dict[str, list[tuple[str, Visit]]] = {}  # who -> (screenshot name, visit)
    for endpoint, planned in plan.items():
        for n, visit in enumerate(planned):
            name = endpoint.replace(".", "-") + (f"-{n + 1}" if n else "")
            walks.setdefault(visit.who, []).append((name, visit))
    for visit in EXTRA:
        walks.setdefault(visit.who, []).append(("not-found", visit))

    def open_as(browser: Browser, who: str, viewport: ViewportSize) -> Page:
        context = browser.new_context(viewport=viewport, locale="de-DE", is_mobile=viewport["width"] < 500)
        page = context.new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: problems.append(f"{who} {page.url}: page error: {error}"))
        page.on(
            "console",
            lambda m: (
                problems.append(f"{who} {page.url}: {m.text}")
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        if who != "guest":
            email, password = LOGINS[who]
            page.goto(f"{base}/login")
            page.get_by_label("E-Mail").fill(email)
            page.get_by_label("Passwort").fill(password)
            page.get_by_role("button", name="Anmelden").click()
            page.get_by_role("button", name="Abmelden").wait_for()
        return page

    walked = 0
    slowest: list[tuple[float, str]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for viewport in WIDTHS:
                width = viewport["width"]
                for who, walk in walks.items():
                    page = open_as(browser, who, viewport)
                    checked: set[str] = set()  # addresses seen already (a redirect's target)
                    for name, visit in walk:
                        began = time.monotonic()
                        where = f"{who} {visit.path} at {width} px"
                        if visit.status == 200 and base + visit.path in checked:
                            continue
                        response = page.goto(base + visit.path, wait_until="load")
                        walked += 1
                        status = response.status if response is not None else 0
                        if status != visit.status:
                            problems.append(f"{where}: answered {status}, not {visit.status}")
                            continue
                        if page.url in checked:
                            continue
                        checked.add(page.url)
                        # The words are the same at both widths: read them once.
                        wide = width == WIDTHS[-1]["width"]
                        problems += [f"{where}: {p}" for p in _check(page, width, english if wide else None)]
                        if wide and visit.whole_on_laptop:
                            box = page.locator(visit.whole_on_laptop).locator("xpath=..")
                            inner, outer = box.evaluate("el => [el.scrollWidth, el.clientWidth]")
                            if inner > outer + 1:
                                problems.append(
                                    f"{where}: {visit.whole_on_laptop} is {inner} px in {outer} px"
                                )
                        _shot(page, SHOTS / f"{who}-{name}-{width}.png", width)
                        slowest.append((time.monotonic() - began, where))
                    page.context.close()
        finally:
            browser.close()
    outside = [url for url in requested if not url.startswith(base) and not url.startswith("data:")]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems)
    assert outside == []
    slow = ", ".join(f"{w} {t:.1f} s" for t, w in sorted(slowest, reverse=True)[:5])
    print(f"walked {walked} pages ({len(pages)} routes) in {time.monotonic() - begun:.1f} s; slowest: {slow}")
