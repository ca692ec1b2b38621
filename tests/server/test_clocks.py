"""Device clock offsets: the estimate, and the times ingestion takes from it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from server.db import Database
from server.models import AccessDecision, Device, MachineSession, StoredEvent
from server.services import clocks
from server.services.ingest import ingest_event
from werkbank_protocol import format_ts
from werkbank_protocol.messages import SessionEnded, SessionStarted

T0 = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)


class Ticks:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_clocks_estimate_is_the_least_delayed_message_and_late_ones_do_not_move_it() -> None:
    ticks = Ticks()
    offsets = clocks.ClockOffsets(monotonic=ticks)
    behind = 3600.0  # the device's clock is an hour behind
    assert offsets.add("pi", _at(0.030), _at(-behind)) == 3600.030
    assert offsets.add("pi", _at(10.004), _at(10 - behind)) == 3600.004  # a faster delivery
    # A backlog the broker held for 9 s: the estimate stays, so these taps show their age.
    for late in (9.5, 5.0, 1.6):
        assert offsets.add("pi", _at(20), _at(20 - late - behind)) == 3600.004
        assert clocks.tap_age(_at(20 - late - behind), _at(20), 3600.004) > clocks.TAP_MAX_AGE_S
    assert clocks.tap_age(_at(30 - behind), _at(30.01), offsets.estimate("pi") or 0) < 0.01


def test_clocks_window_lets_a_clock_set_back_be_followed_and_forget_starts_afresh() -> None:
    ticks = Ticks()
    offsets = clocks.ClockOffsets(window_s=60, monotonic=ticks)
    offsets.add("pi", _at(0), _at(0))
    ticks.now += 30
    assert offsets.add("pi", _at(30), _at(25)) == 0.0  # set back 5 s: the older sample still rules
    ticks.now += 40
    assert offsets.estimate("pi") == 5.0  # the older sample left the window
    ticks.now += 3600
    assert offsets.estimate("pi") == 5.0  # the newest stays, however old
    offsets.forget("pi")
    assert offsets.estimate("pi") is None
    offsets.seed("pi", 12.0, age_s=10)
    offsets.seed("pi", 99.0, age_s=1)  # a seed never replaces what is known
    assert offsets.estimate("pi") == 12.0


def test_clocks_record_raises_one_fault_per_excursion(lab: Database) -> None:
    with lab.session() as s:
        device = s.get(Device, "pi-laser-1")
        assert device is not None
        for offset in (0.2, 1.9, 3600.0, 3600.1, 0.1, -5.0):
            clocks.record(s, device, offset, T0)
        assert device.clock_offset_s == -5.0 and device.clock_measured_at == T0
        faults = s.scalars(select(StoredEvent).where(StoredEvent.type == "fault")).all()
        assert [(f.payload["code"], f.payload["offset_s"]) for f in faults] == [
            ("clock_skew", 3600.0),
            ("clock_skew", -5.0),
        ]
        assert "behind" in faults[0].payload["detail"] and "ahead" in faults[1].payload["detail"]


def test_clocks_ingest_corrects_skewed_times_and_starts_online_sessions_at_their_decision(
    lab: Database,
) -> None:
    with lab.session() as s:
        device = s.get(Device, "pi-laser-1")
        assert device is not None
        device.clock_offset_s = -120.0  # two minutes ahead
        online, offline = str(uuid.uuid4()), str(uuid.uuid4())
        s.add(
            AccessDecision(
                id=str(uuid.uuid4()),
                device_id="pi-laser-1",
                badge_uid="04A224B2C35E80",
                decision="allow",
                reason="ok",
                session_id=online,
                decided_at=T0,
                response={},
            )
        )
        s.flush()
        ahead = T0 + timedelta(minutes=2)
        for event in (
            SessionStarted(
                v=1, id=str(uuid.uuid4()), ts=format_ts(ahead), session=online, badge="04A224B2C35E80"
            ),
            SessionEnded(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(ahead + timedelta(minutes=5)),
                session=online,
                reason="tap_out",
                unlocked_s=300,
            ),
            SessionStarted(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(ahead),
                session=offline,
                badge="04A224B2C35E80",
                offline=True,
            ),
        ):
            ingest_event(s, device, event, T0)
        first, second = s.get(MachineSession, online), s.get(MachineSession, offline)
        assert first is not None and second is not None
        assert (first.started_at, first.ended_at, first.time_corrected) == (
            T0,
            T0 + timedelta(minutes=5),
            True,
        )
        assert (second.started_at, second.time_corrected) == (T0, True)
        stored = s.scalars(select(StoredEvent).where(StoredEvent.session_id == online)).all()
        assert all(
            e.time_corrected and e.payload["ts"] == format_ts(e.ts + timedelta(minutes=2)) for e in stored
        )

        # In step (within the tolerance): the device's times stand, nothing is flagged.
        device.clock_offset_s = 0.8
        third = str(uuid.uuid4())
        ingest_event(
            s,
            device,
            SessionStarted(
                v=1,
                id=str(uuid.uuid4()),
                ts=format_ts(T0),
                session=third,
                badge="04A224B2C35E80",
                offline=True,
            ),
            T0,
        )
        row = s.get(MachineSession, third)
        assert row is not None and (row.started_at, row.time_corrected) == (T0, False)


def test_clocks_a_backlog_after_a_cut_link_never_settles_but_a_real_skew_does() -> None:
    # Back from a cut link, a device first delivers what it queued: stamped a minute ago, it says
    # "a minute behind" until its first fresh message, a few seconds later. Event times must not
    # be moved by that (the fault suite's link-1min scenario stored starts 55 s off before this).
    ticks = Ticks()
    offsets = clocks.ClockOffsets(monotonic=ticks)
    offsets.add("pi", _at(0), _at(-60))  # the backlog
    ticks.now += 7
    assert offsets.settled("pi", settle_s=30) is None
    offsets.add("pi", _at(7.05), _at(7))  # its first fresh message
    ticks.now += 29
    assert offsets.settled("pi", settle_s=30) is None  # the fresh estimate has not stood long yet
    ticks.now += 2
    assert offsets.settled("pi", settle_s=30) == pytest.approx(0.05)
    # A clock that is really an hour behind says so message after message: that settles.
    offsets.forget("pi")
    offsets.add("pi", _at(100), _at(100 - 3600))
    for step in range(1, 4):
        ticks.now += 10
        offsets.add("pi", _at(100 + 10 * step + 0.01), _at(100 + 10 * step - 3600))
    ticks.now += 1
    assert offsets.settled("pi", settle_s=30) == 3600.0
