"""Retention (issue 10.7, spec 4.10 hold times): housekeeping deletes files before rows, never leaves an
orphan, finishes what a crash left; on both storage backends (real local folder, real S3 server)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from b3lb.config import Config, load_config
from b3lb.recordings.retention import HousekeepingResult, housekeep, purge_deleting
from b3lb.recordings.storage import Storage, StorageError, Stored, Writer, archive_key, video_key
from b3lb.runtime import Runtime

DAY = 86400.0


# ---------------------------------------------------------------- storage that fails half-way


class FailingStorage(Storage):
    """A real backend whose deletes fail after the first `allowed` ones (a crash, a storage outage)."""

    def __init__(self, inner: Storage, allowed: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.allowed = allowed
        self.deleted: list[str] = []

    async def open_write(self, key: str) -> Writer:
        return await self.inner.open_write(key)

    async def stat(self, key: str) -> Any:
        return await self.inner.stat(key)

    def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        return self.inner.read(key, start, stop)

    async def delete(self, key: str) -> None:
        if len(self.deleted) >= self.allowed:
            raise StorageError("test storage: delete failed")
        await self.inner.delete(key)
        self.deleted.append(key)

    async def delete_prefix(self, prefix: str) -> int:
        if len(self.deleted) >= self.allowed:
            raise StorageError("test storage: delete failed")
        removed = await self.inner.delete_prefix(prefix)
        self.deleted.append(prefix + "/")
        return removed

    async def cleanup_incomplete(self, older_than: float) -> int:
        return await self.inner.cleanup_incomplete(older_than)


class GivenStorage(Runtime):
    """A Runtime whose storage is the one given (the wrapper above); None: one that cannot be made
    (what a bad [recordings] configuration does on first use)."""

    def __init__(self, config: Config, pool: asyncpg.Pool, storage: Storage | None) -> None:
        super().__init__(config, pool)
        self.given = storage

    @property
    def storage(self) -> Storage:
        if self.given is None:
            raise StorageError("s3 storage: recordings.s3_bucket is empty")
        return self.given


# ---------------------------------------------------------------- tenants, sets, files


@dataclass
class SetFiles:
    id: str
    nonce: str
    keys: list[str] = field(default_factory=list)  # archive first, then the videos


@dataclass
class World:
    pool: asyncpg.Pool
    storage: Storage
    config: Config
    profiles: list[int] = field(default_factory=list)

    async def secret(self, slug: str, tenant_days: int, secret_days: int) -> int:
        group = await self.pool.fetchval("INSERT INTO cluster_group (name) VALUES ($1) RETURNING id", slug)
        tenant = await self.pool.fetchval(
            "INSERT INTO tenant (slug, cluster_group_id, hold_time_days) VALUES ($1, $2, $3) RETURNING id",
            slug, group, tenant_days)
        secret_id: int = await self.pool.fetchval(
            "INSERT INTO secret (tenant_id, sub_id, secret, hold_time_days) VALUES ($1, 0, $2, $3) RETURNING id",
            tenant, uuid.uuid4().hex * 2, secret_days)
        return secret_id

    async def make_set(self, secret_id: int | None, days_ago: float, *, ended: bool = True, videos: int = 2,
                       status: str = "RENDERED") -> SetFiles:
        """A set whose meeting ended (or, not ended, was created) `days_ago` days ago, with its archive, videos,
        a render job and a queued callback."""
        nonce = str(uuid.uuid4())
        made = SetFiles(nonce, nonce, [archive_key(nonce)])
        stored = await self.storage.put_bytes(archive_key(nonce), b"tar" * 100)
        await self.pool.execute(
            "INSERT INTO record_set (id, nonce, secret_id, status, archive_key, raw_size, created_at, end_time) "
            "VALUES ($1::text, $1::text::uuid, $2, $3, $4, $5, now() - make_interval(secs => $6), "
            "CASE WHEN $7 THEN now() - make_interval(secs => $6) END)",
            nonce, secret_id, status, stored.key, stored.size, days_ago * DAY, ended)
        await self.pool.execute("INSERT INTO render_job (recordset_id) VALUES ($1)", nonce)
        for index in range(videos):
            made.keys.append(await self.add_video(nonce, index))
        return made

    async def add_video(self, set_nonce: str, index: int, *, deleting: bool = False) -> str:
        while len(self.profiles) <= index:
            self.profiles.append(await self.pool.fetchval(
                "INSERT INTO record_profile (name) VALUES ($1) RETURNING id", f"profile-{len(self.profiles)}"))
        record_nonce = str(uuid.uuid4())
        key = video_key(set_nonce, record_nonce, "mp4")
        stored: Stored = await self.storage.put_bytes(key, b"video" * (index + 1))
        row_id = await self.pool.fetchval(
            "INSERT INTO record (recordset_id, record_id, profile_id, file, nonce, size, deleting) "
            "VALUES ($1, $2, $3, $4, $5::uuid, $6, $7) RETURNING id",
            set_nonce, str(uuid.uuid4()), self.profiles[index], key, record_nonce, stored.size, deleting)
        await self.pool.execute("INSERT INTO callback_outbox (record_id, url) VALUES ($1, 'https://gl.example/r')",
                                row_id)
        return key

    async def existing(self, keys: list[str]) -> list[str]:
        return [key for key in keys if await self.storage.exists(key)]

    async def set_ids(self) -> set[str]:
        return {row["id"] for row in await self.pool.fetch("SELECT id FROM record_set")}

    async def status(self, set_id: str) -> str | None:
        status: str | None = await self.pool.fetchval("SELECT status FROM record_set WHERE id = $1", set_id)
        return status

    async def referenced(self) -> set[str]:
        """Every storage key a row points to (what may exist in storage)."""
        rows = await self.pool.fetch("SELECT archive_key AS key FROM record_set WHERE archive_key <> '' "
                                     "UNION SELECT file FROM record WHERE file <> ''")
        return {row["key"] for row in rows}

    async def row_counts(self) -> dict[str, int]:
        tables = ("record_set", "record", "render_job", "callback_outbox")
        return {table: await self.pool.fetchval(f"SELECT count(*) FROM {table}") for table in tables}


@pytest.fixture
def leftovers(recordings_config: dict[str, Any], request: pytest.FixtureRequest) -> Callable[[], list[str]]:
    """Everything in storage, looked at behind the backend's back: files under the local folder (temporary
    ones included), or the bucket's objects and unfinished multipart uploads."""
    if recordings_config["storage"] == "local":
        root = Path(recordings_config["local_path"])
        return lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    client = request.getfixturevalue("s3_client")
    bucket = recordings_config["s3_bucket"]

    def listed() -> list[str]:
        objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        uploads = [f"upload:{u['Key']}" for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
        return sorted(objects + uploads)

    return listed


def config_for(recordings: dict[str, Any], **extra: object) -> Config:
    base = load_config(env={})
    return dataclasses.replace(base, recordings=dataclasses.replace(base.recordings, **{**recordings, **extra}))


class world:  # noqa: N801 - used as `async with world(...) as w`
    def __init__(self, db_url: str, storage: Storage, recordings: dict[str, Any], **extra: object) -> None:
        self.db_url, self.storage, self.config = db_url, storage, config_for(recordings, **extra)
        self.pool: asyncpg.Pool | None = None

    async def __aenter__(self) -> World:
        self.pool = await asyncpg.create_pool(self.db_url, min_size=1, max_size=4)
        return World(self.pool, self.storage, self.config)

    async def __aexit__(self, *exc: object) -> None:
        assert self.pool is not None
        await self.pool.close()


async def run_housekeeping(w: World, storage: Storage | None = None, runtime: Runtime | None = None
                           ) -> HousekeepingResult:
    if runtime is not None:
        return await housekeep(runtime)
    runtime = GivenStorage(w.config, w.pool, storage or w.storage)
    try:
        return await housekeep(runtime)
    finally:
        await runtime.nodes.aclose()


# ---------------------------------------------------------------- hold times


@pytest.mark.gen_test(timeout=120)
async def test_hold_times_of_tenant_and_secret(db_url, recordings_config, storage, leftovers):
    # pending_days=1: the unrendered sets below follow their hold time too (see the pending_days tests).
    async with world(db_url, storage, recordings_config, pending_days=1) as w:
        both_zero = await w.secret("AA", 0, 0)  # effective 0: the next run deletes
        secret_only = await w.secret("BB", 0, 5)  # either 0: the larger, 5
        tenant_only = await w.secret("CC", 7, 0)  # 7
        smaller_secret = await w.secret("DD", 10, 3)  # neither 0: the smaller, 3
        smaller_tenant = await w.secret("EE", 2, 30)  # 2
        gone = [
            await w.make_set(both_zero, 0.001),
            await w.make_set(secret_only, 6),
            await w.make_set(tenant_only, 8),
            await w.make_set(smaller_secret, 4),
            await w.make_set(smaller_secret, 4, ended=False, status="UNKNOWN", videos=0),  # created 4 days ago
            await w.make_set(smaller_tenant, 3, status="UPLOADED", videos=0),
        ]
        kept = [
            await w.make_set(secret_only, 4),
            await w.make_set(tenant_only, 6),
            await w.make_set(smaller_secret, 2),
            await w.make_set(smaller_secret, 2, ended=False, status="UNKNOWN", videos=0),
            await w.make_set(smaller_tenant, 1),
        ]
        already = await w.make_set(smaller_tenant, 0, status="DELETING")  # young, but deleteRecordings said so
        result = await run_housekeeping(w)
        assert result.error == ""
        assert result.expired == len(gone)
        assert (result.purged.sets, result.purged.waiting) == (len(gone) + 1, 0)
        assert await w.set_ids() == {s.id for s in kept}
        for s in [*gone, already]:
            assert await w.existing(s.keys) == []
        for s in kept:
            assert await w.existing(s.keys) == s.keys
            assert await w.status(s.id) != "DELETING"
        assert set(leftovers()) == {k for s in kept for k in s.keys}
        assert (await w.row_counts())["render_job"] == len(kept)  # cascaded with their sets
        # Idempotent: a second run finds nothing to do.
        again = await run_housekeeping(w)
        assert (again.expired, again.purged.sets, again.purged.files) == (0, 0, 0)
        assert await w.set_ids() == {s.id for s in kept}


@pytest.mark.gen_test(timeout=120)
async def test_sets_of_a_deleted_secret_go_with_their_files(db_url, recordings_config, storage, leftovers):
    async with world(db_url, storage, recordings_config) as w:
        secret_id = await w.secret("AB", 30, 30)
        sets = [await w.make_set(secret_id, 0), await w.make_set(secret_id, 1, status="UPLOADED", videos=1)]
        assert len(leftovers()) == 5
        await w.pool.execute("DELETE FROM secret WHERE id = $1", secret_id)  # sets keep secret_id NULL
        result = await run_housekeeping(w)
        assert (result.expired, result.purged.sets, result.purged.files) == (2, 2, 5)
        for s in sets:
            assert await w.existing(s.keys) == []
        assert leftovers() == []
        assert await w.row_counts() == {"record_set": 0, "record": 0, "render_job": 0, "callback_outbox": 0}


# ---------------------------------------------------------------- crash-safety


@pytest.mark.gen_test(timeout=120)
async def test_a_crash_half_way_leaves_no_orphan_and_the_next_run_finishes(
    db_url, recordings_config, storage, leftovers
):
    async with world(db_url, storage, recordings_config) as w:
        secret_id = await w.secret("CR", 1, 1)
        expired = [await w.make_set(secret_id, 3), await w.make_set(secret_id, 5)]
        live = await w.make_set(secret_id, 0)
        half_deleted = await w.add_video(live.nonce, 2, deleting=True)  # a deleteRecordings that crashed
        failing = FailingStorage(storage, allowed=1)

        result = await run_housekeeping(w, failing)
        assert "delete failed" in result.error and result.expired == 2
        assert result.purged.files == 1 and result.purged.sets == 0
        # Nothing but one file is gone: both sets still there, DELETING (hidden), every row kept.
        assert [await w.status(s.id) for s in expired] == ["DELETING", "DELETING"]
        assert await w.status(live.id) == "RENDERED"
        (deleted,) = failing.deleted
        assert deleted in expired[0].keys + expired[1].keys  # a file of a DELETING set: its row waits
        present = await w.existing([k for s in [*expired, live] for k in s.keys] + [half_deleted])
        assert len(present) == 3 * 3 + 1 - 1
        assert set(present) <= await w.referenced()  # no orphan file: each has its row

        # Storage works again: the next run finishes the job.
        result = await run_housekeeping(w)
        assert result.error == "" and result.expired == 0
        assert (result.purged.sets, result.purged.records) == (2, 1)
        assert await w.set_ids() == {live.id}
        assert await w.existing(live.keys + [half_deleted]) == live.keys
        assert sorted(leftovers()) == sorted(live.keys)

        # The secret goes: after the next run nothing is left in storage or tables.
        await w.pool.execute("DELETE FROM secret WHERE id = $1", secret_id)
        await run_housekeeping(w)
        assert leftovers() == []
        assert await w.row_counts() == {"record_set": 0, "record": 0, "render_job": 0, "callback_outbox": 0}


@pytest.mark.gen_test(timeout=120)
async def test_purge_finishes_what_a_crash_left_without_a_runtime(db_url, recordings_config, storage, leftovers):
    async with world(db_url, storage, recordings_config) as w:
        secret_id = await w.secret("PU", 30, 30)
        # Files deleted, then the crash before the row went.
        files_gone = await w.make_set(secret_id, 0, status="DELETING")
        for key in files_gone.keys:
            await storage.delete(key)
        # An upload committed its archive, then the crash before the row took its key.
        unrecorded = await w.make_set(secret_id, 0, status="DELETING", videos=0)
        await w.pool.execute("UPDATE record_set SET archive_key = '' WHERE id = $1", unrecorded.id)
        await storage.put_bytes(archive_key(unrecorded.nonce, uuid.uuid4().hex), b"another upload's archive")
        # A renderer stored a video, then the crash before its record row existed.
        await storage.put_bytes(video_key(unrecorded.nonce, str(uuid.uuid4()), "mp4"), b"video")
        # A record whose file is not a key b3lb writes (both backends refuse it).
        odd = await w.make_set(secret_id, 0, status="DELETING", videos=1)
        await w.pool.execute("UPDATE record SET file = '../../etc/passwd' WHERE recordset_id = $1", odd.id)
        await storage.delete(odd.keys[1])
        assert len(leftovers()) == 4  # the unrecorded archives and video, and the odd set's archive

        result = await purge_deleting(w.pool, storage)  # as `b3lb recording` runs it: a pool and a storage
        assert (result.sets, result.waiting) == (3, 0)
        assert leftovers() == []
        assert await w.row_counts() == {"record_set": 0, "record": 0, "render_job": 0, "callback_outbox": 0}
        assert (await purge_deleting(w.pool, storage)).sets == 0


@pytest.mark.gen_test(timeout=120)
async def test_a_set_waits_when_a_record_arrives_during_its_deletion(db_url, recordings_config, storage):
    async with world(db_url, storage, recordings_config) as w:
        secret_id = await w.secret("RA", 30, 30)
        doomed = await w.make_set(secret_id, 0, status="DELETING", videos=1)

        class Renderer(FailingStorage):
            """A renderer that finishes a video of the set while its files are being deleted."""

            async def delete(self, key: str) -> None:
                await super().delete(key)
                if len(self.deleted) == 1:
                    late.append(await w.add_video(doomed.nonce, 1))

        late: list[str] = []
        result = await purge_deleting(w.pool, Renderer(storage, allowed=100))
        assert (result.sets, result.waiting) == (0, 1)
        # The new record keeps the set (and itself) for the next run: no file is left without a row.
        # (Its file went with the set's folder: the set is DELETING, nothing of it is shown.)
        assert await w.pool.fetchval("SELECT count(*) FROM record WHERE file = $1", late[0]) == 1
        result = await purge_deleting(w.pool, storage)
        assert result.sets == 1 and await w.existing(late) == []
        assert await w.set_ids() == set() and await w.row_counts() == dict.fromkeys(
            ("record_set", "record", "render_job", "callback_outbox"), 0)


# ---------------------------------------------------------------- incomplete writes and gauges


@pytest.mark.gen_test(timeout=120)
async def test_incomplete_writes_are_removed_and_gauges_set(db_url, recordings_config, storage, leftovers):
    async with world(db_url, storage, recordings_config, upload_timeout=0.0) as w:
        secret_id = await w.secret("GA", 30, 30)
        await w.make_set(secret_id, 0, videos=2)
        await w.make_set(secret_id, 0, videos=0)
        await w.pool.execute("UPDATE render_job SET state = 'FAILED' WHERE recordset_id IN "
                             "(SELECT id FROM record_set ORDER BY id LIMIT 1)")
        writer = await storage.open_write("ab/cd/abandoned/raw.tar")
        # A crashed upload: big enough for the s3 backend to have started a multipart upload.
        await writer.write(b"x" * (8 * 1024 * 1024 + 1))
        assert len([k for k in leftovers() if "abandoned" in k or "incomplete" in k]) == 1
        try:
            result = await run_housekeeping(w)
        finally:
            await writer.abort()
        assert result.incomplete == 1
        assert not [k for k in leftovers() if "abandoned" in k or "incomplete" in k]

        def gauge(name: str, **labels: str) -> float | None:
            return REGISTRY.get_sample_value(name, labels)

        assert gauge("b3lb_recording_stored_bytes", kind="archive") == 2 * 300
        assert gauge("b3lb_recording_stored_bytes", kind="video") == len(b"video") + len(b"videovideo")
        assert gauge("b3lb_recording_render_jobs", state="QUEUED") == 1
        assert gauge("b3lb_recording_render_jobs", state="FAILED") == 1
        assert gauge("b3lb_recording_render_jobs", state="RUNNING") == 0


# ---------------------------------------------------------------- sets waiting for their upload or rendering


@pytest.mark.gen_test(timeout=120)
async def test_a_set_waiting_for_its_upload_outlives_a_zero_hold_time(db_url, recordings_config):
    from test_upload import archive, form, metadata_xml, new_set, serving, upload

    async with serving(db_url, recordings_config) as h:
        await h.pool.execute("UPDATE tenant SET hold_time_days = 0; UPDATE secret SET hold_time_days = 0")
        nonce = await new_set(h)  # UNKNOWN: the meeting still runs, or its node still processes it
        result = await housekeep(h.runtime)
        assert result.error == "" and result.expired == 0
        response = await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml())))
        assert response.code == 204  # not 404, which the node would retry forever
        assert await h.pool.fetchval("SELECT status FROM record_set WHERE id = $1", nonce) == "UPLOADED"
        result = await housekeep(h.runtime)  # still to be rendered: kept
        assert result.expired == 0
        stored = await h.pool.fetchval("SELECT archive_key FROM record_set WHERE id = $1", nonce)
        assert stored and await h.runtime.storage.exists(stored)


