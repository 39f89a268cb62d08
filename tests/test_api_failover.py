"""Failover (issue 13, item 5): meetings of a node in error are re-created on a healthy node with
their original create's parameters by the first join (or create), once, and answered there after."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
from api_helpers import children, create_ok, meeting_rows, node_id, pairs, q, sent, set_node, url_pairs, xml
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.netutil import bind_sockets

from b3lb.api import failover, stored_create
from b3lb.app import make_app
from b3lb.checksum import digest
from b3lb.db import keep_session
from b3lb.httplimits import make_http_server
from b3lb.meetings import MeetingRef, MeetingTable
from b3lb.runtime import Runtime
from b3lb.testing.fakebbb import FakeFleet, FakeMeeting, FakeNode
from b3lb.testing.harness import BASE_DOMAIN, Harness, seed

UNAVAILABLE = ("returncode", "FAILED"), ("messageKey", "nodeUnavailable")
SETTINGS = {"welcome": "Welcome to room {i}", "muteOnStart": "true", "meta_course": "course-{i}"}


def settings(i: int) -> str:
    return q(**{k: v.format(i=i) for k, v in SETTINGS.items()}, attendeePW=f"ap-{i}", moderatorPW=f"mp-{i}")


async def join(h: Harness, meeting_id: str, **params: str) -> HTTPResponse:
    return await h.call("join", q(meetingID=meeting_id, fullName=params.pop("fullName", "Ann"), **params))


def target(h: Harness, response: HTTPResponse) -> FakeNode | None:
    """The fake node a join's 302 sends the browser to."""
    if response.code != 302:
        return None
    return h.fleet.find_node(urlsplit(response.headers["Location"]).hostname or "")


async def kill(h: Harness, node: FakeNode) -> None:
    """Stop the node (connections refused) and poll until the poller takes it out."""
    node.set_down()
    for _ in range(h.config.poller.error_after):
        await h.poll()
    assert h.runtime.loads.nodes[node_id(h, node)].node.has_errors


async def on_one_node(h: Harness, node: FakeNode, meetings: dict[str, str]) -> None:
    """Create meetings (id -> extra query) while every other node is in maintenance."""
    others = [n for n in h.fleet.nodes if n is not node]
    for other in others:
        await set_node(h, other, maintenance=True)
    for meeting_id, extra in meetings.items():
        await create_ok(h, meeting_id, name=f"Room {meeting_id}", extra=extra)
    for other in others:
        await set_node(h, other, maintenance=False)
    assert set(node.meetings) >= set(meetings)


def creates_of(node: FakeNode, meeting_id: str) -> list[dict[str, str]]:
    return [dict(pairs(r)) for r in sent(node, "create") if ("meetingID", meeting_id) in pairs(r)]


def assert_recreated_as_created(h: Harness, node: FakeNode, i: int, row: dict[str, object]) -> None:
    meeting_id = f"m-{i}"
    meeting = node.meetings[meeting_id]
    assert meeting.name == f"Room {meeting_id}"
    assert meeting.metadata["course"] == f"course-{i}"
    (sent_create,) = creates_of(node, meeting_id)  # exactly one create on the new node
    assert sent_create["welcome"] == f"Welcome to room {i}" and sent_create["muteOnStart"] == "true"
    assert "attendeePW" not in sent_create and "moderatorPW" not in sent_create
    assert sent_create["meta_endCallbackUrl"] == f"https://{BASE_DOMAIN}/b3lb/b/meeting/end?nonce={row['nonce']}"


