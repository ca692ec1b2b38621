"""Device clocks: how far each agent's clock is off the server's, and what a device's times mean.

A Pi has no battery-backed clock: after a power cut it may run on the time it shut down until NTP
answers, or for good when NTP is blocked. Every message a device sends says when it was sent
(``ts``) and the bridge notes when it arrived. Transport only ever adds delay, so for each
message ``arrived - sent = offset + delay >= offset``: the smallest value over recent messages
is the offset plus the smallest delay (milliseconds on a LAN). Only live messages count:
the broker delivers retained ones (and QoS 1 ones queued while the bridge was away) late.

What the offset is used for:

* a tap (``auth/req``) the agent has stopped waiting for is not answered (:func:`tap_age`);
* event times off by more than :data:`TOLERANCE_S` are corrected by it, and the event and its
  session are flagged ``time_corrected`` (:func:`event_time`); an online session starts at the
  server's own decision, whatever the device's clock said;
* a device whose clock is off by more than the tolerance gets a ``clock_skew`` fault in the
  events ledger (:func:`record`) and a tag on the devices page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.models import AccessDecision, Device, StoredEvent, new_uuid
from werkbank_protocol import format_ts, parse_ts
from werkbank_protocol.messages import Event, SessionStarted

log = logging.getLogger(__name__)

# Beyond this a device's clock is "off": its event times are corrected and a fault is raised.
TOLERANCE_S = 2.0
# The protocol's agent waits 1.5 s for an answer, then decides offline; past that (plus a little
# for the estimate's own error) an answer only records a decision nobody acted on.
AGENT_WAIT_S = 1.5
TAP_MAX_AGE_S = AGENT_WAIT_S + 0.05
# How long a sample counts. Long enough to outlast a backlog of late messages (they cannot lower
# the minimum), short enough that a clock set back is followed within minutes.
WINDOW_S = 15 * 60.0
# An estimate is stored (and corrects event times) only once it has stood this long unbeaten: a
# device back from a cut link first delivers its backlog (QoS 1 messages queued while the link was
# dead, stamped up to an hour ago), and those samples say "an hour behind" until the first fresh
# message beats them, seconds later. A real skew stands; a backlog's does not.
SETTLE_S = 30.0
# Samples kept per device at most (the window's minimum needs few: see ClockOffsets.add).
MAX_SAMPLES = 256
FAULT_CODE = "clock_skew"
# A stored estimate is rewritten only when it moves this much, or when it is this old (a bridge
# restarted later seeds from it, so it must stay within WINDOW_S).
RECORD_STEP_S = 0.05
RECORD_EVERY = timedelta(seconds=60)


class ClockOffsets:
    """The offset of each device's clock (seconds the device is behind; negative: ahead):
    the minimum of ``arrived - sent`` over the last :data:`WINDOW_S`. Thread-safe."""

    def __init__(self, window_s: float = WINDOW_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._monotonic = monotonic
        # Per device (noted at, sample), samples rising from left to right: a sample with a
        # smaller or equal one after it can never be the minimum again and is dropped.
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()

    def add(self, device_id: str, arrived: datetime, sent: datetime) -> float:
        """Note one live message; returns the estimate with it."""
        sample = (arrived - sent).total_seconds()
        now = self._monotonic()
        with self._lock:
            samples = self._samples.setdefault(device_id, deque())
            while samples and samples[-1][1] >= sample:
                samples.pop()
            if len(samples) < MAX_SAMPLES:
                samples.append((now, sample))
            self._trim(samples, now)
            return samples[0][1]

    def estimate(self, device_id: str) -> float | None:
        with self._lock:
            samples = self._samples.get(device_id)
            if not samples:
                return None
            self._trim(samples, self._monotonic())
            return samples[0][1]

    def settled(self, device_id: str, settle_s: float = SETTLE_S) -> float | None:
        """The estimate once it has stood unbeaten for ``settle_s`` (None before): what event
        times may be corrected by. The deque's first sample is the minimum; a smaller sample
        replaces it (and restarts the wait), so its age is how long it has stood."""
        with self._lock:
            samples = self._samples.get(device_id)
            if not samples:
                return None
            now = self._monotonic()
            self._trim(samples, now)
            noted, sample = samples[0]
            return sample if noted <= now - settle_s else None

    def seed(self, device_id: str, offset_s: float, age_s: float) -> None:
        """Start from a stored estimate (measured ``age_s`` ago) when nothing newer is known."""
        with self._lock:
            if self._samples.get(device_id):
                return
            self._samples[device_id] = deque([(self._monotonic() - age_s, offset_s)])

    def forget(self, device_id: str) -> None:
        """The device restarted: its clock may have jumped either way, so start afresh."""
        with self._lock:
            self._samples.pop(device_id, None)

    def _trim(self, samples: deque[tuple[float, float]], now: float) -> None:
        # The newest sample stays even when old: a device that said nothing for a while is
        # still better judged by it than by nothing.
        while len(samples) > 1 and samples[0][0] < now - self.window_s:
            samples.popleft()


def tap_age(sent: datetime, now: datetime, offset_s: float) -> float:
    """Seconds since the device sent a message it stamped ``sent``, on the server's clock."""
    return (now - sent).total_seconds() - offset_s


