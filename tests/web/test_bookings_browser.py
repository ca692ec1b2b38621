"""Booking on a phone, in a real headless Chromium (Debian's): open a machine's week, tap a
free time, tap "Book", find it in "My bookings"; no page wider than the screen."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.web.conftest import PASSWORD, Lab
from tests.web.test_bookings_pages import add_booking, add_bookings, bookings_of, tomorrow_at, week_of
from tests.web.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHONE, live_server  # noqa: F401

pytestmark = pytest.mark.browser


@pytest.fixture
def booking_server(live_server: tuple[str, Lab]) -> Iterator[tuple[str, Lab]]:  # noqa: F811
    base, lab = live_server
    add_bookings(lab)
    yield base, lab


def test_browser_participant_books_in_two_taps_on_a_phone(booking_server: tuple[str, Lab]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (`make test` does this).")
    from playwright.sync_api import Page, expect, sync_playwright

    base, lab = booking_server
    add_booking(lab, lab.other_participant, tomorrow_at(12))
    start = tomorrow_at(10)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []

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
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)

            page.goto(f"{base}/login")
            page.get_by_label("Email").fill(lab.participant)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="Bookings").click()
            expect(page.get_by_role("heading", name="My bookings")).to_be_visible()
            page.get_by_role("link", name="Book a machine").click()
            expect(page.get_by_role("heading", name="Book a machine")).to_be_visible()
            fits(page, "bookings-site-day-en")

            page.goto(f"{base}/bookings/machines/prusa-a?week={week_of(start.date())}")
            expect(page.get_by_role("heading", name="Prusa A")).to_be_visible()
            taken = page.locator(f'td[data-start="{tomorrow_at(12):%Y-%m-%dT%H:%M}"]')
            expect(taken).to_have_attribute("data-state", "booked")
            fits(page, "bookings-week-en")

            # Tap one: the free slot. Tap two: "Book".
            page.locator(f'td[data-start="{start:%Y-%m-%dT%H:%M}"] a').tap()
            expect(page.get_by_label("How long?")).to_be_visible()
            fits(page, "bookings-confirm-en")
            page.get_by_role("button", name="Book").tap()

            expect(page.get_by_role("status")).to_contain_text("Booked: Prusa A")
            expect(page.get_by_role("heading", name="My bookings")).to_be_visible()
            card = page.locator('.booking[data-status="booked"]')
            expect(card).to_have_count(1)
            expect(card).to_contain_text("Prusa A")
            fits(page, "bookings-mine-en")

            page.goto(f"{base}/bookings/machines/prusa-a?week={week_of(start.date())}")
            mine = page.locator(f'td[data-start="{start:%Y-%m-%dT%H:%M}"]')
            expect(mine).to_have_attribute("data-state", "mine")

            # The same pages in German: longer words, still no sideways scrolling.
            page.get_by_role("link", name="DE", exact=True).click()
            expect(page.get_by_text("Tippen Sie auf eine freie Zeit, um sie zu buchen.")).to_be_visible()
            fits(page, "bookings-week-de")
            page.get_by_role("link", name="Buchungen", exact=True).click()
            expect(page.get_by_role("heading", name="Meine Buchungen")).to_be_visible()
            fits(page, "bookings-mine-de")
        finally:
            browser.close()
    assert problems == []
    (booking,) = bookings_of(lab.participant)
    assert booking.ends_at - booking.starts_at == (tomorrow_at(10, 30) - start)