# -- the test -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_dead_node_s_50_meetings_are_joinable_within_one_poll_interval_plus_a_second(db_url):
    """A node with 50 meetings is stopped while the poller runs every INTERVAL seconds; every meeting
    is joinable (302 to a live node that runs it as it was created) within INTERVAL + 1 s. With the
    shipped settings: `error_after` 2, and a cycle's failed poll followed at once by a probe
    (poller.probe_failed), so the node is in error right after the first cycle that saw it dead."""
    interval = 2.0
    async with Harness(db_url, nodes=3, poller={"probe_failed": True}) as h:
        assert h.config.poller.error_after == 2
        dead = h.fleet.nodes[0]
        await on_one_node(h, dead, {f"m-{i}": settings(i) for i in range(50)})
        assert len(dead.meetings) == 50

        async def poll_loop() -> None:  # as the leader polls (b3lb/leader.py), without jitter
            while True:
                await asyncio.sleep(interval)
                await h.poll()

        poller = asyncio.ensure_future(poll_loop())
        try:
            dead.set_down()
            killed_at = time.monotonic()
            joinable_at: dict[str, float] = {}
            while len(joinable_at) < 50 and time.monotonic() - killed_at < 4 * interval:
                pending = [f"m-{i}" for i in range(50) if f"m-{i}" not in joinable_at]
                answers = await asyncio.gather(*(join(h, m, role="VIEWER") for m in pending))
                for meeting_id, response in zip(pending, answers, strict=True):
                    node = target(h, response)
                    if node is not None and node is not dead and meeting_id in node.meetings:
                        joinable_at[meeting_id] = time.monotonic()
                await asyncio.sleep(0.05)
        finally:
            poller.cancel()
        assert len(joinable_at) == 50, sorted(set(f"m-{i}" for i in range(50)) - set(joinable_at))
        slowest = max(joinable_at.values()) - killed_at
        assert slowest <= interval + 1.0, slowest
        rows = {r["meeting_id"]: r for r in await meeting_rows(h)}
        live = [n for n in h.fleet.nodes if n is not dead]
        assert sum(len(n.meetings) for n in live) == 50 and all(n.meetings for n in live)  # spread
        for i in range(50):
            row = rows[f"m-{i}"]
            (node,) = [n for n in live if f"m-{i}" in n.meetings]
            assert row["node_id"] == node_id(h, node) and row["failover_state"] == 2
            assert_recreated_as_created(h, node, i, row)
            # the browser's next step works: the node takes the join
            r = await join(h, f"m-{i}", role="VIEWER", fullName=f"User {i}")
            follow = await h.client.fetch(HTTPRequest(r.headers["Location"], follow_redirects=False), raise_error=False)
            assert follow.code == 302 and f"User {i}" in [a.full_name for a in node.meetings[f"m-{i}"].attendees]


# -- once per meeting --------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_twenty_concurrent_joins_cause_one_create(db_url, monkeypatch):
    """One create on the new node, and in this process one failover the other joins wait for
    (rather than each reading the row until the winner is done)."""
    settles: list[str] = []
    real_settle = failover._settle

    async def counted_settle(runtime, ctx, ref):  # noqa: ANN001, ANN202 - the real one, counted
        settles.append(ref.meeting_id)
        return await real_settle(runtime, ctx, ref)

    monkeypatch.setattr(failover, "_settle", counted_settle)
    async with Harness(db_url, nodes=3) as h:
        dead = h.fleet.nodes[0]
        await on_one_node(h, dead, {"m-7": settings(7)})
        (before,) = await meeting_rows(h, "m-7")
        await kill(h, dead)
        answers = await asyncio.gather(*(join(h, "m-7", role="VIEWER", fullName=f"U{n}") for n in range(20)))
        nodes = {target(h, r) for r in answers}
        assert len(nodes) == 1 and None not in nodes and dead not in nodes
        (node,) = nodes
        (after,) = await meeting_rows(h, "m-7")
        assert after["id"] == before["id"] and after["nonce"] != before["nonce"]
        assert sum(len(creates_of(n, "m-7")) for n in h.fleet.nodes if n is not dead) == 1
        assert_recreated_as_created(h, node, 7, after)
        assert h.runtime.meetings.failing_over == {} and settles == ["m-7"]
        # later joins take the fast path again: no task, straight from memory
        r = await join(h, "m-7", role="MODERATOR")
        assert target(h, r) is node and len(creates_of(node, "m-7")) == 1


