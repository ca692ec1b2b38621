"""What a device may claim: its events checked against the server's own decisions and sane bounds.

Devices are untrusted (docs/security.md): a Pi's SD card can be pulled and its password used
by someone else. Ingestion (``server.services.ingest``) asks this module, before it changes
anything, whether an event is believable:

* a session belongs to the device that reported it first, and a job to the session (and so the
  device) that reported it first (``foreign_session``, ``foreign_job``);
* the server's decision for a session (the ``access_decisions`` row whose session id the server
  handed out in ``auth/resp``) names its person, mode and trainer; the device's event does not;
* times and quantities stay inside the session's wall-clock span and sane maxima
  (``implausible_value``);
* faults and deferred locks, which the server cannot check against anything, are bounded per
  device: a fault repeated with the same code soon after is counted onto the stored one, and
  beyond a rate the rest waits (``rate_limited``).

A :class:`Refusal` is final: the event can never become true, so the bridge acknowledges it (the
agent stops re-sending it) and stores nothing. A plain ProtocolError (``rate_limited``) is not
acknowledged: the agent re-sends it later and it is stored once the device's rate allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from server.models import AccessDecision, Device, Job, Machine, MachineSession, StoredEvent
from werkbank_protocol import ProtocolError
from werkbank_protocol.messages import Event, Fault, JobFinished, JobStarted, SessionEnded, SessionStarted

# No unlock lasts longer than a week (the longest print still fits): a bound on every duration.
MAX_SESSION_S = 7 * 24 * 3600.0
# What a true report may exceed its span by: the agent's monotonic clock against the server's
# (or its own wall clock, which NTP may step while a session runs offline).
SPAN_SLACK_S = 600.0
# A device's clock may run ahead of the server's by this much at most; a later time would
# pin the machine's live state to the future.
MAX_CLOCK_AHEAD = timedelta(days=1)
# Per job: 10 km of filament is some 30 kg of 1.75 mm, far beyond any one print.
MAX_FILAMENT_MM = 10_000_000.0
MAX_FILAMENT_G = 50_000.0
# run_s and unlocked_s come from the same monotonic clock; only rounding may part them.
RUN_SLACK_S = 1.0

# A fault with the same code as one stored this recently is counted onto that one.
FAULT_REPEAT_WINDOW = timedelta(minutes=10)
# Events the server cannot check against anything, stored per device and window at most.
UNCHECKED_TYPES = ("fault", "lock_deferred")
UNCHECKED_WINDOW = timedelta(hours=1)
UNCHECKED_MAX = 100


class Refusal(ProtocolError):
    """An event refused for good (it contradicts the server's facts or is implausible): the
    bridge acknowledges it so the agent stops re-sending it, and nothing is stored."""


@dataclass(frozen=True)
class Decided:
    """The server's own decision for a session: the allowing ``access_decisions`` row."""

    device_id: str
    person_id: int | None
    badge_uid: str
    mode: str
    trainer_id: int | None
    decided_at: datetime


def decision_for(db: Session, session_id: str) -> Decided | None:
    """The decision that handed out ``session_id``, if the server made one."""
    row = db.execute(
        select(
            AccessDecision.device_id,
            AccessDecision.person_id,
            AccessDecision.badge_uid,
            AccessDecision.mode,
            AccessDecision.trainer_id,
            AccessDecision.decided_at,
        )
        .where(AccessDecision.session_id == session_id, AccessDecision.decision == "allow")
        .order_by(AccessDecision.decided_at)
        .limit(1)
    ).first()
    if row is None:
        return None
    return Decided(*row)


def check(
    db: Session, device: Device, machine: Machine, event: Event, ts: datetime, now: datetime
) -> Decided | None:
    """Refuse ``event`` (:class:`Refusal`) unless the device may say it; change nothing.

    Returns the server's decision for the event's session, when there is one.
    """
    if ts > now + MAX_CLOCK_AHEAD:
        raise Refusal(
            "implausible_value",
            f"event time {ts.isoformat()} is more than {MAX_CLOCK_AHEAD} ahead of the server's clock",
        )
    if event.session is None:
        return None
    row = db.get(MachineSession, event.session)
    if row is not None and row.device_id != device.id:
        raise Refusal(
            "foreign_session",
            f"session {event.session} belongs to device {row.device_id!r}, not {device.id!r}",
        )
    decided = decision_for(db, event.session)
    if decided is not None and decided.device_id != device.id:
        raise Refusal(
            "foreign_session",
            f"session {event.session} was handed out to device {decided.device_id!r}, not {device.id!r}",
        )
    match event:
        case SessionStarted():
            if row is not None and row.started_at is not None:
                # The agent starts a session once (a re-sent start has the same event id); a second
                # start could rewrite who the session was for.
                raise Refusal("implausible_value", f"session {event.session} has started already")
            ended = row.ended_at if row is not None else None
            if decided is None and ended is not None and row is not None and row.unlocked_s is not None:
                # Its end came first (a replayed outbox): both times are the device's, so they must agree.
                _within("unlocked_s", row.unlocked_s, (ended - ts).total_seconds())
        case SessionEnded():
            _bounded("unlocked_s", event.unlocked_s)
            _bounded("run_s", event.run_s)
            if event.run_s > event.unlocked_s + RUN_SLACK_S:
                raise Refusal(
                    "implausible_value",
                    f"run_s {event.run_s:g} is more than unlocked_s {event.unlocked_s:g}: "
                    "the machine cannot work longer than it is unlocked",
                )
            _within("unlocked_s", event.unlocked_s, _span(decided, row, ts, now))
        case JobStarted():
            _own_job(db, machine, event.session, event.job)
            if event.estimated_s is not None:
                _bounded("estimated_s", event.estimated_s)
        case JobFinished():
            _own_job(db, machine, event.session, event.job)
            _bounded("duration_s", event.duration_s)
            _within("duration_s", event.duration_s, _span(decided, row, ts, now))
            _bounded("filament_mm", event.filament_mm, MAX_FILAMENT_MM)
            _bounded("filament_g", event.filament_g, MAX_FILAMENT_G)
        case _:
            pass
    return decided


def _span(decided: Decided | None, row: MachineSession | None, ts: datetime, now: datetime) -> float | None:
    """Seconds the session can have lasted by the time of this report, or None when unknown.

    With a server decision both ends are the server's clock (decided, received), so a device's
    wrong clock cannot stretch it; without one, both are the device's own clock.
    """
    if decided is not None:
        return (now - decided.decided_at).total_seconds()
    if row is not None and row.started_at is not None:
        return (ts - row.started_at).total_seconds()
    return None


def _bounded(name: str, value: float | None, limit: float = MAX_SESSION_S) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= limit):
        raise Refusal("implausible_value", f"{name} {value:g} is outside 0 … {limit:g}")