@pytest.mark.gen_test(timeout=120)
async def test_unrendered_sets_wait_for_the_longer_of_hold_time_and_pending_days(db_url, recordings_config, storage):
    async with world(db_url, storage, recordings_config) as w:
        assert w.config.recordings.pending_days == 7  # the default
        zero = await w.secret("PA", 0, 0)
        month = await w.secret("PB", 30, 30)
        two = await w.secret("PC", 2, 2)
        gone = [
            await w.make_set(zero, 8, ended=False, status="UNKNOWN", videos=0),  # never uploaded: given up
            await w.make_set(zero, 8, status="UPLOADED", videos=0),  # never rendered: given up
            await w.make_set(two, 7.5, status="UPLOADED", videos=0),
            await w.make_set(zero, 0.001),  # rendered: its hold time alone
            await w.make_set(month, 0, ended=False, status="UNKNOWN", videos=0),  # its secret deleted below
        ]
        kept = [
            await w.make_set(zero, 0.001, ended=False, status="UNKNOWN", videos=0),
            await w.make_set(zero, 6.5, status="UPLOADED", videos=0),
            await w.make_set(two, 6.5, ended=False, status="UNKNOWN", videos=0),
            await w.make_set(month, 8, ended=False, status="UNKNOWN", videos=0),  # max(30, 7) days
            await w.make_set(month, 29, status="UPLOADED", videos=0),
        ]
        await w.pool.execute("UPDATE record_set SET secret_id = NULL WHERE id = $1", gone[-1].id)
        result = await run_housekeeping(w)
        assert result.error == "" and result.expired == len(gone)
        assert await w.set_ids() == {s.id for s in kept}
        for s in gone:
            assert await w.existing(s.keys) == []


