"""When things break, over a real broker with a real bridge: skewed device clocks, taps the agent
stopped waiting for, a broker that lost its retained allow-lists, a locked events table, and
offline sessions of people who were not allowed."""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from server.adapters.bridge import Bridge, wait_until
from server.broker import MosquittoProcess
from server.db import Database
from server.models import (
    AccessDecision,
    AuditLog,
    Competency,
    Device,
    Machine,
    MachineSession,
    Person,
    StoredEvent,
)
from server.services import notifications, training
from tests.mqtt_peer import Peer, device_peer
from werkbank_protocol import format_ts
from werkbank_protocol.allowlist import badge_hash, key_bytes, verify
from werkbank_protocol.messages import Ack, AuthResp, Cmd, decode_as

PRINTER = "werkbank/v1/dev/pi-printer-1"
LASER = "werkbank/v1/dev/pi-laser-1"
QUINN = "04A224B2C35E80"


@pytest.fixture
def bridge(lab: Database, mqtt_url: str, clock) -> Iterator[Bridge]:  # type: ignore[no-untyped-def]
    # Offsets count at once here (the wait for an estimate to stand is tested in test_clocks.py).
    running = Bridge(
        lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock, clock_settle_s=0
    ).start()
    assert running.connected.is_set()
    yield running
    running.stop()


@pytest.fixture
def device(mqtt_url: str) -> Iterator[Peer]:
    with device_peer(mqtt_url, (PRINTER, LASER), ("auth/resp", "ack", "cmd")) as peer:
        yield peer


def _req(badge: str, ts: datetime) -> tuple[str, bytes]:
    rid = str(uuid.uuid4())
    return rid, json.dumps({"v": 1, "id": rid, "ts": format_ts(ts), "badge": badge}).encode()


def _event(etype: str, session: str, ts: datetime, **fields: object) -> tuple[str, bytes]:
    eid = str(uuid.uuid4())
    body = {"v": 1, "id": eid, "ts": format_ts(ts), "type": etype, "session": session, **fields}
    return eid, json.dumps(body).encode()


def _status(machine: str, ts: datetime, **fields: object) -> bytes:
    body = {"v": 1, "online": True, "state": "locked", "machine": machine, "fw": "1.0", "ts": format_ts(ts)}
    return json.dumps({**body, **fields}).encode()


def _online(db: Database, device_id: str) -> bool:
    with db.session() as s:
        found = s.get(Device, device_id)
        return bool(found and found.online)


# -- finding 3: an agent clock an hour behind ----------------------------------------------------


def test_bridge_skewed_device_clock_sessions_take_the_servers_time(
    bridge: Bridge, device: Peer, lab: Database, clock
) -> None:  # type: ignore[no-untyped-def]
    behind = clock() - timedelta(hours=1)  # the Pi's clock: an hour behind the server's
    device.publish(f"{LASER}/status", _status("laser-1", behind))
    assert wait_until(lambda: _online(lab, "pi-laser-1"))

    _rid, tap = _req(QUINN, behind)
    device.publish(f"{LASER}/auth/req", tap)
    resp = decode_as(AuthResp, device.next(f"{LASER}/auth/resp"))
    assert resp.decision == "allow" and resp.session is not None  # an hour "old", but sent just now
    _, start = _event("session_started", resp.session, behind, badge=QUINN, offline=False)
    device.publish(f"{LASER}/event", start)
    device.next(f"{LASER}/ack")
    with lab.session() as s:
        row = s.get(MachineSession, resp.session)
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert row is not None and laser is not None
        assert row.started_at == clock()  # the server's decision, not an hour early
        assert laser.live_session_id == resp.session  # the machine page shows who is on it

    # The session's end: the device's time, corrected by its measured offset.
    _, end = _event(
        "session_ended", resp.session, behind + timedelta(minutes=10), reason="tap_out", unlocked_s=600
    )
    device.publish(f"{LASER}/event", end)
    device.next(f"{LASER}/ack")
    with lab.session() as s:
        row = s.get(MachineSession, resp.session)
        pi = s.get(Device, "pi-laser-1")
        assert row is not None and pi is not None
        assert row.ended_at == clock() + timedelta(minutes=10) and row.time_corrected
        assert pi.clock_offset_s == pytest.approx(3600, abs=1)
        faults = s.scalars(
            select(StoredEvent).where(StoredEvent.device_id == "pi-laser-1", StoredEvent.type == "fault")
        ).all()
        assert [f.payload["code"] for f in faults] == ["clock_skew"]  # once, not per message


