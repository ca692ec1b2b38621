"""Faithful peers of a Shelly Gen2+ plug and a Tasmota plug, run as their own process.

Built from the makers' public API documentation, not from our client:

- **Shelly** (Gen2+ Device API, component ``Switch``; payload shapes of a Plus Plug S on
  firmware 1.x): ``/rpc/Switch.Set`` → ``{"was_on": …}``; ``/rpc/Switch.GetStatus`` →
  ``{"id", "source", "output", "apower", "voltage", "current", "aenergy": {"total",
  "by_minute", "minute_ts"}, "temperature": {"tC", "tF"}}``; ``/rpc/Switch.SetConfig`` /
  ``GetConfig`` with ``initial_state``; ``/rpc/Shelly.GetDeviceInfo``. With a password, HTTP
  digest authentication as the device does it (RFC 7616, SHA-256, realm = device id,
  qop ``auth``). Unknown methods answer 404 with a JSON-RPC error ``{"code": -114, …}``.
- **Tasmota** (Commands and JSON status documentation): ``/cm?cmnd=Power1 On`` →
  ``{"POWER1": "ON"}`` (``POWER`` for ``Power``), ``Status 8`` / ``Status 10`` →
  ``{"StatusSNS": {"Time", "ENERGY": {"TotalStartTime", "Total" (kWh), "Yesterday", "Today",
  "Power" (W), "ApparentPower", "ReactivePower", "Factor", "Voltage", "Current"}}}``,
  ``PowerOnState``; a wrong web password → 401 ``{"WARNING": "Need user=<username>&password=<password>"}``.

What a real plug does that the API does not say, the test drives through ``/__peer/…``
(never called by the agent): ``load?w=`` (what the machine draws while on), ``reboot``
(the relay comes back as ``initial_state`` / ``PowerOnState`` says), ``stuck?on=1`` (a
welded relay: commands are taken, the output does not change), ``state`` (for asserts).

    python -m tests.agent.peers.plugs shelly|tasmota --port PORT [--password PW] [--relays N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Plug:
    """The physical part both makes share: relays, a load, an energy counter."""

    def __init__(self, relays: int) -> None:
        self.lock = threading.Lock()
        self.output = [False] * relays
        self.load_w = [0.0] * relays
        self.energy_wh = [0.0] * relays
        self.stuck = False
        self.sets = 0
        self._last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        hours = (now - self._last) / 3600
        self._last = now
        for i, on in enumerate(self.output):
            if on:
                self.energy_wh[i] += self.load_w[i] * hours

    def power(self, i: int) -> float:
        return self.load_w[i] if self.output[i] else 0.0

    def switch(self, i: int, on: bool) -> bool:
        """Switch relay ``i``; returns whether it was on. A stuck relay takes the command and stays."""
        self.tick()
        was_on = self.output[i]
        self.sets += 1
        if not self.stuck:
            self.output[i] = on
        return was_on


class ShellyState(Plug):
    def __init__(self, relays: int, password: str | None) -> None:
        super().__init__(relays)
        self.device_id = "shellyplusplugs-e8db84a1b2c3"
        self.password = password
        self.initial_state = ["restore_last"] * relays
        self.source = ["init"] * relays
        self.nonces: set[str] = set()

    def reboot(self) -> None:
        self.tick()
        for i, mode in enumerate(self.initial_state):
            if mode == "off":
                self.output[i] = False
            elif mode == "on":
                self.output[i] = True
            # restore_last keeps the state
            self.source[i] = "init"

    def status(self, i: int) -> dict[str, Any]:
        self.tick()
        now = int(time.time())
        power = self.power(i)
        return {
            "id": i,
            "source": self.source[i],
            "output": self.output[i],
            "apower": round(power, 1),
            "voltage": 236.9,
            "current": round(power / 236.9, 3),
            "aenergy": {
                "total": round(self.energy_wh[i], 3),
                "by_minute": [0.0, 0.0, 0.0],
                "minute_ts": now - now % 60,
            },
            "temperature": {"tC": 41.2, "tF": 106.2},
        }


class TasmotaState(Plug):
    def __init__(self, relays: int, password: str | None) -> None:
        super().__init__(relays)
        self.password = password
        self.power_on_state = 3  # Tasmota's default: the last saved state

    def reboot(self) -> None:
        self.tick()
        for i in range(len(self.output)):
            if self.power_on_state == 0:
                self.output[i] = False
            elif self.power_on_state == 1:
                self.output[i] = True
            elif self.power_on_state == 2:
                self.output[i] = not self.output[i]


def _digest_ok(state: ShellyState, method: str, header: str | None) -> bool:
    """RFC 7616 digest with SHA-256, as Shelly Gen2+ checks it (user ``admin``)."""
    if not header or not header.startswith("Digest "):
        return False
    fields: dict[str, str] = {}
    for part in header[len("Digest ") :].split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value.strip('"')
    if fields.get("username") != "admin" or fields.get("nonce") not in state.nonces:
        return False

    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    ha1 = h(f"admin:{state.device_id}:{state.password}")
    ha2 = h(f"{method}:{fields.get('uri', '')}")
    expected = h(f"{ha1}:{fields['nonce']}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
    return secrets.compare_digest(expected, fields.get("response", ""))


class Handler(BaseHTTPRequestHandler):
    server: PeerServer

    def log_message(self, format: str, *args: Any) -> None:  # the test's output stays readable
        pass

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        state = self.server.state
        with state.lock:
            if url.path.startswith("/__peer/"):
                self._control(url.path[len("/__peer/") :], query)
            elif isinstance(state, ShellyState):
                self._shelly(state, url.path, query)
            else:
                assert isinstance(state, TasmotaState)
                self._tasmota(state, url.path, query)

    # ------------------------------------------------------------------ test control

    def _control(self, what: str, query: dict[str, str]) -> None:
        state = self.server.state
        channel = int(query.get("id", "0"))
        if what == "load":
            state.tick()
            state.load_w[channel] = float(query["w"])
        elif what == "reboot":
            state.reboot()
        elif what == "stuck":
            state.stuck = query.get("on") == "1"
        elif what == "set":  # someone presses the plug's button
            state.tick()
            state.output[channel] = query.get("on") == "1"
        elif what != "state":
            self._send(404, {"error": what})
            return
        state.tick()
        self._send(
            200,
            {
                "output": state.output,
                "energy_wh": state.energy_wh,
                "sets": state.sets,
                "initial_state": getattr(state, "initial_state", None),
                "power_on_state": getattr(state, "power_on_state", None),
            },
        )

    # ------------------------------------------------------------------ Shelly

    def _shelly(self, state: ShellyState, path: str, query: dict[str, str]) -> None:
        if state.password and not _digest_ok(state, "GET", self.headers.get("Authorization")):
            nonce = f"{int(time.time()):x}{secrets.token_hex(2)}"
            state.nonces.add(nonce)
            challenge = f'Digest qop="auth", realm="{state.device_id}", nonce="{nonce}", algorithm=SHA-256'
            self._send(401, {"code": 401, "message": "Unauthorized"}, {"WWW-Authenticate": challenge})
            return
        method = path.removeprefix("/rpc/")
        try:
            channel = int(query.get("id", "0"))
        except ValueError:
            self._send(400, {"code": -103, "message": "Invalid argument 'id'!"})
            return
        if method.startswith("Switch.") and not 0 <= channel < len(state.output):
            self._send(404, {"code": -105, "message": f"Argument 'id', value {channel} not found!"})
            return
        if method == "Switch.Set":
            on = query.get("on")
            if on not in ("true", "false"):
                self._send(400, {"code": -103, "message": "Missing required argument 'on'!"})
                return
            state.source[channel] = "HTTP_in"
            self._send(200, {"was_on": state.switch(channel, on == "true")})
        elif method == "Switch.GetStatus":
            self._send(200, state.status(channel))
        elif method == "Switch.SetConfig":
            config = json.loads(query.get("config", "{}"))
            if config.get("initial_state") not in (None, "off", "on", "restore_last", "match_input"):
                self._send(400, {"code": -103, "message": "Invalid argument 'initial_state'!"})
                return
            if "initial_state" in config:
                state.initial_state[channel] = config["initial_state"]
            self._send(200, {"restart_required": False})
        elif method == "Switch.GetConfig":
            self._send(
                200,
                {
                    "id": channel,
                    "name": None,
                    "in_mode": "momentary",
                    "initial_state": state.initial_state[channel],
                    "auto_on": False,
                    "auto_off": False,
                },
            )
        elif method == "Shelly.GetDeviceInfo":
            self._send(
                200,
                {
                    "name": None,
                    "id": state.device_id,
                    "mac": "E8DB84A1B2C3",
                    "model": "SNPL-00112EU",
                    "gen": 2,
                    "fw_id": "20230912-082306/1.0.3-g6176478",
                    "ver": "1.0.3",
                    "app": "PlusPlugS",
                    "auth_en": bool(state.password),
                    "auth_domain": state.device_id if state.password else None,
                },
            )
        else:
            self._send(404, {"code": -114, "message": f"Method {method} failed: No handler for {method}"})

    # ------------------------------------------------------------------ Tasmota

    def _tasmota(self, state: TasmotaState, path: str, query: dict[str, str]) -> None:
        if path != "/cm":
            self._send(404, {"error": "not found"})
            return
        if state.password and (query.get("user") != "admin" or query.get("password") != state.password):
            self._send(401, {"WARNING": "Need user=<username>&password=<password>"})
            return
        words = query.get("cmnd", "").split()
        if not words:
            self._send(200, {"Command": "Unknown"})
            return
        name, arg = words[0].lower(), (words[1] if len(words) > 1 else None)
        if name.startswith("power") and name != "poweronstate":
            index = name[len("power") :]
            channel = int(index) - 1 if index else 0
            if not 0 <= channel < len(state.output):
                self._send(200, {"Command": "Unknown"})
                return
            if arg is not None:
                wanted = {"on": True, "1": True, "off": False, "0": False}.get(arg.lower())
                if arg.lower() in ("toggle", "2"):
                    wanted = not state.output[channel]
                if wanted is None:
                    self._send(200, {"Command": "Error"})
                    return
                state.switch(channel, wanted)
            key = f"POWER{index}" if index else "POWER"
            self._send(200, {key: "ON" if state.output[channel] else "OFF"})
        elif name == "status" and arg in ("8", "10"):
            state.tick()
            energy_kwh = [round(e / 1000, 3) for e in state.energy_wh]
            power = [round(state.power(i)) for i in range(len(state.output))]
            single = len(state.output) == 1
            self._send(
                200,
                {
                    "StatusSNS": {
                        "Time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                        "ENERGY": {
                            "TotalStartTime": "2024-03-01T09:12:44",
                            "Total": energy_kwh[0] if single else energy_kwh,
                            "Yesterday": 0.0,
                            "Today": energy_kwh[0] if single else energy_kwh,
                            "Power": power[0] if single else power,
                            "ApparentPower": power[0] if single else power,
                            "ReactivePower": 0,
                            "Factor": 1.0,
                            "Voltage": 231,
                            "Current": round(power[0] / 231, 3)
                            if single
                            else [round(p / 231, 3) for p in power],
                        },
                    }
                },
            )
        elif name == "poweronstate":
            if arg is not None:
                state.power_on_state = int(arg)
            self._send(200, {"PowerOnState": state.power_on_state})
        else:
            self._send(200, {"Command": "Unknown"})


class PeerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, state: ShellyState | TasmotaState) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.state = state


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("make", choices=("shelly", "tasmota"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password")
    parser.add_argument("--relays", type=int, default=1)
    args = parser.parse_args(argv)
    state: ShellyState | TasmotaState = (
        ShellyState(args.relays, args.password)
        if args.make == "shelly"
        else TasmotaState(args.relays, args.password)
    )
    server = PeerServer(args.port, state)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
