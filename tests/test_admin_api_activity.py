"""Admin API meetings, recordings, tokens and the audit log against the real app, PostgreSQL, fake nodes
and local recording storage; with bad input, and a token scoped to tenant ABC kept away from XYZ."""

from __future__ import annotations

import orjson
import pytest
from admin_api_support import Admin, admin_api
from api_helpers import create_ok, owner, xml

from b3lb.recordings.storage import archive_key

# The sets' nonces (their row keys, the meeting's upload credential: never in an answer) and the
# public IDs the API names them by.
OLD, NEW, NEWEST = (
    "11111111-1111-4111-8111-111111111111",
    "22222222-2222-4222-8222-222222222222",
    "33333333-3333-4333-8333-333333333333",
)
PUBLIC = {OLD: "a1111111-1111-4111-8111-111111111111", NEW: "a2222222-2222-4222-8222-222222222222",
          NEWEST: "a3333333-3333-4333-8333-333333333333"}
P_OLD, P_NEW, P_NEWEST = PUBLIC[OLD], PUBLIC[NEW], PUBLIC[NEWEST]


async def meetings(api: Admin) -> list[tuple[str, str]]:
    rows = await api.pool.fetch("SELECT t.slug, m.meeting_id FROM meeting m JOIN secret s ON s.id = m.secret_id "
                                "JOIN tenant t ON t.id = s.tenant_id ORDER BY 1, 2")
    return [tuple(r) for r in rows]


@pytest.mark.gen_test(timeout=60)
async def test_meeting_list_and_where(db_url):
    async with admin_api(db_url) as api:
        await create_ok(api.h, "room-a")
        await create_ok(api.h, "room-x", slug="XYZ")
        listed = await api.ok("GET", "/meetings", token="reader")
        assert [(m["secret"], m["meeting_id"]) for m in listed] == [("ABC", "room-a"), ("XYZ", "room-x")]
        assert [m["meeting_id"] for m in await api.ok("GET", "/meetings?tenant=xyz")] == ["room-x"]
        await api.error(400, "GET", "/meetings?tenant=X1", field="tenant")
        (where,) = await api.ok("GET", "/meetings/where?meeting_id=room-x")
        node = owner(api.h, "room-x")
        assert where["node"] == f"main/{node.name}" and where["domain"] == node.domain
        await api.error(404, "GET", "/meetings/where?meeting_id=nope")
        await api.error(400, "GET", "/meetings/where", field="meeting_id")
        await api.error(400, "GET", "/meetings/where?meeting_id=", field="meeting_id")
        # Tenant ABC's token: only ABC's meetings; XYZ's look like missing ones.
        assert [m["meeting_id"] for m in await api.ok("GET", "/meetings", token="abc-reader")] == ["room-a"]
        await api.error(404, "GET", "/meetings?tenant=XYZ", token="abc-reader")
        assert await api.error(404, "GET", "/meetings/where?meeting_id=room-x", token="abc-reader") == \
            "no meeting with ID 'room-x'"
        assert len(await api.ok("GET", "/meetings/where?meeting_id=room-a", token="abc-reader")) == 1


