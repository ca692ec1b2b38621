"""Fixtures for the JSON API: the app on a private database with tests/api/lab.yaml loaded,
sessions and jobs, a token per role, and a client that checks every answer against the
OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from server.extensions import db
from server.models import Booking, Device, Job, Machine, MachineSession, Person, TrainingStep
from server.services import tokens
from server.services.lab_file import load, parse
from tests.api.contract import Contract
from tests.web.conftest import make_app  # noqa: F401 - a fixture, used by name

LAB = Path(__file__).resolve().parent / "lab.yaml"
PREFIX = "/api/v1"
# Who each role's token belongs to.
ROLE_EMAILS = {
    "admin": "admin@lab.test",
    "trainer": "tina@lab.test",
    "laser_trainer": "lara@lab.test",
    "participant": "ada@lab.test",
    "other": "bob@lab.test",
}


@dataclass
class ApiLab:
    """Ids and tokens of what :func:`seed` made."""

    people: dict[str, int]  # by e-mail's local part: admin, tina, lara, ada, bob, ina
    tokens: dict[str, str]  # by role (ROLE_EMAILS)
    steps: dict[str, int]  # "fdm-printing/briefing" -> step id
    sessions: dict[str, str] = field(default_factory=dict)
    bookings: dict[str, str] = field(default_factory=dict)  # "ada": Ada's booking tomorrow


def slot(now: datetime, days: int, hour: int, minutes: int = 0) -> datetime:
    """``hour:minutes`` in Berlin (the nord site), ``days`` after ``now``'s day there, in UTC."""
    berlin = ZoneInfo("Europe/Berlin")
    day = now.astimezone(berlin).date() + timedelta(days=days)
    return datetime.combine(day, time(hour, minutes), tzinfo=berlin).astimezone(UTC)


def seed(now: datetime) -> ApiLab:
    with db.session() as s:
        load(s, parse(LAB.read_text(encoding="utf-8")))
        people = {p.email.split("@")[0]: p.id for p in s.scalars(select(Person)) if p.email}
        machines = {m.slug: m for m in s.scalars(select(Machine))}
        device = s.get(Device, "pi-printer-1")
        assert device is not None
        device.online, device.last_seen, device.agent_version = True, now - timedelta(seconds=20), "0.1.0"
        machines["laser-1"].live_state = "running"
        machines["laser-1"].live_running = True
        machines["laser-1"].live_updated_at = now

        def session(sid: str, machine: str, who: str, start: datetime, unlocked_s: float | None) -> None:
            s.add(
                MachineSession(
                    id=sid,
                    machine_id=machines[machine].id,
                    device_id=f"pi-{machine}",
                    person_id=people[who],
                    badge_uid="DEADBEEF" if who == "bob" else "04A224B2C35E80",
                    started_at=start,
                    ended_at=start + timedelta(seconds=unlocked_s) if unlocked_s is not None else None,
                    unlocked_s=unlocked_s,
                    run_s=unlocked_s * 0.8 if unlocked_s is not None else None,
                    end_reason="tap_out" if unlocked_s is not None else None,
                    created_at=start,
                )
            )

        session("s-ada-1", "printer-1", "ada", now - timedelta(days=3), 3600.0)
        session("s-bob-1", "printer-1", "bob", now - timedelta(days=2), 1200.0)
        session("s-ada-2", "printer-1", "ada", now - timedelta(days=1), 1800.0)
        session("s-ada-live", "laser-1", "ada", now - timedelta(minutes=5), None)
        s.flush()
        s.add(
            Job(
                id="j-benchy",
                session_id="s-ada-1",
                machine_id=machines["printer-1"].id,
                kind="print",
                file="benchy.gcode",
                started_at=now - timedelta(days=3),
                finished_at=now - timedelta(days=3) + timedelta(minutes=40),
                status="done",
                duration_s=2400.0,
                filament_g=12.5,
            )
        )
        ada_booking = Booking(
            machine_id=machines["printer-1"].id,
            person_id=people["ada"],
            starts_at=slot(now, 1, 10),
            ends_at=slot(now, 1, 11),
            created_at=now - timedelta(hours=1),
            created_by_id=people["ada"],
        )
        s.add(ada_booking)
        s.flush()
        steps = {f"{st.competency.slug}/{st.kind}": st.id for st in s.scalars(select(TrainingStep)).all()}
        made = {}
        for role, email in ROLE_EMAILS.items():
            _, secret = tokens.create(s, email, f"{role} tests", now - timedelta(minutes=10))
            made[role] = secret
    return ApiLab(people=people, tokens=made, steps=steps, bookings={"ada": ada_booking.id})


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:  # noqa: F811 - the web fixture, used here
    return make_app()


@pytest.fixture
def lab(app: Flask) -> ApiLab:
    return seed(datetime.now(UTC))


@pytest.fixture(scope="session")
def contract() -> Contract:
    return Contract.load()


class Api:
    """A test client for /api/v1 that sends a role's token and checks every JSON answer
    against the OpenAPI document (documented status, schema of that status)."""

    def __init__(self, client: FlaskClient, lab: ApiLab, contract: Contract) -> None:
        self.client = client
        self.lab = lab
        self.contract = contract

    def call(
        self,
        method: str,
        path: str,
        as_: str | None = "admin",
        json: Any = None,
        data: str | bytes | None = None,
        token: str | None = None,
        **params: Any,
    ) -> TestResponse:
        headers = {}
        secret = token or (self.lab.tokens[as_] if as_ is not None else None)
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        response = self.client.open(
            PREFIX + path,
            method=method,
            headers=headers,
            json=json,
            data=data,
            query_string=params or None,
            content_type="application/json" if data is not None else None,
        )
        assert response.mimetype == "application/json", (method, path, response.status_code)
        self.contract.check(method, path, response.status_code, response.get_json())
        return response

    def get(
        self, path: str, as_: str | None = "admin", token: str | None = None, **params: Any
    ) -> TestResponse:
        return self.call("GET", path, as_, token=token, **params)

    def post(self, path: str, json: Any, as_: str | None = "admin", **kw: Any) -> TestResponse:
        return self.call("POST", path, as_, json=json, **kw)

    def patch(self, path: str, json: Any, as_: str | None = "admin", **kw: Any) -> TestResponse:
        return self.call("PATCH", path, as_, json=json, **kw)


@pytest.fixture
def api(app: Flask, lab: ApiLab, contract: Contract) -> Api:
    return Api(app.test_client(), lab, contract)


def error_code(response: TestResponse) -> str:
    body = response.get_json()
    code: str = body["error"]["code"]
    return code
