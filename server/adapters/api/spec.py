"""The OpenAPI 3.1 document, hand-written in ``openapi.yaml``, served as JSON.

Hand-written rather than generated: it is the contract outside scripts are written
against, so it carries prose, examples and error shapes, and a change to it shows as a
diff of one reviewed file. Tests keep it true: every route is in it, everything in it is
a route, request schemas match the msgspec Structs, and answers validate against it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from flask.typing import ResponseReturnValue

from server.adapters.api.auth import api_access
from server.adapters.api.common import answer, bp

DOCUMENT = Path(__file__).resolve().parent / "openapi.yaml"


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOCUMENT.read_text(encoding="utf-8"))
    return loaded


@bp.get("/openapi.json")
@api_access("public")
def openapi() -> ResponseReturnValue:
    return answer(document())
