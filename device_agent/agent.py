"""The device agent: a tapped badge → the server's decision (or the allow-list's) → the relay → events.

Two threads do the work. paho's network thread receives messages; apart from an
``auth/resp`` (which wakes the tap waiting for it) each one becomes a job for the main
loop, so every decision, relay switch, indicator change and file write happens in the
main loop, one at a time. The main loop polls the reader at ``poll_hz`` and checks
timers (session end, alive mark, telemetry, outbox re-send) and the machine monitor's
news (jobs, faults, readings; the monitor reads the machine in its own thread) between polls.

The safety rules live in :meth:`Agent._lock_due`: a lock never cuts power mid-job unless
forced; it waits (``lock_deferred``) until the job ends.

A trainer at the machine (:meth:`Agent._window_tap`): when the server says the person it
allowed is a trainer here, a trainer window opens for ``[session] trainer_window_s``. A
participant's badge in it asks for mode ``supervise``; if allowed, the trainer's session
ends and the participant's supervised one starts with the relay closed throughout. The
trainer's own badge in it arms a sign-off instead of tapping out; a participant's badge
then asks for mode ``certify`` (the server records the sign-off; no session starts).

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

import dataclasses
import logging
import queue
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
import paho.mqtt.client as mqtt

from device_agent import agent_version
from device_agent.allowlist_store import AllowlistStore
from device_agent.cards import CardAuth
from device_agent.cards.secure import CardVerifier
from device_agent.clock import Clock, SystemClock
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
from device_agent.outbox import Outbox
from device_agent.storage import OpenJob, OpenSession, StateFile
from werkbank_protocol import ProtocolError, format_ts, parse_ts
from werkbank_protocol.allowlist import key_bytes
from werkbank_protocol.messages import (
    BADGE_PATTERN,
    MAX_HEALTH_AGE_S,
    MAX_OUTBOX_DEPTH,
    Ack,
    AuthReq,
    AuthResp,
    BadgeEnrolled,
    CheckinTap,
    Cmd,
    EndReason,
    Event,
    Fault,
    JobFinished,
    JobStarted,
    LockDeferred,
    MachineState,
    Mode,
    ReqMode,
    SessionEnded,
    SessionStarted,
    SimTap,
    Status,
    Telemetry,
    decode_as,
    encode,
)
from werkbank_protocol.mqtt import make_client, parse_mqtt_url
from werkbank_protocol.topics import QOS, RETAINED, SERVER_TO_AGENT, Suffix, topic

log = logging.getLogger(__name__)

# What the agent says by itself (the server's own messages come with its answers).
# Short, and each says what to do next: many people at the machine are new to German.
LOCAL_MESSAGES: dict[str, dict[str, str]] = {
    "in_use": {
        "de": "Maschine ist belegt. Bitte warten, bis sie frei ist.",
        "en": "Machine in use. Please wait until it is free.",
    },
    "offline_ok": {
        "de": "Freigegeben (offline). Zum Beenden Karte wieder auflegen.",
        "en": "Unlocked (offline). Tap again to finish.",
    },
    "offline_denied": {
        "de": "Server nicht erreichbar und Karte nicht freigegeben. Bitte Trainer fragen.",
        "en": "Server unreachable and badge not cleared. Please ask a trainer.",
    },
    "unreadable": {
        "de": "Karte nicht lesbar. Bitte noch einmal auflegen.",
        "en": "Card not readable. Please tap again.",
    },
    "session_ended": {
        "de": "Sitzung beendet. Danke!",
        "en": "Session ended. Thank you!",
    },
    "job_running": {
        "de": "Auftrag läuft: Die Maschine sperrt, sobald er fertig ist.",
        "en": "Job running: the machine locks when it ends.",
    },
    # Appended to the server's greeting when a trainer unlocks ({s}: the window's seconds).
    "trainer_window": {
        "de": "Trainer: In {s} s Karte der Person auflegen = betreuen, eigene Karte = Abnahme.",
        "en": "Trainer: within {s} s, tap a participant's badge to supervise, or yours to sign off.",
    },
    "signoff_armed": {
        "de": "Abnahme: Jetzt die Karte der Person auflegen.",
        "en": "Sign-off: now tap the participant's badge.",
    },
    "server_needed": {
        "de": "Server nicht erreichbar: Betreuen und Abnahme gehen nur mit Server. Bitte später noch einmal.",
        "en": "Server unreachable: supervising and sign-off need the server. Please try again later.",
    },
    # Shown once, [session] warn_before_end_s before the session's until ({m}: whole minutes left).
    "ending_soon": {
        "de": "Ihre Zeit endet in {m} Min. Bitte zum Ende kommen: Danach sperrt die Maschine.",
        "en": "Your time ends in {m} min. Please finish: then the machine locks.",
    },
    # An offline session whose badge a newer allow-list no longer lists.
    "access_withdrawn": {
        "de": "Freigabe entzogen: Die Maschine sperrt (ein laufender Auftrag wird noch fertig). "
        "Bitte Trainer fragen.",
        "en": "Access withdrawn: the machine locks (a running job finishes first). Please ask a trainer.",
    },
    # Offline, the card did not prove the badge's key (or a plain UID where the list needs proof).
    "badge_not_genuine": {
        "de": "Diese Karte ist kein gültiger Ausweis. Bitte am Empfang fragen.",
        "en": "This card is not a valid badge. Please ask at the front desk.",
    },
    # An entrance reader (`[reader] mode = "checkin"`) without an answer: the tap is kept.
    "checkin_stored": {
        "de": "Server nicht erreichbar: Ihr Kommen/Gehen ist gespeichert und wird nachgetragen.",
        "en": "Server unreachable: your check-in or check-out is stored and will be counted.",
    },
    "job_running_handover": {
        "de": "Ein Auftrag läuft. Betreuung erst starten, wenn er fertig ist.",
        "en": "A job is running. Start supervising when it has ended.",
    },
}

_BADGE_RE = re.compile(BADGE_PATTERN)
# "deferred": a tap-out during a job; the lock waits for the job's end. "armed": a trainer
# armed a sign-off; "recorded": the server recorded a sign-off (no session started).
Outcome = Literal["unlocked", "denied", "locked", "ignored", "deferred", "armed", "recorded"]
WindowMode = Literal["supervise", "certify"]


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


@dataclass
class _Job:
    """The job running in the open session."""

    record: OpenJob
    started_mono: float
    # Restored from state.json at a restart and not yet seen again by the monitor.
    adopting: bool = False
    # Run time the monitor did not see (the job ran before this process started).
    unseen_s: float = 0.0


@dataclass
class _Session:
    """The open session: its persisted record plus what only this process can measure."""

    record: OpenSession
    started_mono: float
    # When the unlock ends at the latest, on the boot clock (the server's until_s from its answer).
    until_mono: float | None
    # Last time the machine was seen busy (or the start): the idle timeout counts from it.
    active_mono: float
    last_tick_mono: float
    run_s: float = 0.0
    # "booking": the lock at ``until`` ends the session with reason booking_end, else max_duration.
    until_reason: Literal["booking"] | None = None
    job: _Job | None = None
    # The reason of a lock that is due but waits for the job to end.
    lock_pending: EndReason | None = None
    # The "ending soon" warning was given (once per session; a restarted agent warns again).
    warned: bool = False


@dataclass
class _TrainerWindow:
    """A trainer's session is open and their next move is awaited (see the module docstring)."""

    trainer: str  # the trainer's badge (the open session's)
    mode: WindowMode  # what a participant's badge asks for now
    ends_mono: float
    changed_mono: float  # opened or armed: the tap-out grace counts from here


