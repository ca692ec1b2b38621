"""The ``api`` blueprint and what its views share: reading bodies and queries, answering JSON,
pages of lists, and turning models into answers."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import msgspec
from flask import Blueprint, Response, request
from sqlalchemy import Select
from sqlalchemy.orm import Session

from server.adapters.api import schemas as s
from server.adapters.api.errors import ApiError, validation_error
from server.adapters.api.errors import register as register_error_handlers
from server.models import (
    Badge,
    Job,
    Machine,
    MachineSession,
    Person,
    Qualification,
    StepRecord,
)

URL_PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=URL_PREFIX)
register_error_handlers(bp)

T = TypeVar("T")
Row = TypeVar("Row")


@bp.after_request
def _headers(response: Response) -> Response:
    # Answers name people and their badges: nothing for shared caches.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    return response


def answer(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status=status, mimetype="application/json")


# PostgreSQL text cannot hold NUL characters; refuse them up front rather than as a driver error.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def read_body(kind: type[T]) -> T:
    """The request's JSON body as ``kind``: strict types, no unknown fields, else 400."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise ApiError(400, "invalid_body", "The request needs a JSON body.")
    if _NUL_ESCAPE.search(raw):
        raise ApiError(400, "invalid_body", "Invalid body: text may not contain NUL characters.")
    try:
        return msgspec.json.decode(raw, type=kind, strict=True)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise validation_error(exc, "body") from None


def read_query(kind: type[T]) -> T:
    """The query string as ``kind`` (text converted: ``limit=10``); unknown parameters are 400."""
    args = request.args
    repeated = [name for name in args if len(args.getlist(name)) > 1]
    if repeated:
        raise ApiError(
            400,
            "invalid_query",
            f"Give the parameter `{repeated[0]}` once.",
            {repeated[0]: "given more than once"},
        )
    bad = next((name for name, value in args.items() if "\x00" in name + value), None)
    if bad is not None:
        raise ApiError(400, "invalid_query", "Query parameters may not contain NUL characters.", {bad: "NUL"})
    try:
        return msgspec.convert(args.to_dict(), type=kind, strict=False)
    except msgspec.ValidationError as exc:
        raise validation_error(exc, "query") from None


def page(db: Session, query: Select[Row], paging: s.Paging) -> tuple[Sequence[Row], dict[str, Any]]:
    """One page of ``query`` (which must have a total order) and the page's envelope fields.

    Offset paging over lists ordered oldest first: new rows land at the end, so a client
    walking ``next_offset`` misses nothing that existed when it started.
    """
    rows = db.scalars(query.limit(paging.limit + 1).offset(paging.offset)).all()
    more = len(rows) > paging.limit
    rows = rows[: paging.limit]
    meta = {
        "limit": paging.limit,
        "offset": paging.offset,
        "next_offset": paging.offset + paging.limit if more else None,
    }
    return rows, meta


def paged(items: list[Any], meta: dict[str, Any]) -> Response:
    return answer({"items": items, **meta})


def today_at_site_of(person: Person, now: datetime) -> date:
    """Today at ``person``'s site: qualifications run out at the site's midnight."""
    return now.astimezone(ZoneInfo(person.site.timezone)).date()


# -- models to answers -----------------------------------------------------------------------------


ROLES = ("participant", "trainer", "admin")


def roles_of(person: Person) -> list[str]:
    """The person's roles, always in the order of :data:`ROLES`."""
    return [name for name in ROLES if getattr(person, f"is_{name}")]


def person_out(person: Person) -> s.PersonOut:
    return s.PersonOut(
        id=person.id,
        name=person.name,
        email=person.email,
        site=person.site.slug,
        roles=roles_of(person),
        cohort=person.cohort,
        programme=person.programme,
        language=person.language,
        external_id=person.external_id,
        active=person.active,
        created_at=person.created_at,
    )


def badge_out(badge: Badge) -> s.BadgeOut:
    return s.BadgeOut(
        uid=badge.uid,
        person_id=badge.person_id,
        status=badge.status.value,
        issued_at=badge.issued_at,
        status_changed_at=badge.status_changed_at,
        note=badge.note,
    )


def machine_out(machine: Machine) -> s.MachineOut:
    device = machine.device
    return s.MachineOut(
        slug=machine.slug,
        name=machine.name,
        site=machine.site.slug,
        type=machine.machine_type.slug,
        type_name=machine.machine_type.name,
        status=machine.status.value,
        limits=s.LimitsOut(
            max_session_min=machine.max_session_min,
            idle_timeout_min=machine.idle_timeout_min,
            guard_min=machine.guard_min,
        ),
        live=s.LiveOut(
            state=machine.live_state,
            running=machine.live_running,
            session_id=machine.live_session_id,
            power_w=machine.live_power_w,
            progress=machine.live_progress,
            updated_at=machine.live_updated_at,
        ),
        device=s.DeviceOut(
            id=device.id,
            online=device.online,
            state=device.state,
            last_seen=device.last_seen,
            agent_version=device.agent_version,
            allowlist_version=device.allowlist_version,
        )
        if device is not None
        else None,
        requires=[
            s.RequirementOut(competency=r.competency.slug, min_level=r.min_level.value)
            for r in sorted(machine.machine_type.requirements, key=lambda r: r.competency.slug)
        ],
    )


def qualification_out(entry: Qualification) -> s.QualificationOut:
    return s.QualificationOut(
        id=entry.id,
        person_id=entry.person_id,
        competency=entry.competency.slug,
        action=entry.action.value,
        level=entry.level.value,
        valid_until=entry.valid_until,
        granted_by_id=entry.granted_by_id,
        reason=entry.reason,
        created_at=entry.created_at,
    )


def step_record_out(record: StepRecord) -> s.StepRecordOut:
    return s.StepRecordOut(
        id=record.id,
        person_id=record.person_id,
        competency=record.step.competency.slug,
        step_id=record.step_id,
        step_name=record.step.name,
        kind=record.step.kind,
        recorded_by_id=record.recorded_by_id,
        source=record.source,
        note=record.note,
        recorded_at=record.recorded_at,
    )


def job_out(job: Job) -> s.JobOut:
    return s.JobOut(
        id=job.id,
        kind=job.kind,
        file=job.file,
        status=job.status,
        started_at=job.started_at,
        finished_at=job.finished_at,
        estimated_s=job.estimated_s,
        duration_s=job.duration_s,
        filament_mm=job.filament_mm,
        filament_g=job.filament_g,
    )


def session_out(session: MachineSession) -> s.SessionOut:
    return s.SessionOut(
        id=session.id,
        machine=session.machine.slug,
        person_id=session.person_id,
        trainer_id=session.trainer_id,
        badge_uid=session.badge_uid,
        mode=session.mode,
        offline=session.offline,
        started_at=session.started_at,
        ended_at=session.ended_at,
        end_reason=session.end_reason,
        unlocked_s=session.unlocked_s,
        run_s=session.run_s,
        jobs=[job_out(j) for j in session.jobs],
    )
