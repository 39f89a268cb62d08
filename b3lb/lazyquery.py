"""Requests whose query string Tornado parses only when someone asks for it.

Tornado parses every query into `request.arguments` and deep-copies it into `query_arguments`
before routing (about 10 µs for a join URL, 5% of its cost). The BBB API never reads them: a
checksum must be computed over the raw query as sent, so b3lb parses that itself. Other
handlers (get_query_argument) still get the arguments, parsed on first use.

The delegate also enforces the body size limit (413), `server.max_body_size` unless the
application names another limit for the request's path: `router.body_limit_for(path)` returning
a `BodyLimit` (the node upload endpoint takes archives of gigabytes, for up to an hour).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from tornado import httputil
from tornado.escape import parse_qs_bytes
from tornado.http1connection import HTTP1Connection
from tornado.routing import _RoutingDelegate

from b3lb.httplimits import LINGER_BYTES, log_refusal, refuse, refuse_while_read, request_label


class LazyQueryRequest(httputil.HTTPServerRequest):
    _arguments: dict[str, list[bytes]] | None = None
    _query_arguments: dict[str, list[bytes]] | None = None

    @classmethod
    def from_start_line(cls, start_line: httputil.RequestStartLine, **kwargs: object) -> LazyQueryRequest:
        path, _, query = start_line.path.partition("?")
        # Constructed without the query (nothing to parse), which is then put back.
        request = cls(start_line=start_line._replace(path=path), **kwargs)  # type: ignore[arg-type]
        request.uri, request.query = start_line.path, query
        request._arguments = request._query_arguments = None
        return request

    @property  # type: ignore[override]
    def arguments(self) -> dict[str, list[bytes]]:
        if self._arguments is None:
            self._arguments = parse_qs_bytes(self.query, keep_blank_values=True)
        return self._arguments

    @arguments.setter
    def arguments(self, value: dict[str, list[bytes]]) -> None:
        self._arguments = value

    @property  # type: ignore[override]
    def query_arguments(self) -> dict[str, list[bytes]]:
        if self._query_arguments is None:
            self._query_arguments = copy.deepcopy(parse_qs_bytes(self.query, keep_blank_values=True))
        return self._query_arguments

    @query_arguments.setter
    def query_arguments(self, value: dict[str, list[bytes]]) -> None:
        self._query_arguments = value


@dataclass(frozen=True, slots=True)
class BodyLimit:
    """A path's own body limits: its size in bytes and the seconds the whole body may take."""

    max_bytes: int
    timeout: float


class LazyQueryDelegate(_RoutingDelegate):
    """Tornado's routing delegate, building a LazyQueryRequest instead of an HTTPServerRequest,
    and answering 413 for a body over the connection's max_body_size (httplimits.py says why
    here and not in Tornado, which resets or answers a bare 400)."""

    # Bytes a chunked body may still bring; None for other requests (Content-Length was checked).
    body_room: int | None = None
    refused = False
    _label = ""  # the refused request, for the log
    _limit = 0

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        assert isinstance(start_line, httputil.RequestStartLine)
        if "Content-Length" in headers or "Transfer-Encoding" in headers:  # a body: never a join
            refusal = self._check_body(start_line, headers.get("Content-Length"), headers.get("Transfer-Encoding"))
            if refusal is not None:
                return refusal
        request = LazyQueryRequest.from_start_line(
            start_line, connection=self.request_conn, server_connection=self.server_conn, headers=headers
        )
        self.delegate = self.router.find_handler(request)
        if self.delegate is None:  # Application always finds one (its default handler)
            raise RuntimeError(f"no handler for {start_line.path}")
        return self.delegate.headers_received(start_line, headers)

    def _check_body(
        self, start_line: httputil.RequestStartLine, declared: str | None, encoding: str | None
    ) -> Awaitable[None] | None:
        connection = cast(HTTP1Connection, self.request_conn)
        limit = self._body_limit(connection, start_line.path.partition("?")[0])
        if declared is not None:
            if _declared_length(declared) > limit:
                log_refusal(413, connection.context, f"{request_label(start_line.method, start_line.path)}: "
                                                     f"Content-Length {declared.strip()[:20]} over {limit}")
                # Ours from here: Tornado neither reads the body nor answers (nor sends 100 Continue).
                stream = connection.detach()
                return refuse(stream, 413, f"Content Too Large: the body is limited to {limit} bytes")
        elif encoding.strip().lower() == "chunked":  # type: ignore[union-attr]
            # Counted in data_received: Tornado would answer a bare 400 when the sum of chunk sizes
            # passes its limit, so its limit is lifted for this request.
            self.body_room = self._limit = limit
            connection.set_max_body_size(sys.maxsize)
            self._label = request_label(start_line.method, start_line.path)
        return None

    def _body_limit(self, connection: HTTP1Connection, path: str) -> int:
        """The path's own limit (then also this request's limits in Tornado, which would refuse
        the body otherwise), else the server's."""
        per_path: Callable[[str], BodyLimit | None] | None = getattr(self.router, "body_limit_for", None)
        special = per_path(path) if per_path is not None else None
        if special is not None:
            connection.set_max_body_size(special.max_bytes)
            connection.set_body_timeout(special.timeout)
            return special.max_bytes
        limit = connection.params.max_body_size
        return connection.stream.max_buffer_size if limit is None else limit

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self.body_room is not None:
            self.body_room -= len(chunk)
            if self.refused:  # discarding what the refused client still sends, bounded
                if self.body_room < -LINGER_BYTES:
                    cast(HTTP1Connection, self.request_conn).stream.close()
                return None
            if self.body_room < 0:
                self._refuse_chunked()
                return None
        assert self.delegate is not None
        return self.delegate.data_received(chunk)

    def _refuse_chunked(self) -> None:
        connection = cast(HTTP1Connection, self.request_conn)
        self.refused = True
        log_refusal(413, connection.context, f"{self._label}: chunked body over {self._limit}")
        # The handler gets no more of the body: told now, it drops what it has (a streaming upload
        # aborts its write); nothing else tells it (on_connection_close below is not passed on).
        if self.delegate is not None:
            self.delegate.on_connection_close()
        # Tornado goes on reading the chunks (handed to us and dropped) until the body ends, the
        # client closes, or the linger time or the body timeout runs out.
        refuse_while_read(connection.stream, 413, f"Content Too Large: the body is limited to {self._limit} bytes")

    def on_connection_close(self) -> None:
        if self.refused:  # the handler was told in _refuse_chunked
            return
        super().on_connection_close()

    def finish(self) -> None:
        if self.refused:  # the refused body ended: nothing more to read or answer
            cast(HTTP1Connection, self.request_conn).stream.close()
            return
        super().finish()


def _declared_length(value: str) -> int:
    """The largest length in a Content-Length value (a repeated header arrives joined by commas;
    Tornado refuses unequal ones), -1 when it is no number (Tornado answers that with 400)."""
    pieces = [piece.strip() for piece in value.split(",")]
    if not all(piece.isascii() and piece.isdigit() for piece in pieces):
        return -1
    # More than 18 digits is more than any limit (and int() refuses numbers of over 4,300 digits).
    return max(sys.maxsize if len(piece) > 18 else int(piece) for piece in pieces)
