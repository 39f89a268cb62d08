"""Rendered records: the row that makes a stored video visible in getRecordings.

The render worker (and tests, until it exists) stores a video under `video_key(set nonce, record
nonce, ext)` first and then calls `add_record`, so a listed record always has its file. The row
copies the set's meeting, name, times, participants and metadata; a published record of a set with
a ready URL gets its recording-ready callback queued in the outbox in the same statement, so the
callback can neither be lost nor sent for a record that does not exist.
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
    return Record(
        id=row["id"], record_id=row["record_id"], nonce=str(row["nonce"]), key=row["file"], size=row["size"],
        published=row["published"], outbox_id=row["outbox_id"],
    )  # fmt: skip


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
    """Store `data` as the set's video for a profile, then add its record (tests and fixtures).
    The file is removed again when the row cannot be added: no orphan is left behind."""
    target = await pool.fetchrow(Q.rec_video_target, recordset_id, profile_id)
    if target is None:
        raise RecordSetGone(f"record set {recordset_id} or profile {profile_id} not found")
    record_id, nonce = new_record_ids()
    key = video_key(target["set_nonce"], nonce, EXTENSIONS.get(target["format"], "mp4"))
    stored = await storage.put_bytes(key, data)
    try:
        return await add_record(
            pool, recordset_id=recordset_id, profile_id=profile_id, key=key, size=stored.size, nonce=nonce,
            record_id=record_id, processing_ms=processing_ms, published=published,
        )  # fmt: skip
    except BaseException:
        await storage.delete(key)
        raise
