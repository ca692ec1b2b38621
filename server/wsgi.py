"""WSGI entry point for gunicorn: ``gunicorn 'server.wsgi:app'``.

A worker refuses to boot on a database whose schema is not this code's (older: run
``werkbank db upgrade``; newer: a newer Werkbank upgraded it). The exception, not an exit, makes
gunicorn stop with "Worker failed to boot" rather than start new workers for ever.

Each worker loads WeasyPrint and the documents' fonts as it starts (about half a second of CPU),
so the first certificate or attendance sheet after a restart is as quick as the next
(docs/proof.md, Speed). Without WeasyPrint's system libraries the server still starts (the
warning says what is missing); only the PDFs cannot be made.
"""

import logging

from server.app import create_app
from server.migrate import require_current
from server.services import documents

app = create_app()
require_current(app.config["DATABASE_URL"], "web")

try:
    logging.getLogger(__name__).info("documents: WeasyPrint loaded in %.2f s", documents.warm_up())
except documents.DocumentError as missing:
    logging.getLogger(__name__).warning("documents: %s", missing)
