"""WSGI entry point for gunicorn: ``gunicorn 'server.wsgi:app'``.

Each worker loads WeasyPrint and the documents' fonts as it starts (about half a second of CPU),
so the first certificate or attendance sheet after a restart is as quick as the next
(docs/proof.md, Speed). Without WeasyPrint's system libraries the server still starts (the
warning says what is missing); only the PDFs cannot be made.
"""

import logging

from server import create_app
from server.services import documents

app = create_app()

try:
    logging.getLogger(__name__).info("documents: WeasyPrint loaded in %.2f s", documents.warm_up())
except documents.DocumentError as missing:
    logging.getLogger(__name__).warning("documents: %s", missing)
