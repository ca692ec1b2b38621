"""The pages hold up on a 390 px phone and a 1366 px laptop, in a real headless Chromium (Debian's):
charts with a long machine name, count axes and legends; wide tables that fit or scroll with their
first column in view; the audit log, the CSV import's problems, a person for a trainer, machines
now for a participant, a 404. No page is wider than the screen, nothing logs an error, nothing is
loaded from elsewhere. Screenshots land in var/screenshots/ (not in git) for a person to look at.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import select, update

from server.extensions import db
from server.models import AuditLog, Booking, BookingStatus, Machine, Person, Site
from tests.web.conftest import PASSWORD, Lab
from tests.web.dashboard_support import add_learners
from tests.web.test_dashboards_pages import TODAY, clock, fill_usage  # noqa: F401
from tests.web.test_web_browser import CHROMIUM, CHROMIUM_ARGS, live_server  # noqa: F401

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, ViewportSize

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
LONG = "Trotec Speedy 400 flexx 120 W CO2 laser, room 2.14"
WIDTHS: tuple[ViewportSize, ...] = ({"width": 390, "height": 844}, {"width": 1366, "height": 768})
BAD_CSV = (
    b"name,email,language,badge\n"
    b",nobody@lab.test,en,\n"
    b"Alan Turing,alan-at-lab,en,\n"
    b"Jonas Weber,jonas@lab.test,fr,12345\n"
)


@pytest.fixture
def busy_lab(live_server: tuple[str, Lab], clock: datetime) -> Iterator[tuple[str, Lab]]:  # noqa: F811
    """The seeded lab with a laser of a long name, a year of learning, a blocked participant
    and some audit entries."""
    base, lab = live_server
    fill_usage()
    now = datetime.now(UTC)
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        add_learners(s, site, TODAY)
        s.execute(update(Machine).where(Machine.slug == "laser-1").values(name=LONG))
        bob = s.scalar(select(Person).where(Person.email == lab.other_participant))
        assert bob is not None
        for days in (1, 2, 3):
            s.add(
                Booking(
                    machine_id=lab.machines["prusa-a"],
                    person_id=bob.id,
                    starts_at=now - timedelta(days=days, hours=2),
                    ends_at=now - timedelta(days=days, hours=1),
                    status=BookingStatus.RELEASED,
                    no_show=True,
                    released_at=now - timedelta(days=days, hours=1, minutes=45),
                )
            )
            s.add(
                AuditLog(
                    at=now - timedelta(days=days),
                    actor_label="Tina Trainer <trainer@lab.test>",
                    action="booking.move",
                    subject=f"booking:x{days}",
                    detail={
                        "machine": "laser-1",
                        "person": "Bob Builder",
                        "starts_at": (now + timedelta(days=days)).isoformat(),
                        "ends_at": (now + timedelta(days=days, hours=1)).isoformat(),
                        "from": [now.isoformat(), (now + timedelta(hours=1)).isoformat()],
                    },
                )
            )
        s.commit()
    yield base, lab


def _sticky_first_column(page: Page, table: str) -> dict[str, Any]:
    """Scroll the table's box to the far right: where its first column is then, and whether it fits."""
    result: dict[str, Any] = page.evaluate(
        """(selector) => {
            const table = document.querySelector(selector);
            const box = table.parentElement;
            const fits = box.scrollWidth <= box.clientWidth + 1;
            box.scrollLeft = box.scrollWidth;
            const cell = table.querySelector('tbody th[scope="row"]');
            return {
                fits: fits,
                boxLeft: box.getBoundingClientRect().left,
                cellLeft: cell.getBoundingClientRect().left,
                columns: table.querySelectorAll('thead th').length,
                visible: Array.from(table.querySelectorAll('thead th')).filter(th => {
                    const r = th.getBoundingClientRect(), b = box.getBoundingClientRect();
                    return r.left >= b.left - 1 && r.right <= b.right + 1;
                }).length,
            };
        }""",
        table,
    )
    return result


def _legend_inside(page: Page, chart_name: str) -> bool:
    inside: bool = page.get_by_role("img", name=chart_name).evaluate(
        """(svg) => {
            const height = svg.viewBox.baseVal.height, width = svg.viewBox.baseVal.width;
            return Array.from(svg.querySelectorAll('.legends text')).every(t => {
                const b = t.getBBox();
                const m = t.getCTM(), root = svg.getCTM();
                // In the SVG's own units: the text's box moved by its groups' transforms.
                const x = (m.e - root.e) / root.a + b.x, y = (m.f - root.f) / root.d + b.y;
                return x >= 0 && y >= 0 && x + b.width <= width + 0.5 && y + b.height <= height + 0.5;
            });
        }"""
    )
    return inside


def _label_whole(page: Page, table: str) -> bool:
    """On a phone, each cell's label (``data-label`` before the value) keeps its word whole."""
    whole: bool = page.evaluate(
        """(selector) => {
            const canvas = document.createElement('canvas').getContext('2d');
            return Array.from(document.querySelectorAll(selector + ' td[data-label]')).every(td => {
                const before = getComputedStyle(td, '::before');
                if (before.content === 'none' || before.display === 'none') return true;
                if (before.display.startsWith('inline')) return true;  // text flow: "Row 4"
                canvas.font = before.font;
                const needed = canvas.measureText(td.getAttribute('data-label')).width;
                return parseFloat(before.width) + 0.5 >= needed;
            });
        }""",
        table,
    )
    return whole


