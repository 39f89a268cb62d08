"""`GET|HEAD /b3lb/r/{nonce}`: a rendered recording, streamed from storage (spec 4.8, REC).

Browsers' video players seek with `Range` requests, so a single byte range is served as 206 (a
multi-range request gets the whole file, an unsatisfiable one 416). ETag and Last-Modified come from
the storage and answer conditional requests with 304. The file is read in the storage's chunks and
each chunk is flushed before the next is read: memory stays bounded, and a client that goes away
stops the read. Unknown, malformed, unpublished or deleted nonces are 404; a database outage is 503
(RuntimeHandler), and so is a storage that cannot be read: logged once when the storage fails and
once when it works again (storage_outage, shared with uploads), not per request. Keys are logged
through `loggable_key` (they carry the set's upload nonce).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import re
import uuid
from dataclasses import dataclass

from tornado.iostream import StreamClosedError

from b3lb.db import Q
from b3lb.endpoints import RuntimeHandler
from b3lb.recordings.storage import InvalidKey, ObjectInfo, StorageError, loggable_key, storage_outage

log = logging.getLogger("b3lb.recordings.playback")

CONTENT_TYPES = {"mp4": "video/mp4", "webm": "video/webm"}
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*$", re.IGNORECASE)
UNSATISFIABLE = "unsatisfiable"


@dataclass(frozen=True, slots=True)
class ByteRange:
    start: int
    stop: int  # exclusive


def parse_range(header: str, size: int) -> ByteRange | str | None:
    """One byte range of a `Range` header for a file of `size` bytes: a ByteRange, UNSATISFIABLE
    (416), or None to send the whole file (no header, another unit, several ranges, garbage)."""
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last n bytes
        length = int(last)
        return ByteRange(max(size - length, 0), size) if length > 0 else UNSATISFIABLE
    start = int(first)
    if start >= size or (last and int(last) < start):
        return UNSATISFIABLE
    return ByteRange(start, min(int(last) + 1, size) if last else size)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match: weak comparison against any listed tag, or `*`."""
    if header.strip() == "*":
        return True
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in header.split(","))


class PlaybackHandler(RuntimeHandler):
    """Serves `/b3lb/r/{nonce}` from `runtime.storage`."""

    gone = False  # the client closed the connection

    def compute_etag(self) -> None:
        return None  # the storage's ETag is set explicitly; Tornado must not hash bodies

    def on_connection_close(self) -> None:
        self.gone = True

    async def head(self, nonce: str) -> None:
        await self.get(nonce)

    async def get(self, nonce: str) -> None:
        found = await self._lookup(nonce)
        if found is None:
            return self._plain(404, "Not Found")
        key, _ = found
        try:
            info = await self.runtime.storage.stat(key)
        except InvalidKey:
            log.error("recording %s: a key no storage accepts", loggable_key(key))
            return self._plain(404, "Not Found")
        except StorageError as exc:
            storage_outage(self.runtime.storage).failed(exc)
            return self._unavailable()
        storage_outage(self.runtime.storage).succeeded()
        if info is None:
            log.warning("recording %s is listed but its file is missing", loggable_key(key))
            return self._plain(404, "Not Found")
        extension = key.rsplit(".", 1)[-1].lower()
        etag = f'"{info.etag}"'
        last_modified = email.utils.formatdate(int(info.mtime), usegmt=True)
        self.set_header("ETag", etag)
        self.set_header("Last-Modified", last_modified)
        self.set_header("Accept-Ranges", "bytes")
        if self._not_modified(etag, info):
            self.set_status(304)
            return self.finish()
        self.set_header("Content-Type", CONTENT_TYPES.get(extension, "application/octet-stream"))
        self.set_header("Content-Disposition", f'attachment; filename="video.{extension}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        wanted = self._range(info.size, (etag, last_modified))
        if wanted == UNSATISFIABLE:
            self.set_status(416)
            self.set_header("Content-Range", f"bytes */{info.size}")
            self.clear_header("Content-Type")
            self.clear_header("Content-Disposition")
            return self.finish()
        start, stop = (0, info.size) if wanted is None else (wanted.start, wanted.stop)  # type: ignore[union-attr]
        if wanted is not None:
            self.set_status(206)
            self.set_header("Content-Range", f"bytes {start}-{stop - 1}/{info.size}")
        self.set_header("Content-Length", str(stop - start))
        if self.request.method == "HEAD" or start == stop:
            return self.finish()
        await self._stream(key, start, stop)

    async def _lookup(self, nonce: str) -> tuple[str, int] | None:
        if len(nonce) > 64:
            return None
        try:
            parsed = uuid.UUID(nonce)
        except ValueError:
            return None
        row = await self.runtime.pool.fetchrow(Q.rec_playback, parsed)
        return None if row is None or not row["file"] else (row["file"], row["size"])

    def _not_modified(self, etag: str, info: ObjectInfo) -> bool:
        none_match = self.request.headers.get("If-None-Match")
        if none_match is not None:
            return _etag_matches(none_match, etag)
        since = self.request.headers.get("If-Modified-Since")
        if since:
            try:
                parsed = email.utils.parsedate_to_datetime(since)
            except (TypeError, ValueError, IndexError):
                return False
            return int(info.mtime) <= parsed.timestamp()
        return False

    def _range(self, size: int, validators: tuple[str, str]) -> ByteRange | str | None:
        header = self.request.headers.get("Range")
        if not header:
            return None
        if_range = self.request.headers.get("If-Range")
        if if_range and if_range.strip() not in validators:
            return None  # the client's copy is outdated: send the whole file
        return parse_range(header, size)

    async def _stream(self, key: str, start: int, stop: int) -> None:
        sent = 0
        try:
            reader = self.runtime.storage.read(key, start, stop)
            async with contextlib.aclosing(reader) as chunks:  # type: ignore[type-var]
                async for chunk in chunks:
                    if self.gone:
                        return
                    self.write(chunk)
                    await self.flush()
                    sent += len(chunk)
        except StreamClosedError:
            return  # the client left; leaving the block closed the read
        except StorageError as exc:
            storage_outage(self.runtime.storage).failed(exc)
            if not sent:
                for name in ("Content-Length", "Content-Range", "Content-Disposition"):
                    self.clear_header(name)
                return self._unavailable()
        if sent != stop - start:
            # a short body must not look complete: the client sees the connection drop
            log.warning("recording %s: %d of %d bytes read", loggable_key(key), sent, stop - start)
            self.request.connection.close()  # type: ignore[union-attr]
            return
        if not self.gone:
            self.finish()

    def _unavailable(self) -> None:
        self.set_header("Retry-After", "30")
        self._plain(503, "Service Unavailable")

    def _plain(self, status: int, text: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)
