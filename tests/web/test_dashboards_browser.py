"""The dashboards on a phone, in a real headless Chromium (Debian's): an admin opens the usage
dashboard, filters to lasers and last quarter, sees the chart and the numbers; the learning
dashboard shows the funnel. No page wider than the screen, no console errors (a chart
breaking the Content-Security-Policy would log one), no request leaves the server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest

from server.extensions import db
from server.models import Site
from tests.web.conftest import PASSWORD, Lab
from tests.web.dashboard_support import add_learners
from tests.web.test_dashboards_pages import TODAY, clock, fill_usage  # noqa: F401
from tests.web.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHONE, live_server  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture
def dashboard_server(live_server: tuple[str, Lab], clock: datetime) -> Iterator[tuple[str, Lab]]:  # noqa: F811
    base, lab = live_server
    fill_usage()
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        add_learners(s, site, TODAY)
    yield base, lab


def test_browser_admin_reads_the_dashboards_on_a_phone(dashboard_server: tuple[str, Lab]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (`make test` does this).")
    from playwright.sync_api import Page, expect, sync_playwright

    base, lab = dashboard_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    requested: list[str] = []

    def fits(page: Page, name: str) -> None:
        # A heading can be visible before the page's stylesheets have loaded (a busy machine):
        # measure the page as it is drawn, with them.
        page.wait_for_load_state("load")
        width = page.evaluate("document.documentElement.scrollWidth")
        if width > PHONE["width"]:
            problems.append(f"{name} is {width} px wide")
        page.screenshot(path=str(ARTIFACTS / f"{name}-390.png"), full_page=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, locale="en-US"
            )
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

            page.goto(f"{base}/login")
            page.get_by_label("Email").fill(lab.admin)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="Dashboards").click()
            expect(page.get_by_role("heading", name="Utilisation", exact=True)).to_be_visible()
            fits(page, "dashboard-usage-en")

            # "How much was each laser used last quarter?": the type, then the quick link.
            page.get_by_label("Machine type", exact=True).select_option("laser")
            page.get_by_role("button", name="Show").tap()
            expect(page.locator('tr[data-machine="prusa-a"]')).to_have_count(0)
            page.get_by_role("link", name="Last quarter").tap()
            expect(page.get_by_label("From", exact=True)).to_have_value("2026-07-01")
            expect(page.get_by_label("To", exact=True)).to_have_value("2026-09-30")
            chart = page.get_by_role("img", name="Unlocked and run hours per machine")
            expect(chart).to_be_visible()
            box = chart.bounding_box()
            assert box is not None and 250 <= box["width"] <= PHONE["width"]
            laser = page.locator('tr[data-machine="laser-1"]')
            expect(laser.locator('[data-col="unlocked"]')).to_have_text("7.4")
            expect(laser.locator('[data-col="sessions"]')).to_have_text("4")
            expect(page.locator('tr[data-machine="laser-1"] th a')).to_have_text("Laser 1")
            fits(page, "dashboard-usage-lasers-quarter-en")

            page.get_by_role("link", name="Learning", exact=True).tap()
            expect(page.get_by_role("heading", name="Learning", exact=True)).to_be_visible()
            page.get_by_label("From", exact=True).fill("2026-11-01")
            page.get_by_label("To", exact=True).fill("2026-11-18")
            page.get_by_role("button", name="Show").tap()
            expect(page.get_by_role("img", name="Participants who reached each level")).to_be_visible()
            funnel = page.locator("#funnel-table tbody tr")
            expect(funnel).to_have_count(3)
            expect(funnel.nth(2)).to_contain_text("Independent")
            expect(funnel.nth(2).locator('[data-col="people"]')).to_have_text("2")
            expect(page.locator("#expiring-table")).to_contain_text("Anna Arendt")
            fits(page, "dashboard-learning-en")

            page.get_by_role("link", name="DE", exact=True).click()
            expect(page.get_by_role("heading", name="Lernen", exact=True)).to_be_visible()
            fits(page, "dashboard-learning-de")
            page.get_by_role("link", name="Auslastung", exact=True).click()
            expect(page.get_by_role("heading", name="Auslastung", exact=True)).to_be_visible()
            fits(page, "dashboard-usage-de")
        finally:
            browser.close()
    assert problems == []
    outside = [url for url in requested if not url.startswith(base) and not url.startswith("data:")]
    assert outside == []
