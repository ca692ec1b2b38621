"""The scenarios of the fault suite (docs/faults.md describes each, with its bound)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from .harness import (
    SITE_TZ,
    AgentProc,
    BridgeProc,
    Expected,
    Result,
    Suite,
    World,
    parallel,
    retained_allowlists,
    sleep_until,
    world,
)

# Duration bounds (seconds) between what the server stored and what the harness measured.
CLEAN_S = 0.5  # nothing crashed on the agent: its monotonic clock measured the session
RESTART_S = 1.5  # the agent was killed and restarted: the relay held, the new process knows
SKEW_S = 1.5  # the agent locked by itself at the session's end (until), its clock an hour off


def sessions(w: World, agent: AgentProc, who: str, holds: list[float], pause: float = 0.8) -> None:
    """``who`` uses ``agent``'s machine once per hold time, tapping in and out."""
    for hold in holds:
        session = w.tap_in(agent, who)
        time.sleep(hold)
        w.tap_out(agent, session)
        time.sleep(pause)


def sessions_until(w: World, agent: AgentProc, who: str, end: float, hold: float = 4.0) -> None:
    """Sessions of ``hold`` seconds, one after another, until monotonic time ``end``."""
    while time.monotonic() + hold + 2.0 < end:
        sessions(w, agent, who, [hold])


def after(delay: float, job: Callable[[], None]) -> Callable[[], None]:
    def later() -> None:
        time.sleep(delay)
        job()

    return later


def standard(w: World, *machines: str, bridges: int = 1, shared: bool = False) -> list[AgentProc]:
    for n in range(bridges):
        w.start_bridge(
            w.add_bridge(f"werkbank-bridge-{'ab'[n]}" if bridges > 1 else "werkbank-bridge", shared)
        )
    agents = [w.add_agent(m) for m in machines]
    w.start_agents(*agents)
    return agents


# -- the scenarios ---------------------------------------------------------------------------
def clean(w: World) -> None:
    """No fault: three machines, sessions of 2.5-5 s, one refused badge. The reference row."""
    a1, a2, a3 = standard(w, "printer-1", "printer-2", "printer-3")
    parallel(
        lambda: sessions(w, a1, "ana", [3.0, 5.0]),
        lambda: sessions(w, a2, "ben", [4.0, 2.5]),
        lambda: sessions(w, a3, "cem", [2.5, 4.0]),
    )
    w.tap_refused(a1, "uma")


def bridge_kill(w: World) -> None:
    """kill -9 of the only bridge mid-traffic; it is back after 10 s under the same client id."""
    a1, a2, a3 = standard(w, "printer-1", "printer-2", "printer-3")
    bridge = w.bridges[0]
    s1 = w.tap_in(a1, "ana")
    time.sleep(1.0)
    w.faulty.add("*")
    killed = bridge.kill()
    parallel(
        lambda: sessions(w, a2, "ben", [4.0]),
        lambda: sessions(w, a3, "cem", [5.0]),
        after(3.0, lambda: w.tap_out(a1, s1)),
    )
    sleep_until(killed + 10.0)
    w.start_bridge(bridge)
    time.sleep(1.0)
    w.faulty.clear()
    parallel(
        lambda: sessions(w, a1, "ana", [3.0]),
        lambda: sessions(w, a2, "ben", [3.0]),
        lambda: sessions(w, a3, "cem", [3.0]),
    )


def bridges_shared_kill(w: World) -> None:
    """Two bridges sharing the device topics ($share/werkbank/...); kill -9 of one for 15 s.
    The other bridge is up all the time: every tap should be answered by the server."""
    a1, a2, a3 = standard(w, "printer-1", "printer-2", "printer-3", bridges=2, shared=True)
    bridge_a = w.bridges[0]
    time.sleep(1.0)
    killed = bridge_a.kill()
    end = killed + 15.0
    parallel(
        lambda: sessions_until(w, a1, "ana", end, 3.0),
        lambda: sessions_until(w, a2, "ben", end, 3.0),
        lambda: sessions_until(w, a3, "cem", end, 3.0),
    )
    sleep_until(end)
    w.start_bridge(bridge_a)
    parallel(
        lambda: sessions(w, a1, "ana", [3.0, 3.0]),
        lambda: sessions(w, a2, "ben", [3.0, 3.0]),
        lambda: sessions(w, a3, "cem", [3.0, 3.0]),
    )


