"""`POST /b3lb/b/record/upload?nonce=`: a node uploads a published recording (spec 4.10).

The body is `multipart/form-data` with a part `file` (a tar of the node's published presentation
folder, up to `recordings.max_upload_bytes`) and a part `meta` (its metadata.xml). It is parsed as
it arrives (python-multipart's streaming parser): `file` goes straight to a storage writer, never
whole into memory; `meta` is buffered (at most META_MAX bytes). The limits of the body (size, time)
are the path's own: `body_limit()` for lazyquery.py, which answers 413.

Each upload writes its own object, `archive_key(nonce, upload_id)`, never the one the set's row
points to. When the body was complete and valid, the writer is committed (fsync, or the last S3
part) outside any transaction; then one short transaction locks the set's row, points it at the
new object, makes the set UPLOADED and queues its render job, and only then the node gets 204; the
archive the row pointed to before is deleted after that COMMIT. So the row and the stored archive
always agree: a failure before the COMMIT deletes the new object and leaves the set as it was (503),
one after it leaves the old object for deletion. What a crash leaves between the steps lies under
the set's folder, which retention deletes whole (`Storage.delete_prefix`). A client that
disconnects half-way leaves nothing: the uncommitted write is aborted.

Repeats: an upload whose archive has the sha256 already recorded for an UPLOADED or RENDERED set
(and still stored) answers 204 and changes nothing but deleting its own copy (the node retries when
a 204 got lost). A different archive replaces the stored one and (re)queues the render, also for a
RENDERED set (the node re-published it); metadata changed through updateRecordings stays. Two
concurrent uploads of one set are serialised by the row lock; the last one's archive stays.

The nonce is the set's upload credential: logs name the set by its public_id (the recordID the API
shows while it is processing) and storage keys through `loggable_key`, never the nonce.

A refusal (405, 400, 404, 503) is answered once the rest of the body has been read and dropped,
up to LINGER_BYTES of it (else at once, and Tornado closes the connection): closing a connection
with unread data makes the kernel reset it, which can destroy the answer before the node reads
it. A refusal known before the body gets `server.body_timeout` for that, not the upload's time;
a client that sent `Expect: 100-continue` has sent no body yet and is answered at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from types import TracebackType
from typing import Any

import orjson
from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from tornado.web import HTTPError, stream_request_body

from b3lb.config import Config
from b3lb.db import Q
from b3lb.endpoints import RuntimeHandler
from b3lb.httplimits import LINGER_BYTES
from b3lb.lazyquery import BodyLimit
from b3lb.outage import is_database_unavailable
from b3lb.recordings.metadata import MetadataError, RecordingMetadata, parse_metadata
from b3lb.recordings.metrics import UPLOAD_BYTES, UPLOADS
from b3lb.recordings.storage import (
    InvalidKey,
    StorageError,
    Stored,
    Writer,
    archive_key,
    loggable_key,
    storage_outage,
)
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.recordings.upload")

__all__ = ["UPLOAD_PATH", "UploadHandler", "body_limit", "storage_outage"]

UPLOAD_PATH = "/b3lb/b/record/upload"
SAVE_FAILED = "Error during file save"  # spec 4.10's body for a storage failure
DB_UNAVAILABLE = "Service Unavailable: the database is unavailable"
NOT_FOUND = "Not Found: no recording set with this nonce"
_RESULTS = {400: "bad_request", 403: "forbidden", 404: "not_found"}
META_MAX = 1024 * 1024  # metadata.xml is a few KB
OTHER_MAX = 1024 * 1024  # all other parts together (ignored, but read)
MAX_PARTS = 16
MAX_BOUNDARY = 200  # RFC 2046 allows 70; curl and browsers use about 40


def body_limit(config: Config) -> BodyLimit:
    """The upload path's body limits (B3lbApplication.body_limit_for hands them to lazyquery.py)."""
    return BodyLimit(config.recordings.max_upload_bytes, config.recordings.upload_timeout)


class UploadFormError(ValueError):
    """The body breaks a rule of this endpoint; the message says which (400)."""


