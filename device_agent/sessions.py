"""The session at the machine, from its start to its end: the relay, the outbox and the alive marks.

:class:`SessionKeeper` holds the open session (at most one). It opens one (on record with its
``session_started`` before the relay closes), ends one (on record with its ``session_ended``
before the relay opens), carries out a lock when :class:`~device_agent.session_rules.SessionRules`
says it is due (or sends ``lock_deferred`` while a job runs), books the machine monitor's jobs
into it (:class:`~device_agent.jobs.JobTracker`), marks it alive every ``alive_s``, and at start
carries on or reports a session the last run left open (:mod:`device_agent.recovery`).

Every event goes to the outbox in the same SQLite transaction as the session's new state, and is
published after that. What the agent shows and says around it (the lights for a state, ``status``,
telemetry) stays the coordinator's: it is told through the callables it passes in.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Literal

import msgspec

from device_agent.clock import Clock, mono_s
from device_agent.hardware.base import (
    Indicators,
    JobStatus,
    MachineMonitor,
    MonitorEvent,
    MonitorJobFinished,
    MonitorJobStarted,
    Relay,
)
from device_agent.jobs import JobTracker
from device_agent.link import Link
from device_agent.outbox import Outbox
from device_agent.recovery import lost_events, resumed
from device_agent.session_rules import Session, SessionRules
from device_agent.storage import OpenSession
from werkbank_protocol import format_ts
from werkbank_protocol.messages import (
    EndReason,
    Event,
    JobFinished,
    LockDeferred,
    Mode,
    SessionEnded,
    SessionStarted,
    encode,
)

log = logging.getLogger(__name__)


class SessionKeeper:
    """The open session and every step that changes it (see the module docstring).

    ``show_state`` sets the lights for the agent's state, ``publish_status`` sends ``status``,
    ``telemetry_at`` says when the next telemetry is due (a session opened or resumed).
    """

    def __init__(
        self,
        clock: Clock,
        boot: str | None,
        outbox: Outbox,
        relay: Relay,
        monitor: MachineMonitor,
        indicators: Indicators,
        link: Link,
        rules: SessionRules,
        show_state: Callable[[], None],
        publish_status: Callable[[], None],
        telemetry_at: Callable[[float], None],
        alive_s: float,
        telemetry_s: float,
        resume_wait_s: float,
    ) -> None:
        self.clock = clock
        self.boot = boot
        self.outbox = outbox
        self.relay = relay
        self.monitor = monitor
        self.indicators = indicators
        self.link = link
        self.rules = rules
        self.jobs = JobTracker(clock, boot)
        self._show_state = show_state
        self._publish_status = publish_status
        self._telemetry_at = telemetry_at
        self.alive_s = alive_s
        self.telemetry_s = telemetry_s
        self.resume_wait_s = resume_wait_s
        self.current: Session | None = None
        self._next_alive = 0.0

    def busy(self) -> bool:
        """The machine is mid-job: cutting its power now would spoil work (see SessionRules.busy)."""
        return self.rules.busy(self.current, self.monitor.running())

    # ------------------------------------------------------------------ opening and ending

    def start(
        self,
        uid: str,
        session_id: str,
        offline: bool,
        until: str | None,
        until_mono: float | None,
        mode: Mode = "use",
        trainer_badge: str | None = None,
        until_reason: Literal["booking"] | None = None,
        ending: Session | None = None,
    ) -> None:
        """Open a session and close the relay. ``ending``: the open session this one takes over
        from (a trainer's, at a handover); it ends with reason ``tap_out`` in the same step."""
        prior = self._end_events(ending, "tap_out") if ending is not None else []
        now = format_ts(self.clock.now())
        mono = self.clock.monotonic()
        record = OpenSession(
            id=session_id,
            badge=uid,
            mode=mode,
            trainer_badge=trainer_badge,
            offline=offline,
            started=now,
            start_event=str(uuid.uuid4()),
            until=until,
            until_reason=until_reason if until else None,
            heartbeat=now,
            boot=self.boot,
            started_mono=mono,
            alive_mono=mono,
            active_mono=mono,
            until_mono=until_mono if until else None,
        )
        # On record, with its start event, before the relay closes: after SIGKILL the pin keeps
        # its level, and the next start must know that the session is open (see recover).
        stored = self._store([*prior, started_event(record)], session=record)
        self.relay.close()
        self.current = Session(
            record=record,
            started_mono=mono,
            until_mono=record.until_mono,
            until_reason=record.until_reason,
            active_mono=mono,
            last_tick_mono=mono,
        )
        self.indicators.unlocked()
        self._send_stored(stored)
        self._next_alive = mono + self.alive_s
        self._telemetry_at(mono + self.telemetry_s)
        self._publish_status()

    def lock_due(self, reason: EndReason, force: bool = False) -> bool:
        """A lock is due for ``reason``; True if the relay opened now.

        Never mid-job (:meth:`SessionRules.lock`): while the machine is busy the lock waits.
        ``lock_deferred`` goes out once, the relay stays closed, the lights show "lock pending",
        and :meth:`tick` locks with this (the first) reason when the job ends. Only ``force`` (an
        admin's emergency stop through a ``lock`` command) cuts power mid-job; the job is then
        reported cancelled.
        """
        session = self.current
        if session is None:
            return False
        busy = self.busy()
        outcome = self.rules.lock(session, reason, force, busy)
        if outcome == "now":
            if force and busy:
                log.warning("forced lock (%s): cutting the power mid-job", reason)
            self.end(reason)
            return True
        if outcome == "deferred":
            log.info("lock due (%s) while a job runs: the relay stays closed until it ends", reason)
            deferred = LockDeferred(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                session=session.record.id,
                why="job_running",
                boot=self.boot,
                mono_s=mono_s(self.clock.monotonic()),
            )
            self.persist(session, [deferred])
            self._show_state()
            self._publish_status()
        return False

    def end(self, reason: EndReason) -> None:
        """End the open session and open the relay."""
        session = self.current
        assert session is not None
        events = self._end_events(session, reason)
        try:
            # The end and its events are on record in one step before the relay opens: a crash
            # between the two leaves no open session, so the next start makes the relay open.
            # The other order would find the session open after such a crash and close the relay
            # again on a machine its user had just left. (A disk write is milliseconds; the
            # relay is never the only safety stop.)
            stored = self._store(events, close=True)
        finally:
            self.relay.open()
        self._send_stored(stored)
        self._show_state()
        self._publish_status()

    def _end_events(self, session: Session, reason: EndReason) -> list[Event]:
        """End ``session`` in memory; its ``session_ended`` (after a ``job_finished`` when a
        forced lock cuts a job) for the caller to store."""
        self.rules.window = None
        self.current = None
        mono = self.clock.monotonic()
        if self.monitor.running():
            session.run_s += mono - session.last_tick_mono
        events: list[Event] = []
        if session.job is not None:
            # Only a forced lock gets here mid-job: the power is gone, the job did not complete.
            events.append(self._end_job(session, "cancelled", mono - session.job.started_mono))
        events.append(
            SessionEnded(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                session=session.record.id,
                reason=reason,
                unlocked_s=round(max(mono - session.started_mono, 0.0), 3),
                run_s=round(session.run_s, 3),
                boot=self.boot,
                mono_s=mono_s(mono),
            )
        )
        return events

    # ------------------------------------------------------------------ while it is open

    def tick(self, mono: float) -> None:
        """Count run time, note when the machine was last busy, and lock when the rules say so."""
        session = self.current
        if session is None:
            return
        if self.monitor.running():
            session.run_s += mono - session.last_tick_mono
        busy = self.busy()
        if busy:
            session.active_mono = mono
        session.last_tick_mono = mono
        due = self.rules.lock_at_tick(session, mono, busy)
        if due is not None:
            reason, job_ended = due
            if job_ended:
                log.info("the job ended: the deferred lock (%s) happens now", reason)
                self.end(reason)
            else:
                self.lock_due(reason)

    def mark_alive_if_due(self, mono: float) -> None:
        if self.current is not None and mono >= self._next_alive:
            self.mark_alive(mono)

    def mark_alive(self, mono: float) -> None:
        """Note on disk that the session is still open now, with its times: a power loss is
        reported ended at the last mark, so ``alive_s`` bounds the hours lost."""
        session = self.current
        if session is None:
            return
        self._next_alive = mono + self.alive_s
        self.persist(session)

    def job_started(self, event: MonitorJobStarted) -> bool:
        """The monitor saw a job start; False when no session is open to book it to."""
        session = self.current
        if session is None:
            return False
        session.job, events = self.jobs.started(session.record.id, session.job, event)
        if events:
            self.persist(session, events)
        return True

    def job_finished(self, event: MonitorJobFinished) -> bool:
        """The monitor saw a job end; False when the job belongs to no session (started outside
        one, or already reported ended by a forced lock)."""
        session = self.current
        job = session.job if session is not None else None
        if session is None or job is None or job.adopting:
            log.info("the machine finished a job that belongs to no session (%s)", event.status)
            return False
        session.job = None
        self.persist(session, [self.jobs.finished_by_monitor(session.record.id, job, event)])
        return True

    def _end_job(self, session: Session, status: JobStatus, duration_s: float) -> JobFinished:
        """The end of the session's job (which it no longer has); the caller stores the event."""
        job = session.job
        assert job is not None
        session.job = None
        return self.jobs.finished(session.record.id, job, status, duration_s)

    # ------------------------------------------------------------------ on record

    def persist(self, session: Session, events: Sequence[Event] = ()) -> None:
        """Write the session as it is now (times, job, pending lock), with ``events``, in one step:
        a restart carries on from here, and a power loss is reported ended here."""
        mono = self.clock.monotonic()
        job = session.job
        if job is not None:
            job.record = msgspec.structs.replace(job.record, started_mono=job.started_mono)
        session.record = msgspec.structs.replace(
            session.record,
            job=None if job is None else job.record,
            lock_pending=session.lock_pending,
            heartbeat=format_ts(self.clock.now()),
            unlocked_s=round(max(mono - session.started_mono, 0.0), 3),
            run_s=round(session.run_s, 3),
            boot=self.boot,
            started_mono=session.started_mono,
            alive_mono=mono,
            active_mono=session.active_mono,
            until_mono=session.until_mono,
        )
        self._send_stored(self._store(events, session=session.record))

    def emit(self, event: Event) -> None:
        """Store an event in the outbox, then publish it."""
        self._send_stored(self._store([event]))

    def _store(
        self, events: Sequence[Event], session: OpenSession | None = None, close: bool = False
    ) -> list[tuple[str, bytes]]:
        """Put ``events`` in the outbox and store or close the open session, in one transaction."""
        stored = [(event.id, encode(event)) for event in events]
        self.outbox.record(stored, session, close=close)
        return stored

    def _send_stored(self, stored: Sequence[tuple[str, bytes]]) -> None:
        for event_id, payload in stored:
            self.link.send_event(event_id, payload)

    # ------------------------------------------------------------------ after a crash or a power loss

    def recover(self, record: OpenSession | None) -> list[MonitorEvent]:
        """Deal with the session ``record`` that was open when the agent last stopped; the
        monitor's news it read to decide, for the caller to act on.

        Same boot (the agent crashed, was killed or restarted, the machine kept running): the
        relay was made closed again at once (``Agent.__init__``) and the session carries on,
        timed on the boot clock from its real start; the person's next tap ends it. A job it
        had is carried on when the monitor still sees it, else reported ended unseen.

        Another boot (a power loss, a reboot), or a record without boot readings (an older
        agent's): the boot-clock readings mean nothing now. If the machine is mid-job the session
        carries on (timed by the wall clock across the gap); otherwise it is reported ended at its
        last alive mark (``power_loss_recovered``) and the relay opens.
        """
        if record is None:
            return []
        if record.started_mono is None:
            # An older agent wrote its record and events in two steps: a crash in between may
            # have lost the start. The same ids again: a no-op here, a duplicate the server drops.
            events: list[Event] = [started_event(record)]
            if record.job is not None:
                events.append(self.jobs.started_event(record.id, record.job, None, None))
            self._store(events)
        same_boot = self.boot is not None and record.boot == self.boot
        if same_boot and record.job is None:
            self._resume(record, same_boot=True)
            return []
        if not self.monitor.wait_ready(self.resume_wait_s):
            log.warning("the machine monitor gave no reading within %g s", self.resume_wait_s)
        events_seen = self.monitor.poll()
        mid_job = self.monitor.running() or any(isinstance(e, MonitorJobStarted) for e in events_seen)
        if same_boot:
            self._resume(record, same_boot=True)
            session = self.current
            if session is not None and session.job is not None and not mid_job:
                # The job ended while no agent watched: its outcome is unknown, as after a power
                # loss, and it ran at most until the last alive mark.
                job = session.job
                log.warning("job %s ended while the agent was down: reporting it failed", job.record.id)
                last_seen = record.alive_mono if record.alive_mono is not None else job.started_mono
                ran = last_seen - job.started_mono
                self.persist(session, [self._end_job(session, "failed", ran)])
        elif mid_job:
            self._resume(record, same_boot=False)
        else:
            try:
                self._store(lost_events(record), close=True)
            finally:
                # The relay was made closed in case the session carried on; it does not.
                self.relay.open()
        return events_seen

    def _resume(self, record: OpenSession, same_boot: bool) -> None:
        mono = self.clock.monotonic()
        self.current = resumed(record, self.clock.now(), mono, same_boot)
        if not self.relay.is_closed:
            self.relay.close()  # a relay passed in by the caller; ours was made closed
        self.mark_alive(mono)
        self._telemetry_at(mono)


def started_event(record: OpenSession) -> SessionStarted:
    """The ``session_started`` of the open session ``record``."""
    return SessionStarted(
        v=1,
        id=record.start_event,
        ts=record.started,
        session=record.id,
        badge=record.badge,
        offline=record.offline,
        mode=record.mode,
        trainer_badge=record.trainer_badge,
        boot=record.boot,
        mono_s=mono_s(record.started_mono),
    )
