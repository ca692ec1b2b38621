"""The device agent: the coordinator at one machine. A tapped badge → the server's decision (or the
allow-list's) → the relay → events.

Two threads do the work. paho's network thread receives messages; apart from an
``auth/resp`` (which wakes the tap waiting for it) each one becomes a job for the main
loop, so every decision, relay switch, indicator change and file write happens in the
main loop, one at a time. The main loop polls the reader at ``poll_hz`` and checks
timers (session end, alive mark, telemetry, outbox re-send) and the machine monitor's
news (jobs, faults, readings; the monitor reads the machine in its own thread) between polls.

:class:`Agent` makes the hardware and the parts, runs the main loop, and does what is left
between them: the lights for the agent's state, faults, the server's commands and allow-lists,
``status`` and telemetry. The parts:

- :mod:`device_agent.taps`: what a tapped badge leads to (the request, the decision, unlock or
  deny; check-in and enrolment readers; the trainer at the machine);
- :mod:`device_agent.sessions`: the open session from its start to its end (relay, outbox,
  alive marks, locks carried out or deferred, the monitor's jobs booked to it, recovery);
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
At start (:meth:`SessionKeeper.recover`) a session left open by a crashed or restarted agent
carries on when the machine has not rebooted since (same boot id): the relay is made closed
again at once and the person's next tap ends that same session, timed on the boot clock across
both processes. After a reboot (a power loss) it is reported ended at its last alive mark,
unless the machine is mid-job: the agent never invents times.

Durations and deadlines come from the boot clock (:mod:`device_agent.clock`), never from the
wall clock: the server's ``until`` is counted down from the moment its answer arrived.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from device_agent import agent_version
from device_agent.allowlist_store import AllowlistStore
from device_agent.cards.secure import CardVerifier
from device_agent.clock import Clock, SystemClock, mono_s
from device_agent.config import AgentConfig
from device_agent.enrolment import EnrolmentStation
from device_agent.hardware import create_reader, create_switch
from device_agent.hardware.base import (
    Indicators,
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
from device_agent.link import Link
from device_agent.outbox import Outbox
from device_agent.recovery import left_open
from device_agent.session_rules import Session, SessionRules, WindowMode
from device_agent.sessions import SessionKeeper
from device_agent.storage import StateFile
from device_agent.taps import Decision, Outcome, Taps
from device_agent.texts import LOCAL_MESSAGES, ending_soon
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import key_bytes
from werkbank_protocol.messages import Cmd, EndReason, Fault, MachineState, SimTap, decode_as, encode
from werkbank_protocol.topics import Suffix

__all__ = ["LOCAL_MESSAGES", "Agent", "Clock", "Decision", "Outcome"]

log = logging.getLogger(__name__)


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
        # never toggles (see SessionKeeper.recover).
        self._left_open = left_open(self.outbox, StateFile(storage / "state.json"))
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
        self._config_hash = config.hash
        self._fw = agent_version()

        self.rules = SessionRules(config)
        self._fault: str | None = None
        # The monitor's latest readings, for telemetry.
        self._readings = MonitorReadings()
        self._published_state: str | None = None
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._taps_handled = 0
        self._handled = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
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
        self.sessions = SessionKeeper(
            self.clock,
            self._boot,
            self.outbox,
            self.relay,
            self.monitor,
            self.indicators,
            self.link,
            self.rules,
            show_state=self._show_state,
            publish_status=self._publish_status,
            telemetry_at=self._telemetry_at,
            alive_s=self.ALIVE_S,
            telemetry_s=self.TELEMETRY_S,
            resume_wait_s=self.RESUME_WAIT_S,
        )
        self.taps = Taps(
            config,
            self.clock,
            self._boot,
            self.allowlist,
            self.rules,
            self.sessions,
            self.indicators,
            self.link,
            show_state=self._show_state,
        )
        # Secure badges: the reader asks each tapped card for its key before reporting it, and
        # leaves the outcome for the tap's auth/req (`card_auth`). An enrolment station's check
        # writes new badges instead (device_agent/enrolment.py).
        self.enrolment: EnrolmentStation | None = self.taps.enrolment
        if self.enrolment is not None:
            self.reader.check_cards(self.enrolment)
        else:
            self.reader.check_cards(CardVerifier(self.allowlist.card_key))

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
        return "running" if self.sessions.busy() else "unlocked"

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
    def last_decision(self) -> Decision | None:
        """What the last tap led to."""
        return self.taps.last_decision

    @property
    def last_message(self) -> dict[str, str] | None:
        """The message last shown at the machine, {"de": …, "en": …} (an ignored tap shows none)."""
        return self.taps.last_message

    @last_message.setter
    def last_message(self, message: dict[str, str]) -> None:
        self.taps.last_message = message

    @property
    def _session(self) -> Session | None:
        return self.sessions.current

    @property
    def connected(self) -> bool:
        """Connected to the broker and subscribed to this device's topics."""
        return self.link.ready

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self.link.wait_ready(timeout)

    def start(self) -> None:
        record, self._left_open = self._left_open, None
        for event in self.sessions.recover(record):
            self._on_monitor_event(event)
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
        stays closed; the next start in this boot carries it on (see :meth:`SessionKeeper.recover`).
        Stopping twice is harmless."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._session is not None:
            self.sessions.mark_alive(self.clock.monotonic())
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
            if self.taps.enrolment_tap():
                self._tap_handled()
            return
        if uid is None:
            return
        card_auth, self.reader.card_auth = self.reader.card_auth, None
        try:
            self.taps.handle(uid.upper(), card_auth)
        finally:
            self._tap_handled()

    def _tap_handled(self) -> None:
        with self._handled:
            self._taps_handled += 1
            self._handled.notify_all()

    def _tick(self) -> None:
        self._poll_monitor()
        mono = self.clock.monotonic()
        self.taps.close_window_if_over(mono)
        self.sessions.tick(mono)
        self._warn_if_ending(self._session)
        self.sessions.mark_alive_if_due(mono)
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
            if not self.sessions.job_started(event):
                # The relay is open, so the machine should have no power: stuck relay, bypass, or a
                # machine that runs on by itself. A job_started needs a session: report a fault.
                what = f"{event.kind} {event.file}" if event.file else f"a {event.kind} job"
                self._set_fault(
                    "job_without_session",
                    f"{what} started while no session is open: is the relay stuck or bypassed?",
                )
        elif isinstance(event, MonitorJobFinished):
            if not self.sessions.job_finished(event) and self._fault == "job_without_session":
                self._clear_fault()
        elif isinstance(event, MonitorFault):
            self._set_fault(event.code, event.detail)
        elif isinstance(event, MonitorFaultCleared) and self._fault == event.code:
            self._clear_fault()

    # ------------------------------------------------------------------ the lights and the relay

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

    # ------------------------------------------------------------------ faults

    def _set_fault(self, code: str, detail: str) -> None:
        if self._fault == code:
            return
        log.error("fault %s: %s", code, detail)
        self._fault = code
        self.indicators.fault()
        self.sessions.emit(
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

    def _telemetry_at(self, mono: float) -> None:
        self._next_telemetry = mono

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
                self.sessions.lock_due(reason, force=cmd.force)
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
        self.sessions.lock_due("remote_lock")

    def _handle_sim_tap(self, payload: bytes) -> None:
        tap = decode_as(SimTap, payload)
        if not isinstance(self.reader, SimulatedReader):
            log.warning("sim/tap ignored: this agent reads real badges")
        elif self.link.first_time(tap.id):
            self.reader.present(tap.badge)
