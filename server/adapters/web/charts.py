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
from functools import lru_cache
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


# Machine names on the bar charts' axis are shortened to this many characters (the table beside
# the chart and the label's <title> tooltip carry the whole name): a long name would otherwise
# take the chart's width and leave the bars a sliver.
LABEL_CHARS = 24
LEGEND_COLUMNS = 2
_NICE_STEPS = (1, 2, 5)


def short_label(name: str, limit: int = LABEL_CHARS) -> str:
    """``name`` in at most about ``limit`` characters: its first and last words around an
    ellipsis ("Trotec Speedy … room 2.14"), so that names differing at the end stay apart."""
    name = " ".join(name.split())
    if len(name) <= limit:
        return name
    words = name.split(" ")
    head_room = (limit - 2) * 3 // 5
    tail_room = limit - 2 - head_room
    head, tail = "", ""
    while words and len((head + " " + words[0]).strip()) <= head_room:
        head = (head + " " + words.pop(0)).strip()
    while words and len((words[-1] + " " + tail).strip()) <= tail_room:
        tail = (words.pop() + " " + tail).strip()
    if not head:
        head = name[:head_room]
    if not tail:
        tail = name[-tail_room:]
    return f"{head} \u2026 {tail}"


def count_ticks(top: float, most: int = 6) -> list[int]:
    """Whole-number axis labels from 0 to at least ``top``, at most ``most`` + 1 of them, on a
    1-2-5 step: counts of people are never "0.5"."""
    top = max(int(-(-top // 1)), 1)
    magnitude = 1
    while True:
        for nice in _NICE_STEPS:
            step = nice * magnitude
            if -(-top // step) <= most:
                end = -(-top // step) * step
                return list(range(0, end + 1, step))
        magnitude *= 10


def _legend(series: int, columns: int = LEGEND_COLUMNS) -> dict[str, Any]:
    """A bottom legend with room for every row: pygal reserves ``series // columns`` rows, one
    too few when the series do not fill the last row, and the last entries are cut off."""
    columns = min(columns, max(series, 1))
    missing = -(-series // columns) - series // columns
    line = max(STYLE.legend_font_size, 12) * 1.5
    return {"legend_at_bottom_columns": columns, "margin_bottom": 12 + round(missing * line)}


def _titled(svg: str, labels: dict[str, str]) -> str:
    """Give each shortened axis label its whole name as an SVG <title> (a tooltip, and what a
    screen reader reads)."""
    for short, full in labels.items():
        svg = svg.replace(
            f">{escape(short)}</text>", f">{escape(short)}<title>{escape(full)}</title></text>", 1
        )
    return svg


def clean_svg(svg: str, title: str) -> str:
    """pygal's SVG, made safe to inline under our Content-Security-Policy (nonce added later)."""
    svg = _DECLARATION.sub("", svg)
    svg = _COMMENT.sub("", svg)
    svg = _SCRIPT.sub("", svg)  # pygal writes its config as an inline script even with js=[]
    svg = _TOOLTIP.sub("", svg)
    svg = _STYLE_ATTRIBUTE.sub("", svg)
    svg = svg.replace(
        "<svg ", f'<svg role="img" aria-label="{escape(title)}" preserveAspectRatio="xMidYMid meet" ', 1
    )
    outside = [url for url in _URL.findall(svg) if url not in NAMESPACES]
    if outside:  # a pygal upgrade must not quietly start linking the internet
        raise ValueError(f"chart SVG names outside URLs: {outside}")
    return svg


def with_nonce(svg: str, nonce: str | None) -> Markup:
    if nonce:
        svg = svg.replace("<style", f'<style nonce="{escape(nonce)}"', 1)
    return Markup(svg)  # noqa: S704  # pygal escapes the labels and values it writes


Series = tuple[tuple[str, tuple[float, ...]], ...]


def _number(digits: int, unit: str, comma: bool) -> Callable[[float], str]:
    def write(value: float) -> str:
        text = f"{value:.{digits}f}"
        return (text.replace(".", ",") if comma else text) + unit

    return write


# Rendering is the slow part of a dashboard page (pygal builds the SVG through its config
# objects: tens of milliseconds a chart); the figures change only when the aggregates are
# recomputed, so the same chart is drawn once and served from here until then. Keys are the
# chart's whole input (labels in the reader's language included); the nonce is added per response.
@lru_cache(maxsize=256)
def _svg(kind: str, title: str, labels: tuple[str, ...], series: Series, comma: bool) -> str:
    shortened: dict[str, str] = {}
    if kind in ("machine_bars", "count_bars"):
        shown = [short_label(name) for name in labels] if kind == "machine_bars" else list(labels)
        if len(set(shown)) < len(shown):  # shortening made two names alike: keep them whole
            shown = list(labels)
        shortened = {short: full for short, full in zip(shown, labels, strict=True) if short != full}
        # pygal draws the first label at the bottom: reversed, the chart reads like the table.
        chart = pygal.HorizontalBar(
            **_config(
                height=max(220, 70 + 46 * len(labels)),
                value_formatter=_number(1, " h", comma) if kind == "machine_bars" else _number(0, "", comma),
                # Few value labels, and room at the right for the last: the names leave the
                # plot narrow, and "12.0 h" labels would run into each other.
                max_scale=4,
                margin_right=30,
                # One entry a row: the machine names take the left, and the columns of the
                # plot's width would cut a longer entry ("Used of booked") at the right edge.
                **_legend(len(series), columns=1),
            )
        )
        chart.x_labels = list(reversed(shown))
        for label, values in series:
            chart.add(label, list(reversed(values)))
    elif kind == "trend":
        chart = pygal.Line(
            **_config(
                x_label_rotation=-45,
                show_minor_x_labels=False,
                show_dots=len(labels) <= 16,
                dots_size=3,
                stroke_style={"width": 2.5},
                max_scale=6,
                value_formatter=_number(1, " h", comma),
                **_legend(len(series)),
            )
        )
        chart.x_labels = list(labels)
        chart.x_labels_major = list(labels)[:: max(1, len(labels) // 6)]
        for label, values in series:
            chart.add(label, list(values))
    elif kind == "funnel":
        ticks = count_ticks(max((v for _label, values in series for v in values), default=0))
        chart = pygal.HorizontalBar(
            **_config(
                height=max(200, 80 + 50 * len(labels)),
                show_legend=False,
                print_values=True,
                value_formatter=_number(0, "", comma),
                y_labels=ticks,
                range=(0, ticks[-1]),
            )
        )
        chart.x_labels = list(reversed(labels))
        for label, values in series:
            chart.add(label, list(reversed(values)))
    elif kind == "stacked":
        totals = [sum(values[i] for _label, values in series) for i in range(len(labels))]
        ticks = count_ticks(max(totals, default=0))
        chart = pygal.StackedBar(
            **_config(
                x_label_rotation=-45 if len(labels) > 6 else 0,
                value_formatter=_number(0, "", comma),
                y_labels=ticks,
                range=(0, ticks[-1]),
                **_legend(len(series)),
            )
        )
        chart.x_labels = list(labels)
        for label, values in series:
            chart.add(label, list(values))
    else:  # pragma: no cover - the functions below name every kind
        raise ValueError(kind)
    return _titled(clean_svg(chart.render(is_unicode=True), title), shortened)


def _series(series: Sequence[tuple[str, Sequence[float]]], digits: int = 2) -> Series:
    return tuple((label, tuple(round(float(v), digits) for v in values)) for label, values in series)


def machine_bars(
    title: str,
    names: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    nonce: str | None,
    comma: bool = False,
) -> Markup:
    """Horizontal bars, one group per machine (e.g. unlocked vs run hours): names stay readable.

    ``comma`` writes the axis numbers with a decimal comma (German).
    """
    return with_nonce(_svg("machine_bars", title, tuple(names), _series(series), comma), nonce)


def count_bars(
    title: str, names: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], nonce: str | None
) -> Markup:
    """Horizontal bars of counts, one group per name (e.g. integrations and target per programme)."""
    return with_nonce(_svg("count_bars", title, tuple(names), _series(series, 0), False), nonce)


def trend_line(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    nonce: str | None,
    comma: bool = False,
) -> Markup:
    """Hours per ISO week; with many weeks only every few labels are written, and no dots."""
    return with_nonce(_svg("trend", title, tuple(labels), _series(series), comma), nonce)


def funnel_bars(title: str, labels: Sequence[str], values: Sequence[int], nonce: str | None) -> Markup:
    """The funnel briefed → supervised → independent as bars of people, widest first."""
    return with_nonce(_svg("funnel", title, tuple(labels), _series([(title, values)], 0), False), nonce)


def stacked_months(
    title: str, labels: Sequence[str], series: Sequence[tuple[str, Sequence[int]]], nonce: str | None
) -> Markup:
    """Qualifications granted per month, stacked by level (levels nobody got are left out)."""
    shown = [(label, values) for label, values in series if any(values)] or list(series[:1])
    return with_nonce(_svg("stacked", title, tuple(labels), _series(shown, 0), False), nonce)


def heat_level(value: float, maximum: float, steps: int = 5) -> int:
    """The colour step (0..steps) of one heatmap cell: 0 only for no use at all."""
    if value <= 0 or maximum <= 0:
        return 0
    return max(1, min(steps, int(-(-value * steps // maximum))))