KILL_1000_TAPS = 1000
KILL_1000_PEOPLE = (  # one person per machine, each at their own agent process
    ("printer-1", "ana"),
    ("printer-2", "ben"),
    ("printer-3", "cem"),
    ("printer-4", "dia"),
    ("short-1", "eli"),
    ("short-2", "fay"),
)


def bridges_kill_1000(w: World) -> None:
    """Two bridges share the device topics; six agents make 1,000 taps (500 sessions of 1 s, 1.5 s apart);
    bridge A is killed with SIGKILL after 300 taps and started again after 700.

    Every tap must be answered: a tap-in by the server (bridge A or B) or, when its request
    died with bridge A, by the agent's offline decision after waiting 1.5 s; a tap-out by the
    agent itself. Every event must be stored once (compared by id with what the agents
    published). Only the taps whose request was in flight when A died may go offline."""
    w.check_events = True
    bridge_a = w.add_bridge("werkbank-bridge-a", shared=True, metrics=True)
    bridge_b = w.add_bridge("werkbank-bridge-b", shared=True, metrics=True)
    w.start_bridge(bridge_a)
    w.start_bridge(bridge_b)
    # The grace after unlocking (2 s by default) only stops a badge left on the reader from
    # ending its own session; 0.5 s lets 500 sessions fit in about two minutes.
    agents = [w.add_agent(machine, tap_out_grace_s=0.5) for machine, _who in KILL_1000_PEOPLE]
    w.start_agents(*agents)
    sessions_each = KILL_1000_TAPS // 2 // len(agents)
    extra = KILL_1000_TAPS // 2 - sessions_each * len(agents)
    kill_at = restart_at = 0.0
    a_before_kill: int | None = None

    def killer() -> None:
        nonlocal kill_at, restart_at, a_before_kill
        give_up = time.monotonic() + 600  # the people stopped (an error): do not wait for ever
        while len(w.taps) < 300 and time.monotonic() < give_up:
            a_before_kill = bridge_a.decisions() or a_before_kill  # the last reading before the kill
            time.sleep(0.1)
        # Kill right after a tap-out: its session end is on its way to a bridge (to A about every
        # other time), so the kill takes an unacknowledged event with it, not just an idle process.
        seen = sum(len(a.decisions) for a in agents)
        while time.monotonic() < give_up:
            # (The agent logs a tap-out's decision after it published the session's end.)
            outs = [d.mono for a in agents for d in a.decisions[-2:] if d.outcome == "locked"]
            if sum(len(a.decisions) for a in agents) > seen and outs and max(outs) > time.monotonic() - 0.02:
                break
            time.sleep(0.002)
        kill_at = bridge_a.kill()
        while len(w.taps) < 700 and time.monotonic() < give_up:
            time.sleep(0.1)
        restart_at = time.monotonic()
        w.start_bridge(bridge_a)

    def person(agent: AgentProc, who: str, count: int) -> None:
        # 1.5 s between sessions, as people take. (A person back sooner, while an end the dead
        # bridge took with it and their last end are both on their way, is no longer refused
        # session_limit: sessions open at the tapping device do not count; docs/faults.md.)
        sessions(w, agent, who, [1.0] * count, pause=1.5)

    parallel(
        killer,
        *(
            _bind(person, agent, who, sessions_each + (1 if n < extra else 0))
            for n, (agent, (_m, who)) in enumerate(zip(agents, KILL_1000_PEOPLE, strict=True))
        ),
    )
    w.result.figures += takeover_figures(w, kill_at, restart_at, bridge_a, bridge_b, a_before_kill)


