"""Charts for the dashboards: pygal rendered on the server to inline SVG, no JavaScript, no CDN.

The lab may be offline and the pages' Content-Security-Policy allows no outside URL, so
pygal's default JavaScript (a CDN link) is switched off and the SVG is cleaned: no XML
declaration, no comments (they carry pygal's home page URLs), no inline config script, no
hover tooltips (they need the script, and their inline ``style`` attribute would break the
policy). The one
``<style>`` element pygal writes gets the request's CSP nonce, so the policy can stay
strict. Every chart's numbers are also in a table beside it (the templates); the SVG is
``role="img"`` with the chart's title as its name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pygal
from markupsafe import Markup, escape
from pygal.style import Style

# Readable on white and for the common colour blindnesses (blue / orange / green / purple).
COLOURS = ("#1f5fa8", "#d97706", "#2e7d32", "#7b3fa0", "#b91c1c")
STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1f2937",
    foreground_strong="#111827",
    foreground_subtle="#6b7280",
    colors=COLOURS,
    font_family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    label_font_size=15,
    major_label_font_size=15,
    legend_font_size=16,
    title_font_size=18,
    value_font_size=14,
    tooltip_font_size=14,
    value_colors=("#ffffff",),  # numbers printed inside the dark bars
    opacity="1",
    opacity_hover="1",
)
# Drawn at a phone's width: scaled to the screen, the labels stay about their pixel size on a
# 390 px phone and grow with the screen on a desktop.
WIDTH = 480

_COMMENT = re.compile(r"<!--.*?-->", re.S)
_DECLARATION = re.compile(r"<\?xml[^>]*\?>\s*")
_SCRIPT = re.compile(r"<script\b.*?</script>", re.S)
_TOOLTIP = re.compile(r'<g transform="[^"]*" class="plot tooltip-overlay">.*?</g></g>', re.S)
_STYLE_ATTRIBUTE = re.compile(r'\sstyle="[^"]*"')
_URL = re.compile(r"https?://[^\s\"'<>)]+")
# The only URLs an SVG may name: its own namespaces.
NAMESPACES = frozenset({"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"})


def _config(**options: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "style": STYLE,
        "js": [],  # pygal's default loads a script from a CDN
        "disable_xml_declaration": True,
        "width": WIDTH,
        "height": 320,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 2,
        "truncate_legend": -1,
        "truncate_label": -1,
        "print_values": False,
        "show_y_guides": True,
        "tooltip_border_radius": 0,
        "margin": 12,
        "spacing": 10,
        "no_data_text": "",
    }
    base.update(options)
    return base


def clean_svg(svg: str, title: str, nonce: str | None) -> Markup:
    """pygal's SVG, made safe to inline under our Content-Security-Policy."""
    svg = _DECLARATION.sub("", svg)
    svg = _COMMENT.sub("", svg)
    svg = _SCRIPT.sub("", svg)  # pygal writes its config as an inline script even with js=[]
    svg = _TOOLTIP.sub("", svg)
    svg = _STYLE_ATTRIBUTE.sub("", svg)
    if nonce:
        svg = svg.replace("<style", f'<style nonce="{escape(nonce)}"', 1)
    svg = svg.replace(
        "<svg ", f'<svg role="img" aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet" ', 1
    )
    outside = [url for url in _URL.findall(svg) if url not in NAMESPACES]
    if outside:  # a pygal upgrade must not quietly start linking the internet
        raise ValueError(f"chart SVG names outside URLs: {outside}")
    return Markup(svg)  # noqa: S704  # pygal escapes the labels and values it writes


def _render(chart: Any, title: str, nonce: str | None) -> Markup:
    return clean_svg(chart.render(is_unicode=True), title, nonce)


Number = Callable[[float], str]


def _hours(value: float) -> str:
    return f"{value:.1f} h"


def machine_bars(
    title: str,
    names: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    nonce: str | None,
    number: Number = _hours,
) -> Markup:
    """Horizontal bars, one group per machine (e.g. unlocked vs run hours): names stay readable.

    ``number`` writes the axis values in the reader's notation (``1,5 h`` in German).
    """
    chart = pygal.HorizontalBar(
        **_config(height=max(220, 70 + 46 * len(names)), value_formatter=number, max_scale=6)
    )
    # pygal draws the first label at the bottom: reversed, the chart reads like the table.
    chart.x_labels = list(reversed(names))
    for label, values in series:
        chart.add(label, list(reversed([round(v, 2) for v in values])))
    return _render(chart, title, nonce)


def trend_line(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    nonce: str | None,
    number: Number = _hours,
) -> Markup:
    """Hours per ISO week; with many weeks only every few labels are written."""
    chart = pygal.Line(
        **_config(
            x_label_rotation=-45,
            show_minor_x_labels=False,
            dots_size=3,
            max_scale=6,
            value_formatter=number,
        )
    )
    chart.x_labels = list(labels)
    step = max(1, len(labels) // 6)
    chart.x_labels_major = list(labels)[::step]
    for label, values in series:
        chart.add(label, [round(v, 2) for v in values])
    return _render(chart, title, nonce)


def funnel_bars(title: str, labels: Sequence[str], values: Sequence[int], nonce: str | None) -> Markup:
    """The funnel briefed → supervised → independent as bars of people, widest first."""
    chart = pygal.HorizontalBar(
        **_config(
            height=max(200, 80 + 50 * len(labels)),
            show_legend=False,
            print_values=True,
            value_formatter=lambda v: f"{v:.0f}",
        )
    )
    # pygal draws the first label at the bottom: reversed, the funnel reads top down.
    chart.x_labels = list(reversed(labels))
    chart.add(title, list(reversed([int(v) for v in values])))
    return _render(chart, title, nonce)


def stacked_months(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]], nonce: str | None
) -> Markup:
    """Qualifications granted per month, stacked by level."""
    chart = pygal.StackedBar(
        **_config(
            x_label_rotation=-45 if len(labels) > 6 else 0,
            value_formatter=lambda v: f"{v:.0f}",
        )
    )
    chart.x_labels = list(labels)
    for label, values in series:
        chart.add(label, list(values))
    return _render(chart, title, nonce)


def heat_level(value: float, maximum: float, steps: int = 5) -> int:
    """The colour step (0..steps) of one heatmap cell: 0 only for no use at all."""
    if value <= 0 or maximum <= 0:
        return 0
    return max(1, min(steps, int(-(-value * steps // maximum))))
