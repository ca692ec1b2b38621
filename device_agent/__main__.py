"""``werkbank-agent --config FILE [--simulate]``: run the device agent until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from device_agent.config import ConfigError, load_config

if TYPE_CHECKING:
    from device_agent.agent import Agent

log = logging.getLogger("device_agent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="werkbank-agent", description="The Werkbank device agent.")
    parser.add_argument("--config", required=True, metavar="FILE", help="the agent's TOML config")
    parser.add_argument(
        "--simulate", action="store_true", help="use the simulated badge reader and gpiozero's mock pins"
    )
    parser.add_argument(
        "--badges-from-stdin",
        action="store_true",
        help="with --simulate: also read badge UIDs from standard input, one per line "
        "(the fault suite taps this way, so taps need no broker)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default: INFO"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"werkbank-agent: {exc}", file=sys.stderr)
        return 2
    if args.simulate:
        config = config.replace(reader_backend="simulated", gpio_pin_factory="mock")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from device_agent.agent import Agent

    try:
        agent = Agent(config)
    except Exception as exc:  # the hardware libraries raise their own exception types
        log.debug("start-up failed", exc_info=True)
        print(f"werkbank-agent: cannot start: {exc}", file=sys.stderr)
        print("  (on a computer without GPIO pins, use --simulate)", file=sys.stderr)
        return 1
    agent.start()
    if args.badges_from_stdin:
        threading.Thread(target=_read_badges, args=(agent,), name="stdin-badges", daemon=True).start()
    # A timed wait, so the signal handler gets to run promptly.
    while not stop.wait(1.0):
        pass
    agent.stop()
    return 0


def _read_badges(agent: Agent) -> None:
    """Present each line of standard input to the simulated reader (until end of input)."""
    from device_agent.hardware.simulated import SimulatedReader

    reader = agent.reader
    if not isinstance(reader, SimulatedReader):
        log.warning("--badges-from-stdin needs the simulated reader (--simulate): ignored")
        return
    for line in sys.stdin:
        if line.strip():
            reader.present(line.strip())


if __name__ == "__main__":
    sys.exit(main())
