"""Jobs at the machine: a print or cut inside a session, as the machine monitor reports it.

:class:`JobTracker` turns the monitor's ``job started`` and ``job finished`` into the session's
``job_started`` and ``job_finished`` events, carries a job on across an agent restart (same job id),
and reports a job it could not see end as ``failed``. Whether a job may run at all (a job without a
session is a fault) and what happens to the session is the agent's: this module only keeps the job.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from device_agent.clock import Clock, mono_s
from device_agent.hardware.base import JobStatus, MonitorJobFinished, MonitorJobStarted
from device_agent.storage import OpenJob, OpenSession
from werkbank_protocol import format_ts, parse_ts
from werkbank_protocol.messages import Event, JobFinished, JobStarted

log = logging.getLogger(__name__)


@dataclass
class Job:
    """The job running in the open session."""

    record: OpenJob
    started_mono: float
    # Restored from state.json at a restart and not yet seen again by the monitor.
    adopting: bool = False
    # Run time the monitor did not see (the job ran before this process started).
    unseen_s: float = 0.0


class JobTracker:
    """Makes the events of the open session's jobs, stamped with this boot's clock."""

    def __init__(self, clock: Clock, boot: str | None) -> None:
        self.clock = clock
        self.boot = boot

    def started(
        self, session_id: str, job: Job | None, event: MonitorJobStarted
    ) -> tuple[Job | None, list[Event]]:
        """The session's job after the monitor saw one start, and the events to store (none when
        the job is the one that ran across a restart)."""
        mono = self.clock.monotonic()
        if job is not None and job.adopting:
            # The job that ran when the agent restarted: same job id, nothing new to report.
            job.adopting = False
            job.unseen_s = max(0.0, mono - job.started_mono - event.elapsed_s)
            log.info("job %s carries on after the restart", job.record.id)
            return job, []
        events: list[Event] = []
        if job is not None:
            log.warning(
                "a new job began before the end of job %s was reported; ending that one", job.record.id
            )
            events.append(self.finished(session_id, job, "failed", mono - job.started_mono))
        record = OpenJob(
            id=str(uuid.uuid4()),
            kind=event.kind,
            file=event.file,
            estimated_s=event.estimated_s,
            started=format_ts(self.clock.now()),
            start_event=str(uuid.uuid4()),
            started_mono=mono - event.elapsed_s,
        )
        # On record with its event, as a session start is: a restart carries on with this job id.
        events.append(self.started_event(session_id, record, self.boot, mono))
        return Job(record=record, started_mono=mono - event.elapsed_s), events

    def finished_by_monitor(self, session_id: str, job: Job, event: MonitorJobFinished) -> JobFinished:
        """The end the monitor saw, with the run time it did not see (before a restart) added."""
        return self.finished(
            session_id,
            job,
            event.status,
            event.duration_s + job.unseen_s,
            event.filament_mm,
            event.filament_g,
        )

    @staticmethod
    def started_event(session_id: str, record: OpenJob, boot: str | None, mono: float | None) -> JobStarted:
        return JobStarted(
            v=1,
            id=record.start_event,
            ts=record.started,
            session=session_id,
            job=record.id,
            kind=record.kind,
            file=record.file[:500] if record.file else None,
            estimated_s=None if record.estimated_s is None else max(record.estimated_s, 0.0),
            boot=boot,
            mono_s=mono_s(mono),
        )

    def finished(
        self,
        session_id: str,
        job: Job,
        status: JobStatus,
        duration_s: float,
        filament_mm: float | None = None,
        filament_g: float | None = None,
    ) -> JobFinished:
        """The end of ``job``, now; the caller drops the job from its session and stores the event."""
        return JobFinished(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(self.clock.now()),
            session=session_id,
            job=job.record.id,
            status=status,
            duration_s=round(max(duration_s, 0.0), 3),
            filament_mm=None if filament_mm is None else max(filament_mm, 0.0),
            filament_g=None if filament_g is None else max(filament_g, 0.0),
            boot=self.boot,
            mono_s=mono_s(self.clock.monotonic()),
        )

    @staticmethod
    def lost(record: OpenSession) -> JobFinished | None:
        """The job of a session lost with the power, reported ``failed`` at the last alive mark."""
        job = record.job
        if job is None:
            return None
        # A power loss mid-job spoils the job; the agent knows no more than the last mark.
        ran = (
            record.alive_mono - job.started_mono
            if record.alive_mono is not None and job.started_mono is not None
            else (parse_ts(record.heartbeat) - parse_ts(job.started)).total_seconds()
        )
        return JobFinished(
            v=1,
            id=str(uuid.uuid4()),
            ts=record.heartbeat,
            session=record.id,
            job=job.id,
            status="failed",
            duration_s=round(max(0.0, ran), 3),
            boot=record.boot,
            mono_s=mono_s(record.alive_mono),
        )
