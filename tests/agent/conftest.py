"""Fixtures for the device agent tests: mock pins, a server stand-in, and started agents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero import Device
from gpiozero.pins.mock import MockFactory

from device_agent.agent import Agent
from device_agent.config import AgentConfig
from server.broker import free_port
from tests.agent.helpers import Responder, make_config
from tests.agent.moonraker_server import MoonrakerServer, missing_moonraker
from tests.agent.octoprint_server import OctoPrintServer, missing_octoprint


@pytest.fixture(autouse=True)
def pins() -> Iterator[MockFactory]:
    """gpiozero's mock pins, cleared before and after each test."""
    if not isinstance(Device.pin_factory, MockFactory):
        Device.pin_factory = MockFactory()
    factory = Device.pin_factory
    factory.reset()
    yield factory
    factory.reset()


@pytest.fixture
def responder(mqtt_url: str) -> Iterator[Responder]:
    running = Responder(mqtt_url).start()
    yield running
    running.stop()


@pytest.fixture
def start_agent(tmp_path: Path, mqtt_url: str) -> Iterator[Callable[..., Agent]]:
    """Make and start agents (connected and subscribed); all are stopped after the test."""
    agents: list[Agent] = []

    def start(config: AgentConfig | None = None, wait: bool = True, **kwargs: Any) -> Agent:
        agent = Agent(config or make_config(tmp_path, mqtt_url), **kwargs)
        agents.append(agent)
        agent.start()
        if wait:
            assert agent.wait_connected(5), "agent did not connect"
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture(scope="session")
def octoprint_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OctoPrintServer]:
    """A real OctoPrint on a free port with its Virtual Printer connected; stopped after the run."""
    problem = missing_octoprint()
    if problem:
        # Fail, never skip: a CI without OctoPrint must not pass the printer tests silently.
        pytest.fail(problem, pytrace=False)
    server = OctoPrintServer(tmp_path_factory.mktemp("octoprint"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def octoprint(octoprint_server: OctoPrintServer) -> OctoPrintServer:
    """The session's OctoPrint, idle (no print running) at the start of the test."""
    octoprint_server.idle()
    return octoprint_server


@pytest.fixture(scope="session")
def moonraker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoonrakerServer]:
    """A real Moonraker on a free port with a peer of Klipper behind it; stopped after the run."""
    problem = missing_moonraker()
    if problem:
        pytest.fail(problem, pytrace=False)  # fail, never skip (as for OctoPrint)
    server = MoonrakerServer(tmp_path_factory.mktemp("moonraker"), free_port()).start()
    yield server
    server.stop()


@pytest.fixture
def moonraker(moonraker_server: MoonrakerServer) -> MoonrakerServer:
    """The session's Moonraker, with no print under way at the start of the test."""
    moonraker_server.idle()
    return moonraker_server