def test_bridge_measures_a_restarted_device_afresh(
    bridge: Bridge, device: Peer, lab: Database, clock
) -> None:  # type: ignore[no-untyped-def]
    device.publish(f"{LASER}/status", _status("laser-1", clock()))  # in step
    assert wait_until(lambda: _online(lab, "pi-laser-1"))
    device.publish(f"{LASER}/status", json.dumps({"v": 1, "online": False}))  # its last will
    assert wait_until(lambda: not _online(lab, "pi-laser-1"))
    # Back after a power cut, before NTP answered: an hour behind. Its taps are fresh all the same.
    behind = clock() - timedelta(hours=1)
    device.publish(f"{LASER}/status", _status("laser-1", behind))
    assert wait_until(lambda: _online(lab, "pi-laser-1"))
    rid, tap = _req(QUINN, behind)
    device.publish(f"{LASER}/auth/req", tap)
    assert decode_as(AuthResp, device.next(f"{LASER}/auth/resp")).req == rid
    assert bridge.rejected["stale"] == 0


# -- finding 5: answers the agent no longer waits for ---------------------------------------------


def test_bridge_drops_taps_the_agent_stopped_waiting_for(
    lab: Database, mqtt_url: str, device: Peer, clock
) -> None:  # type: ignore[no-untyped-def]
    client_id = f"bridge-{uuid.uuid4().hex[:6]}"
    first = Bridge(lab, mqtt_url, client_id=client_id, clock=clock, clock_settle_s=0).start()
    try:
        device.publish(f"{PRINTER}/status", _status("printer-1", clock()))  # a Pi in step with us
        assert wait_until(lambda: _online(lab, "pi-printer-1"))
    finally:
        first.stop()  # its broker session stays: the taps below queue for it
    late = [1.6, 2.5, 3.3, 4.1, 5.0, 5.8, 6.7, 7.5, 8.6, 9.5]
    for seconds in late:  # tapped while no bridge answered: each agent decided offline after 1.5 s
        device.publish(f"{PRINTER}/auth/req", _req(QUINN, clock() - timedelta(seconds=seconds))[1])

    second = Bridge(lab, mqtt_url, client_id=client_id, clock=clock, clock_settle_s=0).start()
    try:
        rid, fresh = _req(QUINN, clock())
        device.publish(f"{PRINTER}/auth/req", fresh)
        resp = decode_as(AuthResp, device.next(f"{PRINTER}/auth/resp"))
        assert resp.req == rid  # the first answer is the fresh tap's: the late ones got none
        assert device.drain(f"{PRINTER}/auth/resp") == []
        assert second.wait_for_decision_log()  # written just after the answer went out
        with lab.session() as s:
            assert [d.id for d in s.scalars(select(AccessDecision))] == [rid]  # no phantom "allow"
        assert second.rejected["stale"] == len(late)
    finally:
        second.stop()


# -- finding 4: allow-lists after a broker crash ---------------------------------------------------


def _laser_key(lab: Database) -> bytes:
    with lab.session() as s:
        laser = s.scalar(select(Machine).where(Machine.slug == "laser-1"))
        assert laser is not None
        return key_bytes(laser.allowlist_key)


def test_bridge_republishes_allowlists_when_the_broker_restarts_empty(  # type: ignore[no-untyped-def]
    lab: Database, clock, mosquitto_bin: str
) -> None:
    # mosquitto_bin fails (never skips) without Mosquitto: this test restarts a broker of its own.
    broker = MosquittoProcess().start()
    bridge = Bridge(lab, broker.url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock).start()
    try:
        pi = Peer(broker.url)
        pi.subscribe(f"{LASER}/allowlist")
        before = verify(_laser_key(lab), pi.next(f"{LASER}/allowlist"), clock(), machine="laser-1")
        pi.close()
        broker.stop()  # persistence off, Mosquitto's default: the retained lists are gone
        broker = MosquittoProcess(port=broker.port).start()
        assert wait_until(bridge.connected.is_set, timeout=20)
        wiped = Peer(broker.url)  # a Pi with a new SD card: nothing on disk, nothing retained
        try:
            wiped.subscribe(f"{LASER}/allowlist")
            after = verify(_laser_key(lab), wiped.next(f"{LASER}/allowlist", timeout=5), clock(), "laser-1")
        finally:
            wiped.close()
        assert after.version > before.version
        assert badge_hash(_laser_key(lab), QUINN) in {e.badge_hash for e in after.entries}
    finally:
        bridge.stop()
        broker.stop()


