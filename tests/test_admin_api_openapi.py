"""The admin API's OpenAPI document: served without a token, valid (openapi-spec-validator), the same
endpoints and methods as the route table (the dashboard's event stream included). That every documented
operation answers 2xx in a test is checked by tests/test_admin_api_walk.py."""

from __future__ import annotations

import re

import orjson
import pytest
from admin_api_support import API, admin_api
from openapi_spec_validator import validate

from b3lb.admin import api
from b3lb.admin import events as admin_events
from b3lb.admin.api_core import EndpointHandler, NotFoundHandler
from b3lb.admin.openapi import EVENTS_PATH, OPENAPI_PATH, OpenApiHandler, build_document

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
    assert API + EVENTS_PATH == admin_events.EVENTS_PATH
    (events,) = admin_events.routes(None, None)  # type: ignore[arg-type] - only the pattern is used
    for pattern, handler, extra in [*api.ROUTES, events]:
        if handler is NotFoundHandler:
            continue
        matches = [path for path in documented if re.fullmatch(pattern, API + example(path))]
        assert len(matches) == 1, (pattern, matches)
        if handler in (OpenApiHandler, admin_events.EventsHandler):
            routed[matches[0]] = {"GET"}
        else:
            assert handler is EndpointHandler
            routed[matches[0]] = {op.method for op in extra["endpoint"].operations}
    assert routed == documented
    # The catch-all is last, so that it answers only what nothing else does.
    assert api.ROUTES[-1][1] is NotFoundHandler
    for path in set(documented) - {EVENTS_PATH}:  # the stream's route comes before the API's in b3lb/app.py
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
            if path == EVENTS_PATH:
                assert "read scope" in op["description"] and "401" in op["responses"]
                assert list(op["responses"]["200"]["content"]) == ["text/event-stream"]
                continue
            assert "scope" in op["description"] and {"400", "401", "403", "404", "409"} <= set(op["responses"])
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                assert body["schema"]["additionalProperties"] is False and body["schema"]["properties"], path
    assert len(ids) == sum(len(item) for item in document["paths"].values())  # operationIds are unique
