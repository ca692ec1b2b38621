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
from tests.agent.helpers import Responder, make_config


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
