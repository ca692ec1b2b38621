"""Login, logout, the failed-login limit, CSRF, and who may open which page."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from server.adapters.web.auth import safe_next
from server.adapters.web.common import CONTENT_SECURITY_POLICY
from server.security import hash_password, verify_password
from tests.web.conftest import PASSWORD, AuthActions, Lab, english, seed_lab

# (path, method) of every page that needs a login.
PROTECTED = [("/", "GET"), ("/me", "GET"), ("/live.json", "GET")]


# -- passwords -----------------------------------------------------------------------------------


def test_security_hash_is_argon2id_with_owasp_parameters() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(stored, "s3cret").ok
    assert not verify_password(stored, "wrong").ok


def test_security_verify_rejects_missing_and_foreign_hashes() -> None:
    assert not verify_password(None, "anything").ok
    assert not verify_password("", "anything").ok
    assert not verify_password("plain-text-in-the-db", "plain-text-in-the-db").ok


def test_security_verify_offers_rehash_for_old_parameters() -> None:
    from argon2 import PasswordHasher

    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("s3cret")
    check = verify_password(weak, "s3cret")
    assert check.ok
    assert check.new_hash is not None and check.new_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password(check.new_hash, "s3cret") == type(check)(ok=True)


# -- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "method"), PROTECTED)
def test_access_anonymous_is_sent_to_login(client: FlaskClient, lab: Lab, path: str, method: str) -> None:
    response = client.open(path, method=method)
    if path.endswith(".json"):
        # The polling script cannot follow a redirect to an HTML form: it gets a 401.
        assert response.status_code == 401
        assert response.get_json() == {"error": "login_required"}
    else:
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/login?next=")


def test_access_login_redirect_explains_why(client: FlaskClient, lab: Lab) -> None:
    html = client.get("/me", follow_redirects=True).get_data(as_text=True)
    assert "Please log in to see this page." in html
    client.get("/language/de")
    html = client.get("/me", follow_redirects=True).get_data(as_text=True)
    assert "Bitte melden Sie sich an, um diese Seite zu sehen." in html


@pytest.mark.parametrize(
    ("role", "path", "expected"),
    [
        ("participant", "/", 302),  # to /me, their own page
        ("participant", "/me", 200),
        ("participant", "/live.json", 403),
        ("trainer", "/", 200),
        ("trainer", "/me", 200),
        ("trainer", "/live.json", 200),
        ("admin", "/", 200),
        ("admin", "/me", 200),
        ("admin", "/live.json", 200),
    ],
)
def test_access_by_role(
    client: FlaskClient, auth: AuthActions, lab: Lab, role: str, path: str, expected: int
) -> None:
    auth.login(getattr(lab, role))
    response = client.get(path)
    assert response.status_code == expected
    if role == "participant" and path == "/":
        assert response.headers["Location"] == "/me"


def test_access_forbidden_page_is_friendly(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.participant)
    # A participant asking for staff data gets the error page's text, not a stack trace.
    response = client.get("/live.json")
    assert response.status_code == 403
    assert "not allowed" in response.get_data(as_text=True)


def test_access_healthz_is_public(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


# -- login and logout ----------------------------------------------------------------------------


def test_login_page_renders_form(client: FlaskClient) -> None:
    response = client.get("/login")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html
    assert 'autocomplete="current-password"' in html


def test_login_success_lands_on_role_home(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    response = auth.login(lab.trainer)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert "Machines" in client.get("/").get_data(as_text=True)


def test_login_email_is_case_insensitive(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    response = auth.login("  ADA@Lab.Test ")
    assert response.status_code == 302 and response.headers["Location"] == "/me"


def test_login_follows_safe_next_only(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    response = auth.login(lab.trainer, query_string={"next": "/me"})
    assert response.headers["Location"] == "/me"
    auth.logout()
    response = auth.login(lab.trainer, query_string={"next": "https://evil.example/"})
    assert response.headers["Location"] == "/"


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "", None],
)
def test_login_safe_next_refuses_other_sites(target: str | None) -> None:
    assert safe_next(target) is None


def test_login_safe_next_keeps_local_paths() -> None:
    assert safe_next("/me?x=1") == "/me?x=1"


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("ada@lab.test", "wrong password"),
        ("nobody@lab.test", PASSWORD),
        ("ina@lab.test", PASSWORD),  # inactive
    ],
)
def test_login_failure_is_generic(
    client: FlaskClient, auth: AuthActions, lab: Lab, email: str, password: str
) -> None:
    response = auth.login(email, password)
    assert response.status_code == 401
    assert "Email or password is wrong." in response.get_data(as_text=True)
    assert client.get("/me").status_code == 302


def test_login_empty_form_shows_form_again(client: FlaskClient, lab: Lab) -> None:
    response = client.post("/login", data={"email": "", "password": ""})
    assert response.status_code == 200
    assert 'name="email"' in response.get_data(as_text=True)


def test_login_rate_limit_after_five_failures(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    for _ in range(5):
        assert auth.login(lab.participant, "wrong").status_code == 401
    # The sixth try is refused without looking at the password, even the right one.
    response = auth.login(lab.participant, PASSWORD)
    assert response.status_code == 429
    assert "Too many failed attempts" in response.get_data(as_text=True)
    # Another email from the same client is not affected.
    assert auth.login(lab.trainer).status_code == 302


def test_login_rate_limit_is_per_client_ip(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    for _ in range(5):
        auth.login(lab.participant, "wrong")
    other = {"REMOTE_ADDR": "192.0.2.7"}
    assert auth.login(lab.participant, environ_base=other).status_code == 302


def test_login_success_resets_the_failure_count(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    for _ in range(4):
        auth.login(lab.participant, "wrong")
    assert auth.login(lab.participant).status_code == 302
    auth.logout()
    for _ in range(4):
        auth.login(lab.participant, "wrong")
    assert auth.login(lab.participant).status_code == 302


def test_login_rehashes_old_password_hash(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    from argon2 import PasswordHasher
    from sqlalchemy import select

    from server.extensions import db
    from server.models import Person

    with db.session() as s:
        ada = s.scalars(select(Person).where(Person.email == lab.participant)).one()
        ada.password_hash = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    assert auth.login(lab.participant).status_code == 302
    with db.session() as s:
        stored = s.scalars(select(Person.password_hash).where(Person.email == lab.participant)).one()
    assert stored is not None and stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_logout_ends_the_session(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    response = auth.logout()
    assert response.status_code == 302 and response.headers["Location"] == "/login"
    assert client.get("/").status_code == 302


def test_logout_needs_post(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    assert client.get("/logout").status_code == 405
    assert client.get("/").status_code == 200


def test_login_deactivated_person_loses_session(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    from sqlalchemy import update

    from server.extensions import db
    from server.models import Person

    auth.login(lab.trainer)
    with db.session() as s:
        s.execute(update(Person).where(Person.email == lab.trainer).values(active=False))
    assert client.get("/").status_code == 302


# -- CSRF ----------------------------------------------------------------------------------------


@pytest.fixture
def csrf_client(make_app: Callable[..., Flask], password_hash: str) -> tuple[FlaskClient, Lab]:
    app = make_app(WTF_CSRF_ENABLED=True)
    return english(app.test_client()), seed_lab(password_hash)


def _csrf_token(html: str) -> str:
    import re

    found = re.search(
        r'name="csrf_token" type="hidden" value="([^"]+)"|name="csrf_token" value="([^"]+)"', html
    )
    assert found, "no CSRF token in the page"
    return found.group(1) or found.group(2)


def test_csrf_login_without_token_is_refused(csrf_client: tuple[FlaskClient, Lab]) -> None:
    client, lab = csrf_client
    response = client.post("/login", data={"email": lab.trainer, "password": PASSWORD})
    assert response.status_code == 400
    assert "The form has expired" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_csrf_login_and_logout_with_token(csrf_client: tuple[FlaskClient, Lab]) -> None:
    client, lab = csrf_client
    token = _csrf_token(client.get("/login").get_data(as_text=True))
    response = client.post("/login", data={"email": lab.trainer, "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 302
    page = client.get("/").get_data(as_text=True)
    # Logging out needs the page's token too: a forged cross-site POST cannot log you out.
    assert client.post("/logout").status_code == 400
    assert client.get("/").status_code == 200
    assert client.post("/logout", data={"csrf_token": _csrf_token(page)}).status_code == 302
    assert client.get("/").status_code == 302


# -- headers ---------------------------------------------------------------------------------


def test_security_headers_on_pages(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    auth.login(lab.trainer)
    for path in ("/login", "/", "/live.json"):
        headers = client.get(path).headers
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"


def _policy_everywhere(response: TestResponse) -> None:
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"


def test_security_headers_on_error_pages_and_static_files(make_app: Callable[..., Flask]) -> None:
    # No blueprint answers these, so a blueprint's own hook never ran for them.
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.route("/test-crash")
    def crash() -> str:
        raise RuntimeError("a bug")

    client = app.test_client()
    missing = client.get("/no-such-page")
    crashed = client.get("/test-crash")
    static = client.get("/static/werkbank.css")
    assert (missing.status_code, crashed.status_code, static.status_code) == (404, 500, 200)
    for response in (missing, crashed, static):
        _policy_everywhere(response)
    # Static files may be cached (pages may not).
    assert "no-store" not in static.headers.get("Cache-Control", "")
    static.close()


def test_session_cookie_is_httponly_and_lax(client: FlaskClient, auth: AuthActions, lab: Lab) -> None:
    response = auth.login(lab.trainer)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_behind_a_proxy_the_rate_limit_counts_the_forwarded_client(
    make_app: Callable[..., Flask], lab: Lab
) -> None:
    client = english(make_app(PROXY_COUNT=1).test_client())
    auth = AuthActions(client)
    proxy = {"REMOTE_ADDR": "10.0.0.2"}  # every request comes through the one nginx
    for _ in range(5):
        auth.login(lab.participant, "wrong", environ_base=proxy, headers={"X-Forwarded-For": "198.51.100.4"})
    blocked = auth.login(lab.participant, environ_base=proxy, headers={"X-Forwarded-For": "198.51.100.4"})
    assert blocked.status_code == 429
    # Another client behind the same proxy is not locked out by the first one's failures.
    other = auth.login(lab.participant, environ_base=proxy, headers={"X-Forwarded-For": "198.51.100.9"})
    assert other.status_code == 302


def test_without_a_proxy_setting_a_forged_forwarded_header_changes_nothing(
    client: FlaskClient, auth: AuthActions, lab: Lab
) -> None:
    for i in range(5):
        auth.login(lab.participant, "wrong", headers={"X-Forwarded-For": f"203.0.113.{i}"})
    response = auth.login(lab.participant, headers={"X-Forwarded-For": "203.0.113.99"})
    assert response.status_code == 429
