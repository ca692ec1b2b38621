"""Notifications on the web: the list partial's data and "mark read".

Pages include ``_notifications.html`` and feed it :func:`notifications_for`; the partial's
forms post to ``/notifications/read``, which sends the person back where they were.
"""

from __future__ import annotations

from typing import Any

from flask import redirect, request
from flask.typing import ResponseReturnValue

from server.adapters.web.auth import current, home_url, login_required, safe_next
from server.adapters.web.common import web_blueprint
from server.extensions import get_db
from server.models import utcnow
from server.services import notifications

bp = web_blueprint("notifications", __name__)


def notifications_for(user_id: int, language: str) -> list[dict[str, Any]]:
    """The person's unread notifications as display text, newest first, for the partial."""
    return [
        {"id": n.id, "kind": n.kind, "text": notifications.render(n, language)}
        for n in notifications.unread(get_db(), user_id)
    ]


@bp.post("/notifications/read")
@login_required
def read() -> ResponseReturnValue:
    """Mark the posted notification ids read (only the person's own), then go back."""
    user = current()
    assert user is not None  # login_required
    ids = [int(value) for value in request.form.getlist("id") if value.isdigit()]
    db = get_db()
    notifications.mark_read(db, user.id, ids, utcnow())
    db.commit()
    return redirect(safe_next(request.form.get("next")) or home_url(user))
