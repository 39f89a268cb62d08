"""Request size limits and timeouts (b3lb/httplimits.py, the body checks in b3lb/lazyquery.py),
with raw sockets against the server `b3lb serve` runs: oversized requests get 414/431/413 with a
short text and Connection: close, stalled clients are dropped, and the server keeps serving."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import pytest
from api_helpers import xml
from tornado.httpclient import HTTPResponse

from b3lb.config import ConfigError, load_config
from b3lb.testing.harness import BASE_DOMAIN, Harness

HOST = f"abc.{BASE_DOMAIN}".encode()
# Short timeouts so that stalled clients are dropped within a test's patience.
QUICK = {"header_timeout": 0.5, "body_timeout": 0.8, "idle_timeout": 1.0}


@dataclass
class Answer:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False  # the server closed the connection after the answer


async def read_answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> Answer:
    """One answer (by Content-Length), then whether the server closed the connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    answer = Answer(status=int(lines[0].split()[1]))
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            answer.headers[name.strip().lower()] = value.strip()
    answer.body = await asyncio.wait_for(reader.readexactly(int(answer.headers.get("content-length", "0"))), timeout)
    if answer.headers.get("connection", "").lower() == "close":
        answer.closed = await asyncio.wait_for(reader.read(1), timeout) == b""
    return answer


async def send_and_read(port: int, data: bytes, *, body: bytes = b"") -> Answer:
    """Send `data`, then `body` while reading the answer (as a client that does not wait)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)

        async def send_body() -> None:
            if body:
                writer.write(body)
            try:
                await writer.drain()
            except ConnectionError:
                pass  # the server stopped reading: what matters is the answer it sent

        sending = asyncio.ensure_future(send_body())
        answer = await read_answer(reader)
        await asyncio.wait_for(sending, 5)
        return answer
    finally:
        writer.close()


async def closed_after(port: int, data: bytes, *, trickle: bytes = b"", every: float = 0.1) -> float:
    """Seconds until the server closes a connection that sent `data` (then `trickle` repeatedly)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(data)
        while time.monotonic() - started < 10:
            try:
                if await asyncio.wait_for(reader.read(65536), every) == b"":
                    return time.monotonic() - started
            except TimeoutError:
                pass
            except ConnectionError:
                return time.monotonic() - started
            if trickle:
                writer.write(trickle)
        return time.monotonic() - started
    finally:
        writer.close()


def request(method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST.decode()}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def assert_success(response: HTTPResponse) -> None:
    assert response.code == 200 and xml(response).findtext("returncode") == "SUCCESS", response.body


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "b3lb.http"]


def assert_no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


async def still_serving(h: Harness) -> None:
    assert_success(await h.call("getMeetings"))
    r = await h.request("/b3lb/ping")
    assert (r.code, r.body) == (200, b"OK!")


@pytest.mark.gen_test(timeout=30)
async def test_a_long_request_line_is_answered_414(db_url, caplog):
    caplog.set_level(logging.INFO)
    async with Harness(db_url, nodes=1) as h:
        target = "/bigbluebutton/api/getMeetings?welcome=" + "w" * (1024 * 1024)
        answer = await send_and_read(h.port, request("GET", target))
        assert answer.status == 414 and answer.closed
        assert answer.headers["connection"] == "close"
        assert answer.headers["content-type"].startswith("text/plain")
        assert answer.body.startswith(b"URI Too Long")
        # a long create URL within the limit still works
        assert_success(await h.call("create", "meetingID=long&name=Long&welcome=" + "w" * 40_000))
        await still_serving(h)
        lines = refusals(caplog)
        assert len(lines) == 1 and lines[0].getMessage().startswith("414 URI Too Long")
        assert "wwww" not in lines[0].getMessage()  # no query string in the log
        assert_no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=30)
