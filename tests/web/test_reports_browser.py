"""The funder report in a real browser on a phone: an admin picks a cohort and a quarter,
ticks pseudonyms, downloads the XLSX (it opens with openpyxl), and on paper the navigation
is gone. Playwright with Debian's Chromium (see tests/web/test_web_browser.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from flask import Flask
from openpyxl import load_workbook
from werkzeug.serving import make_server

from server.extensions import db
from server.models import Person
from tests.server.report_factory import Scenario, build_scenario
from tests.web.conftest import PASSWORD
from tests.web.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHONE

pytestmark = pytest.mark.browser

ADMIN = "admin@lab.test"


@dataclass
class Served:
    base: str
    world: Scenario


@pytest.fixture
def served(make_app: Callable[..., Flask], password_hash: str) -> Iterator[Served]:
    app = make_app()
    with db.session() as s:
        world = build_scenario(s)
        s.add(
            Person(
                site_id=world.ids["nord"],
                name="Alex Admin",
                email=ADMIN,
                password_hash=password_hash,
                is_admin=True,
                is_participant=False,
                language="en",
            )
        )
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkbank-report-server", daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_port}", world)
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_browser_funder_report_quarter_pseudonyms_xlsx_and_print(served: Served) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`.")
    from playwright.sync_api import expect, sync_playwright

    base, world = served.base, served.world
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requested: list[str] = []
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport=PHONE,
                device_scale_factor=2,
                is_mobile=True,
                has_touch=True,
                locale="en-US",
                accept_downloads=True,
            )
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            page.goto(f"{base}/login")
            page.get_by_label("Email").fill(ADMIN)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="Reports").click()
            expect(page.get_by_role("heading", name="Funder report")).to_be_visible()

            # The first quarter of 2026, Cohort A, with pseudonyms.
            page.get_by_label("Cohort").select_option("Cohort A")
            page.get_by_label("First month").fill("2026-01")
            page.get_by_label("Last month").fill("2026-03")
            page.get_by_label("Pseudonyms instead of names").check()
            page.get_by_role("button", name="Show report").click()

            participants = page.locator('[data-table="participants"]')
            expect(participants).to_contain_text(world.label("ada"))
            expect(participants).to_contain_text(world.label("ben"))
            expect(participants).not_to_contain_text("Ada Lovelace")
            expect(participants).not_to_contain_text("Cem")  # Cohort B
            expect(page.locator('[data-figure="participants"]')).to_have_text("3")
            expect(page.locator('[data-figure="hours"]')).to_have_text("9.0")
            expect(page.locator('[data-table="qualifications"]')).to_contain_text(world.label("tina"))
            assert "cohort=Cohort+A" in page.url and "pseudonyms=1" in page.url
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / "funder-report-en-390.png"), full_page=True)

            with page.expect_download() as info:
                page.get_by_role("link", name="Excel (XLSX)").click()
            download = info.value
            assert download.suggested_filename == "funder-report_nord_2026-01_2026-03.xlsx"
            saved = ARTIFACTS / download.suggested_filename
            download.save_as(saved)
            book = load_workbook(saved)
            sheets = ["Summary", "Participants", "Qualifications", "Hours by group", "Machines", "Outcomes"]
            assert book.sheetnames == sheets
            names = [row[0].value for row in book["Participants"].iter_rows(min_row=2)]
            assert sorted(names) == sorted(world.label(n) for n in ("ada", "ben", "gus"))
            assert book["Qualifications"]["I2"].value == world.label("tina")

            # On paper: no navigation, no form, the header with site and period instead.
            page.emulate_media(media="print")
            expect(page.locator("header.bar")).to_be_hidden()
            expect(page.locator("form.report-filters")).to_be_hidden()
            expect(page.get_by_role("link", name="Excel (XLSX)")).to_be_hidden()
            header = page.locator(".report-print-header")
            expect(header).to_be_visible()
            expect(header).to_contain_text("Lernwerkstatt Nord")
            expect(header).to_contain_text("January 2026")
            expect(participants).to_be_visible()
            page.set_viewport_size({"width": 794, "height": 1123})  # A4 at 96 dpi
            expect(page.locator('[data-table="participants"] thead')).to_be_visible()  # a table on paper
            page.screenshot(path=str(ARTIFACTS / "funder-report-print.png"), full_page=True)
            page.pdf(path=str(ARTIFACTS / "funder-report.pdf"))
            page.emulate_media(media="screen")
            expect(page.locator("header.bar")).to_be_visible()
            context.close()
        finally:
            browser.close()

    foreign = [url for url in requested if not url.startswith(base)]
    assert not foreign, f"the pages must not load anything from elsewhere: {foreign}"
    assert not problems, problems
