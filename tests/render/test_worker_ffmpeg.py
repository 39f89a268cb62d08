"""The render worker with the real pipeline (b3lb/render/pipeline.py, ffmpeg) on a short synthetic
recording (b3lb.testing.synthetic) uploaded as a node would: one MP4 and one WEBM record, checked
with ffmpeg (length, size, codecs, audio, the index at the front, the slide's colour)."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from render_support import add_profile, job_row, read_file, records_of, render_env

from b3lb.recordings.storage import archive_key
from b3lb.render import ffmpeg as ff
from b3lb.render.worker import RenderWorker
from b3lb.testing import synthetic as syn
from b3lb.testing.fakerecording import tar_folder

DURATION = 6.0
TOLERANCE = 45  # per channel after lossy encoding; the synthetic colours differ by >= 127


def describe(video: Path) -> str:
    return subprocess.run([ff.find_ffmpeg(), "-hide_banner", "-i", str(video)], capture_output=True).stderr.decode()


def pixel(video: Path, t: float, x: int, y: int, width: int) -> tuple[int, int, int]:
    raw = subprocess.run([ff.find_ffmpeg(), "-v", "error", "-ss", f"{t:.3f}", "-i", str(video), "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
    offset = (y * width + x) * 3
    return raw[offset], raw[offset + 1], raw[offset + 2]


async def upload_synthetic(env, tmp_path: Path) -> tuple[str, syn.SyntheticTruth]:  # noqa: ANN001
    truth = syn.make_presentation(tmp_path / "published", duration_s=DURATION, slides=2, size=(640, 360),
                                  deskshare=None, annotations=False)  # fmt: skip
    tar = tmp_path / "raw.tar"
    tar_folder(tmp_path / "published", tar, 1_700_000_000)
    set_id = str(uuid.uuid4())
    stored = await env.storage.put_bytes(archive_key(set_id), tar.read_bytes())
    await env.pool.execute(
        """INSERT INTO record_set (id, nonce, meeting_id, tenant_slug, meta_name, status, raw_size, secret_id,
                                   archive_key, archive_sha256, ready_url)
           VALUES ($1::text, $1::text::uuid, 'room', 'ABC', 'Synthetic', 'UPLOADED', $2, $3, $4, $5,
                   'https://gl.example/ready')""",
        set_id, stored.size, env.secrets["ABC"], stored.key, stored.sha256,
    )  # fmt: skip
    await env.pool.execute("INSERT INTO render_job (recordset_id) VALUES ($1)", set_id)
    return set_id, truth


@pytest.mark.gen_test(timeout=300)
async def test_the_worker_renders_a_synthetic_recording_with_ffmpeg(db_url, tmp_path):
    pytest.importorskip("b3lb.render.pipeline")
    if syn.ffmpeg_exe() is None:
        pytest.skip("no ffmpeg to make the synthetic recording")
    async with render_env(db_url, tmp_path, threads=2) as env:
        for name, fmt in (("small mp4", "MP4"), ("small webm", "WEBM")):
            profile_id = await add_profile(env.pool, name, fmt)
            await env.pool.execute("UPDATE record_profile SET width = 320, height = 180, webcam_width = 80, "
                                   "webcam_height = 45 WHERE id = $1", profile_id)  # fmt: skip
        set_id, truth = await upload_synthetic(env, tmp_path)
        worker = RenderWorker(env.pool, env.storage, env.config, "real")  # the real pipeline
        assert await worker.run_once() == "rendered"
        assert await job_row(env, set_id) is None
        assert await env.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id) == "RENDERED"
        mp4, webm = await records_of(env, set_id)
        assert await env.pool.fetchval("SELECT count(*) FROM callback_outbox") == 2
        for record, codecs in ((mp4, ("h264", "aac")), (webm, ("vp9", "opus"))):
            local = tmp_path / Path(record["file"]).name
            local.write_bytes(await read_file(env.storage, record["file"]))
            assert record["size"] == local.stat().st_size > 0 and record["processing_ms"] > 0
            text = describe(local)
            duration = ff.parse_probe(text).duration
            assert duration is not None and abs(duration - DURATION) <= 1.0, text
            assert ff.parse_probe(text).video == (320, 180), text
            assert re.search(rf"Video: {codecs[0]}", text) and re.search(rf"Audio: {codecs[1]}", text), text
            # The slide shown at a calm moment fills the middle of the picture with its colour.
            t = next(t for t in truth.sample_times() if truth.slide_at(t) is not None)
            got = pixel(local, t, 140, 90, 320)
            want = truth.main_rgb_at(t)
            assert want is not None and all(abs(a - b) <= TOLERANCE for a, b in zip(got, want, strict=True)), (
                got, want)
        head = (tmp_path / Path(mp4["file"]).name).read_bytes()
        assert head.find(b"moov") < head.find(b"mdat")  # +faststart: browsers play while downloading
        assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.gen_test(timeout=120)
async def test_a_broken_archive_fails_its_job_with_the_reason(db_url, tmp_path):
    pytest.importorskip("b3lb.render.pipeline")
    async with render_env(db_url, tmp_path, max_attempts=1) as env:
        await add_profile(env.pool, "hd")
        set_id = str(uuid.uuid4())
        stored = await env.storage.put_bytes(archive_key(set_id), b"this is not a tar archive" * 100)
        await env.pool.execute(
            """INSERT INTO record_set (id, nonce, tenant_slug, status, secret_id, archive_key, archive_sha256)
               VALUES ($1::text, $1::text::uuid, 'ABC', 'UPLOADED', $2, $3, $4)""",
            set_id, env.secrets["ABC"], stored.key, stored.sha256,
        )  # fmt: skip
        await env.pool.execute("INSERT INTO render_job (recordset_id) VALUES ($1)", set_id)
        assert await RenderWorker(env.pool, env.storage, env.config, "real").run_once() == "failed"
        row = await job_row(env, set_id)
        assert row["state"] == "FAILED" and "Traceback" not in row["last_error"]
        assert "not a readable tar file" in row["last_error"], row["last_error"]
        assert await records_of(env, set_id) == []
