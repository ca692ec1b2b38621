"""Qualifications (history, current state) and the training service's changes over the API.

Grant, renew, revoke and step records go through :mod:`server.services.training`, which
decides who may train what and audits every change; its refusals answer 422 with the
service's code, 403 for the staff rule's (``own_training``, ``other_site``, ``not_a_trainer``,
``admin_only``: those are about the caller, and audited).
"""

from __future__ import annotations

from datetime import date

from flask.typing import ResponseReturnValue
from sqlalchemy import Select, or_, select
from sqlalchemy.orm import Session, selectinload

from server.adapters.api import schemas as s
from server.adapters.api.auth import api_access, current_person, require_sight, visible
from server.adapters.api.common import (
    answer,
    bp,
    page,
    paged,
    qualification_out,
    read_body,
    read_query,
    step_record_out,
    today_at_site_of,
)
from server.adapters.api.errors import ApiError
from server.extensions import get_db
from server.models import (
    Competency,
    Level,
    Person,
    Qualification,
    QualificationAction,
    TrainingStep,
    utcnow,
)
from server.services import qualifications, training


@bp.get("/qualifications")
@api_access("read")
def list_qualifications() -> ResponseReturnValue:
    q = read_query(s.QualificationsQuery)
    me = current_person()
    require_sight(me, "qualifications", q.person_id)
    db = get_db()
    query = select(Qualification).options(selectinload(Qualification.competency)).order_by(Qualification.id)
    query = visible(query, me, "qualifications", Qualification.person_id)
    if q.person_id is not None:
        query = query.where(Qualification.person_id == q.person_id)
    if q.competency is not None:
        query = query.join(Competency, Competency.id == Qualification.competency_id).where(
            Competency.slug == q.competency
        )
    if q.action is not None:
        query = query.where(Qualification.action == QualificationAction(q.action))
    if q.current_only:
        query = _in_force(query, today_at_site_of(me, utcnow()))
    rows, meta = page(db, query, q)
    return paged([qualification_out(e) for e in rows], meta)


def _in_force(query: Select[Qualification], today: date) -> Select[Qualification]:
    """Only each person's newest entry per competency, and only if it is held today."""
    return query.where(
        Qualification.id.in_(qualifications.newest_ids()),
        Qualification.action.in_((QualificationAction.GRANTED, QualificationAction.RENEWED)),
        or_(Qualification.valid_until.is_(None), Qualification.valid_until >= today),
    )


def _person(db: Session, person_id: int) -> Person:
    person = db.get(Person, person_id)
    if person is None:
        raise ApiError(
            422, "unknown_person", f"No person with id {person_id}.", {"person_id": "no such person"}
        )
    return person


def _competency(db: Session, slug: str) -> Competency:
    competency = db.scalar(select(Competency).where(Competency.slug == slug))
    if competency is None:
        raise ApiError(
            422, "unknown_competency", f"No competency {slug!r}.", {"competency": "no such competency"}
        )
    return competency


@bp.post("/qualifications/grant")
@api_access("trainer")
def grant() -> ResponseReturnValue:
    body = read_body(s.GrantBody)
    db = get_db()
    person, competency = _person(db, body.person_id), _competency(db, body.competency)
    now = utcnow()
    entry = training.grant(
        db,
        person,
        competency,
        Level(body.level),
        current_person(),
        body.reason,
        now,
        today_at_site_of(person, now),
    )
    db.commit()
    return answer(qualification_out(entry), 201)


@bp.post("/qualifications/renew")
@api_access("trainer")
def renew() -> ResponseReturnValue:
    body = read_body(s.RenewBody)
    db = get_db()
    person, competency = _person(db, body.person_id), _competency(db, body.competency)
    now = utcnow()
    entry = training.renew(
        db, person, competency, current_person(), body.reason, now, today_at_site_of(person, now)
    )
    db.commit()
    return answer(qualification_out(entry), 201)


@bp.post("/qualifications/revoke")
@api_access("trainer")
def revoke() -> ResponseReturnValue:
    body = read_body(s.RevokeBody)
    db = get_db()
    person, competency = _person(db, body.person_id), _competency(db, body.competency)
    now = utcnow()
    entry = training.revoke(
        db, person, competency, current_person(), body.reason, now, today_at_site_of(person, now)
    )
    db.commit()
    return answer(qualification_out(entry), 201)


@bp.post("/training/steps")
@api_access("trainer")
def record_step() -> ResponseReturnValue:
    body = read_body(s.StepBody)
    db = get_db()
    person = _person(db, body.person_id)
    step = db.get(TrainingStep, body.step_id)
    if step is None:
        raise ApiError(
            422, "unknown_step", f"No training step with id {body.step_id}.", {"step_id": "no such step"}
        )
    now = utcnow()
    record, entry = training.record_step(
        db, person, step, current_person(), now, today_at_site_of(person, now), source="api", note=body.note
    )
    db.commit()
    return answer(
        s.StepResultOut(
            record=step_record_out(record),
            qualification=qualification_out(entry) if entry is not None else None,
        ),
        201,
    )
