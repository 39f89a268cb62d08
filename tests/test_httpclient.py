"""The asyncio HTTP/1.1 client (b3lb.httpclient) against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import shutil
import socket
import ssl
import struct
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.httpclient import HttpClient, HttpError

UA = "b3lb-test/1.0"
BIG = random.Random(7).randbytes(3 * 1024 * 1024)  # random, so a shifted or repeated piece cannot match
XML = "".join(f"<meeting><id>m{n}</id><name>Room {n}</name></meeting>" for n in range(2000)).encode()
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[["RawServer", Reader, Writer, int], Awaitable[None]]  # server, reader, writer, connection no.


# ---------------------------------------------------------------- Tornado server


class Echo(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/xml;charset=utf-8")
        self.finish(f"<r>{self.request.query}|{self.request.headers.get('User-Agent')}</r>")

    def post(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(self.request.headers.get("Content-Type", "").encode() + b"|" + self.request.body)


class Status(RequestHandler):
    def get(self, code: str) -> None:
        self.set_status(int(code))
        self.set_header("Content-Type", "text/plain")
        self.finish(f"status {code}")


class Chunked(RequestHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "text/plain")
        for n in range(5):
            self.write(f"part{n};")
            await self.flush()  # no Content-Length: Tornado sends one chunk per flush
        self.finish()


async def finish_maybe_chunked(handler: RequestHandler, data: bytes, piece: int) -> None:
    """Send data whole, or with ?chunked=1 in pieces of `piece` bytes (no Content-Length: one chunk per flush)."""
    if handler.get_argument("chunked", ""):
        for start in range(0, len(data), piece):
            handler.write(data[start : start + piece])
            await handler.flush()
        handler.finish()
    else:
        handler.finish(data)


class Big(RequestHandler):
    async def get(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        await finish_maybe_chunked(self, BIG, 100_000)


class Counting(RequestHandler):
    """A handler that records what it sees in the Server's counters."""

    def initialize(self, counters: Server) -> None:
        self.counters = counters


class Gzipped(Counting):
    async def get(self) -> None:
        accept = self.request.headers.get("Accept-Encoding", "")
        self.counters.accept_encodings.append(accept)
        self.set_header("Content-Type", "application/xml")
        if "gzip" not in accept:
            self.finish(XML)
            return
        self.set_header("Content-Encoding", "gzip")
        await finish_maybe_chunked(self, gzip.compress(XML), 1000)


class Sleepy(Counting):
    """Sleeps ?t= seconds (0.3 by default), tracking how many requests run at once."""

    async def get(self) -> None:
        counters = self.counters
        counters.requests += 1
        counters.active += 1
        counters.peak = max(counters.peak, counters.active)
        try:
            await asyncio.sleep(float(self.get_argument("t", "0.3")))
        finally:
            counters.active -= 1
        self.set_header("Content-Type", "text/plain")
        self.finish(f"slept {self.get_argument('n', '')}")


class Server:
    """A Tornado HTTPServer on a loopback socket that counts the TCP connections it accepts."""

    def __init__(self, ssl_options: ssl.SSLContext | None = None) -> None:
        self.connections = 0
        self.requests = 0
        self.active = 0
        self.peak = 0
        self.accept_encodings: list[str] = []
        sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        self.scheme = "https" if ssl_options else "http"
        app = Application(
            [
                (r"/echo", Echo),
                (r"/status/(\d+)", Status),
                (r"/chunked", Chunked),
                (r"/big", Big),
                (r"/gzip", Gzipped, {"counters": self}),
                (r"/sleep", Sleepy, {"counters": self}),
            ]
        )
        self.http = HTTPServer(app, ssl_options=ssl_options)
        original = self.http.handle_stream

        def counting(stream, address):  # noqa: ANN001, ANN202 - Tornado's signature
            self.connections += 1
            return original(stream, address)

        self.http.handle_stream = counting  # type: ignore[method-assign]
        self.http.add_sockets([sock])

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self.http.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ---------------------------------------------------------------- raw asyncio server


@dataclass
class Request:
    line: str
    headers: dict[str, str]  # lower-case names
    header_lines: list[tuple[str, str]]
    body: bytes


