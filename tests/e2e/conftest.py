"""The whole system on real parts: a real broker, the real bridge on a real database, real agents.

Only the hardware is faked, at the lowest level (gpiozero's MockFactory pins, the simulated reader).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent, Clock
from device_agent.config import load_config
from server.adapters.bridge import Bridge, wait_until
from server.db import Database
from server.models import Device as DeviceRow
from server.services.provisioning import agent_config

RELAY_PINS = {"pi-printer-1": 17, "pi-laser-1": 27, "pi-printer-2": 22}


@pytest.fixture
def e2e_lab(real_clock_lab: Database) -> Database:
    # The e2e tests run on the real clock: the lab without opening hours, so they pass on any day.
    return real_clock_lab


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    previous = Device.pin_factory
    factory = MockFactory()
    Device.pin_factory = factory
    yield factory
    factory.reset()
    Device.pin_factory = previous


class System:
    """The bridge plus agents, with helpers to stop and start parts."""

    def __init__(self, db: Database, mqtt_url: str, tmp: Path, pins: MockFactory) -> None:
        self.db = db
        self.mqtt_url = mqtt_url
        self.tmp = tmp
        self.pins = pins
        self.bridge: Bridge | None = None
        self.agents: dict[str, Agent] = {}

    def start_bridge(self) -> Bridge:
        self.bridge = Bridge(self.db, self.mqtt_url, client_id=f"bridge-{uuid.uuid4().hex[:6]}").start()
        assert self.bridge.connected.is_set()
        return self.bridge

    def stop_bridge(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

    def config_file(self, device_id: str) -> Path:
        with self.db.session() as s:
            row = s.get(DeviceRow, device_id)
            assert row is not None
            text = agent_config(row, self.mqtt_url, self.tmp / device_id)
        path = self.tmp / f"{device_id}.toml"
        # No tap-out grace: the tests tap out right after unlocking.
        path.write_text(
            text + f"\n[relay]\npin = {RELAY_PINS[device_id]}\n\n[session]\ntap_out_grace_s = 0\n"
        )
        return path

    def start_agent(self, device_id: str, clock: Clock | None = None) -> Agent:
        """Start the agent of ``device_id``; ``clock``: its own clock (a hand-moved one)."""
        agent = Agent(load_config(self.config_file(device_id)), clock=clock)
        agent.start()
        assert agent.wait_connected(5)
        self.agents[device_id] = agent
        return agent

    def stop_agent(self, device_id: str) -> None:
        self.agents.pop(device_id).stop()

    def relay_closed(self, device_id: str) -> bool:
        # Relay boards are active-low by default: the pin is driven low to close the relay.
        return self.pins.pin(RELAY_PINS[device_id]).state is False

    def wait_allowlist(self, agent: Agent) -> None:
        assert wait_until(lambda: agent.allowlist.version is not None and agent.allowlist.version >= 1, 5)

    def close(self) -> None:
        for device_id in list(self.agents):
            self.stop_agent(device_id)
        self.stop_bridge()


@pytest.fixture
def e2e_trainer_lab(trainer_lab: Database, real_clock_lab: Database) -> Database:
    """The trainer lab (tests/conftest.py) without opening hours, like ``e2e_lab`` (both are the
    one test database)."""
    return trainer_lab


@pytest.fixture
def trainer_system(
    e2e_trainer_lab: Database, mqtt_url: str, tmp_path: Path, pins: MockFactory
) -> Iterator[System]:
    """:func:`system` on the trainer lab (with Bea Briefed and Pete Printtrainer)."""
    running = System(e2e_trainer_lab, mqtt_url, tmp_path, pins)
    yield running
    running.close()


@pytest.fixture
def system(e2e_lab: Database, mqtt_url: str, tmp_path: Path, pins: MockFactory) -> Iterator[System]:
    running = System(e2e_lab, mqtt_url, tmp_path, pins)
    yield running
    running.close()


def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    return wait_until(predicate, timeout)
