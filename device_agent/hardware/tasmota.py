"""Plugs running Tasmota as the power switch, through Tasmota's HTTP command interface.

``GET /cm?cmnd=Power1%20On`` switches relay 1 and answers ``{"POWER1": "ON"}`` (``Power`` and
``{"POWER": …}`` on single-relay plugs); ``cmnd=Power1`` reads it. ``cmnd=Status%208`` answers
``{"StatusSNS": {"Time": …, "ENERGY": {"Total": 3.705, "Today": …, "Power": 5, …}}}`` on plugs
with a meter: ``Power`` in W, ``Total`` in kWh (a list per channel on multi-channel meters).
With a web password, ``user`` and ``password`` go along as query parameters; a wrong one is
answered with 401 ``{"WARNING": "Need user=<username>&password=<password>"}``. Payloads as in
Tasmota's command and JSON status documentation (Tasmota 12 to 14).
"""

from __future__ import annotations

from typing import Any

from device_agent.hardware.plug import (
    HttpPlug,
    PlugError,
    PlugStatus,
    number,
    plug_plugin,
)


class TasmotaPlug(HttpPlug):
    def __init__(
        self,
        url: str,
        channel: int = 0,
        user: str = "admin",
        password: str | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        super().__init__(url, timeout_s, label="Tasmota")
        self.channel = channel
        self._power = f"Power{channel}" if channel else "Power"
        self._login = {"user": user, "password": password} if password else {}

    def _command(self, command: str) -> Any:
        reply = self.get_json("/cm", {**self._login, "cmnd": command})
        if not isinstance(reply, dict):
            raise PlugError("switch_unreachable", f"{self.label}: {command} answered {reply!r:.200}")
        if "WARNING" in reply:
            raise PlugError(
                "switch_auth_rejected", f"{self.label}: {reply['WARNING']}: check [switch] password"
            )
        return reply

    def _relay(self, reply: dict[str, Any], command: str) -> bool:
        # A single-relay plug answers POWER to Power1 and POWER1 to nothing: accept either.
        names = (self._power.upper(), "POWER1" if self.channel in (0, 1) else "", "POWER")
        for name in names:
            value = reply.get(name)
            if value in ("ON", "OFF"):
                return bool(value == "ON")
        raise PlugError(
            "switch_unreachable", f"{self.label}: {command} has no {self._power.upper()}: {reply!r:.200}"
        )

    def set(self, on: bool) -> None:
        command = f"{self._power} {'On' if on else 'Off'}"
        self._relay(self._command(command), command)

    def status(self) -> PlugStatus:
        on = self._relay(self._command(self._power), self._power)
        sensors = self._command("Status 8").get("StatusSNS")
        energy = sensors.get("ENERGY") if isinstance(sensors, dict) else None
        if not isinstance(energy, dict):
            return PlugStatus(on=on)  # a plug without a meter
        power, total = energy.get("Power"), energy.get("Total")
        index = max(self.channel - 1, 0)
        if isinstance(power, list):
            power = power[index] if index < len(power) else None
        if isinstance(total, list):
            total = total[index] if index < len(total) else None
        kwh = number(total)
        return PlugStatus(
            on=on, power_w=number(power), energy_wh=None if kwh is None else round(kwh * 1000, 3)
        )


PLUGINS = (plug_plugin("tasmota", "a plug running Tasmota, over its HTTP command interface", TasmotaPlug),)
