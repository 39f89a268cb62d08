"""Admin API access: tokens (401/403), tenant secrets and admin tokens kept apart, the audit log,
and the shape of errors (bad fields, unknown routes, wrong methods), against the real app."""

from __future__ import annotations

import orjson
import pytest
from admin_api_support import API, admin_api
from api_helpers import xml

from b3lb.admin import tokens


@pytest.mark.gen_test(timeout=60)
async def test_missing_unknown_expired_and_revoked_tokens_get_401(db_url):
    async with admin_api(db_url) as api:
        for token in (None, "Bearer b3lb_" + "A" * 43, "Bearer ", "Basic YWRtaW46YWRtaW4=", "Bearer " + "x" * 5000,
                      "admin"):  # the last one: the name of a token is not the token
            response = await api.raw("GET", "/clusters", token=token if token != "admin" else "Bearer admin")
            assert response.code == 401, (token, response.body)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            answer = orjson.loads(response.body)
            assert answer["error"] == "unauthorized" and "Bearer" in answer["message"]
        assert (await api.call("GET", "/clusters"))[0] == 200
        async with api.pool.acquire() as conn:
            await tokens.token_expire(conn, "admin")
            await tokens.token_revoke(conn, "writer")
        await api.error(401, "GET", "/clusters")
        await api.error(401, "POST", "/clustergroups", {"name": "g2"}, token="writer")
        assert await api.count("cluster_group") == 1
        # The answer never tells why (unknown, expired or revoked look alike).
        assert await api.error(401, "GET", "/tenants") == await api.error(401, "GET", "/tenants", token="writer")
        assert (await api.call("GET", "/tenants", token="reader"))[0] == 200


@pytest.mark.gen_test(timeout=60)
async def test_tenant_api_secrets_never_open_the_admin_api(db_url):
    async with admin_api(db_url) as api:
        secret = api.h.secret("ABC")
        for value in (f"Bearer {secret}", secret, f"Bearer b3lb_{secret}"):
            await api.error(401, "GET", "/tenants/ABC", token=value if " " in value else f"Token {value}")
            response = await api.raw("GET", "/secrets", token=value if " " in value else f"Bearer {value}")
            assert response.code == 401, response.body
        # The stats token neither.
        stats = await api.pool.fetchval("SELECT stats_token FROM tenant WHERE slug = 'ABC'")
        await api.error(401, "GET", "/tenants", token=f"Bearer {stats}")


@pytest.mark.gen_test(timeout=60)
async def test_admin_tokens_never_pass_as_tenant_secrets(db_url):
    async with admin_api(db_url) as api:
        for name in ("admin", "abc-admin"):
            token = api.tokens[name]
            for call, query in (("getMeetings", ""), ("create", "meetingID=m1&name=Room")):
                for path_style in (False, True):
                    r = await api.h.call(call, query, secret=token, path_style=path_style)
                    assert xml(r).findtext("messageKey") == "checksumError", r.body
        assert await api.count("meeting") == 0


@pytest.mark.gen_test(timeout=60)
async def test_too_little_scope_gets_403_and_writes_nothing(db_url):
    async with admin_api(db_url) as api:
        message = await api.error(403, "POST", "/clustergroups", {"name": "g2"}, token="reader")
        assert "write scope" in message and "'reader'" in message
        await api.error(403, "POST", "/secrets/ABC/rotate", token="abc-reader")
        await api.error(403, "GET", "/tokens", token="writer")  # token management needs admin scope
        await api.error(403, "POST", "/tokens", {"name": "x", "scope": "admin"}, token="writer")
        # Fleet resources are closed to tenant-scoped tokens, whatever their scope.
        for path in ("/clusters", "/clustergroups", "/nodes", "/recordprofiles", "/tokens"):
            assert "tenant ABC" in await api.error(403, "GET", path, token="abc-admin")
        await api.error(403, "POST", "/tenants", {"slug": "NEW", "cluster_group": "all"}, token="abc-admin")
        await api.error(403, "DELETE", "/tenants/ABC", token="abc-admin")
        assert await api.count("cluster_group") == 1 and await api.count("tenant") == 2
        assert await api.count("admin_token") == 6 and await api.audit_rows() == []


