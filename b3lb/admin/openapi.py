"""The OpenAPI 3.1 document of the admin API, made from the endpoint tables the routes are made
from (b3lb/admin/api.py ENDPOINTS), so the two cannot drift apart. Served without a token at
/b3lb/admin/api/v1/openapi.json; tests/test_admin_api_openapi.py validates it with
openapi-spec-validator and checks it against the route table.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from b3lb.admin.api_core import PREFIX, AdminApiHandler, Endpoint, Operation

OPENAPI_PATH = "/openapi.json"
_ERROR = {"$ref": "#/components/schemas/Error"}
# The dashboard's server-sent events, served by b3lb/admin/events.py (its EVENTS_PATH), outside the
# endpoint tables; described here so that the document covers every path under the prefix.
EVENTS_PATH = "/events"
EVENTS = {
    "operationId": "get_events",
    "summary": "The dashboard's live data as server-sent events",
    "description": (
        "Needs a token with read scope. A `text/event-stream` that stays open: `hello` once (the token's "
        "name, scope, tenant, whether its buttons work), `history` (per-cluster load over the last hour; "
        "fleet tokens only), `snapshot` every tick (nodes, tenants with usage against limits, the render "
        "queue), `error` while the database does not answer, `unauthorized` when the token was revoked or "
        "expired (the stream ends). A tenant-scoped token sees its own tenant's row only."
    ),
    "tags": ["events"],
    "responses": {
        "200": {"description": "The event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        "401": {"$ref": "#/components/responses/E401"},
        "503": {"description": "Too many streams are open (Retry-After)",
                "content": {"application/json": {"schema": _ERROR}}},
    },
}
_ERRORS = {
    "400": "Bad input: `field` names the field, nothing was written",
    "401": "No token, or an unknown, expired or revoked one",
    "403": "The token's scope is too small, or a tenant-scoped token asked for a fleet resource or sent a "
           "fleet-only field (limits, cluster group; `field` names it)",
    "404": "No such resource (also another tenant's, for a tenant-scoped token)",
    "409": "Not possible with the data as it is (exists already, still in use, ...)",
}
DESCRIPTION = (
    "The b3lb admin API: the operations of the `b3lb` command line over HTTP, with the same validation. "
    "Authenticate with `Authorization: Bearer <token>` (`b3lb token add NAME --scope read|write|admin "
    "[--tenant T]`). Reads need read scope, writes write scope, token management admin scope. A token "
    "scoped to a tenant sees and changes only that tenant; fleet resources and limits answer it 403. Answers are "
    "`{\"data\": ...}`, errors `{\"error\", \"message\", \"field\"}`. Every write is in the audit log "
    "with the token's name."
)


def _operation_id(method: str, path: str) -> str:
    return f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}"


def _body(op: Operation) -> dict[str, Any] | None:
    if op.raw_body:
        return {"required": True, "content": {op.raw_body: {"schema": {"type": "string", "format": "binary"}}}}
    if not op.body:
        return None
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {f.name: f.schema() for f in op.body},
    }
    required = [f.name for f in op.body if f.required]
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


def _operation(endpoint: Endpoint, op: Operation) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "description": text, "schema": {"type": "string"}}
        for name, text in endpoint.params.items()
    ] + [
        {"name": f.name, "in": "query", "required": f.required, "description": f.help, "schema": f.schema()}
        for f in op.query
    ]
    who = f"Needs a token with {op.scope} scope" + (" and no tenant (a fleet resource)." if op.fleet else ".")
    shaped: dict[str, Any] = {
        "operationId": _operation_id(op.method, endpoint.path),
        "summary": op.summary,
        "description": who,
        "tags": [endpoint.path.split("/")[1]],
        "responses": {
            str(op.status): {"description": "Done", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Result"}}}},
            **{code: {"$ref": f"#/components/responses/E{code}"} for code in _ERRORS},
        },
    }
    if parameters:
        shaped["parameters"] = parameters
    body = _body(op)
    if body is not None:
        shaped["requestBody"] = body
    return shaped


def build_document(endpoints: tuple[Endpoint, ...]) -> dict[str, Any]:
    paths: dict[str, Any] = {
        OPENAPI_PATH: {"get": {
            "operationId": "get_openapi", "summary": "This document", "security": [], "tags": ["openapi"],
            "responses": {"200": {"description": "The OpenAPI document", "content": {"application/json": {
                "schema": {"type": "object"}}}}},
        }},
    }
    for endpoint in endpoints:
        paths[endpoint.path] = {op.method.lower(): _operation(endpoint, op) for op in endpoint.operations}
    paths[EVENTS_PATH] = {"get": EVENTS}
    return {
        "openapi": "3.1.0",
        "info": {"title": "b3lb admin API", "version": "1", "description": DESCRIPTION},
        "servers": [{"url": PREFIX}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "a token from 'b3lb token add'"}},
            "schemas": {
                "Result": {"type": "object", "required": ["data"], "properties": {"data": {
                    "description": "the rows (or object) the operation gives, as the CLI's --json shows them"}}},
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"},
                    "field": {"type": "string", "description": "the field a 400 is about"}}},
            },
            "responses": {
                f"E{code}": {"description": text, "content": {"application/json": {"schema": _ERROR}}}
                for code, text in _ERRORS.items()
            },
        },
    }


_DOCUMENTS: dict[int, bytes] = {}


class OpenApiHandler(AdminApiHandler):
    """`GET /b3lb/admin/api/v1/openapi.json`, no token needed (it describes, it opens nothing)."""

    allow = "GET"

    def initialize(self, runtime: Any, endpoints: tuple[Endpoint, ...]) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.endpoints = endpoints

    def get(self) -> None:
        document = _DOCUMENTS.get(id(self.endpoints))
        if document is None:
            document = _DOCUMENTS[id(self.endpoints)] = orjson.dumps(build_document(self.endpoints))
        self.finish(document)
