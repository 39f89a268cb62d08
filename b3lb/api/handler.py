"""The BBB API front door: method check, tenant resolution, checksum, then the call's function.

Order as B3LB: 405 for a wrong method first, then tenant + checksum, then the call. Every
answer is a BBB-style document; nothing a client sends produces a traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from tornado.web import RequestHandler

from b3lb import checksum
from b3lb.api import calls, create, getmeetings, join
from b3lb.api.params import Params, QueryText
from b3lb.api.xml import CHECKSUM_ERROR, UNSUPPORTED, VERSION, ApiResult
from b3lb.metrics import REQUEST_SECONDS
from b3lb.runtime import Runtime
from b3lb.tenancy import SecretContext

log = logging.getLogger("b3lb.api")

FORM_TYPE = "application/x-www-form-urlencoded"


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
    "getRecordings": (GET_POST, calls.get_recordings),
    "publishRecordings": (GET_POST, calls.recordings_not_found),
    "deleteRecordings": (GET_POST, calls.recordings_not_found),
    "updateRecordings": (GET_POST, calls.recordings_not_found),
    "getRecordingTextTracks": (GET_POST, calls.get_recording_text_tracks),
    "putRecordingTextTrack": (("POST",), calls.put_recording_text_track),
}

# Histogram children per call, resolved once: labels() costs a lock and a dict lookup per call.
_LATENCY = {name: REQUEST_SECONDS.labels(name) for name in (*CALLS, "other")}


class BBBApiHandler(RequestHandler):
    """`/bigbluebutton/api/{call}` (tenant from Host) and `/b3lb/t/{slug}[-NNN]/bbb/api/{call}`."""

    runtime: Runtime

    def initialize(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def compute_etag(self) -> None:
        return None

    async def get(self, call: str = "", slug: str | None = None, sub: str | None = None) -> None:
        await self._handle(call or "", slug, sub)

    async def post(self, call: str = "", slug: str | None = None, sub: str | None = None) -> None:
        await self._handle(call or "", slug, sub)

    async def head(self, call: str = "", slug: str | None = None, sub: str | None = None) -> None:
        await self._handle(call or "", slug, sub)

    def _not_allowed(self, allowed: tuple[str, ...]) -> None:
        self.set_status(405)
        self.set_header("Allow", ", ".join(allowed))
        self.finish()

    def _other_method(self, call: str | None) -> None:
        allowed = ("GET", "POST", "HEAD") if not call else CALLS[call][0] if call in CALLS else GET_POST
        self._not_allowed(allowed)

    def put(self, call: str | None = None, **_: str | None) -> None:
        self._other_method(call)

    def patch(self, call: str | None = None, **_: str | None) -> None:
        self._other_method(call)

    def delete(self, call: str | None = None, **_: str | None) -> None:
        self._other_method(call)

    def options(self, call: str | None = None, **_: str | None) -> None:
        self._other_method(call)

    async def _handle(self, call: str, slug: str | None, sub: str | None) -> None:
        started = time.perf_counter()
        method = self.request.method or "GET"
        if call == "":
            allowed: tuple[str, ...] = ("GET", "POST", "HEAD")
        else:
            allowed = CALLS[call][0] if call in CALLS else GET_POST
        if method not in allowed:
            return self._not_allowed(allowed)
        ctx = self.runtime.secret_for(self.request, slug, sub)
        if ctx is None:
            return self._auth_failed()
        if call == "":  # the version document needs no checksum, but a known tenant
            return self._send(VERSION)
        request = self._authenticate(call, method, ctx)
        if request is None:
            return self._auth_failed()
        entry = CALLS.get(call)
        result = UNSUPPORTED if entry is None else await entry[1](self.runtime, request)
        self._send(result)
        elapsed = time.perf_counter() - started
        (_LATENCY.get(call) or _LATENCY["other"]).observe(elapsed)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s %s %.2fms", ctx.label, call, result.status, 1000 * elapsed)

    def _authenticate(self, call: str, method: str, ctx: SecretContext) -> ApiRequest | None:
        query = self.request.query
        body = self.request.body or b""
        content_type = self.request.headers.get("Content-Type", "")
        allowed = self.runtime.allowed_algorithms
        parsed = QueryText(_utf8_text(query))
        supplied = parsed.raw("checksum")
        if supplied:
            payload = checksum.strip_checksum(query, supplied)
            if checksum.verify_payload(call, payload, supplied, ctx.secrets, allowed, parsed.get("checksumHash")):
                reusable = payload.isascii() and "checksum=" not in payload
                return ApiRequest(call, method, parsed, body, content_type, ctx,
                                  raw_query=payload if reusable else None)
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

    def _auth_failed(self) -> None:
        if self.runtime.config.api.legacy_401_on_auth_failure:
            self.set_status(401)
            self.set_header("Content-Type", "text/html; charset=utf-8")
            self.finish("Unauthorized")
            return
        self._send(CHECKSUM_ERROR)

    def _send(self, result: ApiResult) -> None:
        self.set_status(result.status)
        self.set_header("Content-Type", result.content_type)
        self.set_header("Cache-Control", "no-cache")
        for name, value in result.headers.items():
            self.set_header(name, value)
        if self.request.method == "HEAD":
            self.finish()
        else:
            self.finish(result.body)

    def write_error(self, status_code: int, **kwargs: object) -> None:
        if status_code == 405:  # a method Tornado itself refused (e.g. BREW)
            self.set_header("Allow", ", ".join(GET_POST))
            self.finish()
            return
        # Unexpected failures still answer in BBB's language; the traceback goes to the log only.
        self.set_header("Content-Type", "text/xml;charset=utf-8")
        self.finish(
            b"<response><returncode>FAILED</returncode><messageKey>internalError</messageKey>"
            b"<message>The load balancer could not handle this request.</message></response>"
        )


def _utf8_text(latin1_text: str) -> str:
    """Undo Tornado's latin-1 decoding of the request line so raw UTF-8 bytes decode right."""
    if latin1_text.isascii():
        return latin1_text
    return latin1_text.encode("latin-1").decode("utf-8", errors="replace")
