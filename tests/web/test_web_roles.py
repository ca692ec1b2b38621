"""Every route against every role: who is let in, who is sent to log in, who gets 403.

Each view carries its access level in ``view.access`` (set by the decorators in
server/adapters/web/auth.py; the JSON API marks its views ``api:...`` and has its own token tests
in tests/api). A route without a marker fails here, so a new page cannot forget its check.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.routing import Rule

from server.extensions import db
from server.models import Person
from tests.web.conftest import Lab, english, sign_in

ROLES = ("anonymous", "participant", "trainer", "admin")

# Which roles each access level lets in.
LETS_IN: dict[str, set[str]] = {
    "public": set(ROLES),
    "login": {"participant", "trainer", "admin"},
    "staff": {"trainer", "admin"},
    "trainer": {"trainer", "admin"},
    "admin": {"admin"},
}

# Values for URL parts: ids that exist in the seeded lab are not needed, the check runs
# before any lookup, and an allowed role may well get a 404 for them.
SAMPLE_VALUES = {
    "integer": 1,
    "default": "x",
    "string": "x",
    "path": "x",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


def _routes(app: Flask) -> list[tuple[Rule, str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        access = getattr(view, "access", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule, method, str(access)))
    return out


def _url(rule: Rule) -> str:
    values: dict[str, Any] = {}
    for name in rule.arguments:
        converter = type(rule._converters[name]).__name__.removesuffix("Converter").lower()
        values[name] = SAMPLE_VALUES.get(converter, "x")
    built = rule.build(values)
    assert built is not None
    return built[1]


def _login_as(client: FlaskClient, lab: Lab, role: str) -> None:
    if role == "anonymous":
        return
    email = {"participant": lab.participant, "trainer": lab.trainer, "admin": lab.admin}[role]
    with db.session() as s:
        person_id = s.scalar(select(Person.id).where(Person.email == email))
    # Straight into the session cookie: the login form (argon2) is tested elsewhere, and
    # hundreds of routes times four roles should not each pay for a password hash.
    assert person_id is not None
    sign_in(client, person_id)


def test_roles_every_route_declares_who_may_use_it(app: Flask) -> None:
    missing = [f"{method} {rule.rule}" for rule, method, access in _routes(app) if access == "None"]
    assert missing == [], f"routes without an access marker: {missing}"
    unknown = {
        access
        for _rule, _method, access in _routes(app)
        if access not in LETS_IN and not access.startswith("api")
    }
    assert unknown == set()


@pytest.mark.parametrize("role", ROLES)
def test_roles_every_route_for(role: str, app: Flask, lab: Lab) -> None:
    wrong = []
    checked = 0
    for rule, method, access in _routes(app):
        if access.startswith("api"):
            continue  # token authentication: tests/api
        client = english(app.test_client())
        _login_as(client, lab, role)
        response = client.open(_url(rule), method=method)
        checked += 1
        to_login = response.status_code == 302 and "/login" in response.headers.get("Location", "")
        # Logging out (public) lands on the login page by design: not a refusal.
        refused = response.status_code in (401, 403) or (to_login and access != "public")
        if role in LETS_IN[access]:
            if refused:
                wrong.append(
                    f"{method} {rule.rule}: {role} refused ({response.status_code}), access {access}"
                )
            elif response.status_code >= 500 and not (rule.rule == "/readyz" and response.status_code == 503):
                # /readyz says 503 "not ready" here by design: no bridge or scheduler runs.
                wrong.append(f"{method} {rule.rule}: {role} got {response.status_code}")
        elif role == "anonymous":
            if not (to_login or response.status_code == 401):
                wrong.append(f"{method} {rule.rule}: anonymous got {response.status_code}, not the login")
        elif response.status_code != 403:
            wrong.append(
                f"{method} {rule.rule}: {role} got {response.status_code}, not 403 (access {access})"
            )
    assert checked > 10
    assert wrong == []


def test_roles_reports_are_for_admins_only(app: Flask) -> None:
    """The funder report names participants and their hours: admins only, every route of it."""
    access = {
        f"{method} {rule.rule}": a for rule, method, a in _routes(app) if rule.endpoint.startswith("reports.")
    }
    assert set(access) >= {
        "GET /reports/funder",
        "GET /reports/funder/print",
        "GET /reports/funder.csv",
        "GET /reports/funder-qualifications.csv",
        "GET /reports/funder.xlsx",
    }
    assert set(access.values()) == {"admin"}


# Pages whose audience is part of their task: pinned here, so a changed decorator is noticed.
EXPECTED_ACCESS = {
    "/dashboards/usage": "staff",  # trainers and admins (issue 6)
    "/dashboards/learning": "staff",
}


def test_roles_pinned_pages_keep_their_access(app: Flask) -> None:
    found = {rule.rule: access for rule, _method, access in _routes(app) if rule.rule in EXPECTED_ACCESS}
    assert found == EXPECTED_ACCESS
