"""The render worker (b3lb/render/worker.py, jobs.py) against a real PostgreSQL and real local storage,
with a stand-in pipeline (render_support.StandIn) so that claims, leases, retries and the orphan
rule are tested without ffmpeg."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
from render_support import (
    READY_URL,
    HookedStorage,
    StandIn,
    add_profile,
    add_set,
    job_row,
    read_file,
    records_of,
    render_env,
    render_error,
    reupload,
    stored_files,
    wait_until,
)

from b3lb.db import Q
from b3lb.recordings.storage import archive_key, video_key
from b3lb.render import jobs
from b3lb.render import worker as worker_module
from b3lb.render.model import RenderError


@pytest.mark.gen_test(timeout=60)
async def test_renders_one_record_per_profile_then_the_set_is_rendered(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        await add_profile(env.pool, "web", "WEBM")
        set_id = await add_set(env)
        pipeline = StandIn()
        worker = env.worker(pipeline, "w1")
        assert await worker.run_once() == "rendered"
        assert await worker.run_once() is None  # nothing else is due
        assert await job_row(env, set_id) is None
        assert await env.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id) == "RENDERED"
        hd, web = await records_of(env, set_id)
        assert (hd["profile"], web["profile"]) == ("hd", "web")
        assert hd["file"] == video_key(set_id, str(hd["nonce"]), "mp4")
        assert web["file"] == video_key(set_id, str(web["nonce"]), "webm")
        assert await read_file(env.storage, hd["file"]) == b"hd|v1" and hd["size"] == 5
        assert await read_file(env.storage, web["file"]) == b"web|v1" and web["size"] == 6
        assert hd["meta_name"] == "Weekly (hd)" and hd["listed"] is True and hd["published"] is True
        assert hd["record_id"] != web["record_id"] and hd["nonce"] != web["nonce"]
        assert stored_files(env) == {archive_key(set_id), hd["file"], web["file"]}
        # One ready callback per record, queued with it.
        outbox = await env.pool.fetch("SELECT record_id, url FROM callback_outbox ORDER BY record_id")
        assert [(o["record_id"], o["url"]) for o in outbox] == sorted([(hd["id"], READY_URL), (web["id"], READY_URL)])
        assert pipeline.calls == [("hd", "v1"), ("web", "v1")]
        assert list(env.tmp_path.joinpath("work").iterdir()) == []  # scratch folders removed


@pytest.mark.gen_test(timeout=60)
async def test_claim_lease_heartbeat_and_takeover(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        first, second = await add_set(env), await add_set(env)
        await env.pool.execute("UPDATE render_job SET not_before = now() + interval '1 hour' WHERE recordset_id = $1",
                               second)  # fmt: skip
        claim = await jobs.claim(env.pool, "w1", 30.0)
        assert claim is not None and claim.recordset_id == first and claim.attempts == 1
        assert claim.previous_worker == "" and claim.archive_sha256 and claim.set_nonce == first
        row = await job_row(env, first)
        assert (row["state"], row["worker"], row["attempts"], row["lease_id"]) == ("RUNNING", "w1", 1, claim.lease_id)
        assert row["locked_until"] > row["started_at"]
        assert await jobs.claim(env.pool, "w2", 30.0) is None  # first is held, second not due yet
        before = row["locked_until"]
        assert await jobs.extend(env.pool, claim, 120.0, 0.5) is True
        row = await job_row(env, first)
        assert row["locked_until"] > before and row["progress"] == 0.5
        # The lease runs out (the worker died): another worker takes the job over, the first one's
        # heartbeats and writes no longer count.
        await env.pool.execute("UPDATE render_job SET locked_until = now() - interval '1 second'")
        taken = await jobs.claim(env.pool, "w2", 30.0)
        assert taken is not None and taken.recordset_id == first and taken.attempts == 2
        assert taken.previous_worker == "w1" and taken.lease_id != claim.lease_id
        assert await jobs.extend(env.pool, claim, 30.0, 0.9) is False
        assert await jobs.release(env.pool, claim) is False
        assert await jobs.retry_or_fail(env.pool, claim, reason="x", tail="", max_attempts=3, backoff=1) is None
        with pytest.raises(jobs.LostJob):
            await jobs.finish(env.pool, env.storage, claim, [], 30.0)
        assert (await job_row(env, first))["worker"] == "w2"
        # Given back (worker stopped): due at once, the attempt not counted.
        assert await jobs.release(env.pool, taken) is True
        row = await job_row(env, first)
        assert (row["state"], row["attempts"], row["locked_until"]) == ("QUEUED", 1, None)


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_claims_never_share_a_job(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        sets = {await add_set(env) for _ in range(8)}
        claims = await asyncio.gather(*(jobs.claim(env.pool, f"w{i}", 30.0) for i in range(12)))
        taken = [c.recordset_id for c in claims if c is not None]
        assert sorted(taken) == sorted(sets)  # each job once, the extra claimers got nothing


@pytest.mark.gen_test(timeout=120)
async def test_two_workers_render_each_job_once(db_url, tmp_path):
    async with render_env(db_url, tmp_path, concurrency=2) as env:
        await add_profile(env.pool, "hd")
        await add_profile(env.pool, "web", "WEBM")
        sets = [await add_set(env, marker=f"m{i}") for i in range(6)]
        pipeline = StandIn()
        done = await asyncio.gather(env.worker(pipeline, "w1").run(until_idle=True),
                                    env.worker(pipeline, "w2").run(until_idle=True))  # fmt: skip
        assert sum(done) == 6
        assert sorted(pipeline.calls) == sorted((p, f"m{i}") for i in range(6) for p in ("hd", "web"))
        assert await env.pool.fetchval("SELECT count(*) FROM render_job") == 0
        statuses = await env.pool.fetch("SELECT DISTINCT status FROM record_set")
        assert [r["status"] for r in statuses] == ["RENDERED"]
        for index, set_id in enumerate(sets):
            rows = await records_of(env, set_id)
            assert [(r["profile"], r["size"] > 0) for r in rows] == [("hd", True), ("web", True)]
            assert await read_file(env.storage, rows[0]["file"]) == f"hd|m{index}".encode()
        assert pipeline.most_active <= 4


@pytest.mark.gen_test(timeout=60)
async def test_concurrency_limits_jobs_at_once(db_url, tmp_path):
    async with render_env(db_url, tmp_path, concurrency=2) as env:
        await add_profile(env.pool, "hd")
        sets = [await add_set(env) for _ in range(3)]
        pipeline = StandIn(gates={"hd": asyncio.Event()})
        worker = env.worker(pipeline, "w1")
        run = asyncio.ensure_future(worker.run(until_idle=True))
        await wait_until(lambda: pipeline.waiting.get("hd") == 2, "two renders at the gate")
        states = await env.pool.fetch("SELECT state, count(*) AS n FROM render_job GROUP BY state ORDER BY state")
        assert [(r["state"], r["n"]) for r in states] == [("QUEUED", 1), ("RUNNING", 2)]
        pipeline.gates["hd"].set()
        assert await run == 3
        assert pipeline.most_active == 2
        for set_id in sets:
            assert [r["profile"] for r in await records_of(env, set_id)] == ["hd"]


@pytest.mark.gen_test(timeout=60)
async def test_failed_attempts_are_retried_with_backoff_then_failed(db_url, tmp_path):
    async with render_env(db_url, tmp_path, max_attempts=3, backoff_seconds=1000.0) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        tail = "\n".join(f"ffmpeg line {i}" for i in range(20))
        pipeline = StandIn(failures=[render_error("ffmpeg exited with status 1", tail) for _ in range(3)])
        worker = env.worker(pipeline, "w1")
        for attempt, delay in ((1, 1000), (2, 2000)):
            assert await worker.run_once() == "retry"
            row = await job_row(env, set_id)
            assert (row["state"], row["attempts"]) == ("QUEUED", attempt)
            assert row["last_error"] == "ffmpeg exited with status 1"
            assert row["ffmpeg_tail"] == tail and row["locked_until"] is None
            wait = await env.pool.fetchval("SELECT extract(epoch FROM not_before - now()) FROM render_job")
            assert delay - 60 < wait <= delay
            assert await worker.run_once() is None  # not due yet
            await env.pool.execute("UPDATE render_job SET not_before = now()")
        assert await worker.run_once() == "failed"
        row = await job_row(env, set_id)
        assert (row["state"], row["attempts"], row["last_error"], row["ffmpeg_tail"]) == (
            "FAILED", 3, "ffmpeg exited with status 1", tail)
        await env.pool.execute("UPDATE render_job SET not_before = now()")
        assert await worker.run_once() is None  # FAILED stays for the operator
        assert await env.pool.fetchval("SELECT status FROM record_set") == "UPLOADED"
        assert await records_of(env, set_id) == [] and stored_files(env) == {archive_key(set_id)}
        # `b3lb recording rerender` queues it afresh; then it renders.
        await env.pool.execute(Q.render_rerender, set_id)
        row = await job_row(env, set_id)
        assert (row["state"], row["attempts"], row["last_error"], row["ffmpeg_tail"]) == ("QUEUED", 0, "", "")
        assert await worker.run_once() == "rendered"


@pytest.mark.gen_test(timeout=60)
async def test_jobs_that_cannot_succeed_fail_at_once(db_url, tmp_path):
    async with render_env(db_url, tmp_path, max_attempts=3) as env:
        no_profiles = await add_set(env)
        worker = env.worker(StandIn(), "w1")
        assert await worker.run_once() == "failed"
        row = await job_row(env, no_profiles)
        assert row["state"] == "FAILED" and "no recording profile" in row["last_error"] and row["attempts"] == 1
        await add_profile(env.pool, "hd")
        # A damaged archive (its bytes no longer match the recorded sha256) is retried: storage may heal.
        damaged = await add_set(env)
        await env.storage.put_bytes(archive_key(damaged), b"not the uploaded archive")
        assert await worker.run_once() == "retry"
        assert "does not match its recorded sha256" in (await job_row(env, damaged))["last_error"]
        # A job whose worker died on its last attempt is FAILED instead of being taken again.
        await env.pool.execute("UPDATE render_job SET state = 'RUNNING', attempts = 3, worker = 'gone:1',"
                               " locked_until = now() - interval '1 second' WHERE recordset_id = $1", damaged)
        assert await worker.run_once() is None
        row = await job_row(env, damaged)
        assert row["state"] == "FAILED" and "gone:1 stopped without finishing" in row["last_error"]


@pytest.mark.gen_test(timeout=60)
async def test_errors_flagged_permanent_fail_at_once(db_url, tmp_path):
    """A broken archive (the extraction says so) or a render that cannot succeed is not retried (a
    retry would download the archive again for nothing); a plain render error is."""
    async with render_env(db_url, tmp_path, max_attempts=3) as env:
        await add_profile(env.pool, "hd")
        broken = RenderError("the archive is broken: shapes.svg is not XML")
        broken.permanent = True  # what the extraction flags: retrying cannot help
        pipeline = StandIn(extract_failures=[broken])
        worker = env.worker(pipeline, "w1")
        first = await add_set(env)
        assert await worker.run_once() == "failed"
        row = await job_row(env, first)
        assert (row["state"], row["attempts"], row["last_error"]) == ("FAILED", 1, str(broken))
        second = await add_set(env)
        hopeless = RenderError("unsupported slide format", "ffmpeg: last line")
        hopeless.permanent = True
        pipeline.failures = [hopeless, RenderError("ffmpeg was killed")]
        assert await worker.run_once() == "failed"
        row = await job_row(env, second)
        assert (row["state"], row["attempts"], row["ffmpeg_tail"]) == ("FAILED", 1, "ffmpeg: last line")
        assert pipeline.calls == [("hd", "v1")]
        third = await add_set(env)
        assert await worker.run_once() == "retry"  # not flagged: it may work next time
        assert (await job_row(env, third))["state"] == "QUEUED"


def test_stale_scratch_folders_are_this_hosts_dead_processes_only(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = worker_module.host_tag()
    names = {
        "mine-dead": f"job-{dead.pid}@{host}@abc_1",
        "mine-alive": f"job-{os.getpid()}@{host}@abc_2",  # this process's own job
        "parent-alive": f"job-{os.getppid()}@{host}@abc_3",  # another live process here
        "other-host": f"job-{dead.pid}@{host}x@abc_4",  # a dead pid here means nothing there
        "other-host-2": f"job-{dead.pid}@other.example@abc_5",
        "no-host": f"job-{dead.pid}-abc_6",
        "not-a-job": f"keep-{dead.pid}@{host}@abc_7",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "raw.tar").write_bytes(b"x")
    (tmp_path / f"job-{dead.pid}@{host}@file").write_bytes(b"a file, not a folder")
    assert worker_module.stale_work_dirs(tmp_path) == [tmp_path / names["mine-dead"]]
    assert worker_module.job_dir_prefix() == f"job-{os.getpid()}@{host}@"
    assert worker_module.remove_stale_work_dirs(tmp_path) == 1
    for _ in range(500):  # the removal runs in a thread
        if not (tmp_path / names["mine-dead"]).exists():
            break
        time.sleep(0.01)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {n for k, n in names.items() if k != "mine-dead"} | {f"job-{dead.pid}@{host}@file"}
    assert worker_module.stale_work_dirs(tmp_path / "missing") == []


@pytest.mark.gen_test(timeout=60)
async def test_a_new_archive_meanwhile_discards_the_result(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env, marker="old")
        pipeline = StandIn(gates={"hd": asyncio.Event()})
        first = asyncio.ensure_future(env.worker(pipeline, "w1").run_once())
        await wait_until(lambda: pipeline.waiting.get("hd") == 1, "the render at its gate")
        await reupload(env, set_id, "new")  # the node uploads another archive while w1 renders
        pipeline.gates["hd"].set()
        assert await first == "lost"
        assert await records_of(env, set_id) == []  # nothing of the old archive was stored
        assert stored_files(env) == {archive_key(set_id)}
        assert (await job_row(env, set_id))["state"] == "QUEUED"
        assert await env.worker(pipeline, "w2").run_once() == "rendered"
        (record,) = await records_of(env, set_id)
        assert await read_file(env.storage, record["file"]) == b"hd|new"


@pytest.mark.gen_test(timeout=60)
async def test_a_heartbeat_that_finds_the_job_requeued_stops_the_render(db_url, tmp_path):
    async with render_env(db_url, tmp_path, heartbeat_seconds=0.05) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        pipeline = StandIn(gates={"hd": asyncio.Event()})  # never opened: only the heartbeat ends it
        first = asyncio.ensure_future(env.worker(pipeline, "w1").run_once())
        await wait_until(lambda: pipeline.waiting.get("hd") == 1, "the render at its gate")
        await wait_until(lambda: job_row(env, set_id), "the job row")
        await env.pool.execute(Q.render_rerender, set_id)  # `b3lb recording rerender` while it runs
        assert await first == "lost"
        assert pipeline.waiting["hd"] == 0 and await records_of(env, set_id) == []
        row = await job_row(env, set_id)
        assert (row["state"], row["attempts"], row["lease_id"]) == ("QUEUED", 0, None)


@pytest.mark.gen_test(timeout=60)
async def test_progress_goes_to_the_job_row(db_url, tmp_path):
    async with render_env(db_url, tmp_path, heartbeat_seconds=0.05) as env:
        await add_profile(env.pool, "a")
        await add_profile(env.pool, "b")
        set_id = await add_set(env)
        pipeline = StandIn(gates={"b": asyncio.Event()})
        run = asyncio.ensure_future(env.worker(pipeline, "w1").run_once())
        await wait_until(lambda: pipeline.waiting.get("b") == 1, "profile b at its gate")

        async def progressed() -> bool:
            row = await job_row(env, set_id)
            return row is not None and row["progress"] == pytest.approx(0.625)  # a done, b at 25 %

        await wait_until(progressed, "the heartbeat's progress")
        pipeline.gates["b"].set()
        assert await run == "rendered"


@pytest.mark.gen_test(timeout=60)
async def test_a_stopped_worker_gives_its_job_back(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        pipeline = StandIn(gates={"hd": asyncio.Event()})
        run = asyncio.ensure_future(env.worker(pipeline, "w1").run())
        await wait_until(lambda: pipeline.waiting.get("hd") == 1, "the render at its gate")
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        row = await job_row(env, set_id)
        assert (row["state"], row["attempts"], row["locked_until"]) == ("QUEUED", 0, None)
        assert list(env.tmp_path.joinpath("work").iterdir()) == []


@pytest.mark.gen_test(timeout=60)
async def test_rerender_replaces_videos_in_place_without_a_second_callback(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env, marker="v1")
        pipeline = StandIn()
        worker = env.worker(pipeline, "w1")
        assert await worker.run_once() == "rendered"
        (before,) = await records_of(env, set_id)
        await env.pool.execute("DELETE FROM callback_outbox")  # delivered
        await reupload(env, set_id, "v2")  # the node re-published the recording
        assert await worker.run_once() == "rendered"
        (after,) = await records_of(env, set_id)
        # Same recordID and URL: links that frontends stored keep working. The new video went under a
        # new key (the old one stayed playable until then) and the old file is gone.
        assert (after["id"], after["record_id"], after["nonce"]) == (before["id"], before["record_id"], before["nonce"])
        assert after["file"] != before["file"] and after["file"].endswith(".mp4")
        assert after["file"].startswith(before["file"].rsplit("/", 1)[0] + "/")  # in the set's folder
        assert await read_file(env.storage, after["file"]) == b"hd|v2"
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 0
        assert stored_files(env) == {archive_key(set_id), after["file"]}


@pytest.mark.gen_test(timeout=60)
async def test_deleting_sets_and_records_are_left_alone(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        hd = await add_profile(env.pool, "hd")
        await add_profile(env.pool, "web", "WEBM")
        deleting = await add_set(env)
        await env.pool.execute("UPDATE record_set SET status = 'DELETING' WHERE id = $1", deleting)
        worker = env.worker(StandIn(), "w1")
        assert await worker.run_once() is None  # housekeeping deletes it, job and all
        # A record the user deletes (deleteRecordings) during a re-render is not brought back.
        set_id = await add_set(env)
        assert await worker.run_once() == "rendered"
        await env.pool.execute("UPDATE record SET deleting = true WHERE recordset_id = $1 AND profile_id = $2",
                               set_id, hd)  # fmt: skip
        before = {r["profile"]: await read_file(env.storage, r["file"]) for r in await records_of(env, set_id)}
        await reupload(env, set_id, "v2")
        assert await worker.run_once() == "rendered"
        after = {r["profile"]: await read_file(env.storage, r["file"]) for r in await records_of(env, set_id)}
        assert before == {"hd": b"hd|v1", "web": b"web|v1"} and after == {"hd": b"hd|v1", "web": b"web|v2"}


@pytest.mark.gen_test(timeout=60)
async def test_leftover_rows_of_profiles_no_longer_rendered_go_with_their_files(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        hd = await add_profile(env.pool, "hd")
        web = await add_profile(env.pool, "web", "WEBM")
        set_id = await add_set(env)
        # An earlier attempt reserved web's record and stored its file, then died before the size.
        from b3lb.recordings.records import insert_pending

        pending = await insert_pending(env.pool, recordset_id=set_id, set_nonce=set_id, profile_id=web,
                                       extension="webm")  # fmt: skip
        await env.storage.put_bytes(pending.key, b"half")
        await env.pool.execute("INSERT INTO record_profile_link (profile_id, tenant_id) VALUES ($1, $2)",
                               hd, env.tenant_id)  # fmt: skip (the tenant now gets hd only)
        assert await env.worker(StandIn(), "w1").run_once() == "rendered"
        assert [r["profile"] for r in await records_of(env, set_id)] == ["hd"]
        assert pending.key not in stored_files(env)


@pytest.mark.gen_test(timeout=60)
async def test_profiles_follow_links_of_the_secret_else_the_tenant(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        ids = {name: await add_profile(env.pool, name) for name in ("a", "b", "c")}
        main, sub = await add_set(env, "ABC", job=False), await add_set(env, "ABC-001", job=False)

        async def chosen(set_id: str) -> list[str]:
            return [row["name"] for row in await jobs.profiles(env.pool, set_id)]

        assert await chosen(main) == await chosen(sub) == ["a", "b", "c"]  # no links: every profile
        link = "INSERT INTO record_profile_link (profile_id, tenant_id, secret_id) VALUES ($1, $2, $3)"
        await env.pool.execute(link, ids["b"], env.tenant_id, None)
        assert await chosen(main) == await chosen(sub) == ["b"]
        await env.pool.execute(link, ids["c"], None, env.secrets["ABC-001"])
        await env.pool.execute(link, ids["a"], None, env.secrets["ABC-001"])
        assert (await chosen(main), await chosen(sub)) == (["b"], ["a", "c"])
        # A set whose secret was deleted still goes by its tenant.
        await env.pool.execute("UPDATE record_set SET secret_id = NULL WHERE id = $1", sub)
        assert await chosen(sub) == ["b"]
        # Exactly one owner per link; removing a profile removes its links.
        import asyncpg

        with pytest.raises(asyncpg.CheckViolationError):
            await env.pool.execute(link, ids["a"], None, None)
        with pytest.raises(asyncpg.CheckViolationError):
            await env.pool.execute(link, ids["a"], env.tenant_id, env.secrets["ABC"])
        with pytest.raises(asyncpg.UniqueViolationError):
            await env.pool.execute(link, ids["b"], env.tenant_id, None)
        await env.pool.execute("DELETE FROM record_profile WHERE id = $1", ids["b"])
        assert await env.pool.fetchval("SELECT count(*) FROM record_profile_link") == 2
        assert await chosen(main) == ["a", "c"]  # the tenant has no link left: every profile


@pytest.mark.gen_test(timeout=60)
async def test_a_stale_worker_after_a_takeover_stores_nothing(db_url, tmp_path):
    """The first worker freezes (no heartbeats) mid-job; after its lease another worker takes the job
    and finishes it; when the first one wakes up, every write of it is refused."""
    async with render_env(db_url, tmp_path, heartbeat_seconds=3600.0) as env:
        await add_profile(env.pool, "a")
        await add_profile(env.pool, "b", "WEBM")
        set_id = await add_set(env)
        frozen = StandIn(gates={"b": asyncio.Event()})
        first = asyncio.ensure_future(env.worker(frozen, "w1").run_once())
        await wait_until(lambda: frozen.waiting.get("b") == 1, "w1 rendering profile b")
        (a_before,) = await records_of(env, set_id)  # w1 stored profile a
        await env.pool.execute("UPDATE render_job SET locked_until = now() - interval '1 second'")
        assert await env.worker(StandIn(), "w2").run_once() == "rendered"
        frozen.gates["b"].set()
        assert await first == "lost"
        a, b = await records_of(env, set_id)
        assert (a["id"], a["record_id"]) == (a_before["id"], a_before["record_id"])  # w2 reused w1's row
        assert b["size"] > 0 and await read_file(env.storage, b["file"]) == b"b|v1"
        assert stored_files(env) == {archive_key(set_id), a["file"], b["file"]}
        assert await env.pool.fetchval("SELECT status FROM record_set") == "RENDERED"
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 2


@pytest.mark.gen_test(timeout=30)
async def test_unknown_job_ids_are_harmless(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        ghost = jobs.Claim(recordset_id="nope", public_id="p", lease_id=uuid.uuid4(), attempts=1,
                           set_nonce=str(uuid.uuid4()), archive_key="", archive_sha256="", previous_worker="")
        assert await jobs.extend(env.pool, ghost, 30.0, 0.5) is False
        assert await jobs.release(env.pool, ghost) is False
        with pytest.raises(jobs.LostJob):
            async with jobs.fenced(env.pool, ghost, 30.0):
                pass


@pytest.mark.gen_test(timeout=60)
async def test_a_record_deleted_while_its_video_is_stored_leaves_no_file(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        worker = env.worker(StandIn(), "w1")
        assert await worker.run_once() == "rendered"
        (before,) = await records_of(env, set_id)
        storage = HookedStorage(env.config.recordings.local_path)
        worker.storage = storage

        new_keys: list[str] = []

        async def delete_recordings(key: str) -> None:
            """deleteRecordings of that record, all three steps, right after the worker stored its new
            video (under a new key, which the row does not name yet)."""
            new_keys.append(key)
            async with env.pool.acquire() as other:
                await other.execute("UPDATE record SET deleting = true WHERE id = $1", before["id"])
                await storage.delete(before["file"])
                await other.execute("DELETE FROM record WHERE id = $1 AND deleting", before["id"])

        storage.hook = delete_recordings
        await reupload(env, set_id, "v2")
        assert await worker.run_once() == "rendered"
        assert await records_of(env, set_id) == []
        assert len(new_keys) == 1 and new_keys[0] != before["file"]
        assert stored_files(env) == {archive_key(set_id)}  # the worker deleted the file it had just written
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 0  # went with its record


@pytest.mark.gen_test(timeout=60)
async def test_a_storage_failure_is_retried_and_leaves_an_invisible_row_that_is_reused(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        storage = HookedStorage(env.config.recordings.local_path)
        storage.fail = True
        worker = env.worker(StandIn(), "w1")
        worker.storage = storage
        assert await worker.run_once() == "retry"
        assert "disk full" in (await job_row(env, set_id))["last_error"]
        (pending,) = await records_of(env, set_id)
        assert pending["size"] == 0 and pending["file"] not in stored_files(env)  # row first, no file
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 0
        storage.fail = False
        await env.pool.execute("UPDATE render_job SET not_before = now()")
        assert await worker.run_once() == "rendered"
        (record,) = await records_of(env, set_id)
        assert (record["id"], record["file"]) == (pending["id"], pending["file"]) and record["size"] > 0
        assert stored_files(env) == {archive_key(set_id), record["file"]}
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 1
