"""Token authentication and who may call which API route.

``Authorization: Bearer <token>``; the token acts as its person. Every API view carries
``view.access = "api:<scope>"`` (set by :func:`api_access`), so a test that walks the URL
map can tell API routes from web pages and check each against every role:

* ``api:public``  — no token needed (the OpenAPI document)
* ``api:read``    — any valid token; what the view returns is cut down to what the person
  may see (:func:`sees_everyone`). Booking, cancelling and moving are open to every token
  too: the booking service decides per booking (participants only their own)
* ``api:trainer`` — trainers and admins; the training service then decides per competency
* ``api:admin``   — admins only
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Literal, ParamSpec

from flask import g, request
from flask.typing import ResponseReturnValue

from server import get_db
from server.api.errors import ApiError
from server.models import Person, utcnow
from server.services import tokens

P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]
Scope = Literal["public", "read", "trainer", "admin"]
Resource = Literal["people", "badges", "qualifications", "sessions", "bookings"]

# Whose records a trainer reads besides their own: the people they train, their
# qualifications, sessions and bookings (the web pages show staff everyone's sessions and
# bookings too). Badge UIDs stay with admins: a UID is what a cloned card would need.
TRAINER_READS: frozenset[Resource] = frozenset({"people", "qualifications", "sessions", "bookings"})


def _unauthorized(code: str, message: str) -> ApiError:
    # RFC 6750: a 401 names the scheme, and why when a token was given.
    challenge = 'Bearer realm="werkbank"'
    if code != "token_missing":
        challenge += ', error="invalid_token"'
    return ApiError(401, code, message, headers={"WWW-Authenticate": challenge})


def authenticate() -> Person:
    """The person behind this request's token, or a 401 :class:`ApiError`."""
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise _unauthorized("token_missing", "Send a token: `Authorization: Bearer <token>`.")
    db = get_db()
    try:
        token = tokens.authenticate(db, secret, utcnow())
    except tokens.TokenError as exc:
        raise _unauthorized(exc.code, str(exc)) from None
    if db.dirty:  # last_used_at moved (at most once a minute per token)
        db.commit()
    g.api_token_id = token.id
    person: Person = token.person
    return person


def current_person() -> Person:
    person: Person = g.api_person
    return person


def sees_everyone(person: Person, resource: Resource) -> bool:
    """May ``person`` read everyone's ``resource``? If not, only their own."""
    return person.is_admin or (person.is_trainer and resource in TRAINER_READS)


def require_sight(person: Person, resource: Resource, person_id: int | None) -> None:
    """403 unless ``person`` may read ``resource`` of ``person_id``.

    ``None`` (no filter) is always allowed: the list is then cut down to what they may see.
    """
    if person_id is None or person_id == person.id or sees_everyone(person, resource):
        return
    raise ApiError(403, "forbidden", f"This token may read only its own person's {resource}.")


def api_access(scope: Scope) -> Callable[[View[P]], View[P]]:
    """Check the token (unless ``public``) and the role, then run the view."""

    def decorator(view: View[P]) -> View[P]:
        @wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            if scope != "public":
                person = authenticate()
                if scope == "admin" and not person.is_admin:
                    raise ApiError(403, "forbidden", "Only an admin may do this.")
                if scope == "trainer" and not (person.is_trainer or person.is_admin):
                    raise ApiError(403, "forbidden", "Only a trainer or an admin may do this.")
                g.api_person = person
            return view(*args, **kwargs)

        wrapped.access = f"api:{scope}"  # type: ignore[attr-defined]
        return wrapped

    return decorator
