"""What a load balancer, a monitor or Prometheus asks the web process: ``/healthz`` (it
answers), ``/readyz`` (the database, the broker, a bridge and the scheduler are there) and
``/metrics``. Public: nginx decides who may reach them (docs/deploy.md, "Watching it").
"""

from __future__ import annotations

from flask import current_app, jsonify
from flask.typing import ResponseReturnValue

from server.adapters.web.auth import public
from server.adapters.web.common import web_blueprint
from server.extensions import get_db

bp = web_blueprint("health", __name__)


@bp.get("/healthz")
@public
def healthz() -> dict[str, str]:
    """The web process answers (nothing else is checked: see /readyz)."""
    return {"status": "ok"}


@bp.get("/metrics")
@public
def metrics() -> ResponseReturnValue:
    """Prometheus text format: what the database says (the same from every worker). nginx lets
    only the host itself scrape it (deploy/nginx-werkbank.conf)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from server.extensions import db
    from server.metrics import web_registry

    return generate_latest(web_registry(db)), 200, {"Content-Type": CONTENT_TYPE_LATEST}


@bp.get("/readyz")
@public
def readyz() -> ResponseReturnValue:
    """200 when the database, the broker, a connected bridge and the scheduler are there, else 503;
    the body names each check (no secrets: process names stay in the database)."""
    from server.services.health import readiness

    result = readiness(get_db(), current_app.config["MQTT_URL"] or "")
    return jsonify(result), 200 if result["ready"] else 503
