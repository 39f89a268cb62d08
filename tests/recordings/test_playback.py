"""`GET|HEAD /b3lb/r/{nonce}` (spec 4.8, REC) on both storage backends: whole files, byte ranges as video
players send them, conditional requests, 404s, a database outage, and a client that leaves mid-stream."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from recording_rows import profile, record_set, video
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application

from b3lb.recordings.playback import UNSATISFIABLE, ByteRange, PlaybackHandler, parse_range
from b3lb.recordings.records import Record
from b3lb.recordings.storage import ObjectInfo, Storage, StorageError, Writer, loggable_key
from b3lb.testing.harness import Harness

DATA = bytes(range(256)) * 4096 + b"tail!"  # 1 MiB + 5 bytes: several storage chunks
ROUTE = r"/b3lb/r/(?P<nonce>[a-zA-Z0-9!@*(_)-]+)"  # as b3lb/app.py routes it


class Playback:
    """A Harness (database, runtime, storage) plus an HTTP server with just the playback route."""

    def __init__(self, db_url: str, recordings: dict[str, Any]) -> None:
        self.harness = Harness(db_url, nodes=1, recordings=recordings)
        self.server: HTTPServer | None = None
        self.port = 0
        self.client = AsyncHTTPClient(force_instance=True)

    async def __aenter__(self) -> Playback:
        h = await self.harness.__aenter__()
        sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        self.server = HTTPServer(Application([(ROUTE, PlaybackHandler, {"runtime": h.runtime})]))
        self.server.add_sockets([sock])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
        await self.harness.__aexit__(*exc)

    async def record(self, data: bytes = DATA, fmt: str = "MP4", **kw: Any) -> Record:
        h = self.harness
        set_id = await record_set(h.pool, h.tenants["ABC"].secrets[0][0])
        return await video(h, set_id, await profile(h.pool, f"P-{fmt}-{set_id[:8]}", fmt), data, **kw)

    async def get(self, nonce: str, method: str = "GET", **headers: str) -> HTTPResponse:
        request = HTTPRequest(
            f"http://127.0.0.1:{self.port}/b3lb/r/{nonce}", method=method, request_timeout=30,
            headers={k.replace("_", "-"): v for k, v in headers.items()},
        )  # fmt: skip
        return await self.client.fetch(request, raise_error=False)


# The Range parser ----------------------------------------------------------------------------------------------


def test_parse_range():
    assert parse_range("bytes=0-99", 1000) == ByteRange(0, 100)
    assert parse_range("bytes=900-", 1000) == ByteRange(900, 1000)
    assert parse_range("bytes=-100", 1000) == ByteRange(900, 1000)
    assert parse_range("bytes=-5000", 1000) == ByteRange(0, 1000)
    assert parse_range("bytes=0-5000", 1000) == ByteRange(0, 1000)
    assert parse_range(" Bytes = 5 - 9 ", 1000) == ByteRange(5, 10)
    assert parse_range("bytes=999-999", 1000) == ByteRange(999, 1000)
    for unsatisfiable in ("bytes=1000-", "bytes=1000-2000", "bytes=-0", "bytes=5-2"):
        assert parse_range(unsatisfiable, 1000) == UNSATISFIABLE, unsatisfiable
    for ignored in ("bytes=0-1,5-6", "items=0-5", "bytes=abc", "bytes=-", "bytes=", "bytes=1-2-3", "bytes=+1-2",
                    "bytes=" + "9" * 20 + "-"):  # fmt: skip
        assert parse_range(ignored, 1000) is None, ignored


# Whole files and ranges -----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_whole_file_head_and_headers(db_url, recordings_config):
    async with Playback(db_url, recordings_config) as p:
        rec = await p.record()
        r = await p.get(rec.nonce)
        assert r.code == 200 and r.body == DATA
        assert r.headers["Content-Length"] == str(len(DATA))
        assert r.headers["Content-Type"] == "video/mp4"
        assert r.headers["Content-Disposition"] == 'attachment; filename="video.mp4"'
        assert r.headers["Accept-Ranges"] == "bytes"
        assert r.headers["ETag"].startswith('"') and r.headers["ETag"].endswith('"') and len(r.headers["ETag"]) > 2
        assert email.utils.parsedate_to_datetime(r.headers["Last-Modified"]) is not None
        head = await p.get(rec.nonce, "HEAD")
        assert head.code == 200 and head.body == b""
        assert head.headers["Content-Length"] == str(len(DATA)) and head.headers["ETag"] == r.headers["ETag"]
        webm = await p.record(b"webm!", "WEBM")
        r = await p.get(webm.nonce)
        assert r.code == 200 and r.body == b"webm!" and r.headers["Content-Type"] == "video/webm"
        assert r.headers["Content-Disposition"] == 'attachment; filename="video.webm"'


@pytest.mark.gen_test(timeout=60)
async def test_ranges_seek_like_a_video_player(db_url, recordings_config):
    async with Playback(db_url, recordings_config) as p:
        rec = await p.record()
        size = len(DATA)
        r = await p.get(rec.nonce, Range="bytes=0-99")
        assert r.code == 206 and r.body == DATA[:100]
        assert r.headers["Content-Range"] == f"bytes 0-99/{size}" and r.headers["Content-Length"] == "100"
        r = await p.get(rec.nonce, Range="bytes=-5")
        assert r.code == 206 and r.body == b"tail!"
        assert r.headers["Content-Range"] == f"bytes {size - 5}-{size - 1}/{size}"
        r = await p.get(rec.nonce, Range=f"bytes={size - 10}-{size * 2}")
        assert r.code == 206 and r.body == DATA[-10:]
        r = await p.get(rec.nonce, "HEAD", Range="bytes=10-19")
        assert r.code == 206 and r.body == b"" and r.headers["Content-Length"] == "10"
        # Several seeks, out of order and across storage chunks, put together give the file.
        bounds = [0, 1, 262_143, 262_144, 300_000, 700_001, size - 1, size]
        pieces: dict[int, bytes] = {}
        for start, stop in reversed(list(zip(bounds, bounds[1:], strict=False))):
            r = await p.get(rec.nonce, Range=f"bytes={start}-{stop - 1}")
            assert r.code == 206 and len(r.body) == stop - start, (start, stop)
            pieces[start] = r.body
        assert b"".join(pieces[start] for start in sorted(pieces)) == DATA
        # An open end from the middle, as a player resuming does.
        r = await p.get(rec.nonce, Range="bytes=524288-")
        assert r.code == 206 and r.body == DATA[524288:]


@pytest.mark.gen_test(timeout=60)
async def test_unsatisfiable_and_ignored_ranges(db_url, recordings_config):
    async with Playback(db_url, recordings_config) as p:
        rec = await p.record(b"0123456789")
        for header in ("bytes=10-", "bytes=-0", "bytes=7-3", "bytes=99-100"):
            r = await p.get(rec.nonce, Range=header)
            assert r.code == 416 and r.body == b"", header
            assert r.headers["Content-Range"] == "bytes */10"
        for header in ("bytes=0-1,4-5", "lines=0-3", "bytes=x-y"):
            r = await p.get(rec.nonce, Range=header)
            assert r.code == 200 and r.body == b"0123456789", header


# Conditional requests ----------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_conditional_requests(db_url, recordings_config):
    async with Playback(db_url, recordings_config) as p:
        rec = await p.record(b"0123456789")
        first = await p.get(rec.nonce)
        etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
        for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
            r = await p.get(rec.nonce, If_None_Match=match)
            assert r.code == 304 and r.body == b"" and r.headers["ETag"] == etag, match
        assert (await p.get(rec.nonce, If_None_Match='"other"')).code == 200
        assert (await p.get(rec.nonce, "HEAD", If_None_Match=etag)).code == 304
        r = await p.get(rec.nonce, If_Modified_Since=modified)
        assert r.code == 304
        assert (await p.get(rec.nonce, If_Modified_Since="Sat, 01 Jan 2000 00:00:00 GMT")).code == 200
        assert (await p.get(rec.nonce, If_Modified_Since="not a date")).code == 200
        # If-None-Match wins over If-Modified-Since.
        assert (await p.get(rec.nonce, If_None_Match='"other"', If_Modified_Since=modified)).code == 200
        # If-Range: the range only while the client's copy is current.
        r = await p.get(rec.nonce, Range="bytes=2-3", If_Range=etag)
        assert r.code == 206 and r.body == b"23"
        r = await p.get(rec.nonce, Range="bytes=2-3", If_Range=modified)
        assert r.code == 206 and r.body == b"23"
        r = await p.get(rec.nonce, Range="bytes=2-3", If_Range='"stale"')
        assert r.code == 200 and r.body == b"0123456789"


# What is not served --------------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_unknown_invalid_unpublished_and_deleted_are_404(db_url, recordings_config):
    async with Playback(db_url, recordings_config) as p:
        pool = p.harness.pool
        for nonce in ("00000000-0000-0000-0000-000000000000", "abc", "(*)", "a" * 65, "g" * 36):
            r = await p.get(nonce)
            assert r.code == 404 and r.body == b"Not Found", nonce
        unpublished = await p.record(published=False)
        deleting = await p.record()
        in_deleting_set = await p.record()
        missing_file = await p.record()
        await pool.execute("UPDATE record SET deleting = true WHERE id = $1", deleting.id)
        await pool.execute("UPDATE record_set SET status = 'DELETING' FROM record r "
                           "WHERE r.recordset_id = record_set.id AND r.id = $1", in_deleting_set.id)  # fmt: skip
        await p.harness.runtime.storage.delete(missing_file.key)
        for rec in (unpublished, deleting, in_deleting_set, missing_file):
            assert (await p.get(rec.nonce)).code == 404
            assert (await p.get(rec.nonce, "HEAD")).code == 404
        # Publishing makes it downloadable; the same nonce without dashes is the same UUID.
        await pool.execute("UPDATE record SET published = true WHERE id = $1", unpublished.id)
        assert (await p.get(unpublished.nonce)).code == 200
        assert (await p.get(unpublished.nonce.replace("-", ""))).code == 200


@pytest.mark.gen_test(timeout=60)
async def test_a_database_outage_is_503(db_url):
    async with Playback(db_url, {"storage": "local"}) as p:
        rec = await p.record(b"abc")
        runtime = p.harness.runtime
        good = runtime.pool
        dead = await asyncpg.create_pool(db_url, min_size=0, max_size=1)
        await dead.close()
        runtime.pool = dead
        try:
            r = await p.get(rec.nonce)
            assert r.code == 503 and r.headers["Retry-After"] == "5"
        finally:
            runtime.pool = good
        assert (await p.get(rec.nonce)).code == 200


# A client that leaves -----------------------------------------------------------------------------------------------


class CountingStorage(Storage):
    """The real storage, counting what a read hands out and noticing when the read is closed."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.name = inner.name
        self.handed_out = 0
        self.closed_reads = 0

    async def open_write(self, key: str) -> Writer:
        return await self.inner.open_write(key)

    async def stat(self, key: str) -> ObjectInfo | None:
        return await self.inner.stat(key)

    async def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.inner.read(key, start, stop):
                self.handed_out += len(chunk)
                yield chunk
        finally:
            self.closed_reads += 1

    async def delete(self, key: str) -> None:
        await self.inner.delete(key)

    async def delete_prefix(self, prefix: str) -> int:
        return await self.inner.delete_prefix(prefix)

    async def cleanup_incomplete(self, older_than: float) -> int:
        return await self.inner.cleanup_incomplete(older_than)

    async def close(self) -> None:
        await self.inner.close()


