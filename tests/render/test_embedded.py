"""`b3lb serve` with render.embedded (the default): its own worker renders an uploaded recording with
the real pipeline, and a SIGTERM stops the server with it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from render_support import add_profile, add_set, records_of, render_env, wait_until

from b3lb.recordings.storage import archive_key
from b3lb.testing import synthetic as syn
from b3lb.testing.fakerecording import tar_folder

SERVE = "import sys; from b3lb.config import load_config; from b3lb.server import serve; sys.exit(serve(load_config()))"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gen_test(timeout=180)
async def test_serve_renders_with_its_embedded_worker(db_url, tmp_path):
    pytest.importorskip("b3lb.render.pipeline")
    if syn.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg to make the synthetic recording")
    # The server's storage: {data_dir}/recordings, as render_env's local_path.
    data_dir = tmp_path / "var"
    async with render_env(db_url, tmp_path, work_dir="") as env:
        assert Path(env.config.recordings.local_path) == tmp_path / "rec"
        profile_id = await add_profile(env.pool, "tiny")
        await env.pool.execute("UPDATE record_profile SET width = 320, height = 180, webcam_width = 80, "
                               "webcam_height = 45 WHERE id = $1", profile_id)  # fmt: skip
        set_id = await add_set(env)
        syn.make_presentation(tmp_path / "published", duration_s=4.0, slides=2, size=(640, 360), deskshare=None,
                              annotations=False)  # fmt: skip
        tar_folder(tmp_path / "published", tmp_path / "raw.tar", 1_700_000_000)
        stored = await env.storage.put_bytes(archive_key(set_id), (tmp_path / "raw.tar").read_bytes())
        await env.pool.execute("UPDATE record_set SET archive_sha256 = $2, raw_size = $3 WHERE id = $1",
                               set_id, stored.sha256, stored.size)  # fmt: skip
        port = free_port()
        environment = dict(os.environ, DATABASE_URL=db_url, B3LB_SERVER_PORT=str(port),
                           B3LB_SERVER_DATA_DIR=str(data_dir), B3LB_CONFIG=os.devnull,
                           B3LB_RECORDINGS_LOCAL_PATH=str(tmp_path / "rec"), B3LB_SERVER_LOG_LEVEL="INFO")
        environment.pop("REDIS_URL", None)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVE, env=environment,
                                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        output = asyncio.ensure_future(proc.stdout.read())  # read as it comes: a full pipe would block it
        try:
            async def rendered() -> bool:
                return await env.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id) == "RENDERED"

            await wait_until(rendered, "the embedded worker to render the set", timeout=120)
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            log = (await output).decode()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert "render worker" in log and "/serve started" in log and "RENDERED by" in log, log[-2000:]
        (record,) = await records_of(env, set_id)
        assert record["profile"] == "tiny" and record["size"] > 0
        assert (data_dir / "render").is_dir() and list((data_dir / "render").iterdir()) == []