class _Waiter:
    """A tap waiting for the ``auth/resp`` to its request."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.response: AuthResp | None = None
        self.arrived_mono = 0.0  # the boot clock when the answer arrived: `until_s` counts from here


def _seconds(mono: float | None) -> float | None:
    """A boot-clock reading as sent in ``mono_s`` (ms precision; None when not known)."""
    return None if mono is None else round(max(mono, 0.0), 3)


def _compact(message: msgspec.Struct) -> bytes:
    """JSON without the fields that are None: the will is exactly ``{"v":1,"online":false}``."""
    fields = msgspec.structs.asdict(message)
    return msgspec.json.encode({k: v for k, v in fields.items() if v is not None})


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
    RESEND_MIN_S = 2.0
    RESEND_MAX_S = 60.0
    RESEND_BATCH = 500

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
        # Rejected incoming messages by topic suffix and error code, for logs and tests.
        self.rejected: Counter[str] = Counter()
        self._session: _Session | None = None
        self._window: _TrainerWindow | None = None
        self._fault: str | None = None
        # The monitor's latest readings, for telemetry.
        self._readings = MonitorReadings()
        self._published_state: str | None = None
        self._server_answering = True
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._waiting: dict[str, _Waiter] = {}
        self._waiting_lock = threading.Lock()
        self._seen_ids: deque[str] = deque(maxlen=256)
        self._taps_handled = 0
        self._handled = threading.Condition()
        self._ready = threading.Event()  # connected and subscribed
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._resend_delay = self.RESEND_MIN_S
        self._resend_at: float | None = None
        self._next_alive = 0.0
        self._next_telemetry = 0.0
        self._next_status = 0.0
        # The held allow-list's `issued`, and (boot clock, its age) when it was taken: its age
        # grows on the boot clock from there, so a wall-clock step later does not move it.
        self._allowlist_issued: str | None = None
        self._allowlist_taken: tuple[float, float] = (0.0, 0.0)
        self._note_allowlist()
        self._subscribe_mid: int | None = None
        self._client = self._make_client()

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
        window = self._window
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
        return self._ready.is_set()

    def wait_connected(self, timeout: float = 5.0) -> bool:
        return self._ready.wait(timeout)

    def start(self) -> None:
        self._recover()
        self._show_state()
        self.indicators.offline(True)
        address = parse_mqtt_url(self.config.mqtt_url)
        self._client.connect_async(address.host, address.port, keepalive=self.config.mqtt_keepalive_s)
        self._client.loop_start()
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
        if self._ready.is_set():
            # A clean disconnect sends no will: say we are gone ourselves.
            info = self._client.publish(
                self._topic(Suffix.STATUS), _compact(Status(v=1, online=False)), qos=1, retain=True
            )
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError) as exc:
                log.warning("could not publish the offline status: %s", exc)
        self._ready.clear()
        self._client.disconnect()
        self._client.loop_stop()
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
            idle = self.config.session_idle_timeout_s
            if session.lock_pending is not None:
                if not busy:
                    log.info("the job ended: the deferred lock (%s) happens now", session.lock_pending)
                    self._end_session(session.lock_pending)
            elif session.until_mono is not None and mono >= session.until_mono:
                # A booking begins (someone else's) or ends (the holder's): the lock says so.
                self._lock_due("booking_end" if session.until_reason == "booking" else "max_duration")
            elif idle > 0 and mono - session.active_mono >= idle:
                self._lock_due("idle_timeout")
        self._warn_if_ending(self._session)
        if self._session is not None and mono >= self._next_alive:
            self._mark_alive(mono)
        # Telemetry while unlocked, and while the machine runs without a session (a fault).
        if (self._session is not None or self.monitor.running()) and mono >= self._next_telemetry:
            self._next_telemetry = mono + self.TELEMETRY_S
            self._send_telemetry()
        if self._ready.is_set() and (self.state != self._published_state or mono >= self._next_status):
            # running ⇄ unlocked changes with the machine, not with a tap; and once a minute the health.
            self._publish_status()
        self._resend_if_due(mono)

    def _warn_if_ending(self, session: _Session | None) -> None:
        """Once per session, ``warn_before_end_s`` before its ``until``: lights, buzzer, message.

        A session that starts inside that time is warned at once (its greeting named ``until``
        already, but a short session deserves the sound too). No warning while a lock waits
        for a job already: the lights show "lock pending".
        """
        warn_s = self.config.session_warn_before_end_s
        if session is None or session.warned or session.until_mono is None or warn_s <= 0:
            return
        if session.lock_pending is not None:
            return
        left = session.until_mono - self.clock.monotonic()
        if left > warn_s or left <= 0:
            return
        session.warned = True
        log.info("session %s ends in %.0f s (%s)", session.record.id, left, session.until_reason or "until")
        self.indicators.ending_soon()
        minutes = max(1, round(left / 60))
        self.last_message = {k: v.format(m=minutes) for k, v in LOCAL_MESSAGES["ending_soon"].items()}

    def _busy(self) -> bool:
        """The machine is mid-job: cutting its power now would spoil work.

        A job counts until the monitor reports its end, also while the machine pauses
        (a paused print, the gap between two passes of a cut).
        """
        session = self._session
        return self.monitor.running() or (session is not None and session.job is not None)

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
        now = self.clock.now()
        mono = self.clock.monotonic()
        if session is None:
            # The relay is open, so the machine should have no power: stuck relay, bypass, or a
            # machine that runs on by itself. A job_started needs a session: report a fault.
            what = f"{event.kind} {event.file}" if event.file else f"a {event.kind} job"
            self._set_fault(
                "job_without_session",
                f"{what} started while no session is open: is the relay stuck or bypassed?",
            )
            return
        job = session.job
        if job is not None and job.adopting:
            # The job that ran when the agent restarted: same job id, nothing new to report.
            job.adopting = False
            job.unseen_s = max(0.0, mono - job.started_mono - event.elapsed_s)
            log.info("job %s carries on after the restart", job.record.id)
            return
        events: list[Event] = []
        if job is not None:
            log.warning(
                "a new job began before the end of job %s was reported; ending that one", job.record.id
            )
            events.append(self._job_finished_event(session, "failed", mono - job.started_mono))
        record = OpenJob(
            id=str(uuid.uuid4()),
            kind=event.kind,
            file=event.file,
            estimated_s=event.estimated_s,
            started=format_ts(now),
            start_event=str(uuid.uuid4()),
            started_mono=mono - event.elapsed_s,
        )
        session.job = _Job(record=record, started_mono=mono - event.elapsed_s)
        # On record with its event, as a session start is: a restart carries on with this job id.
        events.append(self._job_started_event(session.record.id, record, self._boot, mono))
        self._persist(session, events)

    @staticmethod
    def _job_started_event(
        session_id: str, record: OpenJob, boot: str | None, mono: float | None
    ) -> JobStarted:
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
            mono_s=_seconds(mono),
        )

    def _job_finished(self, event: MonitorJobFinished) -> None:
        session = self._session
        job = session.job if session is not None else None
        if session is None or job is None or job.adopting:
            # Started outside a session, or already reported (ended by a forced lock).
            log.info("the machine finished a job that belongs to no session (%s)", event.status)
            if self._fault == "job_without_session":
                self._clear_fault()
            return
        finished = self._job_finished_event(
            session, event.status, event.duration_s + job.unseen_s, event.filament_mm, event.filament_g
        )
        self._persist(session, [finished])

    def _job_finished_event(
        self,
        session: _Session,
        status: JobStatus,
        duration_s: float,
        filament_mm: float | None = None,
        filament_g: float | None = None,
    ) -> JobFinished:
        """The end of the session's job (which it no longer has); the caller stores the event."""
        job = session.job
        assert job is not None
        session.job = None
        return JobFinished(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(self.clock.now()),
            session=session.record.id,
            job=job.record.id,
            status=status,
            duration_s=round(max(duration_s, 0.0), 3),
            filament_mm=None if filament_mm is None else max(filament_mm, 0.0),
            filament_g=None if filament_g is None else max(filament_g, 0.0),
            boot=self._boot,
            mono_s=_seconds(self.clock.monotonic()),
        )

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
            window = self._window
            if window is not None and window.trainer == session.record.badge:
                self._window_tap(uid, session, window, mono)
            elif uid not in (session.record.badge, session.record.trainer_badge):
                # (The supervising trainer may end a supervised session too.)
                self.indicators.denied()
                self._decided(Decision(uid, "denied", "in_use", LOCAL_MESSAGES["in_use"]))
            elif mono - session.started_mono < self.config.session_tap_out_grace_s:
                # The card was still near the reader after unlocking: not a tap-out.
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
                    until_mono=self._until_mono(response, arrived),
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
                mono_s=_seconds(self.clock.monotonic()),
            )
        )
        self._decided(Decision(uid, "recorded", "checkin_stored", LOCAL_MESSAGES["checkin_stored"], True))

    def _tap_out(self, uid: str, session: _Session) -> None:
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
        seconds = self.config.session_trainer_window_s
        if seconds <= 0:
            return greeting
        self._window = _TrainerWindow(uid, "supervise", mono + seconds, mono)
        self.indicators.trainer_window()
        hint = LOCAL_MESSAGES["trainer_window"]
        return {
            language: f"{greeting.get(language, '')} {text.format(s=f'{seconds:g}')}".strip()
            for language, text in hint.items()
        }

    def _close_window_if_over(self, mono: float) -> None:
        if self._window is not None and mono >= self._window.ends_mono:
            log.info("the trainer window closed")
            self._window = None
            self._show_state()

    def _window_tap(self, uid: str, session: _Session, window: _TrainerWindow, mono: float) -> None:
        """A tap while the trainer window is open (the trainer's own session is the open one)."""
        if uid == window.trainer:
            if mono - window.changed_mono < self.config.session_tap_out_grace_s:
                self._decided(Decision(uid, "ignored", "grace", {}, session=session.record.id))
            elif window.mode == "supervise":
                # Instead of tapping out: the next participant's badge records a sign-off.
                window.mode = "certify"
                window.changed_mono = mono
                window.ends_mono = mono + self.config.session_trainer_window_s
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
                # Armed already: a third tap of the trainer's own badge taps out as usual.
                self._window = None
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
        self._window = None
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
            until_mono=self._until_mono(response, arrived),
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
        if not self._ready.is_set():
            return None
        request = AuthReq(
            v=1,
            id=str(uuid.uuid4()),
            ts=format_ts(self.clock.now()),
            badge=uid,
            mode=mode,
            trainer_badge=trainer_badge,
            boot=self._boot,
            mono_s=_seconds(self.clock.monotonic()),
            card_auth=self._tap_card_auth,
        )
        waiter = _Waiter()
        with self._waiting_lock:
            self._waiting[request.id] = waiter
        try:
            info = self._publish(Suffix.AUTH_REQ, encode(request))
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return None
            if not waiter.event.wait(self.config.server_auth_timeout_s) or waiter.response is None:
                log.warning(
                    "no answer from the server within %.1f s: deciding from the allow-list",
                    self.config.server_auth_timeout_s,
                )
                self._set_server_answering(False)
                return None
            self._set_server_answering(True)
            return waiter.response, waiter.arrived_mono
        finally:
            with self._waiting_lock:
                self._waiting.pop(request.id, None)

    def _until_mono(self, response: AuthResp, arrived: float) -> float | None:
        """When the unlock ends, on the boot clock: the server's ``until_s`` from the answer's
        arrival; from an older server without it, ``until`` against this clock, taken once."""
        if response.until_s is not None:
            return arrived + response.until_s
        if response.until is None:
            return None
        return arrived + (parse_ts(response.until) - self.clock.now()).total_seconds()

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
        ending: _Session | None = None,
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
        self._session = _Session(
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
            mono_s=_seconds(record.started_mono),
        )

    def _lock_due(self, reason: EndReason, force: bool = False) -> bool:
        """A lock is due for ``reason``; True if the relay opened now.

        Never mid-job: while the machine is busy the lock waits. ``lock_deferred`` goes out
        once, the relay stays closed, the lights show "lock pending", and ``_tick`` locks with
        this (the first) reason when the job ends. Only ``force`` (an admin's emergency stop
        through a ``lock`` command) cuts power mid-job; the job is then reported cancelled.
        """
        session = self._session
        if session is None:
            return False
        if force or not self._busy():
            if force and self._busy():
                log.warning("forced lock (%s): cutting the power mid-job", reason)
            self._end_session(reason)
            return True
        if session.lock_pending is None:
            log.info("lock due (%s) while a job runs: the relay stays closed until it ends", reason)
            session.lock_pending = reason
            deferred = LockDeferred(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                session=session.record.id,
                why="job_running",
                boot=self._boot,
                mono_s=_seconds(self.clock.monotonic()),
            )
            self._persist(session, [deferred])
            self._show_state()
            self._publish_status()
        return False

    def _end_events(self, session: _Session, reason: EndReason) -> list[Event]:
        """End ``session`` in memory; its ``session_ended`` (after a ``job_finished`` when a
        forced lock cuts a job) for the caller to store."""
        self._window = None
        self._session = None
        mono = self.clock.monotonic()
        if self.monitor.running():
            session.run_s += mono - session.last_tick_mono
        events: list[Event] = []
        if session.job is not None:
            # Only a forced lock gets here mid-job: the power is gone, the job did not complete.
            events.append(self._job_finished_event(session, "cancelled", mono - session.job.started_mono))
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
                mono_s=_seconds(mono),
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

    def _persist(self, session: _Session, events: Sequence[Event] = ()) -> None:
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
            self._send_event(event_id, payload)

    def _show_state(self) -> None:
        """Set the lights for the current state (after a fault cleared, a lock, a resume)."""
        session = self._session
        if self._fault:
            self.indicators.fault()
        elif session is None:
            self.indicators.locked()
        elif session.lock_pending is not None:
            self.indicators.lock_pending()
        elif self._window is not None and self._window.mode == "certify":
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
                events.append(self._job_started_event(record.id, record.job, None, None))
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
                self._persist(session, [self._job_finished_event(session, "failed", ran)])
        elif mid_job:
            self._resume(record, same_boot=False)
        else:
            self._report_lost(record)
        for event in events_seen:
            self._on_monitor_event(event)

    def _resume(self, record: OpenSession, same_boot: bool) -> None:
        now = self.clock.now()
        mono = self.clock.monotonic()
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
            # The relay held the machine's power while no agent ran (it is mid-job), so the gap
            # since the last alive mark is unlocked time; only the wall clock spans it.
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
        session = _Session(
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
            session.job = _Job(
                record=job, started_mono=job_mono if job_mono is not None else mono, adopting=True
            )
        self._session = session
        if not self.relay.is_closed:
            self.relay.close()  # a relay passed in by the caller; ours was made closed
        self._mark_alive(mono)
        self._next_telemetry = mono

    def _report_lost(self, record: OpenSession) -> None:
        log.warning(
            "session %s of %s was open before a reboot; reporting it ended at its last alive mark %s",
            record.id,
            record.badge,
            record.heartbeat,
        )
        events: list[Event] = []
        if record.job is not None:
            # A power loss mid-job spoils the job; the agent knows no more than the last mark.
            job = record.job
            ran = (
                record.alive_mono - job.started_mono
                if record.alive_mono is not None and job.started_mono is not None
                else (parse_ts(record.heartbeat) - parse_ts(job.started)).total_seconds()
            )
            events.append(
                JobFinished(
                    v=1,
                    id=str(uuid.uuid4()),
                    ts=record.heartbeat,
                    session=record.id,
                    job=job.id,
                    status="failed",
                    duration_s=round(max(0.0, ran), 3),
                    boot=record.boot,
                    mono_s=_seconds(record.alive_mono),
                )
            )
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
                mono_s=_seconds(record.alive_mono),
            )
        )
        try:
            self._store(events, close=True)
        finally:
            # The relay was made closed in case the session carried on; it does not.
            self.relay.open()

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
                mono_s=_seconds(self.clock.monotonic()),
            )
        )
        self._publish_status()

    def _clear_fault(self) -> None:
        log.info("fault %s cleared", self._fault)
        self._fault = None
        self._show_state()
        self._publish_status()

    # ------------------------------------------------------------------ outgoing messages

    def _topic(self, suffix: Suffix) -> str:
        return topic(self.config.device_id, suffix)

    def _publish(self, suffix: Suffix, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self._client.publish(self._topic(suffix), payload, qos=QOS[suffix], retain=suffix in RETAINED)

    def _emit(self, event: Event) -> None:
        """Store an event in the outbox, then publish it."""
        self._send_stored(self._store([event]))

    def _send_event(self, event_id: str, payload: bytes) -> None:
        # Offline, it waits in the outbox: on_connect re-sends it. Publishing now would
        # only queue it in paho's memory and send it twice.
        if self._ready.is_set():
            self._publish(Suffix.EVENT, payload)
        if self._resend_at is None:
            self._resend_at = self.clock.monotonic() + self._resend_delay

    def _resend(self) -> int:
        pending = self.outbox.pending(self.RESEND_BATCH)
        for _event_id, payload in pending:
            self._publish(Suffix.EVENT, payload)
        return len(pending)

    def _resend_if_due(self, mono: float) -> None:
        """Re-send unacknowledged events, backing off from 2 s to 60 s while no ack comes."""
        if self._resend_at is None or mono < self._resend_at:
            return
        if not len(self.outbox):
            self._resend_at = None
            self._resend_delay = self.RESEND_MIN_S
            return
        if self._ready.is_set():
            log.info("re-sending %d unacknowledged events", self._resend())
            self._resend_delay = min(self._resend_delay * 2, self.RESEND_MAX_S)
        self._resend_at = mono + self._resend_delay

    def _publish_status(self) -> None:
        if not self._ready.is_set():
            return  # on_connect publishes it
        self._published_state = self.state
        mono = self.clock.monotonic()
        self._next_status = mono + self.STATUS_S
        depth, oldest_s = self.outbox.health()
        allowlist_age_s = self._allowlist_age(mono)
        status = Status(
            v=1,
            online=True,
            state=self.state,
            machine=self.config.device_machine,
            fw=self._fw,
            config=self._config_hash,
            allowlist_version=self.allowlist.version,
            ts=format_ts(self.clock.now()),
            boot=self._boot,
            mono_s=_seconds(mono),
            # Within the protocol's ceilings, which the server refuses beyond.
            outbox_depth=min(depth, MAX_OUTBOX_DEPTH),
            outbox_oldest_s=None if oldest_s is None else round(min(oldest_s, MAX_HEALTH_AGE_S), 3),
            allowlist_age_s=None
            if allowlist_age_s is None
            else round(min(allowlist_age_s, MAX_HEALTH_AGE_S), 3),
        )
        self._publish(Suffix.STATUS, _compact(status))

    def _note_allowlist(self) -> None:
        """Remember when the held allow-list was taken (at start, and whenever a new one is)."""
        issued = self.allowlist.issued
        if issued is None or issued == self._allowlist_issued:
            return
        self._allowlist_issued = issued
        # Its age at this moment: the one reading of the wall clock, never below 0 (a Pi whose
        # clock is behind the server's); from here on the boot clock counts.
        age = (self.clock.now() - parse_ts(issued)).total_seconds()
        self._allowlist_taken = (self.clock.monotonic(), max(0.0, age))

    def _allowlist_age(self, mono: float) -> float | None:
        """Seconds since the held allow-list's ``issued``; None when none is held."""
        if self._allowlist_issued is None:
            return None
        taken_mono, age = self._allowlist_taken
        return max(0.0, age + mono - taken_mono)

    def _send_telemetry(self) -> None:
        if self._ready.is_set():
            readings = self._readings
            telemetry = Telemetry(
                v=1,
                ts=format_ts(self.clock.now()),
                running=self.monitor.running(),
                session=self.session_id,
                power_w=self._power_w(readings),
                energy_wh=None if self.relay.energy_wh is None else max(self.relay.energy_wh, 0.0),
                progress=None if readings.progress is None else min(max(readings.progress, 0.0), 100.0),
                temps=readings.temps,
            )
            self._publish(Suffix.TELEMETRY, encode(telemetry))

    def _power_w(self, readings: MonitorReadings) -> float | None:
        """The monitor's power reading, else the smart plug's (a printer monitor measures none)."""
        power = readings.power_w if readings.power_w is not None else self.relay.power_w
        return None if power is None else max(power, 0.0)

    def _set_server_answering(self, answering: bool) -> None:
        if answering != self._server_answering:
            self._server_answering = answering
            self._show_offline()

    def _show_offline(self) -> None:
        self.indicators.offline(not (self._ready.is_set() and self._server_answering))

    # ------------------------------------------------------------------ MQTT

    def _make_client(self) -> mqtt.Client:
        address = dataclasses.replace(
            parse_mqtt_url(self.config.mqtt_url),
            username=self.config.device_id,
            password=self.config.password,
        )
        # A persistent session: acks and commands sent while the link was down still arrive.
        client = make_client(
            self.config.device_id, address, clean_session=False, ca_file=self.config.mqtt_ca_file
        )
        client.will_set(self._topic(Suffix.STATUS), _compact(Status(v=1, online=False)), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_unexpected
        client.message_callback_add(self._topic(Suffix.AUTH_RESP), self._on_auth_resp)
        handlers: dict[Suffix, Callable[[bytes], None]] = {
            Suffix.ACK: self._handle_ack,
            Suffix.CMD: self._handle_cmd,
            Suffix.ALLOWLIST: self._handle_allowlist,
            Suffix.SIM_TAP: self._handle_sim_tap,
        }
        for suffix, handler in handlers.items():
            client.message_callback_add(self._topic(suffix), self._queued(suffix, handler))
        return client

    def _queued(self, suffix: Suffix, handler: Callable[[bytes], None]) -> mqtt.CallbackOnMessage:
        """A paho callback that hands the message to the main loop."""

        def callback(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
            payload = bytes(message.payload)
            self._jobs.put(lambda: self._checked(suffix, handler, payload))

        return callback

    def _checked(self, suffix: Suffix, handler: Callable[[bytes], None], payload: bytes) -> None:
        try:
            handler(payload)
        except ProtocolError as exc:
            self.rejected[f"{suffix.value}:{exc.code}"] += 1
            log.warning("rejected a message on %s: %s", suffix.value, exc)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            log.error("the broker refused the connection: %s (check [device] id and password)", reason_code)
            return
        log.info("connected to %s", self.config.mqtt_url)
        _result, self._subscribe_mid = client.subscribe(
            [(self._topic(suffix), QOS[suffix]) for suffix in SERVER_TO_AGENT]
        )

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[Any], properties: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            log.error("the broker refused some subscriptions (%s): check its ACL for this device", refused)
        self._ready.set()
        self._jobs.put(self._went_online)

    def _went_online(self) -> None:
        self._show_offline()
        self._publish_status()
        count = self._resend()
        if count:
            log.info("re-sent %d unacknowledged events after connecting", count)
            self._resend_delay = self.RESEND_MIN_S
            self._resend_at = self.clock.monotonic() + self._resend_delay

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_ready = self._ready.is_set()
        self._ready.clear()
        if was_ready and not self._stopping.is_set():
            log.warning("lost the broker (%s): deciding from the allow-list until it is back", reason_code)
            self._jobs.put(self._show_offline)

    def _on_unexpected(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # amqtt re-sends retained messages of filters other clients subscribed to: not for us.
        log.debug("ignored a message on %s", message.topic)

    def _on_auth_resp(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        # Runs in paho's thread: the tap handler waits in the main loop for exactly this.
        try:
            response = decode_as(AuthResp, bytes(message.payload))
        except ProtocolError as exc:
            self.rejected[f"auth/resp:{exc.code}"] += 1
            log.warning("rejected an auth response: %s", exc)
            return
        arrived = self.clock.monotonic()
        with self._waiting_lock:
            waiter = self._waiting.get(response.req)
        if waiter is None:
            log.info("answer to request %s came too late or twice; ignored", response.req)
            return
        waiter.arrived_mono = arrived
        waiter.response = response
        waiter.event.set()

    def _handle_ack(self, payload: bytes) -> None:
        ack = decode_as(Ack, payload)
        removed = self.outbox.ack(ack.ids)
        log.debug("server stored %d events (%d were waiting here)", len(ack.ids), removed)
        self._set_server_answering(True)
        self._resend_delay = self.RESEND_MIN_S
        if not len(self.outbox):
            self._resend_at = None
            return
        # The server answers again: back to the shortest delay, but never later than planned. An
        # older event may have been lost (with a bridge that died holding it) while newer ones
        # are acked; putting the re-send off at every ack would keep it back while taps go on.
        due = self.clock.monotonic() + self._resend_delay
        self._resend_at = due if self._resend_at is None else min(self._resend_at, due)

    def _first_time(self, message_id: str | None) -> bool:
        """False for an id seen recently: QoS 1 may deliver a message twice."""
        if message_id is None:
            return True
        if message_id in self._seen_ids:
            return False
        self._seen_ids.append(message_id)
        return True

    def _handle_cmd(self, payload: bytes) -> None:
        cmd = decode_as(Cmd, payload)
        if not self._first_time(cmd.id):
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
        self._note_allowlist()
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
        elif self._first_time(tap.id):
            self.reader.present(tap.badge)
