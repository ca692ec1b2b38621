"""Shared fixtures: a real MQTT broker on a free port, a database per test, the Flask app.

The broker is a private ``mosquitto`` when the binary exists, else the embedded amqtt
broker (set WERKBANK_TEST_BROKER=embedded to force it). Never the CI machine's own broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from server.broker import EmbeddedBroker, MosquittoProcess

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker | MosquittoProcess]:
    kind = os.environ.get("WERKBANK_TEST_BROKER", "auto")
    if kind == "mosquitto" or (kind == "auto" and MosquittoProcess.available()):
        running: EmbeddedBroker | MosquittoProcess = MosquittoProcess().start()
    else:
        running = EmbeddedBroker().start()
    yield running
    running.stop()


@pytest.fixture
def mqtt_url(broker: EmbeddedBroker | MosquittoProcess) -> str:
    """The broker's URL (mqtt://host:port, no credentials)."""
    return broker.url
