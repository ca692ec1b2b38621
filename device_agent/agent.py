"""The device agent: the coordinator at one machine. A tapped badge → the server's decision (or the
allow-list's) → the relay → events.

Two threads do the work. paho's network thread receives messages; apart from an
``auth/resp`` (which wakes the tap waiting for it) each one becomes a job for the main
loop, so every decision, relay switch, indicator change and file write happens in the
main loop, one at a time. The main loop polls the reader at ``poll_hz`` and checks
timers (session end, alive mark, telemetry, outbox re-send) and the machine monitor's
news (jobs, faults, readings; the monitor reads the machine in its own thread) between polls.

:class:`Agent` wires the parts and does what they decide (relay, lights, messages, the outbox):

- :mod:`device_agent.link`: the MQTT link (connection, subscriptions, the auth request and its
  answer, acks, re-sending the outbox with back-off);
- :mod:`device_agent.session_rules`: when a session locks (never mid-job unless forced: the lock
  waits, ``lock_deferred``), the timers, the tap-out grace and the trainer window;
- :mod:`device_agent.jobs`: the session's jobs from the machine monitor's news;
- :mod:`device_agent.recovery`: a session the last run left open, carried on or reported lost;
- :mod:`device_agent.health`: the ``status`` and ``telemetry`` it sends (outbox and allow-list health);
- :mod:`device_agent.texts`: what the agent says at the machine by itself.

Every event is written to the outbox before it is published and stays there until the
server's ``ack`` names it. The open session is kept in the outbox's file too, written in one
transaction with its start and end events, and marked alive every ``ALIVE_S`` while open.
At start (:meth:`Agent._recover`) a session left open by a crashed or restarted agent carries
on when the machine has not rebooted since (same boot id): the relay is made closed again at
once and the person's next tap ends that same session, timed on the boot clock across both
processes. After a reboot (a power loss) it is reported ended at its last alive mark, unless
the machine is mid-job: the agent never invents times.

Durations and deadlines come from the boot clock (:mod:`device_agent.clock`), never from the
wall clock: the server's ``until`` is counted down from the moment its answer arrived.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec

from device_agent import agent_version
from device_agent.allowlist_store import AllowlistStore
from device_agent.cards import CardAuth
from device_agent.cards.secure import CardVerifier
from device_agent.clock import Clock, SystemClock, mono_s
from device_agent.config import AgentConfig
from device_agent.enrolment import EnrolmentStation
from device_agent.hardware import create_reader, create_switch
from device_agent.hardware.base import (
    Indicators,
    JobStatus,
    MachineMonitor,
    MonitorEvent,
    MonitorFault,
    MonitorFaultCleared,
    MonitorJobFinished,
    MonitorJobStarted,
    MonitorReadings,
    Reader,
    Relay,
)
from device_agent.hardware.gpio import configure_pin_factory, create_indicators
from device_agent.hardware.monitors import create_monitor
from device_agent.hardware.simulated import SimulatedReader
from device_agent.health import AllowlistAge, status_message, telemetry_message
from device_agent.jobs import JobTracker
from device_agent.link import Link
from device_agent.outbox import Outbox
from device_agent.recovery import lost_events, resumed
from device_agent.session_rules import Session, SessionRules, TrainerWindow, WindowMode, until_mono
from device_agent.storage import OpenSession, StateFile
from device_agent.texts import LOCAL_MESSAGES, ending_soon, trainer_greeting
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import key_bytes
from werkbank_protocol.messages import (
    BADGE_PATTERN,
    AuthReq,
    AuthResp,
    BadgeEnrolled,
    CheckinTap,
    Cmd,
    EndReason,
    Event,
    Fault,
    JobFinished,
    LockDeferred,
    MachineState,
    Mode,
    ReqMode,
    SessionEnded,
    SessionStarted,
    SimTap,
    decode_as,
    encode,
)
from werkbank_protocol.topics import Suffix

__all__ = ["LOCAL_MESSAGES", "Agent", "Decision", "Outcome"]

log = logging.getLogger(__name__)

_BADGE_RE = re.compile(BADGE_PATTERN)
# "deferred": a tap-out during a job; the lock waits for the job's end. "armed": a trainer
# armed a sign-off; "recorded": the server recorded a sign-off (no session started).
Outcome = Literal["unlocked", "denied", "locked", "ignored", "deferred", "armed", "recorded"]


@dataclass(frozen=True)
class Decision:
    """What a tap led to. ``reason`` is the server's reason code, or a local one
    (``in_use``, ``offline_ok``, ``offline_denied``, ``unreadable``, ``tap_out``, ``grace``,
    ``job_running``, ``signoff_armed``, ``server_needed``, ``job_running_handover``)."""

    badge: str
    outcome: Outcome
    reason: str
    message: dict[str, str]
    offline: bool = False
    session: str | None = None
    language: str | None = None  # the person's language, from the server's answer

    @property
    def text(self) -> str:
        """The message in the person's language, else English, else any."""
        for code in (self.language, "en"):
            if code and self.message.get(code):
                return self.message[code]
        return next(iter(self.message.values()), "")


