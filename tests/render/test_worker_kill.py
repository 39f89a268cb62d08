"""A render worker killed mid-job (SIGKILL: no clean-up of any kind) in a real process: after its
lease another worker takes the job, reuses what the first one stored, and finishes it with one
record per profile and no file without a row."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from render_support import StandIn, add_profile, add_set, job_row, records_of, render_env, stored_files, wait_until

from b3lb.recordings.storage import archive_key

CHILD = Path(__file__).with_name("render_child.py")


@pytest.mark.gen_test(timeout=120)
async def test_a_killed_worker_s_job_finishes_on_another_worker(db_url, tmp_path):
    async with render_env(db_url, tmp_path) as env:
        await add_profile(env.pool, "a")
        await add_profile(env.pool, "b", "WEBM")
        set_id = await add_set(env)
        child = await asyncio.create_subprocess_exec(sys.executable, str(CHILD), db_url, str(tmp_path),
                                                     stdout=asyncio.subprocess.DEVNULL)  # fmt: skip
        try:
            async def a_stored() -> bool:
                rows = await records_of(env, set_id)
                return bool(rows) and rows[0]["size"] > 0

            await wait_until(a_stored, "the child to store profile a", timeout=60)
            (a_before,) = await records_of(env, set_id)
            row = await job_row(env, set_id)
            assert (row["state"], row["worker"], row["attempts"]) == ("RUNNING", "child", 1)
        finally:
            child.kill()  # SIGKILL: no finally block, no release, no clean-up
            await child.wait()
        scratch = list((tmp_path / "work").iterdir())
        assert len(scratch) == 1  # the dead child's scratch folder is left behind

        async def lease_expired() -> bool:
            return bool(await env.pool.fetchval(
                "SELECT locked_until < now() FROM render_job WHERE recordset_id = $1", set_id))  # fmt: skip

        await wait_until(lease_expired, "the child's lease to run out")
        pipeline = StandIn()
        assert scratch[0].name.startswith(f"job-{child.pid}@")
        assert await env.worker(pipeline, "w2").run_once() == "rendered"
        # Removed (in a thread) by w2's start: its process on this host is gone.
        await wait_until(lambda: not scratch[0].exists(), "the dead child's scratch folder to go")
        a, b = await records_of(env, set_id)
        assert (a["profile"], a["id"], a["record_id"], a["nonce"]) == (
            "a", a_before["id"], a_before["record_id"], a_before["nonce"])
        assert b["profile"] == "b" and a["size"] > 0 and b["size"] > 0
        assert stored_files(env) == {archive_key(set_id), a["file"], b["file"]}
        assert await job_row(env, set_id) is None
        assert await env.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id) == "RENDERED"
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 2
        assert pipeline.calls == [("b", "v1")]  # a was stored before the kill: not rendered again
        assert a["file"] == a_before["file"] and a["size"] == a_before["size"]
