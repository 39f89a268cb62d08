"""`POST /b3lb/b/record/upload?nonce=` (spec 4.10, issue 10.2) on the server `b3lb serve` runs, with
both storage backends: every status of the spec's table, repeats, races, broken and oversized
bodies (raw sockets), and a large archive streamed past `server.max_body_size`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tornado.httpclient import HTTPRequest, HTTPResponse

from b3lb.recordings.localstore import LocalStorage
from b3lb.recordings.s3store import S3Storage
from b3lb.recordings.storage import set_prefix
from b3lb.recordings.upload import UPLOAD_PATH
from b3lb.testing.harness import BASE_DOMAIN, Harness

MIB = 1024 * 1024
BOUNDARY = "----b3lbTestBoundary7MA4YWxkTrZu0gW"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


# -- bodies ----------------------------------------------------------------------------------------

def metadata_xml(*, breakout: bool = False, name: str = "Weekly Sync", extra: str = "") -> bytes:
    flag = "true" if breakout else "false"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<recording>
  <id>183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1731234567890</id>
  <state>published</state><published>true</published>
  <start_time>1731234567890</start_time><end_time>1731238167890</end_time>
  <participants>7</participants>
  <meeting id="183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1731234567890" externalId="room-42"
           name="{name}" breakout="{flag}"/>
  <meta>
    <isBreakout>{flag}</isBreakout><meetingName>{name}</meetingName><bbb-origin>Greenlight</bbb-origin>
    <bbb-origin-server-name>gl.example.org</bbb-origin-server-name><gl-listed>false</gl-listed>
    <b3lb-recordset>secret-nonce</b3lb-recordset>{extra}
  </meta>
  <playback><format>presentation</format></playback>
  <raw_size>123456</raw_size>
</recording>""".encode()


def part(name: str, data: bytes) -> bytes:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")
    return head.encode() + data + b"\r\n"


def form(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    return b"".join(part(name, data) for name, data in parts) + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def archive(size: int = 200 * 1024) -> bytes:
    return os.urandom(size)


# -- the server ------------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def serving(db_url: str, recordings: dict[str, Any], **kwargs: Any) -> AsyncIterator[Harness]:
    async with Harness(db_url, nodes=1, recordings=recordings, **kwargs) as h:
        yield h


async def new_set(h: Harness, status: str = "UNKNOWN") -> str:
    nonce = str(uuid.uuid4())
    assert h.pool is not None
    await h.pool.execute(
        "INSERT INTO record_set (id, nonce, secret_id, meeting_id, tenant_slug, meta_name, status)"
        " VALUES ($1::uuid::text, $1::uuid, $2, 'room-42', 'ABC', 'Room from create', $3)",
        nonce, h.tenants["ABC"].secrets[0][0], status)
    return nonce


async def upload(h: Harness, query: str, body: bytes, *, content_type: str = CONTENT_TYPE,
                 method: str = "POST", headers: dict[str, str] | None = None) -> HTTPResponse:
    request = HTTPRequest(
        f"http://127.0.0.1:{h.port}{UPLOAD_PATH}{query}", method=method, body=body if method != "GET" else None,
        headers={"Host": BASE_DOMAIN, "Content-Type": content_type, **(headers or {})},
        allow_nonstandard_methods=True, request_timeout=120,
    )
    return await h.client.fetch(request, raise_error=False)


async def set_row(h: Harness, nonce: str) -> dict[str, Any]:
    assert h.pool is not None
    return dict(await h.pool.fetchrow("SELECT * FROM record_set WHERE id = $1", nonce))


async def jobs(h: Harness) -> list[dict[str, Any]]:
    assert h.pool is not None
    return [dict(r) for r in await h.pool.fetch("SELECT * FROM render_job ORDER BY recordset_id")]


def leftovers(h: Harness, request: pytest.FixtureRequest) -> list[str]:
    """Everything the storage holds: objects and uncommitted writes (temp files, multipart uploads)."""
    assert h.runtime is not None
    storage = h.runtime.storage
    if isinstance(storage, LocalStorage):
        return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file())
    assert isinstance(storage, S3Storage)
    client = request.getfixturevalue("s3_client")
    objects = client.list_objects_v2(Bucket=storage.bucket).get("Contents", [])
    uploads = client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", [])
    return sorted([o["Key"] for o in objects] + [f"multipart:{u['Key']}" for u in uploads])


