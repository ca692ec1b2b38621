"""What every web blueprint shares: security headers and error pages."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, g, render_template, request
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from markupsafe import escape
from werkzeug.exceptions import HTTPException, InternalServerError

from server.adapters.web.l10n import _

log = logging.getLogger(__name__)

# Everything the pages load comes from this server: the lab may be offline, and a page
# that shows who uses which machine should not talk to third parties.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def web_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint whose responses are never cached and whose errors are pages."""
    bp = Blueprint(name, import_name)
    bp.after_request(_no_store)
    bp.register_error_handler(CSRFError, _csrf_error)
    bp.register_error_handler(403, _http_error)
    return bp


def _no_store(response: Response) -> Response:
    # Pages name people and their sessions: nothing for shared or back-button caches.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def security_headers(response: Response) -> Response:
    """On every response of the app: pages, API, static files, and the error pages of requests no
    blueprint answers (an unknown URL, a crash). A page's own policy (the dashboards' nonce) stays:
    blueprint hooks run first, this one only fills in what is missing."""
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _csrf_error(error: CSRFError) -> ResponseReturnValue:
    # Mostly a form left open past its token's lifetime, or cookies switched off.
    message = _("The form has expired. Please go back, reload the page and try again.")
    return render_template("error.html", code=400, message=message), 400


def _http_error(error: HTTPException) -> ResponseReturnValue:
    code = error.code or 500
    message, hint = _error_text(code, error)
    return render_template("error.html", code=code, message=message, hint=hint), code


def _error_text(code: int, error: HTTPException) -> tuple[str, str]:
    """The page's heading and what to do next, in the reader's language."""
    if code == 403:
        return (
            _("You are not allowed to see this page."),
            _("Log in with another account, or ask the lab staff."),
        )
    if code == 404:
        return (
            _("This page does not exist."),
            _("Check the address, or start again from the start page."),
        )
    if code == 405:
        return _("This page cannot be used like that."), _("Go back and use the page's own buttons.")
    if code == 400:
        return _("The request could not be understood."), _("Go back, reload the page and try again.")
    if code >= 500:
        return (
            _("Something went wrong on the server."),
            _("Please try again in a moment. If it happens again, tell the lab staff."),
        )
    return str(error.name), ""


API_PREFIX = "/api/"


def register_error_pages(app: Flask) -> None:
    """Error pages for what no blueprint answers: an unknown address, a wrong method, a crash.

    Registered before the API's own routing handlers (which take over for /api/...), so an
    unknown web address gets our page in the reader's language, not werkzeug's English one.
    The app-wide security headers are added to these responses like to every other.
    """
    for code in (400, 404, 405):
        app.register_error_handler(code, _page_or_api)
    app.register_error_handler(InternalServerError, _crash_page)


def _page_or_api(error: HTTPException) -> ResponseReturnValue:
    if request.path.startswith(API_PREFIX):
        return error  # the API's handlers answer JSON
    return _http_error(error)


def _crash_page(error: InternalServerError) -> ResponseReturnValue:
    session_ = g.get("db_session")
    if session_ is not None:
        try:
            session_.rollback()
        except Exception:  # the page must come out whatever the database does
            log.warning("rollback after a crash failed", exc_info=True)
    if request.path.startswith(API_PREFIX):
        return error
    try:
        return _http_error(error)
    except Exception:  # the page itself needs the database (who is logged in)
        log.exception("the error page failed too")
        message, hint = _error_text(500, error)
        body = f"<!doctype html><title>500</title><h1>{escape(message)}</h1><p>{escape(hint)}</p>"
        return Response(body, 500, mimetype="text/html")
