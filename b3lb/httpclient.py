"""Outbound HTTP/1.1 to BBB nodes on asyncio protocols: keep-alive, hard deadlines, little work per request.

A request to a node is a short GET or POST with a small answer (a poll reads 1,000 of them every
few seconds). libcurl's multi interface, driven from Python, cost more than the rest of a poll
cycle: a liveness poll() on every reused connection, epoll registration changes and timer
callbacks several times per request. Here a kept connection stays registered with the event loop,
and a request is one write, one or two data callbacks and one timer.

What nodes can send is covered: Content-Length, chunked and close-delimited bodies, gzip/deflate,
1xx interim answers, `Connection: close`, TLS (https URLs, verified with the system's CAs), and
a kept connection that the node closed meanwhile (the request is retried once on a new one).
"""

from __future__ import annotations

import asyncio
import ssl
import zlib
from collections import deque

MAX_HEAD = 64 * 1024  # a node's answer head is a few hundred bytes
Key = tuple[str, str, int]  # scheme, host, port


class HttpError(Exception):
    """No usable HTTP answer: refused, timed out, reset, malformed answer, bad URL, client closed."""


class _Stale(HttpError):
    """A kept connection closed before any byte of the answer: safe to send again on a new one."""


class _Target:
    __slots__ = ("key", "host_header", "path", "tls")

    def __init__(self, url: str) -> None:
        if "\r" in url or "\n" in url or "\x00" in url:  # would split or end the request line
            raise HttpError(f"control character in URL: {url[:100]!r}")
        scheme, sep, rest = url.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ("http", "https"):
            raise HttpError(f"unsupported URL: {url[:100]!r}")
        cut = len(rest)
        for mark in "/?#":
            at = rest.find(mark)
            if 0 <= at < cut:
                cut = at
        netloc, path = rest[:cut].rpartition("@")[2], rest[cut:].partition("#")[0]
        if path[:1] != "/":
            path = "/" + path
        host, port = netloc, 443 if scheme == "https" else 80
        if netloc.startswith("["):  # [IPv6]:port
            close = netloc.find("]")
            host, tail = netloc[1:close], netloc[close + 1 :]
            if tail.startswith(":") and tail[1:]:
                port = _port(tail[1:], url)
        elif ":" in netloc:
            host, raw_port = netloc.rsplit(":", 1)
            port = _port(raw_port, url) if raw_port else port
        if not host:
            raise HttpError(f"URL without host: {url[:100]!r}")
        self.key: Key = (scheme, host.lower(), port)
        self.host_header = netloc
        self.path = path
        self.tls = scheme == "https"


