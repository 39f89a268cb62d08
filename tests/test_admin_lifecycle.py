"""Drain, panic and cluster maintenance (issue 13.4) against real PostgreSQL and the fake fleet.

The operations (b3lb/admin/lifecycle.py) run against the harness's database and fleet; the commands
run as the real console script (a subprocess, so it talks to the fleet while the harness serves) or
in-process through main() for the bad-input cases.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import orjson
import pytest
from admin_lifecycle_support import (
    ACTOR,
    Frontend,
    audit_rows,
    callback_param,
    create_on,
    maintenance_of,
    node_row_count,
    running_frontend,
)
from api_helpers import create_ok, hosting, meeting_rows, owner, sent, xml

from b3lb.admin import lifecycle
from b3lb.admin.cli import main
from b3lb.admin.common import AdminError
from b3lb.admin.fleet import node_maintenance
from b3lb.balancer import LoadTable
from b3lb.models import Cluster, Node
from b3lb.testing.fakebbb import checksum_is_valid
from b3lb.testing.harness import LOOPBACK_CALLBACKS, Harness


@pytest.fixture
def frontend(io_loop: object) -> Iterator[Frontend]:
    yield from running_frontend()


# Drain -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_drain_places_new_meetings_elsewhere_while_its_meetings_keep_working(db_url):
    async with Harness(db_url, nodes=3) as h:
        drained = h.fleet.nodes[0]
        await create_on(h, drained, "running-1")
        async with h.pool.acquire() as conn, conn.transaction():
            rows = await lifecycle.node_drain(conn, drained.name, ACTOR)
        assert rows[0]["state"] == "maintenance" and rows[0]["meetings_left"] == 1 and rows[0]["drained"] is False
        assert [(r["actor"], r["action"], r["target"]) for r in await audit_rows(h)] == [
            (ACTOR, "node.drain", f"main/{drained.name}")]
        await h.reload()
        for number in range(9):
            await create_ok(h, f"new-{number}")
            assert owner(h, f"new-{number}") is not drained
        # Everything addressed to the running meeting still goes to the drained node.
        r = await h.call("join", "meetingID=running-1&fullName=Ann&role=MODERATOR")
        assert r.code == 302 and urlsplit(r.headers["Location"]).hostname == drained.domain
        drained.add_attendees("running-1", 1)
        r = await h.call("isMeetingRunning", "meetingID=running-1")
        assert xml(r).findtext("running") == "true"
        r = await h.call("getMeetingInfo", "meetingID=running-1")
        assert xml(r).findtext("meetingID") == "running-1"
        assert sent(drained, "isMeetingRunning") and sent(drained, "getMeetingInfo")
        await create_ok(h, "running-1")  # a create of the running meeting reaches it where it is
        assert hosting(h, "running-1") == [drained] and len(await meeting_rows(h, "running-1")) == 1
        async with h.pool.acquire() as conn:
            status = await lifecycle.node_drain_status(conn, f"main/{drained.name}")
        assert status[0]["meetings_left"] == 1 and status[0]["slug"] == drained.name


@pytest.mark.gen_test(timeout=60)
async def test_wait_drained_returns_when_the_poller_sees_the_last_meeting_end(db_url):
    async with Harness(db_url, nodes=2, poller={"meeting_grace": 0.0}) as h:
        drained = h.fleet.nodes[0]
        for meeting_id in ("a-1", "a-2"):
            await create_on(h, drained, meeting_id)
        async with h.pool.acquire() as conn, conn.transaction():
            await lifecycle.node_drain(conn, drained.name, ACTOR)
        seen: list[int] = []
        waiting = asyncio.Event()

        def progress(row: dict) -> None:
            seen.append(row["meetings_left"])
            waiting.set()

        async with h.pool.acquire() as conn:
            task = asyncio.ensure_future(lifecycle.wait_drained(conn, drained.name, 60, every=0.05, progress=progress))
            await waiting.wait()
            assert seen == [2] and not task.done()
            await h.fleet.end_meeting(drained, "a-1")
            await h.poll()
            await h.fleet.end_meeting(drained, "a-2")
            await h.poll()
            rows = await task
        assert rows[0]["meetings_left"] == 0 and rows[0]["drained"] is True
        assert seen[0] == 2 and seen[-1] in (1, 2)


@pytest.mark.gen_test(timeout=60)
async def test_wait_drained_times_out_and_stops_when_maintenance_is_switched_off(db_url):
    async with Harness(db_url, nodes=2) as h:
        drained = h.fleet.nodes[0]
        await create_on(h, drained, "stays")
        async with h.pool.acquire() as conn:
            async with conn.transaction():
                await lifecycle.node_drain(conn, drained.name, ACTOR)
            with pytest.raises(AdminError, match=r"still hosts 1 meeting\(s\) after 0.2 s; it stays in maintenance"):
                await lifecycle.wait_drained(conn, drained.name, 0.2, every=0.05)
            assert (await maintenance_of(h))[drained.name] is True
            await node_maintenance(conn, drained.name, False)
            with pytest.raises(AdminError, match="left maintenance while draining"):
                await lifecycle.wait_drained(conn, drained.name, 5, every=0.05)


@pytest.mark.gen_test(timeout=120)
async def test_a_drained_node_that_goes_down_shows_as_down_and_drain_wait_stops(db_url, cli_env):
    async with Harness(db_url, nodes=2) as h:
        drained, other = h.fleet.nodes
        await create_on(h, drained, "stuck")
        async with h.pool.acquire() as conn, conn.transaction():
            await lifecycle.node_drain(conn, drained.name, ACTOR)
        drained.set_down()
        await h.poll()
        await h.poll()  # poller.error_after = 2: the node is in error (stored by the poller)
        assert await h.pool.fetchval("SELECT has_errors FROM node WHERE slug = $1", drained.name)
        async with h.pool.acquire() as conn:
            (row,) = await lifecycle.node_drain_status(conn, drained.name)
            assert (row["state"], row["error"], row["meetings_left"], row["drained"]) == (
                "maintenance+error", True, 1, False)
            # The poller cannot see the meeting of an unreachable node end: waiting would never finish.
            with pytest.raises(AdminError, match=f"node main/{drained.name} is in error; use node panic"):
                await lifecycle.wait_drained(conn, drained.name, 30, every=0.05)
        env = script_env(cli_env)
        code, out, err = await finish(await start_script(env, "--json", "node", "list"))
        assert code == 0, err
        assert {r["slug"]: r["state"] for r in orjson.loads(out)} == {drained.name: "maintenance+error",
                                                                      other.name: "ok"}
        code, out, err = await finish(await start_script(env, "node", "drain", drained.name, "--wait", "--timeout",
                                                         "60"))
        assert (code, out) == (1, "") and "Traceback" not in err
        assert err.splitlines()[-1].startswith(f"error: node main/{drained.name} is in error; use node panic")
        # Once the node is back, the wait goes on as usual.
        drained.set_up()
        await h.poll()
        await h.poll()
        async with h.pool.acquire() as conn:
            (row,) = await lifecycle.node_drain_status(conn, drained.name)
        assert (row["state"], row["error"], row["meetings_left"]) == ("maintenance", False, 1)


def script_env(cli_env: dict[str, str], **settings: str) -> dict[str, str]:
    return {**cli_env, "B3LB_CALLBACKS_ALLOWED_NETWORKS": "127.0.0.0/8", **settings}


async def start_script(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "b3lb.admin.cli", *args, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process, stderr_so_far: bytes = b"") -> tuple[int, str, str]:
    out, err = await process.communicate()
    return process.returncode or 0, out.decode(), (stderr_so_far + err).decode()


@pytest.mark.gen_test(timeout=90)
async def test_drain_command_waits_for_the_last_meeting_and_times_out_cleanly(db_url, cli_env):
    async with Harness(db_url, nodes=2, poller={"meeting_grace": 0.0}) as h:
        drained = h.fleet.nodes[0]
        await create_on(h, drained, "last-one")
        env = script_env(cli_env)
        # Without --wait: the node and its meetings left.
        code, out, err = await finish(await start_script(env, "--json", "node", "drain", drained.name))
        assert code == 0, err
        assert [(r["slug"], r["state"], r["meetings_left"]) for r in orjson.loads(out)] == [
            (drained.name, "maintenance", 1)]
        # --wait --timeout: exit 1 with one clear line; the node stays in maintenance.
        process = await start_script(env, "node", "drain", drained.name, "--wait", "--timeout", "1")
        code, out, err = await finish(process)
        assert code == 1 and out == ""
        assert err.splitlines()[-1] == (f"error: node main/{drained.name} still hosts 1 meeting(s) after 1 s; "
                                        "it stays in maintenance")
        assert "Traceback" not in err
        # --wait: returns once the poller removed the last meeting.
        process = await start_script(env, "--json", "node", "drain", drained.name, "--wait")
        first = await process.stderr.readline()
        assert first.decode().strip() == f"note: main/{drained.name}: 1 meeting(s) left"
        await h.fleet.end_meeting(drained, "last-one")
        await h.poll()
        code, out, err = await finish(process, first)
        assert code == 0, err
        assert [(r["meetings_left"], r["drained"]) for r in orjson.loads(out)] == [(0, True)]
        assert [r["action"] for r in await audit_rows(h)] == ["node.drain"] * 3


# Panic -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_panic_tells_frontends_then_ends_on_the_node_then_drops_the_rows(db_url, frontend):
    async with Harness(db_url, nodes=3, callbacks=LOOPBACK_CALLBACKS) as h:
        doomed, elsewhere = h.fleet.nodes[0], h.fleet.nodes[1]
        await create_on(h, doomed, "room-1", callback_param(frontend.url("/ended?room=1")))
        await create_on(h, doomed, "room-2", callback_param(frontend.url("/ended")))
        await create_on(h, doomed, "quiet")  # no end callback asked for
        await create_on(h, elsewhere, "other", callback_param(frontend.url("/other")))
        h.fleet.recorder.upload_base = f"http://127.0.0.1:{h.port}/"  # the node calls b3lb's end callback back
        doomed.meetings["room-2"].recording = True  # the node reports it as recorded (<recording>true)
        doomed.mark_changed()
        await h.poll()
        nonce = await h.pool.fetchval("SELECT nonce FROM meeting WHERE meeting_id = 'room-1'")
        routed_before = await node_row_count(h, doomed)
        async with h.pool.acquire() as conn:
            rows = await lifecycle.node_panic(conn, doomed.name, None, ACTOR, runtime=h.runtime)
        label = f"main/{doomed.name}"
        assert sorted((r["node"], r["meeting_id"], r["callback"], r["end"]) for r in rows) == [
            (label, "quiet", "none", "ended"),
            (label, "room-1", "sent (HTTP 200)", "ended"),
            (label, "room-2", "sent (HTTP 200)", "ended"),
        ]
        # The frontends heard it once, in BBB's form, each before its node was asked to end the meeting
        # (the node's own end callbacks came back to b3lb meanwhile and relayed nothing more).
        await h.fleet.settle()
        await asyncio.gather(*(t for t in list(h.runtime._tasks) if t.get_name() == "end callback relay"))
        assert len(frontend.hits) == 2
        calls = frontend.params()
        assert calls == {"room-1": [("room", "1"), ("recordingmarks", "false"), ("meetingID", "room-1")],
                         "room-2": [("recordingmarks", "true"), ("meetingID", "room-2")]}
        ends = sent(doomed, "end")
        assert sorted(dict(parse_qsl(r.query))["meetingID"] for r in ends) == ["quiet", "room-1", "room-2"]
        assert all(checksum_is_valid("end", r.query, doomed.secret) for r in ends)
        assert max(at for _, at in frontend.hits) <= min(r.received_at for r in ends)
        assert doomed.meetings == {} and list(elsewhere.meetings) == ["other"]
        assert [r["meeting_id"] for r in await meeting_rows(h)] == ["other"]
        assert await h.pool.fetchval("SELECT count(*) FROM meeting_ended") == 0  # all told: nothing to relay again
        await h.runtime.flush_counters()  # durations of rows the node's end callbacks took first
        assert await h.pool.fetchval("SELECT sum(meeting_duration_count) FROM secret_counter") == 3
        assert (await maintenance_of(h))[doomed.name] is True
        audit = await audit_rows(h)
        assert [(r["action"], r["target"], orjson.loads(r["detail"])["phase"]) for r in audit] == [
            ("node.panic", label, "started"), ("node.panic", label, "finished")]
        # Counted independently of the code: the rows the node had before, the `end`s it received.
        assert routed_before == 3 and len(ends) == 3 and await node_row_count(h, doomed) == 0
        assert orjson.loads(audit[1]["detail"]) == {
            "phase": "finished", "meetings": 3, "callbacks_sent": 2, "callbacks_failed": 0, "ends_failed": 0,
            "dropped": routed_before, "failures": []}
        # This process routes them no more; the frontends' re-creates land on other nodes.
        for meeting_id in ("room-1", "room-2", "quiet"):
            assert h.runtime.meetings.get(h.tenants["ABC"].secrets[0][0], meeting_id) is None
            await create_ok(h, meeting_id)
            assert owner(h, meeting_id) is not doomed
        r = await h.call("join", "meetingID=room-1&fullName=Ann&role=MODERATOR")
        assert r.code == 302 and urlsplit(r.headers["Location"]).hostname == owner(h, "room-1").domain
        # The node's own end callback for the old meeting, coming late, relays nothing more.
        await h.request(f"/b3lb/b/meeting/end?nonce={nonce}&recordingmarks=false&meetingID=room-1")
        await asyncio.gather(*(t for t in list(h.runtime._tasks) if t.get_name() == "end callback relay"))
        assert sorted(frontend.params()) == ["room-1", "room-2"] and len(frontend.hits) == 2


@pytest.mark.gen_test(timeout=60)
async def test_panic_of_a_dead_node_drops_the_rows_and_reports_what_failed(db_url, frontend):
    broken = Frontend(status=503)
    try:
        async with Harness(db_url, nodes=2, callbacks=LOOPBACK_CALLBACKS) as h:
            dead = h.fleet.nodes[0]
            await create_on(h, dead, "told", callback_param(frontend.url("/ended")))
            await create_on(h, dead, "unheard", callback_param(broken.url("/ended")))
            await create_on(h, dead, "refused", callback_param("http://10.1.2.3/ended"))  # the URL guard's no
            dead.set_down()
            routed_before = await node_row_count(h, dead)
            async with h.pool.acquire() as conn:
                rows = await lifecycle.node_panic(conn, dead.name, h.runtime.nodes, ACTOR, runtime=h.runtime)
            outcome = {r["meeting_id"]: (r["callback"], r["end"], r["dropped"]) for r in rows}
            assert outcome["told"][0] == "sent (HTTP 200)"
            assert outcome["unheard"][0] == "failed: HTTP 503"
            assert outcome["refused"][0].startswith("refused: address 10.1.2.3 is private")
            assert all(end.startswith("failed: ") and dropped for _, end, dropped in outcome.values())
            assert await meeting_rows(h) == []
            # Callbacks not delivered wait for the node's own end callback (relayed with retries if it comes).
            kept = await h.pool.fetch("SELECT meeting_id FROM meeting_ended ORDER BY meeting_id")
            assert [r["meeting_id"] for r in kept] == ["refused", "unheard"]
            detail = orjson.loads((await audit_rows(h))[-1]["detail"])
            assert routed_before == 3 and await node_row_count(h, dead) == 0
            assert (detail["callbacks_sent"], detail["callbacks_failed"], detail["ends_failed"], detail["dropped"]) == (
                1, 2, 3, routed_before)
            assert sorted((f["meeting_id"], f["callback"][:7]) for f in detail["failures"]) == [
                ("refused", "refused"), ("told", "sent (H"), ("unheard", "failed:")]
            await create_ok(h, "told")  # the dead node still "runs" it: it never heard the end
            assert [r["node_id"] for r in await meeting_rows(h, "told")] == [
                await h.pool.fetchval("SELECT id FROM node WHERE slug = $1", h.fleet.nodes[1].name)]
            assert "told" in h.fleet.nodes[1].meetings
    finally:
        broken.stop()


@pytest.mark.gen_test(timeout=60)
async def test_panic_of_a_stalled_node_is_bounded_by_its_timeout(db_url):
    async with Harness(db_url, nodes=2) as h:
        stalled = h.fleet.nodes[0]
        await create_on(h, stalled, "stuck")
        stalled.call_modes, stalled.delay = {"end": "stall"}, 3.0  # takes the request, answers never
        async with h.pool.acquire() as conn:
            rows = await lifecycle.node_panic(conn, stalled.name, None, ACTOR, runtime=h.runtime, timeout=0.3)
        assert [(r["meeting_id"], r["end"], r["dropped"]) for r in rows] == [("stuck", "not sent: timed out", True)]
        assert await meeting_rows(h) == []


@pytest.mark.gen_test(timeout=60)
async def test_one_panic_per_node_at_a_time_and_never_inside_a_transaction(db_url):
    async with Harness(db_url, nodes=2) as h:
        node = h.fleet.nodes[0]
        await create_on(h, node, "kept")
        node_row_id = await h.pool.fetchval("SELECT id FROM node WHERE slug = $1", node.name)
        async with h.pool.acquire() as other:
            assert await other.fetchval(
                "SELECT pg_try_advisory_lock(hashtext('b3lb-panic:' || current_schema()), $1)", node_row_id)
            async with h.pool.acquire() as conn:
                with pytest.raises(AdminError, match=f"a panic of node main/{node.name} is already running"):
                    await lifecycle.node_panic(conn, node.name, None, ACTOR, runtime=h.runtime)
                async with conn.transaction():
                    with pytest.raises(RuntimeError, match="outside"):
                        await lifecycle.node_panic(conn, node.name, None, ACTOR, runtime=h.runtime)
            await other.execute("SELECT pg_advisory_unlock_all()")
        assert len(await meeting_rows(h)) == 1 and node.meetings


@pytest.mark.gen_test(timeout=90)
async def test_panic_command(db_url, cli_env, frontend):
    async with Harness(db_url, nodes=2, callbacks=LOOPBACK_CALLBACKS) as h:
        doomed = h.fleet.nodes[0]
        await create_on(h, doomed, "room-1", callback_param(frontend.url("/ended")))
        env = script_env(cli_env, B3LB_API_CACHE_REFRESH_INTERVAL="0.2")
        # Without --yes and without a terminal: refused before anything is written.
        code, out, err = await finish(await start_script(env, "node", "panic", doomed.name))
        assert code == 2 and out == ""
        assert err == f"error: --yes: node panic ends every meeting on '{doomed.name}'; confirm with --yes\n"
        assert not (await maintenance_of(h))[doomed.name] and await audit_rows(h) == []
        assert len(await meeting_rows(h)) == 1 and frontend.hits == [] and not sent(doomed, "end")
        code, out, err = await finish(await start_script(env, "--json", "node", "panic", doomed.name, "--yes"))
        assert code == 0, err
        assert [(r["meeting_id"], r["callback"], r["end"], r["dropped"]) for r in orjson.loads(out)] == [
            ("room-1", "sent (HTTP 200)", "ended", True)]
        assert "waiting 0.2 s until every b3lb process has seen that" in err and "warning" not in err
        assert list(frontend.params()) == ["room-1"] and doomed.meetings == {}
        audit = [(r["actor"].startswith("cli:"), r["action"]) for r in await audit_rows(h)]
        assert audit == [(True, "node.panic")] * 2
        await h.reload()
        await create_ok(h, "room-1")
        assert owner(h, "room-1") is h.fleet.nodes[1]


# Cluster maintenance -----------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_cluster_maintenance_is_its_own_switch_and_off_restores_each_nodes_state(db_url):
    async with Harness(db_url, nodes=3) as h:
        drained, first, second = h.fleet.nodes
        async with h.pool.acquire() as conn, conn.transaction():
            await lifecycle.node_drain(conn, drained.name, ACTOR)
            rows = await lifecycle.cluster_maintenance(conn, "main", True, ACTOR)
        assert [(r["slug"], r["state"], r["cluster_maintenance"]) for r in rows] == [
            (n.name, "maintenance", True) for n in (drained, first, second)]
        assert await maintenance_of(h) == {drained.name: True, first.name: False, second.name: False}  # untouched
        await h.reload()  # the serving process reads the cluster's switch with its node table
        assert all(e.in_maintenance and e.load == -2 for e in h.runtime.loads.nodes.values())
        r = await h.call("create", "meetingID=nowhere&name=Room")
        assert xml(r).findtext("message") == "No Node available."
        async with h.pool.acquire() as conn, conn.transaction():
            await lifecycle.cluster_maintenance(conn, "main", True, ACTOR)  # again: nothing changes
            rows = await lifecycle.cluster_maintenance(conn, "main", False, ACTOR)
        # Off: each node as it is on its own; the drained one stays in maintenance.
        assert [(r["slug"], r["state"]) for r in rows] == [
            (drained.name, "maintenance"), (first.name, "ok"), (second.name, "ok")]
        await h.reload()
        for number in range(6):
            await create_ok(h, f"somewhere-{number}")
            assert owner(h, f"somewhere-{number}") is not drained
        async with h.pool.acquire() as conn:
            (status,) = await lifecycle.node_drain_status(conn, drained.name)
        assert (status["node_maintenance"], status["cluster_maintenance"], status["drained"]) == (True, False, True)
        assert [(r["action"], orjson.loads(r["detail"])) for r in await audit_rows(h)][1:] == [
            ("cluster.maintenance", {"on": True, "nodes": 3, "changed": True}),
            ("cluster.maintenance", {"on": True, "nodes": 3, "changed": False}),
            ("cluster.maintenance", {"on": False, "nodes": 3, "changed": True}),
        ]
        async with h.pool.acquire() as conn:
            for name, on, error in (("bad\nname", True, ValueError), ("", True, ValueError),
                                    ("nosuch", True, AdminError), ("main", "yes", ValueError)):
                with pytest.raises(error):
                    await lifecycle.cluster_maintenance(conn, name, on, ACTOR)  # type: ignore[arg-type]
        assert len(await audit_rows(h)) == 4
        assert not await h.pool.fetchval("SELECT maintenance FROM cluster WHERE name = 'main'")


def test_the_balancer_skips_every_node_of_a_cluster_in_maintenance():
    def table(cluster_maintenance: bool) -> LoadTable:
        loads = LoadTable()
        clusters = [Cluster(1, "a", maintenance=cluster_maintenance), Cluster(2, "b")]
        nodes = [Node(10, 1, "a1", "a1.example.org", "s"), Node(20, 2, "b1", "b1.example.org", "s", maintenance=True)]
        loads.rebuild(clusters, nodes, [(7, 1), (7, 2)])
        return loads

    assert table(False).choose(7).node.slug == "a1"
    closed = table(True)
    assert closed.choose(7) is None
    a1 = closed.nodes[10]
    assert a1.in_maintenance and not a1.available and not a1.node.maintenance and a1.load == -2


# The commands with bad input: one clear line, non-zero exit, nothing written ---------------------


class Cli:
    def __init__(self, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
        self.env, self.capsys = env, capsys
        for key in ("DATABASE_URL", "B3LB_SERVER_DATA_DIR", "B3LB_CONFIG"):
            monkeypatch.setenv(key, env[key])
        monkeypatch.setenv("B3LB_API_CACHE_REFRESH_INTERVAL", "0")  # a panic waits this long first

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = main(list(args))
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *args: str) -> str:
        status, out, err = self(*args)
        assert status == 0, err
        return out

    def fails(self, status: int, *args: str) -> str:
        code, out, err = self(*args)
        assert (code, out) == (status, ""), err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
        return err


def written(env: dict[str, str]) -> tuple[int, list[bool]]:
    async def read() -> tuple[int, list[bool]]:
        conn = await asyncpg.connect(env["DATABASE_URL"])
        try:
            audits = await conn.fetchval("SELECT count(*) FROM admin_audit")
            flags = [r["maintenance"] for r in await conn.fetch("SELECT maintenance FROM node ORDER BY id")]
            return audits, flags
        finally:
            await conn.close()

    return asyncio.run(read())


def test_commands_refuse_bad_input_and_write_nothing(cli_env, monkeypatch, capsys):
    cli = Cli(cli_env, monkeypatch, capsys)
    for cluster in ("one", "two"):
        cli.ok("cluster", "add", cluster)
        cli.ok("node", "add", "--cluster", cluster, "--slug", "bbb1", "--domain", f"bbb1.{cluster}.example.org",
               "--secret", "nodesecret")
    before = written(cli_env)  # (audit rows of the set-up, no node in maintenance)
    assert before[1] == [False, False]
    assert cli.fails(1, "node", "drain", "nosuch") == "error: no node 'nosuch'\n"
    assert "is ambiguous: use CLUSTER/SLUG (one/bbb1, two/bbb1)" in cli.fails(1, "node", "drain", "bbb1")
    assert "is ambiguous" in cli.fails(1, "node", "panic", "bbb1", "--yes")
    assert "invalid node" in cli.fails(2, "node", "drain", "bad slug!")
    assert "invalid node" in cli.fails(2, "node", "panic", "/bbb1", "--yes")
    assert cli.fails(2, "node", "panic", "one/bbb1") == (
        "error: --yes: node panic ends every meeting on 'one/bbb1'; confirm with --yes\n")
    assert "--timeout: only with --wait" in cli.fails(2, "node", "drain", "one/bbb1", "--timeout", "5")
    assert "--timeout" in cli.fails(2, "node", "drain", "one/bbb1", "--wait", "--timeout", "0")
    assert "must not contain control characters" in cli.fails(2, "cluster", "maintenance", "bad\tname", "on")
    assert "must be 1 to" in cli.fails(2, "cluster", "maintenance", " ", "on")
    assert cli.fails(1, "cluster", "maintenance", "nosuch", "on") == "error: no cluster named 'nosuch'\n"
    assert "invalid choice" in cli.fails(2, "cluster", "maintenance", "one", "maybe")
    assert written(cli_env) == before
    # And the same commands with good input.
    rows = orjson.loads(cli.ok("--json", "node", "drain", "two/bbb1"))
    assert [(r["cluster"], r["slug"], r["state"], r["meetings_left"], r["drained"]) for r in rows] == [
        ("two", "bbb1", "maintenance", 0, True)]
    assert cli.ok("node", "drain", "one/bbb1", "--wait", "--timeout", "5").splitlines()[0].split()[:3] == [
        "CLUSTER", "SLUG", "DOMAIN"]
    assert written(cli_env) == (before[0] + 2, [True, True])
    rows = orjson.loads(cli.ok("--json", "cluster", "maintenance", "one", "off"))
    assert [(r["slug"], r["state"]) for r in rows] == [("bbb1", "maintenance")]  # drained by itself: stays
    assert orjson.loads(cli.ok("--json", "node", "panic", "one/bbb1", "--yes")) == []
    assert written(cli_env) == (before[0] + 5, [True, True])
