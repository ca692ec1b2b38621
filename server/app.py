"""The Flask app factory: binds the extensions and wires the pages, the JSON API and the CLI."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g, request, session

from server.config import Config
from server.extensions import babel, csrf, db, login_manager


def select_locale() -> str:
    """The language the visitor chose, else their profile's, else the browser's."""
    from flask_login import current_user  # type: ignore[import-untyped,unused-ignore]

    languages: tuple[str, ...] = current_app.config["LANGUAGES"]
    chosen = session.get("language")
    if chosen in languages:
        return str(chosen)
    if getattr(current_user, "is_authenticated", False) and current_user.language in languages:
        return str(current_user.language)
    best = request.accept_languages.best_match(languages)
    return best or str(current_app.config["BABEL_DEFAULT_LOCALE"])


def select_timezone() -> str | None:
    """The logged-in person's site's time zone; None falls back to BABEL_DEFAULT_TIMEZONE."""
    from flask_login import current_user  # type: ignore[import-untyped,unused-ignore]

    if getattr(current_user, "is_authenticated", False):
        timezone = getattr(current_user, "timezone", None)
        return str(timezone) if timezone else None
    return None


def create_app(config_class: type[Config] = Config, **overrides: Any) -> Flask:
    app = Flask(__name__)
    app.config.from_object(config_class)
    app.config.update(overrides)
    db.init(app.config["DATABASE_URL"])
    proxies = int(app.config.get("PROXY_COUNT", 0))
    if proxies < 0:
        raise SystemExit(f"WERKBANK_PROXY_COUNT={proxies}: give the number of proxies in front, 0 or more")
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix

        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies
        )
    babel.init_app(app, locale_selector=select_locale, timezone_selector=select_timezone)
    csrf.init_app(app)
    login_manager.init_app(app)

    @app.teardown_appcontext
    def _close_db(exc: BaseException | None) -> None:
        session_ = g.pop("db_session", None)
        if session_ is not None:
            if exc is not None:
                session_.rollback()
            session_.close()

    from server.adapters.api import init_app as init_api
    from server.adapters.web import init_app as init_web
    from server.cli import register as register_commands

    init_web(app)
    init_api(app)
    register_commands(app)
    return app
