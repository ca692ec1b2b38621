"""Fixtures for running the shipped broker config: certificates and accounts, made as docs/deploy.md says."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.services.provisioning import new_password
from tests.deploy.mosquitto_layout import BRIDGE, LASER, PRINTER, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the broker's certificate for 127.0.0.1, made by deploy/mosquitto/make-certs.sh."""
    return make_certs(tmp_path_factory.mktemp("certs"), "127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def passwords() -> dict[str, str]:
    """The server's account and two devices, with passwords as provisioning makes them."""
    return {BRIDGE: new_password(), PRINTER: new_password(), LASER: new_password()}
