"""A site's letterhead (address and logo) set on the admin's site page: checked, audited, and
printed on the site's documents (read back with pdftotext and pdftoppm)."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from PIL import Image, PngImagePlugin
from sqlalchemy import select

from server.extensions import db
from server.models import AuditLog, Person, Site
from server.services import letterhead
from tests.web.conftest import Lab, english, sign_in
from tests.web.documents_support import pdf_pages, pdf_text


def _id(email: str) -> int:
    with db.session() as s:
        found = s.scalar(select(Person.id).where(Person.email == email))
    assert found is not None
    return found


def _png(size: tuple[int, int] = (1200, 400), colour: str = "red", note: str = "") -> bytes:
    image = Image.new("RGB", size, colour)
    info = PngImagePlugin.PngInfo()
    if note:
        info.add_text("Comment", note)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _red(image: Image.Image) -> int:
    """How many pixels are clearly red."""
    raw = image.tobytes()
    return sum(1 for i in range(0, len(raw), 3) if raw[i] > 200 and raw[i + 1] < 80 and raw[i + 2] < 80)


def _form(site: Site, **extra: object) -> dict[str, object]:
    return {"slug": site.slug, "name": site.name, "timezone": site.timezone, **extra}


def _site(site_id: int) -> Site:
    with db.session() as s:
        site = s.get(Site, site_id)
        assert site is not None
        s.expunge(site)
    return site


ADDRESS = "Lernwerkstatt Nord gGmbH\r\nHafenstraße 12\r\n\r\n20457 Hamburg"


def test_letterhead_set_on_the_site_page_audited_and_printed_on_the_documents(
    client: FlaskClient, lab: Lab, tmp_path: Path
) -> None:
    sign_in(client, _id(lab.admin))
    english(client)
    site = _site(lab.site_id)
    page = client.get(f"/admin/sites/{lab.site_id}").get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in page and 'name="logo_file"' in page and 'name="address"' in page
    upload = (io.BytesIO(_png(note="GPS 53.5N 9.9E, private")), "logo.png")
    response = client.post(
        f"/admin/sites/{lab.site_id}",
        data=_form(site, address=ADDRESS, logo_file=upload),
        content_type="multipart/form-data",
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    site = _site(lab.site_id)
    assert site.address == "Lernwerkstatt Nord gGmbH\nHafenstraße 12\n20457 Hamburg"
    assert site.logo is not None and site.logo.startswith("data:image/png;base64,")
    stored = base64.b64decode(site.logo.split(",", 1)[1])
    assert b"GPS" not in stored and b"private" not in stored  # encoded anew: no metadata
    with Image.open(io.BytesIO(stored)) as image:
        assert image.format == "PNG" and image.size == (600, 200)  # scaled into 600 x 240
    with db.session() as s:
        logged = s.scalars(select(AuditLog).where(AuditLog.action == "site.update")).one()
    assert logged.detail["address"] == [None, site.address]
    before, after = logged.detail["logo"]
    assert before is None and after.startswith("image/png, ") and "base64" not in after
    assert site.logo in client.get(f"/admin/sites/{lab.site_id}").get_data(as_text=True)  # shown on the form

    # The attendance sheet (PDF) of the site: the address as text, the red logo top left.
    sign_in(client, _id(lab.trainer))
    month = datetime.now(UTC).strftime("%Y-%m")
    sheet = client.get(f"/attendance/sheet.pdf?month={month}")
    assert sheet.status_code == 200 and sheet.mimetype == "application/pdf"
    text = pdf_text(sheet.data, tmp_path, "sheet")
    for line in ("Lernwerkstatt Nord gGmbH", "Hafenstraße 12", "20457 Hamburg"):
        assert line in text, line
    first = pdf_pages(sheet.data, tmp_path, "sheet", dpi=40)[0]
    with Image.open(first) as png:
        rgb = png.convert("RGB")
        top = _red(rgb.crop((0, 0, rgb.width // 3, rgb.height // 5)))
        rest = _red(rgb.crop((0, rgb.height // 4, rgb.width, rgb.height)))
    assert top > 50 and rest == 0, (top, rest)

    # Removing the logo; a post without the address field keeps the address.
    sign_in(client, _id(lab.admin))
    response = client.post(f"/admin/sites/{lab.site_id}", data=_form(site, remove_logo="y"))
    assert response.status_code == 302
    assert (_site(lab.site_id).logo, _site(lab.site_id).address) == (None, site.address)


def _svg() -> bytes:
    return b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (10, 10), "red").save(out, format="GIF")
    return out.getvalue()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("logo_file", _svg(), "SVG logos are not taken (an SVG can carry scripts)."),
        ("logo_file", b"<svg onload='alert(1)'/>", "SVG logos are not taken"),
        ("logo_file", _gif(), "The logo must be a PNG or JPEG picture."),
        ("logo_file", _png()[:200], "The logo must be a PNG or JPEG picture."),
        ("logo_file", b"%PDF-1.7 not a picture", "The logo must be a PNG or JPEG picture."),
        ("logo_file", _png((4100, 10)), "at most 4000 a side are taken"),
        ("logo_file", b"\x89PNG" + b"\0" * (600 * 1024), "The logo is larger than 512 KB."),
        ("address", "\n".join(f"line {i}" for i in range(7)), "The address has 7 lines; at most 6 fit"),
        ("address", "x" * 101, "An address line has more than 100 characters."),
        ("address", "Hafenstraße\x0012", "The address holds control characters."),
    ],
)
def test_letterhead_bad_input_is_refused_with_the_reason_and_changes_nothing(
    client: FlaskClient, lab: Lab, field: str, value: bytes | str, message: str
) -> None:
    sign_in(client, _id(lab.admin))
    english(client)
    site = _site(lab.site_id)
    counted = sum(letterhead.REFUSED.values())
    data = _form(site, name="Renamed", address="Street 1")
    data[field] = (io.BytesIO(value), "logo.svg") if isinstance(value, bytes) else value
    response = client.post(f"/admin/sites/{lab.site_id}", data=data, content_type="multipart/form-data")
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    after = _site(lab.site_id)
    assert (after.name, after.address, after.logo) == (site.name, site.address, site.logo)
    assert sum(letterhead.REFUSED.values()) == counted + 1
    with db.session() as s:
        assert s.scalars(select(AuditLog).where(AuditLog.action == "site.update")).first() is None


def test_letterhead_refusal_in_german(client: FlaskClient, lab: Lab) -> None:
    sign_in(client, _id(lab.admin))
    client.get("/language/de")
    site = _site(lab.site_id)
    response = client.post(
        f"/admin/sites/{lab.site_id}",
        data=_form(site, logo_file=(io.BytesIO(_svg()), "logo.svg")),
        content_type="multipart/form-data",
    )
    assert response.status_code == 400
    assert "SVG-Logos werden nicht angenommen" in response.get_data(as_text=True)


def test_letterhead_jpeg_stays_jpeg_without_its_metadata() -> None:
    image = Image.new("RGB", (300, 100), "blue")
    exif = Image.Exif()
    exif[0x010F] = "Secret Camera Maker"
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif.tobytes())
    assert b"Secret Camera" in out.getvalue()
    stored = letterhead.check_logo(out.getvalue())
    assert stored.startswith("data:image/jpeg;base64,")
    assert b"Secret Camera" not in base64.b64decode(stored.split(",", 1)[1])
