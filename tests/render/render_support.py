"""Helpers of the render worker tests: a real database schema, real local storage, record sets with
uploaded archives, and a stand-in render pipeline (our own small functions handed to the worker in
place of b3lb/render/pipeline.py, so the worker's own logic is tested fast and deterministically;
tests/render/test_worker_ffmpeg.py runs the real pipeline)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from b3lb.config import Config, load_config
from b3lb.recordings.localstore import LocalStorage
from b3lb.recordings.storage import Storage, StorageError, Stored, Writer, archive_key, make_storage
from b3lb.render.worker import JobFailed, RenderWorker

READY_URL = "https://gl.example/ready?token=abc"


def make_config(tmp_path: Path, **render: Any) -> Config:
    base = load_config(env={})
    settings = {"work_dir": str(tmp_path / "work"), "lease_seconds": 30.0, "heartbeat_seconds": 5.0,
                "backoff_seconds": 1000.0, **render}  # fmt: skip
    return dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, data_dir=str(tmp_path / "var")),
        recordings=dataclasses.replace(base.recordings, storage="local", local_path=str(tmp_path / "rec")),
        render=dataclasses.replace(base.render, **settings),
    )


@dataclass
class Env:
    pool: asyncpg.Pool
    storage: Storage
    config: Config
    tenant_id: int
    secrets: dict[str, int]  # "ABC", "ABC-001" -> secret row id
    tmp_path: Path

    def worker(self, pipeline: StandIn, name: str, **render: Any) -> RenderWorker:
        config = self.config
        if render:
            config = dataclasses.replace(config, render=dataclasses.replace(config.render, **render))
        return RenderWorker(self.pool, self.storage, config, name, render=pipeline.render,
                            extract=pipeline.extract, profile=pipeline.profile)  # fmt: skip


@asynccontextmanager
async def render_env(db_url: str, tmp_path: Path, **render: Any) -> AsyncIterator[Env]:
    config = make_config(tmp_path, **render)
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=10)
    storage = make_storage(config)
    try:
        group = await pool.fetchval("INSERT INTO cluster_group (name) VALUES ('g') RETURNING id")
        tenant = await pool.fetchval("INSERT INTO tenant (slug, cluster_group_id) VALUES ('ABC', $1) RETURNING id",
                                     group)  # fmt: skip
        secrets = {}
        for sub_id, label in ((0, "ABC"), (1, "ABC-001")):
            secrets[label] = await pool.fetchval(
                "INSERT INTO secret (tenant_id, sub_id, secret) VALUES ($1, $2, $3) RETURNING id",
                tenant, sub_id, (label.replace("-", "") * 64)[:64],
            )  # fmt: skip
        yield Env(pool, storage, config, tenant, secrets, tmp_path)
    finally:
        await storage.close()
        await pool.close()


async def add_profile(pool: asyncpg.Pool, name: str, fmt: str = "MP4") -> int:
    return await pool.fetchval("INSERT INTO record_profile (name, format) VALUES ($1, $2) RETURNING id", name, fmt)


def archive_bytes(marker: str) -> bytes:
    """A tiny tar: `marker.txt` says which upload the stand-in renderer saw."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        data = marker.encode()
        info = tarfile.TarInfo("marker.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def store_archive(env: Env, set_id: str, marker: str) -> tuple[str, str]:
    stored = await env.storage.put_bytes(archive_key(set_id), archive_bytes(marker))
    return stored.key, stored.sha256


async def add_set(env: Env, secret: str = "ABC", *, marker: str = "v1", ready_url: str = READY_URL,
                  job: bool = True) -> str:  # fmt: skip
    """An UPLOADED set with its archive in storage and (`job`) its render job queued."""
    set_id = str(uuid.uuid4())
    key, sha = await store_archive(env, set_id, marker)
    await env.pool.execute(
        """INSERT INTO record_set (id, nonce, meeting_id, tenant_slug, meta_name, status, raw_size, secret_id,
                                   archive_key, archive_sha256, ready_url, start_time, end_time, metadata)
           VALUES ($1::text, $1::text::uuid, 'room', 'ABC', 'Weekly', 'UPLOADED', 10, $2, $3, $4, $5,
                   now() - interval '10 minutes', now(), '{"gl-listed": "true"}')""",
        set_id, env.secrets[secret], key, sha, ready_url,
    )  # fmt: skip
    if job:
        await env.pool.execute("INSERT INTO render_job (recordset_id) VALUES ($1)", set_id)
    return set_id


async def reupload(env: Env, set_id: str, marker: str) -> None:
    """What the upload endpoint does for a new archive: store it, record its sha256, requeue the job."""
    key, sha = await store_archive(env, set_id, marker)
    await env.pool.execute(
        "UPDATE record_set SET archive_key = $2, archive_sha256 = $3, uploaded_at = now() WHERE id = $1",
        set_id, key, sha,
    )  # fmt: skip
    await env.pool.execute(
        """INSERT INTO render_job (recordset_id) VALUES ($1) ON CONFLICT (recordset_id) DO UPDATE SET
           state = 'QUEUED', attempts = 0, not_before = now(), locked_until = NULL, last_error = '',
           queued_at = now()""",
        set_id,
    )  # fmt: skip


async def read_file(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key)])


