"""Every operation of the admin API's endpoint table (b3lb/admin/api.py ENDPOINTS), driven from the table
itself: a fleet operation answers 403 to a tenant-scoped admin token, a write operation 403 to a
read token, and neither writes anything (no change in any table, no audit row) even though each
request is one that a fleet admin token would carry out."""

from __future__ import annotations

import re
from typing import Any

import pytest
from admin_api_support import Admin, admin_api
from api_helpers import create_ok

from b3lb.admin.api import ENDPOINTS
from b3lb.admin.api_core import Endpoint, Operation

SET_NONCE, SET_PUBLIC = "11111111-1111-4111-8111-111111111111", "a1111111-1111-4111-8111-111111111111"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
# Path parameters per resource (the first path segment); {id} of /parameters is filled in at run time.
PATH_VALUES: dict[str, dict[str, str]] = {
    "clusters": {"name": "main"},
    "clustergroups": {"name": "all", "cluster": "main"},
    "nodes": {"cluster": "main", "slug": "fake-0001"},
    "recordprofiles": {"name": "hd"},
    "tenants": {"slug": "ABC"},
    "secrets": {"label": "ABC"},
    "assets": {"tenant": "ABC", "kind": "logo"},
    "recordings": {"id": SET_PUBLIC},
    "tokens": {"name": "writer"},
}
# A request each operation that needs more than read scope (the writes, and listing tokens) would carry out
# for a fleet admin token (None: no body).
WRITES: dict[tuple[str, str], Any] = {
    ("POST", "/clusters"): {"name": "c2"},
    ("PATCH", "/clusters/{name}"): {"m_factor": 2},
    ("DELETE", "/clusters/{name}"): None,
    ("POST", "/clusters/{name}/maintenance"): {"on": True},
    ("POST", "/clustergroups"): {"name": "g2"},
    ("DELETE", "/clustergroups/{name}"): None,
    ("POST", "/clustergroups/{name}/clusters/{cluster}"): None,
    ("DELETE", "/clustergroups/{name}/clusters/{cluster}"): None,
    ("POST", "/nodes"): {"cluster": "main", "slug": "n9", "domain": "n9.example.org", "secret": "s3"},
    ("PATCH", "/nodes/{cluster}/{slug}"): {"load_endpoint": "b3lb/load"},
    ("DELETE", "/nodes/{cluster}/{slug}"): None,
    ("POST", "/nodes/{cluster}/{slug}/maintenance"): {"on": True},
    ("POST", "/nodes/{cluster}/{slug}/drain"): None,
    ("POST", "/nodes/{cluster}/{slug}/panic"): None,
    ("POST", "/recordprofiles"): {"name": "p2"},
    ("DELETE", "/recordprofiles/{name}"): None,
    ("POST", "/recordprofiles/{name}/link"): {"tenant": "ABC"},
    ("POST", "/recordprofiles/{name}/unlink"): {"secret": "ABC"},
    ("POST", "/tenants"): {"slug": "NEW", "cluster_group": "all"},
    ("PATCH", "/tenants/{slug}"): {"hold_time_days": 3},
    ("DELETE", "/tenants/{slug}"): None,
    ("POST", "/secrets"): {"tenant": "ABC", "sub_id": 1},
    ("PATCH", "/secrets/{label}"): {"hold_time_days": 3},
    ("DELETE", "/secrets/{label}"): None,
    ("POST", "/secrets/{label}/rotate"): None,
    ("POST", "/parameters"): {"tenant": "ABC", "for": "CREATE", "mode": "BLOCK", "name": "muteOnStart"},
    ("DELETE", "/parameters/{id}"): None,
    ("PUT", "/assets/{tenant}/{kind}"): PNG,
    ("DELETE", "/assets/{tenant}/{kind}"): None,
    ("POST", "/meetings/end"): {"meeting_id": "room"},
    ("DELETE", "/recordings/{id}"): None,
    ("POST", "/recordings/{id}/rerender"): None,
    ("GET", "/tokens"): None,
    ("POST", "/tokens"): {"name": "t2", "scope": "read"},
    ("POST", "/tokens/{name}/expire"): {"days": 0},
    ("POST", "/tokens/{name}/revoke"): None,
}
# What any write would change; admin_token without last_used_at (every authentication touches it).
SNAPSHOT = [
    "SELECT * FROM cluster", "SELECT * FROM cluster_group", "SELECT * FROM cluster_group_relation",
    "SELECT * FROM node", "SELECT * FROM tenant", "SELECT * FROM secret", "SELECT * FROM parameter",
    "SELECT * FROM asset", "SELECT * FROM record_profile", "SELECT * FROM record_set", "SELECT * FROM render_job",
    "SELECT * FROM meeting", "SELECT name, scope, tenant_id, expires_at, revoked_at FROM admin_token",
    "SELECT * FROM admin_audit",
]