async def eventually(check: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    """Wait until `check()` holds (background work such as an abort after a disconnect)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.05)


async def stored_bytes(h: Harness, nonce: str) -> bytes:
    """The archive the set's row points to."""
    assert h.runtime is not None
    key = (await set_row(h, nonce))["archive_key"]
    return b"".join([chunk async for chunk in h.runtime.storage.read(key)])


def nonce_free(caplog: pytest.LogCaptureFixture, *nonces: str) -> None:
    """No log line of b3lb (or Tornado) shows a set's nonce (its upload credential). (moto's server logs
    the object keys it is asked for: that is the storage's side, not b3lb's.)"""
    for record in caplog.records:
        if not record.name.startswith(("b3lb", "tornado")):
            continue
        text = record.getMessage() + str(record.exc_info or "")
        assert not [n for n in nonces if n in text], text


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


# -- raw HTTP ------------------------------------------------------------------------------------

def head(target: str, *headers: str) -> bytes:
    return "\r\n".join([f"POST {target} HTTP/1.1", f"Host: {BASE_DOMAIN}", *headers, "", ""]).encode("latin-1")


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return int(lines[0].split()[1]), headers, body


def chunked(data: bytes, size: int = 64 * 1024) -> bytes:
    pieces = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(pieces) + b"0\r\n\r\n"


# -- success and repeats ---------------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_an_upload_is_stored_and_queued_for_rendering(db_url, recordings_config, request, caplog):
    caplog.set_level(logging.INFO)
    async with serving(db_url, recordings_config) as h:
        nonce, other = await new_set(h), await new_set(h)
        data = archive()
        response = await upload(h, f"?nonce={nonce}", form(("file", data), ("meta", metadata_xml())))
        assert response.code == 204, response.body
        assert await stored_bytes(h, nonce) == data
        row = await set_row(h, nonce)
        assert row["status"] == "UPLOADED" and row["archive_key"].startswith(f"{set_prefix(nonce)}/raw-")
        assert row["archive_sha256"] == hashlib.sha256(data).hexdigest() and row["raw_size"] == len(data)
        assert row["uploaded_at"] is not None and row["participants"] == 7
        assert row["internal_id"] == "183f0bf3a0982a127bdb8161e0c44eb696b3e75c-1731234567890"
        assert row["meta_name"] == "Weekly Sync"
        assert int(row["start_time"].timestamp() * 1000) == 1731234567890
        assert int(row["end_time"].timestamp() * 1000) == 1731238167890
        meta = json.loads(row["metadata"])
        assert meta["bbb-origin"] == "Greenlight" and meta["gl-listed"] == "false"
        assert meta["bbb-origin-server-name"] == "gl.example.org" and "b3lb-recordset" not in meta
        (job,) = await jobs(h)
        assert job["recordset_id"] == nonce and job["state"] == "QUEUED" and job["attempts"] == 0
        assert (await set_row(h, other))["status"] == "UNKNOWN"  # only the addressed set
        assert leftovers(h, request) == [row["archive_key"]]  # no temporary file or open multipart upload
        lines = [r.getMessage() for r in caplog.records if r.name == "b3lb.recordings.upload"]
        assert lines == [f"recording upload of set {row['public_id']} stored: {len(data)} bytes, render queued"]
        no_tracebacks(caplog)
        nonce_free(caplog, nonce, other)


@pytest.mark.gen_test(timeout=60)
async def test_a_repeated_upload_changes_nothing_and_a_new_archive_replaces(db_url, recordings_config, request):
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        first, second = archive(), archive(300 * 1024)
        body = form(("file", first), ("meta", metadata_xml()))
        assert (await upload(h, f"?nonce={nonce}", body)).code == 204
        row, job = await set_row(h, nonce), await jobs(h)
        assert (await upload(h, f"?nonce={nonce}", body)).code == 204
        assert await set_row(h, nonce) == row and await jobs(h) == job  # not even uploaded_at moved
        assert leftovers(h, request) == [row["archive_key"]]  # the repeat's own copy is gone

        # Rendered meanwhile (the job done and gone), the frontend changed a metadata value.
        await h.pool.execute("UPDATE record_set SET status = 'RENDERED', metadata = metadata || "
                             "'{\"gl-listed\": \"true\"}' WHERE id = $1", nonce)
        await h.pool.execute("DELETE FROM render_job")
        rendered = await set_row(h, nonce)
        assert (await upload(h, f"?nonce={nonce}", body)).code == 204
        assert await set_row(h, nonce) == rendered and await jobs(h) == []

        # The node publishes the recording again, with other bytes: replaced, rendered again.
        assert (await upload(h, f"?nonce={nonce}", form(("file", second), ("meta", metadata_xml())))).code == 204
        row = await set_row(h, nonce)
        assert row["status"] == "UPLOADED" and row["archive_sha256"] == hashlib.sha256(second).hexdigest()
        assert row["raw_size"] == len(second) and row["uploaded_at"] > rendered["uploaded_at"]
        assert '"gl-listed": "true"' in row["metadata"]  # the frontend's change stays
        assert [j["state"] for j in await jobs(h)] == ["QUEUED"]
        assert await stored_bytes(h, nonce) == second
        assert row["archive_key"] != rendered["archive_key"]
        assert leftovers(h, request) == [row["archive_key"]]  # the first archive deleted after the commit


@pytest.mark.gen_test(timeout=60)
async def test_concurrent_uploads_of_one_set_leave_a_consistent_set(db_url, recordings_config, request):
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        archives = [archive(512 * 1024 + n) for n in range(4)]
        answers = await asyncio.gather(*(upload(h, f"?nonce={nonce}", form(("file", a), ("meta", metadata_xml())))
                                         for a in archives))
        assert [a.code for a in answers] == [204] * 4
        row = await set_row(h, nonce)
        stored = await stored_bytes(h, nonce)
        assert stored in archives and row["archive_sha256"] == hashlib.sha256(stored).hexdigest()
        assert row["raw_size"] == len(stored)
        assert leftovers(h, request) == [row["archive_key"]]


@pytest.mark.gen_test(timeout=120)
async def test_a_large_upload_streams_past_the_server_body_limit(db_url, recordings_config, request):
    async with serving(db_url, recordings_config) as h:
        assert h.config.server.max_body_size == 4 * MIB  # the API's limit stays as it is
        nonce = await new_set(h)
        data = archive(30 * MIB + 123)
        response = await upload(h, f"?nonce={nonce}", form(("meta", metadata_xml()), ("file", data)))
        assert response.code == 204, response.body
        row = await set_row(h, nonce)
        assert row["archive_sha256"] == hashlib.sha256(data).hexdigest() and row["raw_size"] == len(data)
        assert h.runtime is not None and (await h.runtime.storage.stat(row["archive_key"])).size == len(data)
        assert leftovers(h, request) == [row["archive_key"]]
        # Elsewhere the server's limit holds.
        r = await h.request("/bigbluebutton/api/create", method="POST", body=b"x" * (5 * MIB))
        assert r.code == 413


# -- refusals before the body ----------------------------------------------------------------------

@pytest.mark.gen_test(timeout=60)
async def test_nonce_missing_malformed_or_unknown(db_url, recordings_config, request, caplog):
    async with serving(db_url, recordings_config) as h:
        body = form(("file", archive()), ("meta", metadata_xml()))
        for query in ("", "?nonce=", "?other=1"):  # spec 4.10: 400 only when the nonce is missing
            response = await upload(h, query, body)
            assert (response.code, response.body) == (400, b"Bad Request: nonce missing"), query
        for query in ("?nonce=not-a-uuid", "?nonce=" + "a" * 5000, f"?nonce={uuid.uuid4()}", "?nonce=x%20y"):
            response = await upload(h, query, body)  # no UUID names no set either
            assert response.code == 404 and response.body.startswith(b"Not Found"), query[:40]
        deleting = await new_set(h, "DELETING")
        assert (await upload(h, f"?nonce={deleting}", body)).code == 404
        assert (await set_row(h, deleting))["status"] == "DELETING"
        assert leftovers(h, request) == [] and await jobs(h) == []
        # the access log shows no nonce (the set's upload credential)
        assert not [r for r in caplog.records if r.name == "tornado.access" and "nonce" in r.getMessage()]
        no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=30)