def test_bridge_sends_a_new_device_its_allowlist_when_it_comes_online(
    bridge: Bridge, lab: Database, mqtt_url: str, clock
) -> None:  # type: ignore[no-untyped-def]
    assert wait_until(lambda: bridge.publish_allowlists() == 0)  # the start-up round is out
    with lab.session() as s:  # the laser's Pi is replaced by a new one with its own id
        old = s.get(Device, "pi-laser-1")
        assert old is not None
        laser_id = old.machine_id
        old.machine_id = None
        s.flush()
        s.add(Device(id="pi-laser-new", machine_id=laser_id))
    new_pi = Peer(mqtt_url)
    try:
        new_pi.subscribe("werkbank/v1/dev/pi-laser-new/allowlist")
        time.sleep(0.3)
        assert new_pi.drain("werkbank/v1/dev/pi-laser-new/allowlist") == []  # nothing retained for it
        new_pi.publish("werkbank/v1/dev/pi-laser-new/status", _status("laser-1", clock()))
        doc = verify(
            _laser_key(lab), new_pi.next("werkbank/v1/dev/pi-laser-new/allowlist"), clock(), "laser-1"
        )
        assert badge_hash(_laser_key(lab), QUINN) in {e.badge_hash for e in doc.entries}
    finally:
        new_pi.close()


def test_bridge_republishes_an_allowlist_someone_cleared(
    bridge: Bridge, lab: Database, mqtt_url: str, clock
) -> None:  # type: ignore[no-untyped-def]
    pi = Peer(mqtt_url)
    try:
        pi.subscribe(f"{LASER}/allowlist")
        first = verify(_laser_key(lab), pi.next(f"{LASER}/allowlist"), clock(), "laser-1")
        pi.publish(f"{LASER}/allowlist", b"", retain=True)  # e.g. a device that may write there
        assert pi.next(f"{LASER}/allowlist") == b""
        again = verify(_laser_key(lab), pi.next(f"{LASER}/allowlist"), clock(), "laser-1")
        assert again.version > first.version
    finally:
        pi.close()


# -- finding 6: one stalled table stalls every machine -------------------------------------------

needs_postgresql = pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL"),
    reason="needs PostgreSQL (TEST_DATABASE_URL): SQLite has no table locks to hold",
)


def _tap_times(device: Peer, n: int, clock) -> list[float]:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(n):
        rid, tap = _req(QUINN, clock())
        started = time.monotonic()
        device.publish(f"{LASER}/auth/req", tap)
        assert decode_as(AuthResp, device.next(f"{LASER}/auth/resp")).req == rid
        times.append(time.monotonic() - started)
    return times


@needs_postgresql
def test_bridge_answers_taps_while_the_events_table_is_locked(
    bridge: Bridge, device: Peer, lab: Database, clock
) -> None:  # type: ignore[no-untyped-def]
    session = str(uuid.uuid4())
    eid, event = _event("session_started", session, clock(), badge=QUINN, offline=True)
    with lab.engine.connect() as locker:
        locker.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
        locked_at = time.monotonic()
        device.publish(f"{PRINTER}/event", event)  # its ingestion waits for the lock
        times = _tap_times(device, 5, clock)
        assert device.drain(f"{PRINTER}/ack") == []  # not stored yet, so not acknowledged
        time.sleep(max(0.0, 3.0 - (time.monotonic() - locked_at)))
        locker.rollback()  # the lock goes
    assert max(times) < 1.0, times  # answered before the agent gives up (1.5 s), while events wait
    assert decode_as(Ack, device.next(f"{PRINTER}/ack", timeout=10)).ids == [eid]
    with lab.session() as s:
        assert s.scalar(select(func.count()).select_from(StoredEvent).where(StoredEvent.id == eid)) == 1
        assert s.get(MachineSession, session) is not None


