"""Each machine's total machine hours (``machines.hours_total_s``): a running total of its
sessions' ``unlocked_s``, kept in the same transaction as every change to them.

The invariant: for every machine, ``hours_total_s`` equals the sum of ``unlocked_s`` over its
sessions (up to float rounding). A SQLAlchemy flush hook adds the difference each flush makes
(a session inserted, deleted, given its unlocked time, or moved to another machine) with
``UPDATE machines SET hours_total_s = hours_total_s + :delta``: atomic, so two bridges ending
sessions of one machine at once both count. Hooks, not calls, so that no caller can forget them
(registered when ``server/services/__init__.py`` imports this module, like usage_tracking's).

Statements that write sessions pass no flush. ``INSERT``/``UPDATE``/``DELETE`` statements on
sessions run through a ``Session`` are caught (``do_orm_execute``) and the machines they touched
summed again; a statement on a bare ``Connection`` (or a ``text()`` one) passes no hook at all:
its writer calls :func:`add` with its own differences (the demo history's bulk writer does) or
:func:`recompute`. :func:`recompute` is also the repair path: ``werkbank usage rebuild`` sums
every machine's sessions again (migration 0024 filled the column the same way).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, Table, bindparam, event, func, inspect, select, update
from sqlalchemy.engine import Result
from sqlalchemy.orm import ORMExecuteState, Session

from server.models import Machine, MachineSession

_MACHINES: Table = Machine.__table__  # type: ignore[assignment]
_SESSIONS: Table = MachineSession.__table__  # type: ignore[assignment]
_ADD = (
    update(_MACHINES)
    .where(_MACHINES.c.id == bindparam("b_id"))
    .values(hours_total_s=_MACHINES.c.hours_total_s + bindparam("b_delta"))
)


def add(conn: Connection | Session, deltas: Mapping[int, float]) -> None:
    """Add ``deltas`` (machine id -> seconds) to the machines' totals, in the ids' order (the
    order every writer locks machine rows in)."""
    rows = [{"b_id": m, "b_delta": d} for m, d in sorted(deltas.items()) if d]
    if rows:
        conn.execute(_ADD, rows)


def recompute(conn: Connection | Session, machine_ids: Iterable[int] | None = None) -> None:
    """Set the machines' totals (all of them when ``machine_ids`` is None) to the sum of their
    sessions' unlocked time, read afresh."""
    summed = (
        select(func.coalesce(func.sum(_SESSIONS.c.unlocked_s), 0.0))
        .where(_SESSIONS.c.machine_id == _MACHINES.c.id)
        .scalar_subquery()
    )
    statement = update(_MACHINES).values(hours_total_s=summed)
    if machine_ids is not None:
        statement = statement.where(_MACHINES.c.id.in_(sorted(set(machine_ids))))
    conn.execute(statement)


_FIELDS = ("machine_id", "unlocked_s")


def _values(obj: MachineSession, name: str) -> tuple[Any, Any]:
    """The attribute's value before this flush and after it (both columns keep their old
    value when set: ``active_history`` in server/models.py)."""
    hist = inspect(obj).attrs[name].history
    if hist.added or hist.deleted:
        return (hist.deleted[0] if hist.deleted else None), (hist.added[0] if hist.added else None)
    value = hist.unchanged[0] if hist.unchanged else getattr(obj, name)
    return value, value


@event.listens_for(Session, "before_flush")
def _load_deleted(session: Session, _ctx: Any, _instances: Any) -> None:
    # A session deleted with its values expired: read them while its row is still there.
    with session.no_autoflush:
        for obj in session.deleted:
            if isinstance(obj, MachineSession):
                unloaded = inspect(obj).unloaded
                for name in _FIELDS:
                    if name in unloaded:
                        getattr(obj, name)


@event.listens_for(Session, "after_flush")
def _add_hours(session: Session, _ctx: Any) -> None:
    """Move each machine's total by what this flush changed. After the flush, not before: a new
    session's ``machine_id`` may come from its ``machine`` relationship, set only now."""
    deltas: dict[int, float] = defaultdict(float)
    for obj in (*session.new, *session.dirty, *session.deleted):
        if not isinstance(obj, MachineSession):
            continue
        state = inspect(obj)
        new, gone = obj in session.new, obj in session.deleted
        if not new and not gone and not any(state.attrs[n].history.has_changes() for n in _FIELDS):
            continue
        old_machine, new_machine = _values(obj, "machine_id")
        old_s, new_s = _values(obj, "unlocked_s")
        if not new and old_machine is not None and old_s:
            deltas[old_machine] -= old_s
        if not gone and new_machine is not None and new_s:
            deltas[new_machine] += new_s
    moved = {m: d for m, d in deltas.items() if d}
    if moved:
        add(session.connection(), moved)
        session.info.setdefault("hours_total_moved", set()).update(moved)


@event.listens_for(Session, "after_flush_postexec")
def _expire_totals(session: Session, _ctx: Any) -> None:
    # Machines loaded in this session hold the total from before the UPDATE: read it again.
    for machine_id in session.info.pop("hours_total_moved", ()):
        machine = session.identity_map.get(Session.identity_key(Machine, machine_id))
        if machine is not None:
            session.expire(machine, ["hours_total_s"])


@event.listens_for(Session, "do_orm_execute")
def _bulk_statement(state: ORMExecuteState) -> Result[Any] | None:
    """An INSERT, UPDATE or DELETE of sessions run through ``Session.execute`` passes no flush:
    the totals of the machines it touched are summed again after it, in its transaction. (A
    statement on a ``Connection`` passes no hook at all: its writer calls :func:`add` or
    :func:`recompute` itself.)"""
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    if MachineSession.__mapper__ not in state.all_mappers:
        return None
    statement: Any = state.statement
    session = state.session
    where = None if state.is_insert else statement.whereclause
    touched: set[int] | None = None  # None: every machine
    if where is not None:
        touched = set(session.scalars(select(_SESSIONS.c.machine_id).where(where).distinct()))
    params = state.parameters
    rows = [params] if isinstance(params, Mapping) else list(params or ())
    if state.is_insert and rows and all("machine_id" in r for r in rows):
        touched = {r["machine_id"] for r in rows}
    result = state.invoke_statement()
    if where is not None and touched is not None and state.is_update:
        # A session moved to another machine: the machine it went to (when the statement still
        # finds it; one that no longer matches its own WHERE is found before only).
        touched |= set(session.scalars(select(_SESSIONS.c.machine_id).where(where).distinct()))
    recompute(session.connection(), touched)
    return result
