"""Energy per session over a real broker and bridge: the plug's counter, its reset, power where
there is no counter, gaps that count nothing, absurd values refused; then the figures the
utilisation dashboard and the funder report show from the daily aggregates."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import select, text

from server.adapters.bridge import Bridge, wait_until
from server.db import Database
from server.models import Machine, MachineSession, UsageDaily
from server.services import dashboards, energy, reports, usage
from tests.conftest import Clock
from tests.mqtt_peer import Peer, device_peer
from werkbank_protocol import format_ts
from werkbank_protocol.messages import Ack, decode_as

PRINTER = "werkbank/v1/dev/pi-printer-1"
START = datetime(2026, 11, 18, 9, 0, tzinfo=UTC)  # inside the test lab's opening hours
DAY = date(2026, 11, 18)


@pytest.fixture
def bridge(lab: Database, mqtt_url: str, clock: Clock) -> Iterator[Bridge]:
    running = Bridge(lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock).start()
    assert running.connected.is_set()
    yield running
    running.stop()


@pytest.fixture
def device(mqtt_url: str) -> Iterator[Peer]:
    with device_peer(mqtt_url, (PRINTER,), ("ack",)) as peer:
        yield peer


def _event(device: Peer, clock: Clock, etype: str, session: str, at: datetime, **fields: object) -> None:
    eid = str(uuid.uuid4())
    clock.now = at  # the device's clock agrees with the bridge's: no event time is corrected
    body = {"v": 1, "id": eid, "ts": format_ts(at), "type": etype, "session": session, **fields}
    device.publish(f"{PRINTER}/event", json.dumps(body).encode())
    assert decode_as(Ack, device.next(f"{PRINTER}/ack")).ids == [eid]


def _start(device: Peer, clock: Clock) -> str:
    session = str(uuid.uuid4())
    _event(device, clock, "session_started", session, START, badge="04A224B2C35E80", offline=False)
    return session


def _end(device: Peer, clock: Clock, session: str, seconds: float) -> None:
    _event(
        device,
        clock,
        "session_ended",
        session,
        START + timedelta(seconds=seconds),
        reason="tap_out",
        unlocked_s=seconds,
        run_s=seconds,
    )


def _send(device: Peer, clock: Clock, readings: list[tuple[float, dict[str, object]]]) -> None:
    """Telemetry at START + seconds, as fast as the broker takes it (one window or several: the
    energy must come out the same)."""
    for seconds, fields in readings:
        clock.now = START + timedelta(seconds=seconds)
        body = {"v": 1, "ts": format_ts(START + timedelta(seconds=seconds)), "running": True, **fields}
        device.publish(f"{PRINTER}/telemetry", json.dumps(body).encode())


def _energy(lab: Database, session: str) -> tuple[float | None, float, str | None]:
    with lab.session() as s:
        row = s.get(MachineSession, session)
        assert row is not None
        return row.energy_wh, row.energy_gap_s, row.energy_source


def _settled(
    bridge: Bridge, lab: Database, session: str, messages: int, wh: float
) -> tuple[float, str | None]:
    """Waits until the bridge took ``messages`` telemetry and wrote ``wh``; gap and source."""
    assert wait_until(lambda: bridge.handled["telemetry"] >= messages, timeout=10), bridge.handled
    assert wait_until(lambda: _energy(lab, session)[0] == pytest.approx(wh), timeout=10), _energy(
        lab, session
    )
    _wh, gap, source = _energy(lab, session)
    return gap, source


def test_energy_counter_difference_is_the_sessions_kwh_on_dashboard_and_report(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    session = _start(device, clock)
    # Ten minutes at about 600 W: the plug's counter grows 10 Wh a minute; its power readings
    # (noisy) would give a slightly different figure, and the counter wins.
    _send(
        device,
        clock,
        [(60 * i, {"power_w": 600.0 + 7 * (i % 2), "energy_wh": 1000.0 + 10 * i}) for i in range(11)],
    )
    gap, source = _settled(bridge, lab, session, 11, 100.0)
    assert (gap, source) == (0.0, "counter")
    _end(device, clock, session, 600)
    # Telemetry after the session ended counts for no session.
    _send(device, clock, [(700, {"power_w": 600.0, "energy_wh": 1110.0})])
    assert wait_until(lambda: bridge.handled["telemetry"] >= 12, timeout=10)
    assert _energy(lab, session) == (pytest.approx(100.0), 0.0, "counter")
    with lab.session() as s:
        ended = s.get(MachineSession, session)
        assert ended is not None  # the last raw reading is not kept past the session's end
        assert (ended.energy_last_at, ended.energy_last_w, ended.energy_last_wh) == (None, None, None)

    usage.refresh(lab, START + timedelta(hours=2))
    with lab.session() as s:
        assert sum(s.scalars(select(UsageDaily.energy_wh))) == pytest.approx(100.0)
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None
        result = dashboards.utilisation(s, printer.site_id, None, None, DAY, DAY)
        shown = {m.slug: m.figures.energy_kwh for m in result.machines}
        assert shown["printer-1"] == pytest.approx(0.1) and result.totals.energy_kwh == pytest.approx(0.1)
        report = reports.funder_report(s, printer.site_id, None, None, DAY, DAY, pseudonyms=False, lang="en")
        machines = {m.name: (m.sessions, m.energy_wh, m.energy_gap_s) for m in report.machines}
        assert machines[printer.name] == (1, pytest.approx(100.0), 0.0)
        assert report.energy_wh == pytest.approx(100.0)


@pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL"), reason="needs PostgreSQL (TEST_DATABASE_URL): row locks"
)
def test_energy_waits_for_a_session_row_another_transaction_holds_and_loses_nothing(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    """The session's row is held by another transaction (the other bridge ingesting one of its
    events, say): the window's energy is put off, not waited for until the window times out
    and is lost, and it counts in full once the row is free."""
    session = _start(device, clock)
    with lab.engine.connect() as locker:
        locker.execute(text("SELECT id FROM sessions WHERE id = :id FOR UPDATE"), {"id": session})
        _send(device, clock, [(60 * i, {"power_w": 600.0, "energy_wh": 1000.0 + 10 * i}) for i in range(6)])
        assert wait_until(lambda: bridge.telemetry_deferred >= 2, timeout=15)  # two windows at least
        assert bridge.handled["telemetry"] == 0 and bridge.rejected["database"] == 0
        locker.rollback()
    _send(device, clock, [(60 * i, {"power_w": 600.0, "energy_wh": 1000.0 + 10 * i}) for i in range(6, 11)])
    gap, source = _settled(bridge, lab, session, 11, 100.0)
    assert (gap, source) == (0.0, "counter")


def test_energy_counter_reset_counts_that_interval_by_power(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    session = _start(device, clock)
    readings = [(0, 5000.0), (60, 5010.0), (120, 5020.0), (180, 3.0), (240, 13.0), (300, 23.0)]
    # The plug restarted between 120 s and 180 s: that minute counts 600 W x 60 s = 10 Wh.
    _send(device, clock, [(t, {"power_w": 600.0, "energy_wh": wh}) for t, wh in readings])
    gap, source = _settled(bridge, lab, session, 6, 50.0)
    assert (gap, source) == (0.0, "mixed")


def test_energy_from_power_where_no_counter_and_a_gap_counts_nothing(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    session = _start(device, clock)
    # 1200 W for a minute (20 Wh), ten minutes silent (a gap: nothing), then 30 s more (10 Wh).
    _send(device, clock, [(0, {"power_w": 1200.0}), (30, {"power_w": 1200.0}), (60, {"power_w": 1200.0})])
    _send(device, clock, [(660, {"power_w": 1200.0}), (690, {"power_w": 1200.0})])
    gap, source = _settled(bridge, lab, session, 5, 30.0)
    assert (gap, source) == (600.0, "power")
    _end(device, clock, session, 700)
    usage.refresh(lab, START + timedelta(hours=2))
    with lab.session() as s:
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None
        result = dashboards.utilisation(s, printer.site_id, None, None, DAY, DAY)
        figures = {m.slug: m.figures for m in result.machines}["printer-1"]
        assert figures.energy_kwh == pytest.approx(0.03)
        assert figures.energy_gap_h == pytest.approx(600 / 3600)  # the gap shows, it is not filled in


def test_energy_absurd_readings_are_refused_counted_and_change_nothing(
    bridge: Bridge, device: Peer, lab: Database, clock: Clock
) -> None:
    session = _start(device, clock)
    _send(
        device,
        clock,
        [(0, {"power_w": 100.0, "energy_wh": 1000.0}), (60, {"power_w": 100.0, "energy_wh": 1002.0})],
    )
    _settled(bridge, lab, session, 2, 2.0)
    before = dict(bridge.rejected)
    _send(
        device,
        clock,
        [
            (70, {"power_w": -5.0}),  # negative: the protocol refuses it
            (80, {"power_w": 2_000_000.0}),  # 2 MW from a maker-space machine
            (90, {"power_w": 100.0, "energy_wh": 5e12}),  # not a plug's counter
            (100, {"power_w": 100.0, "energy_wh": 900_000.0}),  # 900 kWh in 40 s
        ],
    )

    def refused(code: str) -> int:
        return bridge.rejected[code] - before.get(code, 0)

    assert wait_until(
        lambda: (
            refused("invalid") == 1
            and refused("implausible_power") == 1
            and refused("implausible_energy") == 2
        ),
        timeout=10,
    ), bridge.rejected
    # A good reading afterwards counts from the last good one.
    _send(device, clock, [(120, {"power_w": 100.0, "energy_wh": 1003.0})])
    gap, source = _settled(bridge, lab, session, 3, 3.0)
    assert (gap, source) == (0.0, "counter")
    with lab.session() as s:
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None and printer.live_power_w == 100.0  # never one of the absurd ones


def _reading(seconds: float, counter: float | None = None, power: float | None = None) -> energy.Reading:
    return energy.Reading(START + timedelta(seconds=seconds), power, counter)


def test_energy_two_bridges_sharing_a_devices_readings_count_each_interval_once() -> None:
    # With shared subscriptions one bridge gets readings 0, 2, 4 and the other 1, 3, 5 (a minute
    # apart, 10 Wh each): whichever writes first, the session ends at 50 Wh, not about twice that.
    row = MachineSession(id="s", machine_id=1, device_id="d")
    odd = [_reading(60 * i, 1000.0 + 10 * i) for i in (1, 3, 5)]
    even = [_reading(60 * i, 1000.0 + 10 * i) for i in (0, 2, 4)]
    for readings in (even, odd):
        window = energy.Window(readings[0], readings[0])
        for r in readings[1:]:
            window.take(r)
        assert energy.settle(row, window) is None
    assert row.energy_wh == pytest.approx(50.0)  # 0 to 4 minutes by one bridge, 4 to 5 by the other
    assert row.energy_last_at == START + timedelta(seconds=300) and row.energy_source == "counter"


def test_energy_a_session_across_midnight_splits_its_energy_by_time() -> None:
    facts = usage.MachineUsageFacts(machine_id=1, site_id=1, machine_type_id=1, timezone="UTC")
    start = datetime(2026, 11, 18, 23, 0, tzinfo=UTC).timestamp()
    session = usage.SessionFact(None, start, start + 4 * 3600, 4 * 3600, False, 800.0, 600.0)
    agg = usage.compute(facts, [DAY, DAY + timedelta(days=1)], [session], [], [], [], {}, start + 5 * 3600)
    by_day = {row["day"]: (row["energy_wh"], row["energy_gap_s"]) for row in agg.daily_rows()}
    assert by_day == {
        DAY: (pytest.approx(200.0), pytest.approx(150.0)),
        DAY + timedelta(days=1): (600.0, 450.0),
    }
