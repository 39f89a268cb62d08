"""Admin API fleet resources against the real app, PostgreSQL and fake nodes: clusters, cluster groups,
nodes (maintenance, drain, panic) and recording profiles; each with good and bad input."""

from __future__ import annotations

import asyncio

import pytest
from admin_api_support import admin_api
from api_helpers import create_ok, owner


@pytest.mark.gen_test(timeout=60)
async def test_clusters(db_url):
    async with admin_api(db_url) as api:
        assert [c["name"] for c in await api.ok("GET", "/clusters")] == ["main"]
        (row,) = await api.ok("POST", "/clusters", {"name": "second", "a_factor": 2.5, "cpu_iterations": 0,
                                                      "sha": "sha512"}, status=201)
        assert (row["name"], row["load_a_factor"], row["load_cpu_series_iteratations"], row["sha_algorithm"]) == (
            "second", 2.5, 0, "SHA512")
        assert "already exists" in await api.error(409, "POST", "/clusters", {"name": "second"})
        (row,) = await api.ok("PATCH", "/clusters/second", {"m_factor": 3, "cpu_maximum": 100})
        assert (row["load_m_factor"], row["load_cpu_maximum"], row["load_a_factor"]) == (3.0, 100, 2.5)
        await api.error(400, "PATCH", "/clusters/second", {"cpu_maximum": 10**9}, field="cpu_maximum")
        await api.error(404, "PATCH", "/clusters/nope", {"m_factor": 1})
        assert "node" in await api.error(409, "DELETE", "/clusters/main")
        assert await api.ok("DELETE", "/clusters/second") == [{"removed": "second"}]
        await api.error(404, "DELETE", "/clusters/second")
        assert [r["action"] for r in await api.audit_rows()] == ["cluster.add", "cluster.set", "cluster.remove"]


@pytest.mark.gen_test(timeout=60)
async def test_cluster_maintenance_switches_every_node_at_once(db_url):
    async with admin_api(db_url, nodes=3) as api:
        rows = await api.ok("POST", "/clusters/main/maintenance", {"on": True}, token="writer")
        assert [r["state"] for r in rows] == ["maintenance"] * 3
        # This process stops placing meetings there at once (no wait for the directory refresh).
        assert all(e.in_maintenance for e in api.h.runtime.loads.nodes.values())
        await api.error(400, "POST", "/clusters/main/maintenance", {"on": "yes"}, field="on")
        await api.error(400, "POST", "/clusters/main/maintenance", {}, field="on")
        await api.error(404, "POST", "/clusters/nope/maintenance", {"on": False})
        rows = await api.ok("POST", "/clusters/main/maintenance", {"on": False})
        assert [r["state"] for r in rows] == ["ok"] * 3
        actors = [(r["actor"], r["detail"]["on"]) for r in await api.audit_rows("cluster.maintenance")]
        assert actors == [("token:writer", True), ("token:admin", False)]


@pytest.mark.gen_test(timeout=60)
async def test_cluster_groups(db_url):
    async with admin_api(db_url) as api:
        await api.ok("POST", "/clusters", {"name": "second"}, status=201)
        (row,) = await api.ok("POST", "/clustergroups", {"name": "eu"}, status=201)
        assert row == {"name": "eu", "clusters": "", "tenants": 0}
        await api.error(400, "POST", "/clustergroups", {"name": ""}, field="name")
        await api.error(400, "POST", "/clustergroups", {"name": 5}, field="name")
        (row,) = await api.ok("POST", "/clustergroups/eu/clusters/second")
        assert row["clusters"] == "second"
        assert "already" in await api.error(409, "POST", "/clustergroups/eu/clusters/second")
        await api.error(404, "POST", "/clustergroups/eu/clusters/nope")
        (row,) = await api.ok("DELETE", "/clustergroups/eu/clusters/second")
        assert row["clusters"] == ""
        assert "not in" in await api.error(409, "DELETE", "/clustergroups/eu/clusters/second")
        assert "tenant" in await api.error(409, "DELETE", "/clustergroups/all")
        await api.ok("DELETE", "/clustergroups/eu")
        assert [g["name"] for g in await api.ok("GET", "/clustergroups")] == ["all"]
        await api.error(404, "DELETE", "/clustergroups/eu")