# After a kill -9 the broker routes to the dead bridge until it has read the closed connection:
# at once on an idle machine, up to a few hundred ms on this loaded one.
BROKER_NOTICES_S = 0.5


def takeover_figures(
    w: World, kill_at: float, restart_at: float, a: BridgeProc, b: BridgeProc, a_seen: int | None
) -> list[str]:
    """Count how each tap was answered; excuse the tap-ins whose request died with bridge A."""
    wait = 1.5  # the agent's server.auth_timeout_s
    outcome: dict[str, int] = {}
    in_flight = 0
    for tap in w.taps:
        d = tap.decision
        if d is None:
            kind = "unanswered"
        elif d.outcome == "locked":
            kind = "tap-out, answered by the agent"
        elif d.offline:
            kind = "tap-in, answered offline (the agent, after waiting for the server)"
            if kill_at - wait - 0.2 <= tap.mono <= kill_at + BROKER_NOTICES_S:
                in_flight += 1
                tap.must_be_online = False  # its request went to bridge A, or was with it when it died
        elif d.outcome in ("unlocked", "denied"):
            kind = "tap-in, answered online by the server"
        else:
            kind = f"{d.outcome} ({d.reason})"
        outcome[kind] = outcome.get(kind, 0) + 1
    if outcome.get("unanswered"):
        w.result.failures.append(f"{outcome['unanswered']} taps unanswered")
    online = outcome.get("tap-in, answered online by the server", 0)
    b_total, a_after = b.decisions() or 0, a.decisions() or 0
    after_kill = sorted(
        t.decision.mono - kill_at
        for t in w.taps
        if t.mono >= kill_at
        and t.decision is not None
        and not t.decision.offline
        and t.decision.outcome != "locked"
    )
    slowest = max(
        (
            t.latency
            for t in w.taps
            if kill_at <= t.mono <= kill_at + 5
            and t.latency is not None
            and t.decision is not None
            and t.decision.outcome != "locked"
        ),
        default=None,
    )
    lines = [f"taps: {len(w.taps)}; " + "; ".join(f"{k}: {n}" for k, n in sorted(outcome.items()))]
    lines.append(
        f"answered online by bridge A: {online - b_total - a_after} before the kill "
        f"(its metrics read {a_seen} at most 0.1 s before) and {a_after} after its restart "
        f"({restart_at - kill_at:.1f} s after the kill); by bridge B: {b_total}"
    )
    lines.append(
        f"taken over: the first tap after the kill answered online {after_kill[0]:.2f} s after the kill"
        if after_kill
        else "taken over: no tap after the kill was answered online"
    )
    if slowest is not None:
        lines.append(f"slowest tap-in answer in the 5 s after the kill: {slowest:.2f} s")
    lines.append(
        f"tap-ins sent to bridge A as it died (from {wait + 0.2:.1f} s before to {BROKER_NOTICES_S} s "
        f"after the kill), decided offline: {in_flight}"
    )
    return lines


def agent_kill_mid_session(w: World) -> None:
    """kill -9 of two agents 5 s into a session, restarted at once; the person taps out 10.5 s
    after tapping in. One session of about 10.5 s each is expected."""
    a1, a2 = standard(w, "printer-1", "printer-2")

    def person(agent: AgentProc, who: str) -> None:
        session = w.tap_in(agent, who)
        time.sleep(5.0)
        agent.kill()
        w.restart_agent(agent)
        sleep_until(session.t_in + 10.5)
        w.tap_out(agent, session)
        time.sleep(1.0)
        sessions(w, agent, who, [3.0])

    parallel(lambda: person(a1, "ana"), lambda: person(a2, "ben"))


