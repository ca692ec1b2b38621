"""The API's one error shape and the handlers that produce it.

Every error answer is ``{"error": {"code": ..., "message": ..., "fields": {...}}}``: ``code``
is machine-readable, ``message`` is English for the person reading logs, ``fields`` names
the body or query fields at fault (empty when none is).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from flask import Blueprint, Flask, Response, request
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from server.extensions import get_db
from server.services.bookings import BookingError
from server.services.training import TrainingError, audit_refusal

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
}


class ApiError(Exception):
    """Raise anywhere in a view to answer with the error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"code": code, "message": message, "fields": fields or {}}}
    response = Response(msgspec.json.encode(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


# "Expected `int`, got `str` - at `$.person_id`"; "Object contains unknown field `foo`";
# "Object missing required field `reason` - at `$.steps[0]`"
_AT = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_NAMED = re.compile(r"(?:unknown|missing required) field `(?P<name>[^`]+)`")


def validation_error(exc: msgspec.ValidationError | msgspec.DecodeError, where: str = "body") -> ApiError:
    """A msgspec refusal as a 400 whose ``fields`` names the field (``a.b[0]``) and why."""
    if not isinstance(exc, msgspec.ValidationError):  # (a ValidationError is a DecodeError too)
        return ApiError(400, "invalid_json", f"The request {where} is not valid JSON: {exc}")
    text = str(exc)
    match = _AT.match(text)
    what = match.group("what") if match else text
    path = (match.group("path") or "").lstrip(".") if match else ""
    named = _NAMED.search(what)
    if named is not None:
        path = f"{path}.{named.group('name')}" if path else named.group("name")
    message = f"Invalid {where}: {what}" + (f" (field `{path}`)" if path else "")
    return ApiError(400, f"invalid_{where}", message, {path: what} if path else {})


def register(bp: Blueprint) -> None:
    """Errors inside the API's views answer in the error shape (once, at import)."""
    bp.register_error_handler(ApiError, _api_error)
    bp.register_error_handler(TrainingError, _training_error)
    bp.register_error_handler(BookingError, _booking_error)
    bp.register_error_handler(msgspec.ValidationError, _validation_error)
    bp.register_error_handler(msgspec.DecodeError, _validation_error)
    bp.register_error_handler(IntegrityError, _integrity_error)
    bp.register_error_handler(HTTPException, _http_error)
    bp.register_error_handler(Exception, _unexpected_error)


def register_routing(app: Flask, prefix: str) -> None:
    """404 and 405 under ``prefix`` answer in the error shape too.

    Routing errors (an unknown path, a wrong method) happen before Flask knows the
    blueprint, so blueprint handlers never see them; an app-wide handler answers them for
    paths under ``prefix`` and hands every other path to the handler that was there before
    (or Flask's default page).
    """
    for exc_class in (NotFound, MethodNotAllowed):
        previous = app.error_handler_spec.get(None, {}).get(exc_class.code, {}).get(exc_class)

        def handler(error: HTTPException, previous: Any = previous) -> Any:
            if request.path == prefix or request.path.startswith(prefix + "/"):
                return _http_error(error)
            return previous(error) if previous is not None else error

        app.register_error_handler(exc_class, handler)


def _api_error(error: ApiError) -> Response:
    return error_response(error.status, error.code, error.message, error.fields, error.headers)


def _training_error(error: TrainingError) -> Response:
    db = get_db()
    db.rollback()
    if audit_refusal(db, error, source="api"):
        db.commit()
    # The English source template with its parameters (floats as "3.5", not "3.5000001").
    message = error.message.format(
        **{k: f"{v:g}" if isinstance(v, float) else str(v) for k, v in error.params.items()}
    )
    status = 403 if error.forbidden else 422
    return error_response(status, error.code, message)


def _booking_error(error: BookingError) -> Response:
    """A booking rule refused: 409 when the time is taken, 403 when it is someone else's
    booking, else 422; the rule's code and its English message. Nothing changed."""
    get_db().rollback()
    message = error.message.format(**{k: str(v) for k, v in error.params.items()})
    status = {"taken": 409, "not_yours": 403}.get(error.code, 422)
    return error_response(status, error.code, message)


def _validation_error(error: msgspec.ValidationError | msgspec.DecodeError) -> Response:
    return _api_error(validation_error(error))


def _integrity_error(error: IntegrityError) -> Response:
    # The views check uniqueness first; this is the race where two requests create the
    # same e-mail or UID at once and the database's unique index decides.
    get_db().rollback()
    log.info("API write refused by the database: %s", error.orig)
    return error_response(
        409, "conflict", "The change conflicts with data stored meanwhile; nothing changed."
    )


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status, "http_error")
    headers = {}
    if isinstance(error, MethodNotAllowed) and error.valid_methods:
        headers["Allow"] = ", ".join(sorted(error.valid_methods))
    message = {
        404: "No such resource.",
        405: f"Method {request.method} is not allowed here.",
    }.get(status, error.description or code)
    return error_response(status, code, message, headers=headers)


def _unexpected_error(error: Exception) -> Response:
    get_db().rollback()
    log.exception("API request failed: %s %s", request.method, request.path)
    return error_response(500, "internal_error", "Something went wrong on the server; nothing was changed.")
