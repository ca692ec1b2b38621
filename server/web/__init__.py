"""Web pages (placeholder until the web blueprint lands)."""

from flask import Blueprint

bp = Blueprint("web", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
