"""The funder report's pages, under /reports, admins only: the report with its filters, a
print view, and the exports (CSV of participants, of qualifications, of outcomes, of programme
data, the pseudonymised CSV of special categories, and XLSX).

The figures come from server.services.reports; this module reads the query string, renders
and writes files. Every print view and export is in the audit log. Layouts: docs/reports.md.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import flask
import flask_babel  # type: ignore[import-untyped,unused-ignore]
from babel.core import Locale
from babel.dates import DateTimePattern, get_date_format
from babel.numbers import format_decimal, get_decimal_symbol, get_group_symbol
from flask import Response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup, escape
from sqlalchemy import select

from server.adapters.web import charts, dashboards
from server.adapters.web.auth import admin_required, current
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import LABEL_MAX_HOURS, _, current_language
from server.extensions import get_db
from server.i18n import N_
from server.models import FieldKind, Level, Person, QualificationAction, Site
from server.services import audit, lab_keys, programme_data
from server.services.outcomes import REASON_LABELS
from server.services.programme_data import Problem
from server.services.reports import (
    MAX_MONTHS,
    FunderReport,
    GrantedQualification,
    ParticipantRow,
    ReportError,
    add_months,
    filter_choices,
    funder_report,
    months_between,
)
from server.services.training import LEVEL_LABELS

bp = web_blueprint("reports", __name__)
# The outcomes chart is inline SVG with a <style>: the dashboards' nonce policy, one owner.
bp.before_request(dashboards._nonce)
bp.after_request(dashboards._policy)

MONTH = re.compile(r"(\d{4})-(\d{2})")
HOUR = 3600.0
CSV_DELIMITER = ";"  # what Excel expects in German locales; see docs/reports.md


# -- the query string ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportQuery:
    """The report's filters as read from the query string (all checked)."""

    site: Site | None  # None: every site
    cohort: str | None
    programme: str | None
    start: date
    end: date
    pseudonyms: bool

    def args(self, **changes: Any) -> dict[str, str]:
        """The query string that gives this report (for links to the exports and print view)."""
        values = {
            "site": self.site.slug if self.site else "",
            "cohort": self.cohort or "",
            "programme": self.programme or "",
            "from": self.start.strftime("%Y-%m"),
            "to": self.end.strftime("%Y-%m"),
        }
        if self.pseudonyms:
            values["pseudonyms"] = "1"
        values.update(changes)
        return values

    def audit_detail(self, kind: str) -> dict[str, Any]:
        return {
            "format": kind,
            "site": self.site.slug if self.site else "",
            "cohort": self.cohort or "",
            "programme": self.programme or "",
            "from": self.start.strftime("%Y-%m"),
            "to": self.end.strftime("%Y-%m"),
            "pseudonyms": self.pseudonyms,
        }

    def slug(self) -> str:
        """For file names: site and period, ``nord_2026-01_2026-03``."""
        where = self.site.slug if self.site else "all-sites"
        return f"{where}_{self.start:%Y-%m}_{self.end:%Y-%m}"


def _now() -> datetime:
    """The clock of the page's defaults (this month, the quick links, the date made)."""
    return datetime.now(UTC)


def _choices() -> tuple[list[str], list[str]]:
    """The cohorts and programmes for the form and the checks, read once per request."""
    choices: tuple[list[str], list[str]] | None = flask.g.get("report_choices")
    if choices is None:
        choices = filter_choices(get_db())
        flask.g.report_choices = choices
    return choices


def _month(text: str) -> date | None:
    match = MONTH.fullmatch(text)
    if not match:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    if not (2000 <= year <= 2100 and 1 <= month <= 12):
        return None
    return date(year, month, 1)


def _this_month(site: Site | None, now: datetime) -> date:
    tz = ZoneInfo(site.timezone) if site else UTC
    return now.astimezone(tz).date().replace(day=1)