@dataclass
class RawServer:
    """asyncio.start_server on 127.0.0.1 whose handler writes exact bytes; counts connections."""

    handler: Handler
    connections: int = 0
    requests: list[Request] = field(default_factory=list)
    eofs: int = 0  # connections the client closed while the handler waited in wait_for_eof()
    eof_seen: asyncio.Event = field(default_factory=asyncio.Event)
    writers: list[Writer] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            await self.handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def read_request(self, reader: Reader) -> Request | None:
        """The next request on a connection, or None at end of stream."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        header_lines = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            header_lines.append((name.strip(), value.strip()))
        headers = {name.lower(): value for name, value in header_lines}
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        request = Request(lines[0], headers, header_lines, body)
        self.requests.append(request)
        return request

    async def wait_for_eof(self, reader: Reader) -> None:
        """Hold the connection open, without answering, until the client closes it."""
        while await reader.read(65536):
            pass
        self.eofs += 1
        self.eof_seen.set()

    async def answer_each(
        self, reader: Reader, writer: Writer, respond: bytes | Callable[[Request], bytes], *, trickled: bool = False
    ) -> None:
        """Answer every request on the connection with respond (bytes, or a function of the request)."""
        while (request := await self.read_request(reader)) is not None:
            data = respond if isinstance(respond, bytes) else respond(request)
            if trickled:
                await trickle(writer, data)
            else:
                writer.write(data)
                await writer.drain()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        await asyncio.sleep(0.01)  # let the handlers see their connections end


def replying(respond: bytes | Callable[[Request], bytes], *, trickled: bool = False) -> Handler:
    """A handler that answers every request (see RawServer.answer_each)."""

    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.answer_each(reader, writer, respond, trickled=trickled)

    return handler


def replying_once(data: bytes | Callable[[int], bytes], *, close: bool = False) -> Handler:
    """A handler that reads one request and writes data (bytes, or a function of the connection number), then
    closes the connection (close=True) or holds it open, reading no more requests, until the client closes it."""

    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        writer.write(data if isinstance(data, bytes) else data(number))
        await writer.drain()
        if close:
            writer.close()
        else:
            await server.wait_for_eof(reader)

    return handler


def answer(body: bytes, *, status: str = "200 OK", headers: tuple[str, ...] = ("Content-Type: text/plain",)) -> bytes:
    """A complete HTTP/1.1 answer with Content-Length."""
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def trickle(writer: Writer, data: bytes) -> None:
    """Write data 1-7 bytes at a time with small pauses, so it arrives in many tiny reads."""
    sizes = [1, 7, 3, 5, 2, 6, 4]
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        writer.write(data[position : position + size])
        await writer.drain()
        await asyncio.sleep(0.002)
        position += size
        index += 1


# ---------------------------------------------------------------- sessions and checks


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        return unused.getsockname()[1]


def new_client(max_connections: int = 4, **kwargs: object) -> HttpClient:
    return HttpClient(max_connections=max_connections, user_agent=UA, **kwargs)  # type: ignore[arg-type]


def closing_client(**kwargs: object) -> contextlib.closing[HttpClient]:
    return contextlib.closing(new_client(**kwargs))  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def raw_session(handler: Handler, **client_kwargs: object) -> AsyncIterator[tuple[RawServer, HttpClient]]:
    """A RawServer running handler and a new client; afterwards the client is closed and the server stopped."""
    server = await RawServer(handler).start()
    client = new_client(**client_kwargs)  # type: ignore[arg-type]
    try:
        yield server, client
    finally:
        client.close()
        await server.stop()


@contextlib.contextmanager
def tornado_session(**client_kwargs: object) -> Iterator[tuple[Server, HttpClient]]:
    """A Tornado Server and a new client; afterwards the client is closed and the server stopped."""
    with Server() as server, closing_client(**client_kwargs) as client:
        yield server, client


async def get(client: HttpClient, url: str, timeout: float = 5) -> tuple[int, bytes, str]:
    return await client.fetch(url, connect_timeout=1, timeout=timeout)


async def post(
    client: HttpClient, url: str, body: bytes, headers: list[str] | None = None, timeout: float = 5
) -> tuple[int, bytes, str]:
    return await client.fetch(url, method="POST", body=body, headers=headers, connect_timeout=1, timeout=timeout)


async def get_fails(client: HttpClient, url: str, timeout: float = 5) -> tuple[str, float]:
    """A GET that must raise HttpError: the error's message in lower case, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(HttpError) as error:
        await get(client, url, timeout=timeout)
    return str(error.value).lower(), time.monotonic() - started