@asynccontextmanager
async def second_instance(h: Harness) -> AsyncIterator[tuple[int, Runtime]]:
    """Another b3lb instance on the same database (its own pool, tables and in-flight failovers),
    serving HTTP; yields its port and runtime."""
    pool = await asyncpg.create_pool(h.db_url, min_size=1, max_size=5, reset=keep_session)
    runtime = Runtime(h.config, pool)
    await runtime.start()
    sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
    server = make_http_server(make_app(runtime), h.config.server)
    server.add_sockets([sock])
    try:
        yield sock.getsockname()[1], runtime
    finally:
        server.stop()
        await server.close_all_connections()
        await runtime.stop()
        await pool.close()


async def call_at(h: Harness, port: int, call: str, query: str) -> HTTPResponse:
    request = HTTPRequest(f"http://127.0.0.1:{port}/bigbluebutton/api/{call}?{h.signed(call, query, h.secret())}",
                          headers={"Host": f"abc.{BASE_DOMAIN}"}, follow_redirects=False, request_timeout=20)
    return await h.client.fetch(request, raise_error=False)


@pytest.mark.gen_test(timeout=60)
async def test_two_instances_racing_cause_one_create_and_both_answer_for_the_new_node(db_url):
    async with Harness(db_url, nodes=3) as h, second_instance(h) as (other, other_runtime):
        dead = h.fleet.nodes[0]
        await on_one_node(h, dead, {f"m-{i}": settings(i) for i in range(5)})
        r = await call_at(h, other, "join", q(meetingID="m-0", fullName="Bob", role="VIEWER"))
        assert target(h, r) is dead  # the other instance knows the meeting (read from the database)
        dead.set_down()
        await h.pool.execute("UPDATE node SET has_errors = true WHERE slug = $1", dead.name)
        await h.reload()
        await other_runtime.refresh_directory()  # as its next cache refresh would
        joins = [join(h, f"m-{i}", role="VIEWER") for i in range(5) for _ in range(5)]
        joins += [call_at(h, other, "join", q(meetingID=f"m-{i}", fullName="Bob", role="VIEWER"))
                  for i in range(5) for _ in range(5)]
        answers = await asyncio.gather(*joins)
        rows = {r["meeting_id"]: r for r in await meeting_rows(h)}
        for i in range(5):
            ours = {target(h, a) for a in answers[i * 5 : i * 5 + 5]}
            theirs = {target(h, a) for a in answers[25 + i * 5 : 25 + i * 5 + 5]}
            assert len(ours | theirs) == 1, (ours, theirs)
            (node,) = ours
            assert node is not None and node is not dead and node_id(h, node) == rows[f"m-{i}"]["node_id"]
            assert sum(len(creates_of(n, f"m-{i}")) for n in h.fleet.nodes if n is not dead) == 1
            assert_recreated_as_created(h, node, i, rows[f"m-{i}"])
        # the other instance reads the moved rows (failover state included) and maps passwords too
        await other_runtime.refresh_meetings()
        ref = other_runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "m-1")
        assert ref is not None and ref.failover_state == 2 and ref.node_id == rows["m-1"]["node_id"]
        r = await call_at(h, other, "join", q(meetingID="m-1", fullName="Bob", password="mp-1"))
        assert ("role", "MODERATOR") in url_pairs(r.headers["Location"])
        # getMeetingInfo / isMeetingRunning answer from the new node on both instances
        (node,) = [n for n in h.fleet.nodes if n is not dead and "m-0" in n.meetings]
        node.add_attendees("m-0", 1)
        for response in (await h.call("getMeetingInfo", "meetingID=m-0"),
                         await call_at(h, other, "getMeetingInfo", "meetingID=m-0")):
            doc = xml(response)
            assert doc.findtext("returncode") == "SUCCESS" and doc.findtext("meetingName") == "Room m-0"
            assert doc.findtext("createTime") == str(node.meetings["m-0"].create_time)
        for response in (await h.call("isMeetingRunning", "meetingID=m-0"),
                         await call_at(h, other, "isMeetingRunning", "meetingID=m-0")):
            assert xml(response).findtext("running") == "true"


