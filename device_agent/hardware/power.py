"""The ``power`` machine monitor: busy detection from the power a metering smart plug reads.

For machines without an API (laser cutters, CNC routers, plotters) on a Shelly or Tasmota plug
(``[switch] backend``): the machine works while it draws more than it does idle. It is the
current clamp's rules (:class:`~device_agent.hardware.load.LoadMonitor`) on the plug's watts,
with no wiring at the mains: the plug is certified for it, the clamp needs an electrician.
The monitor asks the plug itself (its own connection, every ``[monitor] poll_s``), so a
lock still waits for the cut when the switch's own read-backs are minutes apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from device_agent.hardware.base import MachineMonitor, MonitorReadings
from device_agent.hardware.load import LOAD_KEYS, LoadMonitor, timing
from device_agent.hardware.monitors import MonitorReadError
from device_agent.hardware.plug import PlugClient, PlugError
from device_agent.hardware.plugins import Plugin, paragraph, plugin
from device_agent.schema import Key, between

FAULT = "power_meter_failed"


class PowerMonitor(LoadMonitor):
    """Runs and ``cut`` jobs from ``meter``'s watts (thresholds in W; see LoadMonitor)."""

    unit = "W"

    def __init__(
        self,
        meter: PlugClient,
        threshold_w: float = 50.0,
        release_w: float = 20.0,
        min_on_s: float = 1.0,
        min_off_s: float = 3.0,
        job_gap_s: float = 60.0,
        poll_s: float = 1.0,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
    ) -> None:
        self.meter = meter
        self.watts: float | None = None
        super().__init__(
            "power-monitor",
            FAULT,
            threshold_w,
            release_w,
            min_on_s,
            min_off_s,
            job_gap_s,
            poll_s,
            retry_max_s,
            lost_hold_s,
        )
        self._start()

    def sample(self) -> float:
        try:
            status = self.meter.status()
        except PlugError as exc:
            raise MonitorReadError(FAULT, f"reading the power: {exc.detail}") from exc
        if status.power_w is None:
            raise MonitorReadError(
                FAULT, f"{self.meter.label} reports no power: use a plug with a meter (Plus Plug S, Pro 1PM)"
            )
        self.watts = status.power_w
        return status.power_w

    def readings(self, value: float) -> MonitorReadings:
        return MonitorReadings(power_w=round(value, 1))

    def close(self) -> None:
        super().close()
        self.meter.close()


KEYS = (
    Key(
        "monitor",
        "threshold_w",
        float,
        "power: the machine runs once the plug reads at or above this (W; above what it draws idle).",
        default=50.0,
        check=between(0.1, 100000, " W"),
    ),
    Key(
        "monitor",
        "release_w",
        float,
        "power: it stops once the plug reads below this (W); below threshold_w (hysteresis).",
        default=20.0,
        check=between(0, 100000, " W"),
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    errors: list[str] = []
    threshold, release = values.get("monitor_threshold_w"), values.get("monitor_release_w")
    if isinstance(threshold, float) and isinstance(release, float) and release >= threshold:
        errors.append(
            f"[monitor] release_w: is {release:g} W; it must be below threshold_w ({threshold:g} W), "
            "or the machine would flap between running and stopped"
        )
    if values.get("monitor_backend") == "power":
        switch = values.get("switch_backend")
        found = plugin("switch", switch) if isinstance(switch, str) else None
        if found is None or found.meter is None:
            errors.append(
                f'[monitor] backend: "power" reads the smart plug of [switch], but [switch] backend is '
                f'"{switch}"; use a metering plug (shelly, tasmota), or "current" with a clamp'
            )
    return errors


def _create(config: Any) -> MachineMonitor:
    found = plugin("switch", config.switch_backend)
    assert found is not None and found.meter is not None, "the config check requires a metering plug"
    return PowerMonitor(
        meter=found.meter(config),
        threshold_w=config.option("monitor_threshold_w"),
        release_w=config.option("monitor_release_w"),
        **timing(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="power",
        summary="busy detection from the watts of the metering smart plug of [switch] (laser, CNC, plotter)",
        faults=(FAULT,),
        keys=(*KEYS, *LOAD_KEYS),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `power`: the watts the smart plug of `[switch]` (Shelly, Tasmota) reads, for machines",
            "without an API (laser cutters, CNC, plotters). The rules of `current` on watts: running",
            "at or above `threshold_w` for `min_on_s`, stopped below `release_w` for `min_off_s`; a",
            "run after `job_gap_s` of idle is a `cut` job. A plug that cannot be read, or has no",
            "meter, is a `fault` (`power_meter_failed`). Find the thresholds from `power_w` in",
            "telemetry: idle (fans, chiller) and working.",
        ),
    ),
)