def echoed(query: str) -> tuple[int, bytes, str]:
    """What the Tornado server's /echo answers to a GET with this query."""
    return 200, f"<r>{query}|{UA}</r>".encode(), "text/xml;charset=utf-8"


async def assert_recovered(client: HttpClient) -> None:
    """After an error or a cancellation the client keeps no connection, and still completes a good request."""
    assert client.idle_connections == 0
    with Server() as server:
        assert await get(client, server.url("/echo?still=ok")) == echoed("still=ok")


async def assert_broken_answer_fails_fast(data: bytes, *, close: bool, within: float, eof: bool = False) -> None:
    """The server answers the first request with data and then closes the connection or (close=False) holds it
    open: the client must notice the broken answer itself, in less than `within` seconds, not at its timeout.
    eof: also wait until the held connection is closed by the client (only where the server's write of data
    can complete: a write larger than what the client reads fails in drain() before the server waits for EOF)."""
    async with raw_session(replying_once(data, close=close)) as (server, client):
        message, elapsed = await get_fails(client, server.url("/x"), timeout=5)
        assert elapsed < within
        assert "timed out" not in message
        if eof:
            await asyncio.wait_for(server.eof_seen.wait(), 1)  # the broken connection was closed, not kept
        assert server.connections == 1  # bytes of the answer had arrived: no retry
        await assert_recovered(client)


# ---------------------------------------------------------------- 1. requests and answers


@pytest.mark.gen_test(timeout=30)
async def test_request_bytes_path_query_host_and_user_agent():
    async with raw_session(replying(answer(b"ok"))) as (server, client):
        for path in ("/echo?a=1%2B0&b", "/bigbluebutton/api/getMeetings?checksum=ab%20c&x=%7E~'&=v", "/p/a%2Fb;x=1"):
            assert await get(client, server.url(path)) == (200, b"ok", "text/plain")
        assert await get(client, f"http://127.0.0.1:{server.port}") == (200, b"ok", "text/plain")
        assert await get(client, f"http://127.0.0.1:{server.port}?q=1") == (200, b"ok", "text/plain")
        assert await get(client, server.url("/frag?x=1#section")) == (200, b"ok", "text/plain")
        assert [r.line for r in server.requests] == [
            "GET /echo?a=1%2B0&b HTTP/1.1",
            "GET /bigbluebutton/api/getMeetings?checksum=ab%20c&x=%7E~'&=v HTTP/1.1",
            "GET /p/a%2Fb;x=1 HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /?q=1 HTTP/1.1",
            "GET /frag?x=1 HTTP/1.1",  # the fragment stays with the client
        ]
        for request in server.requests:
            assert request.headers["user-agent"] == UA
            assert [v for n, v in request.header_lines if n.lower() == "host"] == [f"127.0.0.1:{server.port}"]
            assert request.body == b""
            assert request.headers.get("content-length", "0") == "0"
        assert server.connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_post_sends_body_and_given_headers():
    body = b"<modules><module name='presentation'/></modules>" * 50
    async with raw_session(replying(answer(b"<response/>", headers=("Content-Type: text/xml",)))) as (server, client):
        headers = ["Content-Type: application/xml", "X-Checksum: a:b c"]
        result = await post(client, server.url("/api/create?meetingID=m%201"), body, headers)
        assert result == (200, b"<response/>", "text/xml")
        assert await get(client, server.url("/after")) == (200, b"<response/>", "text/xml")
        post_request, after = server.requests
        assert post_request.line == "POST /api/create?meetingID=m%201 HTTP/1.1"
        assert post_request.body == body
        assert post_request.headers["content-type"] == "application/xml"
        assert post_request.headers["x-checksum"] == "a:b c"
        assert post_request.headers["user-agent"] == UA
        assert post_request.headers["host"] == f"127.0.0.1:{server.port}"
        assert after.line == "GET /after HTTP/1.1"  # the POST body was framed exactly
        assert "content-type" not in after.headers  # headers of one request do not leak into the next
        assert server.connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_get_post_and_error_statuses_against_tornado():
    with tornado_session() as (server, client):
        for n in range(3):
            assert await get(client, server.url(f"/echo?a=1%2B{n}&b")) == echoed(f"a=1%2B{n}&b")
        result = await post(client, server.url("/echo"), b"<x/>", ["Content-Type: application/xml"])
        assert result == (200, b"application/xml|<x/>", "application/octet-stream")
        result = await post(client, server.url("/echo"), BIG, ["Content-Type: application/octet-stream"], timeout=20)
        assert result == (200, b"application/octet-stream|" + BIG, "application/octet-stream")
        status, body, kind = await get(client, server.url("/missing"))
        assert status == 404
        assert kind.startswith("text/html")
        for code in (500, 503, 200):
            assert await get(client, server.url(f"/status/{code}")) == (code, f"status {code}".encode(), "text/plain")
        assert server.connections == 1  # error statuses do not cost the connection


