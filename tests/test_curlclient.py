"""The libcurl driver against a real local HTTP server."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from b3lb.curlclient import CurlClient, CurlError


class Echo(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "text/xml;charset=utf-8")
        self.finish(f"<r>{self.request.query}|{self.request.headers.get('User-Agent')}</r>")

    def post(self) -> None:
        self.set_header("Content-Type", "application/octet-stream")
        self.finish(self.request.headers.get("Content-Type", "").encode() + b"|" + self.request.body)


class Slow(RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(2)
        self.finish("late")


class Server:
    def __init__(self) -> None:
        self.connections = 0
        sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        self.http = HTTPServer(Application([(r"/echo", Echo), (r"/slow", Slow)]))
        original = self.http.handle_stream

        def counting(stream, address):  # noqa: ANN001, ANN202 - Tornado's signature
            self.connections += 1
            return original(stream, address)

        self.http.handle_stream = counting  # type: ignore[method-assign]
        self.http.add_sockets([sock])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.mark.gen_test(timeout=30)
async def test_get_post_and_keep_alive():
    server = Server()
    client = CurlClient(max_connections=4, user_agent="b3lb-test")
    try:
        for n in range(3):
            status, body, kind = await client.fetch(server.url(f"/echo?a=1%2B{n}&b"), connect_timeout=1, timeout=2)
            assert (status, body, kind) == (200, f"<r>a=1%2B{n}&b|b3lb-test</r>".encode(), "text/xml;charset=utf-8")
        status, body, _ = await client.fetch(server.url("/echo"), method="POST", body=b"<x/>",
                                             headers=["Content-Type: application/xml"], connect_timeout=1, timeout=2)
        assert (status, body) == (200, b"application/xml|<x/>")
        status, body, _ = await client.fetch(server.url("/echo?after=post"), connect_timeout=1, timeout=2)
        assert b"after=post" in body  # the handle went back to GET
        assert server.connections == 1  # one kept-alive connection for all five requests
        status, _, _ = await client.fetch(server.url("/missing"), connect_timeout=1, timeout=2)
        assert status == 404
    finally:
        client.close()
        server.http.stop()


@pytest.mark.gen_test(timeout=30)
async def test_refused_timeout_and_cancel():
    server = Server()
    client = CurlClient(max_connections=4, user_agent="b3lb-test")
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    try:
        with pytest.raises(CurlError):
            await client.fetch(f"http://127.0.0.1:{closed_port}/", connect_timeout=1, timeout=1)
        started = time.monotonic()
        with pytest.raises(CurlError):
            await client.fetch(server.url("/slow"), connect_timeout=1, timeout=0.3)
        assert time.monotonic() - started < 1.5
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(client.fetch(server.url("/slow"), connect_timeout=1, timeout=5), 0.2)
        status, _, _ = await client.fetch(server.url("/echo"), connect_timeout=1, timeout=2)
        assert status == 200  # still usable after a cancelled transfer
    finally:
        client.close()
        server.http.stop()
    with pytest.raises(CurlError):
        await client.fetch(server.url("/echo"), connect_timeout=1, timeout=1)