def read_query(args: Any, now: datetime) -> tuple[ReportQuery | None, list[str]]:
    """The filters from ``args``, or the messages saying what is wrong with them."""
    db = get_db()
    errors: list[str] = []
    user = current()
    assert user is not None  # admin_required

    site: Site | None = None
    if "site" not in args:
        site = db.get(Site, user.site_id)  # first visit: the admin's own site
    elif args["site"]:
        # Looked up among the (few) sites, never sent to the database as typed: PostgreSQL
        # refuses some strings (a NUL byte) with an error instead of "no such site".
        site = {s.slug: s for s in db.scalars(select(Site))}.get(args["site"])
        if site is None:
            errors.append(_("There is no site called “%(slug)s”.", slug=args["site"][:40]))

    cohorts, programmes = _choices()
    cohort = args.get("cohort", "").strip() or None
    if cohort is not None and cohort not in cohorts:
        errors.append(_("There is no cohort called “%(name)s”.", name=cohort[:100]))
    programme = args.get("programme", "").strip() or None
    if programme is not None and programme not in programmes:
        errors.append(_("There is no programme called “%(name)s”.", name=programme[:100]))

    this_month = _this_month(site, now)
    end = _month(args.get("to", "")) if args.get("to") else this_month
    start = _month(args.get("from", "")) if args.get("from") else (end or this_month).replace(month=1)
    if start is None:
        errors.append(_("Give the first month as year and month, e.g. 2026-01."))
    if end is None:
        errors.append(_("Give the last month as year and month, e.g. 2026-03."))
    if start is not None and end is not None:
        if start > end:
            errors.append(_("The first month comes after the last month."))
        elif months_between(start, end) > MAX_MONTHS:
            errors.append(_("A report covers at most %(months)d months (five years).", months=MAX_MONTHS))

    pseudonyms_arg = args.get("pseudonyms", "")
    if pseudonyms_arg not in ("", "0", "1", "on"):
        errors.append(_("Pseudonyms are either on (1) or off (0)."))

    if errors or start is None or end is None:
        return None, errors
    return ReportQuery(site, cohort, programme, start, end, pseudonyms_arg in ("1", "on")), []


def _report(query: ReportQuery, now: datetime) -> FunderReport:
    db = get_db()
    if not lab_keys.has_pseudonym_key(db):
        # Made and kept before the first report is shown: its pseudonyms are the same in every
        # export after. (Made only when asked for pseudonyms, the key was made again on every
        # other showing, in a savepoint, and thrown away with the request's transaction.)
        lab_keys.pseudonym_key(db)
        db.commit()
    return funder_report(
        db,
        query.site.id if query.site else None,
        query.cohort,
        query.programme,
        query.start,
        query.end,
        query.pseudonyms,
        current_language(),
        now=now,
    )


def _audit(query: ReportQuery, kind: str) -> None:
    db = get_db()
    user = current()
    assert user is not None
    actor = db.get(Person, user.id)
    audit.record(db, actor, "report.export", "report:funder", query.audit_detail(kind))
    db.commit()


# -- labels and numbers --------------------------------------------------------------------------


def hours(seconds: float) -> float:
    """Hours with one decimal, the unit of every figure in the report."""
    return round(seconds / HOUR, 1)


@dataclass(frozen=True)
class Words:
    """The report's repeated words and number symbols, translated once per request: a year's
    report has thousands of cells, and each gettext or Babel call costs."""

    levels: dict[Level, str]
    granted: str
    renewed: str
    yes: str
    no: str
    none: str
    flags: tuple[str, str, str]  # new, active, finished
    decimal: str
    group: str
    # Day labels ("08.01.2025", "Jan 8, 2025"): Babel's medium date pattern of the locale,
    # applied directly (Flask-Babel's format_date finds the locale and the pattern again for
    # each of a year's ~170 dates), and each day's label kept once made.
    locale: Locale
    date_pattern: DateTimePattern
    days: dict[date, str]

    @classmethod
    def current(cls) -> Words:
        words: Words | None = flask.g.get("report_words")
        if words is None:
            locale = flask_babel.get_locale()
            words = cls(
                levels={level: _(label) for level, label in LEVEL_LABELS.items()},
                granted=_("Granted"),
                renewed=_("Renewed"),
                yes=_("yes"),
                no=_("no"),
                none=_("(none)"),
                flags=(_("new"), _("active"), _("finished")),
                decimal=get_decimal_symbol(locale),
                group=get_group_symbol(locale),
                locale=locale,
                date_pattern=get_date_format("medium", locale=locale),
                days={},
            )
            flask.g.report_words = words
        return words


