"""One walk through the whole admin API against the real app, PostgreSQL, fake nodes and local storage:
every operation of the OpenAPI document (the dashboard's event stream included) answers 2xx at least
once, and no answer and no audit row holds a meeting's or a record set's nonce (the credential of the
node's end callback and recording upload, /b3lb/b/meeting/end?nonce=, /b3lb/b/record/upload?nonce=)."""

from __future__ import annotations

import asyncio

import pytest
from admin_api_support import Admin, admin_api
from api_helpers import create_ok, owner

from b3lb.admin.api import ENDPOINTS
from b3lb.admin.openapi import OPENAPI_PATH, build_document
from b3lb.recordings.storage import archive_key

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


async def nonces(api: Admin) -> set[str]:
    """Every meeting's and record set's nonce (a set's row key is its nonce too)."""
    rows = await api.pool.fetch("SELECT nonce::text AS n FROM meeting UNION SELECT nonce::text FROM record_set "
                                "UNION SELECT id FROM record_set")
    return {r["n"] for r in rows}


async def walk_fleet(api: Admin) -> None:
    """Clusters, cluster groups, nodes and recording profiles, each operation once."""
    await api.ok("GET", "/clusters")
    await api.ok("POST", "/clusters", {"name": "second"}, status=201)
    await api.ok("PATCH", "/clusters/second", {"m_factor": 2})
    await api.ok("POST", "/clusters/second/maintenance", {"on": True})
    await api.ok("GET", "/clustergroups")
    await api.ok("POST", "/clustergroups", {"name": "eu"}, status=201)
    await api.ok("POST", "/clustergroups/eu/clusters/second")
    await api.ok("DELETE", "/clustergroups/eu/clusters/second")
    await api.ok("DELETE", "/clustergroups/eu")
    await api.ok("GET", "/nodes", token="reader")
    await api.ok("POST", "/nodes", {"cluster": "second", "slug": "n9", "domain": "n9.example.org", "secret": "s3"},
                 status=201)
    await api.ok("GET", "/nodes/second/n9")
    await api.ok("PATCH", "/nodes/second/n9", {"port": 8443})
    await api.ok("POST", "/nodes/second/n9/maintenance", {"on": False})
    await api.ok("DELETE", "/nodes/second/n9")
    await api.ok("DELETE", "/clusters/second")
    await api.ok("GET", "/recordprofiles")
    await api.ok("POST", "/recordprofiles", {"name": "hd"}, status=201)
    await api.ok("POST", "/recordprofiles/hd/link", {"tenant": "ABC"})
    await api.ok("POST", "/recordprofiles/hd/unlink", {"tenant": "ABC"})
    await api.ok("DELETE", "/recordprofiles/hd")


async def walk_tenants(api: Admin) -> None:
    """Tenants, secrets, parameter rules and assets, each operation once."""
    await api.ok("GET", "/tenants", token="reader")
    await api.ok("POST", "/tenants", {"slug": "NEW", "cluster_group": "all"}, status=201)
    await api.ok("GET", "/tenants/ABC")
    await api.ok("PATCH", "/tenants/NEW", {"meeting_limit": 3})
    await api.ok("DELETE", "/tenants/NEW")
    await api.ok("GET", "/secrets", token="reader")
    await api.ok("POST", "/secrets", {"tenant": "ABC", "sub_id": 1, "description": "LMS"}, status=201)
    await api.ok("PATCH", "/secrets/ABC-001", {"hold_time_days": 3})
    await api.ok("POST", "/secrets/ABC-001/rotate")
    await api.ok("DELETE", "/secrets/ABC-001")
    await api.ok("GET", "/parameters")
    (rule,) = await api.ok("POST", "/parameters", {"tenant": "ABC", "for": "CREATE", "mode": "BLOCK",
                                                   "name": "record"}, status=201)
    await api.ok("DELETE", f"/parameters/{rule['id']}")
    assert (await api.raw("PUT", "/assets/ABC/logo?name=logo.png", body=PNG)).code == 200
    await api.ok("GET", "/assets")
    await api.ok("DELETE", "/assets/ABC/logo")