@pytest.mark.gen_test(timeout=120)
async def test_a_rendered_set_holds_from_the_recordings_end_not_its_creation(db_url, recordings_config, storage):
    async with world(db_url, storage, recordings_config) as w:
        two = await w.secret("RE", 2, 2)
        ended_long_ago = await w.make_set(two, 3)
        ended_recently = await w.make_set(two, 1)
        uploaded_long_ago = await w.make_set(two, 3, ended=False)
        uploaded_recently = await w.make_set(two, 1, ended=False)
        # All created ten days ago (past pending_days too); the end, else the upload, is what counts.
        await w.pool.execute("UPDATE record_set SET created_at = now() - interval '10 days'")
        await w.pool.execute("UPDATE record_set SET uploaded_at = now() - interval '3 days' WHERE id = $1",
                             uploaded_long_ago.id)
        await w.pool.execute("UPDATE record_set SET uploaded_at = now() - interval '1 day' WHERE id = $1",
                             uploaded_recently.id)
        result = await run_housekeeping(w)
        assert result.expired == 2
        assert await w.set_ids() == {ended_recently.id, uploaded_recently.id}
        assert await w.existing(ended_long_ago.keys + uploaded_long_ago.keys) == []


@pytest.mark.parametrize("value", ["0", "-1", "3651", "seven"])
def test_pending_days_must_be_1_to_3650(value: str) -> None:
    from b3lb.config import ConfigError

    with pytest.raises(ConfigError, match="(?i)pending_days"):
        load_config(env={"B3LB_RECORDINGS_PENDING_DAYS": value})
    assert load_config(env={"B3LB_RECORDINGS_PENDING_DAYS": "3650"}).recordings.pending_days == 3650