def hours_label(seconds: float, w: Words | None = None) -> str:
    """``1,234.5`` (``1.234,5`` in German). ``w``: the request's :class:`Words`, when the caller
    has them at hand (finding them again costs more than the label, thousands of times a page)."""
    if not math.isfinite(seconds) or seconds > LABEL_MAX_HOURS * HOUR:
        return "\u2013"  # a broken record stored before issue 11, not a measurement
    w = w or Words.current()
    text = f"{hours(seconds):,.1f}"
    return text.replace(",", "\0").replace(".", w.decimal).replace("\0", w.group)


def kwh(wh: float) -> float:
    """Kilowatt hours with one decimal, the unit of every energy figure in the report."""
    return round(wh / 1000, 1)


def kwh_label(wh: float, w: Words | None = None) -> str:
    """``1,234.5`` (``1.234,5`` in German)."""
    if not math.isfinite(wh):
        return "\u2013"
    w = w or Words.current()
    text = f"{kwh(wh):,.1f}"
    return text.replace(",", "\0").replace(".", w.decimal).replace("\0", w.group)


def month_label(month: date) -> str:
    return str(flask_babel.format_date(month, "MMMM yyyy"))


def day_label(day: date, w: Words | None = None) -> str:
    """``08.01.2025`` / ``Jan 8, 2025``, as Flask-Babel's ``format_date(day, "medium")`` writes it."""
    w = w or Words.current()
    label = w.days.get(day)
    if label is None:
        label = w.days[day] = w.date_pattern.apply(day, w.locale)
    return label


def level_label(q: GrantedQualification, w: Words | None = None) -> str:
    return (w or Words.current()).levels[q.level]


def action_label(action: QualificationAction, w: Words | None = None) -> str:
    w = w or Words.current()
    return w.renewed if action == QualificationAction.RENEWED else w.granted


def group_label(value: str, w: Words | None = None) -> str:
    return value or (w or Words.current()).none


def yes_no(value: bool, w: Words | None = None) -> str:
    w = w or Words.current()
    return w.yes if value else w.no


def status_label(row: ParticipantRow, w: Words | None = None) -> str:
    flags = (w or Words.current()).flags
    return ", ".join(
        f for f, on in zip(flags, (row.is_new, row.is_active, row.is_finished), strict=True) if on
    )


def _quarters(query: ReportQuery | None, now: datetime) -> list[tuple[str, dict[str, str]]]:
    """Quick links: this year's quarters so far and last year's, plus both whole years."""
    this_month = _this_month(query.site if query else None, now)
    links: list[tuple[str, dict[str, str]]] = []
    for year in (this_month.year - 1, this_month.year):
        for q in range(4):
            first = date(year, 3 * q + 1, 1)
            if first > this_month:
                break
            last = add_months(first, 2)
            label = _("Q%(quarter)d %(year)d", quarter=q + 1, year=year)
            links.append((label, _period_args(query, first, last)))
        links.append((str(year), _period_args(query, date(year, 1, 1), date(year, 12, 1))))
    return links


def _period_args(query: ReportQuery | None, first: date, last: date) -> dict[str, str]:
    base = query.args() if query else dict(request.args)
    base.update({"from": first.strftime("%Y-%m"), "to": last.strftime("%Y-%m")})
    return base


# -- the page and the print view -----------------------------------------------------------------


@bp.get("/")
@admin_required
def index() -> ResponseReturnValue:
    return redirect(url_for("reports.funder"))


