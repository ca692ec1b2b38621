"""Usage tracking: SQLAlchemy flush hooks on every ``Session`` that note which (machine, local
day) a change touches and queue those days for the usage aggregates, and the downtime
bookkeeping that goes with it.

* A change to a session, job, booking, downtime period, closed day or opening hours marks the
  days it spans (before and after the change) in the dirty-day queue (``usage_dirty``) at
  commit; the scheduler's ``refresh_usage`` job recomputes them (:func:`server.services.usage.refresh`).
* A machine's status set to maintenance or disabled opens a downtime period (back to
  available: closes it); a device going offline opens the machine's offline period, coming
  back closes it, from ``device.last_seen`` (the presence itself is
  :mod:`server.services.devices`'s).

Hooks, not calls, so that no caller can forget them. They are registered when this module is
imported, which ``server/services/__init__.py`` does: every process that touches a service
(web, API, bridge, scheduler, CLI, tests) has them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import event, inspect, or_, select
from sqlalchemy.orm import Session

from server.models import (
    Booking,
    ClosedDay,
    Device,
    DowntimeKind,
    Job,
    Machine,
    MachineDayStats,
    MachineDowntime,
    MachineSession,
    MachineStatus,
    OpeningHours,
    Site,
    utcnow,
)
from server.services.usage import local_days, upsert_dirty


def _history(obj: Any, name: str) -> list[Any]:
    """The attribute's current value and, when it changed in this flush, its old one."""
    hist = inspect(obj).attrs[name].history
    values = [*hist.added, *hist.unchanged, *hist.deleted]
    return [v for v in values if v is not None] or [None]


def _changed(obj: Any, names: Sequence[str]) -> bool:
    state = inspect(obj)
    return bool(state.pending or state.deleted or any(state.attrs[n].history.has_changes() for n in names))


_SESSION_FIELDS = ("started_at", "ended_at", "person_id", "trainer_id", "mode", "run_s", "machine_id")
_JOB_FIELDS = ("started_at", "finished_at", "status", "filament_g", "session_id", "machine_id")
_BOOKING_FIELDS = ("starts_at", "ends_at", "status", "no_show", "person_id", "machine_id")
_DOWNTIME_FIELDS = ("started_at", "ended_at", "kind", "machine_id")


def _spans(obj: Any, start: str, end: str, now: datetime) -> Iterator[tuple[int, datetime, datetime]]:
    """(machine, start, end) of the object before and after this flush."""
    starts = [v for v in _history(obj, start) if v is not None]
    ends = [v for v in _history(obj, end) if v is not None]
    if not starts:
        starts = ends
    if not starts:
        return
    first = min(starts)
    last = max([*ends, *starts]) if ends and None not in _history(obj, end) else now
    for machine_id in _history(obj, "machine_id"):
        if machine_id is not None:
            yield machine_id, first, max(first, last)


@event.listens_for(Session, "before_flush")
def _note_usage_changes(session: Session, _ctx: Any, _instances: Any) -> None:
    """Collect what this flush changes about machine use (and open/close downtime periods)."""
    now = utcnow()
    spans: list[tuple[int, datetime, datetime]] = session.info.setdefault("usage_spans", [])
    # (site, machine or None for all the site's machines, local day or None for today)
    closed: list[tuple[int, int | None, date | None]] = session.info.setdefault("usage_closed", [])
    with session.no_autoflush:
        for obj in (*session.new, *session.dirty, *session.deleted):
            if isinstance(obj, MachineSession) and _changed(obj, _SESSION_FIELDS):
                spans.extend(_spans(obj, "started_at", "ended_at", now))
            elif isinstance(obj, Job) and _changed(obj, _JOB_FIELDS):
                for when in (*_history(obj, "started_at"), *_history(obj, "finished_at")):
                    if when is not None and obj.machine_id is not None:
                        spans.append((obj.machine_id, when, when))
            elif isinstance(obj, Booking) and _changed(obj, _BOOKING_FIELDS):
                spans.extend(_spans(obj, "starts_at", "ends_at", now))
            elif isinstance(obj, MachineDowntime) and _changed(obj, _DOWNTIME_FIELDS):
                spans.extend(_spans(obj, "started_at", "ended_at", now))
            elif isinstance(obj, ClosedDay) and _changed(obj, ("day", "machine_id", "site_id")):
                for day in _history(obj, "day"):
                    if day is not None:
                        closed.append((obj.site_id, obj.machine_id, day))
            elif isinstance(obj, OpeningHours) and _changed(
                obj, ("weekday", "opens", "closes", "machine_id")
            ):
                # New hours count from today on; past days keep the hours they had (rebuild to redo).
                closed.append((obj.site_id, obj.machine_id, None))
            elif isinstance(obj, Machine) and obj not in session.new and obj not in session.deleted:
                if inspect(obj).attrs["status"].history.has_changes():
                    spans.extend(_status_downtime(session, obj, now))
            elif (
                isinstance(obj, Device)
                and obj not in session.deleted
                and obj.machine_id is not None
                and inspect(obj).attrs["online"].history.has_changes()
            ):
                at = obj.last_seen or now
                spans.extend(set_offline(session, obj.machine_id, not obj.online, at))


