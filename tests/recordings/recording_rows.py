"""Record sets, profiles and rendered records made directly, for the recordings API and playback tests
(until the render worker exists, tests make Record rows and files themselves: issue 10.5)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from lxml import etree
from tornado.httpclient import HTTPResponse

from b3lb.api.handler import ApiRequest
from b3lb.api.params import QueryText
from b3lb.api.xml import ApiResult
from b3lb.recordings import api
from b3lb.recordings.records import Record, store_video
from b3lb.testing.harness import Harness

START = datetime(2024, 11, 10, 10, 29, 27, 890000, tzinfo=UTC)
NODE_META = {
    "bbb-origin": "Greenlight",
    "bbb-origin-server-name": "gl.example.org",
    "bbb-origin-version": "v3",
    "gl-listed": "false",
    "isBreakout": "false",
    "meetingId": "room-42",
    "meetingName": "Weekly Sync",
    "b3lb-recordset": "the upload nonce",
    "endcallbackurl": "https://lb.test/b3lb/b/meeting/end?nonce=secret",
}


async def profile(pool: asyncpg.Pool, name: str = "Full HD", fmt: str = "MP4") -> int:
    return await pool.fetchval("INSERT INTO record_profile (name, format) VALUES ($1, $2) RETURNING id", name, fmt)


async def record_set(
    pool: asyncpg.Pool,
    secret_id: int,
    meeting_id: str = "room-42",
    *,
    name: str = "Weekly Sync",
    status: str = "UPLOADED",
    ready_url: str = "",
    end_callback_url: str = "",
    metadata: dict[str, str] | None = None,
    minutes: int = 60,
    created_at: datetime | None = None,
    slug: str = "ABC",
) -> str:
    """A record set as create and the upload leave it; returns its id (= str(nonce))."""
    nonce = uuid.uuid4()
    await pool.execute(
        """INSERT INTO record_set (id, nonce, meeting_id, tenant_slug, meta_name, start_time, end_time, participants,
                                   status, raw_size, secret_id, internal_id, ready_url, end_callback_url, metadata,
                                   created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, 7, $8, 123456789, $9, $10, $11, $12, $13, $14)""",
        str(nonce), nonce, meeting_id, slug, name, START, START + timedelta(minutes=minutes, seconds=30), status,
        secret_id, f"internal-{meeting_id}", ready_url, end_callback_url,
        orjson.dumps({**NODE_META, "meetingId": meeting_id, "meetingName": name, **(metadata or {})}).decode(),
        created_at or datetime.now(UTC),
    )  # fmt: skip
    return str(nonce)


async def public_id(pool: asyncpg.Pool, set_id: str) -> str:
    """The recordID a set answers to while it is processing (never its id: the upload nonce)."""
    found: str = await pool.fetchval("SELECT public_id::text FROM record_set WHERE id = $1", set_id)
    return found


async def video(h: Harness, set_id: str, profile_id: int, data: bytes = b"video" * 100, **kw: Any) -> Record:
    assert h.pool is not None and h.runtime is not None
    return await store_video(h.pool, h.runtime.storage, set_id, profile_id, data, **kw)


def request(h: Harness, call: str, query: str = "", *, slug: str = "ABC", sub_id: int = 0) -> ApiRequest:
    """An authenticated call of a secret, as the API front door hands it to the call function."""
    assert h.runtime is not None
    ctx = h.runtime.directory.lookup(slug, sub_id)
    assert ctx is not None
    return ApiRequest(call, "GET", QueryText(query), b"", "", ctx)


CALLS = {
    "getRecordings": api.get_recordings,
    "publishRecordings": api.publish_recordings,
    "deleteRecordings": api.delete_recordings,
    "updateRecordings": api.update_recordings,
    "getRecordingTextTracks": api.get_recording_text_tracks,
    "putRecordingTextTrack": api.put_recording_text_track,
}


async def call(h: Harness, name: str, query: str = "", *, slug: str = "ABC", sub_id: int = 0) -> ApiResult:
    assert h.runtime is not None
    return await CALLS[name](h.runtime, request(h, name, query, slug=slug, sub_id=sub_id))


def root(result: ApiResult | HTTPResponse) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    return etree.fromstring(result.body, parser)


def record_ids(result: ApiResult | HTTPResponse) -> list[str]:
    return [e.text or "" for e in root(result).iterfind("recordings/recording/recordID")]
