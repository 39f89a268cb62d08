"""Admin API access: tokens (401/403), tenant secrets and admin tokens kept apart, the audit log,
and the shape of errors (bad fields, unknown routes, wrong methods), against the real app."""

from __future__ import annotations

import orjson
import pytest
from admin_api_support import API, admin_api
from api_helpers import xml
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from b3lb.admin import tokens
from b3lb.admin.api_core import Call, Endpoint, EndpointHandler, Operation
from b3lb.admin.common import AdminError, NotFound, Row


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
        await api.ok("PATCH", "/tenants/ABC", {"hold_time_days": 5}, token="abc")
        (group,) = await api.audit_rows("clustergroup.add")
        assert group == {"actor": "token:writer", "tenant": None, "action": "clustergroup.add", "target": "second",
                         "detail": {"name": "second"}}
        (tenant,) = await api.audit_rows("tenant.set")
        assert (tenant["actor"], tenant["tenant"], tenant["detail"]) == ("token:abc", "ABC", {"hold_time_days": 5})
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


@pytest.mark.gen_test(timeout=60)
async def test_every_answer_forbids_sniffing_and_framing(db_url):
    async with admin_api(db_url) as api:
        answers = [await api.raw("GET", "/clusters"), await api.raw("GET", "/clusters", token=None),
                   await api.raw("GET", "/clusters", token="abc"), await api.raw("GET", "/nope"),
                   await api.raw("DELETE", "/clusters"), await api.raw("GET", "/clusters?x=1"),
                   await api.raw("GET", "/openapi.json", token=None), await api.raw("POST", "/clusters", body=b"{")]
        assert [r.code for r in answers] == [200, 401, 403, 404, 405, 400, 200, 400]
        for r in answers:
            assert r.headers["X-Content-Type-Options"] == "nosniff", r.code
            assert r.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'", r.code
        await api.pool.close()
        r = await api.raw("GET", "/clusters")
        assert r.code == 503 and r.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test(timeout=60)
async def test_a_write_that_changes_nothing_or_sends_a_stray_body_is_refused(db_url):
    async with admin_api(db_url) as api:
        for path in ("/tenants/ABC", "/secrets/ABC", "/clusters/main", "/nodes/main/fake-0001"):
            message = await api.error(400, "PATCH", path, {}, field="settings")
            assert "nothing to change" in message, message
        # Operations without a declared body take none (empty, or an empty object), like unknown fields.
        await api.error(400, "POST", "/secrets/ABC/rotate", {"force": True}, field="force")
        await api.error(400, "DELETE", "/clustergroups/all/clusters/main", {"x": 1}, field="x")
        r = await api.raw("POST", "/secrets/ABC/rotate", body=b"rotate please")
        assert r.code == 400 and orjson.loads(r.body)["field"] == "body", r.body
        assert await api.audit_rows() == []
        await api.ok("POST", "/secrets/ABC/rotate", {})
        await api.ok("POST", "/secrets/ABC/rotate")
        assert [r["action"] for r in await api.audit_rows()] == ["secret.rotate", "secret.rotate"]


@pytest.mark.gen_test(timeout=60)
async def test_missing_resources_are_404_by_their_error_type_not_their_wording(db_url):
    """NotFound is 404 whatever its message says (a node removed while a panic ran, say); any other
    AdminError is 409 even when its message starts with 'no '."""

    async def gone(call: Call) -> list[Row]:
        raise NotFound("node main/fake-0001 was removed meanwhile")

    async def refused(call: Call) -> list[Row]:
        raise AdminError("no more room on this node")

    endpoints = [Endpoint("/probe/gone", (Operation("POST", "gone", gone, "write", True),)),
                 Endpoint("/probe/refused", (Operation("POST", "refused", refused, "write", True),))]
    async with admin_api(db_url) as api:
        app = Application([(e.pattern, EndpointHandler, {"runtime": api.h.runtime, "endpoint": e}) for e in endpoints])
        sock, port = bind_unused_port()
        server = HTTPServer(app)
        server.add_sockets([sock])
        try:
            for name, status in (("gone", 404), ("refused", 409)):
                r = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}{API}/probe/{name}", method="POST", body=b"",
                                                  headers={"Authorization": f"Bearer {api.tokens['admin']}"},
                                                  raise_error=False)
                assert r.code == status, (name, r.body)
        finally:
            server.stop()
        # The look-ups of the operations raise it: a missing node, profile, secret, token, rule, set.
        for method, path, body in (("GET", "/nodes/main/nope", None), ("POST", "/recordprofiles/nope/link",
                                   {"tenant": "ABC"}), ("PATCH", "/secrets/ABC-009", {"hold_time_days": 1}),
                                   ("POST", "/tokens/nobody/revoke", None), ("DELETE", "/parameters/99", None),
                                   ("DELETE", "/recordings/a1111111-1111-4111-8111-111111111111", None)):
            await api.error(404, method, path, body)