async def test_big_headers_are_answered_431(db_url, caplog):
    caplog.set_level(logging.INFO)
    async with Harness(db_url, nodes=1) as h:
        headers = [f"X-Filler-{n}: {'h' * 1000}" for n in range(100)]  # 100 KB of headers
        answer = await send_and_read(h.port, request("GET", "/bigbluebutton/api/getMeetings?secret=x", *headers))
        assert answer.status == 431 and answer.closed
        assert answer.body.startswith(b"Request Header Fields Too Large")
        # one header of 128 KiB: the same
        answer = await send_and_read(h.port, request("GET", "/b3lb/ping", "X-Huge: " + "h" * 128 * 1024))
        assert answer.status == 431 and answer.closed
        await still_serving(h)
        lines = [r.getMessage() for r in refusals(caplog)]
        assert len(lines) == 2 and all(line.startswith("431 ") for line in lines)
        assert "GET /bigbluebutton/api/getMeetings" in lines[0] and "secret=x" not in lines[0]
        assert_no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=30)
async def test_a_declared_body_over_the_limit_is_answered_413_before_it_is_sent(db_url, caplog):
    caplog.set_level(logging.INFO)
    async with Harness(db_url, nodes=1) as h:
        query = h.signed("create", "meetingID=big&name=Big", h.secret())
        head = request("POST", f"/bigbluebutton/api/create?{query}", "Content-Type: application/xml",
                       "Content-Length: 5000000")
        answer = await send_and_read(h.port, head)  # the body is never sent
        assert answer.status == 413 and answer.closed
        assert answer.headers["connection"] == "close" and answer.body.startswith(b"Content Too Large")
        # a client that sends the body anyway still reads the answer (no reset)
        answer = await send_and_read(h.port, head, body=b"x" * 5_000_000)
        assert answer.status == 413 and answer.closed
        # a client that asks first gets the 413 instead of "100 Continue"
        answer = await send_and_read(h.port, head[:-2] + b"Expect: 100-continue\r\n\r\n")
        assert answer.status == 413
        # on any path, e.g. one served by a RequestHandler
        answer = await send_and_read(h.port, request("POST", "/b3lb/b/meeting/end", "Content-Length: 99999999"))
        assert answer.status == 413
        answer = await send_and_read(h.port, request("POST", "/b3lb/ping", "Content-Length: " + "9" * 5000))
        assert answer.status == 413  # more digits than int() takes: still a plain 413
        assert "big" not in h.fleet.nodes[0].meetings
        await still_serving(h)
        assert len(refusals(caplog)) == 5
        assert_no_tracebacks(caplog)


def chunked(body: bytes, size: int = 16 * 1024) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.gen_test(timeout=30)
async def test_a_chunked_body_over_the_limit_is_answered_413(db_url, caplog):
    caplog.set_level(logging.INFO)
    async with Harness(db_url, nodes=1, server={"max_body_size": 64 * 1024}) as h:
        query = h.signed("create", "meetingID=chunky&name=Chunky", h.secret())
        head = request("POST", f"/bigbluebutton/api/create?{query}", "Content-Type: application/xml",
                       "Transfer-Encoding: chunked")
        document = b"<modules><module name='presentation'></module></modules>"
        answer = await send_and_read(h.port, head, body=chunked(document + b" " * 200_000))
        assert answer.status == 413 and answer.closed and answer.body.startswith(b"Content Too Large")
        assert "chunky" not in h.fleet.nodes[0].meetings
        # one chunk that declares more than the limit, sent in part: the same
        answer = await send_and_read(h.port, head, body=b"100000\r\n" + b"y" * 100_000)
        assert answer.status == 413
        # a chunked body within the limit is served
        answer = await send_and_read(h.port, head, body=chunked(document + b" " * 30_000))
        assert answer.status == 200 and b"<returncode>SUCCESS</returncode>" in answer.body
        await still_serving(h)
        assert len(refusals(caplog)) == 2
        assert_no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=30)
async def test_stalled_clients_are_dropped(db_url, caplog):
    caplog.set_level(logging.INFO)
    async with Harness(db_url, nodes=1, server=QUICK) as h:
        # a body that stops halfway: closed after body_timeout
        stalled = request("POST", "/b3lb/b/meeting/end", "Content-Length: 1000") + b"x" * 100
        assert 0.6 < await closed_after(h.port, stalled) < 2.5
        # slowloris: a header line every 0.1 s never completes the head; closed after header_timeout
        assert 0.4 < await closed_after(h.port, b"GET /b3lb/ping HTTP/1.1\r\n", trickle=b"X-A: b\r\n") < 2.0
        # a connection that never sends a request: closed after idle_timeout
        assert 0.8 < await closed_after(h.port, b"") < 3.0
        await still_serving(h)
        assert_no_tracebacks(caplog)


