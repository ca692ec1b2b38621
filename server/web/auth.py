"""Logging in and out, the language switch, and who may see which page.

Deliberately small: email + password, a per-process limit on failed logins, and
role checks. Accounts, password resets and invitations come with the accounts work.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, ParamSpec
from urllib.parse import urlsplit

import flask_login  # type: ignore[import-untyped,unused-ignore]
from flask import (
    abort,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from server import get_db
from server.extensions import login_manager
from server.i18n import N_
from server.models import Person
from server.security import verify_password
from server.web.common import web_blueprint
from server.web.l10n import _, _l

bp = web_blueprint("auth", __name__)

P = ParamSpec("P")
View = Callable[P, ResponseReturnValue]


# -- the logged-in person ----------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    """What Flask-Login keeps of a :class:`Person` for one request: never a live ORM object,
    so templates cannot lazy-load across a closed database session."""

    id: int
    name: str
    email: str
    language: str
    site_id: int
    timezone: str
    is_participant: bool
    is_trainer: bool
    is_admin: bool

    @classmethod
    def from_person(cls, person: Person) -> User:
        return cls(
            id=person.id,
            name=person.name,
            email=person.email or "",
            language=person.language,
            site_id=person.site_id,
            timezone=person.site.timezone,
            is_participant=person.is_participant,
            is_trainer=person.is_trainer,
            is_admin=person.is_admin,
        )

    @property
    def is_staff(self) -> bool:
        """Trainers and admins see every machine of their site and everyone's sessions."""
        return self.is_trainer or self.is_admin

    # The four members Flask-Login asks of a user object (what UserMixin would add).
    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_active(self) -> bool:
        return True  # inactive people are never loaded (see load_user)

    @property
    def is_anonymous(self) -> bool:
        return False

    def get_id(self) -> str:
        return str(self.id)


def load_user(user_id: str) -> User | None:
    """Flask-Login's user loader: the person behind the session cookie, if still active."""
    try:
        person = get_db().get(Person, int(user_id))
    except ValueError:
        return None
    if person is None or not person.active:
        return None
    return User.from_person(person)


def current() -> User | None:
    """The logged-in user of this request, or None."""
    # Unwrap the LocalProxy: callers get the plain (frozen) User object.
    user = flask_login.current_user._get_current_object()
    return user if isinstance(user, User) else None


def home_url(user: User) -> str:
    return url_for("web.overview") if user.is_staff else url_for("web.me")


# Who may open a page. Every view carries one of these in ``view.access`` (set by the
# decorators below), and tests/web/test_web_roles.py checks every route against every role.
PUBLIC, LOGIN, STAFF, TRAINER, ADMIN = "public", "login", "staff", "trainer", "admin"


def _mark(view: Any, access: str) -> Any:
    view.access = access
    return view


def public(view: View[P]) -> View[P]:
    """Open to everyone, logged in or not (login page, language switch, health check)."""
    marked: View[P] = _mark(view, PUBLIC)
    return marked


def login_required(view: View[P]) -> View[P]:
    """Only for logged-in people. JSON endpoints answer 401 instead of a login redirect:
    the page's polling script cannot follow a redirect to an HTML form."""

    @wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
        if current() is None:
            if request.path.endswith(".json"):
                return jsonify(error="login_required"), 401
            response: ResponseReturnValue = login_manager.unauthorized()
            return response
        return view(*args, **kwargs)

    marked: View[P] = _mark(wrapped, getattr(view, "access", LOGIN))
    return marked


def _role_required(access: str, allowed: Callable[[User], bool]) -> Callable[[View[P]], View[P]]:
    def decorator(view: View[P]) -> View[P]:
        @wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> ResponseReturnValue:
            user = current()
            if user is not None and not allowed(user):
                abort(403)
            return view(*args, **kwargs)

        _mark(wrapped, access)
        return login_required(wrapped)

    return decorator


def staff_required(view: View[P]) -> View[P]:
    """Only for trainers and admins (403 for everyone else who is logged in)."""
    return _role_required(STAFF, lambda user: user.is_staff)(view)


def trainer_required(view: View[P]) -> View[P]:
    """Only for trainers (and admins, who may train every competency)."""
    return _role_required(TRAINER, lambda user: user.is_trainer or user.is_admin)(view)


def admin_required(view: View[P]) -> View[P]:
    """Only for admins."""
    return _role_required(ADMIN, lambda user: user.is_admin)(view)


# -- failed-login limit --------------------------------------------------------------------------


