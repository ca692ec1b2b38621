"""The main flows of issue 4 in a real headless Chromium on a phone-sized screen.

A trainer logs in, finds a participant and records her laser briefing; the participant
logs in and sees the new competency, her progress and what comes next.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select

from server.extensions import db
from server.models import Person, Qualification
from tests.web.conftest import PASSWORD, Lab
from tests.web.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHONE, live_server  # noqa: F401
from tests.web.test_web_training import add_training

pytestmark = pytest.mark.browser


@pytest.fixture
def trained_server(live_server: tuple[str, Lab]) -> Iterator[tuple[str, Lab]]:  # noqa: F811
    base, lab = live_server
    add_training(lab)
    yield base, lab


def test_browser_trainer_records_a_briefing_and_the_participant_sees_it(
    trained_server: tuple[str, Lab],
) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (`make test` does this).")
    from playwright.sync_api import expect, sync_playwright

    base, lab = trained_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, locale="en-US"
            )
            page = context.new_page()
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))

            page.goto(f"{base}/login")
            page.get_by_label("Email").fill(lab.trainer)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name="People").click()
            page.get_by_role("searchbox").fill("Ada")
            page.get_by_role("button", name="Search").click()
            page.get_by_role("link", name="Ada Lovelace").click()
            expect(page.get_by_role("heading", name="Ada Lovelace")).to_be_visible()
            page.get_by_role("button", name="Record: Laser safety briefing").click()
            expect(page.get_by_role("status")).to_contain_text(
                "Ada Lovelace now holds Laser cutting at level Briefed"
            )
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / "trainer-person-en-390.png"), full_page=True)
            page.get_by_role("button", name="Log out").click()

            page.get_by_label("Email").fill(lab.participant)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            card = page.locator('[data-competency="laser"]')
            expect(card.locator('[data-field="level"]')).to_have_text("Briefed")
            expect(card.locator('[data-field="next"]')).to_contain_text("Next: Supervised cutting")
            expect(card.locator("progress")).to_have_attribute("value", "0")
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / "me-training-en-390.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    with db.session() as s:
        ada = s.scalar(select(Person).where(Person.email == lab.participant))
        assert ada is not None
        assert s.scalars(select(Qualification).where(Qualification.person_id == ada.id)).all()
