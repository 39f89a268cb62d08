"""Render jobs in the database: claim, heartbeat, the fenced writes of a worker, and how a job ends.

A claim (`FOR UPDATE SKIP LOCKED`) makes a job RUNNING with a fresh `lease_id` and a lease
(`locked_until`) that heartbeats extend. Every later write of the worker names that lease_id and
state RUNNING, so a worker whose job was requeued (a new upload, `b3lb recording rerender`) or
taken over after its lease ran out writes nothing: it gets `LostJob` and drops its work.

Storing a video (`store_output`) follows the orphan rule of b3lb/recordings/records.py: the record
row is committed first (size 0, or the rendered record a re-render replaces), then the file is
uploaded OUTSIDE any transaction (an upload may outlast the lease: heartbeats must keep going, and
no row stays locked for its length), then a short fenced transaction makes it the record's: it
holds the set row (`FOR SHARE`: not DELETING, same archive), extends the lease (the fence), sets
file and size (`render_record_swap`) and, for a record that becomes visible, queues its callback.

A new record's (size 0) video is written under the row's own key. A rendered record's video (an
in-place re-render, or a format change) is written under a NEW key, so the old video stays
visible and playable until the swap replaces it; the old file is deleted after the commit. When
the swap does not happen (the job was lost, the record deleted meanwhile), the new file is deleted.
A crash between the upload and the swap (or the swap and the deletion) leaves a file no row names,
inside the set's folder: it goes with the set (`Storage.delete_prefix`), as storage.py says.

`finish` ends the job in one transaction: the set still has the claimed archive, the lease is still
this worker's, the job row goes and the set is RENDERED.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from b3lb.db import Q
from b3lb.recordings import records
from b3lb.recordings.storage import InvalidKey, Storage, StorageError, Stored, loggable_key, video_key

log = logging.getLogger("b3lb.render")

UPLOAD_CHUNK = 1024 * 1024
MAX_REASON = 2000  # render_job.last_error
MAX_TAIL = 8000  # render_job.ffmpeg_tail

Pool = asyncpg.Pool


class LostJob(Exception):
    """The job is no longer this claim's: requeued, taken over, finished by another worker, or its
    set is being deleted or got another archive. The worker drops what it has not stored."""


@dataclass(frozen=True, slots=True)
class Claim:
    recordset_id: str  # = the set's nonce, its upload credential: never in logs
    public_id: str  # how logs name the set (the recordID the API shows while it is processing)
    lease_id: uuid.UUID
    attempts: int  # this attempt's number, from 1
    set_nonce: str
    archive_key: str
    archive_sha256: str
    previous_worker: str  # the worker whose lease ran out, when this claim took its job over
    done_profiles: frozenset[int] = frozenset()  # stored from this archive by an earlier attempt

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Claim:
        taken_over = row["previous_state"] == "RUNNING"
        return cls(
            recordset_id=row["recordset_id"], public_id=row["public_id"], lease_id=row["lease_id"],
            attempts=row["attempts"], set_nonce=row["set_nonce"], archive_key=row["archive_key"],
            archive_sha256=row["archive_sha256"],
            previous_worker=(row["previous_worker"] or "?") if taken_over else "",
            done_profiles=frozenset(row["done_profiles"]),
        )  # fmt: skip


# Claiming and keeping ------------------------------------------------------------------------


async def fail_abandoned(pool: Pool, max_attempts: int) -> list[asyncpg.Record]:
    """Jobs whose worker died on their last attempt become FAILED (instead of being taken again)."""
    return await pool.fetch(Q.render_fail_abandoned, max_attempts)


async def claim(pool: Pool, worker: str, lease_seconds: float) -> Claim | None:
    row = await pool.fetchrow(Q.render_claim, worker, lease_seconds)
    return None if row is None else Claim.from_row(row)


async def extend(pool: Pool, job: Claim, lease_seconds: float, progress: float | None = None) -> bool:
    """A heartbeat: False when the job is no longer this claim's."""
    value = None if progress is None else min(max(progress, 0.0), 1.0)
    return await pool.fetchval(Q.render_extend, job.recordset_id, job.lease_id, lease_seconds, value) is not None


@asynccontextmanager
async def fenced(pool: Pool, job: Claim, lease_seconds: float, *, final: bool = False) -> AsyncIterator[
        asyncpg.Connection]:  # fmt: skip
    """A transaction holding the set row (not deleting, same archive) and the job row (still this
    claim's; its lease extended). LostJob when either is not so. Lock order: set, then job."""
    async with pool.acquire() as conn, conn.transaction():
        query = Q.render_lock_set_final if final else Q.render_lock_set
        if await conn.fetchrow(query, job.recordset_id, job.archive_sha256) is None:
            raise LostJob("the record set is being deleted or got another archive")
        if await conn.fetchval(Q.render_extend, job.recordset_id, job.lease_id, lease_seconds, None) is None:
            raise LostJob("the job was queued again or taken over by another worker")
        yield conn


async def profiles(pool: Pool, recordset_id: str) -> list[asyncpg.Record]:
    """The record_profile rows to render: linked to the set's secret, else its tenant, else all."""
    return list(await pool.fetch(Q.render_profiles, recordset_id))