async def walk_activity(api: Admin, seen: set[str]) -> None:
    """Meetings, recordings, drain and panic of the node hosting them, tokens and the audit log; `seen`
    gets the nonces of the meetings and sets made here."""
    for n in range(3):
        await create_ok(api.h, f"room-{n}")
    await create_ok(api.h, "room-x", slug="XYZ")
    # room-0's set, under the meeting's nonce, gets an uploaded archive (its storage key holds the nonce)
    nonce = await api.pool.fetchval("SELECT nonce::text FROM meeting WHERE meeting_id = 'room-0'")
    await api.h.runtime.storage.put_bytes(archive_key(nonce), b"tar")
    await api.pool.execute("UPDATE record_set SET status = 'UPLOADED', archive_key = $2, raw_size = 3, "
                           "uploaded_at = now() WHERE id = $1", nonce, archive_key(nonce))
    seen |= await nonces(api)  # before the end and the panic remove meetings
    await api.ok("GET", "/meetings", token="reader")
    await api.ok("GET", "/meetings/where?meeting_id=room-0", token="reader")
    await api.ok("POST", "/meetings/end", {"meeting_id": "room-1"})
    listed = await api.ok("GET", "/recordings", token="reader")
    (set_id,) = [r["id"] for r in listed if r["meeting_id"] == "room-0"]
    await api.ok("GET", f"/recordings/{set_id}", token="reader")
    await api.ok("POST", f"/recordings/{set_id}/rerender")
    await api.ok("DELETE", f"/recordings/{set_id}")
    node = owner(api.h, "room-2")
    await api.ok("POST", f"/nodes/main/{node.name}/drain")
    await api.ok("GET", f"/nodes/main/{node.name}/drain", token="reader")
    code, _ = await api.call("POST", f"/nodes/main/{node.name}/panic")
    assert 200 <= code < 300, code
    for _ in range(200):  # the panic may go on in the background: wait until it reports its end
        (row,) = await api.ok("GET", f"/nodes/main/{node.name}/drain")
        if row.get("panic_state") != "running":
            break
        await asyncio.sleep(0.05)
    await api.ok("GET", "/tokens")
    await api.ok("POST", "/tokens", {"name": "ci", "scope": "read", "days": 1}, status=201)
    await api.ok("POST", "/tokens/ci/expire", {"days": 0})
    await api.ok("POST", "/tokens/ci/revoke")


@pytest.mark.gen_test(timeout=120)
async def test_every_operation_answers_and_no_answer_holds_a_nonce(db_url):
    async with admin_api(db_url, nodes=2, cache_refresh_interval=0.2) as api:
        assert (await api.raw("GET", OPENAPI_PATH, token=None)).code == 200
        status, headers, first = await api.events()
        assert status == 200 and headers["content-type"].startswith("text/event-stream"), (status, headers)
        assert first.startswith(b"event: hello"), first
        for slug in ("ABC", "XYZ"):  # meetings get record sets (under their nonces)
            await api.ok("PATCH", f"/tenants/{slug}", {"record_by_default": True})
        await walk_fleet(api)
        await walk_tenants(api)
        await create_ok(api.h, "early")
        seen = await nonces(api)
        await walk_activity(api, seen)
        await api.ok("GET", "/audit", token="reader")
        await api.ok("GET", "/meetings")  # what is left after the end and the panic

        document = build_document(ENDPOINTS)
        documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
        assert documented - api.succeeded == set()

        assert len(seen) == 5  # the walk's meetings, whose sets have their nonces
        audit = [str(dict(r)) for r in await api.pool.fetch("SELECT * FROM admin_audit")]
        for nonce in seen:
            spellings = (nonce.lower(), nonce.upper(), nonce.replace("-", "").lower())
            for method, path, body in api.answers:
                assert not any(s.encode() in body for s in spellings), (method, path, body[:300])
            assert not any(s in row for row in audit for s in spellings), nonce