def agent_kill_after_tap_out(w: World) -> None:
    """kill -9 of an agent 0-150 ms after a tap-out, restarted at once; four rounds on each of
    three machines (the delays in a different order on each)."""
    agents = standard(w, "printer-1", "printer-2", "printer-3")
    delays = [0.0, 0.05, 0.1, 0.15]

    def person(agent: AgentProc, who: str, shift: int) -> None:
        for delay in delays[shift:] + delays[:shift]:
            session = w.tap_in(agent, who)
            time.sleep(3.0)
            w.tap_out_then_kill(agent, session, delay)
            w.restart_agent(agent)
            time.sleep(0.5)

    people = ["ana", "ben", "cem"]
    parallel(*(_bind(person, a, who, n) for n, (a, who) in enumerate(zip(agents, people, strict=True))))


def broker_kill(w: World) -> None:
    """kill -9 of Mosquitto (persistence on, autosave as deployed) for 8 s while sessions run;
    then a Pi with a fresh SD card joins and must decide offline from the retained allow-list."""
    w.start_bridge(w.add_bridge())
    relay = w.relay(w.broker.port, "link-printer-3")
    a1, a2 = w.add_agent("printer-1"), w.add_agent("printer-2")
    a3 = w.add_agent("printer-3", mqtt_port=relay.port)
    w.start_agents(a1, a2, a3)
    s1 = w.tap_in(a1, "ana")
    time.sleep(1.0)
    w.faulty.add("*")
    w.broker.kill()
    killed = time.monotonic()
    parallel(
        lambda: sessions(w, a2, "ben", [3.0]),
        lambda: sessions(w, a3, "cem", [3.0]),
        after(2.0, lambda: w.tap_out(a1, s1)),
    )
    sleep_until(killed + 8.0)
    w.broker.start()
    back = time.monotonic()
    for agent in (a1, a2, a3):
        if w.wait_online(agent, back, 45) is None:
            w.result.notes.append(f"{agent.machine} did not reconnect within 45 s")
    time.sleep(2.0)  # the bridge reconnects too
    w.faulty.clear()
    kept = retained_allowlists(w.broker.url, [a.device_id for a in (a1, a2, a3)])
    w.result.notes.append(f"retained allow-lists after the broker restart: {len(kept)} of 3")
    parallel(lambda: sessions(w, a1, "ana", [3.0]), lambda: sessions(w, a2, "ben", [3.0]))

    # printer-3's Pi gets a new SD card (empty storage) and loses its link right after joining.
    a3.stop()
    w.restart_agent(a3, wipe=True)
    time.sleep(3.0)
    relay.cut("blackhole")
    w.faulty.add(a3.device_id)
    sessions(w, a3, "cem", [3.0])
    relay.restore()
    restored = time.monotonic()
    if w.wait_online(a3, restored, 45) is None:
        w.result.notes.append("printer-3 did not reconnect within 45 s")
    w.faulty.clear()
    sessions(w, a3, "cem", [3.0])


def db_refuses(w: World) -> None:
    """PostgreSQL refuses the bridge's connections for 20 s (a loopback relay resets them)."""
    url = make_url(w.db_url)
    relay = w.relay(url.port or 5432, "postgresql")
    through_relay = url.set(host="127.0.0.1", port=relay.port).render_as_string(hide_password=False)
    w.start_bridge(w.add_bridge(database_url=through_relay))
    a1, a2, a3 = (w.add_agent(m) for m in ("printer-1", "printer-2", "printer-3"))
    w.start_agents(a1, a2, a3)
    s1 = w.tap_in(a1, "ana")
    time.sleep(1.0)
    w.faulty.add("*")
    relay.cut("refuse")
    end = time.monotonic() + 20.0
    parallel(
        lambda: sessions_until(w, a2, "ben", end),
        lambda: sessions_until(w, a3, "cem", end),
        after(3.0, lambda: w.tap_out(a1, s1)),
    )
    sleep_until(end)
    relay.restore()
    time.sleep(2.0)
    w.faulty.clear()
    parallel(
        lambda: sessions(w, a1, "ana", [3.0]),
        lambda: sessions(w, a2, "ben", [3.0]),
        lambda: sessions(w, a3, "cem", [3.0]),
    )


