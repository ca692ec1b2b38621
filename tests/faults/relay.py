"""A loopback TCP relay the fault suite can cut: between an agent and Mosquitto, or the bridge and PostgreSQL.

Three modes:

* ``pass``: bytes flow both ways.
* ``blackhole``: a dead link (a Wi-Fi drop, an unplugged cable): open connections stay open
  but nothing gets through either way, and new connections are accepted and then held silent.
  Each side finds out only by its own keep-alive. ``restore()`` closes every connection that
  saw the blackhole (its byte stream has holes), so both sides reconnect.
* ``refuse``: a server that refuses connections: open connections are reset and new ones are
  reset as soon as they are accepted.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
from typing import Literal

log = logging.getLogger(__name__)

Mode = Literal["pass", "blackhole", "refuse"]


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a refusing or vanished peer does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket | None) -> None:
        self.client = client
        self.upstream = upstream
        self.silenced = upstream is None  # accepted during a blackhole: never connected upstream
        self.closed = False

    def close(self) -> None:
        self.closed = True
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)


class TcpRelay:
    """Listens on 127.0.0.1:<port> and forwards to ``target`` while the mode is ``pass``."""

    def __init__(self, target_host: str, target_port: int, name: str = "relay") -> None:
        self.target = (target_host, target_port)
        self.name = name
        self.mode: Mode = "pass"
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._stopped = False
        threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True).start()

    # -- control ---------------------------------------------------------------------------
    def cut(self, mode: Literal["blackhole", "refuse"]) -> None:
        with self._lock:
            self.mode = mode
            pairs = list(self._pairs)
        if mode == "refuse":
            for pair in pairs:
                self._drop(pair)
        else:
            for pair in pairs:
                pair.silenced = True
        log.info("%s: cut (%s)", self.name, mode)

    def restore(self) -> None:
        with self._lock:
            self.mode = "pass"
            stale = [p for p in self._pairs if p.silenced]
        for pair in stale:
            self._drop(pair)
        log.info("%s: restored (%d held connections closed)", self.name, len(stale))

    def close(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._drop(pair)

    # -- plumbing --------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = self.mode
            if mode == "refuse":
                _reset(client)
                continue
            upstream: socket.socket | None = None
            if mode == "pass":
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    _reset(client)  # the target itself is down: say so as it would
                    continue
            pair = _Pair(client, upstream)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, True), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(pair, False), daemon=True).start()

    def _pump(self, pair: _Pair, from_client: bool) -> None:
        source = pair.client if from_client else pair.upstream
        assert source is not None
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if pair.silenced:
                    continue  # the link is dead: the bytes go nowhere
                sink = pair.upstream if from_client else pair.client
                if sink is None:
                    continue
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # A dead link carries no goodbye either: a silenced pair waits for restore().
            if not pair.silenced:
                self._drop(pair)

    def _drop(self, pair: _Pair) -> None:
        pair.close()
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)