@pytest.mark.gen_test(timeout=60)
async def test_a_join_waits_for_a_failover_another_process_is_running(db_url):
    """The row says another process has claimed the meeting and is creating it on node B: a join
    here sends nothing to any node, waits until that process is done, then goes to B."""
    async with Harness(db_url, nodes=3) as h:
        dead, b, _ = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await kill(h, dead)
        await h.pool.execute("UPDATE meeting SET node_id = $1, nonce = gen_random_uuid(), failover_state = 1, "
                             "failover_at = now() WHERE meeting_id = 'm-1'", node_id(h, b))
        await h.reload()
        waiting = asyncio.ensure_future(join(h, "m-1", role="VIEWER"))
        await asyncio.sleep(0.4)
        assert not waiting.done()
        b.add_meeting(FakeMeeting(meeting_id="m-1", name="Room m-1"))  # what the other process did
        await h.pool.execute("UPDATE meeting SET failover_state = 2, failover_at = NULL WHERE meeting_id = 'm-1'")
        assert target(h, await waiting) is b
        assert not any(creates_of(n, "m-1") for n in h.fleet.nodes if n is not dead)


@pytest.mark.gen_test(timeout=60)
async def test_a_claim_whose_process_died_is_taken_over(db_url):
    async with Harness(db_url, nodes=3) as h:
        dead, b, _ = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await kill(h, dead)
        await h.pool.execute("UPDATE meeting SET node_id = $1, nonce = gen_random_uuid(), failover_state = 1, "
                             "failover_at = now() - interval '1 hour' WHERE meeting_id = 'm-1'", node_id(h, b))
        await h.reload()
        assert target(h, await join(h, "m-1", role="VIEWER")) is b
        (row,) = await meeting_rows(h, "m-1")
        assert row["failover_state"] == 2 and row["node_id"] == node_id(h, b)
        assert_recreated_as_created(h, b, 1, row)


# -- passwords ---------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_password_joins_map_to_roles_and_a_wrong_password_is_refused(db_url):
    async with Harness(db_url, nodes=2) as h:
        dead, live = h.fleet.nodes
        await on_one_node(h, dead, {"m-3": settings(3), "half": q(moderatorPW="only-mod")})
        await kill(h, dead)
        r = await join(h, "m-3", password="mp-3", fullName="Mod")
        assert target(h, r) is live
        sent_pairs = [p for p in url_pairs(r.headers["Location"]) if p[0] != "checksum"]
        assert sent_pairs == [("meetingID", "m-3"), ("fullName", "Mod"), ("role", "MODERATOR")]
        r = await join(h, "m-3", password="ap-3", fullName="View")
        assert ("role", "VIEWER") in url_pairs(r.headers["Location"])
        assert "password" not in dict(url_pairs(r.headers["Location"]))
        for response in [r, await join(h, "m-3", password="mp-3", fullName="Mod")]:
            await h.client.fetch(HTTPRequest(response.headers["Location"], follow_redirects=False), raise_error=False)
        roles = {a.full_name: a.role for a in live.meetings["m-3"].attendees}
        assert roles == {"View": "VIEWER", "Mod": "MODERATOR"}
        # a wrong password: BBB's answer, nothing sent to the node
        r = await join(h, "m-3", password="guess", redirect="false")
        assert children(r) == [("returncode", "FAILED"), ("messageKey", "invalidPassword"),
                               ("message", "You either did not supply a password or the password supplied is "
                                           "neither the attendee or moderator password for this conference.")]
        r = await join(h, "m-3", password="guess", errorRedirectUrl="https://front.example/err")
        assert r.code == 302 and r.headers["Location"].startswith("https://front.example/err?errors=")
        assert "invalidPassword" in r.headers["Location"]
        # a valid role wins over the password, as on BBB; a join without either goes on unchanged
        r = await join(h, "m-3", password="guess", role="viewer")
        assert target(h, r) is live and ("role", "viewer") in url_pairs(r.headers["Location"])
        # only the moderator's password was sent at create: any other one is the node's own attendee one
        r = await join(h, "half", password="only-mod")
        assert ("role", "MODERATOR") in url_pairs(r.headers["Location"])
        r = await join(h, "half", password="made-up-by-the-old-node")
        assert ("role", "VIEWER") in url_pairs(r.headers["Location"])
        # a repeated create with the original passwords is a duplicate; other passwords are refused
        doc = await create_ok(h, "m-3", name="Room m-3", extra=settings(3))
        assert doc.findtext("messageKey") == "duplicateWarning"
        r = await h.call("create", q(meetingID="m-3", name="Room m-3", attendeePW="ap-3", moderatorPW="other"))
        assert xml(r).findtext("messageKey") == "idNotUnique"
        assert len(creates_of(live, "m-3")) == 3
        # end with the original moderator password ends it
        r = await h.call("end", q(meetingID="m-3", password="mp-3"))
        assert xml(r).findtext("returncode") == "SUCCESS" and "m-3" not in live.meetings


