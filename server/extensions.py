"""Extensions, created unbound here and bound to the app in create_app()."""

from __future__ import annotations

from flask_babel import Babel
from flask_login import LoginManager
from flask_wtf import CSRFProtect

from server.db import Database

db = Database()
babel = Babel()
login_manager = LoginManager()
csrf = CSRFProtect()
