"""The BBB API front door: method check, tenant resolution, checksum, then the call's function.

Order as B3LB: 405 for a wrong method first, then tenant + checksum, then the call. Every
answer is a BBB-style document; nothing a client sends produces a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from email.utils import formatdate
from http.client import responses
from typing import Any

from tornado.httputil import (
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerRequest,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.iostream import StreamClosedError

from b3lb import checksum
from b3lb.api import calls, create, getmeetings, join
from b3lb.api.params import Params, QueryText
from b3lb.api.xml import CHECKSUM_ERROR, UNSUPPORTED, VERSION, ApiResult
from b3lb.lazyquery import FastRouter, path_group
from b3lb.metrics import REQUEST_SECONDS
from b3lb.outage import is_database_unavailable
from b3lb.recordings import api as recordings
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

log = logging.getLogger("b3lb.api")

FORM_TYPE = "application/x-www-form-urlencoded"
HTML_TYPE = "text/html; charset=UTF-8"
UNAUTHORIZED = ApiResult(b"Unauthorized", status=401, content_type="text/html; charset=utf-8")
# Unexpected failures still answer in BBB's language; the traceback goes to the log only.
INTERNAL_ERROR = ApiResult(
    b"<response><returncode>FAILED</returncode><messageKey>internalError</messageKey>"
    b"<message>The load balancer could not handle this request.</message></response>",
    status=500,
)
# The database is down or restarting: a clean BBB failure (HTTP 200, spec 0.3); the outage is
# logged once by Runtime.database, not per request. Joins and other in-memory calls still work.
DATABASE_UNAVAILABLE = ApiResult(
    b"<response><returncode>FAILED</returncode><messageKey>databaseUnavailable</messageKey>"
    b"<message>The load balancer's database is unavailable. Please try again shortly.</message></response>"
)


class ApiRequest:
    """An authenticated call. Parameters are decoded on demand: a join reads two of them."""

    __slots__ = ("call", "method", "query", "body", "content_type", "ctx", "params_from_body", "raw_query")

    def __init__(
        self,
        call: str,
        method: str,
        query: QueryText,
        body: bytes,
        content_type: str,
        ctx: SecretContext,
        *,
        params_from_body: bool = False,
        raw_query: str | None = None,
    ) -> None:
        self.call, self.method, self.query, self.body = call, method, query, body
        self.content_type, self.ctx = content_type, ctx
        # True when the parameters came from a form body: then the body is not forwarded as a body.
        self.params_from_body = params_from_body
        # The URL query as sent minus its checksum pair: forwarded as is when nothing was rewritten,
        # which saves re-encoding on the join path. None when it cannot be reused safely.
        self.raw_query = raw_query

    @property
    def params(self) -> Params:
        return self.query.params()

    def get(self, key: str) -> str | None:
        return self.query.get(key)


CallFunction = Callable[[Runtime, ApiRequest], Awaitable[ApiResult]]

GET_POST = ("GET", "POST")
# call name -> (allowed methods, implementation)
CALLS: dict[str, tuple[tuple[str, ...], CallFunction]] = {
    "create": (GET_POST, create.create),
    "join": (("GET",), join.join),
    "end": (GET_POST, calls.end),
    "isMeetingRunning": (GET_POST, calls.is_meeting_running),
    "getMeetingInfo": (GET_POST, calls.get_meeting_info),
    "getMeetings": (GET_POST, getmeetings.get_meetings),
    "insertDocument": (("POST",), calls.insert_document),
    "sendChatMessage": (GET_POST, calls.send_chat_message),
    "setConfigXML": (GET_POST, calls.set_config_xml),
    "getRecordings": (GET_POST, recordings.get_recordings),
    "publishRecordings": (GET_POST, recordings.publish_recordings),
    "deleteRecordings": (GET_POST, recordings.delete_recordings),
    "updateRecordings": (GET_POST, recordings.update_recordings),
    "getRecordingTextTracks": (GET_POST, recordings.get_recording_text_tracks),
    "putRecordingTextTrack": (("POST",), recordings.put_recording_text_track),
}

# Histogram children per call, resolved once: labels() costs a lock and a dict lookup per call.
_LATENCY = {name: REQUEST_SECONDS.labels(name) for name in (*CALLS, "other")}


# Calls that can often answer from memory: their first step, run as soon as the request is read,
# returns the answer, or None when the call must await (then the call itself is awaited).
IMMEDIATE: dict[CallFunction, Callable[[Runtime, ApiRequest], ApiResult | None]] = {join.join: join.join_now}


class ApiRouter(FastRouter):
    """The route table's target for the BBB API paths: each request becomes one ApiExchange."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> ApiExchange:
        # Tornado hands over the matched groups undecoded; the patterns admit ASCII only
        found = {k: v.decode("ascii") for k, v in (kwargs.get("path_kwargs") or {}).items() if v is not None}
        return ApiExchange(self.runtime, request, found.get("call", ""), found.get("slug"), found.get("sub"))

    def exchange(self, request: HTTPServerRequest, match: re.Match[str]) -> ApiExchange:
        """find_handler's delegate, from the path match of lazyquery.py's fast route."""
        groups = match.groupdict()
        return ApiExchange(self.runtime, request, path_group(groups.get("call")) or "", path_group(groups.get("slug")),
                           path_group(groups.get("sub")))