@pytest.mark.gen_test(timeout=60)
async def test_no_secret_is_stored_in_clear(db_url):
    async with Harness(db_url, nodes=2) as h:
        await create_ok(h, "m-1", extra=settings(1))
        await create_ok(h, "m-2", extra=settings(2))
        await create_ok(h, "plain")
        rows = {r["meeting_id"]: r for r in await h.pool.fetch(
            "SELECT meeting_id, create_params, m::text AS whole FROM meeting m")}
        whole = " ".join(r["whole"] for r in rows.values())
        for secret in ("ap-1", "mp-1", "ap-2", "mp-2", h.secret(), "checksum"):
            assert secret not in whole, secret
        first, second = (orjson.loads(rows[m]["create_params"]) for m in ("m-1", "m-2"))
        assert ["welcome", "Welcome to room 1"] in first["params"] and ["name", "Room"] in first["params"]
        assert len(first["attendeePW"]) == len(first["moderatorPW"]) == 64 and first["salt"] != second["salt"]
        assert stored_create.keyed_hash(bytes.fromhex(first["salt"]), "mp-1").hex() == first["moderatorPW"]
        assert "salt" not in orjson.loads(rows["plain"]["create_params"])  # no password, nothing to hash


# -- create ------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_creates_and_joins_of_a_meeting_on_a_node_in_error_move_it_once(db_url):
    async with Harness(db_url, nodes=3) as h:
        dead = h.fleet.nodes[0]
        await on_one_node(h, dead, {"m-5": settings(5)})
        (before,) = await meeting_rows(h, "m-5")
        await kill(h, dead)
        new_room = q(meetingID="m-5", name="Room m-5", welcome="Restarted", attendeePW="ap-5", moderatorPW="mp-5")
        calls = [h.call("create", new_room) for _ in range(5)]
        calls += [join(h, "m-5", role="VIEWER") for _ in range(5)]
        answers = await asyncio.gather(*calls)
        assert all(xml(r).findtext("returncode") == "SUCCESS" for r in answers[:5])
        (after,) = await meeting_rows(h, "m-5")
        (node,) = [n for n in h.fleet.nodes if n is not dead and "m-5" in n.meetings]
        assert after["node_id"] == node_id(h, node) and after["id"] == before["id"]
        assert {target(h, r) for r in answers[5:]} == {node}
        assert all(xml(r).findtext("internalMeetingID") == node.meetings["m-5"].internal_meeting_id
                   for r in answers[:5])
        assert not any(creates_of(n, "m-5") for n in h.fleet.nodes if n is not dead and n is not node)


@pytest.mark.gen_test(timeout=60)
async def test_a_create_after_a_failover_uses_the_new_node(db_url):
    async with Harness(db_url, nodes=2) as h:
        dead, live = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await kill(h, dead)
        assert target(h, await join(h, "m-1", role="VIEWER")) is live
        doc = await create_ok(h, "m-1", name="Room m-1", extra=settings(1))
        assert doc.findtext("messageKey") == "duplicateWarning"
        assert [c.get("attendeePW") for c in creates_of(live, "m-1")] == [None, None]


