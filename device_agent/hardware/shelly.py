"""Shelly Gen2+ plugs and relays (Plus Plug S, Plus 1PM, Pro 1PM, …) as the power switch.

Their local RPC API over HTTP (Shelly's "Gen2+ Device API", component ``Switch``):
``GET /rpc/Switch.Set?id=<channel>&on=true|false`` answers ``{"was_on": …}``;
``GET /rpc/Switch.GetStatus?id=<channel>`` answers ``{"id": 0, "output": true, "apower": 8.9,
"voltage": 237.5, "current": 0.07, "aenergy": {"total": 6.532, …}, …}``: ``output`` is the
relay, ``apower`` the active power in W, ``aenergy.total`` the energy counter in Wh (both only
on models that meter). With a password set, the device asks for HTTP digest authentication
(SHA-256, user ``admin``). Payloads as documented for firmware 1.x (Gen2 and Gen3 alike).
"""

from __future__ import annotations

from device_agent.hardware.plug import (
    HttpPlug,
    PlugError,
    PlugStatus,
    number,
    plug_plugin,
)


class ShellyPlug(HttpPlug):
    def __init__(
        self,
        url: str,
        channel: int = 0,
        user: str = "admin",
        password: str | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        auth = None
        if password:
            from requests.auth import HTTPDigestAuth

            auth = HTTPDigestAuth(user, password)
        super().__init__(url, timeout_s, auth, label="Shelly")
        self.channel = channel

    def set(self, on: bool) -> None:
        self.get_json("/rpc/Switch.Set", {"id": str(self.channel), "on": "true" if on else "false"})

    def status(self) -> PlugStatus:
        reply = self.get_json("/rpc/Switch.GetStatus", {"id": str(self.channel)})
        output = reply.get("output") if isinstance(reply, dict) else None
        if not isinstance(output, bool):
            raise PlugError(
                "switch_unreachable", f"{self.label}: Switch.GetStatus has no output: {reply!r:.200}"
            )
        energy = reply.get("aenergy")
        return PlugStatus(
            on=output,
            power_w=number(reply.get("apower")),
            energy_wh=number(energy.get("total")) if isinstance(energy, dict) else None,
        )


PLUGINS = (
    plug_plugin(
        "shelly",
        "a Shelly Gen2+ plug or relay (Plus Plug S, Plus 1PM, Pro 1PM) over its local RPC API",
        ShellyPlug,
    ),
)