class ApiExchange(HTTPMessageDelegate):
    """One BBB API call, answered on the HTTP connection directly.

    Tornado's RequestHandler costs about as much per request as everything b3lb does for a join
    (handler object, default headers, output transforms, flush machinery); the API needs none of
    it: every answer is one complete body with a few headers.

    A request without a body is complete with its head: the call runs in `headers_received`,
    whose awaitable Tornado awaits in the connection's own task (no task of ours, no close
    watch), and `finish`, which Tornado calls right after, writes the answer. A call that needs
    no await (a join of a meeting in memory, every refusal) returns nothing to await. A request
    with a body is dispatched in `finish`, in a task when it must await (not in the last
    `data_received`: Tornado reads a body under server.body_timeout, which a call must not count against).
    """

    __slots__ = ("runtime", "request", "call", "slug", "sub", "chunks", "pending", "started", "result")

    def __init__(self, runtime: Runtime, request: HTTPServerRequest, call: str, slug: str | None, sub: str | None):
        self.runtime, self.request = runtime, request
        self.call, self.slug, self.sub = call, slug, sub
        self.chunks: list[bytes] | None = None
        # The call and its authenticated request, when it must await.
        self.pending: tuple[CallFunction, ApiRequest] | None = None
        self.started = 0.0  # perf_counter when the call was dispatched; 0.0 before
        self.result: ApiResult | None = None

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        has_body = getattr(self.request, "has_body", None)  # lazyquery.py's fast route looked already
        if has_body is None:
            has_body = "Content-Length" in headers or "Transfer-Encoding" in headers
        if has_body:
            return None  # the body comes first: dispatched in finish
        return self._begin()

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.chunks is None:
            self.chunks = []
        self.chunks.append(chunk)  # the connection enforces server.max_body_size
        return None

    def finish(self) -> None:
        if not self.started:  # a request with a body
            if self.chunks:
                self.request.body = b"".join(self.chunks)
            call = self._begin()
            if call is not None:
                task = asyncio.get_running_loop().create_task(self._answer_later(call))
                _ANSWERING.add(task)  # a strong reference until it is done (the loop keeps only weak ones)
                task.add_done_callback(_ANSWERING.discard)
                return
        assert self.result is not None
        self._done(self.result)

    def on_connection_close(self) -> None:
        pass  # the client left: the call still completes (a create must not be half done)

    def _begin(self) -> Coroutine[Any, Any, None] | None:
        """Dispatch the complete request: None when the answer is in `result` already, else the
        call to await (which puts it there)."""
        self.started = time.perf_counter()
        try:
            self.result = self._dispatch()
        except Exception as exc:  # nothing a client sends may produce a traceback on the wire
            self.result = self._failure(exc)
        return None if self.result is not None else self._call()

    async def _call(self) -> None:
        assert self.pending is not None
        function, api_request = self.pending
        try:
            self.result = await function(self.runtime, api_request)
        except Exception as exc:  # nothing a client sends may produce a traceback on the wire
            self.result = self._failure(exc)

    async def _answer_later(self, call: Coroutine[Any, Any, None]) -> None:
        await call
        assert self.result is not None
        self._done(self.result)

    def _done(self, result: ApiResult) -> None:
        self._send(result)
        elapsed = time.perf_counter() - self.started
        (_LATENCY.get(self.call) or _LATENCY["other"]).observe(elapsed)
        if result.status >= 400:
            _log_failure(self.request, result.status, elapsed)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %.2fms", self.call, result.status, 1000 * elapsed)

    def _failure(self, exc: Exception) -> ApiResult:
        """The answer to a call that raised: an outage is expected and counted, anything else is a bug."""
        if is_database_unavailable(exc):
            self.runtime.database.failed(exc)
            return DATABASE_UNAVAILABLE
        log.error("%s %s failed", self.request.method, self.call, exc_info=exc)
        return INTERNAL_ERROR

    def _dispatch(self) -> ApiResult | None:
        """The answer when it needs no await; else None, with the call to await in `pending`."""
        call, request = self.call, self.request
        method = request.method or "GET"
        allowed = ("GET", "POST", "HEAD") if call == "" else CALLS[call][0] if call in CALLS else GET_POST
        if method not in allowed:
            return ApiResult(b"", status=405, content_type=HTML_TYPE, headers={"Allow": ", ".join(allowed)})
        if call == "":  # like BBB: the version document needs neither tenant nor checksum (health checks)
            return VERSION
        ctx = self.runtime.secret_for(request, self.slug, self.sub)
        if ctx is None:
            return self._auth_failed()
        api_request = authenticate(request, call, method, ctx, self.runtime.allowed_algorithms)
        if api_request is None:
            return self._auth_failed()
        entry = CALLS.get(call)
        if entry is None:
            return UNSUPPORTED
        immediate = IMMEDIATE.get(entry[1])
        if immediate is not None:
            result = immediate(self.runtime, api_request)
            if result is not None:
                return result
        self.pending = (entry[1], api_request)
        return None

    def _auth_failed(self) -> ApiResult:
        if self.runtime.config.api.legacy_401_on_auth_failure:
            return UNAUTHORIZED
        return CHECKSUM_ERROR

    def _send(self, result: ApiResult) -> None:
        try:
            self._write(result)
        except StreamClosedError:
            pass  # the client left before its answer
        except Exception:  # e.g. a header value that cannot be encoded: still answer, once
            log.exception("%s %s: cannot send the answer", self.request.method, self.call)
            try:
                self._write(INTERNAL_ERROR)
            except Exception:  # the connection is unusable: close it rather than leave it hanging
                self.request.connection.close()  # type: ignore[union-attr]

    def _write(self, result: ApiResult) -> None:
        """Status line and headers as Tornado's write_headers makes them (names as given: ours are
        canonical), formatted in one go: its generic path cost more than a join's own work. The body
        follows in the same write."""
        request = self.request
        connection = request.connection
        assert connection is not None
        status = result.status
        extra = "".join([f"{name}: {value}\r\n" for name, value in result.headers.items()]) if result.headers else ""
        close = _connection_header(request)
        head = (
            f"{_STATUS_LINES.get(status) or _status_line(status)}Date: {_http_date()}\r\nContent-Type: "
            f"{result.content_type}\r\nCache-Control: no-cache\r\n{extra}Content-Length: {len(result.body)}\r\n"
            f"{close}\r\n"
        )
        # A header value (from a node or a client) with a line break would split the head: refused,
        # as Tornado does. Every line we made ends in one CRLF, and only those may be there.
        lines = 6 + len(result.headers) + (1 if close else 0)
        if head.count("\n") != lines or head.count("\r") != lines:
            raise ValueError(f"illegal characters (CR or LF) in a header of the {status} answer")
        data = head.encode("latin-1")
        connection.write(data + result.body if request.method != "HEAD" else data)
        connection.finish()