# -- what the re-create sends ----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_a_posted_body_is_re_sent_without_embedded_slides(db_url):
    body = (b'<modules><module name="presentation">'
            b'<document url="https://files.example/intro.pdf" filename="intro.pdf"/>'
            b'<document name="embedded.pdf">' + b"QUFB" * 5000 + b"</document></module>"
            b'<module name="clientSettingsOverride"><![CDATA[{"public":{"app":{"appName":"Demo"}}}]]></module>'
            b"</modules>")
    async with Harness(db_url, nodes=2) as h:
        dead, live = h.fleet.nodes
        await set_node(h, live, maintenance=True)
        r = await h.call("create", q(meetingID="posted", name="Posted"), method="POST", body=body,
                         content_type="application/xml")
        assert xml(r).findtext("returncode") == "SUCCESS"
        await set_node(h, live, maintenance=False)
        await kill(h, dead)
        assert target(h, await join(h, "posted", role="VIEWER")) is live
        (request,) = sent(live, "create")
        assert request.method == "POST" and request.content_type.startswith("application/xml")
        assert b"https://files.example/intro.pdf" in request.body and b"appName" in request.body
        assert b"QUFB" not in request.body and b"embedded.pdf" not in request.body


@pytest.mark.gen_test(timeout=60)
async def test_recording_tenant_gets_a_record_set_for_the_new_nonce(db_url):
    async with Harness(db_url, nodes=2) as h:
        await h.pool.execute("UPDATE tenant SET record_by_default = true")
        await h.reload()
        dead, live = h.fleet.nodes
        ready = "https://front.example/ready"
        await on_one_node(h, dead, {"rec": q(record="true", **{"meta_bbb-recording-ready-url": ready})})
        (before,) = await meeting_rows(h, "rec")
        await kill(h, dead)
        assert target(h, await join(h, "rec", role="VIEWER")) is live
        (after,) = await meeting_rows(h, "rec")
        (sent_create,) = creates_of(live, "rec")
        assert sent_create["meta_b3lb-recordset"] == str(after["nonce"]) and sent_create["record"] == "true"
        assert "meta_bbb-recording-ready-url" not in sent_create
        sets = {r["nonce"]: r for r in await h.pool.fetch("SELECT nonce, ready_url FROM record_set")}
        assert set(sets) == {before["nonce"], after["nonce"]}  # the old node's set stays for its upload
        assert sets[after["nonce"]]["ready_url"] == ready


# -- bad input: no node to go to --------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_no_healthy_node_left_answers_failed_and_loses_nothing(db_url):
    async with Harness(db_url, nodes=2) as h:
        dead, other = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await set_node(h, other, maintenance=True)
        await kill(h, dead)
        (before,) = await meeting_rows(h, "m-1")
        r = await join(h, "m-1", role="VIEWER", redirect="false")
        assert tuple(children(r)[:2]) == UNAVAILABLE
        r = await join(h, "m-1", role="VIEWER", logoutURL="https://front.example/bye")
        assert r.code == 302 and "nodeUnavailable" in r.headers["Location"]
        assert await meeting_rows(h, "m-1") == [before]
        assert not sent(other, "create")
        # every node that takes it fails the create: tried, then the row is back as it was
        await set_node(h, other, maintenance=False)
        other.call_modes = {"create": "error"}
        r = await join(h, "m-1", role="VIEWER", redirect="false")
        assert tuple(children(r)[:2]) == UNAVAILABLE and len(sent(other, "create")) == 1
        (row,) = await meeting_rows(h, "m-1")
        assert (row["node_id"], row["nonce"], row["failover_state"], row["create_params"]) == (
            before["node_id"], before["nonce"], before["failover_state"], before["create_params"])
        # a node is back: the next join moves it
        other.call_modes = {}
        h.runtime.loads.nodes[node_id(h, other)].avoid_until = 0.0
        assert target(h, await join(h, "m-1", role="VIEWER")) is other
        assert other.meetings["m-1"].name == "Room m-1"


