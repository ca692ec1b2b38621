"""PDF documents from HTML (WeasyPrint) and QR codes (segno), without any network.

The templates are the print views the browser shows too; WeasyPrint reads their stylesheets
straight from ``server/static`` and data: URLs (logos, QR codes), and nothing else: a document
never makes the server fetch a URL.

Speed (docs/proof.md): each thread keeps one WeasyPrint font configuration (Pango's font map
with the fonts it has opened and measured) for all the documents it makes, instead of loading
the fonts again for every PDF; and the web server's workers load WeasyPrint and the fonts when
they start (:func:`warm_up`, from ``server/wsgi.py``), not on the first document someone asks for.
"""

from __future__ import annotations

import base64
import io
import logging
import mimetypes
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent.parent / "static"
# WeasyPrint logs every CSS property it does not know (the screen styles have some) at WARNING.
logging.getLogger("weasyprint").setLevel(logging.ERROR)
logging.getLogger("fontTools").setLevel(logging.ERROR)


class DocumentError(RuntimeError):
    """The PDF could not be made (WeasyPrint or its system libraries missing: `make pdf`)."""


# PDFs refused because WeasyPrint cannot run, by document (the pages offer the print view).
FAILED: Counter[str] = Counter()


def _fetcher() -> Any:
    """WeasyPrint's URL fetcher, confined to our static files and data: URLs."""
    from weasyprint.urls import URLFetcher, URLFetcherResponse

    class StaticOnly(URLFetcher):  # type: ignore[misc]
        def fetch(self, url: str, headers: Any = None) -> Any:
            if url.startswith("data:"):
                return super().fetch(url, headers)
            path = urlparse(url).path
            marker = "/static/"
            if marker in path:
                file = (STATIC / path.split(marker, 1)[1]).resolve()
                if file.is_file() and STATIC.resolve() in file.parents:
                    mime = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                    return URLFetcherResponse(url, file.read_bytes(), {"Content-Type": mime})
            raise ValueError(f"documents load only the server's static files, not {url!r}")

    return StaticOnly(allowed_protocols=("data", "http"), allow_redirects=False)


# Pango's objects are not shared between threads (the threaded dev server renders in several).
_local = threading.local()


def _font_config() -> Any:
    """This thread's WeasyPrint font configuration (made on first use). No document has
    @font-face rules, so what it holds is the system's fonts, the same for every document."""
    from weasyprint.text.fonts import FontConfiguration

    fonts = getattr(_local, "fonts", None)
    if fonts is None:
        fonts = _local.fonts = FontConfiguration()
    return fonts


def pdf(html: str) -> bytes:
    """The PDF of an HTML page whose stylesheets are under /static/."""
    try:
        from weasyprint import HTML
    except (ImportError, OSError) as exc:  # OSError: pango missing
        raise DocumentError(f"WeasyPrint cannot run here ({exc}); run `make pdf` to install it") from exc
    document: bytes = HTML(
        string=html, base_url="http://werkbank.invalid/", url_fetcher=_fetcher()
    ).write_pdf(font_config=_font_config())
    return document


# One line in each font the documents use (sans, bold, mono; the page counter's default serif).
WARM_UP_PAGE = (
    '<!doctype html><html><head><link rel="stylesheet" href="/static/documents.css"></head>'
    '<body class="doc"><h1>Werkbank</h1><p>1 <span class="doc-code">ABCD-EFGH-JK</span></p></body></html>'
)


def warm_up() -> float:
    """Make one small PDF in this thread: WeasyPrint imported, Pango and the fonts loaded, so
    that the first document a web worker makes is no slower than the next. Returns the seconds
    it took; raises :class:`DocumentError` when WeasyPrint cannot run."""
    began = time.perf_counter()
    pdf(WARM_UP_PAGE)
    return time.perf_counter() - began


def qr_data_url(text: str) -> str:
    """A QR code of ``text`` as a PNG data: URL (error correction M, as phones read it best), one
    pixel per module: documents scale it up with ``image-rendering: pixelated``. (A PNG, not an
    SVG: WeasyPrint parses and draws an SVG path of a thousand segments anew for every
    certificate, a quarter of a cohort's certificates' time.)"""
    import segno

    code = segno.make(text, error="m", micro=False)
    out = io.BytesIO()
    code.save(out, kind="png", scale=1, border=2)
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
