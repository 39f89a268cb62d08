"""A panic's order and the admin API's panic and meeting end (issue 13.4), against real PostgreSQL
and the fake fleet: a frontend re-creating its meeting from inside the end callback gets it on
another node; the API's panic answers 202 and reports through the node's drain status; an API
meeting end whose database transaction fails leaves routing as it was and says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import pytest
from admin_api_support import API, admin_api
from admin_lifecycle_support import (
    ACTOR,
    Frontend,
    callback_param,
    create_on,
    maintenance_of,
    node_row_count,
    running_frontend,
)
from admin_page_support import wait_for
from api_helpers import create_ok, meeting_rows, node_id, owner, sent, xml

from b3lb.admin import lifecycle
from b3lb.testing.fakebbb import checksum_is_valid
from b3lb.testing.harness import LOOPBACK_CALLBACKS, Harness


@pytest.fixture
def frontend(io_loop: object) -> Iterator[Frontend]:
    yield from running_frontend()


@pytest.mark.gen_test(timeout=60)
async def test_a_frontend_recreating_from_its_end_callback_gets_the_meeting_on_another_node(db_url, frontend):
    async with Harness(db_url, nodes=3, callbacks=LOOPBACK_CALLBACKS) as h:
        doomed = h.fleet.nodes[0]
        await create_on(h, doomed, "room-1", callback_param(frontend.url("/ended")))
        await create_on(h, doomed, "room-2", callback_param(frontend.url("/ended")))
        h.fleet.recorder.upload_base = f"http://127.0.0.1:{h.port}/"  # the node calls b3lb's end callback back
        answers: dict[str, str] = {}

        async def recreate(uri: str) -> None:
            """What a frontend does on the callback: create the meeting again at once, before answering."""
            meeting_id = dict(parse_qsl(urlsplit(uri).query))["meetingID"]
            r = await h.call("create", f"meetingID={meeting_id}&name=Room")
            answers[meeting_id] = xml(r).findtext("returncode") or ""

        frontend.on_hit = recreate
        async with h.pool.acquire() as conn:
            rows = await lifecycle.node_panic(conn, doomed.name, None, ACTOR, runtime=h.runtime)
        assert sorted((r["meeting_id"], r["callback"], r["end"]) for r in rows) == [
            ("room-1", "sent (HTTP 200)", "ended"), ("room-2", "sent (HTTP 200)", "ended")]
        assert answers == {"room-1": "SUCCESS", "room-2": "SUCCESS"}
        await h.fleet.settle()  # the doomed node's own end callbacks (old nonces) came back meanwhile
        await asyncio.gather(*(t for t in list(h.runtime._tasks) if t.get_name() == "end callback relay"))
        assert doomed.meetings == {}
        secret_id = h.tenants["ABC"].secrets[0][0]
        for meeting_id in ("room-1", "room-2"):
            host = owner(h, meeting_id)  # running on exactly one node, not the doomed one
            assert host is not doomed
            assert [r["node_id"] for r in await meeting_rows(h, meeting_id)] == [node_id(h, host)]
            ref = h.runtime.meetings.get(secret_id, meeting_id)
            assert ref is not None and ref.node_id == node_id(h, host)
            r = await h.call("join", f"meetingID={meeting_id}&fullName=Ann&role=MODERATOR")
            assert r.code == 302 and urlsplit(r.headers["Location"]).hostname == host.domain
        assert len(frontend.hits) == 2  # each frontend heard it once
        assert await node_row_count(h, doomed) == 0 and (await maintenance_of(h))[doomed.name] is True


@pytest.mark.gen_test(timeout=90)
async def test_api_panic_answers_202_and_reports_through_the_drain_status(db_url, frontend):
    async with admin_api(db_url, nodes=2, cache_refresh_interval=0.2, callbacks=LOOPBACK_CALLBACKS) as api:
        h = api.h
        doomed = h.fleet.nodes[0]
        await create_on(h, doomed, "room-1", callback_param(frontend.url("/ended")))
        await create_on(h, doomed, "room-2")
        told = asyncio.Event()  # the frontend answers only once the test has seen the panic running
        frontend.on_hit = lambda uri: told.wait()
        code, answer = await api.call("POST", f"/nodes/main/{doomed.name}/panic", token="writer")
        assert code == 202, answer
        (row,) = answer["data"]
        assert row["status_url"] == f"{API}/nodes/main/{doomed.name}/drain"
        assert (row["state"], row["panic_state"], row["meetings_left"]) == ("maintenance", "running", 2)
        (status,) = await api.ok("GET", f"/nodes/main/{doomed.name}/drain", token="reader")
        assert status["panic_state"] == "running"
        assert "already running" in await api.error(409, "POST", f"/nodes/main/{doomed.name}/panic", token="writer")
        await wait_for(lambda: frontend.hits, "the frontend is told")
        assert await node_row_count(h, doomed) == 0  # routing rows go before any frontend is told
        assert doomed.meetings and not sent(doomed, "end")  # the node is asked only after the callbacks
        told.set()
        for _ in range(600):  # a hang guard, not a timing assertion
            (status,) = await api.ok("GET", f"/nodes/main/{doomed.name}/drain", token="reader")
            if status["panic_state"] != "running":
                break
            await asyncio.sleep(0.05)
        assert (status["panic_state"], status["meetings_left"], status["drained"]) == ("finished", 0, True)
        detail = status["panic_detail"]
        assert (detail["meetings"], detail["callbacks_sent"], detail["ends_failed"]) == (2, 1, 0)
        assert detail["failures"] == []
        assert doomed.meetings == {} and len(sent(doomed, "end")) == 2
        assert all(checksum_is_valid("end", r.query, doomed.secret) for r in sent(doomed, "end"))
        phases = [(r["actor"], r["detail"]["phase"]) for r in await api.audit_rows("node.panic")]
        assert phases == [("token:writer", "started"), ("token:writer", "finished")]
        await create_ok(h, "room-1")
        assert owner(h, "room-1") is h.fleet.nodes[1]
        # Bad input and scopes, nothing started.
        await api.error(404, "POST", "/nodes/main/nope/panic", token="writer")
        await api.error(403, "POST", f"/nodes/main/{doomed.name}/panic", token="reader")
        await api.error(403, "POST", f"/nodes/main/{doomed.name}/panic", token="abc-admin")
        assert len(await api.audit_rows("node.panic")) == 2
        assert not await h.pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1",
                                         node_id(h, doomed))  # the lock did not go back to the pool


@pytest.mark.gen_test(timeout=60)
async def test_api_meeting_end_whose_transaction_fails_changes_no_routing_and_says_so(db_url):
    async with admin_api(db_url, nodes=2) as api:
        h = api.h
        await create_ok(h, "room-1")
        host = owner(h, "room-1")
        secret_id = h.tenants["ABC"].secrets[0][0]
        # A real failure inside the transaction: the audit row cannot be written, so the row's change
        # must not stay either, and this process must keep routing the meeting as every other does.
        await api.pool.execute("CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS "
                               "$$ BEGIN RAISE EXCEPTION 'audit refused'; END $$")
        await api.pool.execute("CREATE TRIGGER refuse BEFORE INSERT ON admin_audit FOR EACH ROW "
                               "EXECUTE FUNCTION refuse_audit()")
        code, answer = await api.call("POST", "/meetings/end", {"meeting_id": "room-1"}, token="writer")
        assert code == 503 and answer["error"] == "unavailable", answer
        assert "ended the meeting, but the database could not record it" in answer["message"]
        assert "audit refused" not in answer["message"]
        assert "room-1" not in host.meetings and len(sent(host, "end")) == 1  # the node's end cannot be undone
        assert checksum_is_valid("end", sent(host, "end")[0].query, host.secret)
        assert len(await meeting_rows(h, "room-1")) == 1 and await api.count("admin_audit") == 0
        assert h.runtime.meetings.get(secret_id, "room-1") is not None
        await api.pool.execute("DROP TRIGGER refuse ON admin_audit")
        # Ending it again: the node says notFound, which counts as gone; now the route goes, with its audit row.
        (row,) = await api.ok("POST", "/meetings/end", {"meeting_id": "room-1"}, token="writer")
        assert row["node_answer"] == "notFound"
        assert await meeting_rows(h, "room-1") == [] and h.runtime.meetings.get(secret_id, "room-1") is None
        assert [(r["action"], r["detail"]["answer"]) for r in await api.audit_rows()] == [("meeting.end", "notFound")]
        # A node that does not answer: 502, nothing dropped.
        await create_ok(h, "room-2")
        owner(h, "room-2").set_down()
        code, answer = await api.call("POST", "/meetings/end", {"meeting_id": "room-2"}, token="writer")
        assert code == 502 and answer["error"] == "node_failed"
        assert len(await meeting_rows(h, "room-2")) == 1 and h.runtime.meetings.get(secret_id, "room-2") is not None
