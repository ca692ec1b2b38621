"""Logging in and out, the language switch, and who may see which page.

Deliberately small: email + password, the failed-login limits every worker shares
(:mod:`server.services.logins`), sessions that end (logout, a new password, a deactivation,
idle time) and role checks. Accounts, password resets and invitations come with the
accounts work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
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
from sqlalchemy import func, select, update
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from server.adapters.web.common import web_blueprint
from server.adapters.web.l10n import _, _l
from server.extensions import get_db, login_manager
from server.i18n import N_
from server.models import Person, utcnow
from server.security import verify_password
from server.services import logins

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
    session_epoch: int = 0

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
            session_epoch=person.session_epoch,
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
        # What Flask-Login keeps in the session (and would put in a remember-me cookie):
        # the person and their session epoch, so raising the epoch voids every copy.
        return f"{self.id}.{self.session_epoch}"


# The session's last-seen time is written back at most this often, not on every request.
SEEN_EVERY_S = 60


def load_user(user_id: str) -> User | None:
    """Flask-Login's user loader: the person behind the session cookie, if still active, the
    cookie's epoch still theirs (no logout, new password or deactivation since) and the
    session not idle for longer than SESSION_IDLE_MINUTES. Anything else is anonymous."""
    person_id, _, epoch = user_id.partition(".")
    try:
        person = get_db().get(Person, int(person_id))
        epoch_number = int(epoch)
    except ValueError:
        return None
    if person is None or not person.active or person.session_epoch != epoch_number:
        return None
    now = time.time()
    seen = session.get("seen")
    idle_s = 60 * int(current_app.config.get("SESSION_IDLE_MINUTES", 0))
    if not isinstance(seen, int | float) or (idle_s > 0 and now - seen > idle_s):
        return None
    if now - seen >= SEEN_EVERY_S:
        session["seen"] = int(now)
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


# -- failed-login limits --------------------------------------------------------------------------


def login_limits() -> logins.LoginLimits:
    config = current_app.config
    return logins.LoginLimits(
        per_pair=int(config["LOGIN_MAX_FAILURES"]),
        per_address=int(config["LOGIN_MAX_FAILURES_PER_ADDRESS"]),
        per_email=int(config["LOGIN_MAX_FAILURES_PER_EMAIL"]),
        window=timedelta(minutes=int(config["LOGIN_WINDOW_MINUTES"])),
    )


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
        # Behind a reverse proxy this is the client's address only with WERKBANK_PROXY_COUNT set.
        address = request.remote_addr or ""
        hashed = logins.email_hash(email, str(current_app.config["SECRET_KEY"]))
        limits = login_limits()
        db = get_db()
        now = utcnow()
        limit = logins.blocked(db, address, hashed, now, limits)
        if limit is not None:
            logins.refused(limit)
            error = _(
                "Too many failed attempts. Please wait %(minutes)s minutes and try again.",
                minutes=int(limits.window.total_seconds() // 60),
            )
            status = 429
        else:
            person = db.scalar(select(Person).where(func.lower(Person.email) == email))
            check = verify_password(person.password_hash if person else None, str(form.password.data))
            if person is not None and person.active and check.ok:
                if check.new_hash is not None:
                    # Same password, stronger hash: an UPDATE past the model, whose password
                    # validator would end the person's other sessions as for a new password.
                    db.execute(
                        update(Person).where(Person.id == person.id).values(password_hash=check.new_hash)
                    )
                logins.succeeded(db, address, hashed)
                logins.audit_success(db, person, address, now)
                db.commit()
                user = User.from_person(person)
                _start_session(user)
                return redirect(safe_next(request.args.get("next")) or home_url(user))
            reason = (
                "unknown_account"
                if person is None
                else ("inactive" if not person.active else "wrong_password")
            )
            reached = logins.failed(db, address, hashed, now, limits)
            logins.audit_failure(db, email, person, address, hashed, reason, now)
            if reached is not None:
                logins.audit_blocked(db, reached, address, hashed, now)
            db.commit()
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
    session["seen"] = int(time.time())


@bp.post("/logout")
@public
def logout() -> ResponseReturnValue:
    """Log out everywhere: a copy of this session's cookie (or any other browser's) stops
    working too, because the person's session epoch moves on."""
    user = current()
    if user is not None:
        db = get_db()
        person = db.get(Person, user.id)
        if person is not None:
            person.end_sessions()
            db.commit()
    flask_login.logout_user()
    session.pop("seen", None)
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
    """Bind Flask-Login to our User."""
    login_manager.user_loader(load_user)
    login_manager.login_view = "auth.login"
    login_manager.login_message = N_("Please log in to see this page.")
    login_manager.login_message_category = "info"
    login_manager.localize_callback = _
    config = app.config
    for name in ("LOGIN_MAX_FAILURES", "LOGIN_MAX_FAILURES_PER_ADDRESS", "LOGIN_MAX_FAILURES_PER_EMAIL"):
        if int(config[name]) < 1:
            raise SystemExit(f"WERKBANK_{name}={config[name]}: allow at least 1 failed login")
    if int(config["LOGIN_WINDOW_MINUTES"]) < 1:
        raise SystemExit(
            f"WERKBANK_LOGIN_WINDOW_MINUTES={config['LOGIN_WINDOW_MINUTES']}: give 1 minute or more"
        )
    if int(config["SESSION_IDLE_MINUTES"]) < 0:
        raise SystemExit(
            f"WERKBANK_SESSION_IDLE_MINUTES={config['SESSION_IDLE_MINUTES']}: give 0 (off) or more"
        )
