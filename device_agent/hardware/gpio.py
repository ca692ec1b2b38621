"""Relay, LEDs and buzzer on the Pi's GPIO header, through gpiozero.

gpiozero is imported inside the constructors, so this module (and the agent) imports
on a machine without it; tests run the same code on gpiozero's ``MockFactory`` pins.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any

from device_agent.hardware.base import Indicators, Relay
from device_agent.hardware.plugins import Plugin

if TYPE_CHECKING:
    from device_agent.config import AgentConfig

log = logging.getLogger(__name__)

# What each indicator state looks like; also rendered into firmware_config/agent-config.md.
INDICATOR_PATTERNS: tuple[tuple[str, str], ...] = (
    ("locked (idle)", "all LEDs off"),
    ("unlocked", "green steady, one short beep"),
    ("denied", "red blinks 3 times, one long beep; the relay stays open"),
    ("offline mode", "amber steady while the server cannot be reached: taps are decided from the allow-list"),
    ("fault", "red blinks fast until the fault clears (reader missing, …)"),
    (
        "lock pending",
        "green blinks slowly (1 s on, 1 s off): a lock is due but a job runs; the relay opens when it ends",
    ),
    (
        "ending soon",
        "once, `warn_before_end_s` before the session's `until` (a booking begins or ends, the maximum"
        " session, closing time): red blinks 4 times slowly (0.5 s on, 0.5 s off) with four long beeps"
        " while green stays on; finish or save your work: at `until` the machine locks (after a running"
        " job)",
    ),
    ("identify", "green blinks 5 times (the server's identify command), then shows the state again"),
    (
        "trainer window",
        "green steady, two short beeps: a trainer unlocked; a participant's badge now starts a supervised"
        " session, the trainer's own badge arms a sign-off",
    ),
    (
        "sign-off armed",
        "green blinks fast (0.25 s on, 0.25 s off), three short beeps: the next participant's badge records"
        " a practical sign-off; green steady again when it is done or the window ends",
    ),
)


def configure_pin_factory(name: str | None) -> None:
    """Choose gpiozero's pin factory unless one is chosen already (tests set their own).

    ``"mock"`` uses gpiozero's MockFactory (simulation); other names are gpiozero's
    own factory names, picked up when the first device is made.
    """
    if name is None:
        return
    from gpiozero import Device

    if Device.pin_factory is not None:
        return
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        Device.pin_factory = MockFactory()
    else:
        os.environ["GPIOZERO_PIN_FACTORY"] = name


class GpioRelay(Relay):
    """A relay board on one GPIO.

    Wiring: board VCC to 5 V (header pin 2), GND to GND (pin 6), IN to the BCM pin set in
    ``[relay] pin`` (default GPIO17, header pin 11). Most opto-isolated boards close on a low
    input: keep ``active_high = false`` for them.

    The relay starts open, or closed with ``closed=True`` (the agent restarts during a session):
    gpiozero then claims the pin as an output at that level in one step, so it never toggles.
    """

    def __init__(
        self, pin: int, active_high: bool = False, closed: bool = False, pin_factory: Any = None
    ) -> None:
        from gpiozero import OutputDevice

        self._device = OutputDevice(
            pin, active_high=active_high, initial_value=closed, pin_factory=pin_factory
        )

    def close(self) -> None:
        self._device.on()

    def open(self) -> None:
        self._device.off()

    @property
    def is_closed(self) -> bool:
        return bool(self._device.is_active)

    def release(self) -> None:
        self._device.close()

    def detach(self) -> None:
        """Leave the pin driven as it is and hide it from gpiozero's clean-up.

        gpiozero resets a pin to an input when its device closes (lgpio: ``gpio_claim_input``;
        RPi.GPIO: ``cleanup``), and its exit handler closes every device it still knows and
        every pin of the factory. A floating relay input opens the relay: the machine would
        lose power mid-job. So the pin is taken out of gpiozero's books without closing it;
        what the pin does after the process exits is the kernel's call (agent-config.md, "Restarts").
        """
        device = self._device
        if device.closed:
            return
        pin = device.pin
        factory = device.pin_factory
        if type(factory).__name__ == "RPiGPIOFactory":
            # Its close() calls RPi.GPIO's cleanup(), which resets every pin RPi.GPIO set up.
            log.warning("pin factory rpigpio resets all pins at exit: the relay will open; use lgpio")
        factory.release_pins(device, pin.info.name)
        for info, known in list(factory.pins.items()):
            if known is pin:
                del factory.pins[info]
        # Marks the device closed without pin.close(), the call that would float the pin.
        device._pin = None


class GpioIndicators(Indicators):
    """Green, red and amber LEDs and an active buzzer, each optional.

    Wiring: each LED's anode through a 330 Ω resistor to its BCM pin, cathode to GND; an
    active 3.3 V buzzer (or a transistor driving a 5 V one) from its pin to GND.
    The patterns are listed in :data:`INDICATOR_PATTERNS`.
    """

    PENDING_BLINK_S = 1.0  # "lock pending": slow, unlike the fast fault blink
    ARMED_BLINK_S = 0.25  # "sign-off armed": fast, unlike "lock pending"; green, unlike a fault
    # "ending soon": red and buzzer together, slower and more often than "denied" (3 times 0.2 s, one
    # beep), and ending by itself, unlike a fault.
    WARN_BLINK_S = 0.5
    WARN_TIMES = 4

    def __init__(
        self,
        green: int | None = None,
        red: int | None = None,
        amber: int | None = None,
        buzzer: int | None = None,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import LED, Buzzer

        self._green = LED(green, pin_factory=pin_factory) if green is not None else None
        self._red = LED(red, pin_factory=pin_factory) if red is not None else None
        self._amber = LED(amber, pin_factory=pin_factory) if amber is not None else None
        self._buzzer = Buzzer(buzzer, pin_factory=pin_factory) if buzzer is not None else None
        # Steady state of the green LED, restored after identify's blinking.
        self._green_steady = False

    def unlocked(self) -> None:
        self._green_steady = True
        if self._green:
            self._green.on()
        if self._red:
            self._red.off()
        if self._buzzer:
            self._buzzer.beep(on_time=0.1, off_time=0.1, n=1)

    def locked(self) -> None:
        self._green_steady = False
        if self._green:
            self._green.off()
        if self._red:
            self._red.off()

    def denied(self) -> None:
        if self._red:
            self._red.blink(on_time=0.2, off_time=0.2, n=3)
        if self._buzzer:
            self._buzzer.beep(on_time=0.6, off_time=0.1, n=1)

    def offline(self, active: bool = True) -> None:
        if self._amber:
            self._amber.value = active

    def fault(self) -> None:
        if self._red:
            self._red.blink(on_time=0.1, off_time=0.1)

    def lock_pending(self) -> None:
        # Green still means "the machine has power"; blinking says it will not for long.
        self._green_steady = True
        if self._green:
            self._green.blink(on_time=self.PENDING_BLINK_S, off_time=self.PENDING_BLINK_S)
        if self._red:
            self._red.off()

    def trainer_window(self) -> None:
        self._green_steady = True
        if self._green:
            self._green.on()
        if self._red:
            self._red.off()
        if self._buzzer:
            self._buzzer.beep(on_time=0.1, off_time=0.1, n=2)

    def signoff_armed(self) -> None:
        self._green_steady = True
        if self._green:
            self._green.blink(on_time=self.ARMED_BLINK_S, off_time=self.ARMED_BLINK_S)
        if self._red:
            self._red.off()
        if self._buzzer:
            self._buzzer.beep(on_time=0.1, off_time=0.1, n=3)

    def ending_soon(self) -> None:
        # Green stays as it is (the machine still has power); red and the buzzer draw attention.
        if self._red:
            self._red.blink(on_time=self.WARN_BLINK_S, off_time=self.WARN_BLINK_S, n=self.WARN_TIMES)
        if self._buzzer:
            self._buzzer.beep(on_time=self.WARN_BLINK_S, off_time=self.WARN_BLINK_S, n=self.WARN_TIMES)

    def identify(self) -> None:
        if self._green:
            threading.Thread(target=self._identify, name="identify", daemon=True).start()

    def _identify(self) -> None:
        assert self._green is not None
        # Blocks this helper thread only; a tap meanwhile (on()/off()) ends the blinking early.
        self._green.blink(on_time=0.2, off_time=0.2, n=5, background=False)
        self._green.value = self._green_steady

    def release(self) -> None:
        for device in (self._green, self._red, self._amber, self._buzzer):
            if device is not None:
                device.close()


def create_relay(config: AgentConfig, closed: bool = False) -> Relay:
    return GpioRelay(config.relay_pin, config.relay_active_high, closed=closed)


def create_indicators(config: AgentConfig) -> Indicators:
    return GpioIndicators(
        green=config.indicators_green_pin,
        red=config.indicators_red_pin,
        amber=config.indicators_amber_pin,
        buzzer=config.indicators_buzzer_pin,
    )


PLUGINS = (
    Plugin(
        kind="switch",
        name="gpio",
        summary="a relay board on [relay] pin",
        create_switch=lambda config, closed: create_relay(config, closed=closed),
    ),
)