async def test_other_methods_are_405(db_url):
    async with serving(db_url, {}) as h:
        nonce = await new_set(h)
        for method, body in (("GET", b""), ("PUT", form(("file", b"x"), ("meta", metadata_xml()))),
                             ("DELETE", b""), ("BREW", b"")):
            response = await upload(h, f"?nonce={nonce}", body, method=method)
            assert response.code == 405 and response.headers["Allow"] == "POST", method
        assert (await set_row(h, nonce))["status"] == "UNKNOWN"


@pytest.mark.gen_test(timeout=30)
async def test_not_multipart_is_400(db_url, recordings_config, request):
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        body = form(("file", archive()), ("meta", metadata_xml()))
        for content_type in ("application/octet-stream", "multipart/form-data", "multipart/form-data; boundary=",
                             "multipart/form-data; boundary=" + "b" * 300):
            response = await upload(h, f"?nonce={nonce}", body, content_type=content_type)
            assert response.code == 400 and b"multipart/form-data" in response.body, content_type
        assert (await set_row(h, nonce))["status"] == "UNKNOWN" and leftovers(h, request) == []


@pytest.mark.gen_test(timeout=30)
async def test_expect_continue(db_url):
    """A client that waits for 100 Continue: refused before sending its body, or asked for it."""
    async with serving(db_url, {}) as h:
        nonce = await new_set(h)
        body = form(("file", archive()), ("meta", metadata_xml()))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(head(f"{UPLOAD_PATH}?nonce={uuid.uuid4()}", f"Content-Type: {CONTENT_TYPE}",
                              f"Content-Length: {len(body)}", "Expect: 100-continue"))
            status, _, answer = await read_answer(reader)  # no body sent at all
            assert status == 404 and answer.startswith(b"Not Found")
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(head(f"{UPLOAD_PATH}?nonce={nonce}", f"Content-Type: {CONTENT_TYPE}",
                              f"Content-Length: {len(body)}", "Expect: 100-continue"))
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)).startswith(b"HTTP/1.1 100")
            writer.write(body)
            assert (await read_answer(reader))[0] == 204
        finally:
            writer.close()
        assert (await set_row(h, nonce))["status"] == "UPLOADED"


