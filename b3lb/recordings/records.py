"""Rendered records: the row that makes a stored video visible in getRecordings.

A record is visible (API, playback) once its size is above 0. The ORPHAN RULE: a file in storage
always has a row that names it, so housekeeping (which deletes the files of rows) can find it:

1. `insert_pending` (or `reserve_record`, which reuses the profile's row of an earlier attempt or
   render) commits the row first, with size 0: invisible, no callback;
2. the file is stored under the row's key (`video_key(set nonce, record nonce, ext)`);
3. `complete_record` sets the size and, for a published record that becomes visible now and a set
   with a ready URL, queues its recording-ready callback in the outbox in the same statement.

A crash after 1 or 2 leaves a size-0 row (with or without its file): a retried render reuses it,
and deleting the set deletes its file. The render worker uploads outside any transaction, then sets
file and size in a short one (b3lb/render/jobs.py; a re-rendered record's video goes under a new key
and is swapped in); `store_video` (tests and fixtures) follows the same order.
`add_record` inserts the row of a file stored otherwise (with its size) in one statement.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from b3lb.db import Q
from b3lb.recordings.storage import Storage, video_key

EXTENSIONS = {"MP4": "mp4", "WEBM": "webm"}  # record_profile.format -> file extension


class RecordSetGone(LookupError):
    """The record set (or the profile) does not exist, or the set is being deleted."""


@dataclass(frozen=True, slots=True)
class Record:
    id: int  # record.id
    record_id: str  # the API's recordID
    nonce: str  # the download URL's /b3lb/r/{nonce}
    key: str  # storage key of the video
    size: int
    published: bool
    outbox_id: int | None  # the queued ready callback, if any


@dataclass(frozen=True, slots=True)
class Pending:
    """A record row whose file is (re)written now: from `insert_pending` or `reserve_record`."""

    id: int
    record_id: str
    nonce: str
    key: str
    size: int  # 0 until complete_record; above 0 for a rendered record whose video is replaced
    published: bool


def new_record_ids() -> tuple[str, str]:
    """(recordID, nonce) for a new record: two independent random UUIDs."""
    return str(uuid.uuid4()), str(uuid.uuid4())


async def add_record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    recordset_id: str,
    profile_id: int,
    key: str,
    size: int,
    nonce: str | None = None,
    record_id: str | None = None,
    processing_ms: int = 0,
    published: bool = True,
) -> Record:
    """Insert the record of an already stored video (`key`, `size` bytes).

    `nonce` must be the one the key was made with (`video_key`); new UUIDs when not given.
    Raises RecordSetGone when the set or profile is missing or the set is being deleted, and
    asyncpg.UniqueViolationError when the set already has a record of this profile.
    """
    new_record_id, new_nonce = new_record_ids()
    row = await conn.fetchrow(
        Q.rec_add_record, recordset_id, profile_id, record_id or new_record_id, uuid.UUID(nonce or new_nonce),
        key, published, size, max(0, min(processing_ms, 2**31 - 1)),
    )  # fmt: skip
    if row is None:
        raise RecordSetGone(f"record set {recordset_id} or profile {profile_id} not found, or the set is being deleted")
    return _record(row)


def _record(row: asyncpg.Record) -> Record:
    return Record(
        id=row["id"], record_id=row["record_id"], nonce=str(row["nonce"]), key=row["file"], size=row["size"],
        published=row["published"], outbox_id=row["outbox_id"],
    )  # fmt: skip


def _pending(row: asyncpg.Record) -> Pending:
    return Pending(id=row["id"], record_id=row["record_id"], nonce=row["nonce"], key=row["file"],
                   size=row["size"], published=row["published"])  # fmt: skip


async def insert_pending(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    recordset_id: str,
    set_nonce: str,
    profile_id: int,
    extension: str,
    published: bool = True,
) -> Pending:
    """Step 1: a new size-0 row whose key is `video_key(set_nonce, its nonce, extension)`.
    Raises RecordSetGone (set or profile missing, set deleting) and asyncpg.UniqueViolationError
    (the set has a record of this profile)."""
    record_id, nonce = new_record_ids()
    key = video_key(set_nonce, nonce, extension)
    row = await conn.fetchrow(Q.render_record_insert, recordset_id, profile_id, record_id, uuid.UUID(nonce), key,
                              published)  # fmt: skip
    if row is None:
        raise RecordSetGone(f"record set {recordset_id} or profile {profile_id} not found, or the set is being deleted")
    return _pending(row)


async def reserve_record(
    conn: asyncpg.Connection, *, recordset_id: str, set_nonce: str, profile_id: int, extension: str
) -> Pending | None:
    """Step 1 for a render: the set's row of this profile when there is one (a size-0 row of an
    interrupted attempt, or the rendered record whose video a re-render replaces in place: its
    recordID and URL stay), else a new size-0 row. None when that row is being deleted
    (deleteRecordings): the user's deletion wins. Commit before the file is stored."""
    row = await conn.fetchrow(Q.render_record_find, recordset_id, profile_id)
    if row is None:
        return await insert_pending(conn, recordset_id=recordset_id, set_nonce=set_nonce, profile_id=profile_id,
                                    extension=extension)  # fmt: skip
    return None if row["deleting"] else _pending(row)


async def complete_record(
    conn: asyncpg.Connection | asyncpg.Pool, pending: Pending, size: int, *, processing_ms: int = 0
) -> Record | None:
    """Step 3: the stored file's size; the ready callback when the record becomes visible now.
    None when the row is gone or being deleted."""
    if size <= 0:
        raise ValueError("a record's video cannot be empty")
    row = await conn.fetchrow(Q.render_record_complete, pending.id, size, max(0, min(processing_ms, 2**31 - 1)))
    return None if row is None else _record(row)


async def store_video(
    pool: asyncpg.Pool,
    storage: Storage,
    recordset_id: str,
    profile_id: int,
    data: bytes,
    *,
    processing_ms: int = 0,
    published: bool = True,
) -> Record:
    """Store `data` as the set's video for a profile (tests and fixtures), in the orphan rule's
    order: the size-0 row, the file, the size. When the file cannot be stored (or the record
    cannot be completed), the file goes and then the row: nothing is left behind.
    Raises RecordSetGone and asyncpg.UniqueViolationError like add_record."""
    target = await pool.fetchrow(Q.rec_video_target, recordset_id, profile_id)
    if target is None:
        raise RecordSetGone(f"record set {recordset_id} or profile {profile_id} not found")
    pending = await insert_pending(
        pool, recordset_id=recordset_id, set_nonce=target["set_nonce"], profile_id=profile_id,
        extension=EXTENSIONS.get(target["format"], "mp4"), published=published,
    )  # fmt: skip
    try:
        stored = await storage.put_bytes(pending.key, data)
    except BaseException:
        await _drop(pool, storage, pending)
        raise
    # (Should this fail after its commit, the row keeps its size and file: consistent either way.)
    record = await complete_record(pool, pending, stored.size, processing_ms=processing_ms)
    if record is None:
        await _drop(pool, storage, pending)
        raise RecordSetGone(f"record {pending.record_id} was deleted while its video was stored")
    return record


async def _drop(pool: asyncpg.Pool, storage: Storage, pending: Pending) -> None:
    """The file, then the size-0 row (a row being deleted is its deletion's business)."""
    await storage.delete(pending.key)
    await pool.execute(Q.render_record_drop, pending.id)
