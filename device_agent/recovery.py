"""A session the last run of the agent left open: carried on, or reported ended at its last mark.

:func:`left_open` finds it at start. The session keeper (:mod:`device_agent.sessions`) decides
what becomes of it (same boot, or the machine mid-job after a reboot: it carries on; else it was
lost with the power); this module does the arithmetic. :func:`resumed` rebuilds the open
session's timers on this boot's clock, :func:`lost_events` reports a lost session (and its job)
ended at the last alive mark. The agent never invents times: it knows no more than that mark.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from device_agent.clock import mono_s
from device_agent.jobs import Job, JobTracker
from device_agent.outbox import Outbox
from device_agent.session_rules import Session
from device_agent.storage import OpenSession, StateFile
from werkbank_protocol import parse_ts
from werkbank_protocol.messages import Event, SessionEnded

log = logging.getLogger(__name__)


def left_open(outbox: Outbox, legacy: StateFile) -> OpenSession | None:
    """The session left open on disk; moves one from an older agent's ``state.json`` first."""
    if legacy.path.exists():
        old = legacy.load().session
        if old is not None and outbox.open_session() is None:
            log.info("taking the open session %s over from %s", old.id, legacy.path)
            outbox.record([], session=old)
        legacy.remove()
    return outbox.open_session()


def resumed(record: OpenSession, now: datetime, mono: float, same_boot: bool) -> Session:
    """The open session ``record`` as this process carries it on (at wall clock ``now``, boot clock
    ``mono``); a job it had is adopted (the monitor confirms it, or the agent reports it ended).

    Same boot: the boot clock ran on, so its readings hold. After a reboot the machine was mid-job
    and the relay held its power while no agent ran: the gap since the last alive mark is unlocked
    time, and only the wall clock spans it.
    """
    job = record.job
    if same_boot:
        assert record.started_mono is not None
        log.warning(
            "session %s of %s was open when the agent stopped; this boot goes on: carrying on "
            "with the relay closed",
            record.id,
            record.badge,
        )
        started_mono = record.started_mono
        active_mono = record.active_mono if record.active_mono is not None else mono
        until_mono = record.until_mono
        job_mono = job.started_mono if job is not None else None
    else:
        log.warning(
            "session %s of %s was open before a reboot and the machine is mid-job: carrying on",
            record.id,
            record.badge,
        )
        gap = max(0.0, (now - parse_ts(record.heartbeat)).total_seconds())
        at_mark = mono - gap  # the last alive mark on this boot's clock
        started_mono = at_mark - record.unlocked_s
        active_mono = mono
        until_mono = None
        if record.until is not None:
            left = (
                record.until_mono - record.alive_mono
                if record.until_mono is not None and record.alive_mono is not None
                else (parse_ts(record.until) - parse_ts(record.heartbeat)).total_seconds()
            )
            until_mono = at_mark + left
        job_mono = None
        if job is not None:
            job_mono = (
                at_mark - (record.alive_mono - job.started_mono)
                if job.started_mono is not None and record.alive_mono is not None
                else mono - max(0.0, (now - parse_ts(job.started)).total_seconds())
            )
    session = Session(
        record=record,
        started_mono=started_mono,
        until_mono=until_mono,
        until_reason=record.until_reason,
        active_mono=active_mono,
        last_tick_mono=mono,
        # The gap's run time is not counted: nobody measured it.
        run_s=record.run_s,
        lock_pending=record.lock_pending,
    )
    if job is not None:
        session.job = Job(record=job, started_mono=job_mono if job_mono is not None else mono, adopting=True)
    return session


def lost_events(record: OpenSession) -> list[Event]:
    """A session lost with the power, reported ended (``power_loss_recovered``) at its last alive mark."""
    log.warning(
        "session %s of %s was open before a reboot; reporting it ended at its last alive mark %s",
        record.id,
        record.badge,
        record.heartbeat,
    )
    events: list[Event] = []
    job_end = JobTracker.lost(record)
    if job_end is not None:
        events.append(job_end)
    events.append(
        SessionEnded(
            v=1,
            id=str(uuid.uuid4()),
            ts=record.heartbeat,
            session=record.id,
            reason="power_loss_recovered",
            unlocked_s=record.unlocked_s,
            run_s=record.run_s,
            boot=record.boot,
            mono_s=mono_s(record.alive_mono),
        )
    )
    return events
