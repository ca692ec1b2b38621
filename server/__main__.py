"""The ``werkbank`` command (``python -m server``): Flask's CLI group over the app factory."""

from __future__ import annotations

import logging
import os

from flask import Flask
from flask.cli import FlaskGroup

from server.app import create_app


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("amqtt").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)
    # Seven lines at every start (the schema check reads the migration scripts), saying nothing.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _app() -> Flask:
    _setup_logging(os.environ.get("WERKBANK_LOG_LEVEL", "INFO"))
    return create_app()


cli = FlaskGroup(create_app=_app, help="Werkbank: machine access and booking for maker spaces.")


def main() -> None:
    cli.main(prog_name="werkbank")


if __name__ == "__main__":
    main()
