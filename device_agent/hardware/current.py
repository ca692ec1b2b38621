"""The ``current`` machine monitor: a current clamp on the machine's supply, read through an MCP3008 ADC.

For machines that cannot say what they do (laser cutters, CNC routers): the machine works
while it draws current. A run of current is a ``cut`` job.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from device_agent.hardware.base import MonitorReadings
from device_agent.hardware.load import LOAD_KEYS, LoadMonitor, timing
from device_agent.hardware.monitors import MonitorReadError
from device_agent.hardware.plugins import Plugin, paragraph
from device_agent.schema import Key, between

if TYPE_CHECKING:
    from device_agent.config import AgentConfig

log = logging.getLogger(__name__)


class CurrentMonitor(LoadMonitor):
    """An SCT-013 current clamp (voltage-output type, e.g. SCT-013-030: 30 A → 1 V) on an MCP3008.

    Wiring (MCP3008 on SPI0, all at 3.3 V, never 5 V: the Pi's pins are not 5 V tolerant):
    VDD (16) and VREF (15) to 3.3 V (header pin 1 or 17); AGND (14) and DGND (9) to GND;
    CLK (13) to SCLK, header pin 23; DOUT (12) to MISO, pin 21; DIN (11) to MOSI, pin 19;
    CS/SHDN (10) to CE1, pin 26 (``adc_device = 1``). The RC522 reader shares SPI0 and takes
    CE0 (pin 24): each chip needs its own chip select, so if no RC522 is fitted the MCP3008 may
    use CE0 instead (``adc_device = 0``). The clamp goes around ONE conductor of the machine's
    supply (live or neutral, not the whole cable: the two currents cancel). Its 3.5 mm plug:
    one lead to the ADC input (CH0 = ``adc_channel = 0``), the other to a mid-rail bias of
    1.65 V (two 10 kΩ resistors from 3.3 V to GND, 10 µF from the midpoint to GND), because the
    clamp's output swings around zero and the ADC reads only 0…3.3 V.

    Every ``poll_s`` its thread samples the channel for ``window_s`` (several mains cycles),
    takes the RMS of the samples around their mean (the bias drops out), and converts volts to
    amps with ``amps_per_volt``. Runs and jobs from ``threshold_a``, ``release_a``, ``min_on_s``,
    ``min_off_s`` and ``job_gap_s`` as :class:`~device_agent.hardware.load.LoadMonitor` says.
    ``power_w`` in telemetry is ``mains_v`` times the current.
    """

    unit = "A"

    def __init__(
        self,
        channel: int = 0,
        device: int = 1,
        vref: float = 3.3,
        amps_per_volt: float = 30.0,
        threshold_a: float = 0.5,
        release_a: float = 0.3,
        min_on_s: float = 1.0,
        min_off_s: float = 3.0,
        job_gap_s: float = 60.0,
        mains_v: float = 230.0,
        window_s: float = 0.1,
        poll_s: float = 1.0,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import MCP3008

        self._adc: Any = MCP3008(channel=channel, device=device, max_voltage=vref, pin_factory=pin_factory)
        self.channel = channel
        self.vref = vref
        self.amps_per_volt = amps_per_volt
        self.threshold_a = threshold_a
        self.release_a = release_a
        self.mains_v = mains_v
        self.window_s = window_s
        self.amps = 0.0
        super().__init__(
            "current-monitor",
            "current_sensor_failed",
            threshold_a,
            release_a,
            min_on_s,
            min_off_s,
            job_gap_s,
            poll_s,
            retry_max_s,
            lost_hold_s,
        )
        self._start()

    def close(self) -> None:
        super().close()  # the thread first: it must not read a closed ADC
        self._adc.close()

    def sample(self) -> float:
        """RMS amps over one window of samples."""
        values: list[float] = []
        end = time.monotonic() + self.window_s
        try:
            while time.monotonic() < end or len(values) < 2:
                values.append(float(self._adc.value))
        except Exception as exc:
            raise MonitorReadError(
                "current_sensor_failed", f"reading the MCP3008 (channel {self.channel}) failed: {exc}"
            ) from exc
        mean = sum(values) / len(values)
        if mean < 0.02 or mean > 0.98:
            # A clamp with its bias reads mid-scale even with no current: at a rail the divider
            # or the clamp is missing, and "no current" would be a guess.
            raise MonitorReadError(
                "current_sensor_failed",
                f"ADC channel {self.channel} sits at {mean * self.vref:.2f} V, not near "
                f"{self.vref / 2:.2f} V: check the clamp and its bias divider",
            )
        rms = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        self.amps = rms * self.vref * self.amps_per_volt
        return self.amps

    def readings(self, value: float) -> MonitorReadings:
        return MonitorReadings(power_w=round(self.mains_v * value, 1))


# ---------------------------------------------------------------------- config

KEYS = (
    Key(
        "monitor",
        "adc_channel",
        int,
        "current: MCP3008 input the clamp is wired to (CH0-CH7).",
        default=0,
        check=between(0, 7),
    ),
    Key(
        "monitor",
        "adc_device",
        int,
        "current: SPI0 chip select of the MCP3008: 1 = CE1 (pin 26; the RC522 has CE0), 0 = CE0 (pin 24).",
        default=1,
        check=between(0, 1),
    ),
    Key(
        "monitor",
        "vref",
        float,
        "current: the MCP3008's VREF in volts (wired to 3.3 V).",
        default=3.3,
        check=between(1, 5.5, " V"),
    ),
    Key(
        "monitor",
        "amps_per_volt",
        float,
        "current: the clamp's scale (SCT-013-030: 30 A per volt; SCT-013-005: 5).",
        default=30.0,
        check=between(0.01, 10000, " A/V"),
    ),
    Key(
        "monitor",
        "threshold_a",
        float,
        "current: the machine runs once the current stays at or above this (amps, RMS).",
        default=0.5,
        check=between(0.001, 1000, " A"),
    ),
    Key(
        "monitor",
        "release_a",
        float,
        "current: it stops once the current stays below this; below threshold_a (hysteresis).",
        default=0.3,
        check=between(0, 1000, " A"),
    ),
    Key(
        "monitor",
        "mains_v",
        float,
        "current: mains voltage, for power_w in telemetry.",
        default=230.0,
        check=between(1, 1000, " V"),
    ),
    Key(
        "monitor",
        "window_s",
        float,
        "current: how long each reading samples (a few mains cycles: 0.1 s is five at 50 Hz).",
        default=0.1,
        check=between(0.02, 2, " s"),
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    threshold, release = values["monitor_threshold_a"], values["monitor_release_a"]
    if isinstance(threshold, float) and isinstance(release, float) and release >= threshold:
        return [
            f"[monitor] release_a: is {release:g} A; it must be below threshold_a ({threshold:g} A), "
            "or the machine would flap between running and stopped"
        ]
    return []


def _create(config: AgentConfig) -> CurrentMonitor:
    return CurrentMonitor(
        channel=config.option("monitor_adc_channel"),
        device=config.option("monitor_adc_device"),
        vref=config.option("monitor_vref"),
        amps_per_volt=config.option("monitor_amps_per_volt"),
        threshold_a=config.option("monitor_threshold_a"),
        release_a=config.option("monitor_release_a"),
        mains_v=config.option("monitor_mains_v"),
        window_s=config.option("monitor_window_s"),
        **timing(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="current",
        summary="a current clamp through an MCP3008 ADC (laser, CNC)",
        faults=("current_sensor_failed",),
        keys=(*KEYS, *LOAD_KEYS),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `current`: a current clamp (SCT-013) through an MCP3008 ADC on SPI0 (CE1, pin 26, by",
            "default, since the RC522 reader takes CE0). A run of current above `threshold_a` is a `cut`",
            "job; `power_w` in telemetry. A reading stuck at a rail is a `fault` (`current_sensor_failed`).",
        ),
    ),
)