def operations() -> list[tuple[Endpoint, Operation]]:
    return [(endpoint, op) for endpoint in ENDPOINTS for op in endpoint.operations]


def concrete(endpoint: Endpoint, extra: dict[str, str]) -> str:
    values = {**PATH_VALUES.get(endpoint.path.split("/")[1], {}), **extra}
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], endpoint.path)


async def snapshot(api: Admin) -> list[list[str]]:
    return [sorted(str(tuple(row)) for row in await api.pool.fetch(query)) for query in SNAPSHOT]


async def send(api: Admin, method: str, path: str, template: str, token: str) -> tuple[int, Any]:
    body = WRITES.get((method, template))
    if isinstance(body, bytes):
        response = await api.raw(method, path + "?name=l.png", token=token, body=body)
        return response.code, response.body
    return await api.call(method, path, body, token=token)


def test_the_table_names_a_request_for_every_write() -> None:
    writes = {(op.method, endpoint.path) for endpoint, op in operations() if op.scope != "read"}
    assert writes == set(WRITES)


@pytest.mark.gen_test(timeout=120)
async def test_fleet_operations_refuse_tenant_tokens_and_writes_refuse_read_tokens(db_url):
    async with admin_api(db_url, nodes=2) as api:
        await create_ok(api.h, "room")
        await api.ok("POST", "/recordprofiles", {"name": "hd"}, status=201)
        (rule,) = await api.ok("POST", "/parameters", {"tenant": "ABC", "for": "JOIN", "mode": "BLOCK",
                                                       "name": "role"}, status=201)
        await api.pool.execute(
            "INSERT INTO record_set (id, nonce, public_id, secret_id, meeting_id, tenant_slug, status) "
            "SELECT $1::text, $1::text::uuid, $2::uuid, s.id, 'room', 'ABC', 'UPLOADED' FROM secret s "
            "JOIN tenant t ON t.id = s.tenant_id WHERE t.slug = 'ABC' AND s.sub_id = 0", SET_NONCE, SET_PUBLIC)
        await api.pool.execute("DELETE FROM admin_audit")
        before = await snapshot(api)
        checked = {"fleet": 0, "write": 0}
        for endpoint, op in operations():
            path = concrete(endpoint, {"id": str(rule["id"])} if endpoint.path.startswith("/parameters") else {})
            cases = [("abc-admin", "fleet")] if op.fleet else []
            cases += [("reader", "write")] if op.scope != "read" else []
            for token, kind in cases:
                code, answer = await send(api, op.method, path, endpoint.path, token)
                assert code == 403, (token, op.method, path, answer)
                checked[kind] += 1
        assert await snapshot(api) == before  # no table changed, no audit row
        assert "room" in {m for node in api.h.fleet.nodes for m in node.meetings}  # nothing ended on a node
        fleet = sum(op.fleet for _, op in operations())
        writes = sum(op.scope != "read" for _, op in operations())
        assert checked == {"fleet": fleet, "write": writes} and fleet >= 20 and writes >= 30


@pytest.mark.gen_test(timeout=120)
async def test_the_same_requests_work_for_a_fleet_token(db_url):
    """The table's requests are real ones: with a fleet admin token every write answers 2xx or, where the
    data forbid it (a cluster with nodes, a tenant with secrets...), a 4xx that is not 403."""
    async with admin_api(db_url, nodes=2, cache_refresh_interval=0.1) as api:
        await create_ok(api.h, "room")
        await api.ok("POST", "/recordprofiles", {"name": "hd"}, status=201)
        (rule,) = await api.ok("POST", "/parameters", {"tenant": "ABC", "for": "JOIN", "mode": "BLOCK",
                                                       "name": "role"}, status=201)
        done = 0
        for endpoint, op in operations():
            if op.scope == "read" or endpoint.path.endswith("/panic"):  # a panic ends "room": checked elsewhere
                continue
            path = concrete(endpoint, {"id": str(rule["id"])} if endpoint.path.startswith("/parameters") else {})
            code, answer = await send(api, op.method, path, endpoint.path, "admin")
            assert code != 403 and code < 500, (op.method, path, answer)
            done += 200 <= code < 300
        assert done >= 20
