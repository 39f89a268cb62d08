"""Requests whose query string Tornado parses only when someone asks for it.

Tornado parses every query into `request.arguments` and deep-copies it into `query_arguments`
before routing (about 10 µs for a join URL, 5% of its cost). The BBB API never reads them: a
checksum must be computed over the raw query as sent, so b3lb parses that itself. Other
handlers (get_query_argument) still get the arguments, parsed on first use.

The delegate also enforces the body size limit (413), `server.max_body_size` unless the
application names another limit for the request's path: `router.body_limit_for(path)` returning
a `BodyLimit` (the node upload endpoint takes archives of gigabytes, for up to an hour).

Paths of the leading rules of the route table whose target is a `FastRouter` (the BBB API) are
matched here, without Tornado's walk through its routers, and their request is built without
`HTTPServerRequest.__init__` once its Host value has passed Tornado's checks (about a tenth of
a join's cost together).
"""

from __future__ import annotations

import copy
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from tornado import httputil
from tornado.escape import parse_qs_bytes, url_unescape
from tornado.http1connection import HTTP1Connection
from tornado.routing import PathMatches, Router, _RoutingDelegate

from b3lb.httplimits import LINGER_BYTES, log_refusal, refuse, refuse_while_read, request_label

# Host header values that passed HTTPServerRequest's checks (bounded: they are client input).
_CHECKED_HOSTS: dict[str, None] = {}
MAX_CHECKED_HOSTS = 1000


class LazyQueryRequest(httputil.HTTPServerRequest):
    _arguments: dict[str, list[bytes]] | None = None
    _query_arguments: dict[str, list[bytes]] | None = None
    _host_name: str | None = None
    # Whether a body follows the head (Content-Length or Transfer-Encoding), when the delegate
    # looked already; None: not known.
    has_body: bool | None = None

    @classmethod
    def from_start_line(cls, start_line: httputil.RequestStartLine, **kwargs: object) -> LazyQueryRequest:
        path, _, query = start_line.path.partition("?")
        # Constructed without the query (nothing to parse), which is then put back.
        request = cls(start_line=start_line._replace(path=path), **kwargs)  # type: ignore[arg-type]
        request.uri, request.query = start_line.path, query
        request._arguments = request._query_arguments = None
        return request

    @classmethod
    def checked(
        cls,
        start_line: httputil.RequestStartLine,
        headers: httputil.HTTPHeaders,
        connection: httputil.HTTPConnection,
        server_connection: object,
        path: str,
        query: str,
    ) -> LazyQueryRequest:
        """As from_start_line, with the same attributes; built directly when this Host value passed
        HTTPServerRequest's checks before (which raise HTTPInputError, a 400, for a bad one)."""
        host = headers.get("Host")  # one lookup when present, as in every HTTP/1.1 request
        if host is None or host not in _CHECKED_HOSTS:
            request = cls.from_start_line(start_line, connection=connection, server_connection=server_connection,
                                          headers=headers)
            if host is not None:
                if len(_CHECKED_HOSTS) >= MAX_CHECKED_HOSTS:
                    _CHECKED_HOSTS.clear()
                _CHECKED_HOSTS[host] = None
            return request
        request = cls.__new__(cls)
        request.method, request.uri, request.version = start_line
        request.headers = headers
        request.body = b""
        context = getattr(connection, "context", None)
        request.remote_ip = getattr(context, "remote_ip", None)
        request.protocol = getattr(context, "protocol", "http")
        request.host = host
        request.files = {}
        request.connection = connection
        request.server_connection = server_connection
        request._start_time = time.time()
        request._finish_time = None
        request.path, request.query = path, query
        request.body_arguments = {}
        return request

    @property  # type: ignore[override]
    def host_name(self) -> str:
        """Parsed on first use (HTTPServerRequest parses it for every request)."""
        if self._host_name is None:
            self._host_name = httputil.split_host_and_port(self.host.lower())[0]
        return self._host_name

    @host_name.setter
    def host_name(self, value: str) -> None:
        self._host_name = value

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


class FastRouter(Router):
    """A route table target whose requests may skip Tornado's router walk (the module docstring
    says when): `exchange` gets the request and the match of its rule's path pattern, and returns
    the same delegate as `find_handler` would."""

    def exchange(self, request: LazyQueryRequest, match: re.Match[str]) -> httputil.HTTPMessageDelegate:
        raise NotImplementedError


def path_group(value: str | None) -> str | None:
    """A matched path group as Tornado hands it to a handler: percent-decoded (as ASCII, the
    only text the route patterns admit)."""
    if value is None or "%" not in value:
        return value
    return url_unescape(value, encoding=None, plus=False).decode("ascii")


FastRules = tuple[tuple[re.Pattern[str], FastRouter], ...]
# The application whose table was read last, and its fast rules (one application per process;
# the table is read once, as Tornado reads it at construction).
_FAST_RULES: list[Any] = [None, ()]


def _fast_rules(router: Router) -> FastRules:
    """The rules at the head of an Application's route table that lead to a FastRouter: these,
    and only these, can be matched before Tornado's walk (its first matching rule wins)."""
    if _FAST_RULES[0] is router:
        return cast(FastRules, _FAST_RULES[1])
    rules: list[tuple[re.Pattern[str], FastRouter]] = []
    default, wildcard = getattr(router, "default_router", None), getattr(router, "wildcard_router", None)
    # Host-specific tables (Application.add_handlers) come before the wildcard one: then none.
    if default is not None and wildcard is not None and [r.target for r in default.rules] == [wildcard]:
        for rule in wildcard.rules:
            if not isinstance(rule.matcher, PathMatches) or not isinstance(rule.target, FastRouter):
                break
            rules.append((rule.matcher.regex, rule.target))
    _FAST_RULES[:] = [router, tuple(rules)]
    return tuple(rules)


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
        has_body = "Content-Length" in headers or "Transfer-Encoding" in headers
        if has_body:  # never a join
            refusal = self._check_body(start_line, headers.get("Content-Length"), headers.get("Transfer-Encoding"))
            if refusal is not None:
                return refusal
        path, _, query = start_line.path.partition("?")
        for regex, target in _fast_rules(self.router):
            match = regex.match(path)
            if match is not None:
                conn = self.request_conn
                request = LazyQueryRequest.checked(start_line, headers, conn, self.server_conn, path, query)
                request.has_body = has_body
                self.delegate = target.exchange(request, match)
                return self.delegate.headers_received(start_line, headers)
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