@needs_postgresql
def test_bridge_gives_up_on_a_locked_event_after_its_timeout_and_takes_it_again_later(
    lab: Database, mqtt_url: str, device: Peer, clock
) -> None:  # type: ignore[no-untyped-def]
    bridge = Bridge(
        lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock, ingest_timeout_s=1
    )
    bridge.start()
    try:
        _tap_times(device, 1, clock)  # the bridge is subscribed and answering
        eid, event = _event("session_started", str(uuid.uuid4()), clock(), badge=QUINN, offline=True)
        with lab.engine.connect() as locker:
            locker.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            device.publish(f"{PRINTER}/event", event)
            # It gave up after its 1 s (no ack).
            assert wait_until(lambda: bridge.rejected["database"] >= 1, timeout=10), dict(bridge.rejected)
            times = _tap_times(device, 3, clock)
            locker.rollback()
        assert max(times) < 1.0, times
        assert device.drain(f"{PRINTER}/ack") == []
        device.publish(f"{PRINTER}/event", event)  # the agent re-sends what was not acknowledged
        assert decode_as(Ack, device.next(f"{PRINTER}/ack")).ids == [eid]
        with lab.session() as s:
            assert s.scalar(select(func.count()).select_from(StoredEvent).where(StoredEvent.id == eid)) == 1
    finally:
        bridge.stop()


def _live(db: Database) -> dict[str, tuple[bool | None, float | None]]:
    with db.session() as s:
        return {m.slug: (m.live_running, m.live_power_w) for m in s.scalars(select(Machine))}


@needs_postgresql
def test_shared_bridges_write_telemetry_while_another_transaction_holds_a_machine_row(
    lab: Database, mqtt_url: str, device: Peer, clock
) -> None:  # type: ignore[no-untyped-def]
    """Two bridges share the telemetry (MQTT_SHARED_SUBSCRIPTIONS). A long transaction holds the
    printer's machine row (an allow-list round builds every list in one, an admin's bulk edit
    marks every machine's list): the laser's live state is written all the same, and the
    printer's once the row is free. Before, every window waited for the row, timed out and
    was lost whole: the fleet bench saw two bridges ingest nothing for seconds."""
    bridges = [
        Bridge(lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock, shared=True).start()
        for _ in range(2)
    ]
    try:
        with lab.engine.connect() as locker:
            locker.execute(text("SELECT id FROM machines WHERE slug = 'printer-1' FOR UPDATE"))
            # The broker hands the messages to the two bridges in turn: in this order each
            # bridge gets some of either device's.
            for i in range(6):
                sent = format_ts(clock() + timedelta(seconds=i))
                pair = [(PRINTER, 100.0 + i), (LASER, 200.0 + i)]
                for where, power in pair if i % 2 == 0 else pair[::-1]:
                    body = {"v": 1, "ts": sent, "running": True, "power_w": power}
                    device.publish(f"{where}/telemetry", json.dumps(body).encode(), qos=0)
            # (Each bridge writes the newest state of what it got: either may be last.)
            assert wait_until(lambda: _live(lab)["laser-1"][1] is not None, timeout=15), _live(lab)
            assert _live(lab)["printer-1"][1] is None  # still held: not written yet, not lost
            locker.rollback()
        assert wait_until(lambda: _live(lab)["printer-1"][1] is not None, timeout=15), _live(lab)
        assert wait_until(lambda: sum(b.handled["telemetry"] for b in bridges) == 12, timeout=5)
        assert sum(b.rejected["database"] for b in bridges) == 0
    finally:
        for bridge in bridges:
            bridge.stop()


def _versions(db: Database) -> dict[str, int]:
    with db.session() as s:
        return {m.slug: m.allowlist_version for m in s.scalars(select(Machine))}


@needs_postgresql
def test_bridge_forced_allowlist_round_comes_back_for_a_machine_whose_row_was_held(
    lab: Database, mqtt_url: str, clock
) -> None:  # type: ignore[no-untyped-def]
    """A forced round (the broker lost its retained lists) skips a machine whose row another
    transaction holds, as every round does; it marks that machine for the next round, or its
    device would go without a list on the broker."""
    # Not started: no publishing thread of its own runs rounds meanwhile (what it publishes
    # waits in its client).
    bridge = Bridge(lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock)
    try:
        _forced_round_with_a_row_held(bridge, lab)
    finally:
        bridge.stop()