def form_boundary(content_type: str) -> bytes:
    """The boundary of a `multipart/form-data` Content-Type; UploadFormError for anything else."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if kind != b"multipart/form-data" or not 0 < len(boundary) <= MAX_BOUNDARY or any(
            byte < 0x20 or byte > 0x7E for byte in boundary):
        raise UploadFormError("the body must be multipart/form-data with a boundary")
    return boundary


class UploadForm:
    """The streaming parser's callbacks (synchronous): bytes of part `file` are collected for the
    handler to write after each chunk, `meta` is buffered, other parts are counted and dropped."""

    def __init__(self, boundary: bytes) -> None:
        self._parser = MultipartParser(boundary, callbacks={
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_end": self._end,
        })
        self._pending: list[bytes] = []  # file bytes not yet written
        self.meta = bytearray()
        self.file_bytes = 0
        self.seen: set[str] = set()  # names of the parts `file` and `meta` met so far
        self.other_bytes = 0
        self.parts = 0
        self.ended = False  # the closing boundary arrived
        self._kind = ""  # "file", "meta" or "" (another part) while in a part's data
        self._name: bytes | None = None
        self._field = bytearray()
        self._value = bytearray()

    def feed(self, chunk: bytes) -> None:
        """Raises UploadFormError or python-multipart's FormParserError for a bad body."""
        self._parser.write(chunk)

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def take(self) -> bytes:
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        return data

    def problem(self) -> str | None:
        """Why the complete body cannot be stored, None when it can."""
        if not self.ended:
            return "the multipart body ends before its closing boundary"
        if not self.file_bytes:
            return "part file missing or empty"
        if "meta" not in self.seen:
            return "part meta missing"
        return None

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise UploadFormError(f"more than {MAX_PARTS} parts")
        self._kind, self._name = "", None

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]  # the parser bounds a header's size and count

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self._name = parse_options_header(self._value.decode("latin-1"))[1].get(b"name")
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        if self._name in (b"file", b"meta"):
            self._kind = self._name.decode()
            if self._kind in self.seen:
                raise UploadFormError(f"part {self._kind} given twice")
            self.seen.add(self._kind)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._kind == "file":
            self._pending.append(data[start:end])
            self.file_bytes += end - start
        elif self._kind == "meta":
            if len(self.meta) + end - start > META_MAX:
                raise UploadFormError(f"part meta over {META_MAX} bytes")
            self.meta += data[start:end]
        else:
            self.other_bytes += end - start
            if self.other_bytes > OTHER_MAX:
                raise UploadFormError(f"parts other than file and meta over {OTHER_MAX} bytes")

    def _end(self) -> None:
        self.ended = True


class _Gone(Exception):
    """The set was deleted (or began deleting) while its archive arrived."""