def _open_downtime(session: Session, machine_id: int, offline: bool) -> list[MachineDowntime]:
    kinds = [DowntimeKind.OFFLINE] if offline else [DowntimeKind.MAINTENANCE, DowntimeKind.OUT_OF_ORDER]
    found = list(
        session.scalars(
            select(MachineDowntime).where(
                MachineDowntime.machine_id == machine_id,
                MachineDowntime.ended_at.is_(None),
                MachineDowntime.kind.in_(kinds),
            )
        )
    )
    # Periods opened earlier in this unit of work are not in the database yet.
    found += [
        o
        for o in session.new
        if isinstance(o, MachineDowntime)
        and o.machine_id == machine_id
        and o.ended_at is None
        and o.kind in kinds
        and o not in found
    ]
    return found


def set_offline(
    session: Session, machine_id: int, offline: bool, at: datetime
) -> list[tuple[int, datetime, datetime]]:
    """Open (or close) the machine's offline period; returns the spans it touched."""
    spans: list[tuple[int, datetime, datetime]] = []
    current = _open_downtime(session, machine_id, offline=True)
    if offline and not current:
        session.add(MachineDowntime(machine_id=machine_id, kind=DowntimeKind.OFFLINE, started_at=at))
        spans.append((machine_id, at, at))
    elif not offline:
        for period in current:
            period.ended_at = max(at, period.started_at)
            spans.append((machine_id, period.started_at, period.ended_at))
    return spans


def _status_downtime(
    session: Session, machine: Machine, now: datetime
) -> list[tuple[int, datetime, datetime]]:
    """An admin took the machine out of service (or back): open or close its downtime period."""
    kind = {
        MachineStatus.MAINTENANCE: DowntimeKind.MAINTENANCE,
        MachineStatus.DISABLED: DowntimeKind.OUT_OF_ORDER,
    }.get(MachineStatus(machine.status))
    spans: list[tuple[int, datetime, datetime]] = []
    for period in _open_downtime(session, machine.id, offline=False):
        if period.kind == kind:
            return spans  # already open (status set again to the same value)
        period.ended_at = max(now, period.started_at)
        spans.append((machine.id, period.started_at, period.ended_at))
    if kind is not None:
        session.add(MachineDowntime(machine_id=machine.id, kind=kind, started_at=now))
        spans.append((machine.id, now, now))
    return spans


@event.listens_for(Session, "after_flush")
def _mark_usage_dirty(session: Session, _ctx: Any) -> None:
    spans: list[tuple[int, datetime, datetime]] = session.info.pop("usage_spans", [])
    closed: list[tuple[int, int | None, date | None]] = session.info.pop("usage_closed", [])
    if not spans and not closed:
        return
    conn = session.connection()
    machines = {m for m, _s, _e in spans} | {m for _s, m, _d in closed if m is not None}
    sites = {s for s, m, _d in closed if m is None}
    zones: dict[int, str] = {}
    by_site: dict[int, list[int]] = defaultdict(list)
    query = select(Machine.id, Machine.site_id, Site.timezone).join(Site, Site.id == Machine.site_id)
    query = query.where(or_(Machine.id.in_(machines or [-1]), Machine.site_id.in_(sites or [-1])))
    for machine_id, site_id, tz in conn.execute(query):
        zones[machine_id] = tz
        by_site[site_id].append(machine_id)
    pairs: set[tuple[int, date]] = set()
    for machine_id, start, end in spans:
        if machine_id in zones:
            pairs.update((machine_id, d) for d in local_days(start, end, zones[machine_id]))
    now = utcnow()
    todays: set[tuple[int, date]] = set()
    for site_id, only, day in closed:
        for m in [only] if only is not None else by_site.get(site_id, []):
            if m in zones:
                if day is None:
                    todays.add((m, now.astimezone(ZoneInfo(zones[m])).date()))
                else:
                    pairs.add((m, day))
    if todays:
        # New opening hours matter only where today is computed already; elsewhere the refresh
        # marks today anyway (and reloading an unchanged lab file then leaves no trace).
        have = conn.execute(
            select(MachineDayStats.machine_id, MachineDayStats.day).where(
                MachineDayStats.machine_id.in_(sorted({m for m, _d in todays})),
                MachineDayStats.day.in_(sorted({d for _m, d in todays})),
            )
        )
        pairs.update(todays & {(m, d) for m, d in have})
    # Written at commit, not now: the queue's rows are the last thing a transaction locks.
    # A booking holds its machine's row (booking_seq) and then marks the day; an ingestion
    # marking the same day before it updates that machine's live state would wait for the
    # booking while the booking waits for its mark: a deadlock (seen on PostgreSQL).
    session.info.setdefault("usage_pending", set()).update(pairs)


@event.listens_for(Session, "before_commit")
def _write_usage_dirty(session: Session) -> None:
    if session.info.get("usage_pending") is None and not (session.new or session.dirty or session.deleted):
        return
    session.flush()  # the changes still pending mark their days now, not after this hook
    pairs: set[tuple[int, date]] = session.info.pop("usage_pending", set())
    if pairs:
        upsert_dirty(session.connection(), pairs, utcnow())


@event.listens_for(Session, "after_transaction_end")
def _forget_usage_dirty(session: Session, transaction: Any) -> None:
    # Only when the outermost transaction ends (a commit popped the marks already): a savepoint
    # rolled back inside it (a duplicate event in ingestion) keeps the marks of the rest.
    if transaction.parent is None:
        session.info.pop("usage_pending", None)
