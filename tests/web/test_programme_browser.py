"""Programme data in a real browser on a phone: a trainer records the consent and fills in the
programme's questions; an admin opens the special categories. Nothing wider than the screen.

Playwright with Debian's Chromium, as tests/web/test_web_browser.py (never `playwright install`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from server.extensions import db
from server.models import Consent, FieldKind, ParticipantValue, Person
from server.services import programme_data
from server.services.programme_data import FieldSpec
from tests.web.conftest import PASSWORD, Lab
from tests.web.test_web_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, PHONE, live_server

pytestmark = pytest.mark.browser
__all__ = ["live_server"]  # the fixture, imported for this module's test

ESF = "ESF Plus"


def _setup(lab: Lab) -> int:
    now = datetime.now(UTC)
    with db.session() as s:
        ada = s.scalars(select(Person).where(Person.email == lab.participant)).one()
        admin = s.scalars(select(Person).where(Person.email == lab.admin)).one()
        ada.programme = ESF
        for label, kind, options, special, consent in (
            ("Jobcenter customer number", FieldKind.TEXT, "", False, False),
            (
                "Highest school qualification",
                FieldKind.CHOICE,
                "None\nLower secondary\nUpper secondary",
                False,
                True,
            ),
            ("Out of work since", FieldKind.DATE, "", False, True),
            ("Needs support because of a disability or illness", FieldKind.YES_NO, "", True, True),
        ):
            programme_data.save_field(
                s, admin, ESF, FieldSpec(label, None, kind, options, False, special, consent), now
            )
        programme_data.add_consent_text(
            s,
            admin,
            ESF,
            "I agree that the lab stores my answers to run and report the programme.",
            None,
            now,
        )
        s.commit()
        return ada.id


def _fits(page: object) -> bool:
    width: int = page.evaluate("document.documentElement.scrollWidth")  # type: ignore[attr-defined]
    return width <= PHONE["width"]


def test_browser_phone_programme_data(live_server: tuple[str, Lab]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`.")
    from playwright.sync_api import expect, sync_playwright

    base, lab = live_server
    ada_id = _setup(lab)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for email, role in ((lab.trainer, "trainer"), (lab.admin, "admin")):
                context = browser.new_context(
                    viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, locale="en-US"
                )
                page = context.new_page()
                page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
                page.goto(f"{base}/login")
                page.get_by_label("Email").fill(email)
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.goto(f"{base}/training/people/{ada_id}")
                page.get_by_role("link", name="Programme data").click()
                expect(page.get_by_role("heading", name="Programme data · Ada Lovelace")).to_be_visible()
                if role == "trainer":
                    expect(page.get_by_label("Highest school qualification")).to_be_disabled()
                    expect(page.get_by_text("Needs support")).to_have_count(0)
                    page.get_by_role("button", name="Record consent").click()
                    expect(page.get_by_text("Consent recorded.")).to_be_visible()
                    page.get_by_label("Jobcenter customer number").fill("123D456789")
                    page.get_by_label("Highest school qualification").select_option(label="Upper secondary")
                    page.get_by_label("Out of work since").fill("2025-04-01")
                    page.get_by_role("button", name="Save").click()
                    expect(page.get_by_text("Programme data saved.")).to_be_visible()
                    assert _fits(page), "the trainer's page is wider than the phone"
                    page.screenshot(path=str(ARTIFACTS / "programme-data-phone.png"), full_page=True)
                else:
                    page.get_by_role("link", name="Show special categories").click()
                    page.get_by_label("Needs support because of a disability or illness").select_option("yes")
                    page.get_by_role("button", name="Save").click()
                    expect(page.get_by_text("Special categories saved.")).to_be_visible()
                    assert _fits(page), "the special categories page is wider than the phone"
                    page.screenshot(path=str(ARTIFACTS / "programme-special-phone.png"), full_page=True)
                context.close()
        finally:
            browser.close()
    assert problems == []
    with db.session() as s:
        assert s.scalars(select(Consent)).one().version == 1
        assert len(s.scalars(select(ParticipantValue)).all()) == 3
