"""The yardsticks: hello-world servers that every scenario's req/s is compared with, in the same run.

`python -m benchmarks.yardstick --kind KIND --port P` serves `Hello, world` until SIGTERM:

- `delegate` (yardstick (a)): built exactly like b3lb's API path: `b3lb.httplimits.make_http_server`
  with the [server] settings of conf/b3lb.conf (what the server under test loads), an application
  whose `start_request` returns an `HTTPMessageDelegate` that writes the answer straight to the
  connection (as `b3lb.api.handler.ApiExchange._write` does: Date, Content-Type, Cache-Control,
  Content-Length), on uvloop. Nothing b3lb does per request is in it: the physical limit of the stack.
- `uvicorn` (yardstick (b)): an ASGI hello-world on uvicorn with httptools and uvloop, access log
  off: what a user could pick instead of Tornado.
- `handler`: a Tornado `RequestHandler` hello-world (the ceiling of the earlier harness); only an
  informative row, measured once per run.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
from collections.abc import Awaitable
from email.utils import formatdate
from typing import Any

import uvloop
from tornado.httputil import (
    HTTPConnection,
    HTTPHeaders,
    HTTPMessageDelegate,
    HTTPServerConnectionDelegate,
    RequestStartLine,
    ResponseStartLine,
)

from benchmarks.common import REPO

BODY = b"Hello, world"
KINDS = ("delegate", "uvicorn", "handler")
_DATE: list[Any] = [0, ""]


def _http_date() -> str:
    now = int(time.time())
    if now != _DATE[0]:
        _DATE[0], _DATE[1] = now, formatdate(now, usegmt=True)
    return str(_DATE[1])


class HelloDelegate(HTTPMessageDelegate):
    """One request: the answer is written when the request is complete, no handler object."""

    __slots__ = ("connection",)

    def __init__(self, connection: HTTPConnection) -> None:
        self.connection = connection

    def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> Awaitable[None] | None:
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return None

    def finish(self) -> None:
        headers = HTTPHeaders()
        headers["Date"] = _http_date()
        headers["Content-Type"] = "text/plain; charset=utf-8"
        headers["Cache-Control"] = "no-cache"
        headers["Content-Length"] = str(len(BODY))
        self.connection.write_headers(ResponseStartLine("HTTP/1.1", 200, "OK"), headers, BODY)
        self.connection.finish()

    def on_connection_close(self) -> None:
        pass


class HelloApplication(HTTPServerConnectionDelegate):
    def start_request(self, server_conn: object, request_conn: HTTPConnection) -> HTTPMessageDelegate:
        return HelloDelegate(request_conn)

    def on_close(self, server_conn: object) -> None:
        pass


async def _serve_tornado(kind: str, port: int, address: str) -> None:
    if kind == "delegate":
        from b3lb.config import load_config
        from b3lb.httplimits import make_http_server

        server = make_http_server(HelloApplication(), load_config(REPO / "conf" / "b3lb.conf", env={}).server)
    else:
        from tornado.httpserver import HTTPServer
        from tornado.web import Application, RequestHandler

        class HelloHandler(RequestHandler):
            def get(self) -> None:
                self.write(BODY)

        server = HTTPServer(Application([(r"/.*", HelloHandler)]))
    server.listen(port, address=address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


async def asgi_hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":  # lifespan: nothing to set up
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"12")],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def _serve_uvicorn(port: int, address: str) -> None:
    import uvicorn

    config = uvicorn.Config(
        asgi_hello, host=address, port=port, loop="uvloop", http="httptools", lifespan="off",
        access_log=False, log_level="warning",
    )  # fmt: skip
    uvicorn.Server(config).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hello-world servers for benchmarks.run (module docstring)")
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    if args.kind == "uvicorn":
        _serve_uvicorn(args.port, args.address)
    else:
        uvloop.run(_serve_tornado(args.kind, args.port, args.address))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
