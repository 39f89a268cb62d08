"""Retention: record sets leave storage and tables after their hold time (spec 4.10), files first.

`housekeep` (the leader, every `recordings.housekeeping_interval`):
1. marks the sets past their effective hold time, and those whose secret was deleted, DELETING
   (one UPDATE; the API no longer shows them);
2. `purge_deleting`: for each DELETING set, deletes every record's file and the archive, then
   everything else under the set's folder (`Storage.delete_prefix`: what a crash left between a
   write and the row that would have pointed to it), then the set row (its records, render job and
   callback rows go with it); and for each record a deleteRecordings left half-done (`deleting`),
   its file, then its row;
3. removes writes that were never committed (`cleanup_incomplete`);
4. refreshes the storage and render-queue gauges.

Files go before rows, and a row leaves only after all its files: a crash (or a storage failure) at
any point leaves a DELETING set or a `deleting` record that the next run finishes. Never an orphan
file: a file under a set's folder goes with the set, whether a row points to it or not; deleting a
missing file is not an error, so repeating is harmless. `purge_deleting` needs only a pool and a
storage, so the CLI can run it too.

A storage that fails (or cannot even be made, e.g. a bad S3 configuration) is logged once when it
starts failing and once when it works again, not every run.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import asyncpg

from b3lb.db import Q
from b3lb.outage import Outage
from b3lb.recordings.metrics import RENDER_QUEUE, RETENTION_DELETED, STORED_BYTES
from b3lb.recordings.storage import InvalidKey, Storage, StorageError, loggable_key, set_prefix

if TYPE_CHECKING:  # the CLI imports purge_deleting without the server's modules
    from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.recordings.retention")

PURGE_BATCH = 100  # sets (or records) read per query
RENDER_STATES = ("QUEUED", "RUNNING", "FAILED")

Pool = asyncpg.Pool | asyncpg.Connection
# Per runtime (a leader's housekeeping): the storage's state as housekeeping sees it.
_OUTAGES: weakref.WeakKeyDictionary[Runtime, Outage] = weakref.WeakKeyDictionary()


def _outage(runtime: Runtime) -> Outage:
    outage = _OUTAGES.get(runtime)
    if outage is None:
        outage = _OUTAGES[runtime] = Outage("recording storage (housekeeping)", dependency="recording_storage",
                                            logger=log, failure_text="recording housekeeping stopped, storage failed")
    return outage


@dataclass(slots=True)
class PurgeResult:
    sets: int = 0  # record sets deleted with all their files
    records: int = 0  # records of half-done deleteRecordings finished
    files: int = 0  # storage deletions made (a missing object counts too)
    waiting: int = 0  # DELETING sets left for the next run (a record was added meanwhile)


@dataclass(slots=True)
class HousekeepingResult:
    expired: int = 0  # sets marked DELETING by this run
    purged: PurgeResult = field(default_factory=PurgeResult)
    incomplete: int = 0  # uncommitted writes removed
    error: str = ""  # why the run stopped early ("" when it went through); the next run goes on


async def housekeep(runtime: Runtime) -> HousekeepingResult:
    """One housekeeping run (the leader's). A storage failure ends it early, logged and in `error`;
    database errors are raised for the caller's outage accounting. Safe to repeat at any time."""
    result = HousekeepingResult()
    pool, recordings = runtime.pool, runtime.config.recordings
    marked = await pool.fetch(Q.retention_mark_expired, recordings.pending_days)
    result.expired = len(marked)
    if marked:
        log.info("%d record sets past their hold time (or of deleted secrets) marked for deletion", len(marked))
    try:
        storage = runtime.storage  # made on first use: a bad configuration raises here
        await purge_deleting(pool, storage, result=result.purged)
        result.incomplete = await storage.cleanup_incomplete(older_than=recordings.upload_timeout * 2)
    except StorageError as exc:  # the rows wait (DELETING) until storage works again
        result.error = str(exc)
        _outage(runtime).failed(exc)
    else:
        _outage(runtime).succeeded()
    purged = result.purged
    if purged.sets or purged.records or result.incomplete:
        log.info("recording housekeeping: %d sets and %d records deleted (%d files), %d incomplete writes removed",
                 purged.sets, purged.records, purged.files, result.incomplete)
    await update_gauges(pool)
    return result


async def purge_deleting(pool: Pool, storage: Storage, *, result: PurgeResult | None = None) -> PurgeResult:
    """Delete every DELETING set and every `deleting` record: files, then rows. One pass over each;
    raises StorageError (or a database error) at the first failure, leaving the rest for next time.
    `result` (optional) is filled as it goes, so a caller sees how far a failed run got."""
    result = result if result is not None else PurgeResult()
    after = ""
    while rows := await pool.fetch(Q.retention_deleting_sets, PURGE_BATCH, after):
        for row in rows:
            await purge_set(pool, storage, row, result)
        after = rows[-1]["id"]
    last_id = 0
    while rows := await pool.fetch(Q.retention_deleting_records, PURGE_BATCH, last_id):
        for row in rows:
            if row["file"]:
                await _delete(storage, row["file"], result)
            if await pool.execute(Q.retention_record_delete, row["id"]) == "DELETE 1":
                result.records += 1
        last_id = rows[-1]["id"]
    return result


async def purge_set(pool: Pool, storage: Storage, row: asyncpg.Record, result: PurgeResult) -> None:
    """One set: its videos, its archive, then whatever else lies under its folder (an upload's or a
    renderer's file written before a crash kept its row from pointing to it), then the row."""
    records = await pool.fetch(Q.retention_set_files, row["id"])
    for record in records:
        if record["file"]:
            await _delete(storage, record["file"], result)
    if row["archive_key"]:
        await _delete(storage, row["archive_key"], result)
    result.files += await storage.delete_prefix(set_prefix(row["nonce"]))
    ids = [record["id"] for record in records]
    if await pool.execute(Q.retention_set_delete, row["id"], ids) == "DELETE 1":
        result.sets += 1
        RETENTION_DELETED.inc()
    else:
        result.waiting += 1


async def _delete(storage: Storage, key: str, result: PurgeResult) -> None:
    try:
        await storage.delete(key)
    except InvalidKey:
        # Not a key b3lb writes (both backends refuse it), so no object can exist under it.
        log.warning("recording housekeeping: skipping invalid storage key %r", loggable_key(key[:100]))
        return
    result.files += 1


async def update_gauges(pool: Pool) -> None:
    """STORED_BYTES and RENDER_QUEUE from one aggregate query."""
    row = await pool.fetchrow(Q.retention_gauges)
    STORED_BYTES.labels(kind="archive").set(row["archive_bytes"])
    STORED_BYTES.labels(kind="video").set(row["video_bytes"])
    for state in RENDER_STATES:
        RENDER_QUEUE.labels(state=state).set(row[state.lower()])