@pytest.mark.gen_test(timeout=60)
async def test_meeting_end_ends_it_on_its_node_and_drops_the_route(db_url):
    async with admin_api(db_url, nodes=2) as api:
        await create_ok(api.h, "shared")
        await create_ok(api.h, "shared", slug="XYZ")
        await create_ok(api.h, "room-x", slug="XYZ")
        assert "ABC, XYZ" in await api.error(400, "POST", "/meetings/end", {"meeting_id": "shared"}, field="secret")
        node = owner(api.h, "room-x")
        where = {r["secret"]: r["node"] for r in await api.ok("GET", "/meetings/where?meeting_id=shared")}
        assert where["ABC"] != where["XYZ"]  # the balancer keeps one meetingID's meetings apart
        (row,) = await api.ok("POST", "/meetings/end", {"meeting_id": "shared", "secret": "abc"}, token="abc")
        assert (row["secret"], row["node"], row["node_answer"]) == ("ABC", where["ABC"], "SUCCESS")
        hosting = [f"main/{n.name}" for n in api.h.fleet.nodes if "shared" in n.meetings]
        assert hosting == [where["XYZ"]]
        assert await meetings(api) == [("XYZ", "room-x"), ("XYZ", "shared")]
        # BBB's own calls see it gone at once; XYZ's meeting of the same ID is untouched.
        r = await api.h.call("getMeetingInfo", "meetingID=shared")
        assert xml(r).findtext("messageKey") == "notFound", r.body
        r = await api.h.call("getMeetingInfo", "meetingID=shared", slug="XYZ")
        assert xml(r).findtext("returncode") == "SUCCESS", r.body
        ended = await api.pool.fetchval("SELECT count(*) FROM meeting_ended WHERE meeting_id = 'shared'")
        assert ended == 1
        (audit,) = await api.audit_rows("meeting.end")
        assert (audit["actor"], audit["tenant"], audit["target"]) == ("token:abc", "ABC", "ABC/shared")
        # Tenant ABC's token cannot end XYZ's meetings, and gets the answer of a missing one.
        await api.error(404, "POST", "/meetings/end", {"meeting_id": "room-x"}, token="abc")
        await api.error(404, "POST", "/meetings/end", {"meeting_id": "room-x", "secret": "XYZ"}, token="abc")
        assert "room-x" in node.meetings
        await api.error(403, "POST", "/meetings/end", {"meeting_id": "room-x"}, token="reader")
        await api.error(400, "POST", "/meetings/end", {"meeting_id": 5}, field="meeting_id")
        await api.error(400, "POST", "/meetings/end", {}, field="meeting_id")
        await api.error(400, "POST", "/meetings/end", {"meeting_id": "room-x", "secret": "X-1"}, field="secret")


@pytest.mark.gen_test(timeout=60)
async def test_meeting_end_when_the_node_fails_or_no_longer_has_it(db_url):
    async with admin_api(db_url, nodes=1) as api:
        await create_ok(api.h, "gone")
        await create_ok(api.h, "stuck")
        node = api.h.fleet.nodes[0]
        node.remove_meeting("gone")  # ended on the node without b3lb hearing of it
        (row,) = await api.ok("POST", "/meetings/end", {"meeting_id": "gone"})
        assert row["node_answer"] == "notFound"
        node.mode = "down"
        message = await api.error(502, "POST", "/meetings/end", {"meeting_id": "stuck"})
        assert f"main/{node.name}" in message
        assert await meetings(api) == [("ABC", "stuck")]  # kept: nothing was ended
        assert [r["target"] for r in await api.audit_rows("meeting.end")] == ["ABC/gone"]


async def add_set(api: Admin, nonce: str, tenant: str, status: str, archive: bytes | None = None) -> None:
    key = archive_key(nonce) if archive is not None else ""
    await api.pool.execute(
        "INSERT INTO record_set (id, nonce, public_id, secret_id, meeting_id, tenant_slug, meta_name, status, "
        "raw_size, archive_key, archive_sha256, uploaded_at) "
        "SELECT $1::text, $1::text::uuid, $7::uuid, s.id, 'room', $2::text, 'Sync', $3, $4, $5::text, $6, "
        "CASE WHEN $5::text = '' THEN NULL ELSE now() END "
        "FROM secret s JOIN tenant t ON t.id = s.tenant_id WHERE t.slug = $2::text AND s.sub_id = 0",
        nonce, tenant, status, len(archive or b""), key, "ab" * 32 if archive else "", PUBLIC[nonce])
    if archive is not None:
        await api.h.runtime.storage.put_bytes(key, archive)