@pytest.mark.gen_test(timeout=60)
async def test_nodes(db_url):
    async with admin_api(db_url) as api:
        assert [n["slug"] for n in await api.ok("GET", "/nodes?cluster=main")] == ["fake-0001", "fake-0002"]
        await api.error(404, "GET", "/nodes?cluster=nope")
        (node,) = await api.ok("GET", "/nodes/main/fake-0001")
        assert node["state"] == "ok" and node["cluster"] == "main"
        await api.error(404, "GET", "/nodes/main/nope")
        (row,) = await api.ok("POST", "/nodes", {"cluster": "main", "slug": "n9", "domain": "N9.Example.org",
                                                 "secret": "s3cret-value"}, status=201)
        assert (row["domain"], row["port"], row["state"]) == ("n9.example.org", 443, "ok")  # node_defaults
        stored = await api.pool.fetchrow("SELECT protocol, bbb_endpoint, secret FROM node WHERE slug = 'n9'")
        assert tuple(stored) == ("https", "bigbluebutton/api/", "s3cret-value")
        assert "s3cret-value" not in str(await api.audit_rows())  # the node's secret is never logged
        for body, field in (({"domain": "http://x.example"}, "domain"), ({"port": 0}, "port"),
                            ({"protocol": "ftp"}, "protocol"), ({"bbb_endpoint": "../x"}, "bbb_endpoint")):
            await api.error(400, "POST", "/nodes", {"cluster": "main", "slug": "bad", "domain": "b.example",
                                                    "secret": "s", **body}, field=field)
        await api.error(400, "POST", "/nodes", {"cluster": "main", "slug": "bad", "domain": "b.example"},
                        field="secret")
        await api.error(404, "POST", "/nodes", {"cluster": "nope", "slug": "x", "domain": "x.example", "secret": "s"})
        (row,) = await api.ok("PATCH", "/nodes/main/n9", {"port": 8443, "secret": "other"})
        assert row["port"] == 8443
        await api.error(400, "PATCH", "/nodes/main/n9", {"port": 70000}, field="port")
        (row,) = await api.ok("POST", "/nodes/main/n9/maintenance", {"on": True})
        assert row["state"] == "maintenance"
        await api.error(400, "POST", "/nodes/main/n9/maintenance", {"on": 1}, field="on")
        assert await api.ok("DELETE", "/nodes/main/n9") == [{"removed": "main/n9", "meetings_forgotten": 0}]
        await api.error(404, "DELETE", "/nodes/main/n9")
        await api.error(400, "DELETE", "/nodes/main/fake-0001?force=maybe", field="force")
        assert await api.count("node") == 2


@pytest.mark.gen_test(timeout=60)
async def test_node_with_meetings_is_removed_only_with_force(db_url):
    async with admin_api(db_url, nodes=1) as api:
        await create_ok(api.h, "room")
        assert "meeting" in await api.error(409, "DELETE", "/nodes/main/fake-0001")
        (row,) = await api.ok("DELETE", "/nodes/main/fake-0001?force=true")
        assert row["meetings_forgotten"] == 1 and await api.count("meeting") == 0


@pytest.mark.gen_test(timeout=60)
async def test_drain_takes_no_new_meetings_and_reports_those_left(db_url):
    async with admin_api(db_url, nodes=2, poller={"meeting_grace": 0.0}) as api:
        await create_ok(api.h, "room")
        node = owner(api.h, "room")
        (row,) = await api.ok("POST", f"/nodes/main/{node.name}/drain", token="writer")
        assert (row["state"], row["meetings_left"], row["drained"]) == ("maintenance", 1, False)
        for n in range(4):  # new meetings go to the other node
            await create_ok(api.h, f"new-{n}")
            assert owner(api.h, f"new-{n}") is not node
        node.remove_meeting("room")  # the meeting ends by itself; the poller forgets its row
        await api.h.poll()
        (row,) = await api.ok("GET", f"/nodes/main/{node.name}/drain", token="reader")
        assert (row["meetings_left"], row["drained"]) == (0, True)
        await api.error(404, "POST", "/nodes/main/nope/drain")
        await api.error(404, "GET", "/nodes/other/fake-0001/drain")
        await api.error(403, "POST", f"/nodes/main/{node.name}/drain", token="reader")
        (audit,) = await api.audit_rows("node.drain")
        assert audit["actor"] == "token:writer" and audit["target"] == f"main/{node.name}"