@pytest.mark.gen_test(timeout=30)
async def test_a_refused_body_is_read_and_the_connection_kept(db_url):
    """The answer to a refused upload comes after its body was read (up to LINGER_BYTES), so that
    no reset destroys it; the connection then serves the next request."""
    async with serving(db_url, {}) as h:
        nonce = await new_set(h)
        refused = {
            f"?nonce={uuid.uuid4()}": (form(("file", archive(2 * MIB)), ("meta", metadata_xml())), 404),
            f"?nonce={nonce}": (form(("meta", b"<recording>" + b" " * (2 * MIB)), ("file", archive())), 400),
        }
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            for query, (body, expected) in refused.items():
                writer.write(head(f"{UPLOAD_PATH}{query}", f"Content-Type: {CONTENT_TYPE}",
                                  f"Content-Length: {len(body)}") + body)
                status, headers, _ = await read_answer(reader)
                assert status == expected and headers.get("connection", "").lower() != "close"
            writer.write(f"GET /b3lb/ping HTTP/1.1\r\nHost: {BASE_DOMAIN}\r\n\r\n".encode())
            assert (await read_answer(reader))[0::2] == (200, b"OK!")
        finally:
            writer.close()
        assert (await set_row(h, nonce))["status"] == "UNKNOWN"


