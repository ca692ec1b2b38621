"""The overview in a real browser on a phone-sized screen: Playwright with Debian's Chromium.

Never `playwright install` (it downloads a browser from outside); the Chromium comes
from the distribution: `apt-get install -y chromium`. Screenshots land in
tests/.artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flask import Flask
from sqlalchemy import update
from werkzeug.serving import make_server

from server.extensions import db
from server.models import Machine, MachineSession
from tests.web.conftest import PASSWORD, Lab, seed_lab

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
# From LIBRARY-FACTS.md: runs as root in a container, no GPU, and no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / ".artifacts"
PHONE: ViewportSize = {"width": 390, "height": 844}


@pytest.fixture
def live_server(make_app: Callable[..., Flask], password_hash: str) -> Iterator[tuple[str, Lab]]:
    """The app served by werkzeug on a free port, in a thread, on a seeded lab."""
    app = make_app()
    lab = seed_lab(password_hash)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkbank-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", lab
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_browser_phone_overview_live_and_german(live_server: tuple[str, Lab]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium` "
            "(`make test` does this; never `playwright install`)."
        )
    from playwright.sync_api import expect, sync_playwright

    base, lab = live_server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requested: list[str] = []
    problems: list[str] = []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, locale="en-US"
            )
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

            # Logging in from the overview's address brings you back to it.
            page.goto(f"{base}/")
            expect(page.get_by_role("heading", name="Log in")).to_be_visible()
            page.get_by_label("Email").fill(lab.trainer)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()

            laser = page.locator(f'[data-machine-id="{lab.machines["laser-1"]}"]')
            expect(page.get_by_role("heading", name="Machines")).to_be_visible()
            for name in ("Prusa A", "Laser 1", "Prusa B", "Bambu X1"):
                expect(page.get_by_role("heading", name=name)).to_be_visible()
            expect(laser).to_have_attribute("data-state", "in_use")
            expect(laser).to_contain_text("In use by Ada Lovelace")
            # Phone first: nothing wider than the screen, tap targets at least 44 px high.
            assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
            button = page.get_by_role("button", name="Log out").bounding_box()
            assert button is not None and button["height"] >= 44
            page.screenshot(path=str(ARTIFACTS / "overview-en-390.png"), full_page=True)

            # The session on the laser ends: the polling script updates the tile and the
            # session list without a reload.
            page.evaluate("window.__notReloaded = true")
            _end_laser_session(lab)
            expect(laser).to_have_attribute("data-state", "available", timeout=10_000)
            expect(laser).to_contain_text("0 h 50 min")  # 40 min before + the 10 min just ended
            expect(page.locator("[data-live-sessions]")).not_to_contain_text("still open")
            assert page.evaluate("window.__notReloaded") is True

            # Switch to German: the same page, in German.
            page.get_by_role("link", name="DE", exact=True).click()
            expect(page.locator("html")).to_have_attribute("lang", "de")
            expect(page.get_by_role("heading", name="Maschinen")).to_be_visible()
            expect(laser).to_contain_text("Frei")
            expect(page.get_by_text("Maschinenstunden heute").first).to_be_visible()
            page.wait_for_timeout(3500)  # one poll in German, so the screenshot shows the live texts
            expect(page.locator("[data-live-error]")).to_be_hidden()
            page.screenshot(path=str(ARTIFACTS / "overview-de-390.png"), full_page=True)

            page.get_by_role("link", name="Meine Schulung").click()
            expect(page.get_by_role("heading", name="Meine Schulung")).to_be_visible()

            # Wider screens get a grid of tiles and a real table.
            page.set_viewport_size({"width": 1280, "height": 900})
            page.goto(f"{base}/")
            expect(page.locator("table.sessions thead")).to_be_visible()
            page.screenshot(path=str(ARTIFACTS / "overview-de-1280.png"), full_page=True)
            context.close()

            # A participant lands on their own page and sees only their sessions.
            context = browser.new_context(
                viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
            )
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{base}/login")
            page.get_by_role("link", name="DE", exact=True).click()
            page.get_by_label("E-Mail").fill(lab.participant)
            page.get_by_label("Passwort").fill(PASSWORD)
            page.screenshot(path=str(ARTIFACTS / "login-de-390.png"), full_page=True)
            page.get_by_role("button", name="Anmelden").click()
            expect(page.get_by_role("heading", name="Meine Schulung")).to_be_visible()
            # Not the staff's overview (names of who uses what), but which machine is free now.
            expect(page.get_by_role("link", name="Maschinen", exact=True)).to_have_count(0)
            expect(page.get_by_role("link", name="Maschinen jetzt")).to_be_visible()
            expect(page.locator("table.sessions")).not_to_contain_text("Bob Builder")
            page.screenshot(path=str(ARTIFACTS / "me-de-390.png"), full_page=True)
            context.close()
        finally:
            browser.close()

    foreign = [url for url in requested if not url.startswith(base)]
    assert not foreign, f"the pages must not load anything from elsewhere: {foreign}"
    assert not problems, problems


def _end_laser_session(lab: Lab) -> None:
    now = datetime.now(UTC)
    with db.session() as s:
        s.execute(
            update(MachineSession)
            .where(MachineSession.id == lab.laser_session_id)
            .values(ended_at=now, unlocked_s=600.0, end_reason="badge")
        )
        s.execute(
            update(Machine)
            .where(Machine.id == lab.machines["laser-1"])
            .values(live_session_id=None, live_state="locked", live_running=False)
        )