@pytest.mark.gen_test(timeout=60)
async def test_panic_ends_the_nodes_meetings(db_url):
    async with admin_api(db_url, nodes=2, cache_refresh_interval=0.2) as api:
        for n in range(3):
            await create_ok(api.h, f"room-{n}")
        node = owner(api.h, "room-0")
        mine = sorted(m for m in node.meetings)
        (row,) = await api.ok("POST", f"/nodes/main/{node.name}/panic", status=202)
        assert (row["panic_state"], row["meetings_left"]) == ("running", len(mine))
        assert row["status_url"].endswith(f"/nodes/main/{node.name}/drain")
        for _ in range(400):  # it goes on in the background; the status reports its end
            (row,) = await api.ok("GET", f"/nodes/main/{node.name}/drain", token="reader")
            if row["panic_state"] != "running":
                break
            await asyncio.sleep(0.05)
        assert row["panic_state"] == "finished", row
        detail = row["panic_detail"]
        assert (detail["meetings"], detail["ends_failed"], detail["failures"]) == (len(mine), 0, [])
        assert node.meetings == {}
        left = {r["meeting_id"] for r in await api.pool.fetch("SELECT meeting_id FROM meeting")}
        assert left == {f"room-{n}" for n in range(3)} - set(mine)
        (node_row,) = await api.ok("GET", f"/nodes/main/{node.name}")
        assert node_row["state"] == "maintenance"
        await api.error(404, "POST", "/nodes/main/nope/panic")
        await api.error(403, "POST", f"/nodes/main/{node.name}/panic", token="abc-admin")
        phases = [r["detail"]["phase"] for r in await api.audit_rows("node.panic")]
        assert phases == ["started", "finished"]


@pytest.mark.gen_test(timeout=60)
async def test_record_profiles(db_url):
    async with admin_api(db_url) as api:
        (row,) = await api.ok("POST", "/recordprofiles", {"name": "hd", "width": 1280, "height": 720,
                                                          "format": "webm", "annotate": False}, status=201)
        assert (row["width"], row["format"], row["annotate"], row["backdrop"]) == (1280, "WEBM", False, True)
        await api.error(409, "POST", "/recordprofiles", {"name": "hd"})
        await api.error(400, "POST", "/recordprofiles", {"name": "x", "width": 0}, field="width")
        await api.error(400, "POST", "/recordprofiles", {"name": "x", "format": "avi"}, field="format")
        await api.error(400, "POST", "/recordprofiles", {"name": "x", "backdrop": "no"}, field="backdrop")
        (row,) = await api.ok("POST", "/recordprofiles/hd/link", {"tenant": "abc"})
        assert row["links"] == ["tenant:ABC"]
        (row,) = await api.ok("POST", "/recordprofiles/hd/link", {"secret": "XYZ"})
        assert row["links"] == ["tenant:ABC", "secret:XYZ"]
        await api.error(400, "POST", "/recordprofiles/hd/link", {"tenant": "ABC", "secret": "ABC-001"})
        await api.error(404, "POST", "/recordprofiles/hd/link", {"secret": "XYZ-007"})
        await api.error(404, "POST", "/recordprofiles/nope/link", {"tenant": "ABC"})
        await api.error(400, "POST", "/recordprofiles/hd/link", {"tenant": "A1"}, field="tenant")
        (row,) = await api.ok("POST", "/recordprofiles/hd/unlink", {"tenant": "ABC"})
        assert row["links"] == ["secret:XYZ"]
        await api.error(409, "POST", "/recordprofiles/hd/unlink", {"tenant": "ABC"})
        assert [p["name"] for p in await api.ok("GET", "/recordprofiles", token="reader")] == ["hd"]
        await api.ok("DELETE", "/recordprofiles/hd")
        await api.error(404, "DELETE", "/recordprofiles/hd")
        assert [r["action"] for r in await api.audit_rows()] == [
            "recordprofile.add", "recordprofile.link", "recordprofile.link", "recordprofile.unlink",
            "recordprofile.remove"]
