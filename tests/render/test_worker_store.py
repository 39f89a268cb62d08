"""How the render worker stores its videos (b3lb/render/jobs.py store_output): the upload runs outside
any transaction (heartbeats go on, no row stays locked), a re-rendered record keeps its old video
visible until the new one replaces it, and a video that cannot be made the record's is deleted."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from render_support import (
    Env,
    HookedStorage,
    StandIn,
    add_profile,
    add_set,
    job_row,
    read_file,
    records_of,
    render_env,
    reupload,
    stored_files,
    wait_until,
)

from b3lb.recordings.storage import archive_key
from b3lb.render.worker import RenderWorker

UPLOAD_SECONDS = 8.0  # a big video to S3: longer than the lease below
LEASE_SECONDS = 5.0


def slow_worker(env: Env, name: str) -> tuple[RenderWorker, HookedStorage]:
    worker = env.worker(StandIn(), name)
    storage = HookedStorage(env.config.recordings.local_path)
    worker.storage = storage
    return worker, storage


async def lock_free(env: Env, set_id: str) -> bool:
    """True when neither the set row nor the job row is locked by anyone (NOWAIT fails at once if so)."""
    async with env.pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute("SELECT 1 FROM record_set WHERE id = $1 FOR UPDATE NOWAIT", set_id)
            await conn.execute("SELECT 1 FROM render_job WHERE recordset_id = $1 FOR UPDATE NOWAIT", set_id)
        except asyncpg.LockNotAvailableError:
            return False
    return True


async def poll_queue(env: Env, set_id: str, worker: RenderWorker, until: asyncio.Future[str | None]) -> list[str]:
    """Once the first worker runs the job, another worker polls the queue (as its run loop does)
    until `until` (the first worker's run) is done: the jobs it took."""
    await wait_until(lambda: job_running(env, set_id), "the first worker's claim")
    taken = []
    while not until.done():
        job = await worker._claim()
        if job is not None:
            taken.append(job.recordset_id)
        await asyncio.sleep(0.5)
    return taken


async def job_running(env: Env, set_id: str) -> bool:
    row = await job_row(env, set_id)
    return row is not None and row["state"] == "RUNNING"


@pytest.mark.gen_test(timeout=120)
async def test_an_upload_longer_than_the_lease_keeps_the_job(db_url, tmp_path):
    async with render_env(db_url, tmp_path, lease_seconds=LEASE_SECONDS, heartbeat_seconds=1.0,
                          max_attempts=1) as env:  # fmt: skip
        await add_profile(env.pool, "hd")
        await add_profile(env.pool, "web", "WEBM")
        set_id = await add_set(env)
        a, storage = slow_worker(env, "A")
        during: list[tuple[bool, str]] = []

        async def slow_commit(key: str) -> None:
            during.append((await lock_free(env, set_id), (await job_row(env, set_id))["worker"]))
            await asyncio.sleep(UPLOAD_SECONDS)

        storage.before_commit = slow_commit
        run_a = asyncio.ensure_future(a.run_once())
        taken = await poll_queue(env, set_id, env.worker(StandIn(), "B"), run_a)
        assert await run_a == "rendered"  # A was alive the whole time: not FAILED, not taken over
        assert taken == []
        assert during == [(True, "A"), (True, "A")]  # nothing locked while each video was uploaded
        assert await job_row(env, set_id) is None
        assert await env.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id) == "RENDERED"
        hd, web = await records_of(env, set_id)
        assert (hd["profile"], web["profile"]) == ("hd", "web") and hd["size"] > 0 and web["size"] > 0
        assert await read_file(env.storage, web["file"]) == b"web|v1"
        assert stored_files(env) == {archive_key(set_id), hd["file"], web["file"]}