@pytest.mark.gen_test(timeout=30)
async def test_content_type_absent_lowercase_headers_and_whitespace():
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nCONTENT-TYPE:   text/html; charset=utf-8  \r\nContent-Length: 3\r\n\r\nabc",
        ]
    )
    async with raw_session(replying(lambda request: next(answers))) as (server, client):
        assert await get(client, server.url("/1")) == (200, b"ok", "")
        assert await get(client, server.url("/2")) == (201, b"{}", "application/json")
        assert await get(client, server.url("/3")) == (200, b"abc", "text/html; charset=utf-8")
        assert server.connections == 1  # lower-case content-length still frames the answer


# ---------------------------------------------------------------- 2. keep-alive


@pytest.mark.gen_test(timeout=30)
async def test_keep_alive_one_connection_per_server():
    with Server() as first, Server() as second, closing_client() as client:
        assert client.idle_connections == 0
        for n in range(4):
            assert await get(client, first.url(f"/echo?n={n}")) == echoed(f"n={n}")
        assert first.connections == 1
        assert client.idle_connections == 1
        for _ in range(3):
            assert (await get(client, second.url("/status/200")))[0] == 200
        assert (first.connections, second.connections) == (1, 1)
        assert client.idle_connections == 2
        assert (await get(client, first.url("/echo")))[0] == 200
        assert (first.connections, second.connections) == (1, 1)
        assert client.idle_connections == 2


@pytest.mark.gen_test(timeout=30)
async def test_keep_connections_caps_idle_connections():
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(Server()) for _ in range(3)]
        client = stack.enter_context(closing_client(keep_connections=1))
        for server in servers:
            assert (await get(client, server.url("/echo")))[0] == 200
        assert client.idle_connections == 1


# ---------------------------------------------------------------- 3. response framing


@pytest.mark.gen_test(timeout=30)
async def test_chunked_answers_reuse_the_connection():
    with tornado_session() as (server, client):
        for _ in range(3):
            assert await get(client, server.url("/chunked")) == (200, b"part0;part1;part2;part3;part4;", "text/plain")
        assert server.connections == 1
        assert client.idle_connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_chunk_extensions_and_trailers():
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;name=value\r\nWiki\r\n"
        b"5;a=b;c\r\npedia\r\n"
        b"E\r\n in\r\n\r\nchunks.\r\n"
        b"a\r\n0123456789\r\n"
        b"0;last=1\r\nExpires: never\r\nX-Trailer: yes\r\n\r\n"
    )
    async with raw_session(replying(chunked)) as (server, client):
        for _ in range(3):  # the trailers were consumed: the next answer parses on the same connection
            assert await get(client, server.url("/c")) == (200, b"Wikipedia in\r\n\r\nchunks.0123456789", "text/plain")
        assert server.connections == 1
        assert len(server.requests) == 3
        assert client.idle_connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_close_delimited_body_is_complete_and_not_reused():
    parts = [b"first part, ", b"second part, ", b"x" * 100_000, b" last part"]

    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n")
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.close()

    async with raw_session(handler) as (server, client):
        for expected_connections in (1, 2):
            assert await get(client, server.url("/stream")) == (200, b"".join(parts), "text/plain")
            assert server.connections == expected_connections
            assert client.idle_connections == 0