def stored_files(env: Env) -> set[str]:
    """Every committed file in local storage (its key)."""
    root = Path(env.config.recordings.local_path)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and ".incomplete" not in p.parts}


async def job_row(env: Env, set_id: str) -> asyncpg.Record | None:
    return await env.pool.fetchrow("SELECT * FROM render_job WHERE recordset_id = $1", set_id)


async def records_of(env: Env, set_id: str) -> list[asyncpg.Record]:
    return list(await env.pool.fetch(
        """SELECT r.*, p.name AS profile FROM record r JOIN record_profile p ON p.id = r.profile_id
           WHERE r.recordset_id = $1 ORDER BY p.name""", set_id))  # fmt: skip


async def wait_until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` (sync or async) until true; fails the test after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Output:
    path: Path
    size: int
    duration_s: float
    extension: str


@dataclass
class StandIn:
    """Extract = untar; render = write `profile|marker` to the output. `gates[profile name]` (an
    asyncio.Event) holds that profile's render until set; `failures` are raised by the next renders."""

    calls: list[tuple[str, str]] = field(default_factory=list)  # (profile name, marker) per render started
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)  # renders waiting at a gate, by profile
    failures: list[Exception] = field(default_factory=list)
    extract_failures: list[Exception] = field(default_factory=list)  # raised by the next extractions
    active: int = 0
    most_active: int = 0

    def extract(self, tar_path: Path, dest: Path, *, max_bytes: int, max_files: int) -> Path:
        assert max_bytes > 0 and max_files > 0
        if self.extract_failures:
            raise self.extract_failures.pop(0)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
        return dest

    @staticmethod
    def profile(row: asyncpg.Record) -> dict[str, Any]:
        return dict(row)

    async def render(self, presentation: Path, profile: dict[str, Any], output: Path, *, threads: int = 0,
                     progress: Callable[[float], None] | None = None) -> Output:  # fmt: skip
        marker = (presentation / "marker.txt").read_text()
        self.calls.append((profile["name"], marker))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if progress is not None:
                progress(0.25)
            gate = self.gates.get(profile["name"])
            if gate is not None:
                self.waiting[profile["name"]] = self.waiting.get(profile["name"], 0) + 1
                try:
                    await gate.wait()
                finally:
                    self.waiting[profile["name"]] -= 1
            await asyncio.sleep(0)
            if self.failures:
                raise self.failures.pop(0)
            data = f"{profile['name']}|{marker}".encode()
            output.write_bytes(data)
            if progress is not None:
                progress(1.0)
            return Output(output, len(data), 600.0, "webm" if profile["format"] == "WEBM" else "mp4")
        finally:
            self.active -= 1


def render_error(reason: str, tail: str = "") -> JobFailed:
    return JobFailed(reason, tail=tail)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Hook = Callable[[str], Awaitable[None]]


class HookedStorage(LocalStorage):
    """Real local storage whose video writes run `before_commit(key)` when all bytes are written but
    the file is not there yet (a slow upload, or a look at the database meanwhile) and `hook(key)`
    right after the commit (to put a concurrent API call exactly there), or fail with `fail` (a full
    disk, S3 down)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.before_commit: Hook | None = None
        self.hook: Hook | None = None
        self.fail = False

    async def open_write(self, key: str) -> Writer:
        writer = await super().open_write(key)
        if key.endswith((".mp4", ".webm")):
            if self.fail:
                await writer.abort()
                raise StorageError("local storage: cannot write (disk full)")
            return _HookedWriter(writer, key, self)
        return writer


class _HookedWriter(Writer):
    def __init__(self, inner: Writer, key: str, storage: HookedStorage) -> None:
        self.inner, self.key, self.storage = inner, key, storage

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    async def commit(self) -> Stored:
        if self.storage.before_commit is not None:
            await self.storage.before_commit(self.key)
        stored = await self.inner.commit()
        if self.storage.hook is not None:
            await self.storage.hook(self.key)
        return stored

    async def abort(self) -> None:
        await self.inner.abort()