@bp.get("/funder")
@admin_required
def funder() -> ResponseReturnValue:
    """The report with its filters; bad filters give the form with a message (HTTP 400)."""
    db = get_db()
    now = _now()
    query, errors = read_query(request.args, now)
    report = None
    if query is not None:
        try:
            report = _report(query, now)
        except ReportError as error:  # a site removed between reading and reporting
            errors = [str(error)]
    cohorts, programmes = _choices()
    context = {
        "query": query,
        "errors": errors,
        "report": report,
        "sites": list(db.scalars(select(Site).order_by(Site.name))),
        "cohorts": cohorts,
        "programmes": programmes,
        "form": query.args() if query else request.args.to_dict(),
        "quarters": _quarters(query, now),
        **_helpers(),
    }
    return render_template("reports/funder.html", **context), 400 if errors else 200


@bp.get("/funder/print")
@admin_required
def funder_print() -> ResponseReturnValue:
    """The report alone, for paper: no navigation, no form (audited: it leaves the lab)."""
    now = _now()
    query, errors = read_query(request.args, now)
    if query is None:
        return _refused(errors)
    report = _report(query, now)
    _audit(query, "print")
    return render_template("reports/funder_print.html", query=query, report=report, **_helpers())


def _helpers() -> dict[str, Callable[..., Any]]:
    w = Words.current()  # once for the page's thousands of labels
    return {
        "hours_label": partial(hours_label, w=w),
        "kwh_label": partial(kwh_label, w=w),
        "month_label": month_label,
        "day_label": partial(day_label, w=w),
        "level_label": partial(level_label, w=w),
        "action_label": partial(action_label, w=w),
        "group_label": partial(group_label, w=w),
        "yes_no": partial(yes_no, w=w),
        "status_label": partial(status_label, w=w),
        "participant_rows": participant_rows,
        "qualification_rows": qualification_rows,
        "outcome_table": outcome_table,
        "outcome_chart": outcome_chart,
        "made_label": lambda when: flask_babel.format_datetime(when, "medium"),
    }


# -- the two long tables' rows -----------------------------------------------------------------
# A year's report for one site has about 4,200 cells in these two tables (116 participants with
# 13 cells, 450 qualifications with 6). Rendered cell by cell through Jinja loops (an escape and
# a `data-label` attribute each) they cost about 25 to 30 ms a request on the bench data (load
# 2 to 5); built here in one pass, each column's opening tag made once, about 7 ms. The HTML is
# the same, byte for byte: the tags and line breaks below are the ones the template wrote.

ROW_START = "\n      <tr>"
ROW_END = "\n      </tr>"
NUM = ' class="num"'


def _cell_tags(columns: Sequence[tuple[str, bool]]) -> list[str]:
    """Each column's opening tag, from (label for the phone's card, is a number)."""
    return [f'\n        <td data-label="{escape(label)}"{NUM if num else ""}>' for label, num in columns]


def _rows(tags: Sequence[str], rows: Iterable[Sequence[str]]) -> Markup:
    """Table rows of already escaped texts (plain strings, so ``+`` never escapes them again)."""
    out: list[str] = []
    for texts in rows:
        out.append(ROW_START)
        for tag, text in zip(tags, texts, strict=True):
            out += (tag, text, "</td>")
        out.append(ROW_END)
    return Markup("".join(out))  # noqa: S704  # every text escaped by the callers (_text)


def _text(value: str) -> str:
    """A name or other text from the records, escaped for HTML (as a plain string)."""
    return str(escape(value))


def participant_rows(report: FunderReport) -> Markup:
    """The participants table's body: name, group, status, hours, hours per machine type and
    the qualifications granted (texts escaped; the numbers are digits and separators)."""
    w = Words.current()
    tags = _cell_tags(
        [
            (_("Participant"), False),
            (_("Cohort"), False),
            (_("Programme"), False),
            (_("Status"), False),
            (_("Sessions"), True),
            (_("Machine hours"), True),
            (_("Run hours"), True),
            (_("Supervised hours"), True),
            *[(name, True) for _id, name in report.machine_types],
            (_("Qualifications"), False),
        ]
    )
    type_ids = [type_id for type_id, _name in report.machine_types]
    rows: list[list[str]] = []
    for r in report.participants:
        by_type = r.hours_by_type
        rows.append(
            [
                _text(r.label),
                _text(r.cohort),
                _text(r.programme),
                _text(status_label(r, w)),
                str(r.usage.sessions),
                hours_label(r.usage.unlocked_s, w),
                hours_label(r.usage.run_s, w),
                hours_label(r.usage.supervised_s, w),
                *[hours_label(by_type.get(type_id, 0.0), w) for type_id in type_ids],
                _text(", ".join(f"{q.competency} ({level_label(q, w)})" for q in r.qualifications)),
            ]
        )
    return _rows(tags, rows)