def authenticate(
    request: HTTPServerRequest, call: str, method: str, ctx: SecretContext, allowed: frozenset[str]
) -> ApiRequest | None:
    """The call's parameters when its checksum holds (URL query, or a form body: spec 1.8)."""
    query = request.query
    body = request.body or b""
    headers = request.headers
    content_type = headers["Content-Type"] if "Content-Type" in headers else ""  # get() raises inside when absent
    parsed = QueryText(_utf8_text(query))
    supplied = parsed.raw("checksum")
    if supplied:
        payload = checksum.strip_checksum(query, supplied)
        # Only a query naming it (plainly or %-escaped) can carry checksumHash: most skip the search.
        hash_name = parsed.get("checksumHash") if "checksumHash" in query or "%" in query else None
        if checksum.verify_payload(call, payload, supplied, ctx.secrets, allowed, hash_name):
            reusable = payload.isascii() and "checksum=" not in payload
            return ApiRequest(call, method, parsed, body, content_type, ctx, raw_query=payload if reusable else None)
    # Fallback for clients that put every parameter into a form body (spec 1.8): the
    # checksum is over the empty string or over the body without its checksum pair.
    if query or method != "POST" or not content_type.lower().startswith(FORM_TYPE):
        return None
    text = body.decode("latin-1")
    parsed = QueryText(_utf8_text(text))
    supplied = parsed.raw("checksum")
    if not supplied:
        return None
    hash_name = parsed.get("checksumHash")
    if checksum.verify_payload(call, "", supplied, ctx.secrets, allowed, hash_name) or checksum.verify_payload(
        call, checksum.strip_checksum(text, supplied), supplied, ctx.secrets, allowed, hash_name
    ):
        return ApiRequest(call, method, parsed, b"", "", ctx, params_from_body=True)
    return None


