"""free_port(): a port for a server the tests (and `make run`) start next, that no outgoing
connection can take first."""

from __future__ import annotations

import itertools
import socket
from pathlib import Path

import pytest

from server import broker
from server.broker import FIRST_FREE_PORT, free_port


def _ephemeral_start() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_port_is_below_the_range_outgoing_connections_take_their_ports_from() -> None:
    start = _ephemeral_start()
    ports = [free_port() for _ in range(50)]
    assert all(FIRST_FREE_PORT <= p < start for p in ports), ports
    # An outgoing connection's local port is from the other range: it never takes one of ours.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[0]))
        listener.listen()
        with socket.create_connection(("127.0.0.1", ports[0])) as client:
            assert client.getsockname()[1] >= start


def test_free_port_never_hands_out_a_port_twice_nor_one_that_is_taken() -> None:
    taken = socket.socket()
    try:
        first = free_port()
        taken.bind(("127.0.0.1", first))
        taken.listen()
        more = {free_port() for _ in range(200)}
        assert first not in more and len(more) == 200
        for port in list(more)[:20]:  # each can be listened on at once
            with socket.socket() as server:
                server.bind(("127.0.0.1", port))
                server.listen()
    finally:
        taken.close()


def test_free_port_gives_each_test_worker_a_slice_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(broker._port_range())
        assert all(p in slices[-1] for p in (free_port() for _ in range(20)))
    assert [s.start for s in slices] == sorted(s.start for s in slices)
    assert all(a.stop <= b.start for a, b in itertools.pairwise(slices))
    assert slices[0].start == FIRST_FREE_PORT and slices[-1].stop <= _ephemeral_start()
