"""The dashboard pages: numbers a user sees, filters, quick periods, charts without outside
URLs, bad query strings answered with a message (never a 500), German pages."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from server.adapters.web import dashboards as pages
from server.extensions import db
from server.models import Device, Site
from tests.web.conftest import AuthActions, Lab
from tests.web.dashboard_support import add_learners, daily, day_stats, hourly

NOW = datetime(2026, 11, 18, 10, 0, tzinfo=UTC)  # Wednesday; local day 18 Nov in Berlin
TODAY = date(2026, 11, 18)


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> datetime:
    monkeypatch.setattr(pages, "_now", lambda: NOW)
    return NOW


@pytest.fixture
def usage(lab: Lab) -> Lab:
    fill_usage()
    return lab


def fill_usage() -> None:
    """Aggregates for the seeded lab: the laser in this quarter and the last, printers now."""
    with db.session() as s:
        daily(
            s,
            "laser-1",
            TODAY,
            "Cohort A",
            sessions=2,
            unlocked_h=3,
            run_h=2,
            jobs=2,
            jobs_failed=1,
            energy_wh=2500.0,
        )
        daily(
            s,
            "laser-1",
            TODAY - timedelta(days=1),
            "",
            sessions=1,
            unlocked_h=1.5,
            run_h=1,
            booked_h=2,
            booked_used_h=1,
            energy_wh=1000.0,
            energy_gap_h=0.5,
        )
        day_stats(s, "laser-1", TODAY, open_h=10)
        day_stats(s, "laser-1", TODAY - timedelta(days=1), open_h=8, maintenance_h=2)
        daily(
            s,
            "prusa-a",
            TODAY,
            "",
            sessions=3,
            unlocked_h=6,
            run_h=5,
            jobs=3,
            filament_g=84,
            energy_wh=1234.0,
        )
        hourly(s, "laser-1", TODAY, 14, 1.0)  # a Wednesday, 14:00
        hourly(s, "prusa-a", TODAY, 14, 0.5)
        # Last quarter (July to September): the laser only.
        daily(s, "laser-1", date(2026, 8, 12), "", sessions=4, unlocked_h=7.4, run_h=6)
        daily(s, "prusa-a", date(2026, 8, 12), "", sessions=4, unlocked_h=11)
        daily(s, "sued-1", TODAY, "", sessions=9, unlocked_h=40)
        device = s.get(Device, "pi-laser-1")
        assert device is not None
        device.agent_version = "1.4.2"


def _row(html: str, slug: str) -> dict[str, str]:
    """The cells of one machine's row in the numbers table, by column."""
    match = re.search(rf'<tr data-machine="{slug}">(.*?)</tr>', html, re.S)
    assert match is not None, slug
    return dict(re.findall(r'data-col="(\w+)">([^<]*)<', match.group(1)))


def test_dashboards_usage_shows_machines_totals_chart_and_tiles(
    client: FlaskClient, auth: AuthActions, usage: Lab
) -> None:
    auth.login(usage.admin)
    response = client.get("/dashboards/usage")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Lernwerkstatt Nord" in html
    assert 'value="2026-10-20"' in html and 'value="2026-11-18"' in html  # the last 30 days
    laser = _row(html, "laser-1")
    assert laser["unlocked"] == "4.5" and laser["run"] == "3.0"
    assert laser["open"] == "18.0" and laser["utilisation"] == "25\u202f%"
    assert laser["maintenance"] == "2.0" and laser["jobs_failed"] == "1"
    assert laser["booked"] == "2.0" and laser["booked_used"] == "1.0"
    assert _row(html, "prusa-a")["filament"] == "84"
    # Energy in kWh, and the unmetered hours that make it a lower bound.
    assert (_row(html, "prusa-a")["energy"], _row(html, "prusa-a")["energy_gap"]) == ("1.2", "0.0")
    assert _row(html, "laser-1")["energy"] == "3.5" and _row(html, "laser-1")["energy_gap"] == "0.5"
    assert 'data-col="energy">4.7<' in html  # the total: 1.234 + 3.5 kWh
    assert _row(html, "bambu")["unlocked"] == "0.0"
    assert "Southern Printer" not in html  # the other site
    assert 'data-total="unlocked">10.5<' in html
    assert html.count("<svg") >= 3 and "<figcaption>Use per machine</figcaption>" in html
    # Heatmap: Wednesday (day 2) at 14:00 holds 1.5 h, in the darkest step.
    assert re.search(r'<td class="heat-5" data-day="2" data-hour="14">1.5</td>', html)
    # Hours 8 to 18 at least; the night without any use is left out.
    assert 'data-day="0" data-hour="8"' in html and 'data-day="0" data-hour="18"' in html
    assert 'data-hour="3"' not in html and 'data-hour="19"' not in html
    # Live tiles: state, device and agent version.
    assert 'data-machine="laser-1" data-state="in_use"' in html
    assert "Agent 1.4.2" in html and "Device offline" in html