def qualification_rows(report: FunderReport) -> Markup:
    """The qualifications table's body: date, participant, competency, level, action, trainer."""
    w = Words.current()
    tags = _cell_tags(
        [
            (_("Date"), False),
            (_("Participant"), False),
            (_("Competency"), False),
            (_("Level"), False),
            (_("Action"), False),
            (_("Trainer"), False),
        ]
    )
    levels = {level: _text(label) for level, label in w.levels.items()}
    actions = {action: _text(action_label(action, w)) for action in QualificationAction}
    return _rows(
        tags,
        (
            [
                _text(day_label(q.day, w)),
                _text(q.person),
                _text(q.competency),
                levels[q.level],
                actions[q.action],
                _text(q.trainer or "\u2014"),
            ]
            for q in report.qualifications
        ),
    )


def _refused(errors: list[str]) -> ResponseReturnValue:
    message = " ".join(errors)
    return render_template("error.html", code=400, message=message), 400


# -- tables shared by CSV and XLSX ---------------------------------------------------------------

Cell = str | int | float | date | None


def participant_table(report: FunderReport) -> tuple[list[str], list[list[Cell]]]:
    header = [
        _("Participant"),
        _("Cohort"),
        _("Programme"),
        _("New"),
        _("Active"),
        _("Finished"),
        _("Sessions"),
        _("Machine hours"),
        _("Run hours"),
        _("Supervised hours"),
    ]
    header += [_("Hours: %(type)s", type=name) for _id, name in report.machine_types]
    header += [_("Qualifications granted"), _("Qualifications")]
    rows: list[list[Cell]] = []
    for r in report.participants:
        row: list[Cell] = [
            r.label,
            r.cohort,
            r.programme,
            yes_no(r.is_new),
            yes_no(r.is_active),
            yes_no(r.is_finished),
            r.usage.sessions,
            hours(r.usage.unlocked_s),
            hours(r.usage.run_s),
            hours(r.usage.supervised_s),
        ]
        row += [hours(r.hours_by_type.get(type_id, 0.0)) for type_id, _name in report.machine_types]
        row += [
            len(r.qualifications),
            ", ".join(f"{q.competency} ({level_label(q)}, {q.day.isoformat()})" for q in r.qualifications),
        ]
        rows.append(row)
    return header, rows


def qualification_table(report: FunderReport) -> tuple[list[str], list[list[Cell]]]:
    header = [
        _("Date"),
        _("Participant"),
        _("Cohort"),
        _("Programme"),
        _("Competency"),
        _("Level"),
        _("Action"),
        _("Valid until"),
        _("Trainer"),
    ]
    rows: list[list[Cell]] = [
        [
            q.day,
            q.person,
            q.cohort,
            q.programme,
            q.competency,
            level_label(q),
            action_label(q.action),
            q.valid_until,
            q.trainer,
        ]
        for q in report.qualifications
    ]
    return header, rows


def group_table(report: FunderReport) -> tuple[list[str], list[list[Cell]]]:
    header = [
        _("Cohort"),
        _("Programme"),
        _("Participants with machine use"),
        _("Machine hours"),
        _("Run hours"),
    ]
    header += [_("Hours: %(type)s", type=name) for _id, name in report.machine_types]
    rows: list[list[Cell]] = []
    for g in report.groups:
        row: list[Cell] = [
            group_label(g.cohort),
            group_label(g.programme),
            g.participants,
            hours(g.usage.unlocked_s),
            hours(g.usage.run_s),
        ]
        row += [hours(g.unlocked_by_type.get(type_id, 0.0)) for type_id, _name in report.machine_types]
        rows.append(row)
    total: list[Cell] = [
        _("Total"),
        "",
        sum(g.participants for g in report.groups),
        hours(report.totals.usage.unlocked_s),
        hours(report.totals.usage.run_s),
    ]
    total += [
        hours(report.totals.unlocked_by_type.get(type_id, 0.0)) for type_id, _name in report.machine_types
    ]
    rows.append(total)
    return header, rows


