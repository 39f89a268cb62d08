"""The admin HTTP API under /b3lb/admin/api/v1/: its route table, from the endpoint tables of
b3lb/admin/api_fleet.py (clusters, groups, nodes, profiles), api_tenants.py (tenants, secrets,
rules, assets) and api_activity.py (meetings, recordings, tokens, audit). The machinery (tokens,
JSON, errors, one transaction per write with its audit row) is in b3lb/admin/api_core.py; the
OpenAPI document, made from the same tables, in b3lb/admin/openapi.py.
"""

from __future__ import annotations

from typing import Any

from b3lb.admin import api_activity, api_fleet, api_tenants
from b3lb.admin.api_core import PREFIX, AdminApiHandler, Endpoint, EndpointHandler, NotFoundHandler
from b3lb.admin.openapi import OPENAPI_PATH, OpenApiHandler

__all__ = ["AdminApiHandler", "ENDPOINTS", "ROUTES", "routes"]

ENDPOINTS: tuple[Endpoint, ...] = (*api_fleet.ENDPOINTS, *api_tenants.ENDPOINTS, *api_activity.ENDPOINTS)

# (pattern, handler, arguments besides the runtime); the catch-all comes last.
ROUTES: list[tuple[str, type[AdminApiHandler], dict[str, Any]]] = [
    (PREFIX + OPENAPI_PATH, OpenApiHandler, {"endpoints": ENDPOINTS}),
    *((endpoint.pattern, EndpointHandler, {"endpoint": endpoint}) for endpoint in ENDPOINTS),
    (PREFIX + r"(?:/.*)?", NotFoundHandler, {}),
]


def routes(runtime: Any) -> list[tuple[str, type[AdminApiHandler], dict[str, Any]]]:
    """ROUTES with the runtime every handler gets, for b3lb/app.py's route table."""
    return [(pattern, handler, {"runtime": runtime, **extra}) for pattern, handler, extra in ROUTES]
