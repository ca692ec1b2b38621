"""The ``gpio_input`` machine monitor: the machine's own "busy" signal on a GPIO pin.

Many machines say when they work on a contact or a logic output: a laser controller's "laser on"
or "job running" output, a CNC controller's spindle relay, a printer board's fan or LED line. Wired
to a GPIO pin (through an optocoupler: never connect a machine's signal to a Pi pin directly), it
tells the agent exactly when the machine runs, with no clamp and no API. The rules of the load
monitors (:class:`~device_agent.hardware.load.LoadMonitor`) apply to the signal read as 1 (busy)
or 0 (idle): busy for ``min_on_s`` is running, idle for ``min_off_s`` is stopped, and a run after
``job_gap_s`` of idle starts a job.

This module is the whole monitor: its keys, their checks, its docs and its factory (issue: "a new
monitor is one file"); the config schema and firmware_config/agent-config.md collect them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from device_agent.hardware.base import JobKind, MachineMonitor, MonitorReadings
from device_agent.hardware.load import LOAD_KEYS, LoadMonitor, timing
from device_agent.hardware.monitors import MonitorReadError
from device_agent.hardware.plugins import Plugin, paragraph
from device_agent.schema import Key, between, one_of

FAULT = "busy_signal_failed"


class GpioInputMonitor(LoadMonitor):
    """A busy signal on BCM pin ``pin``.

    Wiring: the machine's output drives the LED side of an optocoupler (e.g. PC817 with a resistor
    for the machine's voltage); the transistor side goes between the GPIO pin and GND. The Pi's
    internal pull-up holds the pin high while the machine is idle and the optocoupler pulls it low
    while it is busy: ``active = "low"``, the default. A 3.3 V logic output wired through a level
    shifter that drives the pin high when busy is ``active = "high"`` (the pin is pulled down).
    """

    unit = "busy"

    def __init__(
        self,
        pin: int,
        active: str = "low",
        job_kind: JobKind = "cut",
        min_on_s: float = 1.0,
        min_off_s: float = 3.0,
        job_gap_s: float = 60.0,
        poll_s: float = 0.5,
        retry_max_s: float = 60.0,
        lost_hold_s: float = 300.0,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import DigitalInputDevice

        # pull_up=True: idle is high and busy pulls low (active low); False: pulled down, busy is high.
        self._input: Any = DigitalInputDevice(pin, pull_up=active == "low", pin_factory=pin_factory)
        self.pin = pin
        self.job_kind = job_kind
        # A signal is 1 or 0: busy at 1, idle below 0.5.
        super().__init__(
            "gpio-input-monitor",
            FAULT,
            1.0,
            0.5,
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
            return 1.0 if self._input.is_active else 0.0
        except Exception as exc:
            raise MonitorReadError(FAULT, f"reading GPIO {self.pin} failed: {exc}") from exc

    def readings(self, value: float) -> MonitorReadings:
        return MonitorReadings()

    def close(self) -> None:
        super().close()  # the thread first: it must not read a closed pin
        self._input.close()


KEYS = (
    Key(
        "monitor",
        "busy_pin",
        int,
        "gpio_input: the BCM GPIO the machine's busy signal is wired to (through an optocoupler).",
        check=between(0, 27),
    ),
    Key(
        "monitor",
        "busy_active",
        str,
        'gpio_input: "low" when busy pulls the pin to GND (an optocoupler; the pull-up is on), '
        '"high" when busy drives it to 3.3 V (the pin is pulled down).',
        default="low",
        check=one_of(("low", "high")),
    ),
    Key(
        "monitor",
        "busy_job",
        str,
        "gpio_input: the kind of job a run is reported as (cut, print, other).",
        default="cut",
        check=one_of(("cut", "print", "other")),
    ),
)


def _check(values: Mapping[str, Any]) -> list[str]:
    if values.get("monitor_backend") == "gpio_input" and values.get("monitor_busy_pin") is None:
        return [
            '[monitor] busy_pin: "gpio_input" needs the GPIO the busy signal is wired to, '
            "e.g. busy_pin = 5 (hardware/README.md has the free pins)"
        ]
    return []


def _create(config: Any) -> MachineMonitor:
    return GpioInputMonitor(
        pin=config.option("monitor_busy_pin"),
        active=config.option("monitor_busy_active"),
        job_kind=cast(JobKind, config.option("monitor_busy_job")),
        **timing(config),
    )


PLUGINS = (
    Plugin(
        kind="monitor",
        name="gpio_input",
        summary="the machine's own busy signal on a GPIO pin, through an optocoupler (laser, CNC)",
        faults=(FAULT,),
        keys=(*KEYS, *LOAD_KEYS),
        check=_check,
        create_monitor=_create,
        docs=paragraph(
            "- `gpio_input`: the machine's own busy signal (a laser controller's \"job running\"",
            "output, a CNC's spindle relay) on GPIO `busy_pin`, through an optocoupler. Busy for",
            "`min_on_s` is running, idle for `min_off_s` is stopped, a run after `job_gap_s` of idle is",
            "a `busy_job` job. A pin that cannot be read is a `fault` (`busy_signal_failed`).",
        ),
    ),
)