def test_dashboards_charts_are_offline_and_pass_the_content_policy(
    client: FlaskClient, auth: AuthActions, usage: Lab
) -> None:
    auth.login(usage.admin)
    response = client.get("/dashboards/usage")
    html = response.get_data(as_text=True)
    svgs = re.findall(r"<svg.*?</svg>", html, re.S)
    assert len(svgs) == 3
    for svg in svgs:
        urls = set(re.findall(r"https?://[^\s\"'<>)]+", svg))
        assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
        assert "<script" not in svg and " style=" not in svg
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy)
    assert nonce is not None and "script-src 'self'" in policy
    assert html.count(f'<style nonce="{nonce.group(1)}"') == 3
    assert client.get("/dashboards/usage").headers["Content-Security-Policy"] != policy  # fresh per page


def test_dashboards_usage_lasers_last_quarter_in_a_few_clicks(
    client: FlaskClient, auth: AuthActions, usage: Lab
) -> None:
    auth.login(usage.admin)
    html = client.get("/dashboards/usage?type=laser").get_data(as_text=True)
    assert _row(html, "laser-1")["unlocked"] == "4.5"
    assert 'data-machine="prusa-a"' not in html
    link = re.search(r'<a href="([^"]+)">Last quarter</a>', html)
    assert link is not None
    href = link.group(1).replace("&amp;", "&")
    assert "type=laser" in href and "from=2026-07-01" in href and "to=2026-09-30" in href
    html = client.get(href).get_data(as_text=True)
    assert 'aria-current="true">Last quarter</a>' in html
    assert 'id="booked"' not in html  # no bookings last quarter: no empty booking chart
    assert _row(html, "laser-1")["unlocked"] == "7.4"
    assert _row(html, "laser-1")["sessions"] == "4"
    assert 'data-machine="prusa-a"' not in html
    assert "2026-W27" in html and "2026-W40" in html  # every week of the quarter in the trend


def test_dashboards_usage_cohort_filter(client: FlaskClient, auth: AuthActions, usage: Lab) -> None:
    with db.session() as s:
        site = s.get(Site, usage.site_id)
        assert site is not None
        add_learners(s, site, TODAY)  # people in Cohort A and B: the filter offers them
    auth.login(usage.admin)
    html = client.get("/dashboards/usage?cohort=Cohort+A").get_data(as_text=True)
    assert '<option value="Cohort A" selected>' in html
    assert _row(html, "laser-1")["unlocked"] == "3.0"
    assert _row(html, "prusa-a")["unlocked"] == "0.0"
    html = client.get("/dashboards/usage?cohort=-").get_data(as_text=True)  # people without a group
    assert '<option value="-" selected>' in html
    assert _row(html, "laser-1")["unlocked"] == "1.5" and _row(html, "prusa-a")["unlocked"] == "6.0"
    link = re.search(r'<a href="([^"]+)">This year</a>', html)
    assert link is not None and "cohort=-" in link.group(1)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("from=2026-13-01", "is not a date"),
        ("to=yesterday", "is not a date"),
        ("from=99999-01-01", "is not a date"),
        ("from=1900-01-01", "is not a date"),
        ("from=2026-11-10&to=2026-11-01", "ends before it begins"),
        ("from=2010-01-01&to=2026-11-01", "at most six years"),
        ("type=submarine", "no machine type"),
        ("cohort=Nobody", "no group"),
        ("type=" + "x" * 300, "too long"),
    ],
)
def test_dashboards_usage_bad_filters_get_a_message(
    client: FlaskClient, auth: AuthActions, usage: Lab, query: str, message: str
) -> None:
    auth.login(usage.admin)
    response = client.get(f"/dashboards/usage?{query}")
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert message in html and 'role="alert"' in html
    assert "<form" in html and "Last quarter" in html  # the way out is on the page


