"""Where recording archives and rendered videos live: one small interface, two backends.

- `local` (b3lb/recordings/localstore.py): a folder, default {server.data_dir}/recordings;
- `s3` (b3lb/recordings/s3store.py): S3-compatible object storage.

Keys are relative paths built by `archive_key` / `video_key`: every file of a record set lives under
`set_prefix(nonce)` = `{nonce[0:2]}/{nonce[2:4]}/{nonce}/`, so `delete_prefix` removes all of a set's
files, also those no row points to (a crash between a write and the row that records it). The rows
say which key is which file; an upload's archive key is unique per upload, so it is known from the
set's row only. A key carries the set's nonce, its upload credential: logs show `loggable_key(key)`.

A write is never visible under its key until it is complete: `open_write` returns a `Writer` that
takes the bytes as they arrive, counts them and hashes them (sha256), and only `commit` makes the
object appear (rename of a temporary file; completion of an S3 multipart upload). `abort` (or a
writer never committed) leaves nothing behind; `cleanup_incomplete` removes what a crash left.
"""

from __future__ import annotations

import abc
import logging
import re
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from b3lb.config import Config
from b3lb.outage import Outage

log = logging.getLogger("b3lb.recordings.storage")


class StorageError(Exception):
    """The storage failed (disk full, S3 unreachable, ...); the message says why, without secrets."""


class InvalidKey(StorageError, ValueError):
    """A key that is not a plain relative path (absolute, `..`, empty parts, backslashes, ...)."""


MAX_KEY_CHARS = 300  # record.file is varchar(300)
_RESERVED_FIRST_PARTS = frozenset({".incomplete"})  # the local backend's temporary files live there


def check_key(key: str) -> str:
    """The key if it is a relative POSIX path that stays below the storage root; InvalidKey if not.
    Both backends refuse the same keys, so a key that works on one works on the other."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS:
        raise InvalidKey("storage key: empty or too long")
    if "\\" in key or any(ord(c) < 32 or c == "\x7f" for c in key):
        raise InvalidKey("storage key: backslash or control character")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts) or parts[0] in _RESERVED_FIRST_PARTS:
        raise InvalidKey("storage key: absolute, empty, `.` or `..` part, or reserved name")
    return key


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    mtime: float  # seconds since the epoch
    etag: str  # opaque, quoted for HTTP by the caller


@dataclass(frozen=True, slots=True)
class Stored:
    """What a committed write produced."""

    key: str
    size: int
    sha256: str  # hex


class Writer(abc.ABC):
    """A write in progress. Not safe for concurrent use; one per upload."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    async def commit(self) -> Stored:
        """Make the object visible under its key (replacing an older one atomically)."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Drop what was written; safe to call twice or after a failed write."""


class Storage(abc.ABC):
    name: str

    @abc.abstractmethod
    async def open_write(self, key: str) -> Writer: ...

    @abc.abstractmethod
    async def stat(self, key: str) -> ObjectInfo | None:
        """None when there is no such object."""

    async def exists(self, key: str) -> bool:
        return await self.stat(key) is not None

    @abc.abstractmethod
    def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, stop) of an object in chunks (stop None: to the end).
        Raises StorageError (also for a missing object)."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove an object; a missing one is not an error."""

    @abc.abstractmethod
    async def delete_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix/` (a set's folder, `set_prefix`);
        returns how many. Nothing there is not an error. InvalidKey for a prefix check_key refuses."""

    @abc.abstractmethod
    async def cleanup_incomplete(self, older_than: float) -> int:
        """Remove writes never committed that started more than `older_than` seconds ago
        (a crashed process's temporary files or multipart uploads); returns how many."""

    async def close(self) -> None:  # noqa: B027 - optional for backends
        """Release connections and threads."""

    async def put_bytes(self, key: str, data: bytes) -> Stored:
        """Write a small object in one go (tests, fixtures, renderer outputs read into memory)."""
        writer = await self.open_write(key)
        try:
            await writer.write(data)
            return await writer.commit()
        except BaseException:
            await writer.abort()
            raise


def set_prefix(nonce: str) -> str:
    nonce = nonce.lower()
    return f"{nonce[0:2]}/{nonce[2:4]}/{nonce}"


def archive_key(set_nonce: str, upload_id: str = "") -> str:
    """The node's uploaded archive of a record set (spec 4.10: `{record set path}/raw.tar`).

    upload.py names each upload's archive `raw-{upload_id}.tar` (a fresh id per upload), so a new
    upload never overwrites the archive the set's row describes: the row's `archive_key` is the
    only way to find it. Without an id: `raw.tar`, for tools and tests that store one themselves."""
    name = f"raw-{upload_id.lower()}.tar" if upload_id else "raw.tar"
    return f"{set_prefix(set_nonce)}/{name}"


def video_key(set_nonce: str, record_nonce: str, extension: str) -> str:
    """A rendered video of a set, named by its download nonce."""
    return f"{set_prefix(set_nonce)}/{record_nonce.lower()}.{extension}"


_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def loggable_key(key: str) -> str:
    """A key as logs and error messages show it: a part that is a UUID (a set's nonce, the upload
    credential of its set) cut to its first 8 characters, enough to find the folder, not to upload."""
    if not isinstance(key, str):
        return "?"
    return "/".join(f"{part[:8]}..." if _UUID.match(part) else part for part in key[:MAX_KEY_CHARS].split("/"))


# Each storage's availability as this process sees it: a failure is logged once, not per request.
_OUTAGES: weakref.WeakKeyDictionary[Storage, Outage] = weakref.WeakKeyDictionary()


def storage_outage(storage: Storage) -> Outage:
    """The outage tracker of `storage` (shared by uploads and playback: one storage, one state)."""
    outage = _OUTAGES.get(storage)
    if outage is None:
        outage = _OUTAGES[storage] = Outage("recording storage", dependency="recording_storage", logger=log,
                                            failure_text="recording storage failed")
    return outage


def local_root(config: Config) -> Path:
    rec = config.recordings
    return Path(rec.local_path) if rec.local_path else Path(config.server.data_dir) / "recordings"


def make_storage(config: Config) -> Storage:
    """The backend `recordings.storage` names."""
    if config.recordings.storage == "s3":
        from b3lb.recordings.s3store import S3Storage

        return S3Storage(config.recordings)
    from b3lb.recordings.localstore import LocalStorage

    return LocalStorage(local_root(config))
