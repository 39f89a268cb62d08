"""`b3lb recording list|show|delete|rerender`: record sets, their videos, render jobs and callbacks.

`list` shows each set's render job (QUEUED, RUNNING with its progress, FAILED); `show` the job's
worker, heartbeat and progress, and for a failed attempt its reason and ffmpeg's last lines;
`rerender` queues the job afresh (also a FAILED or RUNNING one: the running worker stops).

A record set's ID here is its public_id (a UUID, `b3lb recording list` shows them), the recordID
getRecordings shows while it is processing: never its nonce, which is the meeting's and authorises
the node's end callback and recording upload. The same rows are admin API answers and audit
targets, so storage keys (which hold the nonce) are shown cut (`loggable_key`).

`delete` works in two steps like housekeeping: the set is marked DELETING and committed, then its
files are deleted and only then its rows (`recording_purge`, housekeeping's per-set purge), so a
failure half-way leaves a DELETING set that the next housekeeping run finishes, never a row without
its file or the reverse.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import orjson

from b3lb import validation as V
from b3lb.admin.common import AdminError, NotFound, Row
from b3lb.admin.output import print_json, print_table
from b3lb.admin.tenants import tenant_by_slug
from b3lb.db import Q
from b3lb.models import secret_label
from b3lb.recordings.storage import Storage, StorageError, loggable_key

STATUSES = ("UNKNOWN", "UPLOADED", "RENDERED", "DELETING")
LIST_LIMIT = V.Whole(1, 10_000)
DEFAULT_LIMIT = 100
MAX_ID_INPUT = 64  # a UUID in any of its spellings fits; longer input is refused before parsing


def parse_set_id(text: str) -> str:
    """A record set ID (UUID) in its stored spelling: lower-case with dashes."""
    try:
        if len(text) > MAX_ID_INPUT:
            raise ValueError
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"a record set ID is a UUID (see 'b3lb recording list'), got {text[:40]!r}") from None


def _when(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment is not None else None


def _printable(text: str) -> str:
    """Names come from a frontend's create: no control characters (terminal escapes) in our output."""
    return "".join(c if c.isprintable() else "?" for c in text)


async def _set(conn: asyncpg.Connection, set_id: str) -> asyncpg.Record:
    """The set whose public_id is `set_id`; its `set_key` is the row's own key (its nonce: never shown)."""
    row = await conn.fetchrow(Q.adm_rec_set, parse_set_id(set_id))
    if row is None:
        raise NotFound(f"no record set {set_id!r} (see 'b3lb recording list')")
    return row


async def set_tenant(conn: asyncpg.Connection, set_id: str) -> str | None:
    """The tenant of the set with this public_id (None: no such set); the API scopes tokens with it."""
    slug: str | None = await conn.fetchval(Q.api_record_set_tenant, parse_set_id(set_id))
    return slug


# list and show -------------------------------------------------------------------------------


async def recording_list(
    conn: asyncpg.Connection, tenant: str | None, status: str | None, limit: int = DEFAULT_LIMIT
) -> list[Row]:
    if tenant is not None:
        await tenant_by_slug(conn, tenant)
    if status is not None and status not in STATUSES:
        raise ValueError(f"status: expected one of {', '.join(STATUSES)}, got {status[:20]!r}")
    limit = V.check_value("limit", LIST_LIMIT, limit)
    found = await conn.fetch(Q.adm_rec_list, tenant, status, limit)
    rows: list[Row] = [
        {
            "id": row["id"],
            "tenant": row["tenant"],
            "meeting_id": _printable(row["meeting_id"]),
            "name": _printable(row["name"]),
            "status": row["status"],
            "records": row["records"],
            "size": row["size"],
            "created": _when(row["created_at"]),
            "uploaded": _when(row["uploaded_at"]),
        }
        for row in found
    ]
    jobs = {j["recordset_id"]: j for j in await conn.fetch(Q.render_adm_jobs, [r["set_key"] for r in found])}
    for row, key in zip(rows, (r["set_key"] for r in found), strict=True):
        job = jobs.get(key)
        row["render"] = job["state"] if job is not None else None
        row["progress"] = _percent(job["progress"]) if job is not None and job["state"] == "RUNNING" else None
    return rows


def _percent(fraction: float) -> int:
    return int(min(max(fraction, 0.0), 1.0) * 100)


def show_recordings(rows: list[Row], as_json: bool) -> None:
    """JSON: `render` (the job's state) and `progress` (percent, running jobs); the table merges them."""
    if as_json:
        print_json(rows)
        return
    table = []
    for row in rows:
        render = row["render"] if row["progress"] is None else f"{row['render']} {row['progress']}%"
        table.append({**{k: v for k, v in row.items() if k not in ("render", "progress")}, "render": render})
    print_table(table)


def _tail(text: str) -> str:
    """ffmpeg's last lines as printable text: its line breaks stay, other control characters go."""
    return "\n".join(_printable(line) for line in text.splitlines())


async def _render_job(conn: asyncpg.Connection, row: asyncpg.Record) -> Row | None:
    job = await conn.fetchrow(Q.render_adm_job, row["set_key"])
    if row["job_state"] is None or job is None:
        return None
    failed = bool(job["last_error"])  # the reason and the tail belong to the last failed attempt
    return {
        "state": row["job_state"],
        "attempts": row["job_attempts"],
        "queued": _when(row["job_queued_at"]),
        "not_before": _when(row["job_not_before"]),
        "locked_until": _when(row["job_locked_until"]),
        "worker": _printable(job["worker"]) or None,
        "started": _when(job["started_at"]),
        "heartbeat": _when(job["heartbeat_at"]),
        "progress": _percent(job["progress"]) if job["state"] == "RUNNING" else None,
        "last_error": _printable(row["job_last_error"]),
        "ffmpeg_tail": _tail(job["ffmpeg_tail"]) if failed and job["ffmpeg_tail"] else None,
    }


