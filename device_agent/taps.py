"""What a tapped badge leads to at the machine: the request, the decision, unlock or deny.

:class:`Taps` takes each badge the reader reports (the main loop hands it over) and decides it:

- while no session is open, the server's answer (``auth/req``, :meth:`Taps.ask_server`) or,
  without one in time, the signed allow-list's; an allowed tap opens a session
  (:class:`~device_agent.sessions.SessionKeeper`), a trainer's opens the trainer window too;
- while one is open, what :meth:`SessionRules.tap` says it means: the session's own badge
  taps out (a lock, deferred while a job runs), someone else's is ``in_use``, a repeat within
  the grace is ignored, and while the trainer window is open a participant's badge starts a
  supervised session or a sign-off (``certify``) and the trainer's own arms the sign-off;
- an entrance reader (``[reader] mode = "checkin"``) checks people in and out, and an
  enrolment station (``"enrol"``, :mod:`device_agent.enrolment`) reports the badges it wrote.

Each tap ends in one :class:`Decision`, the lights and the message at the machine.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from device_agent.allowlist_store import AllowlistStore
from device_agent.cards import CardAuth
from device_agent.clock import Clock, mono_s
from device_agent.config import AgentConfig
from device_agent.enrolment import EnrolmentStation
from device_agent.hardware.base import Indicators
from device_agent.link import Link
from device_agent.session_rules import Session, SessionRules, TrainerWindow, until_mono
from device_agent.sessions import SessionKeeper
from device_agent.texts import LOCAL_MESSAGES, trainer_greeting
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import key_bytes
from werkbank_protocol.messages import BADGE_PATTERN, AuthReq, AuthResp, BadgeEnrolled, CheckinTap, ReqMode

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


class Taps:
    """Decides each tap (see the module docstring). ``show_state`` sets the lights for the
    agent's state (when the trainer window closes)."""

    def __init__(
        self,
        config: AgentConfig,
        clock: Clock,
        boot: str | None,
        allowlist: AllowlistStore,
        rules: SessionRules,
        keeper: SessionKeeper,
        indicators: Indicators,
        link: Link,
        show_state: Callable[[], None],
    ) -> None:
        self.config = config
        self.clock = clock
        self.boot = boot
        self.allowlist = allowlist
        self.rules = rules
        self.keeper = keeper
        self.indicators = indicators
        self.link = link
        self._show_state = show_state
        # An enrolment station writes new secure badges instead of unlocking (device_agent/enrolment.py).
        self.enrolment: EnrolmentStation | None = None
        if config.reader_mode == "enrol":
            self.enrolment = EnrolmentStation(self.ask_for_enrolment, key_bytes(config.allowlist_key))
        # The tapped card's answer to the key check (secure badges), for the tap's auth/req.
        self._card_auth: CardAuth | None = None
        self.last_decision: Decision | None = None
        # The message last shown at the machine, {"de": …, "en": …} (an ignored tap shows none).
        self.last_message: dict[str, str] | None = None

    # ------------------------------------------------------------------ a badge on the reader

    def handle(self, uid: str, card_auth: CardAuth | None) -> None:
        """Decide the tap of ``uid``; ``card_auth``: how the card answered the key check."""
        self._card_auth = card_auth
        try:
            self._handle(uid)
        finally:
            self._card_auth = None

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

    def _handle(self, uid: str) -> None:
        mono = self.clock.monotonic()
        session = self.keeper.current
        if not _BADGE_RE.match(uid):
            self.indicators.denied()
            self._decided(Decision(uid, "denied", "unreadable", LOCAL_MESSAGES["unreadable"]))
            return
        if self.config.reader_mode == "checkin":
            self._checkin_tap(uid)
        if session is not None and not self.allowlist.genuine(self._card_auth):
            # A copy of the badge in use must not end (or hand over) its session either.
            self.indicators.denied()
            self._decided(Decision(uid, "denied", "badge_not_genuine", LOCAL_MESSAGES["badge_not_genuine"]))
            return
        if session is not None:
            self.close_window_if_over(mono)  # a tap may come before the timer's tick
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

        answer = self.ask_server(uid)
        if answer is not None:
            response, arrived = answer
            if response.decision == "allow":
                if response.session is None:
                    log.warning("the server allowed %s without a session id; making one", uid)
                server_session = response.session or str(uuid.uuid4())
                self.keeper.start(
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

        if not self.allowlist.genuine(self._card_auth):
            self.indicators.denied()
            self._decided(
                Decision(uid, "denied", "badge_not_genuine", LOCAL_MESSAGES["badge_not_genuine"], True)
            )
            return
        allowed, trainer = self.allowlist.check(uid, self.clock.now())
        if allowed:
            session_id = str(uuid.uuid4())
            self.keeper.start(uid, session_id, offline=True, until=None, until_mono=None)
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
        answer = self.ask_server(uid, "checkin")
        if answer is not None:
            response, _arrived = answer
            if response.decision != "allow":
                self.indicators.denied()
            outcome: Outcome = "recorded" if response.decision == "allow" else "denied"
            self._decided(Decision(uid, outcome, response.reason, response.message, language=response.lang))
            return
        now = self.clock.now()
        self.keeper.emit(
            CheckinTap(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(now),
                badge=uid,
                boot=self.boot,
                mono_s=mono_s(self.clock.monotonic()),
            )
        )
        self._decided(Decision(uid, "recorded", "checkin_stored", LOCAL_MESSAGES["checkin_stored"], True))

    def _tap_out(self, uid: str, session: Session) -> None:
        session_id = session.record.id
        if self.keeper.lock_due("tap_out"):
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

    def close_window_if_over(self, mono: float) -> None:
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
        if window.mode == "supervise" and self.keeper.busy():
            # A job of the trainer's session would end with it; handing over mid-job is not done.
            self.indicators.denied()
            self._decided(
                Decision(uid, "denied", "job_running_handover", LOCAL_MESSAGES["job_running_handover"])
            )
            return
        answer = self.ask_server(uid, window.mode, window.trainer)
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
        self.keeper.start(
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

    # ------------------------------------------------------------------ an enrolment station

    def ask_for_enrolment(self, uid: str) -> AuthResp | None:
        answered = self.ask_server(uid, "enrol")
        return answered[0] if answered is not None else None

    def enrolment_tap(self) -> bool:
        """An enrolment station: report a written badge (outbox, so it is never lost) and say how
        it went; False when no card was dealt with since the last call."""
        outcome = self.enrolment.take_outcome() if self.enrolment is not None else None
        if outcome is None:
            return False
        if outcome.enrolment is not None:
            event = BadgeEnrolled(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(self.clock.now()),
                enrolment=outcome.enrolment,
                badge=outcome.uid,
            )
            self.keeper.emit(event)
            self.indicators.unlocked()
        else:
            self.indicators.denied()
        self._decided(
            Decision(
                outcome.uid, "recorded" if outcome.enrolment else "denied", outcome.result, outcome.message
            )
        )
        return True

    # ------------------------------------------------------------------ the server

    def ask_server(
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
            boot=self.boot,
            mono_s=mono_s(self.clock.monotonic()),
            card_auth=self._card_auth,
        )
        return self.link.ask(request)
