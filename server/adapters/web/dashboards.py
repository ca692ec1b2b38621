"""The utilisation and learning dashboards for trainers and admins (under /dashboards).

Thin views over :mod:`server.services.dashboards`: they read the filters from the query
string (a bad one is a message on the page with HTTP 400, an unknown site a 404, never a
500), pick the period in the site's local days, and hand the figures to the templates with
charts from :mod:`server.adapters.web.charts`. Each chart's numbers are in a table beside it.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar
from zoneinfo import ZoneInfo

from babel.dates import format_skeleton, get_day_names
from flask import Response, abort, g, make_response, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from server.adapters.web import charts
from server.adapters.web.auth import User, current, staff_required
from server.adapters.web.common import CONTENT_SECURITY_POLICY, web_blueprint
from server.adapters.web.l10n import _, ago_label, clock_label, current_language, date_label
from server.adapters.web.overview import STATE_LABELS
from server.extensions import get_db
from server.i18n import N_
from server.models import Competency, Level, MachineType, Site, in_language
from server.services import dashboards as service
from server.services.training import LEVEL_LABELS

bp = web_blueprint("dashboards", __name__)

DEFAULT_DAYS = 30
MAX_DAYS = 366 * 6  # five years and a bit: longer periods are more weeks than a chart can show
MAX_TEXT = 100


def _now() -> datetime:
    return datetime.now(UTC)


# -- Content-Security-Policy with a nonce for the charts' <style> -----------------------------------


@bp.before_request
def _nonce() -> None:
    g.csp_nonce = secrets.token_urlsafe(16)


@bp.after_request
def _policy(response: Response) -> Response:
    # Runs before the blueprint's shared security headers (after_request runs in reverse),
    # which only set a policy when none is there: ours adds just the nonce for inline SVG styles.
    nonce = g.get("csp_nonce")
    if nonce:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.replace(
            "style-src 'self'", f"style-src 'self' 'nonce-{nonce}'"
        )
    return response


def _csp_nonce() -> str | None:
    nonce: str | None = g.get("csp_nonce")
    return nonce


# -- filters ----------------------------------------------------------------------------------------


class FilterError(ValueError):
    """A query-string value the page cannot use; the message is shown (translated) above the form."""


@dataclass
class Period:
    start: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def _text(name: str) -> str | None:
    raw = request.args.get(name, "").strip()
    if len(raw) > MAX_TEXT:
        raise FilterError(_("The value for “%(name)s” is too long.", name=name))
    return raw or None


def _day(name: str) -> date | None:
    raw = _text(name)
    if raw is None:
        return None
    try:
        day = date.fromisoformat(raw)
    except ValueError:
        raise FilterError(_("“%(value)s” is not a date (YYYY-MM-DD).", value=raw)) from None
    if not 2000 <= day.year <= 2999:
        raise FilterError(_("“%(value)s” is not a date (YYYY-MM-DD).", value=raw))
    return day


def _period(today: date) -> Period:
    start, end = _day("from"), _day("to")
    if start is None and end is None:
        return Period(today - timedelta(days=DEFAULT_DAYS - 1), today)
    if start is None:
        assert end is not None
        start = end - timedelta(days=DEFAULT_DAYS - 1)
    if end is None:
        end = max(start, today)
    if end < start:
        raise FilterError(_("The period ends before it begins."))
    period = Period(start, end)
    if period.days > MAX_DAYS:
        raise FilterError(_("Please choose a period of at most six years."))
    return period


def quick_periods(today: date) -> list[tuple[str, Period]]:
    """This month, last month, last quarter, this year (local days of the site)."""
    month = today.replace(day=1)
    last_month_end = month - timedelta(days=1)
    quarter_start = date(today.year, 3 * ((today.month - 1) // 3) + 1, 1)
    last_quarter_end = quarter_start - timedelta(days=1)
    last_quarter_start = date(last_quarter_end.year, last_quarter_end.month - 2, 1)
    return [
        (_("Last 30 days"), Period(today - timedelta(days=DEFAULT_DAYS - 1), today)),
        (_("This month"), Period(month, today)),
        (_("Last month"), Period(last_month_end.replace(day=1), last_month_end)),
        (_("Last quarter"), Period(last_quarter_start, last_quarter_end)),
        (_("This year"), Period(date(today.year, 1, 1), today)),
    ]


def quick_links(
    endpoint: str, args: dict[str, Any], today: date, period: Period | None
) -> list[tuple[str, str, bool]]:
    """(label, URL keeping the other filters, whether it is the period shown)."""
    return [
        (
            label,
            _url_with(endpoint, args, **{"from": p.start.isoformat(), "to": p.end.isoformat()}),
            p == period,
        )
        for label, p in quick_periods(today)
    ]


# The query-string value for "people without a group" (stored as "" in the aggregates).
NO_GROUP = "-"


def _cohort(cohorts: list[str]) -> str | None:
    """The chosen group: None for all, ``""`` for people without one, else its name."""
    cohort = _text("cohort")
    if cohort == NO_GROUP:
        return service.NO_COHORT
    if cohort is not None and cohort not in cohorts:
        raise FilterError(_("There is no group “%(value)s” at this site.", value=cohort))
    return cohort


def _site(user: User) -> Site:
    db = get_db()
    slug = request.args.get("site", "").strip()
    if not slug:
        site = db.get(Site, user.site_id)
    elif len(slug) > MAX_TEXT:
        site = None
    else:
        site = db.scalar(select(Site).where(Site.slug == slug))
    if site is None:
        abort(404)
    return site


def _today(site: Site) -> date:
    return _now().astimezone(ZoneInfo(site.timezone)).date()


def _hours(value: float) -> str:
    return _number(value, 1)


def _kwh(value: float) -> str:
    return _number(value, 1)


def _de_number(value: float, digits: int) -> str:
    text = f"{value:,.{digits}f}"
    return text.replace(",", "\u202f").replace(".", ",")


# Beyond this a figure is a broken record, not a measurement (ingestion bounds what devices
# report since issue 11; older rows may hold anything): shown as a dash, not 300 digits.
_IMPLAUSIBLE = 1e12


def _german() -> bool:
    """Whether the reader writes "1,5" rather than "1.5": looked up once per request, as the
    utilisation dashboard writes about 600 figures and Flask-Babel finds the locale anew on each
    call (with the machine table's labels translated once, the page's rendering went from about
    19 to 8 ms on the bench data, load 2 to 5)."""
    german: bool | None = g.get("german_numbers")
    if german is None:
        german = g.german_numbers = current_language() == "de"
    return german


def _number(value: float, digits: int = 0) -> str:
    if not math.isfinite(value) or abs(value) >= _IMPLAUSIBLE:
        return "\u2013"
    if _german():
        return _de_number(value, digits)
    return f"{value:,.{digits}f}".replace(",", "\u202f")


def _percent(share: float | None) -> str:
    if share is None:
        return "\u2013"
    return f"{_number(100 * share, 0)}\u202f%"


def _period_label(period: Period) -> str:
    return f"{date_label(period.start)} \u2013 {date_label(period.end)}"


def _url_with(endpoint: str, args: dict[str, Any], **changes: Any) -> str:
    merged = {k: v for k, v in {**args, **changes}.items() if v not in (None, "")}
    return url_for(endpoint, **merged)


def _common(user: User) -> tuple[Site, date, list[Site]]:
    site = _site(user)
    sites = list(get_db().scalars(select(Site).order_by(Site.name)))
    return site, _today(site), sites


def _weekday_names() -> list[str]:
    names = get_day_names("abbreviated", locale=current_language())
    return [str(names[i]) for i in range(7)]


def _filter_args(site: Site, period: Period | None, **more: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {"site": site.slug, **more}
    if period is not None:
        args["from"], args["to"] = period.start.isoformat(), period.end.isoformat()
    return args


class _Named(Protocol):
    """What a dashboard can be narrowed to (a machine type, a competency)."""

    slug: str

    def display_name(self, language: str) -> str: ...


N = TypeVar("N", bound=_Named)


@dataclass(frozen=True)
class _Filters(Generic[N]):
    """A dashboard's filters read from the query string, and the page's context so far (the
    filters, the period and its quick links)."""

    site: Site
    today: date
    chosen: N | None
    cohort: str | None
    period: Period
    context: dict[str, Any]
    template: str  # the page: dashboards/<the endpoint's name>.html


def _filters(endpoint: str, narrowed: tuple[str, str, list[N]], unknown: Callable[[str], str]) -> _Filters[N]:
    """The filters of the dashboard at ``endpoint``: the site, a period, a group and one of
    ``narrowed`` (its query parameter, its list's name in the template, the choices; ``unknown``
    says that a slug names none of them). A bad filter ends the request here: the page again
    with the message and HTTP 400."""
    template = f"dashboards/{endpoint.rsplit('.', 1)[-1]}.html"
    user = current()
    assert user is not None
    param, listed_as, choices = narrowed
    site, today, sites = _common(user)
    cohorts = service.cohorts_of_site(get_db(), site.id)
    raw = {name: request.args.get(name, "")[:MAX_TEXT] for name in (param, "cohort", "from", "to")}
    context: dict[str, Any] = {
        "site": site,
        "sites": sites,
        listed_as: [(c.slug, c.display_name(current_language())) for c in choices],
        "cohorts": cohorts,
        "raw": raw,
        "error": None,
        "data": None,
    }
    try:
        slug = _text(param)
        chosen = next((c for c in choices if c.slug == slug), None)
        if slug is not None and chosen is None:
            raise FilterError(unknown(slug))
        cohort = _cohort(cohorts)
        period = _period(today)
    except FilterError as error:
        context["error"] = str(error)
        context["quick"] = quick_links(endpoint, _filter_args(site, None), today, None)
        abort(make_response(render_template(template, **context), 400))
    args = _filter_args(site, period, **{param: slug}, cohort=NO_GROUP if cohort == "" else cohort)
    context.update(
        period=period,
        period_label=_period_label(period),
        args=args,
        quick=quick_links(endpoint, args, today, period),
    )
    return _Filters(site, today, chosen, cohort, period, context, template)


# -- the utilisation dashboard ---------------------------------------------------------------------


@bp.get("/usage")
@staff_required
def usage() -> ResponseReturnValue:
    db = get_db()
    types = list(db.scalars(select(MachineType).order_by(MachineType.name)))
    f = _filters(
        "dashboards.usage",
        ("type", "types", types),
        lambda value: _("There is no machine type “%(value)s”.", value=value),
    )
    type_id = f.chosen.id if f.chosen else None
    data = service.utilisation(db, f.site.id, type_id, f.cohort, f.period.start, f.period.end)
    tiles = service.live_tiles(db, f.site.id, type_id)
    f.context.update(
        data=data,
        view=_present_usage(data),
        tiles=[_present_tile(t) for t in tiles],
        updated_label=clock_label(_now()),
        weekdays=_weekday_names(),
    )
    return render_template(f.template, **f.context)


def _present_usage(data: service.Utilisation) -> dict[str, Any]:
    nonce = _csp_nonce()
    names = [m.name for m in data.machines]
    charts_out: dict[str, Any] = {}
    if data.machines:
        charts_out["hours"] = charts.machine_bars(
            _("Unlocked and run hours per machine"),
            names,
            [
                (_("Unlocked"), [m.figures.unlocked_h for m in data.machines]),
                (_("Run"), [m.figures.run_h for m in data.machines]),
            ],
            nonce,
            comma=current_language() == "de",
        )
    if data.machines and data.totals.booked_h > 0:  # no bookings: an empty chart says nothing
        charts_out["booked"] = charts.machine_bars(
            _("Booked and used hours per machine"),
            names,
            [
                (_("Booked"), [m.figures.booked_h for m in data.machines]),
                (_("Used of booked"), [m.figures.booked_used_h for m in data.machines]),
            ],
            nonce,
            comma=current_language() == "de",
        )
    if data.weeks:
        charts_out["trend"] = charts.trend_line(
            _("Hours per week"),
            [w.label for w in data.weeks],
            [
                (_("Unlocked"), [w.unlocked_h for w in data.weeks]),
                (_("Run"), [w.run_h for w in data.weeks]),
            ],
            nonce,
            comma=current_language() == "de",
        )
    used_hours = [h for h in range(24) if any(data.heatmap[d][h] > 0 for d in range(7))]
    # Only the hours of the day with any use (at least 8 to 18): 24 rows are long on a phone.
    first = min([8, *used_hours])
    last = max([18, *used_hours])
    heat_max = data.heat_max
    heat = [
        [(value, charts.heat_level(value, heat_max), _number(value, 1)) for value in row]
        for row in data.heatmap
    ]
    return {
        "charts": charts_out,
        "heat": heat,
        "heat_hours": list(range(first, last + 1)),
        "rows": [_present_figures(m.figures) for m in data.machines],
        "totals": _present_figures(data.totals),
        # The energy columns only where some machine's plug measured something in the period: a
        # lab without metering plugs would read two columns of zeros (and 16 columns are too many
        # for a laptop in German).
        "energy": bool(data.totals.energy_kwh or data.totals.energy_gap_h),
        "weeks": [(w.label, _hours(w.unlocked_h), _hours(w.run_h)) for w in data.weeks],
        "types": [
            (
                in_language(t.name, t.name_de, current_language()),
                _hours(t.unlocked_h),
                _hours(t.run_h),
                t.machines,
            )
            for t in data.types
        ],
    }


def _present_figures(f: service.UsageFigures) -> dict[str, str]:
    return {
        "sessions": _number(f.sessions),
        "unlocked": _hours(f.unlocked_h),
        "run": _hours(f.run_h),
        "booked": _hours(f.booked_h),
        "booked_used": _hours(f.booked_used_h),
        "no_shows": _number(f.no_shows),
        "open": _hours(f.open_h),
        "utilisation": _percent(f.utilisation),
        "jobs": _number(f.jobs),
        "jobs_failed": _number(f.jobs_failed),
        "filament": _number(f.filament_g),
        "maintenance": _hours(f.maintenance_h),
        "offline": _hours(f.offline_h),
        "energy": _kwh(f.energy_kwh),
        "energy_gap": _hours(f.energy_gap_h),
    }


def _present_tile(t: service.LiveTile) -> dict[str, Any]:
    now = _now()
    if t.device_id is None:
        device = _("No device assigned")
    elif t.device_online:
        device = _("Device online")
    else:
        device = _("Device offline")
    seen = ""
    if t.device_id is not None:
        seen = (
            _("Last seen %(ago)s", ago=ago_label(t.device_last_seen, now))
            if t.device_last_seen
            else _("Never seen")
        )
    running = ""
    if t.running and t.progress is not None:
        running = _("Running, %(percent)d %% done", percent=round(t.progress))
    elif t.running:
        running = _("Running")
    return {
        "slug": t.slug,
        "name": t.name,
        "type": t.type_name.in_language(current_language()),
        "state": t.state.value,
        "state_label": _(STATE_LABELS[t.state]),
        "running": running,
        "device": device,
        "device_id": t.device_id,
        "online": t.device_online,
        "seen": seen,
        "version": t.agent_version,
    }


# -- the learning dashboard ------------------------------------------------------------------------


LEVEL_CHART: dict[Level, str] = {
    Level.BRIEFED: N_("Briefed"),
    Level.SUPERVISED: N_("Supervised"),
    Level.INDEPENDENT: N_("Independent"),
}


@bp.get("/learning")
@staff_required
def learning() -> ResponseReturnValue:
    db = get_db()
    competencies = list(db.scalars(select(Competency).order_by(Competency.name)))
    f = _filters(
        "dashboards.learning",
        ("competency", "competencies", competencies),
        lambda value: _("There is no competency “%(value)s”.", value=value),
    )
    competency_id = f.chosen.id if f.chosen else None
    period = f.period
    data = service.learning(db, f.site.id, f.cohort, competency_id, period.start, period.end, today=f.today)
    f.context.update(
        as_of_label=date_label(data.as_of),
        data=data,
        view=_present_learning(data),
    )
    return render_template(f.template, **f.context)


def _level_label(level: Level | None) -> str:
    return _(LEVEL_LABELS[level]) if level is not None else "\u2013"


def _person_level(person: service.PersonLevels, competency_id: int) -> tuple[str, str]:
    """(what the cell says, its state for the stylesheet)."""
    level = person.levels.get(competency_id)
    if level is not None:
        return _level_label(level), level.value
    if competency_id in person.expired:
        return _("Expired"), "expired"
    return "\u2013", "none"


def _month_label(month: date) -> str:
    return str(format_skeleton("yMMM", month, locale=current_language()))


def _present_learning(data: service.Learning) -> dict[str, Any]:
    nonce = _csp_nonce()
    names = {c.id: in_language(c.name, c.name_de, current_language()) for c in data.competencies}
    funnel_labels = [_(LEVEL_CHART[step.level]) for step in data.funnel]
    month_labels = [_month_label(m.month) for m in data.months]
    levels = [lv for lv in Level]
    out: dict[str, Any] = {
        "competency_names": names,
        "levels": [(lv.value, _level_label(lv)) for lv in levels],
        "funnel": [(_level_label(s.level), _number(s.people), _percent(s.share)) for s in data.funnel],
        "months": [
            (label, [_number(m.counts.get(lv, 0)) for lv in levels], _number(m.total))
            for label, m in zip(month_labels, data.months, strict=True)
        ],
        "cohorts": [(c.cohort or _("No group"), _number(c.participants)) for c in data.cohorts],
        "level_counts": [
            {
                "cohort": lc.cohort or _("No group"),
                "competency": names.get(lc.competency_id, "?"),
                "counts": [_number(lc.counts.get(lv, 0)) for lv in levels],
                "expired": _number(lc.expired),
                "none": _number(lc.none),
            }
            for lc in data.level_counts
        ],
        "people": [
            {"id": p.person_id, "name": p.name, "levels": [_person_level(p, c.id) for c in data.competencies]}
            for p in data.people
        ],
        "expiring": [
            {
                "name": e.name,
                "cohort": e.cohort or _("No group"),
                "competency": names.get(e.competency_id, "?"),
                "level": _level_label(e.level),
                "until": date_label(e.valid_until),
            }
            for e in data.expiring
        ],
        "charts": {},
    }
    if data.participants or any(s.people for s in data.funnel):
        out["charts"]["funnel"] = charts.funnel_bars(
            _("Participants who reached each level"), funnel_labels, [s.people for s in data.funnel], nonce
        )
    if data.months:
        out["charts"]["months"] = charts.stacked_months(
            _("Qualifications granted per month"),
            month_labels,
            [(_level_label(lv), [m.counts.get(lv, 0) for m in data.months]) for lv in levels],
            nonce,
        )
    return out
