"""Admin API tenant resources against the real app: tenants, secrets, parameter rules and assets, with
good and bad input, and a token scoped to tenant ABC kept away from tenant XYZ for each of them."""

from __future__ import annotations

import orjson
import pytest
from admin_api_support import Admin, admin_api
from api_helpers import create_ok, owner, pairs, sent, xml


async def secret_row(api: Admin, slug: str, sub_id: int = 0) -> dict:
    row = await api.pool.fetchrow("SELECT s.* FROM secret s JOIN tenant t ON t.id = s.tenant_id "
                                  "WHERE t.slug = $1 AND s.sub_id = $2", slug, sub_id)
    return dict(row) if row is not None else {}


@pytest.mark.gen_test(timeout=60)
async def test_tenants(db_url):
    async with admin_api(db_url) as api:
        assert [t["slug"] for t in await api.ok("GET", "/tenants", token="reader")] == ["ABC", "XYZ"]
        (row,) = await api.ok("POST", "/tenants", {"slug": "new", "cluster_group": "all", "hold_time_days": 30,
                                                   "record_by_default": True}, status=201)
        assert (row["slug"], row["hold_time_days"], row["record_by_default"], row["secrets"]) == ("NEW", 30, True, 0)
        await api.error(409, "POST", "/tenants", {"slug": "NEW", "cluster_group": "all"})
        await api.error(400, "POST", "/tenants", {"slug": "n1", "cluster_group": "all"}, field="slug")
        await api.error(400, "POST", "/tenants", {"slug": "OTHER"}, field="cluster_group")
        await api.error(400, "POST", "/tenants", {"slug": "OTHER", "cluster_group": "all", "attendee_limit": -1},
                        field="attendee_limit")
        await api.error(404, "POST", "/tenants", {"slug": "OTHER", "cluster_group": "nope"})
        shown = await api.ok("GET", "/tenants/new")
        assert shown["slug"] == "NEW" and len(shown["stats_token"]) > 10 and shown["secrets"] == []
        assert (await api.ok("GET", "/tenants/NEW", token="reader"))["stats_token"] is None  # read scope: hidden
        (row,) = await api.ok("PATCH", "/tenants/NEW", {"attendee_limit": 10, "meeting_limit": 2})
        assert (row["attendee_limit"], row["meeting_limit"]) == (10, 2)
        await api.error(400, "PATCH", "/tenants/NEW", {"hold_time_days": 40_000}, field="hold_time_days")
        # curl -d sends a form content type by default: the body is read as JSON all the same.
        r = await api.raw("PATCH", "/tenants/NEW", body=b'{"meeting_limit": 3}',
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.code == 200 and orjson.loads(r.body)["data"][0]["meeting_limit"] == 3, r.body
        await api.error(400, "GET", "/tenants/N3W", field="slug")
        assert await api.ok("DELETE", "/tenants/NEW") == [{"removed": "NEW"}]
        await api.error(404, "GET", "/tenants/NEW")
        assert await api.count("tenant") == 2
        assert [r["action"] for r in await api.audit_rows()] == ["tenant.add", "tenant.set", "tenant.set",
                                                                 "tenant.remove"]


@pytest.mark.gen_test(timeout=60)
async def test_tenant_token_sees_and_changes_only_its_tenant(db_url):
    async with admin_api(db_url) as api:
        before = await api.pool.fetchval("SELECT meeting_limit FROM tenant WHERE slug = 'XYZ'")
        assert [t["slug"] for t in await api.ok("GET", "/tenants", token="abc")] == ["ABC"]
        assert await api.error(404, "GET", "/tenants/XYZ", token="abc") == "no tenant 'XYZ'"
        assert await api.error(404, "GET", "/tenants/NOPE", token="abc") == "no tenant 'NOPE'"
        await api.error(404, "PATCH", "/tenants/xyz", {"hold_time_days": 1}, token="abc")
        await api.error(403, "PATCH", "/tenants/ABC", {"cluster_group": "all"}, token="abc")
        (row,) = await api.ok("PATCH", "/tenants/ABC", {"hold_time_days": 3}, token="abc")
        assert row["hold_time_days"] == 3
        limits = await api.pool.fetch("SELECT slug, meeting_limit, hold_time_days FROM tenant ORDER BY slug")
        assert [tuple(r) for r in limits] == [("ABC", before, 3), ("XYZ", before, 14)]


@pytest.mark.gen_test(timeout=60)
async def test_secrets(db_url):
    async with admin_api(db_url) as api:
        rows = await api.ok("POST", "/secrets", {"tenant": "ABC", "sub_id": "1-3", "attendee_limit": 5,
                                                 "description": "LMS"}, status=201)
        assert [(r["label"], r["attendee_limit"], r["description"]) for r in rows] == [
            ("ABC-001", 5, "LMS"), ("ABC-002", 5, "LMS"), ("ABC-003", 5, "LMS")]
        assert all(len(r["secret"]) == 64 for r in rows)
        assert "nothing created" in await api.error(409, "POST", "/secrets", {"tenant": "ABC", "sub_id": "3-4"})
        await api.error(400, "POST", "/secrets", {"tenant": "ABC", "sub_id": 1000}, field="sub_id")
        await api.error(400, "POST", "/secrets", {"tenant": "ABC", "sub_id": "3-1"}, field="sub_id")
        await api.error(400, "POST", "/secrets", {"tenant": "ABC", "sub_id": 4, "hold_time_days": -1},
                        field="hold_time_days")
        assert await api.count("secret") == 5
        listed = await api.ok("GET", "/secrets?tenant=ABC", token="reader")
        assert [r["label"] for r in listed] == ["ABC", "ABC-001", "ABC-002", "ABC-003"]
        assert {r["secret"] for r in listed} == {None}  # read scope sees no secret values
        (row,) = await api.ok("PATCH", "/secrets/ABC-001", {"attendee_limit": 7, "record_by_default": True,
                                                            "hold_time_days": 3, "meeting_limit": 2})
        assert (row["attendee_limit"], row["meeting_limit"], row["record_by_default"], row["hold_time_days"]) == (
            7, 2, True, 3)
        (row,) = await api.ok("PATCH", "/secrets/ABC-1", {"attendee_limit": None, "record_by_default": None})
        assert (row["attendee_limit"], row["meeting_limit"], row["record_by_default"]) == (None, 2, None)
        assert row["description"] == "LMS"
        (row,) = await api.ok("PATCH", "/secrets/ABC-1", {"description": "  Moodle production  "})
        assert (row["description"], row["meeting_limit"]) == ("Moodle production", 2)  # others kept
        for bad in ("line\nbreak", "bell\x07", "x" * 201, "bidi\u202e"):
            await api.error(400, "PATCH", "/secrets/ABC-1", {"description": bad}, field="description")
            await api.error(400, "POST", "/secrets", {"tenant": "ABC", "sub_id": 9, "description": bad},
                            field="description")
        await api.error(400, "PATCH", "/secrets/ABC-1", {"description": None}, field="description")
        assert (await secret_row(api, "ABC", 1))["description"] == "Moodle production"
        assert await secret_row(api, "ABC", 9) == {}
        await api.error(400, "PATCH", "/secrets/ABC-001", {}, field="settings")
        await api.error(400, "PATCH", "/secrets/ABC-001", {"hold_time_days": None}, field="hold_time_days")
        await api.error(400, "PATCH", "/secrets/ABC-001", {"meeting_limit": -1}, field="meeting_limit")
        await api.error(400, "PATCH", "/secrets/ABC-1000", {"meeting_limit": 1}, field="label")
        await api.error(404, "PATCH", "/secrets/ABC-009", {"meeting_limit": 1})
        assert await api.ok("DELETE", "/secrets/ABC-003") == [{"removed": "ABC-003"}]
        await api.error(404, "DELETE", "/secrets/ABC-003")
        actions = [r["action"] for r in await api.audit_rows()]
        assert actions == ["secret.add", "secret.set", "secret.set", "secret.set", "secret.remove"]


@pytest.mark.gen_test(timeout=60)
async def test_rotated_and_new_secrets_work_at_once(db_url):
    async with admin_api(db_url) as api:
        old = api.h.secret("ABC")
        (row,) = await api.ok("POST", "/secrets/ABC/rotate", token="abc")
        assert row["secret2"] == old and row["secret"] != old
        # This process uses the new secret at once; the old one stays valid as secret2.
        for secret in (row["secret"], old):
            r = await api.h.call("getMeetings", secret=secret)
            assert xml(r).findtext("returncode") == "SUCCESS", r.body
        (new,) = await api.ok("POST", "/secrets", {"tenant": "XYZ", "sub_id": 5}, status=201)
        r = await api.h.call("getMeetings", slug="XYZ", sub_id=5, secret=new["secret"])
        assert xml(r).findtext("returncode") == "SUCCESS", r.body
        await api.error(404, "POST", "/secrets/ABC-042/rotate")


@pytest.mark.gen_test(timeout=60)
async def test_tenant_token_reaches_only_its_secrets(db_url):
    async with admin_api(db_url) as api:
        xyz = await secret_row(api, "XYZ")
        assert [r["label"] for r in await api.ok("GET", "/secrets", token="abc")] == ["ABC"]
        await api.error(404, "GET", "/secrets?tenant=XYZ", token="abc")
        await api.error(404, "POST", "/secrets", {"tenant": "XYZ", "sub_id": 1}, token="abc")
        await api.error(404, "PATCH", "/secrets/XYZ", {"hold_time_days": 1}, token="abc")
        await api.error(404, "POST", "/secrets/XYZ/rotate", token="abc")
        await api.error(404, "DELETE", "/secrets/XYZ", token="abc")
        assert await secret_row(api, "XYZ") == xyz and await api.count("secret") == 2
        (row,) = await api.ok("POST", "/secrets", {"tenant": "ABC", "sub_id": 1}, token="abc", status=201)
        assert row["label"] == "ABC-001"
        assert (await api.audit_rows("secret.add"))[0]["tenant"] == "ABC"


@pytest.mark.gen_test(timeout=60)
async def test_parameter_rules(db_url):
    async with admin_api(db_url) as api:
        (rule,) = await api.ok("POST", "/parameters", {"tenant": "ABC", "for": "create", "mode": "set",
                                                       "name": "welcome", "value": "Hello"}, status=201)
        assert (rule["owner"], rule["for"], rule["mode"], rule["value"]) == ("ABC", "CREATE", "SET", "Hello")
        await api.ok("POST", "/parameters", {"secret": "ABC", "for": "JOIN", "mode": "BLOCK", "name": "role"},
                     status=201)
        # The rule applies to the next create at once (this process reloaded its tables).
        await create_ok(api.h, "room")
        (request,) = sent(owner(api.h, "room"), "create")
        assert ("welcome", "Hello") in pairs(request)
        bad = {"tenant": "ABC", "for": "CREATE", "mode": "SET", "name": "welcome", "value": "x"}
        for change, field in (({"mode": "OVERRIDE"}, None), ({"value": None}, "value"), ({"for": "X"}, "for"),
                              ({"mode": "KEEP"}, "mode"), ({"for": "JOIN", "mode": "BLOCK", "value": None}, "name"),
                              ({"name": "guestPolicy", "value": "MAYBE"}, "value"), ({"secret": "ABC"}, "tenant"),
                              ({"value": "v" * 201}, "value"), ({"name": 5}, "name"), ({"mode": "BLOCK"}, "value")):
            status = 409 if field is None else 400
            body = {k: v for k, v in {**bad, **change}.items() if v is not None}  # None: the field left out
            message = await api.error(status, "POST", "/parameters", body, field=field)
            assert field is None or message.startswith(f"{field}: "), message
        await api.error(400, "POST", "/parameters", {**bad, "value": None}, field="value")  # null is not text
        assert await api.count("parameter") == 2
        no_tenant = {k: v for k, v in bad.items() if k != "tenant"}
        await api.error(404, "POST", "/parameters", {**no_tenant, "secret": "ABC-009", "name": "record",
                                                     "value": "true"})
        await api.ok("DELETE", f"/parameters/{rule['id']}")
        await api.error(404, "DELETE", f"/parameters/{rule['id']}")
        await api.error(400, "DELETE", "/parameters/first", field="id")
        assert [r["name"] for r in await api.ok("GET", "/parameters?tenant=ABC", token="reader")] == ["role"]


@pytest.mark.gen_test(timeout=60)
async def test_tenant_token_reaches_only_its_parameter_rules(db_url):
    async with admin_api(db_url) as api:
        (theirs,) = await api.ok("POST", "/parameters", {"tenant": "XYZ", "for": "CREATE", "mode": "BLOCK",
                                                         "name": "record"}, status=201)
        rule = {"for": "CREATE", "mode": "BLOCK", "name": "record"}
        await api.error(404, "POST", "/parameters", {**rule, "tenant": "XYZ", "name": "muteOnStart"}, token="abc")
        await api.error(404, "POST", "/parameters", {**rule, "secret": "XYZ"}, token="abc")
        await api.error(404, "DELETE", f"/parameters/{theirs['id']}", token="abc")
        await api.error(404, "GET", "/parameters?tenant=XYZ", token="abc")
        assert await api.ok("GET", "/parameters", token="abc") == []
        (mine,) = await api.ok("POST", "/parameters", {**rule, "tenant": "ABC"}, token="abc", status=201)
        assert [r["id"] for r in await api.ok("GET", "/parameters", token="abc")] == [mine["id"]]
        await api.ok("DELETE", f"/parameters/{mine['id']}", token="abc")
        assert await api.count("parameter") == 1


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.mark.gen_test(timeout=60)
async def test_assets(db_url):
    async with admin_api(db_url) as api:
        r = await api.raw("PUT", "/assets/ABC/logo?name=logo.png", body=PNG, headers={"Content-Type": "image/png"})
        assert r.code == 200, r.body
        assert orjson.loads(r.body)["data"] == [{"tenant": "ABC", "kind": "logo", "file": "logo.png",
                                                 "mime": "image/png", "size": len(PNG)}]
        served = await api.h.request("/b3lb/t/abc/logo")
        assert served.code == 200 and served.body == PNG and served.headers["Content-Type"] == "image/png"
        # served from the dashboard's origin: never a document that may run script there
        assert "sandbox" in served.headers["Content-Security-Policy"]
        assert "default-src 'none'" in served.headers["Content-Security-Policy"]
        assert served.headers["X-Content-Type-Options"] == "nosniff"
        r = await api.raw("PUT", "/assets/ABC/css?name=style.txt", body=b"body { color: red }")
        assert orjson.loads(r.body)["data"][0]["mime"] == "text/css"
        for path, body, field in (("/assets/ABC/slide?name=empty.pdf", b"", "body"),
                                  ("/assets/ABC/slide", b"x", "name"),
                                  ("/assets/ABC/banner?name=b.png", PNG, "kind"),
                                  ("/assets/ABC/slide?name=a%0Ab.pdf", b"x", "name"),
                                  ("/assets/ABC/slide?name=a%01b.pdf", b"x", "name"),
                                  ("/assets/ABC/slide?name=%FF.pdf", b"x", "name"),
                                  ("/assets/A1/logo?name=l.png", PNG, "tenant")):
            r = await api.raw("PUT", path, body=body)
            assert r.code == 400 and orjson.loads(r.body)["field"] == field, (path, r.body)
        r = await api.raw("PUT", "/assets/NOPE/logo?name=l.png", body=PNG)
        assert r.code == 404
        listed = await api.ok("GET", "/assets", token="reader")
        assert [(a["tenant"], a["kind"]) for a in listed] == [("ABC", "css"), ("ABC", "logo")]
        assert (await api.audit_rows("asset.set"))[0]["detail"] == {"name": "logo.png", "size": len(PNG)}
        assert await api.ok("DELETE", "/assets/ABC/logo") == [{"tenant": "ABC", "cleared": "logo"}]
        assert (await api.h.request("/b3lb/t/abc/logo")).code == 404
        await api.error(400, "DELETE", "/assets/ABC/banner", field="kind")


@pytest.mark.gen_test(timeout=60)
async def test_tenant_token_reaches_only_its_assets(db_url):
    async with admin_api(db_url) as api:
        assert (await api.raw("PUT", "/assets/XYZ/css?name=x.css", body=b"a {}")).code == 200
        r = await api.raw("PUT", "/assets/XYZ/css?name=y.css", body=b"b {}", token="abc")
        assert r.code == 404
        await api.error(404, "DELETE", "/assets/XYZ/css", token="abc")
        await api.error(404, "GET", "/assets?tenant=xyz", token="abc")
        assert await api.ok("GET", "/assets", token="abc") == []
        assert (await api.h.request("/b3lb/t/xyz/css")).body == b"a {}"
        assert (await api.raw("PUT", "/assets/ABC/css?name=mine.css", body=b"c {}", token="abc")).code == 200
        assert [a["tenant"] for a in await api.ok("GET", "/assets", token="abc")] == ["ABC"]


@pytest.mark.gen_test(timeout=60)
async def test_limits_are_fleet_decisions(db_url):
    """A tenant-scoped write token cannot lift its own limits: 403 naming the field, nothing written."""
    async with admin_api(db_url) as api:
        tenants = [tuple(r) for r in await api.pool.fetch("SELECT * FROM tenant ORDER BY id")]
        secrets = [tuple(r) for r in await api.pool.fetch("SELECT * FROM secret ORDER BY id")]
        for field in ("attendee_limit", "meeting_limit"):
            for method, path, body in (("PATCH", "/tenants/ABC", {field: 0}),
                                       ("PATCH", "/secrets/ABC", {field: 0, "hold_time_days": 3}),
                                       ("PATCH", "/secrets/ABC", {field: None}),  # back to the tenant's: a change too
                                       ("POST", "/secrets", {"tenant": "ABC", "sub_id": 1, field: 0})):
                for token in ("abc", "abc-admin"):
                    message = await api.error(403, method, path, body, token=token, field=field)
                    assert message.startswith(f"{field}: "), message
        assert [tuple(r) for r in await api.pool.fetch("SELECT * FROM tenant ORDER BY id")] == tenants
        assert [tuple(r) for r in await api.pool.fetch("SELECT * FROM secret ORDER BY id")] == secrets
        assert await api.audit_rows() == []
        # The same token keeps the rest of its tenant's settings; a fleet token sets limits.
        await api.ok("PATCH", "/secrets/ABC", {"hold_time_days": 3, "record_by_default": True}, token="abc")
        await api.ok("POST", "/secrets", {"tenant": "ABC", "sub_id": 1}, token="abc", status=201)
        (row,) = await api.ok("PATCH", "/tenants/ABC", {"attendee_limit": 10}, token="writer")
        assert row["attendee_limit"] == 10
