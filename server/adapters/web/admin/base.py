"""What the admin views share: the blueprint, the acting admin, form pages, audit details, paging."""

from __future__ import annotations

import enum
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from flask import render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from server.adapters.web.admin.forms import choice
from server.adapters.web.auth import current
from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, current_language
from server.extensions import get_db
from server.models import Person, Site

bp = web_blueprint("admin", __name__)
log = logging.getLogger(__name__)

PER_PAGE = 50


def acting_admin() -> Person:
    """The logged-in admin as a Person (for the audit log)."""
    user = current()
    assert user is not None  # admin_required
    person = get_db().get(Person, user.id)
    assert person is not None
    return person


def form_page(template: str, form: Any, **context: Any) -> ResponseReturnValue:
    """The page with its form: 400 when the form was sent and refused (logged with the fields
    refused, never their values, and counted in :data:`REFUSED`), else 200."""
    status = 400 if form.is_submitted() else 200
    if form.is_submitted():
        refused_form(form)
    return render_template(template, form=form, **context), status


# Admin forms sent and refused, by form (bad input changes nothing; the page says why).
REFUSED: Counter[str] = Counter()


def refused_form(form: Any) -> None:
    name = type(form).__name__
    REFUSED[name] += 1
    fields = sorted(field for field, errors in (form.errors or {}).items() if errors)
    log.info("admin form %s refused (fields: %s)", name, ", ".join(fields) or "-")


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


def apply_changes(obj: Any, values: dict[str, Any]) -> dict[str, list[Any]]:
    """Set attributes on ``obj``; return what changed as {name: [before, after]} for the audit log."""
    changes: dict[str, list[Any]] = {}
    for name, value in values.items():
        before = getattr(obj, name)
        if _plain(before) != _plain(value):
            changes[name] = [_plain(before), _plain(value)]
            setattr(obj, name, value)
    return changes


def site_choices(db: Session) -> list[Any]:
    return [
        choice(s.id, s.display_name(current_language())) for s in db.scalars(select(Site).order_by(Site.name))
    ]


def text_or_none(value: Any) -> str | None:
    text = str(value or "").strip()
    return text or None


@dataclass(frozen=True)
class Page:
    """One page of a long list."""

    items: list[Any]
    number: int
    total: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


def page_number(total: int, per_page: int = PER_PAGE) -> int:
    """The page ``?page=`` names, within 1 and the last page (1 when missing or wrong)."""
    number = request.args.get("page", 1, type=int) or 1
    return min(max(number, 1), max(1, -(-total // per_page)))


def paginate(db: Session, query: Select[Any], per_page: int = PER_PAGE) -> Page:
    """The page of ``query`` named by ``?page=`` (1 when missing or wrong)."""
    total = db.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    number = page_number(total, per_page)
    items = list(db.scalars(query.limit(per_page).offset((number - 1) * per_page)))
    return Page(items, number, total, per_page)


def level_names() -> dict[str, str]:
    return {
        "briefed": _("Briefed"),
        "supervised": _("Supervised"),
        "independent": _("Independent"),
        "trainer": _("Trainer"),
    }


def status_names() -> dict[str, str]:
    return {"available": _("Available"), "maintenance": _("Maintenance"), "disabled": _("Disabled")}


def kind_names() -> dict[str, str]:
    return {
        "briefing": _("Briefing"),
        "supervised_hours": _("Supervised hours"),
        "signoff": _("Practical sign-off"),
    }