@pytest.mark.gen_test(timeout=60)
async def test_recordings(db_url):
    async with admin_api(db_url) as api:
        await add_set(api, OLD, "XYZ", "UNKNOWN")
        await add_set(api, NEW, "ABC", "UPLOADED", b"tar" * 10)
        await add_set(api, NEWEST, "ABC", "UPLOADED", b"tar" * 20)
        assert {r["id"] for r in await api.ok("GET", "/recordings", token="reader")} == {P_OLD, P_NEW, P_NEWEST}
        assert [r["id"] for r in await api.ok("GET", "/recordings?status=unknown")] == [P_OLD]
        assert len(await api.ok("GET", "/recordings?limit=1")) == 1
        await api.error(400, "GET", "/recordings?status=LOST", field="status")
        await api.error(400, "GET", "/recordings?limit=0", field="limit")
        shown = await api.ok("GET", f"/recordings/{P_NEW}")
        assert (shown["id"], shown["tenant"], shown["status"], shown["archive_size"]) == (P_NEW, "ABC", "UPLOADED", 30)
        assert shown["archive"].startswith("22/22/22222222.../")  # the folder, cut before the nonce's secret part
        await api.error(400, "GET", "/recordings/not-a-uuid", field="id")
        await api.error(404, "GET", "/recordings/44444444-4444-4444-8444-444444444444")
        await api.error(404, "GET", f"/recordings/{NEW}")  # a nonce names no set
        (job,) = await api.ok("POST", f"/recordings/{P_NEW}/rerender")
        assert (job["id"], job["job"]) == (P_NEW, "QUEUED")
        assert "no archive" in await api.error(409, "POST", f"/recordings/{P_OLD}/rerender")
        (gone,) = await api.ok("DELETE", f"/recordings/{P_NEWEST}")
        assert (gone["id"], gone["status"], gone["previous_status"], gone["files_deleted"]) == (
            P_NEWEST, "deleted", "UPLOADED", 1)
        assert not await api.h.runtime.storage.exists(archive_key(NEWEST))
        assert await api.pool.fetchval("SELECT count(*) FROM record_set WHERE id = $1", NEWEST) == 0
        await api.error(404, "DELETE", f"/recordings/{P_NEWEST}")
        rows = [(r["action"], r["target"], r["tenant"]) for r in await api.audit_rows()]
        assert rows == [("recording.rerender", P_NEW, "ABC"), ("recording.delete", P_NEWEST, "ABC")]
        for method, path, body in api.answers:  # (a nonce the test itself sent is echoed in "no record set")
            leaked = [n for n in (OLD, NEW, NEWEST) if n.encode() in body and n not in path]
            assert leaked == [], (method, path, body)


@pytest.mark.gen_test(timeout=60)
async def test_tenant_token_reaches_only_its_recordings(db_url):
    async with admin_api(db_url) as api:
        await add_set(api, OLD, "XYZ", "UPLOADED", b"theirs")
        await add_set(api, NEW, "ABC", "UPLOADED", b"mine")
        assert [r["id"] for r in await api.ok("GET", "/recordings", token="abc")] == [P_NEW]
        await api.error(404, "GET", "/recordings?tenant=XYZ", token="abc")
        assert await api.error(404, "GET", f"/recordings/{P_OLD}", token="abc") == f"no record set {P_OLD!r}"
        await api.error(404, "POST", f"/recordings/{P_OLD}/rerender", token="abc")
        await api.error(404, "DELETE", f"/recordings/{P_OLD}", token="abc")
        assert await api.h.runtime.storage.exists(archive_key(OLD))
        assert await api.pool.fetchval("SELECT status FROM record_set WHERE id = $1", OLD) == "UPLOADED"
        assert await api.pool.fetchval("SELECT count(*) FROM render_job") == 0
        assert (await api.ok("GET", f"/recordings/{P_NEW}", token="abc"))["tenant"] == "ABC"
        await api.ok("DELETE", f"/recordings/{P_NEW}", token="abc")
        assert [r["id"] for r in await api.ok("GET", "/recordings")] == [P_OLD]


@pytest.mark.gen_test(timeout=60)
async def test_a_delete_purges_its_own_set_only(db_url):
    """Another tenant's set waiting in DELETING (for housekeeping) is not touched by a tenant's delete."""
    async with admin_api(db_url) as api:
        await add_set(api, OLD, "XYZ", "DELETING", b"theirs")
        await add_set(api, NEW, "ABC", "UPLOADED", b"mine")
        (gone,) = await api.ok("DELETE", f"/recordings/{P_NEW}", token="abc")
        assert (gone["status"], gone["files_deleted"]) == ("deleted", 1) and "sets_deleted" not in gone
        assert await api.h.runtime.storage.exists(archive_key(OLD))
        assert await api.pool.fetchval("SELECT status FROM record_set WHERE id = $1", OLD) == "DELETING"


