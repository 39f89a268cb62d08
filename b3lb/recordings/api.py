"""The recordings calls of the BBB API (spec 2.11-2.15, with every REC choice).

Scope: the record sets of the calling secret; a secret with sub_id 0 sees every secret of its
tenant (like getMeetings). Nothing is ever visible across tenants. Each call is one indexed query
(deleteRecordings: one to hide the records, one to drop their rows once the files are gone).

recordID entries are the records' UUIDs, compared in lower case; anything but hex digits and dashes
matches nothing. getRecordings treats each entry as a prefix (BBB's wildcard); the calls that change
something match whole IDs only. An uploaded set whose videos are not rendered yet answers to its
`public_id` for getRecordings (state processing), updateRecordings and deleteRecordings: never to its
id, which is its nonce, the node's upload credential (spec 4.10), that no frontend may learn.

A database outage raises out of these functions: the API front door answers it (databaseUnavailable).
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

import orjson

from b3lb.api.xml import ApiResult, document, failed
from b3lb.db import Q
from b3lb.recordings.listing import HIDDEN_KEYS, NO_RECORDINGS, NOT_XML
from b3lb.recordings.listing import document as listing_document
from b3lb.recordings.storage import InvalidKey, StorageError
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

if TYPE_CHECKING:
    from b3lb.api.handler import ApiRequest

log = logging.getLogger("b3lb.recordings.api")

JSON_TYPE = "application/json"
MISSING_RECORD_ID = failed("missingParamRecordID", "You must specify a recordID.")
MISSING_PUBLISH = failed("missingParamPublish", "You must specify a publish value true or false.")
NOT_FOUND = failed("notFound", "We could not find recordings")
MAX_METADATA_BYTES = 4096  # a recording's metadata after an update, as JSON: bounds a 10,000-recording listing
TOO_BIG = failed("sizeError", f"Recording metadata is limited to {MAX_METADATA_BYTES} bytes.")

MAX_IDS = 1000  # entries of a meetingID / recordID list that are looked at
MAX_MEETING_ID = 200  # the schema's meeting_id length
MAX_PAGE = 100  # BBB: limit 1-100
MAX_UNPAGED = 10_000  # a getRecordings without limit lists at most this many (bounded memory)
MAX_META_KEYS = 50  # meta_ parameters of one call that are looked at
MAX_STORED_KEYS = 100  # metadata keys a recording may hold after an update (each one an XML element)
TOO_MANY = failed("sizeError", f"Recording metadata is limited to {MAX_STORED_KEYS} keys.")
MAX_KEY = 100
MAX_VALUE = 2000
MAX_NAME = 256  # record.meta_name
_RECORD_ID = re.compile(r"^[0-9a-f-]{1,36}$")
_META_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")  # an XML element name: the key becomes one
_STATES = frozenset({"published", "unpublished", "processing", "processed", "deleted"})


def scope(runtime: Runtime, ctx: SecretContext) -> list[int]:
    """Secret row ids whose record sets the caller sees: its own, or its tenant's for sub_id 0."""
    if ctx.secret.sub_id == 0:
        ids = [s.secret.id for s in runtime.directory.secrets_by_tenant.get(ctx.tenant.id, [])]
        return ids or [ctx.secret.id]
    return [ctx.secret.id]


def _split(value: str | None) -> list[str]:
    if not value:
        return []
    return [entry for entry in (part.strip() for part in value.split(",")[:MAX_IDS]) if entry]


def record_ids(value: str | None) -> list[str]:
    """The well-formed recordID entries, lower case (others can match nothing)."""
    return [entry for entry in (e.lower() for e in _split(value)) if _RECORD_ID.match(entry)]


def _int(value: str | None) -> int | None:
    value = (value or "").strip()
    if not (value.isascii() and value.isdigit()):  # also refuses signs: offset >= 0, limit >= 1
        return None
    return int(value[:9])


def _states(value: str | None) -> tuple[list[bool], bool] | None:
    """(published values wanted, processing sets wanted); None when the states select nothing."""
    states = {s.lower() for s in _split(value)} or {"published", "unpublished"}
    if "any" in states:
        states = set(_STATES)
    published = [flag for flag, name in ((True, "published"), (False, "unpublished")) if name in states]
    processing = "processing" in states
    # processed and deleted exist in BBB; b3lb keeps no recording in either state
    return (published, processing) if published or processing else None


def _meta_filter(req: ApiRequest) -> str:
    """meta_<key>=<value> filters as a jsonb object the metadata must contain (BBB trims values)."""
    wanted = {k[5:]: v.strip() for k, v in req.params[:200] if k.startswith("meta_") and len(k) > 5}
    return orjson.dumps(dict(list(wanted.items())[:MAX_META_KEYS])).decode()


async def get_recordings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    if not req.ctx.recording_enabled:
        return NO_RECORDINGS
    states = _states(req.get("state"))
    if states is None:
        return NO_RECORDINGS
    published, processing = states
    meeting_ids: list[str] | None = None
    patterns: list[str] | None = None
    raw_record_ids = req.get("recordID")
    if raw_record_ids:  # BBB: with recordID, meetingID is ignored
        patterns = [entry + "%" for entry in record_ids(raw_record_ids)]
        if not patterns:
            return NO_RECORDINGS
    else:
        raw_meeting_ids = req.get("meetingID")
        if raw_meeting_ids:
            meeting_ids = [m for m in _split(raw_meeting_ids) if len(m) <= MAX_MEETING_ID]
            if not meeting_ids:
                return NO_RECORDINGS
    offset = _int(req.get("offset")) or 0
    limit = _int(req.get("limit"))
    limit = MAX_UNPAGED if limit is None or limit < 1 else min(limit, MAX_PAGE)
    rows = await runtime.pool.fetch(
        Q.rec_list, scope(runtime, req.ctx), meeting_ids, patterns, published, processing,
        _meta_filter(req), offset, limit,
    )  # fmt: skip
    return listing_document(rows, runtime.config.public_base_url)