@pytest.mark.gen_test(timeout=60)
async def test_no_node_left_here_but_another_process_moved_it_to_a_node_now_in_maintenance(db_url):
    """Maintenance nodes keep serving their meetings: a join goes there, though no node takes new ones."""
    async with Harness(db_url, nodes=2) as h:
        dead, drained = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await set_node(h, drained, maintenance=True)
        await kill(h, dead)
        # another process failed it over to `drained` before the drain (this one has not read that yet)
        drained.add_meeting(FakeMeeting(meeting_id="m-1", name="Room m-1"))
        await h.pool.execute("UPDATE meeting SET node_id = $1, nonce = gen_random_uuid(), failover_state = 2 "
                             "WHERE meeting_id = 'm-1'", node_id(h, drained))
        assert target(h, await join(h, "m-1", role="VIEWER")) is drained
        assert xml(await h.call("getMeetingInfo", "meetingID=m-1")).findtext("meetingName") == "Room m-1"
        assert not sent(drained, "create")


@pytest.mark.gen_test(timeout=60)
async def test_a_failover_tries_the_next_node_when_one_fails_the_create(db_url):
    async with Harness(db_url, nodes=3) as h:
        dead, bad, good = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await kill(h, dead)
        bad.call_modes = {"create": "error"}
        h.runtime.loads.nodes[node_id(h, good)].avoid_until = time.monotonic() + 60  # the bad node is first
        assert target(h, await join(h, "m-1", role="VIEWER")) is good
        (row,) = await meeting_rows(h, "m-1")
        assert len(sent(bad, "create")) == 1 and row["node_id"] == node_id(h, good)
        assert_recreated_as_created(h, good, 1, row)


@pytest.mark.gen_test(timeout=60)
async def test_an_ended_meeting_is_not_recreated(db_url):
    async with Harness(db_url, nodes=2) as h:
        dead, live = h.fleet.nodes
        await on_one_node(h, dead, {"m-1": settings(1)})
        await kill(h, dead)
        await h.pool.execute("DELETE FROM meeting WHERE meeting_id = 'm-1'")  # ended elsewhere meanwhile
        r = await join(h, "m-1", role="VIEWER", redirect="false")
        assert xml(r).findtext("messageKey") == "invalidMeetingIdentifier"
        assert not sent(live, "create") and h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], "m-1") is None


# -- the stored create --------------------------------------------------------------------------------


def test_stored_create_keeps_what_a_re_create_needs_and_caps_the_rest():
    params = [("meetingID", "m"), ("name", "Room"), ("attendeePW", "a"), ("ATTENDEEPW", "x"),
              ("moderatorPW", "m"), ("meta_x", "y"), ("huge", "z" * 70_000), ("welcome", "w" * 100)]
    text = stored_create.encode(params, None, None)
    assert len(text) <= stored_create.MAX_STORED and "z" * 100 not in text
    stored = stored_create.StoredCreate.decode(text, "m", "Room")
    assert stored.params == [("meetingID", "m"), ("name", "Room"), ("meta_x", "y"), ("welcome", "w" * 100)]
    assert stored.passwords.role_for("m") == "MODERATOR" and stored.passwords.role_for("a") == "VIEWER"
    assert stored.passwords.role_for("x") is None and not stored.posted
    assert '"dropped":["huge"]' in text
    # unreadable or missing: its ID and name only, every password a viewer's
    for broken in (None, "", "[1,2]", "{not json", '{"params": 5}'):
        fallback = stored_create.StoredCreate.decode(broken, "m", "Room")
        assert fallback.params == [("meetingID", "m"), ("name", "Room")]
        assert fallback.passwords.role_for("anything") == "VIEWER"
    assert stored_create.reduced_body(b"<not-modules/>") is None
    assert stored_create.reduced_body(b"<modules><module name='presentation'><document name='a'>QQ==</document>"
                                      b"</module></modules>") is None
    assert stored_create.reduced_body(b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><modules>&e;</modules>"
                                      ) is None


# -- real processes ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE = "import sys; from b3lb.config import load_config; from b3lb.server import serve; sys.exit(serve(load_config()))"