def _forced_round_with_a_row_held(bridge: Bridge, lab: Database) -> None:
    bridge.publish_allowlists()
    assert bridge.publish_allowlists() == 0
    before = _versions(lab)
    done: list[int] = []
    with lab.engine.connect() as locker:
        locker.execute(text("SELECT id FROM machines WHERE slug = 'printer-1' FOR UPDATE"))
        forced = threading.Thread(target=lambda: done.append(bridge.publish_allowlists(force=True)))
        forced.start()
        assert wait_until(lambda: _versions(lab)["laser-1"] > before["laser-1"], timeout=10)
        assert _versions(lab)["printer-1"] == before["printer-1"]
        locker.rollback()
    forced.join(timeout=10)
    assert done == [len(before) - 1]
    assert bridge.publish_allowlists() == 1  # the next round
    assert _versions(lab)["printer-1"] == before["printer-1"] + 1


# -- finding 7: offline sessions of a revoked person ----------------------------------------------


def test_bridge_offline_session_of_a_revoked_person_is_locked_flagged_and_reported(
    bridge: Bridge, device: Peer, lab: Database, clock
) -> None:  # type: ignore[no-untyped-def]
    revoked_at = clock() - timedelta(minutes=30)
    with lab.session() as s:
        quinn = s.scalar(select(Person).where(Person.email == "quinn@test.local"))
        tina = s.scalar(select(Person).where(Person.email == "tina@test.local"))
        laser_safety = s.scalar(select(Competency).where(Competency.slug == "laser-safety"))
        assert quinn and tina and laser_safety
        training.revoke(s, quinn, laser_safety, tina, "cut without extraction", revoked_at, revoked_at.date())
    # The laser's Pi was offline and still held a list with Quinn on it.
    earlier, later = str(uuid.uuid4()), str(uuid.uuid4())
    _, running = _event("session_started", later, clock() - timedelta(minutes=10), badge=QUINN, offline=True)
    for payload in (
        _event("session_started", earlier, clock() - timedelta(hours=2), badge=QUINN, offline=True)[1],
        _event("session_ended", earlier, clock() - timedelta(hours=1), reason="tap_out", unlocked_s=3600)[1],
        running,
    ):
        device.publish(f"{LASER}/event", payload)
        device.next(f"{LASER}/ack")

    lock = decode_as(Cmd, device.next(f"{LASER}/cmd"))
    assert (lock.type, lock.session, lock.force) == ("lock", later, False)  # a running job finishes first
    with lab.session() as s:
        before, after = s.get(MachineSession, earlier), s.get(MachineSession, later)
        assert before is not None and after is not None
        assert before.flag is None  # allowed when it started: the revocation came later
        assert (after.flag, after.flag_reason) == ("not_allowed_offline", "qualification_revoked")
        tina = s.scalar(select(Person).where(Person.email == "tina@test.local"))
        assert tina is not None
        [note] = notifications.unread(s, tina.id)
        text_en = notifications.render(note, "en")
        assert "Quinn Qualified" in text_en and "Laser 1" in text_en and "revoked" in text_en
        assert (
            s.scalar(
                select(func.count())
                .select_from(AuditLog)
                .where(AuditLog.action == "session.not_allowed_offline")
            )
            == 1
        )
    # A copy of the event (the agent re-sends until acknowledged) flags and locks nothing again.
    device.publish(f"{LASER}/event", running)
    device.next(f"{LASER}/ack")
    time.sleep(1.5)
    assert device.drain(f"{LASER}/cmd") == []


# -- two bridges sharing the device topics (issue 15) ----------------------------------------------