@pytest.mark.gen_test(timeout=30)
async def test_kept_alive_and_pipelined_requests_still_work(db_url):
    async with Harness(db_url, nodes=1, server=QUICK) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.port)
        try:
            ping = b"GET /b3lb/ping HTTP/1.1\r\nHost: " + BASE_DOMAIN.encode() + b"\r\n\r\n"
            for _ in range(3):  # one at a time, with pauses shorter than idle_timeout
                writer.write(ping)
                answer = await read_answer(reader)
                assert (answer.status, answer.body) == (200, b"OK!")
                await asyncio.sleep(0.3)
            writer.write(ping * 3)  # pipelined
            for _ in range(3):
                assert (await read_answer(reader)).body == b"OK!"
            # a head that arrives in pieces, each within header_timeout of the first byte
            for piece in (b"GET /b3lb/ping HTTP/1.1\r\n", b"Host: " + BASE_DOMAIN.encode() + b"\r\n", b"\r\n"):
                writer.write(piece)
                await asyncio.sleep(0.1)
            assert (await read_answer(reader)).body == b"OK!"
            # then idle: the server closes the connection
            assert await asyncio.wait_for(reader.read(1), 3) == b""
        finally:
            writer.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_small_server_limit_and_the_exact_edges(db_url):
    """max_header_size counts the request line and headers up to the blank line."""
    async with Harness(db_url, nodes=1, server={"max_header_size": 2048}) as h:
        base = b"GET /b3lb/ping HTTP/1.1\r\nHost: " + BASE_DOMAIN.encode() + b"\r\nX-Pad: "
        fits = base + b"p" * (2048 - len(base) - 4) + b"\r\n\r\n"
        assert len(fits) == 2048
        assert (await send_and_read(h.port, fits + b"GET /b3lb/ping HTTP/1.1\r\nHost: x\r\nConnection: close"
                                    b"\r\n\r\n")).status == 200
        too_long = base + b"p" * (2048 - len(base) - 3) + b"\r\n\r\n"
        assert (await send_and_read(h.port, too_long)).status == 431
        assert (await send_and_read(h.port, b"GET /" + b"a" * 2100 + b" HTTP/1.1\r\n\r\n")).status == 414


def test_limit_settings_have_defaults_and_are_validated():
    server = load_config(env={}).server
    assert (server.header_timeout, server.body_timeout, server.idle_timeout) == (10.0, 30.0, 60.0)
    assert load_config(env={"B3LB_SERVER_IDLE_TIMEOUT": "5"}).server.idle_timeout == 5.0
    for name, value in (("HEADER_TIMEOUT", "0"), ("BODY_TIMEOUT", "-1"), ("IDLE_TIMEOUT", "0"),
                        ("MAX_HEADER_SIZE", "100"), ("MAX_BODY_SIZE", "-1")):
        with pytest.raises(ConfigError, match=f"server.*{name.lower()}"):
            load_config(env={f"B3LB_SERVER_{name}": value})


def test_server_connections_keep_nagle_off_for_their_life():
    """TCP_NODELAY is set when a connection starts; Tornado's per-answer toggling no longer
    reaches the socket (two setsockopt calls per request saved)."""
    import socket

    from tornado.http1connection import HTTP1ConnectionParameters
    from tornado.iostream import IOStream

    from b3lb.httplimits import LimitedServerConnection, Limits

    async def main() -> tuple[int, int]:
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        try:
            stream = IOStream(server_side)
            config = load_config(None)
            LimitedServerConnection(stream, HTTP1ConnectionParameters(), None, Limits.from_config(config.server))
            at_start = server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            stream.set_nodelay(False)  # what Tornado's HTTP1Connection does after every answer
            after_answer = server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            stream.close()
            return at_start, after_answer
        finally:
            client.close()
            listener.close()

    assert asyncio.run(main()) == (1, 1)