# Storing a video -----------------------------------------------------------------------------


async def upload(storage: Storage, key: str, path: Path) -> Stored:
    """Stream a local file into storage (1 MiB at a time, file reads in a thread)."""
    writer = await storage.open_write(key)
    try:
        with path.open("rb") as source:
            while chunk := await asyncio.to_thread(source.read, UPLOAD_CHUNK):
                await writer.write(chunk)
        return await writer.commit()
    except BaseException:
        await writer.abort()
        raise


async def store_output(
    pool: Pool, storage: Storage, job: Claim, *, profile_id: int, extension: str, path: Path,
    lease_seconds: float, processing_ms: int,
) -> records.Record | None:  # fmt: skip
    """One profile's video as the set's record of that profile (the orphan rule's three steps).
    None when that record is being deleted (the user's deletion wins): nothing is stored."""
    async with fenced(pool, job, lease_seconds) as conn:
        pending = await records.reserve_record(
            conn, recordset_id=job.recordset_id, set_nonce=job.set_nonce, profile_id=profile_id, extension=extension
        )
    if pending is None:
        return None
    key = pending.key
    if pending.size > 0 or not key.endswith(f".{extension}"):
        key = replacement_key(job.set_nonce, pending.nonce, extension)
    stored = await upload(storage, key, path)  # no transaction, no connection held meanwhile
    try:
        async with fenced(pool, job, lease_seconds) as conn:
            row = await conn.fetchrow(Q.render_record_swap, pending.id, stored.size,
                                      max(0, min(processing_ms, 2**31 - 1)), key, pending.key)  # fmt: skip
            if row is not None:
                await conn.execute(Q.render_mark_done, job.recordset_id, job.lease_id, job.archive_sha256, profile_id)
    except BaseException:
        if key != pending.key:  # no row names it (the row's own key stays with its size-0 row)
            await _discard(storage, key)
        raise
    if row is None:  # deleteRecordings took the record meanwhile: its new file goes too
        await _discard(storage, key)
        return None
    if row["old_file"] and row["old_file"] != key:
        await _discard(storage, row["old_file"])  # replaced: no row names it any more
    return records.Record(id=row["id"], record_id=row["record_id"], nonce=row["nonce"], key=row["file"],
                          size=row["size"], published=row["published"], outbox_id=row["outbox_id"])  # fmt: skip


def replacement_key(set_nonce: str, record_nonce: str, extension: str) -> str:
    """A fresh key in the set's folder for a record's new video (its URL nonce stays the same)."""
    return video_key(set_nonce, f"{record_nonce}-{uuid.uuid4().hex[:12]}", extension)


async def _delete(storage: Storage, key: str) -> None:
    try:
        await storage.delete(key)
    except InvalidKey:  # not a key b3lb writes: no object can exist under it
        log.warning("render: skipping invalid storage key %r", key[:100])


async def _discard(storage: Storage, key: str) -> None:
    """Delete a file no row names; a storage failure is only logged (the file is in the set's
    folder, which goes with the set), so that it neither hides the job's own outcome nor fails it."""
    try:
        await _delete(storage, key)
    except StorageError as exc:
        log.warning("render: could not delete %s: %s", loggable_key(key), exc)


# Ending a job --------------------------------------------------------------------------------


async def finish(pool: Pool, storage: Storage, job: Claim, rendered: list[int], lease_seconds: float) -> None:
    """Success: size-0 rows of profiles no longer rendered go (files first), then in one
    transaction the job row is deleted and the set RENDERED, if the job is still this claim's."""
    async with fenced(pool, job, lease_seconds) as conn:
        leftovers = await conn.fetch(Q.render_unfinished_records, job.recordset_id, rendered)
    for row in leftovers:
        if row["file"]:
            await _delete(storage, row["file"])
    async with fenced(pool, job, lease_seconds, final=True) as conn:
        if leftovers:
            await conn.execute(Q.render_delete_unfinished, [row["id"] for row in leftovers])
        if await conn.fetchval(Q.render_done, job.recordset_id, job.lease_id) is None:
            raise LostJob("the job was queued again or taken over by another worker")
        await conn.execute(Q.render_set_rendered, job.recordset_id)


async def retry_or_fail(
    pool: Pool, job: Claim, *, reason: str, tail: str, max_attempts: int, backoff: float, permanent: bool = False
) -> str | None:
    """A failed attempt: QUEUED again after backoff * 2**(attempt-1) seconds (at most a day), or
    FAILED after the last attempt (or at once when retrying cannot help). The new state, or None
    when the job is no longer this claim's."""
    delay = min(backoff * 2 ** min(job.attempts - 1, 30), 86400.0)
    row = await pool.fetchrow(Q.render_retry, job.recordset_id, job.lease_id, max_attempts, delay,
                              reason[:MAX_REASON], tail[-MAX_TAIL:], permanent)  # fmt: skip
    return None if row is None else str(row["state"])


async def release(pool: Pool, job: Claim) -> bool:
    """The worker stops: the job is due again at once and this attempt does not count."""
    return await pool.fetchval(Q.render_release, job.recordset_id, job.lease_id) is not None