@pytest.mark.gen_test(timeout=30)
async def test_connection_close_header_is_honoured_even_if_server_keeps_the_socket_open():
    def closing_answer(number: int) -> bytes:
        return answer(f"answer {number}".encode(), headers=("Connection: close", "Content-Type: text/plain"))

    # a lazy server: it never closes; the client must not reuse this
    async with raw_session(replying_once(closing_answer)) as (server, client):
        assert await get(client, server.url("/a"), timeout=2) == (200, b"answer 1", "text/plain")
        assert client.idle_connections == 0
        assert await get(client, server.url("/b"), timeout=2) == (200, b"answer 2", "text/plain")
        assert server.connections == 2
        assert client.idle_connections == 0
        await asyncio.wait_for(server.eof_seen.wait(), 1)  # the client closed the connection it will not reuse


@pytest.mark.gen_test(timeout=30)
async def test_204_has_no_body_and_keeps_the_connection():
    def respond(request: Request) -> bytes:
        if request.line.startswith("GET /empty "):
            return b"HTTP/1.1 204 No Content\r\nServer: raw\r\n\r\n"
        return answer(b"full")

    async with raw_session(replying(respond)) as (server, client):
        started = time.monotonic()
        assert await get(client, server.url("/empty"), timeout=3) == (204, b"", "")
        assert time.monotonic() - started < 1  # did not wait for a body that never comes
        assert await get(client, server.url("/full")) == (200, b"full", "text/plain")
        assert await get(client, server.url("/empty"), timeout=3) == (204, b"", "")
        assert server.connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_head_answer_has_no_body():
    def respond(request: Request) -> bytes:
        if request.line.startswith("HEAD "):
            return b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: 1234\r\n\r\n"
        return answer(b"got")

    async with raw_session(replying(respond)) as (server, client):
        started = time.monotonic()
        result = await client.fetch(server.url("/h"), method="HEAD", connect_timeout=1, timeout=3)
        assert result == (200, b"", "text/xml")
        assert time.monotonic() - started < 1  # did not wait for the 1234 bytes a HEAD answer never has
        assert await get(client, server.url("/g")) == (200, b"got", "text/plain")
        assert server.requests[0].line == "HEAD /h HTTP/1.1"
        assert server.connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_answers_in_tiny_pieces():
    sized = answer(
        b"<response><returncode>SUCCESS</returncode></response>",
        headers=("Content-Type: text/xml;charset=utf-8", "Server: nginx", "X-Long-Header: " + "v" * 40),
    )
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n"
        b"000000f\r\n0123456789ABCDE\r\n"
        b"1\r\n!\r\n"
        b"0\r\nX-Trailer: t\r\n\r\n"
    )
    handler = replying(lambda request: chunked if "chunked" in request.line else sized, trickled=True)
    async with raw_session(handler) as (server, client):
        for _ in range(2):
            assert await get(client, server.url("/sized")) == (
                200,
                b"<response><returncode>SUCCESS</returncode></response>",
                "text/xml;charset=utf-8",
            )
            assert await get(client, server.url("/chunked")) == (
                200,
                b"abcdefghijklmnopqrstuvwxyz0123456789ABCDE!",
                "application/json",
            )
        assert server.connections == 1


@pytest.mark.gen_test(timeout=60)
async def test_large_bodies():
    with tornado_session() as (server, client):
        for path in ("/big", "/big?chunked=1", "/big"):
            status, body, kind = await get(client, server.url(path), timeout=20)
            assert (status, len(body), kind) == (200, len(BIG), "application/octet-stream")
            assert body == BIG
        assert server.connections == 1


# ---------------------------------------------------------------- 4. gzip, 5. 100 Continue


@pytest.mark.gen_test(timeout=30)
async def test_gzip_answers_are_decoded():
    with tornado_session() as (server, client):
        for path in ("/gzip", "/gzip?chunked=1", "/gzip"):
            assert await get(client, server.url(path)) == (200, XML, "application/xml")
        assert len(server.accept_encodings) == 3
        assert all("gzip" in accept for accept in server.accept_encodings)
        assert server.connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_deflate_answers_are_decoded_when_accepted():
    def respond(request: Request) -> bytes:
        if "deflate" in request.headers.get("accept-encoding", ""):
            return answer(zlib.compress(XML), headers=("Content-Type: text/xml", "Content-Encoding: deflate"))
        return answer(XML, headers=("Content-Type: text/xml",))

    async with raw_session(replying(respond)) as (server, client):
        assert await get(client, server.url("/d")) == (200, XML, "text/xml")