_ANSWERING: set[asyncio.Task[None]] = set()
_DATE: list[Any] = [0, ""]  # the second it was formatted for, and the header value
_ACCESS_LOG = logging.getLogger("tornado.access")  # where Tornado logs the failures of its handlers


def _status_line(status: int) -> str:
    return f"HTTP/1.1 {status} {responses.get(status, 'Unknown')}\r\n"


_STATUS_LINES = {status: _status_line(status) for status in (200, 302, 400, 401, 404, 405, 500, 503)}


def _connection_header(request: HTTPServerRequest) -> str:
    """What Tornado's write_headers adds: `Connection: close` to an HTTP/1.1 client whose
    connection closes after this answer, `Connection: Keep-Alive` to an HTTP/1.0 client asking
    for it; usually nothing."""
    headers = request.headers
    value = headers["Connection"].lower() if "Connection" in headers else ""
    if request.version == "HTTP/1.1":
        closing = value == "close" or getattr(request.connection, "no_keep_alive", False)
        return "Connection: close\r\n" if closing else ""
    return "Connection: Keep-Alive\r\n" if request.version == "HTTP/1.0" and value == "keep-alive" else ""


def _http_date() -> str:
    """The Date header, formatted once a second rather than once a request."""
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True)
    return _DATE[1]


def _log_failure(request: HTTPServerRequest, status: int, elapsed: float) -> None:
    level = logging.ERROR if status >= 500 else logging.WARNING
    if _ACCESS_LOG.isEnabledFor(level):
        _ACCESS_LOG.log(level, "%d %s %s (%s) %.2fms", status, request.method, request.path,
                        request.remote_ip, 1000 * elapsed)


def _utf8_text(latin1_text: str) -> str:
    """Undo Tornado's latin-1 decoding of the request line so raw UTF-8 bytes decode right."""
    if latin1_text.isascii():
        return latin1_text
    return latin1_text.encode("latin-1").decode("utf-8", errors="replace")
