"""``python -m device_agent.config``: print the config reference, or check a config file.

``--docs`` writes the Markdown reference of every key (firmware_config/agent-config.md, from
:mod:`device_agent.config.reference`); ``--check FILE`` loads a file as the agent does at start and
prints its hash, or every problem at once (exit code 2).
"""

from __future__ import annotations

import argparse
import sys

from device_agent.config import ConfigError, load_config
from device_agent.config.reference import render_docs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_agent.config", description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--docs", action="store_true", help="print the Markdown reference of every key")
    group.add_argument("--check", metavar="FILE", help="check a config file and print its hash")
    args = parser.parse_args(argv)
    if args.docs:
        sys.stdout.write(render_docs())
        return 0
    try:
        config = load_config(args.check)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.check}: ok (config hash {config.hash})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
