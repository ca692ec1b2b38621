"""The OpenAPI document: valid 3.1, served, and true to the routes and the request Structs."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from flask import Flask
from openapi_spec_validator import OpenAPIV31SpecValidator

from server.adapters.api import schemas
from server.adapters.api.spec import document
from tests.api.conftest import PREFIX, Api
from tests.api.contract import Contract

# Request bodies and query strings: the document's schema → the Struct the view decodes with.
BODIES = {
    "PersonCreate": schemas.PersonCreate,
    "PersonPatch": schemas.PersonPatch,
    "BadgeCreate": schemas.BadgeCreate,
    "BadgePatch": schemas.BadgePatch,
    "GrantBody": schemas.GrantBody,
    "RenewBody": schemas.RenewBody,
    "RevokeBody": schemas.RevokeBody,
    "StepBody": schemas.StepBody,
    "BookingCreate": schemas.BookingCreate,
    "BookingMove": schemas.BookingMove,
    "BookingCancel": schemas.BookingCancel,
}
QUERIES = {
    "/people": schemas.PeopleQuery,
    "/badges": schemas.BadgesQuery,
    "/machines": schemas.MachinesQuery,
    "/qualifications": schemas.QualificationsQuery,
    "/sessions": schemas.SessionsQuery,
    "/bookings": schemas.BookingsQuery,
}


def test_api_openapi_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1")
    errors = [e.message for e in OpenAPIV31SpecValidator(doc).iter_errors()]
    assert errors == []


def test_api_openapi_is_served_without_a_token(api: Api) -> None:
    response = api.get("/openapi.json", as_=None)
    assert response.status_code == 200
    assert response.get_json() == document()


def test_api_openapi_routes_and_document_match(app: Flask, contract: Contract) -> None:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(PREFIX + "/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule.removeprefix(PREFIX))
            routes |= {(m, path) for m in (rule.methods or set()) - {"HEAD", "OPTIONS"}}
    assert routes == contract.operations()


def _properties(schema: dict[str, Any], contract: Contract) -> tuple[set[str], set[str]]:
    schema = contract.resolve(schema)
    return set(schema.get("properties", {})), set(schema.get("required", []))


@pytest.mark.parametrize("name", sorted(BODIES))
def test_api_openapi_request_bodies_match_the_structs(name: str, contract: Contract) -> None:
    documented = contract.doc["components"]["schemas"][name]
    assert documented.get("additionalProperties") is False, "unknown fields are refused: say so"
    generated = msgspec.json.schema(BODIES[name])
    generated = generated["$defs"][generated["$ref"].rsplit("/", 1)[1]]
    assert _properties(documented, contract) == (
        set(generated["properties"]),
        set(generated.get("required", [])),
    )


@pytest.mark.parametrize("path", sorted(QUERIES))
def test_api_openapi_query_parameters_match_the_structs(path: str, contract: Contract) -> None:
    operation = contract.doc["paths"][path]["get"]
    names = {contract.resolve(p)["name"] for p in operation["parameters"]}
    assert names == set(QUERIES[path].__struct_encode_fields__)  # as sent: `from`, not `from_`


def test_api_openapi_every_operation_documents_its_errors(contract: Contract) -> None:
    for method, path in contract.operations():
        if path == "/openapi.json":
            continue
        responses = contract.doc["paths"][path][method.lower()]["responses"]
        assert "401" in responses, (method, path)
        if method in ("POST", "PATCH"):
            assert {"400", "403"} <= set(responses), (method, path)


def test_api_openapi_contract_catches_a_wrong_answer(contract: Contract) -> None:
    # The oracle itself: a person without its e-mail field, and a naive time, are refused.
    person = {
        "id": 1,
        "name": "A",
        "site": "nord",
        "roles": [],
        "cohort": None,
        "programme": None,
        "language": "de",
        "external_id": None,
        "active": True,
        "created_at": "2026-01-01T00:00:00Z",
    }
    with pytest.raises(AssertionError, match="email"):
        contract.check("GET", "/people/1", 200, person)
    with pytest.raises(AssertionError, match=r"is not a .date-time"):
        contract.check(
            "GET", "/people/1", 200, {**person, "email": None, "created_at": "2026-01-01T00:00:00"}
        )
    with pytest.raises(AssertionError, match="not documented"):
        contract.check("GET", "/machines", 409, {"error": {"code": "x", "message": "y", "fields": {}}})
    contract.check("GET", "/people/1", 200, {**person, "email": None})
