"""What the overview and "my sessions" pages show: live machine state, sessions, machine hours.

Read-only queries, shared by the HTML pages and ``/live.json`` so both always agree.
Machine hours are sessions' unlocked time (docs/architecture.md, "Domain words"): the sum of ``unlocked_s``,
which a session gets when it ends; a session still open adds nothing yet.

A machine's total is ``machines.hours_total_s``, the running total kept in the transaction of
every change to its sessions (:mod:`server.services.hours_total`; ``werkbank usage rebuild``
recomputes it): one column per machine, however many sessions it had. Today's hours are summed
from today's sessions (:func:`machine_hours_since`, a range of ``ix_sessions_machine_hours``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from server.models import (
    Device,
    Job,
    LocalName,
    Machine,
    MachineSession,
    MachineStatus,
    Person,
    session_newest,
)


class LiveState(enum.StrEnum):
    """A machine's state as the overview shows it (one colour each)."""

    AVAILABLE = "available"
    IN_USE = "in_use"
    OFFLINE = "offline"
    MAINTENANCE = "maintenance"
    DISABLED = "disabled"
    FAULT = "fault"


# What the agent reports while someone holds the machine (werkbank_protocol MachineState).
_HELD = frozenset({"unlocked", "running", "draining"})


def live_state(machine: Machine, device: Device | None) -> LiveState:
    """The state to show, most important first: what staff decided, then what the device says."""
    if machine.status == MachineStatus.DISABLED:
        return LiveState.DISABLED
    if machine.status == MachineStatus.MAINTENANCE or machine.live_state == "maintenance":
        return LiveState.MAINTENANCE
    if device is None or not device.online:
        return LiveState.OFFLINE
    if machine.live_session_id is not None or machine.live_state in _HELD:
        return LiveState.IN_USE
    if machine.live_state == "fault":
        return LiveState.FAULT
    return LiveState.AVAILABLE


@dataclass(frozen=True)
class MachineLive:
    id: int
    slug: str
    name: str
    type_name: LocalName
    state: LiveState
    user_name: str | None  # who holds it now, when in use and known
    user_id: int | None  # the holder's person id (the trainer's, for a session without a person)
    running: bool
    progress: float | None  # percent, as the agent reports it
    device_id: str | None
    device_online: bool
    device_last_seen: datetime | None
    hours_today_s: float
    hours_total_s: float


@dataclass(frozen=True)
class SessionRow:
    id: str
    machine_name: str
    person_name: str | None
    trainer_name: str | None
    started_at: datetime | None
    ended_at: datetime | None
    unlocked_s: float | None
    offline: bool
    jobs: int

    def duration_s(self, now: datetime) -> float | None:
        """Unlocked time: as reported when ended, else so far."""
        if self.unlocked_s is not None:
            return self.unlocked_s
        if self.started_at is None:
            return None
        return ((self.ended_at or now) - self.started_at).total_seconds()


def site_machines(db: Session, site_id: int, today_start: datetime) -> list[MachineLive]:
    """Every machine of the site with its live state and machine hours (today, total)."""
    machines = db.scalars(
        select(Machine)
        .where(Machine.site_id == site_id)
        .options(selectinload(Machine.device), selectinload(Machine.machine_type))
        .order_by(Machine.name, Machine.id)
    ).all()
    today = machine_hours_since(db, [m.id for m in machines], today_start)
    live_ids = [m.live_session_id for m in machines if m.live_session_id is not None]
    holders = {
        s.id: s
        for s in db.scalars(
            select(MachineSession)
            .where(MachineSession.id.in_(live_ids))
            .options(selectinload(MachineSession.person), selectinload(MachineSession.trainer))
        )
    }
    out = []
    for m in machines:
        state = live_state(m, m.device)
        holder = holders.get(m.live_session_id or "")
        user = None
        user_id = None
        if state == LiveState.IN_USE and holder is not None:
            user = _name(holder.person) or _name(holder.trainer)
            user_id = holder.person_id or holder.trainer_id
        out.append(
            MachineLive(
                id=m.id,
                slug=m.slug,
                name=m.name,
                type_name=m.machine_type.local_name,
                state=state,
                user_name=user,
                user_id=user_id,
                running=m.live_running and state != LiveState.OFFLINE,
                progress=m.live_progress,
                device_id=m.device.id if m.device else None,
                device_online=bool(m.device and m.device.online),
                device_last_seen=m.device.last_seen if m.device else None,
                hours_today_s=today.get(m.id, 0.0),
                hours_total_s=m.hours_total_s,
            )
        )
    return out


