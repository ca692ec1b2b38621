"""Smart plugs as the power switch: our Shelly and Tasmota clients against faithful peers of the
devices (tests/agent/peers/plugs.py, each its own process on a free port), and the agent
switching a machine through them."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from device_agent.config import ConfigError, parse_config
from device_agent.hardware import create_switch
from device_agent.hardware.base import MonitorFault, MonitorFaultCleared
from device_agent.hardware.plug import NetworkSwitch, PlugClient
from device_agent.hardware.shelly import ShellyPlug
from device_agent.hardware.tasmota import TasmotaPlug
from tests.agent.helpers import ADA, Responder, make_config, wait_until
from tests.agent.monitor_helpers import EventLog
from tests.agent.peers import PeerProcess
from tests.agent.test_config import minimal

PASSWORD = "s3cret-plug"


@pytest.fixture
def shelly() -> Iterator[PeerProcess]:
    peer = PeerProcess("plugs", "shelly", "--password", PASSWORD).start()
    yield peer
    peer.stop()


@pytest.fixture
def tasmota() -> Iterator[PeerProcess]:
    peer = PeerProcess("plugs", "tasmota", "--password", PASSWORD, "--relays", "2").start()
    yield peer
    peer.stop()


def make_switch(client: PlugClient, **settings: Any) -> NetworkSwitch:
    options: dict[str, Any] = {"confirm_s": 1.0, "poll_s": 0.2, "retry_max_s": 0.5, **settings}
    return NetworkSwitch(client, **options)


def output(peer: PeerProcess, channel: int = 0) -> bool:
    return bool(peer.control("state")["output"][channel])


def faults(log: EventLog, kind: type[Any] = MonitorFault) -> list[Any]:
    return log.of(kind)


# ---------------------------------------------------------------------- the switch alone


@pytest.mark.parametrize("make", ["shelly", "tasmota"])
def test_plug_switches_and_reads_back_within_a_second(
    make: str, shelly: PeerProcess, tasmota: PeerProcess
) -> None:
    peer = shelly if make == "shelly" else tasmota
    client: PlugClient = (
        ShellyPlug(peer.url, password=PASSWORD)
        if make == "shelly"
        else TasmotaPlug(peer.url, 1, password=PASSWORD)
    )
    switch = make_switch(client)
    log = EventLog(switch)
    try:
        assert switch.wait_confirmed(1.0) and not output(peer)
        # A heater's load: Tasmota counts kWh with three decimals, so 1 Wh shows after 1.2 s.
        peer.control("load?w=3000")
        for on in (True, False, True):
            asked = time.monotonic()
            switch.close() if on else switch.open()
            assert switch.wait_confirmed(1.0), f"{make}: not read back within 1 s"
            assert time.monotonic() - asked < 1.0
            assert output(peer) is on and switch.confirmed is on and switch.is_closed is on
        assert wait_until(lambda: switch.power_w == 3000.0, 2), switch.power_w
        assert wait_until(lambda: (switch.energy_wh or 0) >= 1.0, 4), "the energy counter grows while on"
        assert faults(log) == []
    finally:
        switch.release()
    assert output(peer) is False, "released with no session: the plug is left OFF"


def test_plug_shelly_uses_digest_auth_and_a_wrong_password_is_a_fault(shelly: PeerProcess) -> None:
    switch = make_switch(ShellyPlug(shelly.url, password="wrong"))
    log = EventLog(switch)
    try:
        (fault,) = log.wait(MonitorFault, timeout=3)
        assert fault.code == "switch_auth_rejected" and "password" in fault.detail
        switch.close()
        time.sleep(0.5)
        assert output(shelly) is False, "the plug refuses commands without the right login"
    finally:
        switch.detach()


def test_plug_tasmota_wrong_password_is_a_fault(tasmota: PeerProcess) -> None:
    switch = make_switch(TasmotaPlug(tasmota.url, 1, password="wrong"))
    try:
        (fault,) = EventLog(switch).wait(MonitorFault, timeout=3)
        assert fault.code == "switch_auth_rejected"
    finally:
        switch.detach()


def test_plug_tasmota_second_relay_and_energy_in_wh(tasmota: PeerProcess) -> None:
    switch = make_switch(TasmotaPlug(tasmota.url, 2, password=PASSWORD))
    try:
        tasmota.control("load?w=1800&id=1")
        switch.close()
        assert switch.wait_confirmed(1.0)
        assert tasmota.control("state")["output"] == [False, True], "Power2 is the second relay"
        assert wait_until(lambda: switch.power_w == 1800.0, 2)
        time.sleep(2.5)  # 1800 W for 2.5 s = 1.25 Wh; Tasmota counts kWh with 3 decimals
        assert wait_until(lambda: (switch.energy_wh or 0) >= 1.0, 2), switch.energy_wh
    finally:
        switch.release()
    assert tasmota.control("state")["output"] == [False, False]


@pytest.mark.parametrize("make", ["shelly", "tasmota"])
def test_plug_stuck_relay_is_a_fault_within_a_second(
    make: str, shelly: PeerProcess, tasmota: PeerProcess
) -> None:
    peer = shelly if make == "shelly" else tasmota
    client: PlugClient = (
        ShellyPlug(peer.url, password=PASSWORD)
        if make == "shelly"
        else TasmotaPlug(peer.url, 1, password=PASSWORD)
    )
    switch = make_switch(client)
    log = EventLog(switch)
    try:
        assert switch.wait_confirmed(1.0)
        peer.control("stuck?on=1")  # a welded relay: takes the command, stays OFF
        asked = time.monotonic()
        switch.close()
        (fault,) = log.wait(MonitorFault, timeout=3)
        assert time.monotonic() - asked < 1.3, "reported when confirm_s is up"
        assert fault.code == "switch_unconfirmed" and "OFF" in fault.detail
        peer.control("stuck?on=0")
        (cleared,) = log.wait(MonitorFaultCleared, timeout=5)
        assert cleared.code == "switch_unconfirmed" and output(peer) is True
    finally:
        switch.release()


def test_plug_hung_or_gone_is_a_fault_and_the_state_is_applied_when_back(shelly: PeerProcess) -> None:
    switch = make_switch(ShellyPlug(shelly.url, password=PASSWORD, timeout_s=0.3))
    log = EventLog(switch)
    try:
        assert switch.wait_confirmed(1.0)
        shelly.pause()  # hangs: connections accepted, nothing answers
        asked = time.monotonic()
        switch.close()
        (fault,) = log.wait(MonitorFault, timeout=3)
        assert time.monotonic() - asked < 1.3
        assert fault.code == "switch_unconfirmed"
        time.sleep(1.0)
        assert [f.code for f in log.of(MonitorFault)][-1] == "switch_unreachable"
        shelly.resume()
        assert wait_until(lambda: output(shelly), 5), "switched ON once the plug answers again"
        assert log.wait(MonitorFaultCleared, timeout=5)
    finally:
        switch.release()


def test_plug_reboot_mid_session_comes_back_on_and_is_reported(shelly: PeerProcess) -> None:
    # As the docs tell: the plug itself comes back OFF after a power cut (Switch.SetConfig).
    shelly.control("state")
    switch = make_switch(ShellyPlug(shelly.url, password=PASSWORD), closed=True)
    log = EventLog(switch)
    try:
        assert switch.wait_confirmed(1.0) and output(shelly)
        client = ShellyPlug(shelly.url, password=PASSWORD)
        assert client.get_json("/rpc/Switch.SetConfig", {"id": "0", "config": '{"initial_state":"off"}'}) == {
            "restart_required": False
        }
        shelly.control("reboot")
        assert output(shelly) is False
        (fault,) = log.wait(MonitorFault, timeout=3)
        assert fault.code == "switch_state_changed" and "OFF" in fault.detail
        assert wait_until(lambda: output(shelly), 2), "a session runs: the agent switches it back ON"
        log.wait(MonitorFaultCleared)
        client.close()
    finally:
        switch.detach()


def test_plug_reboot_without_session_stays_off(shelly: PeerProcess) -> None:
    switch = make_switch(ShellyPlug(shelly.url, password=PASSWORD))
    log = EventLog(switch)
    try:
        assert switch.wait_confirmed(1.0)
        sets = shelly.control("state")["sets"]
        shelly.control("set?on=1")  # someone pressed the plug's button while the machine is locked
        assert wait_until(lambda: not output(shelly), 2), "the agent switches it OFF again"
        assert log.wait(MonitorFault)[0].code == "switch_state_changed"
        assert shelly.control("state")["sets"] == sets + 1
    finally:
        switch.release()


# ---------------------------------------------------------------------- config


def test_plug_config_needs_an_address_and_one_password(tmp_path: Path) -> None:
    data = minimal(tmp_path)
    data["switch"] = {"backend": "shelly"}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(e.startswith("[switch] url: missing") for e in info.value.errors)
    (tmp_path / "pw").write_text("x\n")
    data["switch"] = {
        "backend": "tasmota",
        "url": "192.168.1.50",
        "password": "x",
        "password_file": str(tmp_path / "pw"),
        "channel": 9,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    errors = info.value.errors
    assert any(e.startswith("[switch] url: must be the plug's address") for e in errors), errors
    assert any(e.startswith("[switch] password_file: set either") for e in errors), errors
    assert any(e.startswith("[switch] channel: is 9") for e in errors), errors
    data["switch"] = {"backend": "zigbee"}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "[switch] backend: is 'zigbee'; use one of: gpio, shelly, tasmota" in info.value.errors[0]


def test_plug_config_password_is_a_secret_and_the_switch_is_made(tmp_path: Path, shelly: PeerProcess) -> None:
    data = minimal(tmp_path)
    data["switch"] = {"backend": "shelly", "url": shelly.url, "password": PASSWORD}
    config = parse_config(data)
    assert config.hash == parse_config({**data, "switch": {**data["switch"], "password": "y"}}).hash
    switch = create_switch(config, closed=False)
    try:
        assert isinstance(switch, NetworkSwitch) and isinstance(switch.client, ShellyPlug)
        assert switch.wait_confirmed(2.0)
    finally:
        switch.release()


# ---------------------------------------------------------------------- the agent on a plug


def plug_config(tmp_path: Path, mqtt_url: str, peer: PeerProcess, **sections: Any) -> Any:
    switch = {"backend": "shelly", "url": peer.url, "password": PASSWORD, "poll_s": 0.2}
    return make_config(tmp_path, mqtt_url, switch=switch, **sections)


def test_plug_session_switches_the_plug_and_reports_power_and_energy(
    tmp_path: Path,
    mqtt_url: str,
    shelly: PeerProcess,
    start_agent: Callable[..., Agent],
    responder: Responder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Agent, "TELEMETRY_S", 0.2)
    shelly.control("load?w=95")
    agent = start_agent(plug_config(tmp_path, mqtt_url, shelly))
    tapped = time.monotonic()
    assert agent.tap(ADA).outcome == "unlocked"
    assert wait_until(lambda: output(shelly), 1.0), "the plug is ON within 1 s of the tap"
    assert time.monotonic() - tapped < 1.0 + 0.5  # the tap's own server round trip included
    assert responder.wait_for(
        lambda: any(t.get("power_w") == 95.0 and t.get("energy_wh") is not None for t in responder.telemetry),
        timeout=5,
    ), responder.telemetry
    time.sleep(0.25)
    assert agent.tap(ADA).outcome == "locked"
    assert wait_until(lambda: not output(shelly), 1.0)
    assert agent.state == "locked" and responder.events_of("fault") == []


def test_plug_that_does_not_obey_puts_the_machine_in_fault(
    tmp_path: Path,
    mqtt_url: str,
    shelly: PeerProcess,
    start_agent: Callable[..., Agent],
    responder: Responder,
) -> None:
    agent = start_agent(plug_config(tmp_path, mqtt_url, shelly))
    shelly.control("stuck?on=1")
    agent.tap(ADA)
    (fault,) = responder.wait_event("fault", timeout=3)
    assert fault.code == "switch_unconfirmed" and fault.session == agent.session_id
    assert wait_until(lambda: agent.state == "fault")
    assert responder.wait_for(
        lambda: any(s.get("state") == "fault" for d, s in responder.statuses if d == agent.config.device_id)
    )
    shelly.control("stuck?on=0")
    assert wait_until(lambda: output(shelly), 3)
    assert wait_until(lambda: agent.state == "unlocked", 3)


def test_plug_agent_restart_mid_session_does_not_switch_the_plug(
    tmp_path: Path,
    mqtt_url: str,
    shelly: PeerProcess,
    responder: Responder,
) -> None:
    from tests.agent.monitor_helpers import ControlledMonitor

    config = plug_config(tmp_path, mqtt_url, shelly)
    monitor = ControlledMonitor()
    first = Agent(config, monitor=monitor)
    first.start()
    try:
        assert first.wait_connected(5)
        first.tap(ADA)
        monitor.start_job()
        assert wait_until(lambda: output(shelly), 1.0)
        responder.wait_event("job_started")
    finally:
        first.stop()  # SIGTERM mid-job: the plug stays ON
    assert output(shelly)
    sets = shelly.control("state")["sets"]
    second = Agent(config, monitor=ControlledMonitor(running=True))
    second.start()
    try:
        assert second.wait_connected(5) and second.session_id == first.session_id
        time.sleep(0.6)
        assert output(shelly) and shelly.control("state")["sets"] == sets, "taken over without a switch"
    finally:
        second.stop()
