"""`werkbank tap` against a running agent and bridge: every tap gets an answer that is true and
says what to do, also the taps the agent decides alone without asking the server."""

from __future__ import annotations

import time

import pytest
from click.testing import Result
from flask.testing import FlaskCliRunner

from device_agent.agent import Agent
from device_agent.config import load_config
from server import create_app
from server.config import TestConfig
from server.models import MachineSession
from tests.e2e.conftest import System, eventually

QUINN = "04A224B2C35E80"  # qualified on printers
OTHER = "A1B2C3D4"  # Tina, a trainer, also allowed on printers


@pytest.fixture
def runner(system: System, database_url: str, mqtt_url: str) -> FlaskCliRunner:
    """The `werkbank` commands on the system's database and broker, as a second terminal has them."""
    return create_app(TestConfig, DATABASE_URL=database_url, MQTT_URL=mqtt_url).test_cli_runner()


def _agent_with_grace(system: System, device_id: str, grace_s: float) -> Agent:
    """The agent as the demo runs it: the same badge is ignored for ``grace_s`` after unlocking."""
    path = system.config_file(device_id)
    path.write_text(path.read_text().replace("tap_out_grace_s = 0", f"tap_out_grace_s = {grace_s:g}"))
    agent = Agent(load_config(path))
    agent.start()
    assert agent.wait_connected(5)
    system.agents[device_id] = agent
    return agent


def test_e2e_cli_tap_pasted_twice_explains_the_ignored_repeat(system: System, runner: FlaskCliRunner) -> None:
    system.start_bridge()
    agent = _agent_with_grace(system, "pi-printer-1", 2.0)
    system.wait_allowlist(agent)

    def tap(uid: str) -> Result:
        return runner.invoke(args=["tap", "printer-1", uid, "--timeout", "3"])

    first = tap(QUINN)
    assert first.exit_code == 0, first.output
    assert first.output.startswith("allow (ok)")
    # The README's two lines pasted as one block: the second comes within the grace.
    second = tap(QUINN)
    assert second.exit_code != 0
    assert "ignores the same badge" in second.output
    assert "tap_out_grace_s" in second.output and "Tap again" in second.output
    assert "Error: no answer: is the machine's simulated agent running" not in second.output

    # Someone else's badge while the machine is in use: refused by the agent alone.
    other = tap(OTHER)
    assert other.exit_code != 0
    assert "in use by another badge" in other.output and "tap out" in other.output

    def ended() -> bool:
        with system.db.session() as s:
            rows = s.query(MachineSession).all()
            return len(rows) == 1 and rows[0].ended_at is not None

    time.sleep(0.5)  # the grace (2 s) is over: the same badge taps out
    third = tap(QUINN)
    assert third.exit_code == 0, third.output
    assert third.output.startswith("session ended (tap_out)")
    assert eventually(ended)


def test_e2e_cli_tap_without_agent_says_to_start_it(system: System, runner: FlaskCliRunner) -> None:
    system.start_bridge()
    result = runner.invoke(args=["tap", "printer-1", QUINN, "--timeout", "1"])
    assert result.exit_code != 0
    assert "agent" in result.output and "not connected" in result.output
