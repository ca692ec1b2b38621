"""The OpenAPI document as a test oracle: which operation a request hit, and whether the
answer's status is documented and its body validates against that status's schema."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from jsonschema import FormatChecker
from openapi_schema_validator import OAS31Validator

from server.adapters.api.spec import document

METHODS = ("get", "post", "put", "patch", "delete")

# jsonschema checks "date-time" only with an optional package; ours is stricter anyway:
# the API promises RFC 3339 in UTC, so a "Z" offset.
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time", raises=ValueError)
def _utc_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", value):
        raise ValueError(f"{value!r} is not RFC 3339 UTC")
    datetime.fromisoformat(value)
    return True


@FORMATS.checks("date", raises=ValueError)
def _day(value: object) -> bool:
    if isinstance(value, str):
        date.fromisoformat(value)
        if not re.fullmatch(r"\d{4}-\d\d-\d\d", value):
            raise ValueError(value)
    return True


@dataclass
class Contract:
    doc: dict[str, Any]

    @classmethod
    def load(cls) -> Contract:
        return cls(document())

    def operations(self) -> set[tuple[str, str]]:
        """Every (METHOD, path template) the document describes."""
        return {
            (method.upper(), path)
            for path, item in self.doc["paths"].items()
            for method in item
            if method in METHODS
        }

    def match(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        path = path.split("?", 1)[0]
        for template, item in self.doc["paths"].items():
            pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path) and method.lower() in item:
                return template, item[method.lower()]
        raise AssertionError(f"{method} {path} is not in the OpenAPI document")

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            target: Any = self.doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def validator(self, schema: dict[str, Any]) -> OAS31Validator:
        # The schema as the root, beside the document's components, so "#/components/..." resolves.
        return OAS31Validator(
            {"allOf": [schema], "components": self.doc["components"]}, format_checker=FORMATS
        )

    def check(self, method: str, path: str, status: int, body: Any) -> None:
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
        try:
            template, operation = self.match(method, path)
        except AssertionError:
            if status not in (404, 405):
                raise
            template, operation = path, {"responses": {}}
        documented = operation["responses"].get(str(status))
        if documented is None and status in (404, 405):
            # Routing answers (wrong method, unknown path) are not listed per operation, but
            # they keep the error shape.
            documented = error
        assert documented is not None, f"{method} {template} answered {status}, which is not documented"
        content = self.resolve(documented).get("content", {}).get("application/json")
        assert content is not None, f"{method} {template} {status} documents no JSON body"
        errors = sorted(self.validator(content["schema"]).iter_errors(body), key=str)
        assert not errors, f"{method} {template} {status}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5]
        )
