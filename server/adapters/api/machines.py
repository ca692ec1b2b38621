"""Machines (with live state and their device) and sessions (with their jobs)."""

from __future__ import annotations

from typing import Any

from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from server.adapters.api import schemas as s
from server.adapters.api.auth import api_access, current_person, require_sight, visible_at_machines
from server.adapters.api.common import answer, bp, machine_out, page, paged, read_query, session_out
from server.adapters.api.errors import ApiError
from server.extensions import get_db
from server.models import (
    Machine,
    MachineSession,
    MachineStatus,
    MachineType,
    Requirement,
    Site,
)


def _machine_loads() -> list[Any]:
    # One query per relation for a whole page instead of several per machine.
    return [
        selectinload(Machine.site),
        selectinload(Machine.device),
        selectinload(Machine.machine_type)
        .selectinload(MachineType.requirements)
        .selectinload(Requirement.competency),
    ]


@bp.get("/machines")
@api_access("read")
def list_machines() -> ResponseReturnValue:
    q = read_query(s.MachinesQuery)
    query = select(Machine).options(*_machine_loads()).order_by(Machine.id)
    if q.site is not None:
        query = query.join(Site, Site.id == Machine.site_id).where(Site.slug == q.site)
    if q.status is not None:
        query = query.where(Machine.status == MachineStatus(q.status))
    if q.type is not None:
        query = query.join(MachineType, MachineType.id == Machine.machine_type_id).where(
            MachineType.slug == q.type
        )
    rows, meta = page(get_db(), query, q)
    return paged([machine_out(m) for m in rows], meta)


@bp.get("/machines/<slug>")
@api_access("read")
def get_machine(slug: str) -> ResponseReturnValue:
    machine = (
        get_db().scalar(select(Machine).options(*_machine_loads()).where(Machine.slug == slug))
        if len(slug) <= 40 and "\x00" not in slug
        else None
    )
    if machine is None:
        raise ApiError(404, "not_found", f"No machine {slug!r}.")
    return answer(machine_out(machine))


@bp.get("/sessions")
@api_access("read")
def list_sessions() -> ResponseReturnValue:
    q = read_query(s.SessionsQuery)
    me = current_person()
    require_sight(me, "sessions", q.person_id)
    if q.since is not None and q.until is not None and q.until < q.since:
        raise ApiError(400, "invalid_query", "`until` is before `since`.", {"until": "before since"})
    query = (
        select(MachineSession)
        .options(selectinload(MachineSession.machine), selectinload(MachineSession.jobs))
        # Oldest first with created_at as the fallback for sessions whose start is unknown,
        # and the id as tie-break: a total order, so offset pages neither skip nor repeat.
        .order_by(MachineSession.started_at, MachineSession.created_at, MachineSession.id)
    )
    query = visible_at_machines(query, me, "sessions", MachineSession.person_id, MachineSession.machine_id)
    if q.person_id is not None:
        query = query.where(MachineSession.person_id == q.person_id)
    if q.machine is not None:
        query = query.join(Machine, Machine.id == MachineSession.machine_id).where(Machine.slug == q.machine)
    if q.since is not None:
        query = query.where(MachineSession.started_at >= q.since)
    if q.until is not None:
        query = query.where(MachineSession.started_at < q.until)
    if q.open is not None:
        query = query.where(
            MachineSession.ended_at.is_(None) if q.open else MachineSession.ended_at.is_not(None)
        )
    rows, meta = page(get_db(), query, q)
    return paged([session_out(r) for r in rows], meta)