@pytest.mark.gen_test(timeout=60)
async def test_tokens(db_url):
    async with admin_api(db_url) as api:
        listed = await api.ok("GET", "/tokens")
        assert [t["name"] for t in listed] == ["abc", "abc-admin", "abc-reader", "admin", "reader", "writer"]
        assert all("token" not in t and "token_hash" not in t for t in listed)
        (made,) = await api.ok("POST", "/tokens", {"name": "ci", "scope": "write", "days": 1}, status=201)
        token = made["token"]
        assert token.startswith("b3lb_") and made["state"] == "active" and made["expires_at"] is not None
        assert token not in str(await api.audit_rows()) and token not in str(await api.ok("GET", "/tokens"))
        assert (await api.raw("GET", "/tenants", token=f"Bearer {token}")).code == 200
        (scoped,) = await api.ok("POST", "/tokens", {"name": "xyz-ro", "scope": "read", "tenant": "xyz"}, status=201)
        assert scoped["tenant"] == "XYZ"
        r = await api.raw("GET", "/tenants", token=f"Bearer {scoped['token']}")
        assert [t["slug"] for t in orjson.loads(r.body)["data"]] == ["XYZ"]
        for body, field in (({"name": "ci", "scope": "root"}, "scope"), ({"name": "a b", "scope": "read"}, "name"),
                            ({"name": "x", "scope": "read", "days": 0}, "days"),
                            ({"name": "x", "scope": "read", "tenant": "X1"}, "tenant"), ({"name": "x"}, "scope")):
            await api.error(400, "POST", "/tokens", body, field=field)
        await api.error(409, "POST", "/tokens", {"name": "ci", "scope": "read"})
        await api.error(404, "POST", "/tokens", {"name": "x", "scope": "read", "tenant": "NOPE"})
        (expired,) = await api.ok("POST", "/tokens/ci/expire", {})
        assert expired["state"] == "expired"
        assert (await api.raw("GET", "/tenants", token=f"Bearer {token}")).code == 401
        await api.error(400, "POST", "/tokens/reader/expire", {"days": -1}, field="days")
        (later,) = await api.ok("POST", "/tokens/reader/expire", {"days": 2})
        assert later["state"] == "active"
        await api.error(404, "POST", "/tokens/nobody/expire", {})
        (revoked,) = await api.ok("POST", "/tokens/xyz-ro/revoke")
        assert revoked["state"] == "revoked"
        assert (await api.raw("GET", "/tenants", token=f"Bearer {scoped['token']}")).code == 401
        await api.error(404, "POST", "/tokens/xyz-ro/revoke")
        rows = [(r["action"], r["target"], r["tenant"]) for r in await api.audit_rows()]
        assert rows == [("token.add", "ci", None), ("token.add", "xyz-ro", "XYZ"), ("token.expire", "ci", None),
                        ("token.expire", "reader", None), ("token.revoke", "xyz-ro", "XYZ")]


@pytest.mark.gen_test(timeout=60)
async def test_audit_log(db_url):
    async with admin_api(db_url) as api:
        await api.ok("PATCH", "/tenants/ABC", {"hold_time_days": 4}, token="abc")
        await api.ok("PATCH", "/tenants/XYZ", {"meeting_limit": 5})
        await api.ok("POST", "/clustergroups", {"name": "eu"}, status=201)
        rows = await api.ok("GET", "/audit", token="reader")
        assert [(r["action"], r["tenant"], r["actor"]) for r in rows] == [
            ("clustergroup.add", None, "token:admin"), ("tenant.set", "XYZ", "token:admin"),
            ("tenant.set", "ABC", "token:abc")]  # newest first
        assert rows[2]["detail"] == {"hold_time_days": 4}
        assert [r["action"] for r in await api.ok("GET", "/audit?limit=1")] == ["clustergroup.add"]
        assert [r["tenant"] for r in await api.ok("GET", "/audit?tenant=xyz")] == ["XYZ"]
        assert [r["tenant"] for r in await api.ok("GET", "/audit", token="abc-reader")] == ["ABC"]
        await api.error(404, "GET", "/audit?tenant=XYZ", token="abc-reader")
        await api.error(400, "GET", "/audit?limit=0", field="limit")
        await api.error(400, "GET", "/audit?limit=1001", field="limit")