def test_browser_pages_hold_up_on_a_phone_and_a_laptop(busy_lab: tuple[str, Lab]) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (`make test` does this).")
    from playwright.sync_api import expect, sync_playwright

    base, lab = busy_lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    requested: list[str] = []

    def open_as(browser: Browser, email: str | None, viewport: ViewportSize) -> Page:
        context = browser.new_context(viewport=viewport, locale="en-US", is_mobile=viewport["width"] < 500)
        page = context.new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        # (Answers the pages give on purpose, 400 for refused forms and 404, are not errors here.)
        page.on(
            "console",
            lambda m: (
                problems.append(m.text)
                if m.type == "error" and not m.text.startswith("Failed to load resource")
                else None
            ),
        )
        page.goto(f"{base}/login")
        if email is not None:
            page.get_by_label("Email").fill(email)
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("button", name="Log out")).to_be_visible()
        return page

    def shot(page: Page, name: str, width: int) -> None:
        wide = page.evaluate("document.documentElement.scrollWidth")
        if wide > width:
            problems.append(f"{name} is {wide} px wide at {width} px")
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for viewport in WIDTHS:
                width = viewport["width"]
                admin = open_as(browser, lab.admin, viewport)

                # Utilisation: the long name is shortened on the chart, whole in the table.
                admin.goto(f"{base}/dashboards/usage?from=2026-07-01&to=2026-11-18")
                chart = admin.get_by_role("img", name="Unlocked and run hours per machine")
                expect(chart).to_be_visible()
                expect(chart.locator("title", has_text=LONG)).to_have_count(1)
                expect(admin.locator('tr[data-machine="laser-1"] th a')).to_have_text(LONG)
                assert _legend_inside(admin, "Unlocked and run hours per machine")
                assert _legend_inside(admin, "Booked and used hours per machine")  # "Used of booked"
                shot(admin, "dashboard-usage", width)
                table = _sticky_first_column(admin, "#machine-table")
                if width >= 1366:
                    # Sixteen with the energy columns (this lab's plugs measure): in English they fit.
                    assert table["fits"] and table["visible"] == table["columns"] == 16, table
                else:
                    assert not table["fits"]
                    assert abs(table["cellLeft"] - table["boxLeft"]) < 2, table  # the machine stays in view
                shot(admin, "dashboard-usage-scrolled", width)

                # Learning: whole numbers on the count axes, every legend entry in the frame.
                admin.goto(f"{base}/dashboards/learning?from=2026-01-01&to=2026-11-18")
                funnel = admin.get_by_role("img", name="Participants who reached each level")
                expect(funnel).to_be_visible()
                numbers = [n for n in funnel.locator(".axis text").all_text_contents() if n.strip().isdigit()]
                assert numbers and numbers == [str(n) for n in sorted({int(n) for n in numbers})]
                assert _legend_inside(admin, "Qualifications granted per month")
                shot(admin, "dashboard-learning", width)

                admin.goto(f"{base}/admin/audit")
                expect(admin.get_by_text("Moved the booking of Bob Builder on").first).to_be_visible()
                shot(admin, "audit-log", width)

                admin.goto(f"{base}/admin/people/import")
                admin.get_by_label("CSV file").set_input_files(
                    files=[{"name": "cohort.csv", "mimeType": "text/csv", "buffer": BAD_CSV}]
                )
                admin.get_by_role("button", name="Check and import").click()
                expect(admin.get_by_text("4 problems found.")).to_be_visible()
                assert _label_whole(admin, ".problems table")
                shot(admin, "import-problems", width)
                admin.context.close()

                trainer = open_as(browser, lab.trainer, viewport)
                trainer.goto(f"{base}/bookings/blocked")
                expect(trainer.get_by_role("button", name="Lift block")).to_have_count(1)
                shot(trainer, "blocked", width)
                trainer.get_by_role("link", name="Bob Builder").click()
                expect(trainer.locator("#badges")).to_be_visible()
                expect(trainer.locator("[data-no-show-block]")).to_contain_text("Blocked for no-shows")
                shot(trainer, "person-for-trainer", width)
                trainer.context.close()

                participant = open_as(browser, lab.participant, viewport)
                participant.get_by_role("link", name="Machines now").click()
                expect(participant.locator('[data-slug="prusa-a"]')).to_contain_text("Free")
                expect(participant.locator('[data-slug="laser-1"]')).to_contain_text("In use by you")
                shot(participant, "machines-now", width)
                participant.goto(f"{base}/me")
                shot(participant, "my-training", width)
                participant.goto(f"{base}/no-such-page")
                expect(participant.get_by_role("heading", name="This page does not exist.")).to_be_visible()
                shot(participant, "not-found", width)
                participant.context.close()
        finally:
            browser.close()
    assert problems == []
    outside = [url for url in requested if not url.startswith(base) and not url.startswith("data:")]
    assert outside == []
