"""The ceiling: a bare Tornado hello-world handler on uvloop, in its own process.

`python -m benchmarks.ceiling --port P` serves until SIGTERM. Whatever b3lb does per request
comes on top of this, so b3lb's requests/s are reported as a share of this one's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

BODY = b"Hello, world"


class HelloHandler(RequestHandler):
    def get(self) -> None:
        self.write(BODY)


async def serve(port: int, address: str) -> None:
    server = HTTPServer(Application([(r"/.*", HelloHandler)]))
    server.listen(port, address=address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Tornado hello-world on uvloop (the benchmark ceiling)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.port, args.address))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