def start_process(db_url: str, port: int, folder: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=db_url, B3LB_CONFIG=os.devnull, B3LB_SERVER_PORT=str(port), B3LB_SERVER_DATA_DIR=str(folder),
        B3LB_SERVER_LOG_LEVEL="WARNING", B3LB_SERVER_API_BASE_DOMAIN=BASE_DOMAIN, B3LB_POLLER_INTERVAL="0.3",
        B3LB_POLLER_JITTER="0.05", B3LB_POLLER_TIMEOUT="1", B3LB_API_CACHE_REFRESH_INTERVAL="0.5",
    )
    env.pop("REDIS_URL", None)
    return subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


@pytest.mark.gen_test(timeout=90)
async def test_two_b3lb_processes_racing_cause_one_create(db_url, tmp_path):
    """Two `b3lb serve` processes on one database (one of them polls): joins of a dead node's meetings
    sent to both at once re-create each meeting once, and both send their users to the same node."""
    fleet = FakeFleet(3)
    await fleet.start()
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
    client = AsyncHTTPClient(force_instance=True)
    ports = [free_port(), free_port()]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        tenants = await seed(pool, fleet)
        secret = tenants["ABC"].secrets[0][1]
        dead = fleet.nodes[0]
        await pool.execute("UPDATE node SET maintenance = (slug <> $1)", dead.name)
        processes = [start_process(db_url, port, tmp_path / str(port)) for port in ports]

        async def call(port: int, name: str, query: str) -> HTTPResponse:
            signed = f"{query}&checksum={digest('sha256', name, query, secret)}"
            request = HTTPRequest(f"http://127.0.0.1:{port}/bigbluebutton/api/{name}?{signed}",
                                  headers={"Host": f"abc.{BASE_DOMAIN}"}, follow_redirects=False, request_timeout=20)
            return await client.fetch(request, raise_error=False)

        for port in ports:  # both up
            for _ in range(200):
                with contextlib.suppress(OSError):
                    if (await call(port, "isMeetingRunning", "meetingID=x")).code == 200:
                        break
                await asyncio.sleep(0.05)
        for i in range(10):
            r = await call(ports[i % 2], "create", q(meetingID=f"m-{i}", name=f"Room m-{i}") + "&" + settings(i))
            assert xml(r).findtext("returncode") == "SUCCESS"
        assert len(dead.meetings) == 10
        await pool.execute("UPDATE node SET maintenance = false")
        dead.set_down()
        for _ in range(200):  # the polling process takes it out
            if await pool.fetchval("SELECT has_errors FROM node WHERE slug = $1", dead.name):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)  # both processes' node tables have it (refresh every 0.5 s)
        joins = [call(port, "join", q(meetingID=f"m-{i}", fullName="Ann", role="VIEWER"))
                 for i in range(10) for port in ports for _ in range(3)]
        answers = await asyncio.gather(*joins)
        for i in range(10):
            domains = {urlsplit(a.headers.get("Location", "")).hostname for a in answers[i * 6 : i * 6 + 6]}
            (domain,) = domains
            node = fleet.find_node(domain or "")
            assert node is not None and node is not dead and f"m-{i}" in node.meetings
            assert sum(len(creates_of(n, f"m-{i}")) for n in fleet.nodes if n is not dead) == 1
            assert node.meetings[f"m-{i}"].metadata["course"] == f"course-{i}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
        client.close()
        await pool.close()
        await fleet.stop()


def test_the_routing_table_follows_a_failover_s_state_within_one_placement():
    row = {"id": 1, "secret_id": 2, "meeting_id": "m", "node_id": 3, "nonce": uuid.uuid4(), "attendees": 0,
           "listed": False, "failover_state": 1}
    table = MeetingTable()
    table.add(MeetingRef.from_row(row))
    table.apply_row({**row, "failover_state": 2}, polling=False)  # the failover's create answered
    assert table.get(2, "m").failover_state == 2
    table.apply_row(row, polling=True)  # a read that began before that
    assert table.get(2, "m").failover_state == 2
    table.apply_row({**row, "nonce": uuid.uuid4(), "node_id": 4, "failover_state": 0}, polling=False)  # restarted
    assert (table.get(2, "m").node_id, table.get(2, "m").failover_state) == (4, 0)