@pytest.mark.gen_test(timeout=120)
async def test_an_orphan_under_a_sets_folder_goes_with_the_set(db_url, recordings_config, storage, leftovers):
    """A file no row points to (a renderer died before adding its record) is deleted with its set."""
    async with world(db_url, storage, recordings_config) as w:
        secret_id = await w.secret("OR", 30, 30)
        doomed, kept = await w.make_set(secret_id, 0, videos=1), await w.make_set(secret_id, 0, videos=1)
        orphans = [video_key(s.nonce, str(uuid.uuid4()), "mp4") for s in (doomed, kept)]
        for key in orphans:
            await storage.put_bytes(key, b"video")
        await w.pool.execute("UPDATE record_set SET status = 'DELETING' WHERE id = $1", doomed.id)
        result = await purge_deleting(w.pool, storage)
        assert (result.sets, result.files) == (1, 3)  # video, archive, then the orphan under the folder
        assert await w.set_ids() == {kept.id}
        assert sorted(leftovers()) == sorted([*kept.keys, orphans[1]])  # another set's folder untouched


@pytest.mark.gen_test(timeout=120)
async def test_a_storage_that_cannot_be_made_is_logged_once_per_outage(db_url, recordings_config, storage,
                                                                       leftovers, caplog):
    """A bad [recordings] configuration: runtime.storage raises each run; one warning, no traceback,
    the sets wait (DELETING), and one line when the storage works again."""
    caplog.set_level(logging.INFO, logger="b3lb.recordings.retention")
    async with world(db_url, storage, recordings_config) as w:
        secret_id = await w.secret("BD", 0, 0)
        doomed = await w.make_set(secret_id, 1)
        runtime = GivenStorage(w.config, w.pool, None)
        try:
            for _ in range(3):
                result = await run_housekeeping(w, runtime=runtime)
                assert "s3_bucket" in result.error
            assert await w.status(doomed.id) == "DELETING" and await w.existing(doomed.keys) == doomed.keys
            runtime.given = storage
            result = await run_housekeeping(w, runtime=runtime)
            assert result.error == "" and result.purged.sets == 1 and leftovers() == []
        finally:
            await runtime.nodes.aclose()
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "b3lb.recordings.retention"]
        (warning,) = [text for level, text in lines if level >= logging.WARNING]
        assert warning.startswith("recording housekeeping stopped, storage failed: ")
        assert any("available again" in text for _, text in lines)
        assert not [r for r in caplog.records if r.exc_info]