async def publish_recordings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    raw = req.get("recordID")
    if not raw:
        return MISSING_RECORD_ID
    publish = (req.get("publish") or "").strip().lower()
    if publish not in ("true", "false"):
        return MISSING_PUBLISH
    ids = record_ids(raw)
    if not ids:
        return NOT_FOUND
    found = await runtime.pool.fetch(Q.rec_publish, scope(runtime, req.ctx), ids, publish == "true")
    if not found:
        return NOT_FOUND
    return ApiResult(document(("returncode", "SUCCESS"), ("published", publish)))


async def delete_recordings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    raw = req.get("recordID")
    if not raw:
        return MISSING_RECORD_ID
    ids = record_ids(raw)
    if not ids:
        return NOT_FOUND
    marked = await runtime.pool.fetch(Q.rec_mark_deleting, scope(runtime, req.ctx), ids)
    if not marked:
        return NOT_FOUND
    gone = await _delete_files(runtime, [(row["id"], row["file"]) for row in marked if row["id"] is not None])
    if gone:
        await runtime.pool.execute(Q.rec_delete_rows, gone)
    return ApiResult(document(("returncode", "SUCCESS"), ("deleted", "true")))


async def _delete_files(runtime: Runtime, records: list[tuple[int, str]]) -> list[int]:
    """Delete the records' files; the ids whose file is gone. A record whose file could not be
    deleted keeps its row, hidden (deleting), for housekeeping to finish."""
    gone: list[int] = []
    for record_id, key in records:
        if key:
            try:
                await runtime.storage.delete(key)
            except InvalidKey:
                log.error("record %d has a storage key no storage accepts; its row goes", record_id)
            except StorageError as exc:
                log.warning("recording file of record %d not deleted (housekeeping retries): %s", record_id, exc)
                continue
        gone.append(record_id)
    return gone


def metadata_changes(req: ApiRequest) -> tuple[list[str], dict[str, str], str | None, bool | None]:
    """updateRecordings' meta_ parameters as (keys to remove, values to set, new name, gl-listed).

    A key must be a plain XML element name of at most MAX_KEY characters (it becomes one in
    getRecordings); values are cut to MAX_VALUE characters; keys that would show the LB's
    nonces or callback URLs are ignored, as is a gl-listed that is neither true nor false."""
    remove: list[str] = []
    values: dict[str, str] = {}
    name: str | None = None
    listed: bool | None = None
    seen = 0
    for key, raw in req.params:
        if not key.startswith("meta_"):
            continue
        key = key[5:]
        if not key or len(key) > MAX_KEY or not _META_KEY.match(key) or key.lower() in HIDDEN_KEYS:
            continue
        seen += 1
        if seen > MAX_META_KEYS:
            break
        value = NOT_XML.sub("", raw).strip()[:MAX_VALUE]
        if key == "gl-listed":
            if value.lower() not in ("true", "false"):
                continue
            value = value.lower()
            listed = value == "true"
        elif key == "name" and value:
            name = value[:MAX_NAME]
        if value:
            values[key] = value
            remove = [k for k in remove if k != key]
        else:
            values.pop(key, None)
            remove.append(key)
    return remove, values, name, listed


async def update_recordings(runtime: Runtime, req: ApiRequest) -> ApiResult:
    raw = req.get("recordID")
    if not raw:
        return MISSING_RECORD_ID
    ids = record_ids(raw)
    if not ids:
        return NOT_FOUND
    remove, values, name, listed = metadata_changes(req)
    row = await runtime.pool.fetchrow(
        Q.rec_update, scope(runtime, req.ctx), ids, remove, orjson.dumps(values).decode(), name, listed,
        MAX_STORED_KEYS, MAX_METADATA_BYTES,
    )  # fmt: skip
    if row is None or not row["matched"]:
        return NOT_FOUND
    if row["too_big"]:
        return TOO_BIG
    if row["too_many"]:
        return TOO_MANY
    return ApiResult(document(("returncode", "SUCCESS"), ("updated", "true" if row["changed"] else "false")))


def _json(payload: dict[str, object]) -> ApiResult:
    return ApiResult(orjson.dumps({"response": payload}), content_type=JSON_TYPE)


async def get_recording_text_tracks(runtime: Runtime, req: ApiRequest) -> ApiResult:
    """BBB's JSON answer. b3lb stores no text tracks: a recording in scope has an empty list."""
    raw = req.get("recordID")
    if not raw:
        return _json({"returncode": "FAILED", "messageKey": "missingParamRecordID",
                      "message": "You must specify a recordID."})  # fmt: skip
    ids = record_ids(raw)
    if ids and await runtime.pool.fetchval(Q.rec_exists, scope(runtime, req.ctx), ids):
        return _json({"returncode": "SUCCESS", "tracks": []})
    return _json({"returncode": "FAILED", "messageKey": "noRecordings", "message": "No recording found"})


async def put_recording_text_track(runtime: Runtime, req: ApiRequest) -> ApiResult:
    """Spec 2.15 (REC): not supported, in BBB's JSON form."""
    return _json(
        {"returncode": "FAILED", "messageKey": "unsupportedRequest", "message": "This request is not supported."}
    )
