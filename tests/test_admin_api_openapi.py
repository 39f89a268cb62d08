"""The admin API's OpenAPI document: served without a token, valid (openapi-spec-validator), the same
endpoints and methods as the route table, and every operation in it exercised by a test."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from admin_api_support import API, admin_api
from openapi_spec_validator import validate

from b3lb.admin import api
from b3lb.admin.api_core import EndpointHandler, NotFoundHandler
from b3lb.admin.openapi import OPENAPI_PATH, OpenApiHandler, build_document

TESTS = Path(__file__).resolve().parent
METHODS = ("get", "post", "put", "patch", "delete")


def example(path: str) -> str:
    """A concrete path for a template: every {parameter} becomes `x-1`."""
    return re.sub(r"\{\w+\}", "x-1", path)


@pytest.mark.gen_test(timeout=60)
async def test_the_document_is_served_without_a_token_and_is_valid(db_url):
    async with admin_api(db_url) as admin:
        response = await admin.raw("GET", "/openapi.json", token=None)
        assert response.code == 200 and response.headers["Content-Type"] == "application/json"
        document = orjson.loads(response.body)
        validate(document)  # raises on an invalid OpenAPI 3.1 document
        assert document["openapi"].startswith("3.") and document["servers"] == [{"url": API}]
        assert document["paths"][OPENAPI_PATH]["get"]["security"] == []
        # The document opens nothing: the operations it lists still need a token.
        assert (await admin.raw("GET", "/clusters", token=None)).code == 401


def test_every_route_is_in_the_document_and_every_documented_operation_is_routed() -> None:
    document = build_document(api.ENDPOINTS)
    documented = {path: {m.upper() for m in item if m in METHODS} for path, item in document["paths"].items()}
    routed: dict[str, set[str]] = {}
    for pattern, handler, extra in api.ROUTES:
        if handler is NotFoundHandler:
            continue
        matches = [path for path in documented if re.fullmatch(pattern, API + example(path))]
        assert len(matches) == 1, (pattern, matches)
        if handler is OpenApiHandler:
            routed[matches[0]] = {"GET"}
        else:
            assert handler is EndpointHandler
            routed[matches[0]] = {op.method for op in extra["endpoint"].operations}
    assert routed == documented
    # The catch-all is last, so that it answers only what nothing else does.
    assert api.ROUTES[-1][1] is NotFoundHandler
    for path in documented:
        owners = [p for p, h, _ in api.ROUTES if re.fullmatch(p, API + example(path))]
        assert len(owners) == 2 and re.fullmatch(api.ROUTES[-1][0], API + example(path)), path


def test_every_documented_operation_names_its_scope_errors_and_body_fields() -> None:
    document = build_document(api.ENDPOINTS)
    ids = set()
    for path, item in document["paths"].items():
        for op in item.values():
            ids.add(op["operationId"])
            if path == OPENAPI_PATH:
                continue
            assert "scope" in op["description"] and {"400", "401", "403", "404", "409"} <= set(op["responses"])
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                assert body["schema"]["additionalProperties"] is False and body["schema"]["properties"], path
    assert len(ids) == sum(len(item) for item in document["paths"].values())  # operationIds are unique


def test_every_documented_operation_has_a_test() -> None:
    """Each (method, path) appears in a request of some tests/test_admin_api*.py file."""
    sources = "\n".join(p.read_text() for p in TESTS.glob("test_admin_api*.py") if p.name != Path(__file__).name)
    sources += Path(__file__).read_text().split("def test_every_documented_operation_has_a_test")[0]
    missing = []
    for path, item in build_document(api.ENDPOINTS)["paths"].items():
        template = re.escape(path).replace(r"\{", "{").replace(r"\}", "}")
        pattern = re.sub(r"\{\w+\}", r'[^/"?]+', template)
        for method in item:
            wanted = re.compile(rf'"{method.upper()}", f?"{pattern}[?"]')
            if not wanted.search(sources):
                missing.append(f"{method.upper()} {path}")
    assert missing == []
