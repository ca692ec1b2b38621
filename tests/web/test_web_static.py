"""The stylesheet is well formed: a lost brace silently swallows every rule after it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "server" / "static"


@pytest.mark.parametrize("path", sorted(STATIC.glob("*.css")), ids=lambda p: p.name)
def test_static_stylesheet_braces_balance(path: Path) -> None:
    css = re.sub(r"/\*.*?\*/", "", path.read_text(encoding="utf-8"), flags=re.S)
    depth = 0
    for number, line in enumerate(css.splitlines(), 1):
        for char in line:
            depth += {"{": 1, "}": -1}.get(char, 0)
            assert 0 <= depth <= 2, f"{path.name}:{number}: braces out of balance (depth {depth})"
    assert depth == 0, f"{path.name}: {depth} block(s) never closed"