async def recording_show(conn: asyncpg.Connection, set_id: str, base_url: str) -> Row:
    from b3lb.urlguard import loggable  # imports aiohttp: not for every start of the CLI

    row = await _set(conn, set_id)
    metadata = orjson.loads(row["metadata"])
    records = [
        {
            "record_id": r["record_id"],
            "profile": r["profile"],
            "format": r["format"],
            "published": r["published"],
            "listed": r["listed"],
            "deleting": r["deleting"],
            "size": r["size"],
            "url": f"{base_url}/b3lb/r/{r['nonce']}",  # the video's own download nonce, not the set's
            "file": loggable_key(r["file"]) if r["file"] else None,
        }
        for r in await conn.fetch(Q.adm_rec_records, row["set_key"])
    ]
    outbox = [
        {
            "record_id": o["record_id"],
            "url": loggable(o["url"]),  # a frontend's token may ride in the query string
            "attempts": o["attempts"],
            "next_attempt": _when(o["next_attempt"]),
            "last_error": _printable(o["last_error"]),
        }
        for o in await conn.fetch(Q.adm_rec_outbox, row["set_key"])
    ]
    return {
        "id": row["id"],
        "tenant": row["tenant_slug"],
        "secret": secret_label(row["tenant_slug"], row["sub_id"]) if row["sub_id"] is not None else None,
        "meeting_id": _printable(row["meeting_id"]),
        "name": _printable(row["meta_name"]),
        "status": row["status"],
        "internal_id": _printable(row["internal_id"]) or None,
        "created": _when(row["created_at"]),
        "uploaded": _when(row["uploaded_at"]),
        "start": _when(row["start_time"]),
        "end": _when(row["end_time"]),
        "participants": row["participants"],
        "archive": loggable_key(row["archive_key"]) if row["archive_key"] else None,
        "archive_size": row["raw_size"] if row["archive_key"] else None,
        "archive_sha256": row["archive_sha256"] or None,
        "ready_callback": loggable(row["ready_url"]) if row["ready_url"] else None,
        "metadata": {_printable(k): _printable(str(v)) for k, v in metadata.items()},
        "render_job": await _render_job(conn, row),
        "records": records,
        "callbacks_pending": outbox,
    }


def show_recording(data: Row, as_json: bool) -> None:
    if as_json:
        print_json(data)
        return
    sections = ("metadata", "render_job", "records", "callbacks_pending")
    fields = {k: v for k, v in data.items() if k not in sections}
    width = max(len(k) for k in fields)
    for key, value in fields.items():
        print(f"{key.ljust(width)}  {'-' if value is None else value}")
    metadata = ", ".join(f"{k}={v}" for k, v in data["metadata"].items())
    print(f"{'metadata'.ljust(width)}  {metadata or '-'}")
    job = data["render_job"]
    print("\nrender job: none" if job is None else "\nrender job:")
    if job is not None:
        print_table([{k: v for k, v in job.items() if k != "ffmpeg_tail"}])
        if job["ffmpeg_tail"]:
            print("\nffmpeg's last lines:")
            for line in job["ffmpeg_tail"].splitlines():
                print(f"  {line}")
    print("\nrecords:")
    print_table(data["records"])
    print("\nready callbacks not delivered yet:")
    print_table(data["callbacks_pending"])


# delete and rerender -------------------------------------------------------------------------


async def recording_mark_deleting(conn: asyncpg.Connection, set_id: str) -> list[Row]:
    """Step 1 (in the command's transaction): the set becomes DELETING."""
    row = await _set(conn, set_id)
    await conn.execute(Q.adm_rec_mark_deleting, row["set_key"])
    return [{"id": row["id"], "previous_status": row["status"]}]


async def recording_purge(conn: asyncpg.Connection, storage: Storage, marked: Row) -> list[Row]:
    """Step 2 (after step 1's commit): this one set's files, then its rows (other DELETING sets are
    housekeeping's). AdminError when storage fails: the set stays DELETING for housekeeping."""
    from b3lb.recordings import retention  # prometheus metrics: only a delete needs them

    found = await conn.fetchrow(Q.adm_rec_deleting_set, marked["id"])
    result = retention.PurgeResult()
    if found is not None:  # None: housekeeping (or another delete) finished it meanwhile
        try:
            await retention.purge_set(conn, storage, found, result)  # housekeeping's own per-set purge
        except StorageError as exc:
            raise AdminError(f"record set {marked['id']} is marked DELETING, but storage failed ({exc}): "
                             "housekeeping will delete it") from None
    gone = await conn.fetchval(Q.adm_rec_status, marked["id"]) is None
    status = "deleted" if gone else "DELETING (housekeeping will delete it)"
    return [{**marked, "status": status, "files_deleted": result.files}]


async def recording_rerender(conn: asyncpg.Connection, set_id: str) -> list[Row]:
    row = await _set(conn, set_id)
    if row["status"] == "DELETING":
        raise AdminError(f"record set {row['id']} is being deleted")
    if row["status"] == "UNKNOWN" or not row["archive_key"]:
        raise AdminError(f"record set {row['id']} has no archive yet (status {row['status']}): nothing to render")
    job = await conn.fetchrow(Q.render_rerender, row["set_key"])
    return [{"id": row["id"], "status": row["status"], "job": job["state"], "attempts": job["attempts"],
             "queued": _when(job["queued_at"])}]
