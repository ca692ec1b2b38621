"""The web pages: login (``auth``), the overview, "my training" and "machines now" pages
(``overview``, blueprint ``web``), the health and metrics endpoints (``health``), the
trainer pages (``training``, under /training), "mark read" for notifications
(``notifications``), the admin pages (``admin``, under /admin) and the booking pages with
the calendar feeds (``bookings`` and ``calendar_feeds``, under /bookings), the utilisation
and learning dashboards (``dashboards``, under /dashboards), the funder report (``reports``,
under /reports) and the
attendance sheets (``attendance``, under /attendance), certificates (``certificates``, under
/certificates) their public verification page (``verify``, under /v), safety briefings on record
(``briefings``, under /briefings), exits with programme targets (``outcomes``, under /outcomes)
and the data a programme asks of its participants with their consent (``programme``, under /programme).

``init_app`` registers the blueprints and binds Flask-Login to our user adapter.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from server.adapters.web import (
    admin,
    attendance,
    auth,
    bookings,
    briefings,
    calendar_feeds,  # noqa: F401  # importing it adds the .ics routes to bookings.bp
    certificates,
    dashboards,
    health,
    notifications,
    outcomes,
    overview,
    programme,
    reports,
    training,
)
from server.adapters.web.auth import current
from server.adapters.web.common import register_error_pages, security_headers
from server.adapters.web.l10n import current_language, local_name, number

__all__ = ["init_app"]


def init_app(app: Flask) -> None:
    app.after_request(security_headers)
    register_error_pages(app)
    auth.init_app(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(overview.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(training.bp, url_prefix="/training")
    app.register_blueprint(notifications.bp)
    # Pages include _notifications.html with notifications=notifications_for(user.id, language).
    app.add_template_global(notifications.notifications_for)
    app.register_blueprint(admin.bp, url_prefix="/admin")
    app.register_blueprint(bookings.bp, url_prefix="/bookings")
    app.register_blueprint(dashboards.bp, url_prefix="/dashboards")
    app.register_blueprint(reports.bp, url_prefix="/reports")
    app.register_blueprint(attendance.bp, url_prefix="/attendance")
    certificates.init_app(app)
    app.register_blueprint(briefings.bp, url_prefix="/briefings")
    app.register_blueprint(outcomes.bp, url_prefix="/outcomes")
    app.register_blueprint(programme.bp, url_prefix="/programme")
    app.context_processor(_template_globals)
    # {{ site | local_name }}: sites, machine types, competencies and steps in the reader's language.
    app.add_template_filter(local_name)
    # {{ hours | number }}: a decimal number the way the reader writes it (3,5 / 3.5).
    app.add_template_filter(number)


def _template_globals() -> dict[str, Any]:
    return {"language": current_language(), "user": current()}