def events_locked(w: World) -> None:
    """The events table is locked (ACCESS EXCLUSIVE, another connection) for 20 s while people
    tap. Decisions need no events: every tap should still be answered by the server."""
    a1, a2, a3 = standard(w, "printer-1", "printer-2", "printer-3")
    engine = create_engine(w.db_url)
    try:
        with engine.connect() as side:
            side.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            end = time.monotonic() + 20.0
            parallel(
                lambda: sessions_until(w, a1, "ana", end),
                lambda: sessions_until(w, a2, "ben", end),
                lambda: sessions_until(w, a3, "cem", end),
            )
            sleep_until(end)
            side.rollback()  # the lock goes
    finally:
        engine.dispose()
    parallel(
        lambda: sessions(w, a1, "ana", [3.0]),
        lambda: sessions(w, a2, "ben", [3.0]),
        lambda: sessions(w, a3, "cem", [3.0]),
    )


def link_cut_1min(w: World) -> None:
    """printer-3's link to the broker is dead for 60 s (blackhole) while its people keep tapping;
    the other machines carry on online."""
    w.start_bridge(w.add_bridge())
    relay = w.relay(w.broker.port, "link-printer-3")
    a1, a2 = w.add_agent("printer-1"), w.add_agent("printer-2")
    a3 = w.add_agent("printer-3", mqtt_port=relay.port)
    w.start_agents(a1, a2, a3)
    relay.cut("blackhole")
    w.faulty.add(a3.device_id)
    end = time.monotonic() + 60.0
    parallel(
        lambda: sessions_until(w, a1, "ana", end, 6.0),
        lambda: sessions_until(w, a2, "ben", end, 6.0),
        lambda: sessions_until(w, a3, "cem", end, 5.0),
    )
    sleep_until(end)
    relay.restore()
    if w.wait_online(a3, time.monotonic(), 45) is None:
        w.result.notes.append("printer-3 did not reconnect within 45 s")
    w.faulty.clear()
    sessions(w, a3, "cem", [3.0])


def sim_midnight(suite: Suite) -> float:
    """The clock offset that makes it 23:40 at the site on the suite's simulated day."""
    zone = ZoneInfo(SITE_TZ)
    day = suite.sim_midnight_day
    target = datetime(day.year, day.month, day.day, 23, 40, tzinfo=zone)
    return (target - datetime.now(UTC)).total_seconds()


def link_cut_1h(w: World) -> None:
    """printer-3's link is dead for an hour of simulated time (60 s of real time, the clocks of
    the bridge and the agents stepped forward): from 23:40 to 00:40 at the site. Meanwhile
    Erin's qualification ends at midnight (her allow-list entry expires) and Rex's badge is
    blocked on the server. Offline, Erin is let in before midnight and refused after; Rex is let
    in (the list cannot know yet), and once the link is back the server must end his session."""
    start = w.offset  # 23:40 at the site when the world was made
    w.start_bridge(w.add_bridge())
    relay = w.relay(w.broker.port, "link-printer-3")
    a1 = w.add_agent("printer-1")
    a3 = w.add_agent("printer-3", mqtt_port=relay.port)
    w.start_agents(a1, a3)
    sessions(w, a3, "ana", [3.0])
    relay.cut("blackhole")
    w.faulty.add(a3.device_id)
    cut = time.monotonic()

    def step(minutes: float) -> None:
        w.set_offset(w.clock_file, start + minutes * 60)

    sessions(w, a3, "ana", [4.0])  # 23:4x, offline
    step(10)  # 23:5x
    sessions(w, a3, "erin", [4.0])
    w.block_badge("rex")
    w.tap_refused(a1, "rex")  # online: the server knows
    step(30)  # 00:1x: Erin's entry has expired
    w.tap_refused(a3, "erin")
    w.tap_refused(a1, "erin")  # online: the server says her qualification expired
    rex = w.tap_in(a3, "rex")  # offline: still on the list the agent holds
    step(60)  # 00:4x
    sleep_until(cut + 60.0)
    relay.restore()
    restored = time.monotonic()
    # The agent notices a dead link by its keepalive and then reconnects with paho's back-off
    # (up to 30 s): the lock must come within the 45 s it may take to be back online.
    w.expect_server_lock(rex, restored, 45.0)
    if w.wait_online(a3, restored, 45) is None:
        w.result.notes.append("printer-3 did not reconnect within 45 s")
    w.faulty.clear()
    # Rex does not tap out: the server ends his session (or it stays open, which fails).
    sleep_until(restored + 50.0)


