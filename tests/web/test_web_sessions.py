"""Web sessions that end, and failed logins that count across emails, addresses and workers.

A copied session cookie stops working at logout, at a new password, at a deactivation (even
after a reactivation) and after idle time; password spraying from one address and guessing at
one account from many addresses are slowed; every login is in the audit log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from server.extensions import db
from server.models import AuditLog, LoginAttempt, Person
from server.security import hash_password
from server.services import logins
from tests.web.conftest import PASSWORD, AuthActions, Lab, english

ATTACKER = {"REMOTE_ADDR": "198.51.100.66"}


def _copy(client: FlaskClient, app: Flask) -> FlaskClient:
    """A second browser holding a copy of ``client``'s session cookie (a stolen cookie)."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    thief = english(app.test_client())
    thief.set_cookie("session", cookie.value)
    return thief


def _person_id(email: str) -> int:
    with db.session() as s:
        found = s.scalar(select(Person.id).where(Person.email == email))
        assert found is not None
        return found


def _audit(action: str) -> list[AuditLog]:
    with db.session() as s:
        rows = list(s.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))
        s.expunge_all()
        return rows


# -- sessions that end -----------------------------------------------------------------------


def test_session_logout_ends_a_copied_cookie(
    client: FlaskClient, auth: AuthActions, app: Flask, lab: Lab
) -> None:
    auth.login(lab.participant)
    thief = _copy(client, app)
    assert thief.get("/me").status_code == 200  # the copy works while the session lives
    auth.logout()
    response = thief.get("/me")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_session_logout_ends_every_session_of_the_person(app: Flask, lab: Lab) -> None:
    laptop, phone = english(app.test_client()), english(app.test_client())
    AuthActions(laptop).login(lab.participant)
    AuthActions(phone).login(lab.participant)
    other = english(app.test_client())
    AuthActions(other).login(lab.other_participant)
    AuthActions(phone).logout()
    assert laptop.get("/me").status_code == 302
    assert other.get("/me").status_code == 200  # someone else's session is not touched
    # Logging in again works, with a cookie the old epoch does not open.
    assert AuthActions(laptop).login(lab.participant).status_code == 302
    assert laptop.get("/me").status_code == 200


def test_session_admin_password_change_ends_the_persons_sessions(app: Flask, lab: Lab) -> None:
    ada = english(app.test_client())
    AuthActions(ada).login(lab.participant)
    admin = english(app.test_client())
    AuthActions(admin).login(lab.admin)
    ada_id = _person_id(lab.participant)
    form = {
        "name": "Ada Lovelace",
        "email": lab.participant,
        "is_participant": "y",
        "language": "en",
        "site_id": str(lab.site_id),
        "active": "y",
        "password": "a brand new secret",
    }
    assert admin.post(f"/admin/people/{ada_id}", data=form).status_code == 302
    assert ada.get("/me").status_code == 302
    assert admin.get("/admin/people").status_code == 200  # the admin's own session stays
    assert AuthActions(ada).login(lab.participant, "a brand new secret").status_code == 302


def test_session_deactivation_ends_sessions_even_after_reactivation(app: Flask, lab: Lab) -> None:
    ada = english(app.test_client())
    AuthActions(ada).login(lab.participant)
    admin = english(app.test_client())
    AuthActions(admin).login(lab.admin)
    ada_id = _person_id(lab.participant)
    admin.post(f"/admin/people/{ada_id}/active", data={"active": "0"})
    assert ada.get("/me").status_code == 302
    admin.post(f"/admin/people/{ada_id}/active", data={"active": "1"})
    # Active again, but the cookie from before the deactivation stays dead.
    assert ada.get("/me").status_code == 302


