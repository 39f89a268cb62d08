"""The `local` storage backend: objects are files below one folder.

A write goes to a uniquely named temporary file in `{root}/.incomplete/` (the same file system, so
the final rename is atomic), is fsynced, then renamed into place; the directory is fsynced too, so
a committed object survives a power cut. Readers hold an open file, so an object replaced while
being read keeps serving the old bytes to that reader.

File I/O runs in threads (`asyncio.to_thread`): a slow disk must not stall the event loop that
serves the API. Small writes are batched into one thread hop per `WRITE_BATCH` bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from b3lb.recordings.storage import ObjectInfo, Storage, StorageError, Stored, Writer, check_key, loggable_key

INCOMPLETE_DIR = ".incomplete"
TEMP_SUFFIX = ".part"
WRITE_BATCH = 1024 * 1024
READ_CHUNK = 256 * 1024


def _describe(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(root: Path, directory: Path) -> None:
    """Create `directory` (below `root`) and its missing parents, fsyncing each new entry's parent."""
    missing: list[Path] = []
    current = directory
    while current != root and not current.is_dir():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(path.parent)


class LocalWriter(Writer):
    def __init__(self, storage: LocalStorage, key: str, target: Path, temp: Path, file: BinaryIO) -> None:
        self._storage = storage
        self._key = key
        self._target = target
        self._temp = temp
        self._file: BinaryIO | None = file
        self._hash = hashlib.sha256()
        self._size = 0
        self._pending = bytearray()
        self._finished = False

    async def write(self, data: bytes) -> None:
        if self._finished or self._file is None:
            raise StorageError(f"local storage: write to {loggable_key(self._key)} after commit or abort")
        self._pending += data
        self._size += len(data)
        if len(self._pending) >= WRITE_BATCH:
            await self._flush()

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = bytes(self._pending), bytearray()
        try:
            await asyncio.to_thread(self._write_batch, batch)
        except OSError as exc:
            raise StorageError(f"local storage: cannot write {loggable_key(self._key)}: {_describe(exc)}") from None

    def _write_batch(self, batch: bytes) -> None:
        assert self._file is not None
        self._hash.update(batch)  # here, not in write(): hashing a megabyte is CPU the loop should not spend
        self._file.write(batch)

    async def commit(self) -> Stored:
        if self._finished or self._file is None:
            raise StorageError(f"local storage: commit of {loggable_key(self._key)} after commit or abort")
        try:
            await self._flush()
            await asyncio.to_thread(self._commit_sync)
        except OSError as exc:
            await self.abort()
            raise StorageError(f"local storage: cannot commit {loggable_key(self._key)}: {_describe(exc)}") from None
        except BaseException:
            await self.abort()
            raise
        self._finished = True
        return Stored(key=self._key, size=self._size, sha256=self._hash.hexdigest())

    def _commit_sync(self) -> None:
        assert self._file is not None
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        root = self._storage.root
        # A concurrent delete may prune the parent between mkdir and rename: make it again and retry.
        for attempt in range(3):
            _make_dirs(root, self._target.parent)
            try:
                os.replace(self._temp, self._target)
                break
            except FileNotFoundError:
                if attempt == 2 or not self._temp.exists():
                    raise
        _fsync_dir(self._target.parent)

    async def abort(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._pending = bytearray()
        await asyncio.to_thread(self._abort_sync)

    def _abort_sync(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # the data is being thrown away anyway
            self._file = None
        try:
            self._temp.unlink(missing_ok=True)
        except OSError:
            pass  # left for cleanup_incomplete


class LocalStorage(Storage):
    name = "local"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.incomplete = self.root / INCOMPLETE_DIR

    def path(self, key: str) -> Path:
        """The file of a key; InvalidKey for a key that would leave the root."""
        return self.root.joinpath(*check_key(key).split("/"))

    async def open_write(self, key: str) -> Writer:
        target = self.path(key)
        try:
            temp, file = await asyncio.to_thread(self._create_temp)
        except OSError as exc:
            raise StorageError(f"local storage: cannot create a temporary file: {_describe(exc)}") from None
        return LocalWriter(self, key, target, temp, file)

    def _create_temp(self) -> tuple[Path, BinaryIO]:
        self.incomplete.mkdir(parents=True, exist_ok=True)
        temp = self.incomplete / f"{secrets.token_hex(16)}{TEMP_SUFFIX}"
        return temp, open(temp, "xb")  # noqa: SIM115 - closed by the writer's commit or abort

    async def stat(self, key: str) -> ObjectInfo | None:
        path = self.path(key)
        try:
            info = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"local storage: cannot stat {loggable_key(key)}: {_describe(exc)}") from None
        if not stat.S_ISREG(info.st_mode):
            return None  # a directory of keys below it, not an object
        return ObjectInfo(size=info.st_size, mtime=info.st_mtime, etag=f"{info.st_size:x}-{info.st_mtime_ns:x}")

    async def read(self, key: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"bad range [{start}, {stop})")
        path = self.path(key)
        try:
            file = await asyncio.to_thread(_open_regular, path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StorageError(f"local storage: no object {loggable_key(key)}") from None
        except OSError as exc:
            raise StorageError(f"local storage: cannot read {loggable_key(key)}: {_describe(exc)}") from None
        try:
            remaining = None if stop is None else stop - start
            await asyncio.to_thread(file.seek, start)
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                try:
                    chunk = await asyncio.to_thread(file.read, size)
                except OSError as exc:
                    raise StorageError(f"local storage: cannot read {loggable_key(key)}: {_describe(exc)}") from None
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            file.close()

    async def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            await asyncio.to_thread(self._delete_sync, path)
        except OSError as exc:
            raise StorageError(f"local storage: cannot delete {loggable_key(key)}: {_describe(exc)}") from None

    def _delete_sync(self, path: Path) -> None:
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        self._prune(path.parent)

    def _prune(self, directory: Path) -> None:
        """Remove `directory` and its parents below the root while empty, so the tree does not
        fill with the empty folders of deleted sets."""
        while directory != self.root and self.root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (or gone): stop here
            directory = directory.parent

    async def delete_prefix(self, prefix: str) -> int:
        folder = self.path(prefix)
        try:
            return await asyncio.to_thread(self._delete_tree_sync, folder)
        except OSError as exc:
            raise StorageError(f"local storage: cannot delete {loggable_key(prefix)}/: {_describe(exc)}") from None

    def _delete_tree_sync(self, folder: Path) -> int:
        """Every file below `folder`, then its folders. Links are removed, never followed (os.walk
        does not descend into a linked folder, and a link is unlinked like a file)."""
        if not folder.is_dir() or folder.is_symlink():
            return 0  # nothing there, or an object (a file is not a folder of keys)
        if self.root.resolve() not in folder.resolve().parents:
            raise OSError(0, "a folder on the way is a link out of the storage root")
        removed = 0
        for directory, folders, files in os.walk(folder, topdown=False, followlinks=False):
            base = Path(directory)
            for name in files:
                try:
                    (base / name).unlink()
                    removed += 1
                except FileNotFoundError:
                    continue  # deleted meanwhile
            for name in folders:
                child = base / name
                if child.is_symlink():
                    child.unlink()
                    continue
                try:
                    child.rmdir()
                except FileNotFoundError:
                    continue
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        self._prune(folder.parent)
        return removed

    async def cleanup_incomplete(self, older_than: float) -> int:
        try:
            return await asyncio.to_thread(self._cleanup_sync, time.time() - older_than)
        except OSError as exc:
            raise StorageError(f"local storage: cannot clean temporary files: {_describe(exc)}") from None

    def _cleanup_sync(self, cutoff: float) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.incomplete))
        except FileNotFoundError:
            return 0
        for entry in entries:
            # mtime, not creation time: a slow upload still being written is not "stale".
            try:
                if entry.name.endswith(TEMP_SUFFIX) and entry.stat().st_mtime <= cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue  # committed or aborted meanwhile
        return removed


def _open_regular(path: Path) -> BinaryIO:
    file = open(path, "rb")  # noqa: SIM115 - closed by the reading generator
    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        file.close()
        raise IsADirectoryError(path)
    return file
