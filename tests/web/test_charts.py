"""The dashboard charts hold up: whole numbers on count axes, every legend entry inside the
frame, and a long machine name shortened (whole in its tooltip) so the bars keep their width."""

from __future__ import annotations

import re

from server.adapters.web import charts

LONG = "Trotec Speedy 400 flexx 120 W CO2 laser, room 2.14"


def _view_height(svg: str) -> float:
    found = re.search(r'viewBox="0 0 [\d.]+ ([\d.]+)"', svg)
    assert found is not None
    return float(found.group(1))


def _axis_numbers(svg: str) -> list[str]:
    """The numbers on the charts' axes (not the values printed on the bars)."""
    start = svg.index('class="axis')
    end = svg.index('class="series', start)
    return re.findall(r"<text[^>]*>([\d.,]+)</text>", svg[start:end])


def test_charts_count_axes_are_whole_numbers_each_once() -> None:
    funnel = str(charts.funnel_bars("Participants who reached each level", ["B", "S", "I"], [3, 2, 2], None))
    assert _axis_numbers(funnel) == ["0", "1", "2", "3"]
    months = str(
        charts.stacked_months(
            "Qualifications granted per month",
            ["Sep 2026", "Oct 2026", "Nov 2026"],
            [("Briefed", [1, 0, 2]), ("Supervised", [0, 1, 1]), ("Independent", [0, 0, 2])],
            None,
        )
    )
    assert _axis_numbers(months) == [str(n) for n in range(6)]


def test_charts_count_ticks_stay_few_and_whole() -> None:
    assert charts.count_ticks(0) == [0, 1]
    assert charts.count_ticks(3) == [0, 1, 2, 3]
    assert charts.count_ticks(7) == [0, 2, 4, 6, 8]
    assert charts.count_ticks(51) == [0, 10, 20, 30, 40, 50, 60]
    for top in range(0, 400, 7):
        ticks = charts.count_ticks(top)
        assert ticks[-1] >= top and len(ticks) <= 7 and len(set(ticks)) == len(ticks)


def test_charts_legend_fits_inside_the_frame() -> None:
    """Three levels in two columns: pygal left room for one row and cut the third entry off."""
    svg = str(
        charts.stacked_months(
            "Qualifications granted per month",
            ["Sep 2026", "Oct 2026"],
            [("Briefed", [1, 0]), ("Supervised", [0, 1]), ("Independent", [0, 2])],
            None,
        )
    )
    legend = re.search(
        r'<g transform="translate\(([\d.]+), ([\d.]+)\)" class="legends">(.*?)</g></g>', svg, re.S
    )
    assert legend is not None
    top = float(legend.group(2))
    lowest = max(float(y) for y in re.findall(r'<text x="[\d.]+" y="([\d.]+)"', legend.group(3)))
    assert "Independent" in legend.group(3)
    assert top + lowest + 4 <= _view_height(svg)  # the text's baseline plus its descenders


def test_charts_long_machine_name_is_shortened_with_the_whole_name_as_tooltip() -> None:
    svg = str(
        charts.machine_bars(
            "Unlocked and run hours per machine",
            ["Prusa A", LONG, "Bambu X1"],
            [("Unlocked", [6.0, 7.4, 1.2]), ("Run", [5.0, 6.0, 1.0])],
            None,
        )
    )
    assert f"<title>{LONG}</title>" in svg
    assert not re.search(rf"<text[^>]*>{re.escape(LONG)}", svg)  # not drawn whole on the axis
    assert "Trotec Speedy \u2026 room 2.14" in svg
    # The bars keep most of the width: the longest is well over a third of the chart.
    widths = [
        float(w)
        for w in re.findall(r'<rect [^>]*width="([\d.]+)"[^>]*class="rect reactive tooltip-trigger"', svg)
    ]
    assert widths and max(widths) > 480 / 3


def test_charts_short_labels_keep_their_ends_apart() -> None:
    assert charts.short_label("Prusa A") == "Prusa A"
    first = charts.short_label("Trotec Speedy 400 flexx 120 W CO2 laser, room 2.14")
    second = charts.short_label("Trotec Speedy 400 flexx 120 W CO2 laser, room 2.15")
    assert first != second and len(first) <= charts.LABEL_CHARS + 1
    svg = str(
        charts.machine_bars("Hours", [LONG, LONG.replace("Trotec", "Trotac")], [("Unlocked", [1, 2])], None)
    )
    # Shortened alike, so both stay whole rather than read the same.
    assert ">Trotec Speedy" in svg and ">Trotac Speedy" in svg