@pytest.mark.gen_test(timeout=120)
async def test_a_client_that_leaves_stops_the_read(db_url, recordings_config):
    big = DATA * 24  # 24 MiB: far more than the socket buffers between client and server hold
    async with Playback(db_url, recordings_config) as p:
        rec = await p.record(big)
        runtime = p.harness.runtime
        counting = CountingStorage(runtime.storage)
        runtime._storage = counting
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(f"GET /b3lb/r/{rec.nonce} HTTP/1.1\r\nHost: lb.test\r\n\r\n".encode())
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        await reader.readexactly(100_000)
        writer.transport.abort()  # gone, without reading the rest
        for _ in range(600):  # the server notices at its next write
            if counting.closed_reads:
                break
            await asyncio.sleep(0.05)
        assert counting.closed_reads == 1
        assert counting.handed_out < len(big) // 2
        # The server goes on serving.
        r = await p.get(rec.nonce, Range="bytes=0-9")
        assert r.code == 206 and r.body == big[:10]


# A storage outage ------------------------------------------------------------------------------------------------


class DownStorage(CountingStorage):
    """The real storage, but failing (stat and read) while `down`."""

    down = True

    async def stat(self, key: str) -> ObjectInfo | None:
        if self.down:
            raise StorageError(f"test storage: cannot stat {loggable_key(key)}: unreachable")
        return await self.inner.stat(key)


