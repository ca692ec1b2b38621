"""An MCP3008 ADC emulated on gpiozero's mock SPI pins, with a current clamp's signal on its inputs.

gpiozero's real ``MCP3008`` class talks to it bit by bit over MockFactory's software SPI
(SCLK GPIO11, MOSI GPIO10, MISO GPIO9, chip select GPIO8 for CE0 or GPIO7 for CE1), so the
``current`` monitor runs unchanged on top.
"""

from __future__ import annotations

import math
import threading

from gpiozero.pins.mock import MockSPIDevice

SELECT_PINS = {0: 8, 1: 7}  # SPI0 CE0, CE1
# Phase step between two conversions, in cycles: the golden ratio's fraction spreads any run of
# conversions evenly over the wave (see MockMCP3008).
PHASE_STEP = (math.sqrt(5) - 1) / 2


class MockMCP3008(MockSPIDevice):
    """Answers the MCP3008 protocol: start bit, single-ended bit, 3 channel bits, then 10 bits of data.

    Each channel carries a mid-rail bias (``bias``, raw counts) plus a sine of ``amplitude``
    counts, which is what an SCT-013 clamp behind a bias divider produces. Each conversion
    samples the wave at a fresh phase (as an ADC not synchronised to the 50 Hz mains does over
    a window of several cycles), stepped per conversion rather than taken from the clock: the
    software SPI of the mock pins is slow and, on a busy test machine, bursty, and the RMS of a
    window must not depend on that.
    """

    def __init__(self, device: int = 1, vref: float = 3.3, amps_per_volt: float = 30.0) -> None:
        super().__init__(11, 10, 9, SELECT_PINS[device])
        self.vref = vref
        self.amps_per_volt = amps_per_volt
        self.bias = [512.0] * 8
        self.amplitude = [0.0] * 8
        self.reads = 0
        self._phase = 0.0
        self._lock = threading.Lock()

    def set_current(self, amps: float, channel: int = 0) -> None:
        """Put a sine on ``channel`` whose RMS, read by the clamp, is ``amps``."""
        peak_volts = amps / self.amps_per_volt * math.sqrt(2)
        with self._lock:
            self.amplitude[channel] = peak_volts / self.vref * 1023

    def set_raw(self, raw: float, channel: int = 0) -> None:
        """A steady level (no current): e.g. 0 for a clamp whose bias divider is missing."""
        with self._lock:
            self.bias[channel] = raw
            self.amplitude[channel] = 0.0

    def _raw(self, channel: int) -> int:
        with self._lock:
            self._phase = (self._phase + PHASE_STEP) % 1.0
            value = self.bias[channel] + self.amplitude[channel] * math.sin(2 * math.pi * self._phase)
        return max(0, min(1023, round(value)))

    def on_bit(self) -> None:
        bits = self.rx_buf
        if not bits[0]:
            # gpiozero clocks leading zeros before the start bit: wait for it.
            self.rx_buf.clear()
        elif len(bits) == 5:
            channel = bits[2] * 4 + bits[3] * 2 + bits[4]
            self.reads += 1
            # A null bit and 10 data bits, clocked out right after the channel bits.
            self.tx_word(self._raw(channel), 12)