@pytest.mark.gen_test(timeout=30)
async def test_undecodable_gzip_is_an_error():
    packed = gzip.compress(XML)
    broken = packed[: len(packed) // 2]  # a truncated gzip stream, correctly framed by Content-Length
    broken_answer = answer(broken, headers=("Content-Type: text/xml", "Content-Encoding: gzip"))
    async with raw_session(replying_once(broken_answer)) as (server, client):
        await get_fails(client, server.url("/g"))
        await assert_recovered(client)


@pytest.mark.gen_test(timeout=30)
async def test_100_continue_is_skipped():
    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        while await server.read_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: yes\r\n\r\n" + answer(b"done"))
            await writer.drain()

    async with raw_session(handler) as (server, client):
        assert await post(client, server.url("/upload"), b"payload") == (200, b"done", "text/plain")
        assert await get(client, server.url("/next")) == (200, b"done", "text/plain")
        assert server.requests[0].body == b"payload"
        assert server.connections == 1


# ---------------------------------------------------------------- 6. stale keep-alive connections


@pytest.mark.gen_test(timeout=30)
async def test_server_closing_a_kept_alive_connection_after_its_answer():
    # keep-alive by default in HTTP/1.1, and then the server closes without reading more
    handler = replying_once(lambda number: answer(f"answer {number}".encode()), close=True)
    async with raw_session(handler) as (server, client):
        assert await get(client, server.url("/1")) == (200, b"answer 1", "text/plain")
        assert (await get(client, server.url("/2")))[:2] == (200, b"answer 2")  # right away: a race with the FIN
        await asyncio.sleep(0.1)
        assert client.idle_connections == 0  # the closed connection is no longer counted as reusable
        assert (await get(client, server.url("/3")))[:2] == (200, b"answer 3")  # the FIN surely arrived by now
        assert server.connections == 3


@pytest.mark.gen_test(timeout=30)
async def test_reused_connection_closed_before_any_answer_byte_is_retried_once():
    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        if number == 1:
            await server.read_request(reader)
            writer.write(answer(b"first"))
            await writer.drain()
            await server.read_request(reader)  # the next request arrives on the kept connection...
            writer.close()  # ...and the server closes it without a byte of answer
            return
        await server.answer_each(reader, writer, answer(b"fresh"))

    async with raw_session(handler) as (server, client):
        assert await get(client, server.url("/a")) == (200, b"first", "text/plain")
        assert await get(client, server.url("/b")) == (200, b"fresh", "text/plain")
        assert server.connections == 2
        assert [r.line for r in server.requests] == ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /b HTTP/1.1"]
        assert await get(client, server.url("/c")) == (200, b"fresh", "text/plain")
        assert server.connections == 2  # the fresh connection is kept


@pytest.mark.gen_test(timeout=30)
async def test_fresh_connection_closed_without_answer_is_an_error():
    async with raw_session(replying_once(b"", close=True)) as (server, client):
        _, elapsed = await get_fails(client, server.url("/x"))
        assert elapsed < 2
        assert server.connections <= 2  # no endless retrying
        await assert_recovered(client)


@pytest.mark.parametrize("how", ["fin", "rst"])
@pytest.mark.gen_test(timeout=30)
async def test_server_closing_right_after_accept_is_a_prompt_error(how: str):
    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        if how == "rst":
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # before the request arrives

    async with raw_session(handler) as (server, client):
        for _ in range(5):  # the close may overtake the request or follow it: both must fail fast
            message, elapsed = await get_fails(client, server.url("/x"), timeout=3)
            assert elapsed < 1.5, f"took until the timeout: {message}"
            assert "timed out" not in message
        await assert_recovered(client)


# ---------------------------------------------------------------- 7. errors


@pytest.mark.gen_test(timeout=30)
async def test_connection_refused():
    with closing_client() as client:
        _, elapsed = await get_fails(client, f"http://127.0.0.1:{closed_port()}/x")
        assert elapsed < 1
        await assert_recovered(client)


@pytest.mark.gen_test(timeout=30)
async def test_timeout_when_the_server_never_answers():
    async with raw_session(replying_once(b"")) as (server, client):  # reads the request, never answers
        message, elapsed = await get_fails(client, server.url("/never"), timeout=0.5)
        assert 0.45 <= elapsed < 0.5 + 1.5
        assert "timed out" in message
        await asyncio.wait_for(server.eof_seen.wait(), 1)  # the timed-out connection was closed
        await assert_recovered(client)


@pytest.mark.gen_test(timeout=30)
async def test_timeout_covers_a_body_that_trickles_forever():
    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):  # 1 byte every 0.1 s: always active, never complete within the timeout
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.1)

    async with raw_session(handler) as (server, client):
        message, elapsed = await get_fails(client, server.url("/trickle"), timeout=0.5)
        assert elapsed < 0.5 + 1.5
        assert "timed out" in message
        await assert_recovered(client)