def machine_table(report: FunderReport) -> tuple[list[str], list[list[Cell]]]:
    """One row per machine with use or energy in the period, and the total."""
    header = [
        _("Machine"),
        _("Machine type"),
        _("Sessions"),
        _("Machine hours"),
        _("Energy kWh"),
        _("Unmetered h"),
    ]
    rows: list[list[Cell]] = [
        [m.name, m.type_name, m.sessions, hours(m.unlocked_s), kwh(m.energy_wh), hours(m.energy_gap_s)]
        for m in report.machines
    ]
    rows.append(
        [
            _("Total"),
            "",
            sum(m.sessions for m in report.machines),
            hours(sum(m.unlocked_s for m in report.machines)),
            kwh(report.energy_wh),
            hours(report.energy_gap_s),
        ]
    )
    return header, rows


def summary_table(query: ReportQuery, report: FunderReport) -> list[tuple[str, Cell]]:
    t = report.totals
    return [
        (_("Report"), _("Funder report")),
        (_("Site"), query.site.display_name(current_language()) if query.site else _("All sites")),
        (_("Cohort"), query.cohort or _("All cohorts")),
        (_("Programme"), query.programme or _("All programmes")),
        (_("First month"), query.start),
        (_("Last month"), query.end),
        (_("Months"), report.months),
        (_("Periods"), _("Whole months in the site's local time.")),
        (_("Pseudonyms"), yes_no(query.pseudonyms)),
        (_("Made on"), report.made_at.astimezone(_tz(query)).date()),
        (_("Participants"), t.participants),
        (_("New participants"), t.new),
        (_("Active participants"), t.active),
        (_("Finished participants"), t.finished),
        (_("Sessions"), t.usage.sessions),
        (_("Machine hours"), hours(t.usage.unlocked_s)),
        (_("Run hours"), hours(t.usage.run_s)),
        (_("Supervised hours"), hours(t.usage.supervised_s)),
        (_("Energy kWh"), kwh(report.energy_wh)),
        (_("Qualifications granted"), t.qualifications),
    ]


def _tz(query: ReportQuery) -> ZoneInfo:
    return ZoneInfo(query.site.timezone) if query.site else ZoneInfo("UTC")


# -- exports -------------------------------------------------------------------------------------


# A text cell starting with one of these is a formula to a spreadsheet: a participant called
# "=HYPERLINK(...)" must stay a name (OWASP's CSV injection advice: prefix an apostrophe).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Cell, language: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    if isinstance(value, float):
        # The reader's decimal sign (a German spreadsheet reads "3,5"), no grouping: "1234,5".
        return format_decimal(value, format="0.0", locale=language)
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _csv(header: list[str], rows: Sequence[Sequence[Cell]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, delimiter=CSV_DELIMITER, lineterminator="\r\n")
    language = current_language()
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_cell(v, language) for v in row])
    return "\ufeff" + out.getvalue()  # the BOM: Excel then reads UTF-8


def _download(body: str | bytes, mimetype: str, filename: str) -> Response:
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _checked(kind: str) -> tuple[ReportQuery, FunderReport] | list[str]:
    """The report an export asks for (audited), or what is wrong with its filters."""
    now = _now()
    query, errors = read_query(request.args, now)
    if query is None:
        return errors
    report = _report(query, now)
    _audit(query, kind)
    return query, report


def _table_csv(
    kind: str, table: Callable[[FunderReport], tuple[list[str], list[list[Cell]]]], name: str
) -> ResponseReturnValue:
    """One table of the report as a CSV download (checked and audited as ``kind``)."""
    made = _checked(kind)
    if isinstance(made, list):
        return _refused(made)
    query, report = made
    header, rows = table(report)
    return _download(_csv(header, rows), "text/csv", f"{name}_{query.slug()}.csv")