def test_session_ends_whoever_changes_the_password(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    """The rule sits on the person, not on one page: the API, the CSV import and the GDPR erase
    change the same fields."""
    auth.login(lab.participant)
    with db.session() as s:
        ada = s.scalar(select(Person).where(Person.email == lab.participant))
        assert ada is not None
        ada.password_hash = hash_password("another long secret")
    assert client.get("/me").status_code == 302


def test_session_survives_a_rehash_at_login(app: Flask, lab: Lab) -> None:
    """A stronger hash of the same password is not a new password: other browsers stay in."""
    from argon2 import PasswordHasher

    laptop = english(app.test_client())
    AuthActions(laptop).login(lab.participant)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    with db.session() as s:
        s.execute(update(Person).where(Person.email == lab.participant).values(password_hash=weak))
    phone = english(app.test_client())
    assert AuthActions(phone).login(lab.participant).status_code == 302
    assert laptop.get("/me").status_code == 200
    with db.session() as s:
        stored = s.scalar(select(Person.password_hash).where(Person.email == lab.participant))
    assert stored is not None and stored != weak


def _idle(client: FlaskClient, minutes: float) -> None:
    with client.session_transaction() as session:
        session["seen"] = int(time.time() - minutes * 60)


def test_session_idle_for_too_long_ends(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.participant)
    _idle(client, 59)
    assert client.get("/me").status_code == 200  # and this use counts as activity
    _idle(client, 61)
    response = client.get("/me")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login")


def test_session_idle_time_is_a_setting(make_app: Callable[..., Flask], lab: Lab) -> None:
    client = english(make_app(SESSION_IDLE_MINUTES=5).test_client())
    AuthActions(client).login(lab.participant)
    _idle(client, 6)
    assert client.get("/me").status_code == 302


def test_session_use_keeps_it_alive(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.participant)
    for _ in range(3):  # 3 x 40 idle minutes, but never 60 in a row
        _idle(client, 40)
        assert client.get("/me").status_code == 200


def test_session_no_remember_me_cookie(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    response = auth.login(lab.participant)
    assert "remember_token" not in response.headers.get("Set-Cookie", "")


@pytest.mark.parametrize("setting", ["LOGIN_MAX_FAILURES", "LOGIN_WINDOW_MINUTES"])
def test_session_settings_are_checked_at_start(make_app: Callable[..., Flask], setting: str) -> None:
    with pytest.raises(SystemExit, match=f"WERKBANK_{setting}"):
        make_app(**{setting: 0})


# -- failed-login limits ---------------------------------------------------------------------


def test_login_spraying_from_one_address_is_throttled(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    """The finding: 200 guesses at 200 emails from one address were all checked."""
    statuses = [
        auth.login(f"user{i}@lab.test", "Spring2026!", environ_base=ATTACKER).status_code for i in range(200)
    ]
    assert statuses[:20] == [401] * 20
    assert statuses[20:] == [429] * 180
    # The right password does not get through the block either (it is not even checked)...
    assert auth.login(lab.participant, environ_base=ATTACKER).status_code == 429
    # ...while everyone else logs in as usual.
    assert auth.login(lab.participant).status_code == 302


def test_login_one_email_from_many_addresses_is_throttled(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    for i in range(20):
        assert (
            auth.login(lab.participant, "guess", environ_base={"REMOTE_ADDR": f"203.0.113.{i}"}).status_code
            == 401
        )
    blocked = auth.login(lab.participant, environ_base={"REMOTE_ADDR": "203.0.113.200"})
    assert blocked.status_code == 429
    assert "Too many failed attempts. Please wait 5 minutes" in blocked.get_data(as_text=True)
    assert auth.login(lab.other_participant, environ_base={"REMOTE_ADDR": "203.0.113.200"}).status_code == 302


def test_login_a_success_forgives_only_its_own_failures(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    # An attacker with an account of their own cannot wipe their spraying with a good login.
    for i in range(19):
        auth.login(f"user{i}@lab.test", "guess", environ_base=ATTACKER)
    assert auth.login(lab.other_participant, environ_base=ATTACKER).status_code == 302
    auth.logout()
    assert auth.login("user99@lab.test", "guess", environ_base=ATTACKER).status_code == 401
    assert auth.login("user100@lab.test", "guess", environ_base=ATTACKER).status_code == 429
    # Nor does the owner's good login wipe what others tried at the account from elsewhere.
    for i in range(19):
        auth.login(lab.participant, "guess", environ_base={"REMOTE_ADDR": f"203.0.113.{i}"})
    assert auth.login(lab.participant, environ_base={"REMOTE_ADDR": "192.0.2.10"}).status_code == 302
    auth.logout()
    assert (
        auth.login(lab.participant, "guess", environ_base={"REMOTE_ADDR": "203.0.113.50"}).status_code == 401
    )
    assert auth.login(lab.participant, environ_base={"REMOTE_ADDR": "203.0.113.51"}).status_code == 429


def test_login_limit_holds_across_two_app_instances(make_app: Callable[..., Flask], lab: Lab) -> None:
    """Two apps on one database stand for two gunicorn workers: failures at one count at the other."""
    first, second = (
        AuthActions(english(make_app().test_client())),
        AuthActions(english(make_app().test_client())),
    )
    for i in range(10):
        assert first.login(f"a{i}@lab.test", "guess", environ_base=ATTACKER).status_code == 401
        assert second.login(f"b{i}@lab.test", "guess", environ_base=ATTACKER).status_code == 401
    assert first.login("c@lab.test", "guess", environ_base=ATTACKER).status_code == 429
    assert second.login("d@lab.test", "guess", environ_base=ATTACKER).status_code == 429
    # The pair limit too: 3 failures at one worker and 2 at the other make five.
    for actions in (first, first, first, second, second):
        actions.login(lab.participant, "guess")
    assert second.login(lab.participant).status_code == 429


def test_login_limits_forget_after_the_window_and_prune(app: Flask, lab: Lab) -> None:
    limits = logins.LoginLimits(per_pair=2, per_address=3, per_email=3, window=timedelta(minutes=5))
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with db.session() as s:
        key = logins.email_hash("a@b.c", "k")
        assert logins.failed(s, "10.0.0.1", key, start, limits) is None
        assert logins.failed(s, "10.0.0.1", key, start + timedelta(minutes=1), limits) == "pair"
        assert logins.blocked(s, "10.0.0.1", key, start + timedelta(minutes=4, seconds=59), limits) == "pair"
        assert (
            logins.blocked(s, "10.0.0.1", key, start + timedelta(minutes=5, seconds=1), limits) is None
        )  # the first has left
        # A failure later clears out what the window no longer counts: the table stays small.
        logins.failed(s, "10.0.0.2", logins.email_hash("x@y.z", "k"), start + timedelta(minutes=20), limits)
        assert s.scalar(select(func.count(LoginAttempt.id))) == 1


def test_login_email_hash_is_keyed_and_normalised() -> None:
    assert logins.email_hash(" Ada@Lab.test ", "k") == logins.email_hash("ada@lab.test", "k")
    assert logins.email_hash("ada@lab.test", "k") != logins.email_hash("ada@lab.test", "other key")
    assert "ada" not in logins.email_hash("ada@lab.test", "k")


# -- the audit log -----------------------------------------------------------------------------


def test_login_success_and_failures_are_audited(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    counted = logins.REFUSALS["failed"]
    auth.login(lab.participant, "wrong", environ_base=ATTACKER)
    auth.login("stranger@example.org", "wrong", environ_base=ATTACKER)
    auth.login(lab.inactive, PASSWORD, environ_base=ATTACKER)
    auth.login(lab.participant)
    assert logins.REFUSALS["failed"] == counted + 3

    known, unknown, inactive = _audit("login.failed")
    ada_id = _person_id(lab.participant)
    assert known.subject == f"person:{ada_id}" and known.actor_id is None
    assert known.detail == {"address": "198.51.100.66", "reason": "wrong_password", "email": lab.participant}
    assert "198.51.100.66" in known.actor_label
    # A stranger's email is not kept: only that it was no account, and a keyed hash to tell tries apart.
    assert unknown.subject == "login" and unknown.detail["email"] == "unknown account"
    assert "stranger" not in str(unknown.detail) and "stranger" not in unknown.actor_label
    assert len(unknown.detail["email_hash"]) == 16
    assert inactive.detail["reason"] == "inactive" and inactive.detail["email"] == lab.inactive

    [success] = _audit("login.succeeded")
    assert success.actor_id == ada_id and success.subject == f"person:{ada_id}"
    assert success.detail == {"address": "127.0.0.1"}


def test_login_throttling_is_audited_once_not_per_attempt(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    counted = logins.REFUSALS["throttled:address"]
    for i in range(60):
        auth.login(f"user{i}@lab.test", "guess", environ_base=ATTACKER)
    [throttled] = _audit("login.throttled")
    assert throttled.detail["limit"] == "address" and throttled.detail["address"] == "198.51.100.66"
    assert len(_audit("login.failed")) == 20  # the refused 40 were never checked
    assert logins.REFUSALS["throttled:address"] == counted + 40