def skewed(offset_s: float | None) -> bool:
    return offset_s is not None and abs(offset_s) > TOLERANCE_S


def needs_record(
    stored_s: float | None, measured_at: datetime | None, offset_s: float, now: datetime
) -> bool:
    """Whether ``offset_s`` is news against the stored estimate: it moved, or the stored one
    is older than :data:`RECORD_EVERY`."""
    unchanged = stored_s is not None and abs(stored_s - offset_s) < RECORD_STEP_S
    return not (unchanged and measured_at is not None and now - measured_at < RECORD_EVERY)


def record(db: Session, device: Device, offset_s: float, now: datetime) -> None:
    """Store ``device``'s estimated offset; when it goes past the tolerance, a ``clock_skew``
    fault goes into the events ledger (like an agent's own fault), once per excursion."""
    was_skewed = skewed(device.clock_offset_s)
    if not needs_record(device.clock_offset_s, device.clock_measured_at, offset_s, now):
        return  # the same estimate again (each telemetry window brings one): no write
    device.clock_offset_s = round(offset_s, 3)
    device.clock_measured_at = now
    if skewed(offset_s) and not was_skewed:
        detail = (
            f"the device's clock is {abs(offset_s):.0f} s {'behind' if offset_s > 0 else 'ahead of'} "
            "the server's; its event times are corrected. Check NTP on the Pi."
        )
        event_id = new_uuid()
        db.add(
            StoredEvent(
                id=event_id,
                device_id=device.id,
                type="fault",
                ts=now,
                payload={
                    "v": 1,
                    "id": event_id,
                    "ts": format_ts(now),
                    "type": "fault",
                    "code": FAULT_CODE,
                    "detail": detail,
                    "offset_s": round(offset_s, 3),
                    "source": "server",
                },
            )
        )
        log.warning("device %s: %s", device.id, detail)
    elif was_skewed and not skewed(offset_s):
        log.info("device %s: clock back in step (%.3f s off)", device.id, offset_s)


def event_time(db: Session, device: Device, event: Event) -> tuple[datetime, bool]:
    """When ``event`` happened on the server's clock, and whether that is not the device's ``ts``.

    An online session starts when the server allowed it (its ``access_decisions`` row); any
    other time is the device's, moved by the device's offset when that is beyond the tolerance.
    """
    sent = parse_ts(event.ts)
    when: datetime | None = None
    if isinstance(event, SessionStarted) and not event.offline:
        when = db.scalar(
            select(AccessDecision.decided_at).where(
                AccessDecision.session_id == event.session,
                AccessDecision.device_id == device.id,
                AccessDecision.decision == "allow",
            )
        )
    if when is None and skewed(device.clock_offset_s):
        assert device.clock_offset_s is not None
        when = sent + timedelta(seconds=device.clock_offset_s)
    if when is None:
        return sent, False
    return when, abs((when - sent).total_seconds()) > TOLERANCE_S