@pytest.mark.gen_test(timeout=120)
async def test_a_rerender_keeps_the_old_video_visible_until_the_new_one_replaces_it(db_url, tmp_path):
    async with render_env(db_url, tmp_path, lease_seconds=LEASE_SECONDS, heartbeat_seconds=1.0,
                          max_attempts=1) as env:  # fmt: skip
        await add_profile(env.pool, "hd")
        set_id = await add_set(env, marker="v1")
        a, storage = slow_worker(env, "A")
        assert await a.run_once() == "rendered"
        (before,) = await records_of(env, set_id)
        await env.pool.execute("DELETE FROM callback_outbox")  # delivered
        seen: list[tuple[int, str, bytes, bool]] = []

        async def slow_commit(key: str) -> None:
            (row,) = await records_of(env, set_id)
            seen.append((row["size"], row["file"], await read_file(env.storage, row["file"]),
                         await lock_free(env, set_id)))  # fmt: skip
            await asyncio.sleep(UPLOAD_SECONDS)

        storage.before_commit = slow_commit
        await reupload(env, set_id, "v2")
        run_a = asyncio.ensure_future(a.run_once())
        taken = await poll_queue(env, set_id, env.worker(StandIn(), "B"), run_a)
        assert await run_a == "rendered" and taken == []
        # While the new video was uploaded, the old one was the record's, visible and playable.
        assert seen == [(before["size"], before["file"], b"hd|v1", True)]
        (after,) = await records_of(env, set_id)
        assert (after["id"], after["record_id"], after["nonce"]) == (before["id"], before["record_id"], before["nonce"])
        assert after["file"] != before["file"] and await read_file(env.storage, after["file"]) == b"hd|v2"
        assert stored_files(env) == {archive_key(set_id), after["file"]}  # the old video is gone
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 0  # it was visible already


@pytest.mark.gen_test(timeout=60)
async def test_a_video_that_cannot_replace_the_old_one_is_deleted(db_url, tmp_path):
    """The node uploads another archive while the worker stores a re-rendered video: the job is
    lost, the new file goes, the old video stays the record's; the next job renders the new archive."""
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "hd")
        set_id = await add_set(env, marker="v1")
        worker, storage = slow_worker(env, "w1")
        assert await worker.run_once() == "rendered"
        (before,) = await records_of(env, set_id)
        written: list[str] = []

        async def new_archive(key: str) -> None:
            written.append(key)
            await reupload(env, set_id, "v3")

        storage.hook = new_archive
        await reupload(env, set_id, "v2")
        assert await worker.run_once() == "lost"
        assert len(written) == 1 and written[0] != before["file"]
        (row,) = await records_of(env, set_id)
        assert (row["file"], row["size"]) == (before["file"], before["size"])
        assert await read_file(env.storage, row["file"]) == b"hd|v1"
        assert stored_files(env) == {archive_key(set_id), before["file"]}  # the v2 video was deleted
        assert (await job_row(env, set_id))["state"] == "QUEUED"
        storage.hook = None
        assert await worker.run_once() == "rendered"
        (after,) = await records_of(env, set_id)
        assert after["id"] == before["id"] and await read_file(env.storage, after["file"]) == b"hd|v3"
        assert stored_files(env) == {archive_key(set_id), after["file"]}


@pytest.mark.gen_test(timeout=60)
async def test_a_format_change_replaces_the_video_without_hiding_the_record(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        hd = await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        worker, storage = slow_worker(env, "w1")
        assert await worker.run_once() == "rendered"
        (before,) = await records_of(env, set_id)
        assert before["file"].endswith(".mp4")
        seen: list[tuple[int, str]] = []

        async def look(key: str) -> None:
            (row,) = await records_of(env, set_id)
            seen.append((row["size"], row["file"]))

        storage.before_commit = look
        await env.pool.execute("UPDATE record_profile SET format = 'WEBM' WHERE id = $1", hd)
        await reupload(env, set_id, "v2")
        assert await worker.run_once() == "rendered"
        assert seen == [(before["size"], before["file"])]  # still visible while the webm was stored
        (after,) = await records_of(env, set_id)
        assert after["id"] == before["id"] and after["file"].endswith(".webm") and after["size"] > 0
        assert await read_file(env.storage, after["file"]) == b"hd|v2"
        assert stored_files(env) == {archive_key(set_id), after["file"]}


@pytest.mark.gen_test(timeout=60)
async def test_a_stale_size_0_row_of_another_format_is_reused_and_its_file_replaced(db_url, tmp_path):
    """An attempt stored an mp4 under a size-0 row and died; the profile is WEBM now: the next attempt
    stores the webm under a new key, makes the row name it, and deletes the mp4."""
    async with render_env(db_url, tmp_path) as env:
        hd = await add_profile(env.pool, "hd")
        set_id = await add_set(env)
        from b3lb.recordings.records import insert_pending

        pending = await insert_pending(env.pool, recordset_id=set_id, set_nonce=set_id, profile_id=hd,
                                       extension="mp4")  # fmt: skip
        await env.storage.put_bytes(pending.key, b"half")
        await env.pool.execute("UPDATE record_profile SET format = 'WEBM' WHERE id = $1", hd)
        assert await env.worker(StandIn(), "w1").run_once() == "rendered"
        (row,) = await records_of(env, set_id)
        assert row["id"] == pending.id and row["file"].endswith(".webm") and row["size"] > 0
        assert stored_files(env) == {archive_key(set_id), row["file"]}
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 1  # visible now
