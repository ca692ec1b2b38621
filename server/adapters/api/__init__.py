"""The JSON API under /api/v1: token authentication, people, badges, machines, qualifications,
training steps, sessions and bookings, described by ``openapi.yaml`` (served at /api/v1/openapi.json).

See docs/api.md. ``init_app`` registers the blueprint, exempt from CSRF: the API is called
with a bearer token, never with the browser's session cookie, so a forged form cannot use it.
"""

from __future__ import annotations

from flask import Flask

# Importing the view modules puts their routes on ``bp``.
from server.adapters.api import bookings, errors, machines, people, spec, training  # noqa: F401
from server.adapters.api.common import URL_PREFIX, bp
from server.extensions import csrf

__all__ = ["bp", "init_app"]


def init_app(app: Flask) -> None:
    csrf.exempt(bp)
    errors.register_routing(app, URL_PREFIX)
    app.register_blueprint(bp)