def _within(name: str, value: float, span: float | None) -> None:
    if span is not None and value > span + SPAN_SLACK_S:
        raise Refusal(
            "implausible_value",
            f"{name} {value:g} s is longer than the session has lasted ({max(span, 0.0):.0f} s)",
        )


def _own_job(db: Session, machine: Machine, session_id: str, job_id: str) -> None:
    """A job stays with the session (and so the device and machine) that first reported it."""
    owner = db.execute(select(Job.session_id, Job.machine_id).where(Job.id == job_id)).first()
    if owner is not None and (owner.session_id != session_id or owner.machine_id != machine.id):
        raise Refusal("foreign_job", f"job {job_id} belongs to session {owner.session_id}, not {session_id}")


# -- floods ----------------------------------------------------------------------------------------


def count_repeat(db: Session, device: Device, fault: Fault, ts: datetime, now: datetime) -> bool:
    """Count ``fault`` onto the device's stored fault with the same code from the last minutes,
    if there is one (True); a flapping reader then fills one row, not thousands."""
    recent = db.scalars(
        select(StoredEvent)
        .where(
            StoredEvent.device_id == device.id,
            StoredEvent.type == "fault",
            StoredEvent.received_at >= now - FAULT_REPEAT_WINDOW,
        )
        .order_by(StoredEvent.received_at.desc())
        .limit(UNCHECKED_MAX)
    ).all()
    same = next((e for e in recent if e.payload.get("code") == fault.code), None)
    if same is None:
        return False
    # In SQL, so that two bridges counting at once both count.
    db.execute(
        update(StoredEvent)
        .where(StoredEvent.id == same.id)
        .values(
            repeats=StoredEvent.repeats + 1,
            last_ts=case(
                (StoredEvent.last_ts.is_(None) | (StoredEvent.last_ts < ts), ts),
                else_=StoredEvent.last_ts,
            ),
        )
        .execution_options(synchronize_session=False)
    )
    return True


def check_rate(db: Session, device: Device, now: datetime) -> None:
    """ProtocolError ``rate_limited`` when the device stored its share of unchecked events
    (faults, deferred locks) in the last window. Not final: the agent re-sends it later."""
    stored = db.scalar(
        select(func.count())
        .select_from(StoredEvent)
        .where(
            StoredEvent.device_id == device.id,
            StoredEvent.received_at >= now - UNCHECKED_WINDOW,
            StoredEvent.type.in_(UNCHECKED_TYPES),
        )
    )
    if (stored or 0) >= UNCHECKED_MAX:
        raise ProtocolError(
            "rate_limited",
            f"device {device.id!r} sent {stored} faults and deferred locks within {UNCHECKED_WINDOW}; "
            "the rest waits (not acknowledged, the agent re-sends it later)",
        )
