"""Token authentication and who may call which API route.

``Authorization: Bearer <token>``; the token acts as its person. Every API view carries
``view.access = "api:<scope>"`` (set by :func:`api_access`), so a test that walks the URL
map can tell API routes from web pages and check each against every role:

* ``api:public``  — no token needed (the OpenAPI document)
* ``api:read``    — any valid token; what the view returns is cut down to what the person
  may see (:func:`sight`). Booking, cancelling and moving are open to every token
  too: the booking service decides per booking (participants only their own)
* ``api:trainer`` — trainers and admins; the training service then decides per competency
* ``api:admin``   — admins only
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, Literal, ParamSpec, TypeVar

from flask import g, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Select, SQLColumnExpression, select

from server.adapters.api.errors import ApiError
from server.adapters.api.schemas import MAX_ID
from server.extensions import get_db
from server.models import Machine, Person, utcnow
from server.services import tokens, training

P = ParamSpec("P")
T = TypeVar("T")
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


Sight = Literal["all", "site", "own"]


def sight(person: Person, resource: Resource) -> Sight:
    """Whose ``resource`` ``person`` may read: everyone's (admins), that of their own site
    (trainers, for :data:`TRAINER_READS`: the staff rule, :func:`training.serves`), or only
    their own."""
    if person.is_admin:
        return "all"
    if person.is_trainer and resource in TRAINER_READS:
        return "site"
    return "own"


def require_sight(person: Person, resource: Resource, person_id: int | None) -> None:
    """403 unless ``person`` may read ``resource`` of ``person_id``.

    ``None`` (no filter) is always allowed: the list is then cut down to what they may see
    (:func:`visible`). An id nobody has is allowed too: there is nothing to see.
    """
    if person_id is None or person_id == person.id:
        return
    seen = sight(person, resource)
    if seen == "all":
        return
    if seen == "site":
        subject = get_db().get(Person, person_id) if 0 < person_id <= MAX_ID else None
        if subject is None or training.serves(person, subject):
            return
        raise ApiError(403, "forbidden", f"This token may read only the {resource} of its own site.")
    raise ApiError(403, "forbidden", f"This token may read only its own person's {resource}.")


def visible(
    query: Select[T], person: Person, resource: Resource, person_id: SQLColumnExpression[Any]
) -> Select[T]:
    """``query`` cut down to the rows ``person`` may read, by the row's person (``person_id``)."""
    seen = sight(person, resource)
    if seen == "all":
        return query
    if seen == "site":
        return query.where(
            person_id.in_(select(Person.id).where(training.serves_site(person, Person.site_id)))
        )
    return query.where(person_id == person.id)


def visible_at_machines(
    query: Select[T],
    person: Person,
    resource: Resource,
    person_id: SQLColumnExpression[Any],
    machine_id: SQLColumnExpression[int],
) -> Select[T]:
    """Like :func:`visible`, for what happens at machines (sessions, bookings): trainers read
    those of their own site's machines, as the overview and the bookings pages show them."""
    seen = sight(person, resource)
    if seen == "all":
        return query
    if seen == "site":
        return query.where(
            machine_id.in_(select(Machine.id).where(training.serves_site(person, Machine.site_id)))
        )
    return query.where(person_id == person.id)


def may_see_at_machine(person: Person, resource: Resource, person_id: int | None, site_id: int) -> bool:
    """One row of :func:`visible_at_machines`: the reader's own, or (trainers) at their site."""
    seen = sight(person, resource)
    return seen == "all" or person_id == person.id or (seen == "site" and site_id == person.site_id)


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
