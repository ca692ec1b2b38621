"""Reading PDFs back as a person would: their text (pdftotext) and their pages as images
(pdftoppm), with Debian's poppler-utils (`make pdf` installs them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def pdf_text(body: bytes, tmp_path: Path, name: str = "doc") -> str:
    assert body.startswith(b"%PDF-"), body[:200]
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(body)
    tool = shutil.which("pdftotext")
    assert tool, "pdftotext missing: run `make pdf`"
    return subprocess.run(
        [tool, "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def pdf_pages(body: bytes, tmp_path: Path, name: str = "doc", dpi: int = 50) -> list[Path]:
    """Each page as a PNG (low resolution: enough to see that something was drawn)."""
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(body)
    tool = shutil.which("pdftoppm")
    assert tool, "pdftoppm missing: run `make pdf`"
    subprocess.run([tool, "-png", "-r", str(dpi), str(path), str(tmp_path / name)], check=True)
    return sorted(tmp_path.glob(f"{name}-*.png"))


def ink(png: Path) -> float:
    """Share of the page's pixels that are not white (a blank page has 0)."""
    from PIL import Image

    with Image.open(png) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    total = sum(histogram)
    return 1.0 - sum(histogram[245:]) / total
