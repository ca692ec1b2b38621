"""The session rules at the machine: when a session locks, and what a tap means while one is open.

:class:`SessionRules` decides; the agent acts (relay, lights, events, messages). The rules:

- **Never off mid-job** (:meth:`SessionRules.lock`): a lock that falls due while the machine is busy
  waits (``lock_deferred``, once) and happens with its first reason when the job ends; only a forced
  ``lock`` command cuts power mid-job. The machine is busy while the monitor says it runs and while
  the session has a job whose end has not been reported (a paused print, the gap between passes).
- **Timers** (:meth:`SessionRules.lock_at_tick`): the session's ``until`` (a booking's end or the
  longest session) and the idle timeout, counted from the last time the machine was busy.
- **The "ending soon" warning** (:meth:`SessionRules.warning_due`), once per session.
- **A tap while a session is open** (:meth:`SessionRules.tap`): another badge finds the machine in
  use; the session's own badge (or its supervising trainer's) taps out, except within the tap-out
  grace after the unlock (the card was still near the reader).
- **The trainer window**: when the server says the person it allowed is a trainer here, a window
  opens for ``[session] trainer_window_s``. A participant's badge in it asks for mode ``supervise``
  (the trainer's session hands over to the participant's supervised one, relay closed throughout);
  the trainer's own badge arms a sign-off instead (mode ``certify``), and a third tap taps out.

Times are boot-clock readings (:mod:`device_agent.clock`), passed in by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from device_agent.clock import Clock
from device_agent.config import AgentConfig
from device_agent.jobs import Job
from device_agent.storage import OpenSession
from werkbank_protocol import parse_ts
from werkbank_protocol.messages import AuthResp, EndReason

WindowMode = Literal["supervise", "certify"]
# What a tap means while a session is open (see SessionRules.tap).
TapMeaning = Literal["window", "in_use", "grace", "tap_out"]
# What the trainer's own badge does in the window: nothing yet, arm the sign-off, or tap out.
TrainerTap = Literal["grace", "armed", "tap_out"]
# What a lock that falls due does: happen now, wait for the job (first time), or keep waiting.
LockOutcome = Literal["now", "deferred", "waiting"]


@dataclass
class Session:
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
    job: Job | None = None
    # The reason of a lock that is due but waits for the job to end.
    lock_pending: EndReason | None = None
    # The "ending soon" warning was given (once per session; a restarted agent warns again).
    warned: bool = False


@dataclass
class TrainerWindow:
    """A trainer's session is open and their next move is awaited."""

    trainer: str  # the trainer's badge (the open session's)
    mode: WindowMode  # what a participant's badge asks for now
    ends_mono: float
    changed_mono: float  # opened or armed: the tap-out grace counts from here


def until_mono(response: AuthResp, arrived: float, clock: Clock) -> float | None:
    """When the unlock ends, on the boot clock: the server's ``until_s`` from the answer's
    arrival; from an older server without it, ``until`` against this clock, taken once."""
    if response.until_s is not None:
        return arrived + response.until_s
    if response.until is None:
        return None
    return arrived + (parse_ts(response.until) - clock.now()).total_seconds()


class SessionRules:
    """Decides when the open session locks and what a tap means; holds the trainer window."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.window: TrainerWindow | None = None

    # ------------------------------------------------------------------ locks

    @staticmethod
    def busy(session: Session | None, machine_running: bool) -> bool:
        """The machine is mid-job: cutting its power now would spoil work.

        A job counts until the monitor reports its end, also while the machine pauses
        (a paused print, the gap between two passes of a cut).
        """
        return machine_running or (session is not None and session.job is not None)

    @staticmethod
    def lock(session: Session, reason: EndReason, force: bool, busy: bool) -> LockOutcome:
        """A lock is due for ``reason``: ``now`` unless the machine is busy and it is not forced.

        Mid-job it waits: the first time (``deferred``) the session notes the reason, and the lock
        happens with it when the job ends (:meth:`lock_at_tick`); a later one keeps ``waiting``.
        """
        if force or not busy:
            return "now"
        if session.lock_pending is None:
            session.lock_pending = reason
            return "deferred"
        return "waiting"

    def lock_at_tick(self, session: Session, mono: float, busy: bool) -> tuple[EndReason, bool] | None:
        """The lock that falls due at ``mono``, if any: ``(reason, True)`` for a deferred lock whose
        job has ended (it happens now), ``(reason, False)`` for one the clock makes due now (a
        booking's end, the longest session, the idle timeout; it waits while the machine is busy)."""
        if session.lock_pending is not None:
            return (session.lock_pending, True) if not busy else None
        if session.until_mono is not None and mono >= session.until_mono:
            # A booking begins (someone else's) or ends (the holder's): the lock says so.
            return ("booking_end" if session.until_reason == "booking" else "max_duration"), False
        idle = self.config.session_idle_timeout_s
        if idle > 0 and mono - session.active_mono >= idle:
            return "idle_timeout", False
        return None

    def warning_due(self, session: Session | None, mono: float) -> float | None:
        """Once per session, ``warn_before_end_s`` before its ``until``: the seconds left when the
        warning is due now (and it counts as given), else None.

        A session that starts inside that time is warned at once (its greeting named ``until``
        already, but a short session deserves the sound too). No warning while a lock waits
        for a job already: the lights show "lock pending".
        """
        warn_s = self.config.session_warn_before_end_s
        if session is None or session.warned or session.until_mono is None or warn_s <= 0:
            return None
        if session.lock_pending is not None:
            return None
        left = session.until_mono - mono
        if left > warn_s or left <= 0:
            return None
        session.warned = True
        return left

    # ------------------------------------------------------------------ taps

    def tap(self, uid: str, session: Session, mono: float) -> TapMeaning:
        """What a tap of ``uid`` means while ``session`` is open (the caller has closed a trainer
        window whose time is up)."""
        window = self.window
        if window is not None and window.trainer == session.record.badge:
            return "window"
        if uid not in (session.record.badge, session.record.trainer_badge):
            # (The supervising trainer may end a supervised session too.)
            return "in_use"
        if mono - session.started_mono < self.config.session_tap_out_grace_s:
            # The card was still near the reader after unlocking: not a tap-out.
            return "grace"
        return "tap_out"

    # ------------------------------------------------------------------ the trainer window

    def open_window(self, uid: str, mono: float) -> float | None:
        """Open the trainer window for ``uid``'s new session; its seconds, or None when configured off."""
        seconds = self.config.session_trainer_window_s
        if seconds <= 0:
            return None
        self.window = TrainerWindow(uid, "supervise", mono + seconds, mono)
        return seconds

    def close_window_if_over(self, mono: float) -> bool:
        """Close the window when its time is up; True if it closed now."""
        if self.window is not None and mono >= self.window.ends_mono:
            self.window = None
            return True
        return False

    def trainer_tap(self, window: TrainerWindow, mono: float) -> TrainerTap:
        """The trainer's own badge in the window: within the grace nothing, then it arms the
        sign-off (the next participant's badge asks for ``certify``), then it taps out."""
        if mono - window.changed_mono < self.config.session_tap_out_grace_s:
            return "grace"
        if window.mode == "supervise":
            # Instead of tapping out: the next participant's badge records a sign-off.
            window.mode = "certify"
            window.changed_mono = mono
            window.ends_mono = mono + self.config.session_trainer_window_s
            return "armed"
        # Armed already: a third tap of the trainer's own badge taps out as usual.
        self.window = None
        return "tap_out"