def machine_hours_since(db: Session, machine_ids: Iterable[int], since: datetime) -> dict[int, float]:
    """Seconds of unlocked time per machine, of sessions started at or after ``since``."""
    query = (
        select(MachineSession.machine_id, func.coalesce(func.sum(MachineSession.unlocked_s), 0.0))
        .where(MachineSession.machine_id.in_(list(machine_ids)), MachineSession.started_at >= since)
        .group_by(MachineSession.machine_id)
    )
    return {machine_id: float(seconds or 0.0) for machine_id, seconds in db.execute(query)}


def person_hours(db: Session, person_id: int) -> list[tuple[str, float]]:
    """A person's machine hours per machine (name, seconds), most used first."""
    seconds = func.coalesce(func.sum(MachineSession.unlocked_s), 0.0)
    rows = db.execute(
        select(Machine.name, seconds)
        .join(Machine, Machine.id == MachineSession.machine_id)
        .where(MachineSession.person_id == person_id)
        .group_by(Machine.id, Machine.name)
        .order_by(seconds.desc(), Machine.name)
    )
    return [(name, float(total or 0.0)) for name, total in rows]


def count_sessions(db: Session, person_id: int) -> int:
    """How many sessions one person has: for paging :func:`recent_sessions`."""
    found = db.scalar(select(func.count(MachineSession.id)).where(MachineSession.person_id == person_id))
    return int(found or 0)


def recent_sessions(
    db: Session,
    *,
    site_id: int | None = None,
    person_id: int | None = None,
    limit: int = 20,
    offset: int = 0,
) -> list[SessionRow]:
    """The latest sessions of a site or of one person, newest first (``offset``: for paging)."""
    query = select(MachineSession).options(
        selectinload(MachineSession.machine),
        selectinload(MachineSession.person),
        selectinload(MachineSession.trainer),
    )
    # A session whose "ended" event came before its "started" one has no start yet.
    newest = session_newest()
    if site_id is not None:
        query = query.join(Machine, Machine.id == MachineSession.machine_id).where(Machine.site_id == site_id)
        cutoff = _site_cutoff(db, site_id, limit + offset)
        if cutoff is not None:
            query = query.where(newest >= cutoff)
    if person_id is not None:
        query = query.where(MachineSession.person_id == person_id)
    sessions = db.scalars(query.order_by(newest.desc(), MachineSession.id).limit(limit).offset(offset)).all()
    job_counts = db.execute(
        select(Job.session_id, func.count(Job.id))
        .where(Job.session_id.in_([s.id for s in sessions]))
        .group_by(Job.session_id)
    )
    jobs = {session_id: count for session_id, count in job_counts}
    return [
        SessionRow(
            id=s.id,
            machine_name=s.machine.name,
            person_name=_name(s.person),
            trainer_name=_name(s.trainer),
            started_at=s.started_at,
            ended_at=s.ended_at,
            unlocked_s=s.unlocked_s,
            offline=s.offline,
            jobs=jobs.get(s.id, 0),
        )
        for s in sessions
    ]


def _site_cutoff(db: Session, site_id: int, n: int) -> datetime | None:
    """A time no later than that of the site's ``n``-th newest session (None: no bound needed).

    Each machine's own ``n``-th newest session is read from ``ix_sessions_machine_newest``
    (a few index entries per machine); the latest of those is the bound: that machine alone has
    ``n`` sessions at or after it, so the site's ``n`` newest are all at or after it too. The
    query for the site's newest then reads a few rows per machine instead of sorting every
    session the site ever had. A machine with fewer than ``n`` sessions bounds nothing."""
    if n <= 0:
        return None
    newest = session_newest()
    nth = (
        select(newest)
        .where(MachineSession.machine_id == Machine.id)
        .order_by(newest.desc())
        .limit(1)
        .offset(n - 1)
        .scalar_subquery()
    )
    found = db.scalar(select(func.max(nth)).where(Machine.site_id == site_id))
    return found if isinstance(found, datetime) else None


def _name(person: Person | None) -> str | None:
    return person.name if person is not None else None
