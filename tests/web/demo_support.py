"""The demo lab of `make run` for the browser tests: loaded and populated as `werkbank up` does
it on its first start, and served by werkzeug on a free port in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from flask import Flask
from werkzeug.serving import make_server

from server.extensions import db

# The demo's logins (server/adapters/demo/demo.yaml): German, all of them.
PARTICIPANT = ("jonas@demo.werkbank.local", "demo-participant")
TRAINEE = ("sara@demo.werkbank.local", "demo-participant")
TRAINER = ("tom@demo.werkbank.local", "demo-trainer")
ADMIN = ("admin@demo.werkbank.local", "demo-admin")


@contextmanager
def served_demo(make_app: Callable[..., Flask]) -> Iterator[tuple[str, Flask]]:
    """(base URL, app) of the populated demo lab."""
    from server.adapters.demo.proof import add_proof_demo
    from server.adapters.demo.story import populate
    from server.cli import DEMO_FILE
    from server.services.lab_file import load, parse

    app = make_app()
    with db.session() as s:
        load(s, parse(DEMO_FILE.read_text(encoding="utf-8")))
    with db.session() as s:
        populate(s, seed=1, now=datetime.now(UTC))
    with db.session() as s:  # check-ins, signed briefings, exits and targets, as `werkbank up`
        add_proof_demo(s, datetime.now(UTC))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkbank-demo-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", app
    finally:
        server.shutdown()
        thread.join(timeout=10)