@bp.get("/funder.csv")
@admin_required
def funder_csv() -> ResponseReturnValue:
    """One row per participant (see docs/reports.md)."""
    return _table_csv("csv", participant_table, "funder-report")


@bp.get("/funder-machines.csv")
@admin_required
def funder_machines_csv() -> ResponseReturnValue:
    """One row per machine: sessions, machine hours and energy (docs/reports.md)."""
    return _table_csv("csv-machines", machine_table, "funder-machines")


@bp.get("/funder-qualifications.csv")
@admin_required
def funder_qualifications_csv() -> ResponseReturnValue:
    """One row per qualification granted in the period."""
    return _table_csv("csv-qualifications", qualification_table, "funder-qualifications")


@bp.get("/funder-outcomes.csv")
@admin_required
def funder_outcomes_csv() -> ResponseReturnValue:
    """One row per programme: exits by reason, integrations, target and progress."""
    return _table_csv("csv-outcomes", outcome_table, "funder-outcomes")


@bp.get("/funder-programme-data.csv")
@admin_required
def funder_programme_data_csv() -> ResponseReturnValue:
    """One row per participant with the ordinary programme fields (names as the report has them)."""
    return _table_csv(
        "csv-programme-data",
        lambda report: programme_data_table(report, special=False)[:2],
        "funder-programme-data",
    )


@bp.get("/funder-special-categories.csv")
@admin_required
def funder_special_csv() -> ResponseReturnValue:
    """The special categories (GDPR Art. 9), one row per participant: only under pseudonyms, and
    with nothing but the pseudonym, cohort and programme beside them. Audited twice: as an export
    of the report and as a view of special categories."""
    now = _now()
    query, errors = read_query(request.args, now)
    if query is None:
        return _refused(errors)
    if not query.pseudonyms:
        refused = programme_data.refuse(
            [
                Problem(
                    "pseudonyms",
                    N_("Special categories are exported only under pseudonyms: switch pseudonyms on."),
                )
            ],
            "special_export_named",
            "report:funder",
        )
        return _refused([_(p.message) for p in refused.problems])
    report = _report(query, now)
    header, rows, table = programme_data_table(report, special=True)
    db = get_db()
    user = current()
    assert user is not None
    actor = db.get(Person, user.id)
    audit.record(db, actor, "report.export", "report:funder", query.audit_detail("csv-special"))
    programme_data.audit_special_export(db, actor, table, len(rows), query.audit_detail("csv-special"))
    db.commit()
    return _download(_csv(header, rows), "text/csv", f"funder-special-categories_{query.slug()}.csv")


def programme_data_table(
    report: FunderReport, *, special: bool
) -> tuple[list[str], list[list[Cell]], programme_data.ExportTable]:
    """The programme data of the report's participants: one column per field of their programmes
    (named "programme: label" when there are several). Special categories carry the pseudonym only,
    whatever the report's names."""
    ids = [r.person_id for r in report.participants]
    table = programme_data.export_table(
        get_db(), ids, {r.programme for r in report.participants}, special=special
    )
    language = current_language()
    several = len({f.programme for f in table.fields}) > 1
    w = Words.current()
    header: list[str] = [_("Pseudonym") if special else _("Participant"), _("Cohort"), _("Programme")]
    header += [
        f"{f.programme}: {f.display_name(language)}" if several else f.display_name(language)
        for f in table.fields
    ]
    rows: list[list[Cell]] = []
    for r in report.participants:
        row: list[Cell] = [r.pseudonym if special else r.label, r.cohort, r.programme]
        for f in table.fields:
            value = table.values.get((r.person_id, f.id))
            if value is None:
                row.append(None)
            elif f.kind == FieldKind.YES_NO:
                row.append(w.yes if value == programme_data.YES else w.no)
            elif f.kind == FieldKind.DATE:
                row.append(date.fromisoformat(value))
            else:
                row.append(programme_data.option_label(f, value, language))
        rows.append(row)
    return header, rows, table


