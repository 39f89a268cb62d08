"""The built-in HTTP/1.1 load generator, used when `wrk` is not installed (or with --no-wrk).

N keep-alive connections on raw asyncio protocols (uvloop when available), each sending the next
pre-built request as soon as the previous answer is complete. Answers are framed by their
Content-Length only (what Tornado sends), so the generator spends as little CPU as possible: on a
2-core machine it shares the box with the server. Every answer is checked (status, body contents).

Runs as its own process so it can be pinned to its own core:
`python -m benchmarks.loadgen --spec spec.json` prints one JSON result line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

MAX_RECONNECTS = 1000
DRAIN_SECONDS = 3.0  # how long in-flight requests may take after the deadline
CONNECT_TIMEOUT = 5.0


@dataclass
class LoadSpec:
    """One load run: where to send, what to send, and what a good answer looks like."""

    port: int
    host: str  # Host header
    paths_file: str  # one request path (with query) per line, cycled through
    connections: int
    duration: float
    expect_status: int = 200
    contains: str = ""  # every good body contains this ("" = no check)
    excludes: str = ""  # no good body contains this
    count_tag: str = ""  # sampled bodies contain count_tag exactly `count` times
    count: int = 0
    sample: int = 50  # check the count on every sample-th answer
    address: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)  # more request headers, e.g. Authorization


@dataclass
class LoadResult:
    tool: str
    requests: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    transport_errors: int = 0
    unexpected: int = 0
    paths: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.transport_errors + self.unexpected

    @property
    def wrapped(self) -> bool:
        """More requests than distinct paths: the path list was cycled through more than once."""
        return self.paths > 0 and self.requests > self.paths


def read_paths(path: str) -> list[str]:
    with open(path, encoding="ascii") as source:
        return [line.rstrip("\n") for line in source if line.strip()]


def percentile(sorted_values: list[float] | array[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return float(sorted_values[rank])


class _Shared:
    """State of one run, shared by all connections."""

    def __init__(self, spec: LoadSpec, requests: list[bytes]) -> None:
        self.spec = spec
        self.requests = requests
        self.count = len(requests)
        self.index = 0
        self.start = float("inf")  # answers to requests sent before start are not counted
        self.deadline = float("inf")
        self.latencies: array[float] = array("d")
        self.completed = 0  # answers checked (also outside the window)
        self.transport_errors = 0
        self.unexpected = 0
        self.examples: list[str] = []
        self.reconnects = 0
        self.open_clients = 0
        self.all_closed = asyncio.Event()
        self.contains = spec.contains.encode()
        self.excludes = spec.excludes.encode()
        self.count_tag = spec.count_tag.encode()

    def bad(self, status: int, body: bytes, why: str) -> None:
        self.unexpected += 1
        if len(self.examples) < 5:
            self.examples.append(f"{why}: HTTP {status} {body[:160]!r}")

    def check(self, status: int, body: bytes) -> None:
        spec = self.spec
        self.completed += 1
        if status != spec.expect_status:
            self.bad(status, body, f"status (expected {spec.expect_status})")
        elif self.contains and self.contains not in body:
            self.bad(status, body, f"body without {spec.contains!r}")
        elif self.excludes and self.excludes in body:
            self.bad(status, body, f"body with {spec.excludes!r}")
        elif self.count_tag and self.completed % spec.sample == 1 and body.count(self.count_tag) != spec.count:
            self.bad(status, body, f"{body.count(self.count_tag)} x {spec.count_tag!r}, expected {spec.count}")


class _Client(asyncio.Protocol):
    __slots__ = ("shared", "transport", "buffer", "sent", "header_end", "total", "status", "closing")

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.sent = 0.0  # perf_counter of the outstanding request, 0.0 when none
        self.header_end = -1
        self.total = 0
        self.status = 0
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.shared.open_clients += 1

    def send(self) -> None:
        shared = self.shared
        now = time.perf_counter()
        if now >= shared.deadline:
            self.sent = 0.0
            self.closing = True
            assert self.transport is not None
            self.transport.close()
            return
        request = shared.requests[shared.index % shared.count]
        shared.index += 1
        self.sent = now
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.header_end < 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            self.header_end = end + 4
            self.status = int(buffer[9:12])
            self.total = self.header_end + _content_length(buffer, end)
        if len(buffer) < self.total:
            return
        now = time.perf_counter()
        shared = self.shared
        sent = self.sent
        if shared.start <= sent and now <= shared.deadline:
            shared.latencies.append(now - sent)
        shared.check(self.status, bytes(buffer[self.header_end : self.total]))
        del buffer[: self.total]
        self.header_end = -1
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        shared = self.shared
        shared.open_clients -= 1
        if not self.closing:
            shared.transport_errors += 1
            if len(shared.examples) < 5:
                shared.examples.append(f"connection lost: {exc!r}")
            if time.perf_counter() < shared.deadline and shared.reconnects < MAX_RECONNECTS:
                shared.reconnects += 1
                asyncio.get_running_loop().create_task(_connect_and_send(shared))
        if shared.open_clients <= 0:
            shared.all_closed.set()


def _content_length(buffer: bytearray, header_end: int) -> int:
    at = buffer.find(b"\r\nContent-Length:", 0, header_end)
    if at < 0:
        at = bytes(buffer[:header_end]).lower().find(b"\r\ncontent-length:")
        if at < 0:
            return 0  # 204/304 or a framing we do not speak: counted as its status says
    line_end = buffer.find(b"\r", at + 17)
    return int(buffer[at + 17 : line_end if 0 <= line_end < header_end else header_end])


async def _connect(shared: _Shared) -> _Client:
    spec = shared.spec
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: _Client(shared), spec.address, spec.port), CONNECT_TIMEOUT
    )
    return protocol


async def _connect_and_send(shared: _Shared) -> None:
    try:
        client = await _connect(shared)
    except (OSError, TimeoutError) as exc:
        shared.transport_errors += 1
        if len(shared.examples) < 5:
            shared.examples.append(f"reconnect failed: {exc!r}")
        if shared.open_clients <= 0:
            shared.all_closed.set()
        return
    client.send()


def build_requests(paths: list[str], host: str, headers: dict[str, str] | None = None) -> list[bytes]:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    tail = f" HTTP/1.1\r\nHost: {host}\r\nUser-Agent: b3lb-bench\r\n{extra}\r\n".encode()
    return [b"GET " + path.encode("ascii") + tail for path in paths]


async def run_builtin(spec: LoadSpec) -> LoadResult:
    paths = read_paths(spec.paths_file)
    shared = _Shared(spec, build_requests(paths, spec.host, spec.headers))
    clients = [await _connect(shared) for _ in range(spec.connections)]
    shared.start = time.perf_counter()
    shared.deadline = shared.start + spec.duration
    for client in clients:
        client.send()
    await asyncio.sleep(spec.duration)
    try:
        await asyncio.wait_for(shared.all_closed.wait(), DRAIN_SECONDS)
    except TimeoutError:
        stuck = sum(1 for c in clients if c.sent and not c.closing)
        shared.transport_errors += stuck  # no answer within the drain time: a timeout
        if stuck and len(shared.examples) < 5:
            shared.examples.append(f"{stuck} requests without an answer {DRAIN_SECONDS}s after the end")
        for client in clients:
            if client.transport is not None:
                client.closing = True
                client.transport.close()
    latencies = sorted(shared.latencies)
    return LoadResult(
        tool="builtin",
        requests=len(latencies),
        seconds=spec.duration,
        rps=len(latencies) / spec.duration,
        p50_ms=1000 * percentile(latencies, 0.50),
        p99_ms=1000 * percentile(latencies, 0.99),
        transport_errors=shared.transport_errors,
        unexpected=shared.unexpected,
        paths=len(paths),
        examples=shared.examples,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Built-in HTTP/1.1 keep-alive load generator")
    parser.add_argument("--spec", required=True, help="JSON file with the LoadSpec fields")
    args = parser.parse_args(argv)
    spec = LoadSpec(**json.loads(Path(args.spec).read_text(encoding="utf-8")))
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of b3lb
        result = asyncio.run(run_builtin(spec))
    else:
        result = uvloop.run(run_builtin(spec))
    print("BENCHJSON " + json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
