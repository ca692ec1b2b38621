"""The admin person page in a real browser on a phone: block a participant's badge.

Playwright with Debian's Chromium, as tests/web/test_web_browser.py (never `playwright install`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from server.extensions import db
from server.models import Badge, BadgeStatus, Machine
from server.services.decision import decide
from tests.web.admin_support import ADA_BADGE, seed_training
from tests.web.conftest import PASSWORD, Lab
from tests.web.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHONE, live_server

pytestmark = pytest.mark.browser
__all__ = ["live_server"]  # the fixture, imported for this module's test


def test_browser_phone_admin_blocks_a_badge(live_server: tuple[str, Lab]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`.")
    from playwright.sync_api import expect, sync_playwright

    base, lab = live_server
    ids = seed_training(lab.site_id)
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
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

            page.goto(f"{base}/login")
            page.get_by_label("Email").fill(lab.admin)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()

            page.get_by_role("link", name="Admin", exact=True).first.click()
            page.get_by_role("link", name="People and badges").click()
            page.get_by_label("Search").fill("Lovelace")
            page.get_by_role("button", name="Show").click()
            page.get_by_role("link", name="Ada Lovelace").click()
            expect(page.get_by_role("heading", name="Ada Lovelace")).to_be_visible()

            badge = page.locator(f'[data-badge="{ADA_BADGE}"]')
            expect(badge).to_contain_text("Active")
            badge.get_by_text("Block this badge").click()
            badge.get_by_label("Why is it blocked?").fill("Reported lost at the front desk")
            badge.get_by_role("button", name="Block now").click()

            expect(page.get_by_role("status")).to_contain_text("is blocked")
            badge = page.locator(f'[data-badge="{ADA_BADGE}"]')
            expect(badge).to_have_attribute("data-status", "blocked")
            expect(badge).to_contain_text("Blocked")
            expect(badge).to_contain_text("Reported lost at the front desk")
            expect(badge.get_by_role("button", name="Unblock")).to_be_visible()
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            page.screenshot(path=str(ARTIFACTS / "admin-person-blocked-390.png"), full_page=True)
            context.close()
        finally:
            browser.close()
    assert not problems, problems
    with db.session() as s:
        stored = s.scalar(select(Badge).where(Badge.uid == ADA_BADGE))
        assert stored is not None and stored.status == BadgeStatus.BLOCKED and stored.person_id == ids["ada"]
        machine = s.get(Machine, lab.machines["prusa-a"])
        assert machine is not None
        assert decide(s, machine, ADA_BADGE, datetime.now(UTC)).reason == "badge_blocked"