@pytest.mark.gen_test(timeout=30)
async def test_a_database_outage_is_503(db_url, caplog):
    async with serving(db_url, {}) as h:
        assert h.runtime is not None
        nonce = await new_set(h)
        healthy = h.runtime.pool
        closed = await asyncpg.create_pool(h.db_url, min_size=0, max_size=1)
        await closed.close()
        h.runtime.pool = closed
        try:
            response = await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml())))
        finally:
            h.runtime.pool = healthy
        assert response.code == 503 and response.headers["Retry-After"]
        assert h.runtime.database.down
        warnings = [r for r in caplog.records if r.name == "b3lb.outage"]
        assert len(warnings) == 1 and warnings[0].getMessage().startswith("database unavailable")
        no_tracebacks(caplog)
        assert (await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml())))).code == 204
        assert not h.runtime.database.down


# -- refusals after the body ------------------------------------------------------------------------

BAD_BODIES: dict[str, tuple[bytes, bytes]] = {
    "no file part": (form(("meta", metadata_xml())), b"part file missing"),
    "empty file part": (form(("file", b""), ("meta", metadata_xml())), b"part file missing"),
    "no meta part": (form(("file", archive())), b"part meta missing"),
    "no parts": (form(), b"part file missing"),
    "meta without <recording>": (form(("file", archive()), ("meta", b"<metadata><id>x</id></metadata>")),
                                 b"no <recording> root"),
    "unparsable meta": (form(("file", archive()), ("meta", b"<recording><id>x</i")), b"not well-formed"),
    "meta over 1 MiB": (form(("file", archive()), ("meta", b"<recording>" + b" " * MIB + b"</recording>")),
                        b"part meta over"),
    "file twice": (form(("file", archive()), ("file", archive()), ("meta", metadata_xml())), b"part file given twice"),
    "no closing boundary": (form(("file", archive()), ("meta", metadata_xml()), close=False), b"closing boundary"),
    "not multipart inside": (b"just some bytes\r\n" * 100, b"Bad Request"),
    "too many parts": (form(*[("x", b"y")] * 20, ("file", archive()), ("meta", metadata_xml())), b"more than"),
    "big other parts": (form(("extra", b"e" * (2 * MIB)), ("file", archive()), ("meta", metadata_xml())),
                        b"other than file and meta"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
@pytest.mark.gen_test(timeout=60)
async def test_a_bad_body_is_400_and_leaves_nothing(db_url, recordings_config, request, case, caplog):
    body, reason = BAD_BODIES[case]
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        before = await set_row(h, nonce)
        response = await upload(h, f"?nonce={nonce}", body)
        assert response.code == 400 and reason in response.body, response.body
        assert await set_row(h, nonce) == before and await jobs(h) == []
        await eventually(lambda: leftovers(h, request) == [], "the partial archive dropped")
        assert (await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml())))).code == 204
        no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=30)
async def test_a_breakout_recording_is_403(db_url, recordings_config, request):
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        response = await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml(breakout=True))))
        assert response.code == 403 and response.body.startswith(b"Forbidden")
        assert (await set_row(h, nonce))["status"] == "UNKNOWN" and await jobs(h) == []
        assert leftovers(h, request) == []