class LoginLimiter:
    """Counts failed logins per (client IP, email) in this process's memory.

    After ``max_failures`` failures within ``window_s`` seconds, further attempts for that
    pair are refused without checking the password, until the oldest failure is older than
    the window. Per process: with N web workers an attacker gets N times the budget, which
    still turns millions of guesses into thousands. Behind a reverse proxy the client IP
    is only right with WERKBANK_PROXY_COUNT set (ProxyFix trusts X-Forwarded-For that deep).
    """

    def __init__(
        self,
        max_failures: int = 5,
        window_s: float = 300.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def blocked(self, key: tuple[str, str]) -> bool:
        with self._lock:
            return len(self._recent(key)) >= self.max_failures

    def failed(self, key: tuple[str, str]) -> None:
        with self._lock:
            if key not in self._failures and len(self._failures) >= self.max_keys:
                self._make_room()
            self._failures.setdefault(key, deque()).append(self._clock())

    def succeeded(self, key: tuple[str, str]) -> None:
        with self._lock:
            self._failures.pop(key, None)

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        stamps = self._failures.get(key, deque())
        cutoff = self._clock() - self.window_s
        while stamps and stamps[0] <= cutoff:
            stamps.popleft()
        if not stamps:
            self._failures.pop(key, None)
        return stamps

    def _make_room(self) -> None:
        # Bounded memory when someone sprays many emails: forget expired entries first,
        # then the oldest keys (dicts keep insertion order).
        for key in list(self._failures):
            self._recent(key)
        while len(self._failures) >= self.max_keys:
            del self._failures[next(iter(self._failures))]


def limiter() -> LoginLimiter:
    found: LoginLimiter = current_app.extensions["werkbank.login_limiter"]
    return found


# -- views ---------------------------------------------------------------------------------------


class LoginForm(FlaskForm):  # type: ignore[misc]  # Flask-WTF is untyped: its classes are Any
    email = EmailField(
        _l("Email"),
        validators=[DataRequired(), Length(max=254)],
        render_kw={"autocomplete": "username", "autocapitalize": "none", "spellcheck": "false"},
    )
    # The length cap keeps a megabyte "password" from costing a megabyte of hashing.
    password = PasswordField(
        _l("Password"),
        validators=[DataRequired(), Length(max=1024)],
        render_kw={"autocomplete": "current-password"},
    )


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None: no open redirects via ``?next=``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


@bp.route("/login", methods=["GET", "POST"])
@public
def login() -> ResponseReturnValue:
    user = current()
    if user is not None:
        return redirect(home_url(user))
    form = LoginForm()
    error: str | None = None
    status = 200
    if form.validate_on_submit():
        email = str(form.email.data).strip().lower()
        key = (request.remote_addr or "", email)
        if limiter().blocked(key):
            error = _("Too many failed attempts. Please wait 5 minutes and try again.")
            status = 429
        else:
            db = get_db()
            person = db.scalar(select(Person).where(func.lower(Person.email) == email))
            check = verify_password(person.password_hash if person else None, str(form.password.data))
            if person is not None and person.active and check.ok:
                if check.new_hash is not None:
                    person.password_hash = check.new_hash
                    db.commit()
                limiter().succeeded(key)
                _start_session(User.from_person(person))
                return redirect(safe_next(request.args.get("next")) or home_url(User.from_person(person)))
            limiter().failed(key)
            # One message for unknown email, wrong password and inactive account alike.
            error = _("Email or password is wrong.")
            status = 401
    return render_template("login.html", form=form, error=error), status


def _start_session(user: User) -> None:
    # A fresh session cookie on login (no state carried over from before), except the
    # language the visitor already chose.
    language = session.get("language")
    session.clear()
    if language is not None:
        session["language"] = language
    flask_login.login_user(user)


@bp.post("/logout")
@public
def logout() -> ResponseReturnValue:
    flask_login.logout_user()
    flash(_("You are logged out."), "info")
    return redirect(url_for("auth.login"))


@bp.get("/language/<code>")
@public
def set_language(code: str) -> ResponseReturnValue:
    """Switch the page language for this browser session.

    A plain link (GET), so it works without JavaScript and before login; all it changes is
    the language, so a forged link can do no harm.
    """
    if code not in current_app.config["LANGUAGES"]:
        abort(404)
    session["language"] = code
    return redirect(safe_next(request.args.get("next")) or url_for("web.overview"))


def init_app(app: Any) -> None:
    """Bind Flask-Login to our User and give this app its own failed-login counter."""
    login_manager.user_loader(load_user)
    login_manager.login_view = "auth.login"
    login_manager.login_message = N_("Please log in to see this page.")
    login_manager.login_message_category = "info"
    login_manager.localize_callback = _
    app.extensions["werkbank.login_limiter"] = LoginLimiter(
        max_failures=app.config.get("WERKBANK_LOGIN_MAX_FAILURES", 5),
        window_s=app.config.get("WERKBANK_LOGIN_WINDOW_S", 300),
    )
