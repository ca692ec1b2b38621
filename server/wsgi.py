"""WSGI entry point for gunicorn: ``gunicorn 'server.wsgi:app'``.

A worker refuses to boot on a database whose schema is not this code's (older: run
``werkbank db upgrade``; newer: a newer Werkbank upgraded it). The exception, not an exit, makes
gunicorn stop with "Worker failed to boot" rather than start new workers for ever.
"""

from server.app import create_app
from server.migrate import require_current

app = create_app()
require_current(app.config["DATABASE_URL"], "web")