MALFORMED = [
    b"HTTP/1.1 abc\r\n\r\n",
    b"hello\r\n\r\n",
    b"HTTP/1.1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabcde\r\n0\r\n\r\n",
]


@pytest.mark.parametrize(
    "garbage",
    MALFORMED,
    ids=["status-abc", "hello", "no-status", "length-abc", "length-negative", "chunk-size-zz", "chunk-size-negative"],
)
@pytest.mark.gen_test(timeout=30)
async def test_malformed_answer(garbage: bytes):
    # the server keeps the socket open: the client must notice the garbage itself
    await assert_broken_answer_fails_fast(garbage, close=False, within=1.5, eof=True)


HUGE_HEADER_BLOCKS = {  # never ended by an empty line
    "many-lines": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"p" * 100) for n in range(2000)),  # 230K
    "one-line": b"HTTP/1.1 200 OK\r\nX-Huge: " + b"h" * 300_000,
}


@pytest.mark.parametrize("shape", ["many-lines", "one-line"])
@pytest.mark.gen_test(timeout=30)
async def test_header_block_larger_than_64k(shape: str):
    await assert_broken_answer_fails_fast(HUGE_HEADER_BLOCKS[shape], close=False, within=2)


@pytest.mark.parametrize(
    "truncated",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n",
    ],
    ids=["content-length-body", "chunked-body", "header-block"],
)
@pytest.mark.gen_test(timeout=30)
async def test_server_closes_in_the_middle_of_an_answer(truncated: bytes):
    await assert_broken_answer_fails_fast(truncated, close=True, within=1.5)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x",
        "http:///x",
        "http://",
        "127.0.0.1/x",
        "",
        "http://127.0.0.1:notaport/x",
        "http://[::1/x",
        "http://127.0.0.1:0/x",
        "http://127.0.0.1:65536/x",
        "http://" + "a" * 64 + ".invalid/x",  # a DNS label over 63 characters: refused before any lookup
        "http://a\x00b/x",  # refused by getaddrinfo before any lookup
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_bad_urls(url: str):
    with closing_client() as client:
        await get_fails(client, url)
        await assert_recovered(client)


# ---------------------------------------------------------------- 8. max_connections


@pytest.mark.gen_test(timeout=30)
async def test_max_connections_limits_concurrent_requests():
    with tornado_session(max_connections=2) as (server, client):
        started = time.monotonic()
        results = await asyncio.gather(*(get(client, server.url(f"/sleep?t=0.3&n={n}")) for n in range(6)))
        elapsed = time.monotonic() - started
        assert results == [(200, f"slept {n}".encode(), "text/plain") for n in range(6)]
        assert server.requests == 6
        assert server.peak == 2  # never more than two at once, and two were used
        assert server.connections <= 2
        assert elapsed >= 0.85  # three rounds of 0.3 s
        assert client.idle_connections == server.connections


# ---------------------------------------------------------------- 9. cancellation


@pytest.mark.gen_test(timeout=30)
async def test_cancelled_fetch_closes_its_connection():
    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        if number == 1:
            await server.read_request(reader)
            await server.wait_for_eof(reader)  # slow: never answers the first connection
            return
        await server.answer_each(reader, writer, answer(b"fine"))

    async with raw_session(handler, max_connections=1) as (server, client):
        task = asyncio.ensure_future(get(client, server.url("/slow"), timeout=10))
        await asyncio.sleep(0.1)
        assert len(server.requests) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.idle_connections == 0
        await asyncio.wait_for(server.eof_seen.wait(), 1)  # the abandoned connection was closed
        # max_connections=1: this would hang if the cancelled fetch had kept its slot
        assert await asyncio.wait_for(get(client, server.url("/ok")), 3) == (200, b"fine", "text/plain")
        assert server.connections == 2
        assert client.idle_connections == 1


