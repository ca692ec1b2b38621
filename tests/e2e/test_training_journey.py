"""Issue 4's "done when": a trainer takes a new participant from the first briefing to
independent laser use, entirely through the web and the machine, and the participant sees
every step on her own page.

Real parts throughout: the web app (Flask test client) on the same database as the real bridge,
a real broker, the real agent on mock pins; the agent's clock is moved by hand so the supervised
hours (0.001 h in tests/data/lab.yaml) pass without waiting.
"""

from __future__ import annotations

import re

from flask.testing import FlaskClient
from sqlalchemy import select

from server import create_app
from server.config import TestConfig
from server.models import Person, TrainingStep
from server.security import hash_password
from tests.agent.helpers import ManualClock
from tests.e2e.conftest import System, eventually

TINA = "A1B2C3D4"
UMA = "DEADBEEF"  # Uma Unqualified: nothing yet
PASSWORD = "uma-password-1"


def _client(database_url: str) -> FlaskClient:
    app = create_app(TestConfig, DATABASE_URL=database_url)
    client = app.test_client()
    client.environ_base["HTTP_ACCEPT_LANGUAGE"] = "en"
    return client


def _login(client: FlaskClient, email: str, password: str) -> None:
    response = client.post("/login", data={"email": email, "password": password})
    assert response.status_code == 302, response.get_data(as_text=True)


def _laser_card(page: str) -> str:
    match = re.search(
        r'<article class="card competency" data-competency="laser-safety".*?</article>', page, re.S
    )
    assert match is not None, "the laser card is on the page"
    return match.group(0)


def test_e2e_new_participant_to_independent_laser_use_through_web_and_machine(
    trainer_system: System, database_url: str
) -> None:
    system = trainer_system
    with system.db.session() as s:
        uma = s.scalar(select(Person).where(Person.name == "Uma Unqualified"))
        assert uma is not None
        uma.email, uma.password_hash, uma.language = "uma@test.local", hash_password(PASSWORD), "en"
        briefing = s.scalar(select(TrainingStep.id).where(TrainingStep.name == "Laser safety briefing"))
        s.commit()
        uma_id = uma.id
    # The web app first: it binds the shared database object before the bridge starts on it.
    trainer_web, uma_web = _client(database_url), _client(database_url)
    system.start_bridge()
    clock = ManualClock()
    laser = system.start_agent("pi-laser-1", clock=clock)

    # 1. Uma is new: the laser stays off and says what to do.
    first = laser.tap(UMA)
    assert (first.outcome, first.reason) == ("denied", "not_qualified")
    assert "Ask a trainer for a briefing" in first.text

    # 2. Tina finds Uma on the web and records the safety briefing: Uma is briefed.
    _login(trainer_web, "tina@test.local", "trainer-pass")
    found = trainer_web.get("/training/people?q=uma").get_data(as_text=True)
    assert f"/training/people/{uma_id}" in found
    recorded = trainer_web.post(f"/training/people/{uma_id}/steps", data={"step_id": briefing})
    assert recorded.status_code == 302
    _login(uma_web, "uma@test.local", PASSWORD)
    card = _laser_card(uma_web.get("/me").get_data(as_text=True))
    assert 'data-field="level">Briefed<' in card and "Next: Supervised cutting" in card

    # 3. At the laser: Tina's badge, then Uma's within 30 s: a supervised session. Alone she
    #    still may not (briefed is below independent).
    assert laser.tap(TINA).outcome == "unlocked" and laser.trainer_window == "supervise"
    supervised = laser.tap(UMA)
    assert (supervised.outcome, supervised.reason) == ("unlocked", "ok"), supervised.text
    clock.advance(5)  # 5 s of supervised cutting: more than the 0.001 h the lab asks for
    assert laser.tap(UMA).reason == "tap_out"
    assert eventually(
        lambda: 'data-field="level">Supervised<' in _laser_card(uma_web.get("/me").get_data(as_text=True))
    ), "the supervised hours granted the level by themselves"
    assert laser.tap(UMA).reason == "trainer_required"

    # 4. The practical sign-off at the machine: Tina's badge twice, then Uma's.
    assert laser.tap(TINA).outcome == "unlocked"
    assert laser.tap(TINA).outcome == "armed"
    signed = laser.tap(UMA)
    assert (signed.outcome, signed.reason) == ("recorded", "ok"), signed.text
    assert laser.tap(TINA).reason == "tap_out"

    # 5. Uma now works alone, and her page shows all of it.
    alone = laser.tap(UMA)
    assert (alone.outcome, alone.reason) == ("unlocked", "ok"), alone.text
    assert system.relay_closed("pi-laser-1")
    assert laser.tap(UMA).reason == "tap_out"
    page = uma_web.get("/me").get_data(as_text=True)
    card = _laser_card(page)
    assert 'data-field="level">Independent<' in card and "Valid until" in card
    trainer_view = trainer_web.get(f"/training/people/{uma_id}").get_data(as_text=True)
    history = re.findall(r'<tr data-action="(\w+)">', trainer_view)
    assert history == ["granted", "granted", "granted"], "briefed, supervised, independent: newest first"
    assert trainer_view.count("Tina Trainer") >= 3