def test_dashboards_unknown_site_is_404_and_other_site_works(
    client: FlaskClient, auth: AuthActions, usage: Lab
) -> None:
    auth.login(usage.trainer)
    assert client.get("/dashboards/usage?site=atlantis").status_code == 404
    assert client.get("/dashboards/learning?site=" + "x" * 500).status_code == 404
    html = client.get("/dashboards/usage?site=sued").get_data(as_text=True)
    assert _row(html, "sued-1")["unlocked"] == "40.0"


def test_dashboards_navigation_for_staff_only(client: FlaskClient, auth: AuthActions, usage: Lab) -> None:
    auth.login(usage.participant)
    assert ">Dashboards</a>" not in client.get("/me").get_data(as_text=True)
    assert client.get("/dashboards/usage").status_code == 403
    auth.logout()
    auth.login(usage.trainer)
    html = client.get("/dashboards/usage").get_data(as_text=True)
    assert ">Dashboards</a>" in html and "Lernwerkstatt Nord" in html  # a trainer's own site


def test_dashboards_learning_funnel_levels_and_expiring(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    with db.session() as s:
        site = s.get(Site, lab.site_id)
        assert site is not None
        add_learners(s, site, TODAY)
    auth.login(lab.admin)
    response = client.get("/dashboards/learning?from=2026-11-01&to=2026-11-18")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    funnel = re.search(
        r'<table class="dash-numbers dash-compact" id="funnel-table">(.*?)</table>', html, re.S
    )
    assert funnel is not None
    assert re.findall(r'data-col="people">(\d+)<', funnel.group(1)) == ["4", "3", "2"]
    assert 'data-total="participants">4<' in html
    assert "Anna Arendt" in html and "Lasersicherheit" not in html  # expiring list, English names
    assert html.count("<svg") == 2
    assert "Choose a group" in html and 'id="people-table"' not in html
    html = client.get(
        "/dashboards/learning?from=2026-11-01&to=2026-11-18&cohort=Cohort+B&competency=laser-safety"
    ).get_data(as_text=True)
    people = re.search(r'id="people-table">(.*?)</table>', html, re.S)
    assert people is not None
    assert "Cleo Cramer" in people.group(1) and "Dana Dorn" in people.group(1)
    assert "level-expired" in people.group(1) and "Anna Arendt" not in people.group(1)
    assert client.get("/dashboards/learning?competency=juggling").status_code == 400
    assert client.get("/dashboards/learning?from=2026-02-30").status_code == 400


def test_dashboards_pages_in_german(app: Flask, auth: AuthActions, client: FlaskClient, usage: Lab) -> None:
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "de"
    auth.login(usage.other_participant)  # Bob reads German, but is no staff
    assert client.get("/dashboards/usage").status_code == 403
    auth.logout()
    auth.login(usage.admin)
    client.get("/language/de")
    html = client.get("/dashboards/usage?type=laser").get_data(as_text=True)
    assert "<h1>Auslastung</h1>" in html
    assert '<th scope="col">Mi</th>' in html or '<th scope="col">Mi.</th>' in html
    assert _row(html, "laser-1")["unlocked"] == "4,5"
    assert _row(html, "laser-1")["energy"] == "3,5" and "Energie kWh" in html
    assert "Letztes Quartal" in html
    html = client.get("/dashboards/learning").get_data(as_text=True)
    assert "<h1>Lernen</h1>" in html


def test_dashboards_chart_cleaner_refuses_outside_urls() -> None:
    from server.adapters.web import charts

    svg = '<svg xmlns="http://www.w3.org/2000/svg"><image href="https://cdn.example/x.png"/></svg>'
    with pytest.raises(ValueError, match=r"cdn\.example"):
        charts.clean_svg(svg, "t")
    cleaned = charts.clean_svg(
        '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><!--http://pygal.org--></svg>', "A & B"
    )
    assert cleaned.startswith('<svg role="img" aria-label="A &amp; B"') and "pygal.org" not in cleaned


def test_dashboards_heat_steps() -> None:
    from server.adapters.web.charts import heat_level

    assert [heat_level(v, 10.0) for v in (0.0, 0.1, 2.0, 2.1, 5.0, 9.9, 10.0)] == [0, 1, 1, 2, 3, 5, 5]
    assert heat_level(3.0, 0.0) == 0


def test_dashboards_empty_site_shows_empty_states(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.admin)
    html = client.get("/dashboards/usage?site=sued&from=2026-01-01&to=2026-12-31").get_data(as_text=True)
    assert _row(html, "sued-1")["unlocked"] == "0.0"
    assert "No use in this period." in html
    response = client.get("/dashboards/learning?site=sued")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "No participants in this period." in html and "Nothing expires within 30 days." in html