def test_shared_bridge_waits_for_the_other_bridges_decision_before_a_session_start(
    lab: Database, mqtt_url: str, device: Peer, clock
) -> None:  # type: ignore[no-untyped-def]
    """With shared subscriptions one bridge may answer a tap and the other ingest the session's
    start: the start can arrive before the answering bridge has written its decision row (it
    writes the row just after the answer). The ingesting bridge must wait for that row, not
    store a session the server decided as an offline one and reject the start."""
    bridge = Bridge(
        lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock, clock_settle_s=0, shared=True
    ).start()
    try:
        device.publish(f"{PRINTER}/status", _status("printer-1", clock()))
        assert wait_until(lambda: _online(lab, "pi-printer-1"))
        rid, tap = _req(QUINN, clock())
        device.publish(f"{PRINTER}/auth/req", tap)
        resp = decode_as(AuthResp, device.next(f"{PRINTER}/auth/resp"))
        assert resp.decision == "allow" and resp.session is not None
        assert bridge.wait_for_decision_log()
        # Make the row this bridge wrote another bridge's, not written yet: take it out now...
        with lab.session() as s:
            row = s.get(AccessDecision, rid)
            assert row is not None
            saved = {c.name: getattr(row, c.name) for c in AccessDecision.__table__.columns}
            s.delete(row)
            s.commit()
        _, start = _event("session_started", resp.session, clock(), badge=QUINN, offline=False)
        device.publish(f"{PRINTER}/event", start)
        # ...and let "the other bridge" write it 0.4 s after the start was sent.
        time.sleep(0.4)
        with lab.session() as s:
            s.add(AccessDecision(**saved))
            s.commit()
        # The agent sends an unacknowledged event again (its outbox, after 2 s).
        with pytest.raises(queue.Empty):
            device.next(f"{PRINTER}/ack", timeout=1.6)
        device.publish(f"{PRINTER}/event", start)
        device.next(f"{PRINTER}/ack", timeout=10)
        with lab.session() as s:
            session = s.get(MachineSession, resp.session)
            assert session is not None and session.person_id is not None
            assert not session.offline  # the server let Quinn in: not an offline session
        assert bridge.rejected["claim_mismatch"] == 0
    finally:
        bridge.stop()


def test_shared_bridge_takes_a_start_whose_decision_never_comes_as_offline(
    lab: Database, mqtt_url: str, device: Peer, clock, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The bridge that answered died before writing its decision row: the start is held back
    only for a while, then stored (as an offline session, flagged), never re-sent for ever."""
    monkeypatch.setattr("server.adapters.bridge.OTHER_BRIDGE_WAIT_S", 0.5)
    bridge = Bridge(
        lab, mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}", clock=clock, clock_settle_s=0, shared=True
    ).start()
    try:
        device.publish(f"{PRINTER}/status", _status("printer-1", clock()))
        assert wait_until(lambda: _online(lab, "pi-printer-1"))
        session_id = str(uuid.uuid4())
        _, start = _event("session_started", session_id, clock(), badge=QUINN, offline=False)
        device.publish(f"{PRINTER}/event", start)
        with pytest.raises(queue.Empty):
            device.next(f"{PRINTER}/ack", timeout=1.0)
        device.publish(f"{PRINTER}/event", start)  # the agent's re-send, after the wait
        device.next(f"{PRINTER}/ack", timeout=10)
        with lab.session() as s:
            session = s.get(MachineSession, session_id)
            assert session is not None and session.offline
        assert bridge.rejected["claim_mismatch"] == 1
    finally:
        bridge.stop()


def test_bridge_leaves_a_list_another_bridge_just_published_to_it(
    bridge: Bridge, lab: Database, mqtt_url: str, clock
) -> None:  # type: ignore[no-untyped-def]
    """Two bridges: one builds a new allow-list version and publishes it; a device's status sent
    before the new list reached it still names the old one. The other bridge must not take that
    for a device left without its list and build yet another version: with taps coming in, the
    two bridges did so in turn, many versions a second, while session events waited."""

    def version() -> int:
        with lab.session() as s:
            printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
            assert printer is not None
            return printer.allowlist_version

    # The start-up rounds are out and the broker holds the newest list.
    assert wait_until(
        lambda: bridge.publish_allowlists() == 0 and bridge._on_broker.get("pi-printer-1") == version()
    )
    time.sleep(0.5)
    held = version()
    assert bridge._on_broker.get("pi-printer-1") == held
    with lab.session() as s:  # the other bridge built the next version; its message is on its way
        printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
        assert printer is not None
        printer.allowlist_version = held + 1
        printer.allowlist_published_at = clock()
    pi = Peer(mqtt_url)
    try:
        pi.subscribe(f"{PRINTER}/allowlist")
        time.sleep(0.3)
        pi.drain(f"{PRINTER}/allowlist")  # the retained copy
        pi.publish(f"{PRINTER}/status", _status("printer-1", clock(), allowlist_version=held))
        time.sleep(1.5)
        assert pi.drain(f"{PRINTER}/allowlist") == []
        with lab.session() as s:
            printer = s.scalar(select(Machine).where(Machine.slug == "printer-1"))
            assert printer is not None and printer.allowlist_version == held + 1
    finally:
        pi.close()