@pytest.mark.gen_test(timeout=60)
async def test_writes_are_audited_with_the_token_name(db_url):
    async with admin_api(db_url) as api:
        await api.ok("POST", "/clustergroups", {"name": "second"}, token="writer", status=201)
        await api.ok("PATCH", "/tenants/ABC", {"meeting_limit": 5}, token="abc")
        (group,) = await api.audit_rows("clustergroup.add")
        assert group == {"actor": "token:writer", "tenant": None, "action": "clustergroup.add", "target": "second",
                         "detail": {"name": "second"}}
        (tenant,) = await api.audit_rows("tenant.set")
        assert tenant["actor"] == "token:abc" and tenant["tenant"] == "ABC" and tenant["detail"] == {"meeting_limit": 5}
        # Reads are not logged; failed writes neither.
        await api.ok("GET", "/clustergroups")
        await api.error(409, "POST", "/clustergroups", {"name": "second"})
        assert len(await api.audit_rows()) == 2


@pytest.mark.gen_test(timeout=60)
async def test_a_bad_field_is_a_400_naming_it_and_nothing_is_written(db_url):
    async with admin_api(db_url) as api:
        before = await api.count("cluster")
        cases = [
            ({"name": "c2", "a_factor": -1}, "a_factor"),
            ({"name": "c2", "cpu_iterations": "6"}, "cpu_iterations"),  # JSON type
            ({"name": "c2", "cpu_iterations": True}, "cpu_iterations"),
            ({"name": "c2", "sha": "MD5"}, "sha"),
            ({"name": "c2", "colour": "red"}, "colour"),  # unknown field
            ({"a_factor": 1.0}, "name"),  # required
            ({"name": "c\x00"}, "name"),
        ]
        for body, field in cases:
            message = await api.error(400, "POST", "/clusters", body, field=field)
            assert message.startswith(f"{field}: "), message
        assert await api.count("cluster") == before and await api.audit_rows() == []
        for raw, field in ((b"[1, 2]", "body"), (b"{not json", "body"), (b'"text"', "body")):
            response = await api.raw("POST", "/clusters", body=raw)
            assert response.code == 400 and orjson.loads(response.body)["field"] == field, response.body
        response = await api.raw("POST", "/clusters", body=b'{"name": "' + b"x" * 70_000 + b'"}')
        assert response.code == 413 and orjson.loads(response.body)["error"] == "too_large"
        await api.error(400, "GET", "/clusters?colour=red", field="colour")
        # Values PostgreSQL cannot hold never reach it: 400 naming the field, not a 500.
        await api.error(400, "PATCH", "/clusters/a%00b", {"m_factor": 1}, field="name")
        await api.error(400, "GET", "/nodes?cluster=a%00b", field="cluster")
        await api.error(400, "POST", "/nodes", {"cluster": "a\u0000", "slug": "s", "domain": "d.example",
                                                "secret": "x"}, field="cluster")
        await api.error(400, "DELETE", "/clusters/" + "x" * 301, field="name")
        assert await api.count("cluster") == before and await api.audit_rows() == []


@pytest.mark.gen_test(timeout=60)
async def test_unknown_routes_and_wrong_methods_answer_json(db_url):
    async with admin_api(db_url) as api:
        assert "openapi.json" in await api.error(404, "GET", "/nope")
        await api.error(404, "GET", "", token=None)
        await api.error(404, "GET", "/clusters/main/extra/parts")
        response = await api.raw("DELETE", "/clusters")
        assert response.code == 405 and response.headers["Allow"] == "GET, POST", response.body
        assert orjson.loads(response.body)["error"] == "method_not_allowed"
        for method in ("OPTIONS", "HEAD"):
            response = await api.raw(method, "/nodes")
            assert response.code == 405 and response.headers["Allow"] == "GET, POST"
        response = await api.raw("POST", "/openapi.json", token=None)
        assert response.code == 405 and response.headers["Allow"] == "GET"
        # Nothing outside the API prefix changed: the BBB API still answers XML.
        r = await api.h.request("/bigbluebutton/api/")
        assert r.code == 200 and xml(r).findtext("returncode") == "SUCCESS"
        assert (await api.h.request(f"{API}/clusters", method="GET")).code == 401


@pytest.mark.gen_test(timeout=60)
async def test_a_database_outage_answers_503_in_json(db_url):
    async with admin_api(db_url) as api:
        await api.pool.close()  # every query now fails as during an outage
        response = await api.raw("GET", "/clusters")
        assert response.code == 503 and response.headers["Retry-After"] == "5", response.body
        assert orjson.loads(response.body) == {"error": "unavailable", "message": "the database is unavailable"}