@stream_request_body
class UploadHandler(RuntimeHandler):
    def initialize(self, runtime: Runtime) -> None:  # type: ignore[override]
        super().initialize(runtime)
        self.nonce = ""
        self.public_id = "-"  # the set as logs name it (never by its nonce)
        self.upload_id = uuid.uuid4().hex  # this upload's own archive key (module docstring)
        self.form: UploadForm | None = None
        self.writer: Writer | None = None
        self.lock = asyncio.Lock()  # one writer operation at a time (a write vs. a disconnect's abort)
        self.refusal: tuple[int, str] | None = None  # answered once the body is read (module docstring)
        self.received = 0
        self.discarded = 0
        self.body_done = False
        self.abandoned = False
        self.committing = False  # the upload's transaction is being committed (_store)

    # -- before the body ------------------------------------------------------------------------

    async def prepare(self) -> None:
        if self.request.method != "POST":
            return self._refuse_early(405, "Method Not Allowed", "bad_request")
        raw = self.get_query_argument("nonce", "")
        if not raw:
            return self._refuse_early(400, "Bad Request: nonce missing", "bad_request")
        try:  # spec 4.10: 400 only when missing; a nonce that is no UUID names no set
            self.nonce = str(uuid.UUID(raw))
        except ValueError:
            return self._refuse_early(404, NOT_FOUND, "not_found")
        try:
            found = await self.runtime.pool.fetchval(Q.upload_find_set, self.nonce)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            self.runtime.database.failed(exc)
            return self._refuse_early(503, DB_UNAVAILABLE, "unavailable")
        self.runtime.database.succeeded()
        if found is None:
            return self._refuse_early(404, NOT_FOUND, "not_found")
        self.public_id = found
        try:
            self.form = UploadForm(form_boundary(self.request.headers.get("Content-Type", "")))
        except (UploadFormError, FormParserError) as exc:
            return self._refuse_early(400, f"Bad Request: {exc}", "bad_request")
        return None

    def _refuse_early(self, status: int, text: str, result: str) -> None:
        """A refusal before the body: answered now when no body is on its way, else once the
        body is read and dropped (module docstring), within the server's usual body time."""
        self._refuse(status, text, result)
        headers = self.request.headers
        expects_body = "Transfer-Encoding" in headers or headers.get("Content-Length", "0").strip() not in ("0", "")
        if not expects_body or headers.get("Expect", "").lower() == "100-continue":
            self._answer(status, text)
        else:  # Tornado takes the body timeout when it starts reading the body: after prepare()
            self.request.connection.set_body_timeout(  # type: ignore[attr-defined]
                self.runtime.config.server.body_timeout)

    def _refuse(self, status: int, text: str, result: str) -> None:
        UPLOADS.labels(result).inc()
        self.refusal = (status, text)

    def _answer(self, status: int, text: str) -> None:
        if self._finished:
            return
        self.set_status(status)
        if status == 405:
            self.set_header("Allow", "POST")
        if status == 503:
            self.set_header("Retry-After", "30")
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(text)

    # -- the body -------------------------------------------------------------------------------

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.received += len(chunk)
        if self.refusal is not None:
            self.discarded += len(chunk)
            if self.discarded > LINGER_BYTES:  # enough read for nothing: answer, Tornado closes
                self._answer(*self.refusal)
            return None
        assert self.form is not None
        try:
            self.form.feed(chunk)
        except (UploadFormError, FormParserError) as exc:
            self._refuse(400, f"Bad Request: {exc}", "bad_request")
            return self._drop_writer()
        if self.form.pending:
            return self._write_pending()
        return None

    async def _write_pending(self) -> None:
        assert self.form is not None
        async with self.lock:
            if self.refusal is not None or self.abandoned:
                return
            data = self.form.take()
            try:
                if self.writer is None:
                    self.writer = await self.runtime.storage.open_write(archive_key(self.nonce, self.upload_id))
                await self.writer.write(data)
            except (StorageError, OSError) as exc:
                storage_outage(self.runtime.storage).failed(exc)
                self._refuse(503, SAVE_FAILED, "storage_error")
                await self._abort_writer()

    async def _drop_writer(self) -> None:
        async with self.lock:
            await self._abort_writer()

    async def _abort_writer(self) -> None:
        """Drop what was written (the lock is held). Never raises: a temporary file or multipart
        upload that cannot be removed now is removed by housekeeping (Storage.cleanup_incomplete)."""
        writer, self.writer = self.writer, None
        if writer is None:
            return
        try:
            await writer.abort()
        except Exception as exc:  # noqa: BLE001 - see docstring
            log.warning("recording upload of set %s: could not drop the partial archive: %s", self.public_id, exc)

    def on_connection_close(self) -> None:
        super().on_connection_close()  # the body will not end: _execute returns without post()
        if self.body_done or self.abandoned:
            return  # a complete body is stored even if the node stopped waiting for the answer
        self.abandoned = True
        if self.refusal is None:
            UPLOADS.labels("aborted").inc()
            log.info("recording upload of set %s broken off after %d bytes: nothing stored", self.public_id,
                     self.received)
        self.runtime.add_task("recording upload abort", self._drop_writer())

    # -- after the body -------------------------------------------------------------------------

    async def post(self) -> None:
        self.body_done = True
        if self.refusal is not None:
            await self._drop_writer()
            return self._answer(*self.refusal)
        try:
            await self._complete()
        finally:
            if self.writer is not None:  # not committed: an answer other than 204, or a bug
                await self._drop_writer()

    async def _complete(self) -> None:
        form = self.form
        assert form is not None
        problem = form.problem()
        if problem is not None:
            return await self._reject(400, f"Bad Request: {problem}")
        try:
            metadata = parse_metadata(bytes(form.meta))
        except MetadataError as exc:
            return await self._reject(400, f"Bad Request: {exc}")
        if metadata.is_breakout:
            return await self._reject(403, "Forbidden: breakout recordings are not supported")
        try:
            stored, changed = await self._store(metadata)
        except _Gone:
            return await self._reject(404, NOT_FOUND)
        except StorageError as exc:
            storage_outage(self.runtime.storage).failed(exc)
            UPLOADS.labels("storage_error").inc()
            return self._answer(503, SAVE_FAILED)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            self.runtime.database.failed(exc)
            UPLOADS.labels("unavailable").inc()
            return self._answer(503, DB_UNAVAILABLE)
        self.runtime.database.succeeded()
        storage_outage(self.runtime.storage).succeeded()
        if changed:
            UPLOADS.labels("stored").inc()
            UPLOAD_BYTES.inc(stored.size)
            log.info("recording upload of set %s stored: %d bytes, render queued", self.public_id, stored.size)
        else:
            UPLOADS.labels("repeated").inc()
            log.info("recording upload of set %s repeated (same archive, %d bytes): nothing changed",
                     self.public_id, stored.size)
        self.set_status(204)
        self.finish()

    async def _reject(self, status: int, text: str) -> None:
        UPLOADS.labels(_RESULTS[status]).inc()
        await self._drop_writer()
        self._answer(status, text)

    async def _store(self, metadata: RecordingMetadata) -> tuple[Stored, bool]:
        """Commit this upload's archive, then record it in the set's row (module docstring);
        whether anything changed. Raises _Gone, StorageError or a database error, each time with
        the new object deleted unless the row may point to it."""
        writer, self.writer = self.writer, None
        assert writer is not None  # form.problem() saw file data
        stored = await writer.commit()  # no transaction open: fsync or the last part may take long
        self.committing = False
        try:
            changed, previous = await self._record(stored, metadata)
        except BaseException:
            if self.committing:  # COMMIT sent, its outcome unknown: the row may point here (kept for retention)
                log.warning("recording upload of set %s: outcome unknown, archive %s kept", self.public_id,
                            loggable_key(stored.key))
            else:
                await self._discard(stored.key)
            raise
        # After the COMMIT: the object the row no longer points to (the old archive, or a repeat's copy).
        await self._discard(previous if changed else stored.key)
        return stored, changed

    async def _record(self, stored: Stored, metadata: RecordingMetadata) -> tuple[bool, str]:
        """One transaction, the set's row locked: (changed, the archive key the row held before).
        A repeat (same sha256, the recorded archive still there) changes nothing."""
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(Q.upload_lock_set, self.nonce)
            if row is None:
                raise _Gone
            previous: str = row["archive_key"]
            if (row["status"] in ("UPLOADED", "RENDERED") and previous and row["archive_sha256"] == stored.sha256
                    and await self._exists(previous)):
                return False, previous
            await conn.fetchval(
                Q.upload_store_set, self.nonce, stored.key, stored.sha256, stored.size, metadata.internal_id,
                metadata.meeting_name, metadata.start_ms, metadata.end_ms, metadata.participants,
                orjson.dumps(metadata.meta).decode(),
            )
            self.committing = True  # leaving the block sends COMMIT
        return True, previous

    async def _exists(self, key: str) -> bool:
        """Whether the archive a row names is stored (a lost one is replaced like a new upload)."""
        try:
            return await self.runtime.storage.exists(key)
        except InvalidKey:
            return False

    async def _discard(self, key: str) -> None:
        """Delete an object no row points to. Never raises: what stays lies under the set's folder,
        which retention deletes with the set."""
        if not key:
            return
        try:
            await self.runtime.storage.delete(key)
        except InvalidKey:
            return  # no object can exist under a key both backends refuse
        except StorageError as exc:
            log.warning("recording upload of set %s: %s not deleted (retention will): %s", self.public_id,
                        loggable_key(key), exc)

    # Every other method is refused in prepare(); here the refusal is answered after the body.
    async def get(self, *args: Any) -> None:
        await self.post()

    head = delete = patch = put = options = get

    # -- logs -----------------------------------------------------------------------------------

    def _request_summary(self) -> str:
        # Without the query: the nonce is the set's upload credential.
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def log_exception(
        self, typ: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if value is None or isinstance(value, HTTPError) or is_database_unavailable(value):
            return super().log_exception(typ, value, tb)
        # Tornado's own line would print the request, query (the nonce) and all.
        log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        if status_code == 405:  # e.g. a method Tornado does not know, refused before prepare()
            self.set_header("Allow", "POST")
        super().write_error(status_code, **kwargs)