@pytest.mark.gen_test(timeout=30)
async def test_wait_for_timeout_around_fetch():
    with tornado_session(max_connections=1) as (server, client):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(get(client, server.url("/sleep?t=2")), 0.2)
        assert client.idle_connections == 0
        assert await asyncio.wait_for(get(client, server.url("/echo?x=1")), 3) == echoed("x=1")
        assert server.connections == 2


@pytest.mark.gen_test(timeout=30)
async def test_cancel_while_waiting_for_a_connection_slot():
    with tornado_session(max_connections=1) as (server, client):
        running = asyncio.ensure_future(get(client, server.url("/sleep?t=0.4&n=a")))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(get(client, server.url("/sleep?t=0&n=b")))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert await running == (200, b"slept a", "text/plain")
        assert await asyncio.wait_for(get(client, server.url("/sleep?t=0&n=c")), 3) == (200, b"slept c", "text/plain")
        assert server.requests == 2  # the cancelled request never reached the server


# ---------------------------------------------------------------- 10. close()


@pytest.mark.gen_test(timeout=30)
async def test_close_fails_a_fetch_in_progress_and_later_fetches():
    with tornado_session() as (server, client):
        task = asyncio.ensure_future(get(client, server.url("/sleep?t=3")))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        client.close()
        with pytest.raises(HttpError):
            await asyncio.wait_for(task, 2)
        assert time.monotonic() - started < 1
        await get_fails(client, server.url("/echo"))
        client.close()  # twice is fine
        await get_fails(client, server.url("/echo"))
        assert server.requests == 1


@pytest.mark.gen_test(timeout=30)
async def test_close_closes_idle_connections():
    async with raw_session(replying_once(answer(b"kept"))) as (server, client):
        assert await get(client, server.url("/x")) == (200, b"kept", "text/plain")
        assert client.idle_connections == 1
        client.close()
        await asyncio.wait_for(server.eof_seen.wait(), 1)
        assert client.idle_connections == 0


@pytest.mark.gen_test(timeout=30)
async def test_close_before_first_use():
    client = new_client()
    client.close()
    client.close()
    await get_fails(client, f"http://127.0.0.1:{closed_port()}/x")
    assert client.idle_connections == 0


# ---------------------------------------------------------------- TLS


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str]:
    """A self-signed certificate for IP 127.0.0.1 and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


@pytest.mark.gen_test(timeout=30)
async def test_https_with_ssl_context(tls_files: tuple[str, str]):
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with (
        Server(ssl_options=server_context) as server,
        closing_client(ssl_context=ssl.create_default_context(cafile=cert)) as trusting,
        closing_client() as default,
    ):
        for n in range(3):
            assert await get(trusting, server.url(f"/echo?n={n}")) == echoed(f"n={n}")
        assert server.connections == 1
        assert trusting.idle_connections == 1
        await get_fails(default, server.url("/echo"))  # the self-signed certificate is not trusted by default
        assert default.idle_connections == 0


# ---------------------------------------------------------------- uvloop, as in production


def test_under_uvloop():
    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        if number == 1:
            await server.read_request(reader)
            writer.write(answer(b"one"))
            await writer.drain()
            await server.read_request(reader)
            writer.close()  # stale: closes a reused connection before answering
            return
        while (request := await server.read_request(reader)) is not None:
            if "slow" in request.line:
                await server.wait_for_eof(reader)
                return
            await trickle(writer, answer(b"two", headers=("Content-Type: text/plain", "X-Pad: " + "p" * 30)))

    async def scenario() -> None:
        async with raw_session(handler, max_connections=1) as (server, client):
            assert await get(client, server.url("/1")) == (200, b"one", "text/plain")
            assert await get(client, server.url("/2")) == (200, b"two", "text/plain")
            assert await get(client, server.url("/3")) == (200, b"two", "text/plain")
            assert server.connections == 2
            assert client.idle_connections == 1
            await get_fails(client, f"http://127.0.0.1:{closed_port()}/x")
            task = asyncio.ensure_future(get(client, server.url("/slow")))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(server.eof_seen.wait(), 1)
            assert await asyncio.wait_for(get(client, server.url("/4")), 3) == (200, b"two", "text/plain")
            client.close()
            await get_fails(client, server.url("/5"))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(scenario())
