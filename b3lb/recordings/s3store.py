"""The `s3` storage backend: S3-compatible object storage (AWS, MinIO, Ceph RGW, Garage, ...).

Client: boto3, AWS's own SDK, run in a small dedicated thread pool. boto3 is synchronous, so every
call goes through `run` (a pool thread) and never blocks the event loop. Why not aiobotocore: it pins
exact botocore versions, which conflict with the boto3 (and moto, for the tests) that the same
environment needs; boto3 in threads has no such coupling and its thread-safe clients are made for
it. Why not the `minio` SDK: boto3 speaks to every S3 implementation and is the one operators know.

Writes: bytes are buffered up to one part (PART_SIZE, 8 MiB; the buffer never holds much more).
The first full part starts a multipart upload; each further part is sent as it fills; `commit`
sends the rest and completes the upload, which is when the object appears (atomically replacing an
older one). An object smaller than one part is a single PutObject at commit. The sha256 is computed
here, as the parts go out. `abort` aborts the multipart upload; `cleanup_incomplete` aborts the
uploads a crashed process left (they cost storage until aborted).

Errors become StorageError with the S3 error code or the exception type, never credentials.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions

from b3lb.config import RecordingsConfig
from b3lb.recordings.storage import ObjectInfo, Storage, StorageError, Stored, Writer, check_key, loggable_key
from b3lb.urlguard import loggable

PART_SIZE = 8 * 1024 * 1024  # S3 wants parts of at least 5 MiB (but the last)
READ_CHUNK = 256 * 1024
THREADS = 16
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

T = TypeVar("T")


def _client_config() -> botocore.config.Config:
    options: dict[str, Any] = {
        "retries": {"max_attempts": 3, "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 60,
        "max_pool_connections": THREADS,
        "s3": {"addressing_style": "path"},  # works with every S3 implementation and any bucket name
    }
    try:
        # botocore >= 1.36 adds CRC checksums to every upload by default, which several S3-compatible
        # servers reject; send and check them only where S3 requires them.
        return botocore.config.Config(
            **options, request_checksum_calculation="when_required", response_checksum_validation="when_required"
        )
    except TypeError:
        return botocore.config.Config(**options)  # older botocore: no default checksums to turn off


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(error.get("Code") or status or "ClientError")
    return type(exc).__name__


def _checked_endpoint(endpoint: str) -> str:
    """The endpoint as it may appear in messages; StorageError (not quoting it) unless an http(s) URL."""
    if not endpoint:
        return "AWS"
    try:
        parts = urlsplit(endpoint)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        valid = False
    if not valid:
        raise StorageError("s3 storage: recordings.s3_endpoint is not an http(s) URL")
    return loggable(endpoint)


class S3Failure(StorageError):
    """A failed S3 call; `code` is S3's error code (NoSuchKey, AccessDenied, ...) or the exception type."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class S3Writer(Writer):
    def __init__(self, storage: S3Storage, key: str) -> None:
        self._s3 = storage
        self._key = key
        self._object = storage.object_key(key)
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._finished = False

    async def write(self, data: bytes) -> None:
        if self._finished:
            raise StorageError(f"s3 storage: write to {loggable_key(self._key)} after commit or abort")
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= PART_SIZE:
            with memoryview(self._buffer) as view:
                part = bytes(view[:PART_SIZE])  # one copy, not two
            del self._buffer[:PART_SIZE]
            await self._send_part(part)

    async def _send_part(self, part: bytes) -> None:
        s3, client = self._s3, self._s3.client
        if self._upload_id is None:
            created = await s3.run(
                "create upload", self._key, lambda: client.create_multipart_upload(Bucket=s3.bucket, Key=self._object)
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1

        def send() -> dict[str, Any]:
            self._hash.update(part)  # in the pool thread: hashing megabytes is CPU the event loop should not spend
            return client.upload_part(
                Bucket=s3.bucket, Key=self._object, UploadId=self._upload_id, PartNumber=number, Body=part
            )

        answer = await s3.run("upload part", self._key, send)
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def commit(self) -> Stored:
        if self._finished:
            raise StorageError(f"s3 storage: commit of {loggable_key(self._key)} after commit or abort")
        s3, client = self._s3, self._s3.client
        rest, self._buffer = bytes(self._buffer), bytearray()

        def put() -> None:
            self._hash.update(rest)
            client.put_object(Bucket=s3.bucket, Key=self._object, Body=rest)

        try:
            if self._upload_id is None:
                await s3.run("put", self._key, put)
            else:
                if rest:
                    await self._send_part(rest)
                parts = {"Parts": self._parts}
                await s3.run(
                    "complete upload",
                    self._key,
                    lambda: client.complete_multipart_upload(
                        Bucket=s3.bucket, Key=self._object, UploadId=self._upload_id, MultipartUpload=parts
                    ),
                )
        except BaseException:
            await self.abort()
            raise
        self._finished = True
        return Stored(key=self._key, size=self._size, sha256=self._hash.hexdigest())

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._buffer = bytearray()
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        s3 = self._s3
        try:
            await s3.run(
                "abort upload",
                self._key,
                lambda: s3.client.abort_multipart_upload(Bucket=s3.bucket, Key=self._object, UploadId=upload_id),
            )
        except StorageError:
            pass  # cleanup_incomplete aborts it later


class S3Storage(Storage):
    name = "s3"

    def __init__(self, config: RecordingsConfig) -> None:
        if not config.s3_bucket:
            raise StorageError("s3 storage: recordings.s3_bucket is empty")
        self.bucket = config.s3_bucket
        prefix = config.s3_prefix.strip("/")
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint = _checked_endpoint(config.s3_endpoint)
        self._executor = ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="b3lb-s3")
        self._closed = False
        try:
            self.client: Any = boto3.session.Session().client(
                "s3",
                endpoint_url=config.s3_endpoint or None,
                aws_access_key_id=config.s3_access_key or None,  # None: boto3's usual chain (env, instance role)
                aws_secret_access_key=config.s3_secret_key or None,
                region_name=config.s3_region or None,
                config=_client_config(),
            )
        except (ValueError, botocore.exceptions.BotoCoreError) as exc:
            self._executor.shutdown(wait=False)
            # Not str(exc): botocore's text quotes the endpoint as configured, credentials and all.
            raise StorageError(f"s3 storage ({self.endpoint}): cannot make a client: {type(exc).__name__}") from None

    def object_key(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def run(self, what: str, key: str, function: Callable[[], T]) -> T:
        """Run a blocking boto3 call in the pool; its failures become S3Failure (a StorageError)."""
        if self._closed:
            raise StorageError("s3 storage: closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, function)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError) as exc:
            code = _error_code(exc)
            # The message names endpoint, bucket and key; exceptions' own texts may quote request details.
            message = f"s3 storage ({self.endpoint}, bucket {self.bucket}): {what} {loggable_key(key)}: {code}"
            raise S3Failure(message, code) from None

    async def open_write(self, key: str) -> Writer:
        if self._closed:
            raise StorageError("s3 storage: closed")
        return S3Writer(self, key)

    async def stat(self, key: str) -> ObjectInfo | None:
        name = self.object_key(key)
        try:
            head = await self.run("stat", key, lambda: self.client.head_object(Bucket=self.bucket, Key=name))
        except S3Failure as exc:
            if exc.code in MISSING_CODES:
                return None
            raise
        return ObjectInfo(
            size=int(head["ContentLength"]),
            mtime=head["LastModified"].timestamp(),
            etag=str(head.get("ETag", "")).strip('"'),
        )

    async def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad range [{start}, {stop})")
        name = self.object_key(key)
        if stop == start:  # S3 has no empty range; still, a missing object is an error
            if await self.stat(key) is None:
                raise StorageError(f"s3 storage: no object {loggable_key(key)}")
            return
        extra: dict[str, str] = {}
        if start or stop is not None:
            extra["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            answer = await self.run("read", key, lambda: self.client.get_object(Bucket=self.bucket, Key=name, **extra))
        except S3Failure as exc:
            if exc.code in MISSING_CODES:
                raise StorageError(f"s3 storage: no object {loggable_key(key)}") from None
            if exc.code == "InvalidRange":
                return  # start at or past the end (S3 answers 416; the local backend yields nothing)
            raise
        body = answer["Body"]
        try:
            while chunk := await self.run("read", key, functools.partial(body.read, READ_CHUNK)):
                yield chunk
        finally:
            body.close()  # returns (or drops, if unread bytes are left) the pooled connection

    async def delete(self, key: str) -> None:
        name = self.object_key(key)
        try:
            await self.run("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=name))
        except S3Failure as exc:
            if exc.code not in MISSING_CODES:
                raise

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.object_key(prefix) + "/"
        return await self.run("delete", prefix + "/", functools.partial(self._delete_prefix_sync, folder))

    def _delete_prefix_sync(self, folder: str) -> int:
        """List the objects under `folder` a page at a time and delete each page in one request
        (both at most DELETE_BATCH keys), in this pool thread: a set holds a handful of objects."""
        deleted = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder, PaginationConfig={"PageSize": DELETE_BATCH})
        for page in pages:
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start:start + DELETE_BATCH]
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                failed = [e for e in answer.get("Errors", []) if e.get("Code") not in MISSING_CODES]
                if failed:
                    raise botocore.exceptions.ClientError({"Error": {"Code": str(failed[0].get("Code", ""))}},
                                                          "DeleteObjects")
                deleted += len(batch)
        return deleted

    async def cleanup_incomplete(self, older_than: float) -> int:
        cutoff = time.time() - older_than
        return await self.run("clean uploads", self.prefix or "*", functools.partial(self._cleanup_sync, cutoff))

    def _cleanup_sync(self, cutoff: float) -> int:
        """Abort this prefix's multipart uploads started before `cutoff` (a crashed writer's)."""
        aborted = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in pages:
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() > cutoff:
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except botocore.exceptions.ClientError as exc:
                    if _error_code(exc) != "NoSuchUpload":  # finished or aborted meanwhile
                        raise
                    continue
                aborted += 1
        return aborted

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.client.close)
        finally:
            self._executor.shutdown(wait=False)