def broken_storage(recordings_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    """Local: the storage folder is a file. S3: the bucket does not exist (fails at commit)."""
    if recordings_config["storage"] == "local":
        blocker = tmp_path / "not-a-folder"
        blocker.write_bytes(b"")
        return {**recordings_config, "local_path": str(blocker)}
    return {**recordings_config, "s3_bucket": "b3lb-missing-" + uuid.uuid4().hex[:8]}


@pytest.mark.gen_test(timeout=60)
async def test_a_storage_failure_is_503(db_url, recordings_config, tmp_path, caplog):
    async with serving(db_url, broken_storage(recordings_config, tmp_path)) as h:
        nonce = await new_set(h)
        before = await set_row(h, nonce)
        for _ in range(2):
            response = await upload(h, f"?nonce={nonce}", form(("file", archive(3 * MIB)), ("meta", metadata_xml())))
            assert (response.code, response.body) == (503, b"Error during file save")
        assert await set_row(h, nonce) == before and await jobs(h) == []
        failures = [r for r in caplog.records if r.name.startswith("b3lb.recordings")]
        assert len(failures) == 1 and failures[0].getMessage().startswith("recording storage failed")  # once
        no_tracebacks(caplog)
        nonce_free(caplog, nonce)


# -- oversized and broken bodies (raw sockets) ------------------------------------------------------

@pytest.mark.gen_test(timeout=30)
async def test_a_declared_length_over_the_upload_limit_is_413(db_url, recordings_config, request):
    async with serving(db_url, {**recordings_config, "max_upload_bytes": 256 * 1024}) as h:
        nonce = await new_set(h)
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(head(f"{UPLOAD_PATH}?nonce={nonce}", f"Content-Type: {CONTENT_TYPE}",
                              f"Content-Length: {256 * 1024 + 1}"))
            status, headers, body = await read_answer(reader)
            assert status == 413 and b"262144 bytes" in body and headers["connection"] == "close"
        finally:
            writer.close()
        assert (await set_row(h, nonce))["status"] == "UNKNOWN" and leftovers(h, request) == []
        # up to the limit it is taken
        small = form(("file", archive(200 * 1024)), ("meta", metadata_xml()))
        assert len(small) <= 256 * 1024 and (await upload(h, f"?nonce={nonce}", small)).code == 204


@pytest.mark.gen_test(timeout=60)
async def test_a_chunked_body_over_the_upload_limit_is_413_and_leaves_nothing(db_url, recordings_config, request,
                                                                              caplog):
    limit = 9 * MIB  # past one S3 part, so that a multipart upload was under way
    async with serving(db_url, {**recordings_config, "max_upload_bytes": limit}) as h:
        nonce = await new_set(h)
        body = chunked(form(("file", archive(12 * MIB)), ("meta", metadata_xml())))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            writer.write(head(f"{UPLOAD_PATH}?nonce={nonce}", f"Content-Type: {CONTENT_TYPE}",
                              "Transfer-Encoding: chunked") + body)
            status, _, answer = await read_answer(reader)
            assert status == 413 and f"{limit} bytes".encode() in answer
        finally:
            writer.close()
        await eventually(lambda: leftovers(h, request) == [], "the partial archive dropped")
        assert (await set_row(h, nonce))["status"] == "UNKNOWN" and await jobs(h) == []
        no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=60)
async def test_a_half_sent_body_leaves_nothing_behind(db_url, recordings_config, request, caplog):
    caplog.set_level(logging.INFO)
    async with serving(db_url, recordings_config) as h:
        nonce = await new_set(h)
        before = await set_row(h, nonce)
        body = form(("meta", metadata_xml()), ("file", archive(24 * MIB)))
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        writer.write(head(f"{UPLOAD_PATH}?nonce={nonce}", f"Content-Type: {CONTENT_TYPE}",
                          f"Content-Length: {len(body)}") + body[: len(body) // 2])
        await writer.drain()
        # The archive streams into storage as it arrives: a partial write exists before the body ends.
        await eventually(lambda: leftovers(h, request) != [], "a partial write while the body arrives")
        # not visible under a key: only a temporary file or an unfinished multipart upload
        assert [k for k in leftovers(h, request) if not k.startswith((".incomplete/", "multipart:"))] == []
        writer.close()
        await eventually(lambda: leftovers(h, request) == [], "the partial archive dropped")
        assert await set_row(h, nonce) == before and await jobs(h) == []
        lines = [r.getMessage() for r in caplog.records if r.name == "b3lb.recordings.upload"]
        assert len(lines) == 1 and "broken off" in lines[0] and "nothing stored" in lines[0]
        assert str(before["public_id"]) in lines[0]
        no_tracebacks(caplog)
        nonce_free(caplog, nonce)
        # and the set still takes a whole upload
        assert (await upload(h, f"?nonce={nonce}", form(("file", archive()), ("meta", metadata_xml())))).code == 204