def _port(text: str, url: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise HttpError(f"bad port in URL: {url[:100]!r}")
    return int(text)


class _Answer:
    """The parsed head of an answer and how its body ends."""

    __slots__ = ("status", "content_type", "encoding", "keep_alive", "chunked", "length")

    def __init__(self, head: bytes, method: str) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
            raise HttpError(f"malformed status line: {lines[0][:80]!r}")
        self.status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if colon:
                name, value = name.strip().lower(), value.strip()
                if name == b"content-length" and headers.get(name, value) != value:
                    raise HttpError("conflicting Content-Length headers")
                headers[name] = value
        connection = headers.get(b"connection", b"").lower()
        http10 = parts[0] == b"HTTP/1.0"
        self.keep_alive = b"keep-alive" in connection if http10 else b"close" not in connection
        self.content_type = headers.get(b"content-type", b"").decode("latin-1")
        self.encoding = headers.get(b"content-encoding", b"").lower()
        self.chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        self.length: int | None = None  # None with chunked == False: the body ends when the node closes
        if method == "HEAD" or self.status in (204, 304) or self.status < 200:
            self.length, self.chunked = 0, False
        elif not self.chunked and b"content-length" in headers:
            raw = headers[b"content-length"]
            if not raw.isdigit():
                raise HttpError(f"bad Content-Length: {raw[:40]!r}")
            self.length = int(raw)
        if self.length is None and not self.chunked:
            self.keep_alive = False


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to a node; answers one request at a time."""

    def __init__(self, client: HttpClient, key: Key) -> None:
        self.client = client
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle = False
        self.waiter: asyncio.Future[tuple[int, bytes, str]] | None = None
        self.method = "GET"
        self.received = False  # any byte of the current answer yet
        self.buffer = bytearray()
        self.answer: _Answer | None = None
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, method: str, waiter: asyncio.Future[tuple[int, bytes, str]]) -> None:
        self.method, self.waiter, self.received, self.answer = method, waiter, False, None
        self.buffer.clear()
        self.chunks.clear()
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():  # nothing asked: a confused node
            self.abort()
            return
        self.received = True
        self.buffer += data
        try:
            self._parse()
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.client._forget(self)
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        answer = self.answer
        if answer is not None and answer.length is None and not answer.chunked:
            self._finish(answer, bytes(self.buffer))  # a close-delimited body is complete now
        elif not self.received:
            waiter.set_exception(_Stale(f"connection closed by node{f': {exc}' if exc else ''}"))
        else:
            waiter.set_exception(HttpError("connection closed in the middle of the answer"))

    def _parse(self) -> None:
        buffer = self.buffer
        while self.answer is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise HttpError("answer head too large")
                return
            answer = _Answer(bytes(buffer[:end]), self.method)
            del buffer[: end + 4]
            if 100 <= answer.status < 200:
                continue  # 100 Continue and friends: the real answer follows
            self.answer = answer
        answer = self.answer
        if answer.chunked:
            self._parse_chunks(answer)
        elif answer.length is not None and len(buffer) >= answer.length:
            body = bytes(buffer[: answer.length])
            del buffer[: answer.length]
            self._finish(answer, body)

    def _parse_chunks(self, answer: _Answer) -> None:
        buffer = self.buffer
        while True:
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > MAX_HEAD:
                    raise HttpError("chunk size line too long")
                return
            size_text = bytes(buffer[:line_end]).split(b";", 1)[0].strip()
            if not size_text or size_text.strip(b"0123456789abcdefABCDEF"):  # int() would take -5, 0x5, 1_0
                raise HttpError(f"bad chunk size: {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                if buffer[line_end + 2 : line_end + 4] == b"\r\n":
                    del buffer[: line_end + 4]
                else:
                    trailers_end = buffer.find(b"\r\n\r\n", line_end + 2)
                    if trailers_end < 0:
                        return
                    del buffer[: trailers_end + 4]
                self._finish(answer, b"".join(self.chunks))
                return
            start = line_end + 2
            if len(buffer) < start + size + 2:
                return
            self.chunks.append(bytes(buffer[start : start + size]))
            del buffer[: start + size + 2]

    def _finish(self, answer: _Answer, body: bytes) -> None:
        waiter, self.waiter = self.waiter, None
        if answer.encoding in (b"gzip", b"x-gzip", b"deflate") and body:
            try:
                body = zlib.decompress(body, 47 if answer.encoding != b"deflate" else 15)
            except zlib.error:
                try:
                    body = zlib.decompress(body, -15)  # deflate without its zlib header
                except zlib.error:
                    self.abort()
                    if waiter is not None and not waiter.done():
                        waiter.set_exception(HttpError(f"answer not decodable as {answer.encoding.decode()}"))
                    return
        if waiter is not None and not waiter.done():
            waiter.set_result((answer.status, body, answer.content_type))
        if answer.keep_alive and not self.buffer and not self.closed:
            self.client._keep(self)
        else:
            self.abort()

    def _fail(self, exc: HttpError) -> None:
        waiter, self.waiter = self.waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def time_out(self, seconds: float) -> None:
        self._fail(HttpError(f"timed out after {seconds:g} s"))

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.client._forget(self)
            if self.transport is not None:
                self.transport.abort()


class HttpClient:
    def __init__(
        self,
        *,
        max_connections: int,
        user_agent: str,
        keep_connections: int = 5000,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._slots = asyncio.Semaphore(max_connections)  # requests in flight at a time
        self._user_agent = user_agent
        self._keep_connections = keep_connections
        self._ssl = ssl_context
        self._idle: dict[Key, deque[_Connection]] = {}
        self._idle_count = 0
        self._busy: set[_Connection] = set()
        self._closed = False

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: list[str] | None = None,
        connect_timeout: float,
        timeout: float,
    ) -> tuple[int, bytes, str]:
        """(status, body, Content-Type) of one request; HttpError when there is no usable answer."""
        if self._closed:
            raise HttpError("client closed")
        target = _Target(url)
        head = f"{method} {target.path} HTTP/1.1\r\nHost: {target.host_header}\r\nUser-Agent: {self._user_agent}\r\n"
        head += "Accept-Encoding: gzip, deflate\r\n"
        if headers:
            head += "".join(f"{line}\r\n" for line in headers)
        if body is not None or method == "POST":
            head += f"Content-Length: {len(body or b'')}\r\n"
        request = head.encode() + b"\r\n" + (body or b"")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        await self._slot(deadline, timeout)
        try:
            connection = self._take(target.key)
            if connection is not None:
                try:
                    return await self._exchange(loop, connection, request, method, deadline, timeout)
                except _Stale:
                    pass  # the node closed the kept connection meanwhile: once more on a new one
            connect_within = max(min(connect_timeout, deadline - loop.time()), 0.001)
            connection = await self._connect(target, connect_within)
            try:
                return await self._exchange(loop, connection, request, method, deadline, timeout)
            except _Stale as exc:
                raise HttpError(str(exc)) from None
        finally:
            self._slots.release()

    async def _slot(self, deadline: float, timeout: float) -> None:
        """A free request slot; waiting for one counts against the request's timeout."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise HttpError(f"timed out after {timeout:g} s waiting for a free connection") from None

    async def _exchange(
        self,
        loop: asyncio.AbstractEventLoop,
        connection: _Connection,
        request: bytes,
        method: str,
        deadline: float,
        timeout: float,
    ) -> tuple[int, bytes, str]:
        waiter: asyncio.Future[tuple[int, bytes, str]] = loop.create_future()
        self._busy.add(connection)
        timer = loop.call_at(deadline, connection.time_out, timeout)
        try:
            connection.send(request, method, waiter)
            return await waiter
        except asyncio.CancelledError:
            connection.abort()  # the answer may still come: this connection cannot be reused
            raise
        finally:
            timer.cancel()
            self._busy.discard(connection)

    async def _connect(self, target: _Target, within: float) -> _Connection:
        loop = asyncio.get_running_loop()
        scheme, host, port = target.key
        tls: ssl.SSLContext | None = None
        if target.tls:
            tls = self._ssl or _default_tls()
        try:
            async with asyncio.timeout(within):
                _transport, connection = await loop.create_connection(
                    lambda: _Connection(self, target.key), host, port, ssl=tls,
                    server_hostname=host if tls else None,
                )
        except TimeoutError:
            raise HttpError(f"connect to {host}:{port} timed out after {within:g} s") from None
        except OSError as exc:  # ssl.SSLError included
            raise HttpError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
        except ValueError as exc:  # a host name the resolver refuses (too long a label, NUL)
            raise HttpError(f"cannot connect to {host[:80]!r}:{port}: {exc}") from None
        if self._closed:
            connection.abort()
            raise HttpError("client closed")
        return connection

    def _take(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            self._idle_count -= 1
            connection.idle = False
            if not connection.closed:
                return connection
        return None

    def _keep(self, connection: _Connection) -> None:
        if self._closed or self._idle_count >= self._keep_connections:
            connection.abort()
            return
        connection.idle = True
        self._idle.setdefault(connection.key, deque()).append(connection)
        self._idle_count += 1

    def _forget(self, connection: _Connection) -> None:
        """A connection closed: it must not be handed out again."""
        if connection.idle:
            connection.idle = False
            idle = self._idle.get(connection.key)
            if idle is not None:
                try:
                    idle.remove(connection)
                    self._idle_count -= 1
                except ValueError:
                    pass

    def close(self) -> None:
        self._closed = True
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.abort()
        self._idle.clear()
        self._idle_count = 0
        for connection in list(self._busy):
            connection._fail(HttpError("client closed"))
        self._busy.clear()


_TLS: ssl.SSLContext | None = None


def _default_tls() -> ssl.SSLContext:
    global _TLS
    if _TLS is None:
        _TLS = ssl.create_default_context()
    return _TLS
