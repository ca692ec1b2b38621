"""A site's letterhead on its documents (certificates, attendance sheets, briefing proof lists):
the postal address (lines) and a logo, both set by admins on the site's page.

The logo is kept in the database (``sites.logo``, a data: URL), so ``werkbank backup`` has it
with everything else and every web worker sees the same. Only PNG and JPEG are taken, checked
by their content (Pillow), not by name or the browser's word: at most :data:`MAX_LOGO_BYTES`,
at most :data:`MAX_SOURCE_SIDE` pixels a side (no decompression bombs), one frame. SVG is
refused: it is a program as much as a picture (scripts, links to other files), and a PNG of
the logo does as well on paper. The picture is decoded and encoded anew (scaled down to
:data:`LOGO_BOX` pixels at most, which is sharp at the 18 mm the documents print it): what is
stored holds pixels only, no metadata (a photo's place and camera), no bytes hidden after the
image, nothing the browser or WeasyPrint could take for something else.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from server.i18n import N_

log = logging.getLogger(__name__)

MAX_LOGO_BYTES = 512 * 1024
MAX_SOURCE_SIDE = 4000
LOGO_BOX = (600, 240)
MAX_ADDRESS_LINES = 6
MAX_LINE = 100
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}

# Letterheads refused, by reason (the admin page says why; nothing is changed).
REFUSED: Counter[str] = Counter()


@dataclass
class LetterheadError(ValueError):
    """Bad input for a letterhead: ``message`` a ``N_`` template with ``{name}`` placeholders."""

    code: str
    message: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)


def _refuse(code: str, message: str, **params: Any) -> LetterheadError:
    REFUSED[code] += 1
    log.info("letterhead refused: %s", code)
    return LetterheadError(code, message, params)


def check_address(text: str | None) -> str | None:
    """The address as stored: lines trimmed, empty lines dropped; None when empty."""
    lines = [line.strip() for line in (text or "").replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    lines = [line for line in lines if line]
    if not lines:
        return None
    if len(lines) > MAX_ADDRESS_LINES:
        raise _refuse(
            "address_lines",
            N_("The address has {lines} lines; at most {most} fit on the letterhead."),
            lines=len(lines),
            most=MAX_ADDRESS_LINES,
        )
    for line in lines:
        if len(line) > MAX_LINE:
            raise _refuse(
                "address_line_long",
                N_("An address line has more than {most} characters."),
                most=MAX_LINE,
            )
        if any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in line):
            raise _refuse("address_control", N_("The address holds control characters. Please type it anew."))
    return "\n".join(lines)


def check_logo(raw: bytes) -> str:
    """An uploaded logo as the data: URL to store: PNG or JPEG, checked and encoded anew."""
    if not raw:
        raise _refuse("logo_empty", N_("The logo file is empty."))
    if len(raw) > MAX_LOGO_BYTES:
        raise _refuse(
            "logo_too_big",
            N_("The logo is larger than {kb} KB. Please upload a smaller PNG or JPEG."),
            kb=MAX_LOGO_BYTES // 1024,
        )
    head = raw[:512].lstrip().lower()
    if head.startswith((b"<?xml", b"<svg", b"<!doctype svg")) or b"<svg" in head:
        raise _refuse(
            "logo_svg",
            N_("SVG logos are not taken (an SVG can carry scripts). Please upload it as PNG or JPEG."),
        )
    from PIL import Image, UnidentifiedImageError

    try:
        # The whole file, strictly: WeasyPrint lets Pillow load cut-off pictures (a process-wide
        # switch), so a PNG's chunks and their checksums are checked here, and a JPEG must end.
        with Image.open(io.BytesIO(raw)) as probe:
            if probe.format == "PNG":
                probe.verify()
            elif probe.format == "JPEG" and not raw.rstrip(b"\0").endswith(b"\xff\xd9"):
                raise OSError("JPEG cut off")
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in FORMATS:
                raise _refuse("logo_format", N_("The logo must be a PNG or JPEG picture."))
            if max(image.size) > MAX_SOURCE_SIDE or min(image.size) < 1:
                raise _refuse(
                    "logo_size",
                    N_("The logo is {width} × {height} pixels; at most {most} a side are taken."),  # noqa: RUF001
                    width=image.width,
                    height=image.height,
                    most=MAX_SOURCE_SIDE,
                )
            kind = image.format
            image.seek(0)
            image.load()
            picture = image.copy()
    except LetterheadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise _refuse("logo_format", N_("The logo must be a PNG or JPEG picture.")) from None
    picture.thumbnail(LOGO_BOX)
    out = io.BytesIO()
    if kind == "JPEG":
        picture.convert("RGB").save(out, format="JPEG", quality=90)
    else:
        if picture.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
            picture = picture.convert("RGBA")
        picture.save(out, format="PNG", optimize=True)
    return f"data:{FORMATS[kind]};base64," + base64.b64encode(out.getvalue()).decode()


def logo_summary(data_url: str | None) -> str | None:
    """What the audit log says of a logo (never the picture): type, size and a digest."""
    if not data_url:
        return None
    kind = data_url[5 : data_url.find(";")] if data_url.startswith("data:") else "?"
    digest = hashlib.sha256(data_url.encode()).hexdigest()[:12]
    return f"{kind}, {len(data_url) * 3 // 4 // 1024 + 1} KB, sha256 {digest}"
