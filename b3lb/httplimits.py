"""Request size limits and timeouts of b3lb's HTTP server, answered in HTTP instead of a reset.

Tornado's HTTP/1 server drops the connection when a request head outgrows `max_header_size`
(the client sees a reset, no answer), answers an over-long body with a bare 400, reads a body
for as long as the client likes, and times the idle wait and the head as one. b3lb keeps
Tornado's parser and puts a small wait in front of it, per request on a connection:

- idle: no byte of a request within `server.idle_timeout` seconds: the connection is closed
  quietly (a kept-alive connection nobody uses);
- head: the request line and headers must be complete within `server.header_timeout` seconds of
  their first byte (else closed: slowloris) and within `server.max_header_size` bytes, else
  414 URI Too Long (the request line alone is too long) or 431 Request Header Fields Too Large.
  Only then does Tornado read the head, from the buffer, where it can no longer overflow;
- body: `server.body_timeout` bounds the reading of a body (Tornado's own body timeout), and the
  app-level delegate (`lazyquery.py`) answers 413 Content Too Large for a body over
  `server.max_body_size`: from Content-Length before the body is read, or while a chunked body
  arrives.

A refusal is a short plain-text answer with `Connection: close`; then b3lb shuts its sending
side and discards what the client still sends for a moment before closing (a "lingering
close"): closing a socket with unread data makes the kernel send a reset, which can destroy the
answer before the client has read it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.httputil import HTTPServerConnectionDelegate
from tornado.iostream import IOStream, StreamClosedError, UnsatisfiableReadError
from tornado.log import gen_log

from b3lb.config import ServerConfig

log = logging.getLogger("b3lb.http")

REASONS = {413: "Content Too Large", 414: "URI Too Long", 431: "Request Header Fields Too Large"}
# A refused client may go on sending (its body, the rest of a long URL) for this long, and this
# much, before the connection is closed; enough for the client to finish and read the answer.
LINGER_SECONDS = 2.0
LINGER_BYTES = 16 * 1024 * 1024
# What one read may buffer beyond what it waits for (Tornado reads 64 KiB at a time).
READ_SLACK = 128 * 1024
# A zero-length match as soon as anything is buffered: the first byte of a request.
_FIRST_BYTE = rb"\A(?=[\s\S])"
_FAST_LINES = 32


@dataclass(frozen=True, slots=True)
class Limits:
    max_head: int
    max_body: int
    header_timeout: float
    body_timeout: float
    idle_timeout: float

    @classmethod
    def from_config(cls, server: ServerConfig) -> Limits:
        return cls(
            max_head=server.max_header_size,
            max_body=server.max_body_size,
            header_timeout=server.header_timeout,
            body_timeout=server.body_timeout,
            idle_timeout=server.idle_timeout,
        )


@lru_cache(maxsize=8)
def head_pattern(max_head: int) -> bytes:
    """For IOStream.read_until_regex: an empty match once a whole head of at most `max_head`
    bytes is buffered (nothing is consumed: Tornado reads it next), or the first `max_head`
    bytes once that many are buffered without one (the head is too long); no match meanwhile.

    A head ends at the first blank line (the first `\\n\\r?\\n`, as Tornado finds it). The first
    alternative is the common case, fast (at most 32 lines, each short enough that the whole fits);
    the second is exact for any shape; the third matches only when neither can any more."""
    last_newline = max_head - 3  # a blank line whose first \n is here still ends within max_head
    line = (max_head - 2) // _FAST_LINES - 1
    return rb"\A(?:(?=(?:[^\n]{0,%d}+\n){1,%d}?\r?\n)|(?=[\s\S]{0,%d}?\n\r?\n)|[\s\S]{%d})" % (
        line, _FAST_LINES, last_newline, max_head)  # fmt: skip


def plain_answer(status: int, text: str) -> bytes:
    body = text.encode("utf-8") + b"\n"
    head = (
        f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def log_refusal(status: int, context: object, what: str) -> None:
    """One line per refused request; `what` names the request without its query string."""
    log.warning("%d %s: %s", status, REASONS.get(status, "refused"), what,
                extra={"remote_ip": getattr(context, "remote_ip", "")})


def request_label(method: str, target: str) -> str:
    """`METHOD /path` for the log: no query (it may carry secrets or callback URLs), bounded."""
    path = target.partition("?")[0]
    return f"{method[:16]} {path[:200]}{'...' if len(path) > 200 else ''}"


async def refuse(stream: IOStream, status: int, text: str) -> None:
    """Answer on a stream nobody else reads, then close it lingering (module docstring)."""
    timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, stream.close)
    try:
        await stream.write(plain_answer(status, text))
        half_close(stream)
        discarded = 0
        while discarded < LINGER_BYTES:
            discarded += len(await stream.read_bytes(64 * 1024, partial=True))
    except StreamClosedError:
        pass  # the client closed (or the linger time ran out): done
    finally:
        timer.cancel()
        stream.close()


def refuse_while_read(stream: IOStream, status: int, text: str) -> None:
    """Answer on a stream whose reader (Tornado, inside a body) goes on reading and discarding:
    shut our side once the answer is out, close for good after the linger time."""
    written = cast(asyncio.Future, stream.write(plain_answer(status, text)))
    written.add_done_callback(lambda done: None if done.exception() else half_close(stream))
    asyncio.get_running_loop().call_later(LINGER_SECONDS, stream.close)


def half_close(stream: IOStream) -> None:
    """FIN after the answer: the client reads it to the end while we still drain its data."""
    try:
        stream.socket.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # already gone


def _nodelay_stays(value: bool) -> None:
    """IOStream.set_nodelay of a server connection: TCP_NODELAY is set once, at its start."""


class LimitedServerConnection(HTTP1ServerConnection):
    """An HTTP/1 server connection that waits for each request head itself (module docstring)."""

    def __init__(
        self, stream: IOStream, params: HTTP1ConnectionParameters, context: object, limits: Limits
    ) -> None:
        super().__init__(stream, params, context)
        self.limits = limits
        self.head_pattern = head_pattern(limits.max_head)
        # Nagle off once, for the connection's life. Tornado turns it off at the end of every answer
        # and on again after it: two setsockopt calls per request, 7 % of a join's CPU. An answer is
        # one write (b3lb/api/handler.py), or big writes: nothing that Nagle would merge.
        stream.set_nodelay(True)
        stream.set_nodelay = _nodelay_stays  # type: ignore[method-assign]

    async def _server_request_loop(self, delegate: HTTPServerConnectionDelegate) -> None:
        # Tornado 6's loop (tornado/http1connection.py) with the head wait in front of each request.
        try:
            while await self.await_head():
                conn = HTTP1Connection(self.stream, False, self.params, self.context)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (StreamClosedError, UnsatisfiableReadError, asyncio.CancelledError):
                    return
                except Exception:
                    gen_log.error("Uncaught exception", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                await asyncio.sleep(0)
        finally:
            delegate.on_close(self)

    async def await_head(self) -> bool:
        """True once a whole head within the size limit is buffered; else refuses or closes."""
        stream, limits = self.stream, self.limits
        if stream.closed():  # e.g. after a refused body: what the client sent beyond it is not served
            return False
        try:
            started = stream.read_until_regex(_FIRST_BYTE, max_bytes=limits.max_head)
            await _within(started, limits.idle_timeout, stream.close)  # idle: closed quietly
            head = stream.read_until_regex(self.head_pattern, max_bytes=limits.max_head)
            excess = await _within(head, limits.header_timeout, self._head_too_slow)
        except StreamClosedError:
            return False
        if not excess:
            return True
        request_line = excess.lstrip(b"\r\n").partition(b"\n")
        if not request_line[1]:
            log_refusal(414, self.context, f"request line over {limits.max_head} bytes")
            await refuse(stream, 414, f"URI Too Long: the request line is limited to {limits.max_head} bytes")
        else:
            method, _, rest = request_line[0].decode("latin-1").partition(" ")
            label = request_label(method, rest.partition(" ")[0])
            log_refusal(431, self.context, f"{label}: head over {limits.max_head} bytes")
            await refuse(stream, 431, "Request Header Fields Too Large: request line and headers are limited"
                                      f" to {limits.max_head} bytes")
        return False

    def _head_too_slow(self) -> None:
        log.warning("closed a connection: request head not complete within %gs", self.limits.header_timeout,
                    extra={"remote_ip": getattr(self.context, "remote_ip", "")})
        self.stream.close()


async def _within(read: Awaitable[bytes], seconds: float, on_timeout: Callable[[], None]) -> bytes:
    """The read's result; `on_timeout` (which closes the stream) runs if it takes longer. A read
    that the buffer satisfied already costs no timer: the hot path (a small GET) takes that way."""
    future = cast(asyncio.Future, read)
    if future.done():
        return cast(bytes, future.result())
    timer = asyncio.get_running_loop().call_later(seconds, on_timeout)
    try:
        return cast(bytes, await future)
    finally:
        timer.cancel()


class LimitedHTTPServer(HTTPServer):
    """Tornado's HTTPServer with LimitedServerConnection and the limits from [server]."""

    def initialize(self, request_callback: HTTPServerConnectionDelegate, limits: Limits, **kwargs: Any) -> None:
        super().initialize(
            request_callback,
            xheaders=False,
            max_header_size=limits.max_head,  # never reached: await_head refuses first
            max_body_size=limits.max_body,  # lazyquery.LazyQueryDelegate answers 413 first
            max_buffer_size=max(limits.max_head, limits.max_body) + READ_SLACK,
            body_timeout=limits.body_timeout,
            **kwargs,
        )
        self.limits = limits
        self.conn_params.header_timeout = None  # LimitedServerConnection times idle wait and head

    def handle_stream(self, stream: IOStream, address: tuple[Any, ...]) -> None:
        # As HTTPServer.handle_stream, with our connection class.
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = LimitedServerConnection(stream, self.conn_params, context, self.limits)
        self._connections.add(conn)
        conn.start_serving(self)


def make_http_server(app: HTTPServerConnectionDelegate, server: ServerConfig) -> HTTPServer:
    """The HTTP server `b3lb serve` runs (and the test harness)."""
    return LimitedHTTPServer(app, limits=Limits.from_config(server))
