"""Extensions, created unbound here and bound to the app in create_app()."""

from __future__ import annotations

from flask import g
from flask_babel import Babel
from flask_login import LoginManager
from flask_wtf import CSRFProtect
from sqlalchemy.orm import Session

from server.db import Database

db = Database()
babel = Babel()
login_manager = LoginManager()
csrf = CSRFProtect()


def get_db() -> Session:
    """The request's database session (opened on first use, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = db.new_session()
    session_: Session = g.db_session
    return session_