def outcome_table(report: FunderReport) -> tuple[list[str], list[list[Cell]]]:
    header = [
        _("Programme"),
        *[_(label) for label in REASON_LABELS.values()],
        _("Exits"),
        _("Integrations"),
        _("Target of the year"),
        _("Integrations in the year"),
        _("Target reached (%)"),
        _("Follow-ups recorded"),
        _("Follow-ups due"),
    ]
    rows: list[list[Cell]] = []
    for o in report.outcomes:
        rows.append(
            [
                o.programme or _("No programme"),
                *[o.by_reason.get(reason, 0) for reason in REASON_LABELS],
                o.exits,
                o.integrations,
                o.target if o.target is not None else "",
                o.year_integrations,
                round(100 * o.progress, 1) if o.progress is not None else "",
                sum(o.follow_ups.values()),
                o.follow_ups_due,
            ]
        )
    return header, rows


def outcome_chart(report: FunderReport) -> Markup | None:
    """Integrations against the target per programme (bars), when there is something to show."""
    shown = [o for o in report.outcomes if o.target or o.integrations]
    if not shown:
        return None
    names = [o.programme or _("No programme") for o in shown]
    return charts.count_bars(
        _("Integrations against the target"),
        names,
        [
            (_("Integrations in the year"), [float(o.year_integrations) for o in shown]),
            (_("Target of the year"), [float(o.target or 0) for o in shown]),
        ],
        dashboards._csp_nonce(),
    )


@bp.get("/funder.xlsx")
@admin_required
def funder_xlsx() -> ResponseReturnValue:
    made = _checked("xlsx")
    if isinstance(made, list):
        return _refused(made)
    query, report = made
    return _download(
        workbook(query, report),
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        f"funder-report_{query.slug()}.xlsx",
    )


def workbook(query: ReportQuery, report: FunderReport) -> bytes:
    """Sheets Summary, Participants, Qualifications, Hours by group, Machines, Outcomes, and Programme data
    when the report's programmes ask for any (names fixed, so scripts find them; headers in the
    reader's language). Special categories are never in the workbook: they leave only through
    their own pseudonymised CSV."""
    from openpyxl import Workbook
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    date_format = "DD.MM.YYYY" if current_language() == "de" else "YYYY-MM-DD"
    bold = Font(bold=True)
    book = Workbook()

    def sheet(title: str, header: list[str], rows: Sequence[Sequence[Cell]], first: bool = False) -> None:
        ws = book.active if first else book.create_sheet()
        assert ws is not None
        ws.title = title
        ws.append(header)
        for cell in ws[1]:
            cell.font = bold
        widths = [len(h) for h in header]
        for row in rows:
            ws.append(list(row))
            for i, value in enumerate(row):
                shown = value.strftime("%d.%m.%Y") if isinstance(value, date) else str(value or "")
                widths[i] = max(widths[i], len(shown))
        for col in ws.iter_cols(min_row=2):
            for cell in col:
                if isinstance(cell.value, str) and cell.value.startswith("="):
                    cell.data_type = "s"  # text, never a formula (see FORMULA_STARTS)
                elif isinstance(cell.value, float):
                    cell.number_format = "0.0"
                elif isinstance(cell.value, (date, datetime)):
                    cell.number_format = date_format
        ws.freeze_panes = "A2"
        for i, width in enumerate(widths, start=1):
            ws.column_dimensions[get_column_letter(i)].width = min(max(width + 2, 8), 60)

    summary = summary_table(query, report)
    sheet("Summary", [_("Figure"), _("Value")], [[k, v] for k, v in summary], first=True)
    sheet("Participants", *participant_table(report))
    sheet("Qualifications", *qualification_table(report))
    sheet("Hours by group", *group_table(report))
    sheet("Machines", *machine_table(report))
    sheet("Outcomes", *outcome_table(report))
    header, rows, table = programme_data_table(report, special=False)
    if table.fields:  # only when the report's programmes ask for something
        sheet("Programme data", header, rows)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
