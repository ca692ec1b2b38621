"""People and badges: read (scoped to what the token's person may see), create and change (admins)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from flask.typing import ResponseReturnValue
from msgspec import UNSET, UnsetType
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from server.adapters.api import schemas as s
from server.adapters.api.auth import api_access, current_person, require_sight, visible
from server.adapters.api.common import (
    ROLES,
    answer,
    badge_out,
    bp,
    page,
    paged,
    person_out,
    read_body,
    read_query,
    roles_of,
)
from server.adapters.api.errors import ApiError
from server.extensions import get_db
from server.models import Badge, BadgeStatus, Person, Site, utcnow
from server.services import audit
from werkbank_protocol.messages import BADGE_PATTERN

# -- people ----------------------------------------------------------------------------------------


@bp.get("/people")
@api_access("read")
def list_people() -> ResponseReturnValue:
    q = read_query(s.PeopleQuery)
    me = current_person()
    db = get_db()
    query = select(Person).options(selectinload(Person.site)).order_by(Person.id)
    query = visible(query, me, "people", Person.id)
    if q.site is not None:
        query = query.join(Site, Site.id == Person.site_id).where(Site.slug == q.site)
    if q.role is not None:
        query = query.where(
            {"participant": Person.is_participant, "trainer": Person.is_trainer, "admin": Person.is_admin}[
                q.role
            ].is_(True)
        )
    if q.active is not None:
        query = query.where(Person.active.is_(q.active))
    if q.cohort is not None:
        query = query.where(Person.cohort == q.cohort)
    if q.email is not None:
        query = query.where(func.lower(Person.email) == q.email.strip().lower())
    rows, meta = page(db, query, q)
    return paged([person_out(p) for p in rows], meta)


def _person(db: Session, person_id: int) -> Person:
    person = db.get(Person, person_id) if person_id <= s.MAX_ID else None
    if person is None:
        raise ApiError(404, "not_found", f"No person with id {person_id}.")
    return person


@bp.get("/people/<int:person_id>")
@api_access("read")
def get_person(person_id: int) -> ResponseReturnValue:
    require_sight(current_person(), "people", person_id)
    return answer(person_out(_person(get_db(), person_id)))


def _site(db: Session, slug: str) -> Site:
    site = db.scalar(select(Site).where(Site.slug == slug))
    if site is None:
        raise ApiError(422, "unknown_site", f"No site {slug!r}.", {"site": "no such site"})
    return site


def _check_unique(db: Session, person_id: int | None, email: str | None, external_id: str | None) -> None:
    if email is not None:
        taken = db.scalar(
            select(Person.id).where(func.lower(Person.email) == email, Person.id != (person_id or 0))
        )
        if taken is not None:
            raise ApiError(409, "duplicate_email", f"{email} belongs to someone else.", {"email": "taken"})
    if external_id is not None:
        taken = db.scalar(
            select(Person.id).where(Person.external_id == external_id, Person.id != (person_id or 0))
        )
        if taken is not None:
            raise ApiError(
                409,
                "duplicate_external_id",
                f"{external_id} belongs to someone else.",
                {"external_id": "taken"},
            )


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise ApiError(
            400, "invalid_body", "Invalid body: the name is empty (field `name`)", {"name": "empty"}
        )
    return name


def _set_roles(person: Person, roles: Sequence[str]) -> None:
    person.is_participant = "participant" in roles
    person.is_trainer = "trainer" in roles
    person.is_admin = "admin" in roles


@bp.post("/people")
@api_access("admin")
def create_person() -> ResponseReturnValue:
    body = read_body(s.PersonCreate)
    db = get_db()
    name = _clean_name(body.name)
    email = body.email.strip().lower() if body.email is not None else None
    site = _site(db, body.site)
    _check_unique(db, None, email, body.external_id)
    person = Person(
        site_id=site.id,
        name=name,
        email=email,
        cohort=body.cohort,
        programme=body.programme,
        language=body.language,
        external_id=body.external_id,
        active=body.active,
        created_at=utcnow(),
    )
    _set_roles(person, body.roles)
    db.add(person)
    db.flush()
    audit.record(
        db,
        current_person(),
        "person.created",
        f"person:{person.id}",
        {"name": name, "email": email, "site": site.slug, "roles": roles_of(person)},
    )
    db.commit()
    return answer(person_out(person), 201)


@bp.patch("/people/<int:person_id>")
@api_access("admin")
def update_person(person_id: int) -> ResponseReturnValue:
    body = read_body(s.PersonPatch)
    db = get_db()
    person = _person(db, person_id)
    if person.id == current_person().id and (
        body.active is False or (isinstance(body.roles, list) and "admin" not in body.roles)
    ):
        # Someone must be left who can undo it: another admin changes an admin's own rights.
        raise ApiError(422, "own_admin", "You cannot take away your own admin role or deactivate yourself.")
    email = body.email.strip().lower() if isinstance(body.email, str) else body.email
    _check_unique(
        db,
        person.id,
        email if isinstance(email, str) else None,
        body.external_id if isinstance(body.external_id, str) else None,
    )
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}

    def change(field: str, old: Any, new: Any) -> bool:
        if new is UNSET or new == old:
            return False
        before[field], after[field] = old, new
        return True

    if change("name", person.name, _clean_name(body.name) if isinstance(body.name, str) else UNSET):
        person.name = after["name"]
    if isinstance(body.site, str) and body.site != person.site.slug:
        site = _site(db, body.site)
        before["site"], after["site"] = person.site.slug, site.slug
        person.site = site
    if change("email", person.email, email):
        person.email = after["email"]
    if not isinstance(body.roles, UnsetType):
        roles = [r for r in ROLES if r in body.roles]
        if change("roles", roles_of(person), roles):
            _set_roles(person, roles)
    for field in ("cohort", "programme", "language", "external_id", "active"):
        if change(field, getattr(person, field), getattr(body, field)):
            setattr(person, field, after[field])
    if after:
        audit.record(
            db,
            current_person(),
            "person.updated",
            f"person:{person.id}",
            {"person": person.name, "before": before, "after": after},
        )
        db.commit()
    return answer(person_out(person))


# -- badges ----------------------------------------------------------------------------------------


@bp.get("/badges")
@api_access("read")
def list_badges() -> ResponseReturnValue:
    q = read_query(s.BadgesQuery)
    me = current_person()
    require_sight(me, "badges", q.person_id)
    query = visible(select(Badge).order_by(Badge.id), me, "badges", Badge.person_id)
    if q.person_id is not None:
        query = query.where(Badge.person_id == q.person_id)
    if q.status is not None:
        query = query.where(Badge.status == BadgeStatus(q.status))
    rows, meta = page(get_db(), query, q)
    return paged([badge_out(b) for b in rows], meta)


@bp.post("/badges")
@api_access("admin")
def create_badge() -> ResponseReturnValue:
    body = read_body(s.BadgeCreate)
    db = get_db()
    uid = body.uid.upper()
    person = db.get(Person, body.person_id)
    if person is None:
        raise ApiError(
            422, "unknown_person", f"No person with id {body.person_id}.", {"person_id": "no such person"}
        )
    if db.scalar(select(Badge.id).where(Badge.uid == uid)) is not None:
        raise ApiError(409, "duplicate_uid", f"Badge {uid} is already assigned.", {"uid": "taken"})
    now = utcnow()
    badge = Badge(uid=uid, person_id=person.id, status=BadgeStatus.ACTIVE, issued_at=now, note=body.note)
    db.add(badge)
    audit.record(
        db,
        current_person(),
        "badge.assigned",
        f"person:{person.id}",
        {"person": person.name, "uid": uid, "note": body.note},
        at=now,
    )
    db.commit()
    return answer(badge_out(badge), 201)


@bp.patch("/badges/<uid>")
@api_access("admin")
def update_badge(uid: str) -> ResponseReturnValue:
    body = read_body(s.BadgePatch)
    db = get_db()
    valid = re.fullmatch(BADGE_PATTERN, uid.upper()) is not None
    badge = db.scalar(select(Badge).where(Badge.uid == uid.upper())) if valid else None
    if badge is None:
        raise ApiError(404, "not_found", f"No badge {uid}.")
    now = utcnow()
    actor = current_person()
    if body.status is not UNSET and body.status != badge.status.value:
        old = badge.status
        badge.status = BadgeStatus(body.status)
        badge.status_changed_at = now
        # badge.blocked / badge.lost / badge.active: a block is what an auditor looks for.
        audit.record(
            db,
            actor,
            f"badge.{badge.status.value}",
            f"person:{badge.person_id}",
            {"uid": badge.uid, "from": old.value, "to": badge.status.value},
            at=now,
        )
    if body.note is not UNSET and body.note != badge.note:
        audit.record(
            db,
            actor,
            "badge.note",
            f"person:{badge.person_id}",
            {"uid": badge.uid, "from": badge.note, "to": body.note},
            at=now,
        )
        badge.note = body.note
    db.commit()
    return answer(badge_out(badge))