class Agent:
    """One machine's agent. ``start()`` connects and runs; ``stop()`` shuts down cleanly.

    Hardware not passed in is made from the config (and released again by ``stop()``);
    hardware passed in belongs to the caller.
    """

    # While a session is open, how often its record is marked alive: after a power loss the
    # session is reported ended at the last mark, so this bounds the hours lost. One small
    # SQLite transaction each (the SD-card budget is in firmware_config/agent-config.md).
    ALIVE_S = 10.0
    TELEMETRY_S = 10.0
    # While connected, status goes out at least this often, with the outbox's and the
    # allow-list's health (docs/protocol.md): the server sees events that do not arrive and an
    # old list within a minute, and an idle machine stays "seen" (the scheduler shows a device
    # silent for 5 minutes offline). One small retained message a minute per machine.
    STATUS_S = 60.0
    # At start, how long to wait for the monitor's first reading before deciding about a
    # session the last run left open (OctoPrint answers within its request timeout).
    RESUME_WAIT_S = 10.0
    # Unacknowledged events are re-sent after 2 s, backing off to once a minute (the link does it).
    RESEND_MIN_S = 2.0
    RESEND_MAX_S = 60.0

    def __init__(
        self,
        config: AgentConfig,
        reader: Reader | None = None,
        relay: Relay | None = None,
        indicators: Indicators | None = None,
        monitor: MachineMonitor | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        storage = Path(config.storage_dir)
        storage.mkdir(parents=True, exist_ok=True)
        self._boot = self.clock.boot_id()
        # Each event is stamped with the boot clock, so the oldest one's wait is measured on it.
        self.outbox = Outbox(storage / "outbox.sqlite", self._boot, self.clock.monotonic)
        # Read before the relay is made: a session left open means the relay is (or was, until
        # this process started) closed, and it must be made closed at once, so that the pin
        # never toggles (see _recover).
        self._left_open = self._take_legacy_state(StateFile(storage / "state.json"))
        if relay is None or indicators is None:
            configure_pin_factory(config.gpio_pin_factory)
        self.reader: Reader = reader or create_reader(config)
        # The power switch: the GPIO relay or a smart plug ([switch] backend).
        self.relay: Relay = relay or create_switch(config, closed=self._left_open is not None)
        self.indicators: Indicators = indicators or create_indicators(config)
        self.monitor: MachineMonitor = monitor or create_monitor(config)
        # stop() releases what was made here; what the caller passed in is the caller's.
        made = (
            (reader, self.reader.release),
            (relay, self._release_relay),
            (indicators, self.indicators.release),
            (monitor, self.monitor.close),
        )
        self._owned: list[Callable[[], None]] = [release for given, release in made if given is None]

        self.allowlist = AllowlistStore(
            storage / "allowlist.json", key_bytes(config.allowlist_key), config.device_machine
        )
        # Secure badges: the reader asks each tapped card for its key before reporting it, and
        # leaves the outcome for the tap's auth/req (`card_auth`). An enrolment station's check
        # writes new badges instead (device_agent/enrolment.py).
        self._tap_card_auth: CardAuth | None = None
        self.enrolment: EnrolmentStation | None = None
        if config.reader_mode == "enrol":
            self.enrolment = EnrolmentStation(self._ask_for_enrolment, key_bytes(config.allowlist_key))
            self.reader.check_cards(self.enrolment)
        else:
            self.reader.check_cards(CardVerifier(self.allowlist.card_key))
        self._config_hash = config.hash
        self._fw = agent_version()

        self.last_decision: Decision | None = None
        # The message last shown at the machine, {"de": …, "en": …} (an ignored tap shows none).
        self.last_message: dict[str, str] | None = None
        self._session: Session | None = None
        self.rules = SessionRules(config)
        self.jobs = JobTracker(self.clock, self._boot)
        self._fault: str | None = None
        # The monitor's latest readings, for telemetry.
        self._readings = MonitorReadings()
        self._published_state: str | None = None
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._taps_handled = 0
        self._handled = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_alive = 0.0
        self._next_telemetry = 0.0
        self._next_status = 0.0
        # The held allow-list's age for status, counted on the boot clock from when it was taken.
        self._allowlist_age = AllowlistAge(self.clock)
        self._allowlist_age.note(self.allowlist.issued)
        self.link = Link(
            config,
            self.clock,
            self.outbox,
            self._jobs,
            handlers={
                Suffix.CMD: self._handle_cmd,
                Suffix.ALLOWLIST: self._handle_allowlist,
                Suffix.SIM_TAP: self._handle_sim_tap,
            },
            on_online=self._went_online,
            on_reachability=self._show_offline,
            stopping=self._stopping,
            resend_min_s=self.RESEND_MIN_S,
            resend_max_s=self.RESEND_MAX_S,
        )
        # Rejected incoming messages by topic suffix and error code, for logs and tests.
        self.rejected = self.link.rejected

    # ------------------------------------------------------------------ public API

    @property
    def state(self) -> MachineState:
        """``draining``: a lock waits for the job to end; ``running``: a session's machine works."""
        if self._fault:
            return "fault"
        session = self._session
        if session is None:
            return "locked"
        if session.lock_pending is not None:
            return "draining"
        return "running" if self._busy() else "unlocked"

    @property
    def trainer_window(self) -> WindowMode | None:
        """What a participant's badge would ask for now (``supervise``/``certify``), or None."""
        window = self.rules.window
        return window.mode if window is not None else None

    @property
    def job_id(self) -> str | None:
        session = self._session
        return session.job.record.id if session is not None and session.job is not None else None

    @property
    def session_id(self) -> str | None:
        session = self._session
        return session.record.id if session else None

    @property
    def connected(self) -> bool:
        """Connected to the broker and subscribed to this device's topics."""
        return self.link.ready

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self.link.wait_ready(timeout)

    def start(self) -> None:
        self._recover()
        self._show_state()
        self.indicators.offline(True)
        self.link.start()
        self._thread = threading.Thread(target=self._run, name="agent-main", daemon=True)
        self._thread.start()
        log.info(
            "agent %s for machine %s started (config %s, fw %s)",
            self.config.device_id,
            self.config.device_machine,
            self._config_hash,
            self._fw,
        )

    def stop(self) -> None:
        """Stop cleanly. An open session stays open on disk (marked alive now) and its relay
        stays closed; the next start in this boot carries it on (see :meth:`_recover`).
        Stopping twice is harmless."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._session is not None:
            self._mark_alive(self.clock.monotonic())
        self.link.close()
        for release in self._owned:
            try:
                release()
            except Exception:
                log.exception("releasing hardware failed")
        self.outbox.close()
        log.info("agent %s stopped", self.config.device_id)

    def tap(self, uid: str, timeout: float = 5.0) -> Decision:
        """Present a badge to the simulated reader and return what it led to."""
        if not isinstance(self.reader, SimulatedReader):
            raise TypeError('tap() needs the simulated reader ([reader] backend = "simulated")')
        count = self.reader.present(uid)
        with self._handled:
            if not self._handled.wait_for(lambda: self._taps_handled >= count, timeout):
                raise TimeoutError(f"tap of {uid} not handled within {timeout} s")
        assert self.last_decision is not None
        return self.last_decision

    # ------------------------------------------------------------------ main loop

    def _run(self) -> None:
        # Paced by the real clock: an injected clock only says what time it is for sessions.
        period = 1.0 / self.config.reader_poll_hz
        next_poll = time.monotonic()
        while not self._stopping.is_set():
            delay = next_poll - time.monotonic()
            if delay > 0:
                try:
                    job = self._jobs.get(timeout=delay)
                except queue.Empty:
                    pass
                else:
                    if job is not None:
                        self._safely(job)
                    continue
            next_poll += period
            now = time.monotonic()
            if next_poll < now:  # fell behind (a tap waited for the server): don't catch up in a burst
                next_poll = now + period
            self._safely(self._poll_reader)
            self._safely(self._tick)

    def _safely(self, job: Callable[[], None]) -> None:
        # Nothing that goes wrong in one job may stop the loop that keeps the machine safe.
        try:
            job()
        except Exception:
            log.exception("agent job failed")

    def _poll_reader(self) -> None:
        try:
            uid = self.reader.poll()
        except Exception as exc:
            self._set_fault("reader_failed", f"the badge reader failed: {exc}")
            return
        if self._fault == "reader_failed":
            self._clear_fault()
        if self.enrolment is not None:
            self._enrolment_tap()
            return
        if uid is None:
            return
        self._tap_card_auth, self.reader.card_auth = self.reader.card_auth, None
        try:
            self._handle_tap(uid.upper())
        finally:
            self._tap_card_auth = None
            with self._handled:
                self._taps_handled += 1
                self._handled.notify_all()

    def _tick(self) -> None:
        self._poll_monitor()
        mono = self.clock.monotonic()
        self._close_window_if_over(mono)
        session = self._session
        if session is not None:
            if self.monitor.running():
                session.run_s += mono - session.last_tick_mono
            busy = self._busy()
            if busy:
                session.active_mono = mono
            session.last_tick_mono = mono
            due = self.rules.lock_at_tick(session, mono, busy)
            if due is not None:
                reason, job_ended = due
                if job_ended:
                    log.info("the job ended: the deferred lock (%s) happens now", reason)
                    self._end_session(reason)
                else:
                    self._lock_due(reason)
        self._warn_if_ending(self._session)
        if self._session is not None and mono >= self._next_alive:
            self._mark_alive(mono)
        # Telemetry while unlocked, and while the machine runs without a session (a fault).
        if (self._session is not None or self.monitor.running()) and mono >= self._next_telemetry:
            self._next_telemetry = mono + self.TELEMETRY_S
            self._send_telemetry()
        if self.link.ready and (self.state != self._published_state or mono >= self._next_status):
            # running ⇄ unlocked changes with the machine, not with a tap; and once a minute the health.
            self._publish_status()
        self.link.resend_if_due(mono)

    def _warn_if_ending(self, session: Session | None) -> None:
        """The "ending soon" warning when the rules say it is due: lights, buzzer, message."""
        left = self.rules.warning_due(session, self.clock.monotonic())
        if session is None or left is None:
            return
        log.info("session %s ends in %.0f s (%s)", session.record.id, left, session.until_reason or "until")
        self.indicators.ending_soon()
        self.last_message = ending_soon(max(1, round(left / 60)))

    def _busy(self) -> bool:
        """The machine is mid-job: cutting its power now would spoil work (see SessionRules.busy)."""
        return self.rules.busy(self._session, self.monitor.running())

    # ------------------------------------------------------------------ the machine monitor

    def _poll_monitor(self) -> None:
        try:
            events = self.monitor.poll()
        except Exception:
            log.exception("the machine monitor failed")
            events = []
        try:
            # A smart plug reports a state it could not confirm as a fault, as a monitor does.
            events += self.relay.poll()
        except Exception:
            log.exception("the power switch failed")
        for event in events:
            self._on_monitor_event(event)

    def _on_monitor_event(self, event: MonitorEvent) -> None:
        if isinstance(event, MonitorReadings):
            self._readings = event
        elif isinstance(event, MonitorJobStarted):
            self._job_started(event)
        elif isinstance(event, MonitorJobFinished):
            self._job_finished(event)
        elif isinstance(event, MonitorFault):
            self._set_fault(event.code, event.detail)
        elif isinstance(event, MonitorFaultCleared) and self._fault == event.code:
            self._clear_fault()

    def _job_started(self, event: MonitorJobStarted) -> None:
        session = self._session
        if session is None:
            # The relay is open, so the machine should have no power: stuck relay, bypass, or a
            # machine that runs on by itself. A job_started needs a session: report a fault.
            what = f"{event.kind} {event.file}" if event.file else f"a {event.kind} job"
            self._set_fault(
                "job_without_session",
                f"{what} started while no session is open: is the relay stuck or bypassed?",
            )
            return
        session.job, events = self.jobs.started(session.record.id, session.job, event)
        if events:
            self._persist(session, events)

    def _job_finished(self, event: MonitorJobFinished) -> None:
        session = self._session
        job = session.job if session is not None else None
        if session is None or job is None or job.adopting:
            # Started outside a session, or already reported (ended by a forced lock).
            log.info("the machine finished a job that belongs to no session (%s)", event.status)
            if self._fault == "job_without_session":
                self._clear_fault()
            return
        session.job = None
        self._persist(session, [self.jobs.finished_by_monitor(session.record.id, job, event)])

    def _end_job(self, session: Session, status: JobStatus, duration_s: float) -> JobFinished:
        """The end of the session's job (which it no longer has); the caller stores the event."""
        job = session.job
        assert job is not None
        session.job = None
        return self.jobs.finished(session.record.id, job, status, duration_s)

    # ------------------------------------------------------------------ taps and sessions

    def _decided(self, decision: Decision) -> None:
        self.last_decision = decision
        if decision.message:
            self.last_message = decision.message
        log.info(
            "badge %s: %s (%s%s) %s",
            decision.badge,
            decision.outcome,
            decision.reason,
            ", offline" if decision.offline else "",
            decision.text,
        )

    def _handle_tap(self, uid: str) -> None:
        mono = self.clock.monotonic()
        session = self._session
        if not _BADGE_RE.match(uid):
            self.indicators.denied()
            self._decided(Decision(uid, "denied", "unreadable", LOCAL_MESSAGES["unreadable"]))
            return
        if self.config.reader_mode == "checkin":
            self._checkin_tap(uid)
        if session is not None and not self.allowlist.genuine(self._tap_card_auth):
            # A copy of the badge in use must not end (or hand over) its session either.
            self.indicators.denied()
            self._decided(Decision(uid, "denied", "badge_not_genuine", LOCAL_MESSAGES["badge_not_genuine"]))
            return
        if session is not None:
            self._close_window_if_over(mono)  # a tap may come before the timer's tick
            meaning = self.rules.tap(uid, session, mono)
            window = self.rules.window
            if meaning == "window" and window is not None:
                self._window_tap(uid, session, window, mono)
            elif meaning == "in_use":
                self.indicators.denied()
                self._decided(Decision(uid, "denied", "in_use", LOCAL_MESSAGES["in_use"]))
            elif meaning == "grace":
                self._decided(Decision(uid, "ignored", "grace", {}, session=session.record.id))
            else:
                self._tap_out(uid, session)
            return

        answer = self._ask_server(uid)
        if answer is not None:
            response, arrived = answer
            if response.decision == "allow":
                if response.session is None:
                    log.warning("the server allowed %s without a session id; making one", uid)
                server_session = response.session or str(uuid.uuid4())
                self._start_session(
                    uid,
                    server_session,
                    offline=False,
                    until=response.until,
                    until_mono=until_mono(response, arrived, self.clock),
                    until_reason=response.until_reason,
                )
                message = response.message
                if response.trainer:
                    message = self._open_window(uid, mono, message)
                self._decided(
                    Decision(
                        uid,
                        "unlocked",
                        response.reason,
                        message,
                        session=server_session,
                        language=response.lang,
                    )
                )
            else:
                self.indicators.denied()
                self._decided(
                    Decision(uid, "denied", response.reason, response.message, language=response.lang)
                )
            return

        if not self.allowlist.genuine(self._tap_card_auth):
            self.indicators.denied()
            self._decided(
                Decision(uid, "denied", "badge_not_genuine", LOCAL_MESSAGES["badge_not_genuine"], True)
            )
            return
        allowed, trainer = self.allowlist.check(uid, self.clock.now())
        if allowed:
            session_id = str(uuid.uuid4())
            self._start_session(uid, session_id, offline=True, until=None, until_mono=None)
            message = LOCAL_MESSAGES["offline_ok"]
            if trainer:
                # Supervising needs the server; the window is there so that a participant's badge
                # gets told so (server_needed) rather than "machine in use".
                message = self._open_window(uid, mono, message)
            self._decided(Decision(uid, "unlocked", "offline_ok", message, True, session_id))
        else:
            self.indicators.denied()
            self._decided(Decision(uid, "denied", "offline_denied", LOCAL_MESSAGES["offline_denied"], True))

    def _checkin_tap(self, uid: str) -> None:
        """An entrance reader: the server checks the badge in or out; no relay ever closes.
        Without an answer the tap goes to the outbox as a ``checkin`` event, counted later."""
        answer = self._ask_server(uid, "checkin")
        if answer is not None:
            response, _arrived = answer
            if response.decision != "allow":
                self.indicators.denied()
            outcome: Outcome = "recorded" if response.decision == "allow" else "denied"
            self._decided(Decision(uid, outcome, response.reason, response.message, language=response.lang))
            return
        now = self.clock.now()
        self._emit(
            CheckinTap(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(now),
                badge=uid,
                boot=self._boot,
                mono_s=mono_s(self.clock.monotonic()),
            )
        )
        self._decided(Decision(uid, "recorded", "checkin_stored", LOCAL_MESSAGES["checkin_stored"], True))

    def _tap_out(self, uid: str, session: Session) -> None:
        session_id = session.record.id
        if self._lock_due("tap_out"):
            self._decided(
                Decision(uid, "locked", "tap_out", LOCAL_MESSAGES["session_ended"], session=session_id)
            )
        else:
            self._decided(
                Decision(uid, "deferred", "job_running", LOCAL_MESSAGES["job_running"], session=session_id)
            )

    # ------------------------------------------------------------------ a trainer at the machine

    def _open_window(self, uid: str, mono: float, greeting: dict[str, str]) -> dict[str, str]:
        """Open the trainer window for ``uid``'s new session; the greeting with the trainer's hint."""
        seconds_open = self.rules.open_window(uid, mono)
        if seconds_open is None:
            return greeting
        self.indicators.trainer_window()
        return trainer_greeting(greeting, seconds_open)

    def _close_window_if_over(self, mono: float) -> None:
        if self.rules.close_window_if_over(mono):
            log.info("the trainer window closed")
            self._show_state()

    def _window_tap(self, uid: str, session: Session, window: TrainerWindow, mono: float) -> None:
        """A tap while the trainer window is open (the trainer's own session is the open one)."""
        if uid == window.trainer:
            move = self.rules.trainer_tap(window, mono)
            if move == "grace":
                self._decided(Decision(uid, "ignored", "grace", {}, session=session.record.id))
            elif move == "armed":
                self.indicators.signoff_armed()
                self._decided(
                    Decision(
                        uid,
                        "armed",
                        "signoff_armed",
                        LOCAL_MESSAGES["signoff_armed"],
                        session=session.record.id,
                    )
                )
            else:
                self._tap_out(uid, session)
            return
        if window.mode == "supervise" and self._busy():
            # A job of the trainer's session would end with it; handing over mid-job is not done.
            self.indicators.denied()
            self._decided(
                Decision(uid, "denied", "job_running_handover", LOCAL_MESSAGES["job_running_handover"])
            )
            return
        answer = self._ask_server(uid, window.mode, window.trainer)
        if answer is None:
            # The allow-list cannot show that this person had the briefing: no supervising offline.
            self.indicators.denied()
            self._decided(Decision(uid, "denied", "server_needed", LOCAL_MESSAGES["server_needed"], True))
            return
        response, arrived = answer
        if response.decision != "allow":
            # The trainer's session carries on, and so does the window.
            self.indicators.denied()
            self._decided(Decision(uid, "denied", response.reason, response.message, language=response.lang))
            return
        self.rules.window = None
        if window.mode == "certify":
            # The server recorded the sign-off; the trainer's session carries on.
            self.indicators.unlocked()
            self._decided(
                Decision(
                    uid,
                    "recorded",
                    response.reason,
                    response.message,
                    session=session.record.id,
                    language=response.lang,
                )
            )
            return
        if response.session is None:
            log.warning("the server allowed supervising %s without a session id; making one", uid)
        new_session = response.session or str(uuid.uuid4())
        self._start_session(
            uid,
            new_session,
            offline=False,
            until=response.until,
            until_mono=until_mono(response, arrived, self.clock),
            mode="supervise",
            trainer_badge=window.trainer,
            until_reason=response.until_reason,
            # The trainer's session ends as the supervised one starts: one step on disk, the
            # relay closed throughout.
            ending=session,
        )
        self._decided(
            Decision(
                uid,
                "unlocked",
                response.reason,
                response.message,
                session=new_session,
                language=response.lang,
            )
        )

    def _ask_for_enrolment(self, uid: str) -> AuthResp | None:
        answered = self._ask_server(uid, "enrol")
        return answered[0] if answered is not None else None

    def _enrolment_tap(self) -> None:
        """An enrolment station: report a written badge (outbox, so it is never lost) and say how it went."""
        outcome = self.enrolment.take_outcome() if self.enrolment is not None else None
        if outcome is None:
            return
        if outcome.enrolment is not None:
            event = BadgeEnrolled(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                enrolment=outcome.enrolment,
                badge=outcome.uid,
            )
            self._emit(event)
            self.indicators.unlocked()
        else:
            self.indicators.denied()
        self._decided(
            Decision(
                outcome.uid, "recorded" if outcome.enrolment else "denied", outcome.result, outcome.message
            )
        )
        with self._handled:
            self._taps_handled += 1
            self._handled.notify_all()

    def _ask_server(
        self, uid: str, mode: ReqMode = "use", trainer_badge: str | None = None
    ) -> tuple[AuthResp, float] | None:
        """The server's answer and the boot clock when it arrived, or None when the server cannot
        be asked or does not answer in time."""
        if not self.link.ready:
            return None
        request = AuthReq(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(self.clock.now()),
            badge=uid,
            mode=mode,
            trainer_badge=trainer_badge,
            boot=self._boot,
            mono_s=mono_s(self.clock.monotonic()),
            card_auth=self._tap_card_auth,
        )
        return self.link.ask(request)

    def _start_session(
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
            boot=self._boot,
            started_mono=mono,
            alive_mono=mono,
            active_mono=mono,
            until_mono=until_mono if until else None,
        )
        # On record, with its start event, before the relay closes: after SIGKILL the pin keeps
        # its level, and the next start must know that the session is open (see _recover).
        stored = self._store([*prior, self._started_event(record)], session=record)
        self.relay.close()
        self._session = Session(
            record=record,
            started_mono=mono,
            until_mono=record.until_mono,
            until_reason=record.until_reason,
            active_mono=mono,
            last_tick_mono=mono,
        )
        self.indicators.unlocked()
        self._send_stored(stored)
        self._next_alive = mono + self.ALIVE_S
        self._next_telemetry = mono + self.TELEMETRY_S
        self._publish_status()

    @staticmethod
    def _started_event(record: OpenSession) -> SessionStarted:
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

    def _lock_due(self, reason: EndReason, force: bool = False) -> bool:
        """A lock is due for ``reason``; True if the relay opened now.

        Never mid-job (:meth:`SessionRules.lock`): while the machine is busy the lock waits.
        ``lock_deferred`` goes out once, the relay stays closed, the lights show "lock pending",
        and ``_tick`` locks with this (the first) reason when the job ends. Only ``force`` (an
        admin's emergency stop through a ``lock`` command) cuts power mid-job; the job is then
        reported cancelled.
        """
        session = self._session
        if session is None:
            return False
        busy = self._busy()
        outcome = self.rules.lock(session, reason, force, busy)
        if outcome == "now":
            if force and busy:
                log.warning("forced lock (%s): cutting the power mid-job", reason)
            self._end_session(reason)
            return True
        if outcome == "deferred":
            log.info("lock due (%s) while a job runs: the relay stays closed until it ends", reason)
            deferred = LockDeferred(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                session=session.record.id,
                why="job_running",
                boot=self._boot,
                mono_s=mono_s(self.clock.monotonic()),
            )
            self._persist(session, [deferred])
            self._show_state()
            self._publish_status()
        return False

    def _end_events(self, session: Session, reason: EndReason) -> list[Event]:
        """End ``session`` in memory; its ``session_ended`` (after a ``job_finished`` when a
        forced lock cuts a job) for the caller to store."""
        self.rules.window = None
        self._session = None
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
                boot=self._boot,
                mono_s=mono_s(mono),
            )
        )
        return events

    def _end_session(self, reason: EndReason) -> None:
        """End the open session and open the relay."""
        session = self._session
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

    def _persist(self, session: Session, events: Sequence[Event] = ()) -> None:
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
            boot=self._boot,
            started_mono=session.started_mono,
            alive_mono=mono,
            active_mono=session.active_mono,
            until_mono=session.until_mono,
        )
        self._send_stored(self._store(events, session=session.record))

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

    def _show_state(self) -> None:
        """Set the lights for the current state (after a fault cleared, a lock, a resume)."""
        session = self._session
        if self._fault:
            self.indicators.fault()
        elif session is None:
            self.indicators.locked()
        elif session.lock_pending is not None:
            self.indicators.lock_pending()
        elif self.rules.window is not None and self.rules.window.mode == "certify":
            self.indicators.signoff_armed()
        else:
            self.indicators.unlocked()

    def _release_relay(self) -> None:
        if self._session is None:
            self.relay.release()
        else:
            # A restart or upgrade must not cut a job's power: the next start takes over.
            log.info("leaving the relay closed: session %s stays open across the restart", self.session_id)
            self.relay.detach()

    def _mark_alive(self, mono: float) -> None:
        """Note on disk that the session is still open now, with its times: a power loss is
        reported ended at the last mark, so ``ALIVE_S`` bounds the hours lost."""
        session = self._session
        if session is None:
            return
        self._next_alive = mono + self.ALIVE_S
        self._persist(session)

    # ------------------------------------------------------------------ after a crash or a power loss

    def _take_legacy_state(self, legacy: StateFile) -> OpenSession | None:
        """The session left open on disk; moves one from an older agent's ``state.json`` first."""
        if legacy.path.exists():
            old = legacy.load().session
            if old is not None and self.outbox.open_session() is None:
                log.info("taking the open session %s over from %s", old.id, legacy.path)
                self.outbox.record([], session=old)
            legacy.remove()
        return self.outbox.open_session()

    def _recover(self) -> None:
        """Deal with a session that was open when the agent last stopped.

        Same boot (the agent crashed, was killed or restarted, the machine kept running): the
        relay was made closed again at once (``__init__``) and the session carries on, timed on
        the boot clock from its real start; the person's next tap ends it. A job it had is
        carried on when the monitor still sees it, else reported ended unseen.

        Another boot (a power loss, a reboot), or a record without boot readings (an older
        agent's): the boot-clock readings mean nothing now. If the machine is mid-job the session
        carries on (timed by the wall clock across the gap); otherwise it is reported ended at its
        last alive mark (``power_loss_recovered``) and the relay opens.
        """
        record = self._left_open
        self._left_open = None
        if record is None:
            return
        if record.started_mono is None:
            # An older agent wrote its record and events in two steps: a crash in between may
            # have lost the start. The same ids again: a no-op here, a duplicate the server drops.
            events: list[Event] = [self._started_event(record)]
            if record.job is not None:
                events.append(self.jobs.started_event(record.id, record.job, None, None))
            self._store(events)
        same_boot = self._boot is not None and record.boot == self._boot
        if same_boot and record.job is None:
            self._resume(record, same_boot=True)
            return
        if not self.monitor.wait_ready(self.RESUME_WAIT_S):
            log.warning("the machine monitor gave no reading within %g s", self.RESUME_WAIT_S)
        events_seen = self.monitor.poll()
        mid_job = self.monitor.running() or any(isinstance(e, MonitorJobStarted) for e in events_seen)
        if same_boot:
            self._resume(record, same_boot=True)
            session = self._session
            if session is not None and session.job is not None and not mid_job:
                # The job ended while no agent watched: its outcome is unknown, as after a power
                # loss, and it ran at most until the last alive mark.
                job = session.job
                log.warning("job %s ended while the agent was down: reporting it failed", job.record.id)
                last_seen = record.alive_mono if record.alive_mono is not None else job.started_mono
                ran = last_seen - job.started_mono
                self._persist(session, [self._end_job(session, "failed", ran)])
        elif mid_job:
            self._resume(record, same_boot=False)
        else:
            try:
                self._store(lost_events(record), close=True)
            finally:
                # The relay was made closed in case the session carried on; it does not.
                self.relay.open()
        for event in events_seen:
            self._on_monitor_event(event)

    def _resume(self, record: OpenSession, same_boot: bool) -> None:
        mono = self.clock.monotonic()
        self._session = resumed(record, self.clock.now(), mono, same_boot)
        if not self.relay.is_closed:
            self.relay.close()  # a relay passed in by the caller; ours was made closed
        self._mark_alive(mono)
        self._next_telemetry = mono

    # ------------------------------------------------------------------ faults

    def _set_fault(self, code: str, detail: str) -> None:
        if self._fault == code:
            return
        log.error("fault %s: %s", code, detail)
        self._fault = code
        self.indicators.fault()
        self._emit(
            Fault(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                session=self.session_id,
                code=code,
                detail=detail[:500],
                boot=self._boot,
                mono_s=mono_s(self.clock.monotonic()),
            )
        )
        self._publish_status()

    def _clear_fault(self) -> None:
        log.info("fault %s cleared", self._fault)
        self._fault = None
        self._show_state()
        self._publish_status()

    # ------------------------------------------------------------------ outgoing messages

    def _emit(self, event: Event) -> None:
        """Store an event in the outbox, then publish it."""
        self._send_stored(self._store([event]))

    def _publish_status(self) -> None:
        if not self.link.ready:
            return  # on_connect publishes it
        self._published_state = self.state
        mono = self.clock.monotonic()
        self._next_status = mono + self.STATUS_S
        status = status_message(
            state=self.state,
            machine=self.config.device_machine,
            fw=self._fw,
            config_hash=self._config_hash,
            allowlist_version=self.allowlist.version,
            now=self.clock.now(),
            boot=self._boot,
            mono=mono,
            outbox_health=self.outbox.health(),
            allowlist_age_s=self._allowlist_age.seconds(mono),
        )
        self.link.publish_status(status)

    def _send_telemetry(self) -> None:
        if self.link.ready:
            telemetry = telemetry_message(
                now=self.clock.now(),
                running=self.monitor.running(),
                session=self.session_id,
                readings=self._readings,
                plug_power_w=self.relay.power_w,
                plug_energy_wh=self.relay.energy_wh,
            )
            self.link.publish(Suffix.TELEMETRY, encode(telemetry))

    def _went_online(self) -> None:
        """Connected and subscribed (the link re-sends the outbox next)."""
        self._show_offline()
        self._publish_status()

    def _show_offline(self) -> None:
        self.indicators.offline(not self.link.server_reachable)

    # ------------------------------------------------------------------ messages from the server

    def _handle_cmd(self, payload: bytes) -> None:
        cmd = decode_as(Cmd, payload)
        if not self.link.first_time(cmd.id):
            log.info("command %s seen before; ignored", cmd.id)
            return
        log.info("command %s (%s)", cmd.type, cmd.reason or "no reason given")
        if cmd.type == "lock":
            session = self._session
            if session is None:
                log.info("lock: no session is open")
            elif cmd.session is not None and cmd.session != session.record.id:
                # A command queued for an earlier session must not end this one.
                log.warning("lock for session %s ignored: session %s is open", cmd.session, session.record.id)
            else:
                # The server's scheduler ends a booking with reason "booking_end" (docs/protocol.md).
                reason: EndReason = "booking_end" if cmd.reason == "booking_end" else "remote_lock"
                self._lock_due(reason, force=cmd.force)
        elif cmd.type == "unlock":
            # A remote unlock needs a session the server made and a person to bill; the protocol
            # has no event for it yet, so this agent does not do it.
            log.warning("remote unlock is not supported by this agent: the person taps their badge")
        elif cmd.type == "identify":
            self.indicators.identify()
        elif cmd.type == "refresh_allowlist":
            log.info("refresh_allowlist: nothing to do, the retained allowlist topic brings the newest list")
        else:
            log.warning("reload_config is not supported yet: restart the agent to load a new config")

    def _handle_allowlist(self, payload: bytes) -> None:
        if not payload:
            return  # the retained list was cleared: keep ours
        before = self.allowlist.version
        if not self.allowlist.offer(payload, self.clock.now()):
            self.rejected["allowlist:refused"] += 1  # the store logged why
            return
        self._allowlist_age.note(self.allowlist.issued)
        if self.allowlist.version != before:
            self._publish_status()
        self._recheck_offline_session()

    def _recheck_offline_session(self) -> None:
        """An offline session rests on the allow-list alone: when the list now held no longer
        clears its badge (revoked, blocked, expired), it locks (``remote_lock``; after a running
        job, as every lock). Sessions the server allowed are the server's to end."""
        session = self._session
        if session is None or not session.record.offline or session.lock_pending is not None:
            return
        allowed, _trainer = self.allowlist.check(session.record.badge, self.clock.now())
        if allowed:
            return
        log.warning(
            "allow-list version %s no longer clears badge %s: locking its offline session %s",
            self.allowlist.version,
            session.record.badge,
            session.record.id,
        )
        self.last_message = LOCAL_MESSAGES["access_withdrawn"]
        self._lock_due("remote_lock")

    def _handle_sim_tap(self, payload: bytes) -> None:
        tap = decode_as(SimTap, payload)
        if not isinstance(self.reader, SimulatedReader):
            log.warning("sim/tap ignored: this agent reads real badges")
        elif self.link.first_time(tap.id):
            self.reader.present(tap.badge)