def clock_skew(w: World) -> None:
    """short-1's clock is an hour ahead, short-2's an hour behind (wall clock only); both machines
    have a 1-minute maximum session. Sessions must be stored at the real time, and the agent
    must lock at the maximum, 60 s after the server let the person in."""
    w.start_bridge(w.add_bridge())
    ahead, behind = w.dir / "clock-ahead", w.dir / "clock-behind"
    w.set_offset(ahead, 3600.0)
    w.set_offset(behind, -3600.0)
    a5 = w.add_agent("short-1", clock_file=ahead)
    a6 = w.add_agent("short-2", clock_file=behind)
    w.start_agents(a5, a6)
    longest: list[Expected] = []

    def person(agent: AgentProc, who: str) -> None:
        sessions(w, agent, who, [4.0])
        session = w.tap_in(agent, who)
        w.expect_lock_at_until(session, 60.0)
        longest.append(session)

    parallel(lambda: person(a5, "gus"), lambda: person(a6, "hal"))
    sleep_until(max(s.t_in for s in longest) + 63.0)


def _bind(func: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: func(*args)


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    bound: float
    run: Callable[[World], None]
    expected_s: float  # about how long it runs (the longest start first)
    offset: Callable[[Suite], float] | None = None  # the world clock's offset at the start


SCENARIOS = (
    Scenario("clean", "no fault (reference)", CLEAN_S, clean, 25),
    Scenario("bridge-kill", "kill -9 of the bridge for 10 s", CLEAN_S, bridge_kill, 40),
    Scenario(
        "bridges-shared",
        "two bridges (shared subscriptions), kill -9 of one",
        CLEAN_S,
        bridges_shared_kill,
        55,
    ),
    Scenario(
        "bridges-kill-1000",
        "two bridges (shared subscriptions), kill -9 of one during 1,000 taps from six agents",
        CLEAN_S,
        bridges_kill_1000,
        290,
    ),
    Scenario("agent-kill-mid", "kill -9 of agents 5 s into a session", RESTART_S, agent_kill_mid_session, 40),
    Scenario(
        "agent-kill-tap-out",
        "kill -9 of agents 0-150 ms after a tap-out",
        RESTART_S,
        agent_kill_after_tap_out,
        40,
    ),
    Scenario("broker-kill", "kill -9 of Mosquitto for 8 s; a fresh Pi after it", CLEAN_S, broker_kill, 85),
    Scenario("db-refuses", "PostgreSQL refuses connections for 20 s", CLEAN_S, db_refuses, 45),
    Scenario("events-locked", "events table locked for 20 s", CLEAN_S, events_locked, 40),
    Scenario("link-1min", "one agent's link cut for 1 min", CLEAN_S, link_cut_1min, 90),
    Scenario(
        "link-1h",
        "one agent's link cut for 1 h (simulated): an allow-list entry expires, a badge is blocked",
        CLEAN_S,
        link_cut_1h,
        115,
        sim_midnight,
    ),
    Scenario("clock-skew", "agent clocks +1 h and -1 h, 1-min maximum session", SKEW_S, clock_skew, 90),
)


def run_scenario(suite: Suite, scenario: Scenario) -> Result:
    result = Result(scenario.name, scenario.title, scenario.bound)
    offset = scenario.offset(suite) if scenario.offset else 0.0
    try:
        with world(suite, result, offset) as w:
            scenario.run(w)
    except Exception as exc:  # a scenario that cannot run is a failure, with the reason shown
        result.error = f"{type(exc).__name__}: {exc}"
    return result
