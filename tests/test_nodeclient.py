"""The node client (b3lb.nodeclient, on aiohttp) against real, sometimes misbehaving, servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme
import uvloop

from b3lb.config import ApiConfig, CallbacksConfig
from b3lb.nodeclient import POLL_RECEIVE_BUFFER, USER_AGENT, NodeClient, NodeRequestError, NodeResponse
from b3lb.urlguard import URLRefused

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[["RawServer", Reader, Writer, int], Awaitable[None]]  # server, reader, writer, connection no.
MIB = 1024 * 1024


@dataclass
class Request:
    line: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class RawServer:
    """asyncio.start_server on 127.0.0.1 whose handler writes exact bytes; records connections and requests."""

    handler: Handler
    tls: ssl.SSLContext | None = None
    connections: int = 0
    active: int = 0
    peak: int = 0
    requests: list[Request] = field(default_factory=list)
    writers: list[Writer] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    port: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def url(self, path: str = "/") -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: Reader, writer: Writer) -> None:
        self.connections += 1
        self.writers.append(writer)
        self.tasks.append(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self.handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
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
        headers = {n.strip().lower(): v.strip() for n, _, v in (line.partition(":") for line in lines[1:])}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request = Request(lines[0], headers, body)
        self.requests.append(request)
        return request

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in self.writers:
            writer.close()
        for task in self.tasks:  # handlers still holding a connection open
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def answer(body: bytes, *, status: str = "200 OK", headers: tuple[str, ...] = ("Content-Type: text/plain",)) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def chunked(body: bytes, piece: int = 16384) -> bytes:
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + piece]), body[i : i + piece])
                      for i in range(0, len(body), piece))
    return chunks + b"0\r\n\r\n"


def replying(respond: bytes | Callable[[Request], bytes], *, delay: float = 0.0) -> Handler:
    """Answer every request on a connection (those for /slow... after `delay` seconds), tracking requests in
    progress."""

    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        while (request := await server.read_request(reader)) is not None:
            server.active += 1
            server.peak = max(server.peak, server.active)
            await asyncio.sleep(delay if "slow" in request.line else 0)
            server.active -= 1
            writer.write(respond if isinstance(respond, bytes) else respond(request))
            await writer.drain()

    return handler


def read_then(data: bytes = b"", *, hold: float = 0.0) -> Handler:
    """Read one request, write `data`, hold the connection `hold` seconds, close it."""

    async def handler(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        writer.write(data)
        await writer.drain()
        await asyncio.sleep(hold)

    return handler


def api(**overrides: object) -> ApiConfig:
    return ApiConfig(**{"node_connect_timeout": 1.0, "node_request_timeout": 3.0, **overrides})  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def session(
    handler: Handler, *, tls: ssl.SSLContext | None = None, callbacks: CallbacksConfig | None = None,
    ssl_context: ssl.SSLContext | None = None, **overrides: object
) -> AsyncIterator[tuple[RawServer, NodeClient]]:
    server = await RawServer(handler, tls=tls).start()
    client = NodeClient(api(**overrides), callbacks, ssl_context=ssl_context)
    try:
        yield server, client
    finally:
        await client.aclose()
        await server.stop()


async def fails(client: NodeClient, url: str, kind: str, **kwargs: object) -> tuple[str, float]:
    """A fetch that must fail with `kind`: its reason, and the seconds it took."""
    started = time.monotonic()
    with pytest.raises(NodeRequestError) as error:
        await client.fetch(url, **kwargs)  # type: ignore[arg-type]
    reason = str(error.value)
    assert error.value.kind == kind, reason
    assert 0 < len(reason) < 120 and "\n" not in reason and "checksum" not in reason  # short, no query string
    return reason, time.monotonic() - started


# ---------------------------------------------------------------- requests, keep-alive, limits (point 6)


@pytest.mark.gen_test(timeout=30)
async def test_requests_go_out_unchanged_on_one_kept_alive_connection():
    def respond(request: Request) -> bytes:
        if request.line.startswith("POST"):
            return answer(b"<response/>", headers=("Content-Type: text/xml;charset=utf-8",))
        return answer(b"ok", headers=()) if "bare" in request.line else answer(b"ok")

    async with session(replying(respond)) as (server, client):
        paths = ("/echo?a=1%2B0&b", "/bigbluebutton/api/getMeetings?checksum=ab%20c&x=%7E~'&=v", "/p/a%2Fb;x=1")
        for path in paths:
            assert await client.fetch(server.url(path)) == NodeResponse(200, b"ok", "text/plain")
        assert await client.fetch(server.url("/bare")) == NodeResponse(200, b"ok", "text/xml")  # none: BBB's
        result = await client.fetch(server.url("/api/create?meetingID=m%201"), method="POST", body=b"<modules/>",
                                    content_type="application/xml")
        assert result == NodeResponse(200, b"<response/>", "text/xml;charset=utf-8")
        assert [r.line for r in server.requests] == [
            *(f"GET {p} HTTP/1.1" for p in paths), "GET /bare HTTP/1.1", "POST /api/create?meetingID=m%201 HTTP/1.1"
        ]
        assert server.requests[-1].body == b"<modules/>"
        assert server.requests[-1].headers["content-type"] == "application/xml"
        for request in server.requests:
            assert request.headers["user-agent"] == USER_AGENT
            assert request.headers["host"] == f"127.0.0.1:{server.port}"
            assert request.headers["accept-encoding"] == "gzip, deflate"
        assert server.connections == 1  # kept alive


@pytest.mark.gen_test(timeout=30)
async def test_redirects_are_answers_not_followed():
    async with session(replying(answer(b"", status="302 Found", headers=("Location: /elsewhere",)))) as (s, client):
        assert (await client.fetch(s.url("/x"))).code == 302
        assert [r.line for r in s.requests] == ["GET /x HTTP/1.1"]


@pytest.mark.gen_test(timeout=30)
async def test_max_node_connections_bounds_each_pool():
    async with session(replying(answer(b"ok"), delay=0.2), max_node_connections=2) as (server, client):
        for purpose in ("api", "poll"):
            server.peak = 0
            results = await asyncio.gather(*(client.fetch(server.url(f"/slow{n}"), purpose=purpose)
                                              for n in range(6)))
            assert [r.body for r in results] == [b"ok"] * 6
            assert server.peak == 2
        assert server.connections == 4  # two per pool, each kept and reused
        with pytest.raises(ValueError):
            await client.fetch(server.url("/x"), purpose="callback")  # tenant URLs only via fetch_callback


# ---------------------------------------------------------------- separate pools and "local" (points 1, 2)


@pytest.mark.gen_test(timeout=30)
async def test_pools_are_separate_and_a_full_pool_fails_locally():
    loopback = CallbacksConfig(allowed_networks=["127.0.0.0/8"])
    async with session(replying(answer(b"ok"), delay=1.0), max_node_connections=1, callbacks=loopback) as (s, client):
        busy = asyncio.ensure_future(client.fetch(s.url("/slow")))  # holds the api pool's only slot
        await asyncio.sleep(0.1)
        assert (await client.fetch(s.url("/fast"), purpose="poll")).body == b"ok"  # polls have their own pool
        assert await client.fetch_callback(s.url("/fast"), timeout=2) == 200  # so have tenant callbacks
        reason, elapsed = await fails(client, s.url("/fast"), "local", timeout=0.3)
        assert "slot" in reason and 0.25 < elapsed < 0.9
        waiting = asyncio.ensure_future(client.fetch(s.url("/fast"), timeout=3))  # gets the slot when it frees
        assert (await busy).body == b"ok"
        assert (await waiting).body == b"ok"
        assert [r.line for r in s.requests].count("GET /fast HTTP/1.1") == 3  # the refused one never went out
        assert s.connections == 3  # api, poll and callback connections are never shared


# ---------------------------------------------------------------- tenant callbacks: POST (recording ready)


@pytest.mark.gen_test(timeout=30)
async def test_post_callback_sends_the_form_once_and_follows_no_redirect():
    def respond(request: Request) -> bytes:
        if "moved" in request.line:
            return answer(b"", status="302 Found", headers=("Location: /elsewhere",))
        return answer(b"nope", status="500 Internal Server Error") if "fail" in request.line else answer(b"ok")

    loopback = CallbacksConfig(allowed_networks=["127.0.0.0/8"])
    async with session(replying(respond), callbacks=loopback) as (server, client):
        form = "application/x-www-form-urlencoded"
        for path, code in (("/ready?token=a%20b", 200), ("/moved", 302), ("/fail", 500)):
            assert await client.post_callback(server.url(path), b"signed_parameters=x.y.z", form, timeout=2) == code
        assert [r.line for r in server.requests] == [
            "POST /ready?token=a%20b HTTP/1.1", "POST /moved HTTP/1.1", "POST /fail HTTP/1.1"]  # no redirect
        for request in server.requests:
            assert request.body == b"signed_parameters=x.y.z" and request.headers["content-type"] == form
            assert request.headers["user-agent"] == USER_AGENT
    async with session(read_then(), callbacks=loopback) as (server, client):
        with pytest.raises(NodeRequestError) as error:
            await client.post_callback(server.url("/ready"), b"x", "text/plain", timeout=2)
        assert error.value.kind == "reset"
        assert [r.line for r in server.requests] == ["POST /ready HTTP/1.1"]  # never sent twice


@pytest.mark.gen_test(timeout=30)
async def test_post_callback_refuses_what_the_guard_refuses_before_sending():
    async with session(replying(answer(b"ok"))) as (server, client):  # no allowed_networks
        for url in (server.url("/ready"), f"http://localhost:{server.port}/ready", "ftp://example.org/",
                    "http://user:pw@example.org/", "http://[oops/"):
            with pytest.raises(URLRefused):
                await client.post_callback(url, b"x", "application/x-www-form-urlencoded", timeout=2)
        assert server.requests == [] and server.connections == 0


# ---------------------------------------------------------------- kinds of failure (point 2)


@pytest.mark.gen_test(timeout=30)
async def test_connect_failures_never_reached_the_node():
    async with session(read_then(hold=5)) as (server, client):
        unused = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = unused.sockets[0].getsockname()[1]
        unused.close()
        await unused.wait_closed()
        await fails(client, f"http://127.0.0.1:{port}/x?checksum=1", "connect")  # refused
        await fails(client, "http://[not-an-address/x", "connect")
        # TLS to a server that never answers the handshake: the connect timeout, not the request's.
        reason, elapsed = await fails(client, f"https://127.0.0.1:{server.port}/x", "connect", timeout=5)
        assert elapsed < 2.5 and server.requests == []


@pytest.mark.gen_test(timeout=30)
async def test_connection_closed_before_the_answer_is_a_reset():
    async with session(read_then()) as (server, client):
        await fails(client, server.url("/get"), "reset")
        assert [r.line for r in server.requests] == ["GET /get HTTP/1.1"] * 2  # idempotent: tried again once
        server.requests.clear()
        await fails(client, server.url("/create"), "reset", method="POST", body=b"x")
        assert [r.line for r in server.requests] == ["POST /create HTTP/1.1"]  # never twice


@pytest.mark.gen_test(timeout=30)
async def test_no_answer_in_time_is_a_timeout():
    async def trickling(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        for _ in range(100):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.05)

    async with session(read_then(hold=5), node_request_timeout=0.4) as (server, client):
        _, elapsed = await fails(client, server.url("/x"), "timeout")  # the configured default
        assert 0.35 < elapsed < 1.5
        _, elapsed = await fails(client, server.url("/x"), "timeout", method="POST", body=b"", timeout=0.2)
        assert 0.15 < elapsed < 1.0
    async with session(trickling) as (server, client):
        _, elapsed = await fails(client, server.url("/x"), "timeout", timeout=0.5)  # a body that never ends
        assert elapsed < 1.5


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.1 abc\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",  # chunk without its CRLF
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",  # bad chunk size
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 9\r\n\r\nnot gzip!",
], ids=["status", "not-http", "long-header", "chunk-crlf", "chunk-size", "bad-gzip"])
@pytest.mark.gen_test(timeout=30)
async def test_malformed_answers(garbage: bytes):
    async with session(read_then(garbage, hold=0.5)) as (server, client):
        _, elapsed = await fails(client, server.url("/x"), "answer", method="POST", body=b"")
        assert elapsed < 0.45  # noticed at once, not when the server closes or at the timeout
        assert len(server.requests) == 1


@pytest.mark.gen_test(timeout=30)
async def test_answer_cut_short_by_the_node():
    async with session(read_then(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nonly this")) as (server, client):
        await fails(client, server.url("/x"), "answer")
        assert len(server.requests) == 1  # an answer had begun: not retried


# ---------------------------------------------------------------- answer size caps (point 3)


def peak_bytes_during(coroutine: Awaitable[object]) -> Awaitable[int]:
    async def measured() -> int:
        tracemalloc.start()
        try:
            await coroutine
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        return peak

    return measured()


@pytest.mark.gen_test(timeout=60)
async def test_announced_length_above_the_cap_fails_without_reading():
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {200 * MIB}\r\n\r\n".encode()
    async with session(read_then(head + b"x" * 65536, hold=3), max_node_answer_bytes=MIB) as (server, client):
        reason, elapsed = await fails(client, server.url("/x"), "answer")
        assert elapsed < 1 and str(200 * MIB) in reason


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
@pytest.mark.gen_test(timeout=60)
async def test_streamed_answer_above_the_cap_fails_within_the_cap(framing: str):
    piece = b"y" * 65536

    async def endless(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        framed = piece if framing == "close-delimited" else b"%x\r\n%s\r\n" % (len(piece), piece)
        framing_header = b"Transfer-Encoding: chunked" if framing == "chunked" else b"Connection: close"
        writer.write(b"HTTP/1.1 200 OK\r\n" + framing_header + b"\r\n\r\n")
        for _ in range(16 * MIB // len(piece)):  # 16 MiB unless the client gives up first
            writer.write(framed)
            await writer.drain()

    async with session(endless, max_node_answer_bytes=MIB) as (server, client):
        peak = await peak_bytes_during(fails(client, server.url("/x"), "answer"))
        assert peak < 4 * MIB  # the 1 MiB cap plus aiohttp's bounded buffers, not the 16/64 MiB sent


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
@pytest.mark.gen_test(timeout=60)
async def test_compression_bomb_fails_within_the_cap(encoding: str, framing: str):
    bomb = gzip.compress(bytes(64 * MIB)) if encoding == "gzip" else zlib.compress(bytes(64 * MIB), 9)
    assert len(bomb) < 100_000
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\n"
    data = (head + f"Content-Length: {len(bomb)}\r\n\r\n").encode() + bomb if framing == "length" else \
        (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + chunked(bomb)
    async with session(read_then(data, hold=3), max_node_answer_bytes=MIB) as (server, client):
        peak = await peak_bytes_during(fails(client, server.url("/x"), "answer"))
        assert peak < 4 * MIB  # the 1 MiB cap plus aiohttp's bounded buffers, not the 16/64 MiB sent


@pytest.mark.gen_test(timeout=30)
async def test_compressed_and_plain_answers_up_to_the_cap_work():
    cap = 256 * 1024
    exact = bytes(range(256)) * (cap // 256)
    bodies = {"/gzip": gzip.compress(exact), "/deflate": zlib.compress(exact),
              "/raw-deflate": zlib.compress(exact)[2:-4], "/plain": exact}

    def respond(request: Request) -> bytes:
        target = request.line.split()[1]
        path = target.split("?")[0]
        if path == "/over":
            return answer(exact + b"!")
        encoding = path.strip("/").replace("raw-", "")
        headers = ("Content-Type: text/xml", f"Content-Encoding: {encoding}") if path != "/plain" else ()
        if "chunked" in target:
            return ("\r\n".join(("HTTP/1.1 200 OK", *headers, "Transfer-Encoding: chunked")) + "\r\n\r\n").encode() \
                + chunked(bodies[path])
        return answer(bodies[path], headers=headers)

    async with session(replying(respond), max_node_answer_bytes=cap) as (server, client):
        for path in bodies:
            for query in ("", "?chunked=1"):
                assert (await client.fetch(server.url(path + query))).body == exact, path + query
        await fails(client, server.url("/over"), "answer")
        assert (await client.fetch(server.url("/plain"))).body == exact  # still fine afterwards


# ---------------------------------------------------------------- stale kept connections (point 4)


@pytest.mark.gen_test(timeout=30)
async def test_stale_kept_connection_retries_get_but_never_post():
    async def closes_second_request(server: RawServer, reader: Reader, writer: Writer, number: int) -> None:
        await server.read_request(reader)
        writer.write(answer(b"first"))
        await writer.drain()
        await server.read_request(reader)  # the kept connection's next request arrives... and the node closes
        if number > 1:  # a retry on a new connection is answered
            writer.write(answer(b"again"))
            await writer.drain()
            await server.read_request(reader)

    async with session(closes_second_request) as (server, client):
        assert (await client.fetch(server.url("/1"))).body == b"first"
        assert (await client.fetch(server.url("/2"))).body == b"first"  # retried on a new connection
        assert [r.line for r in server.requests] == ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /2 HTTP/1.1"]
        assert server.connections == 2
    async with session(closes_second_request) as (server, client):
        assert (await client.fetch(server.url("/1"))).body == b"first"
        await fails(client, server.url("/create"), "reset", method="POST", body=b"meeting")
        assert [r.line for r in server.requests] == ["GET /1 HTTP/1.1", "POST /create HTTP/1.1"]
        assert server.connections == 1  # the POST was sent once, on the stale connection only


# ---------------------------------------------------------------- TLS (point 5)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.mark.gen_test(timeout=30)
async def test_tls_is_verified_against_the_system_cas_unless_given_a_ca(ca: trustme.CA, tmp_path: Path):
    tls = server_tls(ca, "127.0.0.1")
    async with session(replying(answer(b"secure")), tls=tls) as (server, client):
        reason, _ = await fails(client, server.url("/x"), "connect")
        assert "TLS" in reason and server.requests == []
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with session(replying(answer(b"secure")), tls=tls, ssl_context=trusting) as (server, client):
        for _ in range(3):
            assert (await client.fetch(server.url("/x"), purpose="poll")).body == b"secure"
        assert server.connections == 1
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with session(replying(answer(b"secure")), tls=tls, node_ca_file=str(ca_file)) as (server, client):
        assert (await client.fetch(server.url("/x"))).body == b"secure"
    # Built ahead in a thread (Runtime.start), the same context then serves every pool.
    async with session(replying(answer(b"secure")), tls=tls, node_ca_file=str(ca_file)) as (server, client):
        assert client.ssl_context is None
        await client.prepare()
        prepared = client.ssl_context
        assert isinstance(prepared, ssl.SSLContext)
        assert (await client.fetch(server.url("/x"), purpose="poll")).body == b"secure"
        assert client.ssl_context is prepared
    # A trusted CA, but a certificate for another name.
    async with session(replying(answer(b"x")), tls=server_tls(ca, "node.example"), ssl_context=trusting) as (s, c):
        await fails(c, s.url("/x"), "connect")


# ---------------------------------------------------------------- uvloop, as in production


def test_under_uvloop_with_a_client_made_outside_the_loop():
    client = NodeClient(api(max_node_connections=1))  # sessions are made lazily, inside the running loop

    async def scenario() -> None:
        server = await RawServer(replying(answer(b"ok"))).start()
        try:
            for purpose in ("api", "poll", "api"):
                assert (await client.fetch(server.url("/x"), purpose=purpose)).body == b"ok"
            assert server.connections == 2
            await client.aclose()
            await fails(client, server.url("/x"), "local")
        finally:
            await server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert isinstance(runner.get_loop(), uvloop.Loop)
        runner.run(scenario())


@pytest.mark.gen_test(timeout=30)
async def test_poll_connections_have_a_small_receive_buffer_and_api_ones_the_default():
    """Poll answers land in a capped kernel buffer (nodeclient.POLL_RECEIVE_BUFFER says why); a poll
    answer bigger than that buffer still arrives whole."""
    big = b"<response>" + b"x" * 600_000 + b"</response>"
    async with session(replying(answer(big))) as (server, client):
        assert (await client.fetch(server.url("/p"), purpose="poll")).body == big
        assert (await client.fetch(server.url("/a"), purpose="api")).body == big

        def receive_buffers(purpose: str) -> list[int]:
            connector = client._pools[purpose].session.connector
            assert connector is not None
            return [proto.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                    for conns in connector._conns.values() for proto, _ in conns]

        poll, api_ = receive_buffers("poll"), receive_buffers("api")
        assert poll == [2 * POLL_RECEIVE_BUFFER]  # Linux doubles the value it is given
        assert len(api_) == 1 and api_[0] > 2 * POLL_RECEIVE_BUFFER