@pytest.mark.gen_test(timeout=60)
async def test_a_storage_outage_is_503_and_logged_once(db_url, recordings_config, caplog):
    caplog.set_level(logging.INFO)
    async with Playback(db_url, recordings_config) as p:
        rec = await p.record(b"abc")
        runtime = p.harness.runtime
        down = DownStorage(runtime.storage)
        runtime._storage = down
        for method in ("GET", "HEAD", "GET"):
            r = await p.get(rec.nonce, method)
            assert r.code == 503 and r.headers["Retry-After"] == "30", method
        down.down = False
        for _ in range(2):
            r = await p.get(rec.nonce)
            assert r.code == 200 and r.body == b"abc"
        lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("b3lb.recordings")]
        assert [level for level, _ in lines] == [logging.WARNING, logging.INFO]  # down once, back once
        assert lines[0][1].startswith("recording storage failed: ") and "available again" in lines[1][1]
        set_nonce = await p.harness.pool.fetchval("SELECT recordset_id FROM record WHERE id = $1", rec.id)
        b3lb_lines = [r.getMessage() for r in caplog.records if r.name.startswith(("b3lb", "tornado"))]
        assert not [line for line in b3lb_lines if set_nonce in line]  # keys are logged without it
        assert not [r for r in caplog.records if r.exc_info]
