"""Both storage backends against the same tests (local folder; S3 on a moto server on loopback)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from b3lb.config import RecordingsConfig
from b3lb.recordings.localstore import LocalStorage
from b3lb.recordings.s3store import PART_SIZE, S3Storage
from b3lb.recordings.storage import (
    InvalidKey,
    Storage,
    StorageError,
    archive_key,
    loggable_key,
    set_prefix,
    video_key,
)

NONCE = "3f1c0d3e-9b2a-4c55-8e1f-0a6b7c8d9e10"
KEY = archive_key(NONCE)
MIB = 1024 * 1024


async def read_all(storage: Storage, key: str, start: int = 0, stop: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in storage.read(key, start, stop)])


def incomplete_writes(storage: Storage, s3_client: Any = None) -> list[str]:
    """What the backend holds of uncommitted writes, looked at directly (temp files, multipart uploads)."""
    if isinstance(storage, LocalStorage):
        return sorted(p.name for p in storage.incomplete.iterdir()) if storage.incomplete.exists() else []
    assert isinstance(storage, S3Storage)
    answer = s3_client.list_multipart_uploads(Bucket=storage.bucket)
    return sorted(upload["UploadId"] for upload in answer.get("Uploads", []))


def stored_names(storage: Storage, s3_client: Any = None) -> list[str]:
    if isinstance(storage, LocalStorage):
        return sorted(str(p.relative_to(storage.root)) for p in storage.root.rglob("*") if p.is_file())
    assert isinstance(storage, S3Storage)
    answer = s3_client.list_objects_v2(Bucket=storage.bucket)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def s3_client_for(request: pytest.FixtureRequest, storage: Storage) -> Any:
    return request.getfixturevalue("s3_client") if isinstance(storage, S3Storage) else None


@pytest.mark.gen_test(timeout=30)
async def test_put_stat_and_read_whole_and_ranges(storage: Storage):
    data = os.urandom(600 * 1024 + 7)  # several read chunks, not a multiple of one
    stored = await storage.put_bytes(KEY, data)
    assert (stored.key, stored.size, stored.sha256) == (KEY, len(data), hashlib.sha256(data).hexdigest())
    info = await storage.stat(KEY)
    assert info is not None and info.size == len(data) and info.etag and info.mtime > 0
    assert await storage.exists(KEY)
    assert await read_all(storage, KEY) == data
    assert await read_all(storage, KEY, 1000) == data[1000:]
    assert await read_all(storage, KEY, 1000, 300_000) == data[1000:300_000]
    assert await read_all(storage, KEY, len(data) - 1, len(data)) == data[-1:]
    assert await read_all(storage, KEY, 0, 1) == data[:1]
    assert await read_all(storage, KEY, 5, 5) == b""
    assert await read_all(storage, KEY, len(data) - 10, len(data) + 100) == data[-10:]  # stop past the end
    assert await read_all(storage, KEY, len(data)) == b""  # start at the end
    assert await read_all(storage, KEY, len(data) + 50) == b""


@pytest.mark.gen_test(timeout=30)
async def test_empty_object_and_bad_ranges(storage: Storage):
    stored = await storage.put_bytes("aa/empty", b"")
    assert stored.size == 0 and stored.sha256 == hashlib.sha256(b"").hexdigest()
    info = await storage.stat("aa/empty")
    assert info is not None and info.size == 0
    assert await read_all(storage, "aa/empty") == b""
    assert await read_all(storage, "aa/empty", 0, 0) == b""
    with pytest.raises(ValueError):
        await read_all(storage, "aa/empty", -1)
    with pytest.raises(ValueError):
        await read_all(storage, "aa/empty", 5, 4)


@pytest.mark.gen_test(timeout=30)
async def test_uncommitted_write_is_invisible(storage: Storage):
    writer = await storage.open_write(KEY)
    await writer.write(b"x" * 1000)
    assert await storage.stat(KEY) is None and not await storage.exists(KEY)
    with pytest.raises(StorageError):
        await read_all(storage, KEY)
    stored = await writer.commit()
    assert stored.size == 1000 and await read_all(storage, KEY) == b"x" * 1000
    with pytest.raises(StorageError):
        await writer.write(b"more")  # a committed writer takes nothing more
    await writer.abort()  # and aborting it afterwards changes nothing
    assert await read_all(storage, KEY) == b"x" * 1000


@pytest.mark.gen_test(timeout=30)
async def test_overwrite_replaces_atomically(storage: Storage):
    old, new = b"o" * MIB, b"n" * (MIB // 2)
    await storage.put_bytes(KEY, old)
    writer = await storage.open_write(KEY)
    await writer.write(new)
    assert await read_all(storage, KEY) == old  # old content until commit
    reading = storage.read(KEY)
    first = await anext(reading)  # a reader already under way when the new version lands
    await writer.commit()
    assert first + b"".join([chunk async for chunk in reading]) == old
    assert await read_all(storage, KEY) == new
    info = await storage.stat(KEY)
    assert info is not None and info.size == len(new)


@pytest.mark.gen_test(timeout=30)
async def test_abort_leaves_nothing(storage: Storage, request: pytest.FixtureRequest):
    s3_client = s3_client_for(request, storage)
    writer = await storage.open_write(KEY)
    await writer.write(os.urandom(PART_SIZE + 1000))  # on S3 a multipart upload is under way now
    assert len(incomplete_writes(storage, s3_client)) == 1
    await writer.abort()
    await writer.abort()  # twice is fine
    assert await storage.stat(KEY) is None
    assert incomplete_writes(storage, s3_client) == [] and stored_names(storage, s3_client) == []
    assert await storage.cleanup_incomplete(0) == 0
    with pytest.raises(StorageError):
        await writer.write(b"late")
    with pytest.raises(StorageError):
        await writer.commit()
    assert await storage.stat(KEY) is None


@pytest.mark.gen_test(timeout=30)
async def test_abort_of_a_small_write_and_put_bytes_failure(storage: Storage, request: pytest.FixtureRequest):
    s3_client = s3_client_for(request, storage)
    writer = await storage.open_write(KEY)
    await writer.write(b"small")
    await writer.abort()
    assert await storage.stat(KEY) is None and incomplete_writes(storage, s3_client) == []
    with pytest.raises(InvalidKey):
        await storage.put_bytes("../escape", b"x")
    assert incomplete_writes(storage, s3_client) == [] and stored_names(storage, s3_client) == []


@pytest.mark.gen_test(timeout=60)
async def test_big_object_streamed_in_chunks(storage: Storage, request: pytest.FixtureRequest):
    base = os.urandom(MIB)
    chunks = [i.to_bytes(4, "big") + base[4:] for i in range(20)]  # 20 MiB, each chunk distinct
    expected = hashlib.sha256(b"".join(chunks)).hexdigest()
    writer = await storage.open_write(KEY)
    for chunk in chunks:
        await writer.write(chunk)
    stored = await writer.commit()
    assert stored.size == 20 * MIB and stored.sha256 == expected
    info = await storage.stat(KEY)
    assert info is not None and info.size == 20 * MIB
    read_back = hashlib.sha256()
    async for chunk in storage.read(KEY):
        read_back.update(chunk)
    assert read_back.hexdigest() == expected
    assert await read_all(storage, KEY, 9 * MIB - 2, 9 * MIB + 6) == b"".join(chunks)[9 * MIB - 2 : 9 * MIB + 6]
    if isinstance(storage, S3Storage):
        assert info.etag.endswith("-3")  # S3's ETag of a multipart object names its part count: 8+8+4 MiB
        assert incomplete_writes(storage, request.getfixturevalue("s3_client")) == []


@pytest.mark.gen_test(timeout=30)
async def test_delete(storage: Storage, request: pytest.FixtureRequest):
    s3_client = s3_client_for(request, storage)
    video = video_key(NONCE, "0d7c4f7e-1111-4222-8333-944455556666", "mp4")
    await storage.put_bytes(KEY, b"archive")
    await storage.put_bytes(video, b"video")
    assert await storage.stat(KEY.rsplit("/", 1)[0]) is None  # the set's "folder" is not an object
    await storage.delete(KEY)
    assert await storage.stat(KEY) is None and await read_all(storage, video) == b"video"
    await storage.delete(video)
    await storage.delete(video)  # missing: fine
    await storage.delete("never/was")
    assert stored_names(storage, s3_client) == []
    if isinstance(storage, LocalStorage):  # the set's empty folders are pruned, the root stays
        assert sorted(p.name for p in storage.root.iterdir()) == [".incomplete"]


@pytest.mark.gen_test(timeout=30)
async def test_read_of_a_missing_object_raises(storage: Storage):
    for start, stop in [(0, None), (3, 10), (0, 0)]:
        with pytest.raises(StorageError, match="no object"):
            await read_all(storage, "no/such/key", start, stop)


@pytest.mark.gen_test(timeout=30)
async def test_cleanup_incomplete_removes_a_stale_write(storage: Storage, request: pytest.FixtureRequest):
    s3_client = s3_client_for(request, storage)
    await storage.put_bytes("aa/done", b"committed")
    writer = await storage.open_write(KEY)
    await writer.write(os.urandom(PART_SIZE + 10))  # a crashed upload's leftovers
    if isinstance(storage, LocalStorage):  # moto dates every multipart upload 2010-11-10, so only here
        assert await storage.cleanup_incomplete(3600) == 0  # too young to be stale
    assert len(incomplete_writes(storage, s3_client)) == 1
    assert await storage.cleanup_incomplete(0) == 1
    assert incomplete_writes(storage, s3_client) == []
    with pytest.raises(StorageError):
        await writer.commit()  # what cleanup removed cannot be committed any more
    assert await storage.stat(KEY) is None and await read_all(storage, "aa/done") == b"committed"
    assert await storage.cleanup_incomplete(0) == 0


OTHER = "3f1c0d3e-9b2a-4c55-8e1f-0a6b7c8d9e11"  # a set whose folder is next to NONCE's


@pytest.mark.gen_test(timeout=60)
async def test_delete_prefix_removes_a_sets_folder_and_nothing_else(storage: Storage, request: pytest.FixtureRequest):
    s3_client = s3_client_for(request, storage)
    prefix = set_prefix(NONCE)
    mine = [archive_key(NONCE), archive_key(NONCE, "0a1b2c"), video_key(NONCE, OTHER, "mp4"), f"{prefix}/deep/er/x"]
    theirs = [archive_key(OTHER), f"{prefix}-sibling/x", f"{prefix[:5]}/loose"]  # a name that merely starts alike
    for key in mine + theirs:
        await storage.put_bytes(key, key.encode())
    writer = await storage.open_write(archive_key(NONCE, "inflight"))  # an upload under way is not an object
    await writer.write(b"partial")
    assert await storage.delete_prefix(prefix) == len(mine)
    assert [n for n in stored_names(storage, s3_client) if not n.startswith(".incomplete/")] == sorted(theirs)
    assert await storage.delete_prefix(prefix) == 0  # again: nothing there, no error
    assert await storage.delete_prefix(set_prefix("00000000-0000-4000-8000-000000000000")) == 0
    await writer.commit()  # the upload still lands; retention deletes the set's folder again with its row
    assert await read_all(storage, archive_key(NONCE, "inflight")) == b"partial"
    if isinstance(storage, LocalStorage):  # empty folders pruned up to the next one still in use
        assert not (storage.root / prefix / "deep").exists()
    for key in BAD_KEYS:
        with pytest.raises(InvalidKey):
            await storage.delete_prefix(key)


@pytest.mark.gen_test(timeout=120)
async def test_s3_delete_prefix_pages_and_batches(storage: Storage, request: pytest.FixtureRequest):
    if not isinstance(storage, S3Storage):
        pytest.skip("S3 paging: the local backend walks a folder")
    s3_client = request.getfixturevalue("s3_client")
    prefix = set_prefix(NONCE)
    for n in range(1005):  # more than one page and one DeleteObjects batch (1000 each)
        s3_client.put_object(Bucket=storage.bucket, Key=f"{prefix}/v{n:04d}", Body=b"x")
    s3_client.put_object(Bucket=storage.bucket, Key=archive_key(OTHER), Body=b"kept")
    assert await storage.delete_prefix(prefix) == 1005
    assert stored_names(storage, s3_client) == [archive_key(OTHER)]


@pytest.mark.gen_test(timeout=30)
async def test_local_delete_prefix_never_follows_links(tmp_path: Path):
    storage = LocalStorage(tmp_path / "rec")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_bytes(b"not b3lb's")
    prefix = set_prefix(NONCE)
    await storage.put_bytes(archive_key(NONCE), b"tar")
    (storage.root / prefix / "link").symlink_to(outside)  # a linked folder inside the set's folder
    (storage.root / prefix / "file-link").symlink_to(outside / "precious")
    assert await storage.delete_prefix(prefix) == 2  # the archive and the file link (unlinked, not followed)
    assert (outside / "precious").read_bytes() == b"not b3lb's" and not (storage.root / prefix).exists()
    # A folder on the way that links out of the root: refused, nothing outside touched.
    (storage.root / "3f").mkdir(exist_ok=True)
    (storage.root / "3f" / "1d").symlink_to(outside)
    (outside / "3f1d0000-0000-4000-8000-000000000000").mkdir()
    with pytest.raises(StorageError, match="link out of the storage root"):
        await storage.delete_prefix(set_prefix("3f1d0000-0000-4000-8000-000000000000"))
    assert (outside / "precious").exists() and (outside / "3f1d0000-0000-4000-8000-000000000000").exists()


def test_keys_in_logs_show_no_nonce():
    assert archive_key(NONCE) == f"3f/1c/{NONCE}/raw.tar"
    assert archive_key(NONCE.upper(), "AB12") == f"3f/1c/{NONCE}/raw-ab12.tar"
    shown = loggable_key(video_key(NONCE, OTHER, "mp4"))
    assert shown == f"3f/1c/3f1c0d3e.../{OTHER}.mp4" and NONCE not in shown
    assert loggable_key(NONCE.upper()) == "3F1C0D3E..." and loggable_key("aa/bb/x") == "aa/bb/x"
    assert len(loggable_key("k" * 5000)) == 300


BAD_KEYS = ["../x", "/abs", "a/../../x", "a//b", "a/./b", "a/", "", "a\\b", "..", ".incomplete/x", "a\x00b", "k" * 301]


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("key", BAD_KEYS, ids=range(len(BAD_KEYS)))
async def test_keys_that_would_escape_are_refused(storage: Storage, key: str, tmp_path: Path):
    with pytest.raises(InvalidKey):
        await storage.open_write(key)
    with pytest.raises(InvalidKey):
        await storage.stat(key)
    with pytest.raises(InvalidKey):
        await storage.delete(key)
    with pytest.raises(InvalidKey):
        await read_all(storage, key)
    assert issubclass(InvalidKey, StorageError) and issubclass(InvalidKey, ValueError)
    assert not (tmp_path / "x").exists() and not Path("/abs").exists()


@pytest.mark.gen_test(timeout=30)
async def test_local_key_below_a_file_fails_cleanly(tmp_path: Path):
    storage = LocalStorage(tmp_path / "rec")
    await storage.put_bytes("aa/bb", b"a file where a folder would go")
    with pytest.raises(StorageError, match="cannot commit aa/bb/cc"):
        await storage.put_bytes("aa/bb/cc", b"x")
    assert incomplete_writes(storage) == [] and await read_all(storage, "aa/bb") == b"a file where a folder would go"


@pytest.mark.gen_test(timeout=30)
async def test_s3_prefix_is_put_before_every_key(s3_server: str, s3_client: Any):
    s3_client.create_bucket(Bucket="b3lb-prefix-test")
    config = RecordingsConfig(
        storage="s3", s3_endpoint=s3_server, s3_bucket="b3lb-prefix-test", s3_access_key="testing",
        s3_secret_key="testing", s3_prefix="/b3lb/recordings/",
    )  # fmt: skip
    storage = S3Storage(config)
    try:
        await storage.put_bytes("aa/x", b"prefixed")
        assert stored_names(storage, s3_client) == ["b3lb/recordings/aa/x"]
        assert await read_all(storage, "aa/x") == b"prefixed"
        s3_client.create_multipart_upload(Bucket="b3lb-prefix-test", Key="other-app/upload")
        assert await storage.cleanup_incomplete(0) == 0  # another application's upload in the bucket is left alone
    finally:
        await storage.close()


@pytest.mark.gen_test(timeout=60)
async def test_s3_errors_name_no_secret(s3_server: str):
    secret = "SUPERSECRETKEY123"
    unreachable = RecordingsConfig(
        storage="s3", s3_endpoint="http://user:pw@127.0.0.1:1", s3_bucket="b", s3_access_key="AKIDSECRET",
        s3_secret_key=secret,
    )  # fmt: skip
    no_bucket = dataclasses.replace(unreachable, s3_endpoint=s3_server, s3_bucket="b3lb-no-such-bucket")
    for config in (unreachable, no_bucket):
        storage = S3Storage(config)
        try:
            attempts = [storage.put_bytes("aa/x", b"x"), read_all(storage, "aa/x")]
            if config is unreachable:  # (HEAD of a key in a missing bucket is a plain 404: no object)
                attempts.append(storage.stat("aa/x"))
            for attempt in attempts:
                with pytest.raises(StorageError) as caught:
                    await attempt
                text = str(caught.value)
                assert secret not in text and "AKIDSECRET" not in text and "user:pw" not in text
        finally:
            await storage.close()
    with pytest.raises(StorageError, match="s3_bucket"):
        S3Storage(RecordingsConfig(storage="s3", s3_endpoint=s3_server))
    for endpoint in ["ftp://u:pw@host", "h!ttp://u:pw@host", "http://u:pw@[::1", "http://u:pw@host:99999"]:
        with pytest.raises(StorageError, match="s3_endpoint") as caught:
            S3Storage(dataclasses.replace(unreachable, s3_endpoint=endpoint))
        assert "pw" not in str(caught.value)
    closed = S3Storage(dataclasses.replace(no_bucket, s3_bucket="b3lb-closed"))
    await closed.close()
    with pytest.raises(StorageError, match="closed"):
        await closed.stat("aa/x")
