"""Token lifecycle: made by the CLI, used, listed, revoked, expired."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Flask
from sqlalchemy import select

from server.extensions import db
from server.models import ApiToken, AuditLog
from server.services import tokens
from tests.api.conftest import Api, ApiLab, error_code


def _create(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=["token", "create", *args])
    assert result.exit_code == 0, result.output + result.stderr
    secret = result.stdout.strip()
    assert secret.startswith("wb_") and "\n" not in secret
    return secret


def test_token_lifecycle_create_use_list_revoke(app: Flask, api: Api) -> None:
    secret = _create(app, "--email", "ADA@lab.test", "--name", "reporting")
    with db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == "reporting"))
        assert row is not None
        assert row.token_hash == tokens.hash_token(secret) and secret not in (row.token_hash, row.prefix)
        assert row.prefix == secret[:12] and row.last_used_at is None and row.expires_at is None

    me = api.get("/people", as_=None, token=secret)
    assert me.status_code == 200
    assert [p["email"] for p in me.get_json()["items"]] == ["ada@lab.test"]
    with db.session() as s:
        used = s.scalar(select(ApiToken.last_used_at).where(ApiToken.name == "reporting"))
        assert used is not None

    runner = app.test_cli_runner()
    listed = runner.invoke(args=["token", "list"])
    assert listed.exit_code == 0 and secret[:12] in listed.stdout and "'reporting'" in listed.stdout
    assert secret not in listed.stdout

    revoked = runner.invoke(args=["token", "revoke", secret[:12]])
    assert revoked.exit_code == 0, revoked.output
    refused = api.get("/people", as_=None, token=secret)
    assert refused.status_code == 401 and error_code(refused) == "token_revoked"
    assert "Bearer" in refused.headers["WWW-Authenticate"]
    assert secret[:12] not in runner.invoke(args=["token", "list"]).stdout
    assert secret[:12] in runner.invoke(args=["token", "list", "--all"]).stdout
    again = runner.invoke(args=["token", "revoke", secret[:12]])
    assert again.exit_code != 0 and "no active token" in again.stderr
    with db.session() as s:
        actions = s.scalars(select(AuditLog.action).where(AuditLog.action.like("token.%"))).all()
        assert actions.count("token.created") == 6 and actions.count("token.revoked") == 1


def test_token_cli_refuses_unknown_person_and_bad_expiry(app: Flask, lab: ApiLab) -> None:
    runner = app.test_cli_runner()
    unknown = runner.invoke(args=["token", "create", "--email", "nobody@lab.test", "--name", "x"])
    assert unknown.exit_code != 0 and "no person" in unknown.stderr
    inactive = runner.invoke(args=["token", "create", "--email", "ina@lab.test", "--name", "x"])
    assert inactive.exit_code != 0 and "not active" in inactive.stderr
    zero = runner.invoke(
        args=["token", "create", "--email", "ada@lab.test", "--name", "x", "--expires-days", "0"]
    )
    assert zero.exit_code != 0
    short = runner.invoke(args=["token", "revoke", "wb_"])
    assert short.exit_code != 0
    with db.session() as s:
        assert len(s.scalars(select(ApiToken)).all()) == 5  # the fixture's, no more


def test_token_expired_is_refused(app: Flask, api: Api) -> None:
    secret = _create(app, "--email", "ada@lab.test", "--name", "short", "--expires-days", "1")
    assert api.get("/sessions", as_=None, token=secret).status_code == 200
    with db.session() as s:
        row = s.scalar(select(ApiToken).where(ApiToken.name == "short"))
        assert row is not None and row.expires_at is not None
        assert timedelta(hours=23) < row.expires_at - datetime.now(UTC) <= timedelta(days=1)
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    refused = api.get("/sessions", as_=None, token=secret)
    assert refused.status_code == 401 and error_code(refused) == "token_expired"


def test_token_missing_malformed_or_unknown_is_401(api: Api) -> None:
    missing = api.get("/machines", as_=None)
    assert missing.status_code == 401 and error_code(missing) == "token_missing"
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="werkbank"'
    for header in ("Basic YWRhOnB3", "Bearer", "Bearer wb_0000", "Bearer " + "x" * 300):
        r = api.client.get("/api/v1/machines", headers={"Authorization": header})
        assert r.status_code == 401, header
        assert r.get_json()["error"]["code"] in ("token_missing", "invalid_token")
    # The web login's session cookie is no API credential.
    assert api.client.get("/api/v1/machines").status_code == 401


def test_token_of_deactivated_person_is_refused(api: Api, lab: ApiLab) -> None:
    assert api.patch(f"/people/{lab.people['ada']}", {"active": False}).status_code == 200
    refused = api.get("/machines", as_="participant")
    assert refused.status_code == 401 and error_code(refused) == "person_inactive"


def test_token_last_used_is_written_at_most_once_a_minute(lab: ApiLab) -> None:
    now = datetime.now(UTC)
    with db.session() as s:
        token = tokens.authenticate(s, lab.tokens["participant"], now)
        assert token.last_used_at == now
    with db.session() as s:
        token = tokens.authenticate(s, lab.tokens["participant"], now + timedelta(seconds=30))
        assert token.last_used_at == now and not s.dirty
    with db.session() as s:
        later = now + tokens.LAST_USED_EVERY
        assert tokens.authenticate(s, lab.tokens["participant"], later).last_used_at == later
