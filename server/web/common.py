"""What every web blueprint shares: security headers and error pages."""

from __future__ import annotations

from flask import Blueprint, Response, render_template
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from server.web.l10n import _

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
    message = _("You are not allowed to see this page.") if code == 403 else str(error.description)
    return render_template("error.html", code=code, message=message), code
