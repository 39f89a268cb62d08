"""The load generator of benchmarks.run (the only one: wrk support was dropped, see README).

N keep-alive connections on raw asyncio protocols (uvloop), each sending the next pre-built request
as soon as the previous answer is complete. Answers are framed by Content-Length (Tornado's and
uvicorn's way); a chunked answer takes a slower path. Every answer is checked, warm-up included:

- the status must be the scenario's (`expect_status`), and a body must not say `FAILED`;
- `contains` / `excludes` / a sampled count of `count_tag` as the scenario asks;
- with `join_targets` (a JSON map meetingID -> [node base URL, node secret, algorithm]) the
  Location of every answer must point at the meeting's node with a checksum valid for that node
  (benchmarks/joincheck.py); the meeting is the one the request asked for.

Requests that must all differ (join users, new meetings to create) are not listed but made from a
`template` as they are sent: the query with the request's number in it, signed with the tenant's
secret (a few microseconds each), so no run can run out of them however fast the server is.

The warm-up runs on the same connections right before the measured window; its answers are
checked and its errors reported (`warmup_errors`) and counted in `errors`, but its latencies and
counts are not in the figures. Completions are also counted per second of the measured window.

Runs as its own process so it can be pinned to its own core:
`python -m benchmarks.loadgen --spec a.json [--spec b.json ...]` runs the specs one after the
other and prints one `BENCHJSON {...}` line per spec.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import math
import time
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote_plus

from benchmarks.joincheck import JoinTargets, meeting_of

MAX_RECONNECTS = 1000
DRAIN_SECONDS = 5.0  # how long in-flight requests may take after the deadline
CONNECT_TIMEOUT = 5.0
FAILED = b"<returncode>FAILED</returncode>"
GZIP_MAGIC = b"\x1f\x8b"
GZIP_SAMPLE = 20  # every 20th gzip answer is inflated and checked in full
MAX_EXAMPLES = 5
READ_SIZE = 256 * 1024  # room offered to each read (uvloop's own read buffer is as large)


@dataclass
class LoadSpec:
    """One load run: where to send, what to send, and what a good answer looks like."""

    port: int
    host: str  # Host header
    paths_file: str  # one request path (with query) per line, cycled through
    connections: int
    duration: float
    warmup: float = 0.0  # seconds of checked but unmeasured load first
    expect_status: int = 200
    contains: str = ""  # every good body contains this ("" = no check)
    excludes: str = ""  # no good body contains this
    count_tag: str = ""  # sampled bodies contain count_tag exactly `count` times
    count: int = 0
    sample: int = 50  # check the count on every sample-th answer
    address: str = "127.0.0.1"
    headers: dict[str, str] = field(default_factory=dict)  # more request headers, e.g. Authorization
    join_targets: str = ""  # JSON file: check every answer's Location (join)
    template: dict[str, Any] | None = None  # Template fields: every request made and signed as it is sent


@dataclass
class Template:
    """Distinct signed requests: request n asks `call` with `query`, in which `{n}` is n and `{item}`
    is items[n % len(items)] (URL-encoded; for a join the meetingID the Location is checked against)."""

    call: str
    query: str
    items: list[str]
    secret: str
    algorithm: str = "sha256"

    def __post_init__(self) -> None:
        self.encoded = [quote_plus(item) for item in self.items]
        self.parts = self.query.split("{n}")

    def path(self, n: int) -> str:
        query = str(n).join(self.parts).replace("{item}", self.encoded[n % len(self.encoded)])
        checksum = hashlib.new(self.algorithm, f"{self.call}{query}{self.secret}".encode()).hexdigest()
        return f"/bigbluebutton/api/{self.call}?{query}&checksum={checksum}"

    def item(self, n: int) -> str:
        return self.items[n % len(self.items)]


@dataclass
class LoadResult:
    tool: str = "builtin"
    requests: int = 0  # answers to requests sent and answered within the measured window
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    transport_errors: int = 0
    unexpected: int = 0
    warmup_errors: int = 0  # part of transport_errors + unexpected
    answers: int = 0  # every answer checked, warm-up and drain included
    checked_locations: int = 0
    paths: int = 0
    per_second: list[int] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.transport_errors + self.unexpected


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

    def __init__(self, spec: LoadSpec, paths: list[str]) -> None:
        self.spec = spec
        self.template = Template(**spec.template) if spec.template else None
        self.requests = build_requests(paths, spec.host, spec.headers)
        self.head, self.tail = build_requests(["\0"], spec.host, spec.headers)[0].split(b"\0")
        self.count = len(self.requests)
        if not self.count and self.template is None:
            raise ValueError("a load spec needs request paths or a template")
        self.index = 0
        self.start = float("inf")  # answers to requests sent before start are not measured
        self.deadline = float("inf")
        self.latencies: array[float] = array("d")
        self.per_second = [0] * max(1, math.ceil(spec.duration))
        self.completed = 0
        self.transport_errors = 0
        self.unexpected = 0
        self.warmup_errors = 0
        self.checked_locations = 0
        self.examples: list[str] = []
        self.reconnects = 0
        self.open_clients = 0
        self.all_closed = asyncio.Event()
        self.contains = spec.contains.encode()
        self.excludes = spec.excludes.encode()
        self.count_tag = spec.count_tag.encode()
        self.targets = JoinTargets.load(spec.join_targets) if spec.join_targets else None
        self.meetings = [meeting_of(p) for p in paths] if self.targets is not None and not self.template else []

    def note(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)

    def transport_error(self, text: str) -> None:
        self.transport_errors += 1
        if time.perf_counter() < self.start:
            self.warmup_errors += 1
        self.note(text)

    def bad(self, status: int, body: bytes, why: str, sent: float) -> None:  # body: its first bytes
        self.unexpected += 1
        if sent < self.start:
            self.warmup_errors += 1
        self.note(f"{'warm-up: ' if sent < self.start else ''}{why}: HTTP {status} {body!r}")

    def request(self) -> tuple[int, bytes]:
        """The next request and its number (its index in the list, or its number in the template)."""
        index = self.index
        self.index += 1
        if self.template is not None:
            return index, self.head + self.template.path(index).encode("ascii") + self.tail
        index %= self.count
        return index, self.requests[index]

    def meeting(self, index: int) -> str:
        return self.template.item(index) if self.template is not None else self.meetings[index]

    def check(self, status: int, head: bytes, body: Body, index: int, sent: float) -> None:
        spec = self.spec
        self.completed += 1
        if body.startswith(GZIP_MAGIC) and header_value(head, b"content-encoding") == "gzip":
            # Inflating every 600 KB metrics answer would make the generator the bottleneck: every
            # answer must be gzip, every GZIP_SAMPLE-th is inflated and checked in full.
            if self.completed % GZIP_SAMPLE != 1:
                if status != spec.expect_status:
                    self.bad(status, body.first(), f"status (expected {spec.expect_status})", sent)
                return
            try:
                body = Body(gzip.decompress(body.data[body.start : body.end]))
            except (OSError, EOFError) as exc:
                self.bad(status, body.first(), f"broken gzip body: {exc}", sent)
                return
        if status != spec.expect_status:
            self.bad(status, body.first(), f"status (expected {spec.expect_status})", sent)
        elif body.has(FAILED):
            self.bad(status, body.first(), "a FAILED answer", sent)
        elif self.contains and not body.has(self.contains):
            self.bad(status, body.first(), f"body without {spec.contains!r}", sent)
        elif self.excludes and body.has(self.excludes):
            self.bad(status, body.first(), f"body with {spec.excludes!r}", sent)
        elif self.count_tag and self.completed % spec.sample == 1 and body.count(self.count_tag) != spec.count:
            self.bad(status, body.first(), f"{body.count(self.count_tag)} x {spec.count_tag!r}, expected {spec.count}",
                     sent)  # fmt: skip
        elif self.targets is not None:
            location = header_value(head, b"location")
            why = self.targets.check(self.meeting(index), location) if location else "no Location header"
            if why:
                self.bad(status, location.encode("latin-1", "replace"), f"join Location: {why}", sent)
            else:
                self.checked_locations += 1


class Body:
    """An answer's body where it was received (a connection's buffer), searched without a copy."""

    __slots__ = ("data", "start", "end")

    def __init__(self, data: bytes | bytearray, start: int = 0, end: int | None = None) -> None:
        self.data, self.start, self.end = data, start, len(data) if end is None else end

    def has(self, needle: bytes) -> bool:
        return self.data.find(needle, self.start, self.end) >= 0

    def count(self, needle: bytes) -> int:
        return self.data.count(needle, self.start, self.end)

    def startswith(self, prefix: bytes) -> bool:
        return self.end - self.start >= len(prefix) and self.data.startswith(prefix, self.start)

    def first(self, size: int = 160) -> bytes:
        return bytes(self.data[self.start : min(self.end, self.start + size)])


class _Client(asyncio.BufferedProtocol):
    """One keep-alive connection. The answer is received in place (BufferedProtocol): uvloop reads
    into this connection's buffer, which grows to hold a long answer whole, and the checks search it
    there. Copying each piece out (Protocol.data_received) and the body again took the generator's
    core longer than the server took to send a 750 KB getMeetings answer."""

    __slots__ = ("shared", "transport", "buffer", "view", "filled", "sent", "index", "header_end", "total",
                 "status", "closing", "chunked")

    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)
        self.filled = 0  # bytes of the buffer received and not yet consumed
        self.sent = 0.0  # perf_counter of the outstanding request, 0.0 when none
        self.index = 0  # which request is outstanding
        self.header_end = -1
        self.total = 0
        self.status = 0
        self.closing = False
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses
        self.shared.open_clients += 1

    def send(self) -> None:
        shared = self.shared
        now = time.perf_counter()
        assert self.transport is not None
        if now >= shared.deadline:
            self.sent = 0.0
            self.closing = True
            self.transport.close()
            return
        self.index, request = shared.request()
        self.sent = now
        self.transport.write(request)

    def get_buffer(self, sizehint: int) -> memoryview:
        need = self.filled + READ_SIZE
        if self.header_end >= 0 and not self.chunked:
            need = max(need, self.total)  # the rest of the answer in one piece
        if need > len(self.buffer):
            bigger = bytearray(max(need, 2 * len(self.buffer)))  # slack: a long answer grows it once or twice
            bigger[: self.filled] = self.view[: self.filled]
            self.buffer, self.view = bigger, memoryview(bigger)
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        self.filled += nbytes
        buffer, filled = self.buffer, self.filled
        if self.header_end < 0:
            end = buffer.find(b"\r\n\r\n", 0, filled)
            if end < 0:
                return
            self.header_end = end + 4
            self.status = int(buffer[9:12])
            length = _content_length(buffer, end)
            self.chunked = length < 0
            self.total = self.header_end + max(length, 0)
        if self.chunked:  # the slow path: a copy of what came so far, searched for the last chunk
            dechunked, total = _dechunk(bytes(self.view[:filled]), self.header_end)
            if dechunked is None:
                return
            self.total, body = total, Body(dechunked)
        elif filled < self.total:
            return
        else:
            body = Body(buffer, self.header_end, self.total)
        now = time.perf_counter()
        shared = self.shared
        sent = self.sent
        if shared.start <= sent and now <= shared.deadline:
            shared.latencies.append(now - sent)
            shared.per_second[min(int(now - shared.start), len(shared.per_second) - 1)] += 1
        # the head only where it is read: join Locations, gzip answers
        head = bytes(buffer[: self.header_end]) if shared.targets is not None or body.startswith(GZIP_MAGIC) else b""
        shared.check(self.status, head, body, self.index, sent)
        rest = filled - self.total  # nothing, unless a server sent more than it was asked for
        if rest:
            buffer[:rest] = bytes(self.view[self.total : filled])
        self.filled = rest
        self.header_end = -1
        self.send()

    def connection_lost(self, exc: Exception | None) -> None:
        shared = self.shared
        shared.open_clients -= 1
        if not self.closing:
            shared.transport_error(f"connection lost: {exc!r}")
            if time.perf_counter() < shared.deadline and shared.reconnects < MAX_RECONNECTS:
                shared.reconnects += 1
                asyncio.get_running_loop().create_task(_connect_and_send(shared))
        if shared.open_clients <= 0:
            shared.all_closed.set()


def header_value(head: bytes, name: bytes) -> str:
    """The first value of a header (name in lower case), "" when absent."""
    at = head.find(b"\r\n" + name.title() + b":")
    if at < 0:
        at = head.lower().find(b"\r\n" + name + b":")
        if at < 0:
            return ""
    start = at + len(name) + 3
    return head[start : head.find(b"\r\n", start)].strip().decode("latin-1")


def _content_length(buffer: bytearray, header_end: int) -> int:
    """The Content-Length, -1 for a chunked answer, 0 when neither (a status without a body)."""
    at = buffer.find(b"\r\nContent-Length:", 0, header_end)
    if at < 0:
        head = bytes(buffer[:header_end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            return -1 if b"\r\ntransfer-encoding: chunked" in head else 0
    line_end = buffer.find(b"\r", at + 17)
    return int(buffer[at + 17 : line_end if 0 <= line_end < header_end else header_end])


def _dechunk(buffer: bytes, start: int) -> tuple[bytes | None, int]:
    """(body, end offset) of a complete chunked body from `start`, (None, 0) while incomplete."""
    parts: list[bytes] = []
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None, 0
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)  # no trailers: the empty line right away
            if trailer_end < 0:
                return None, 0
            return b"".join(parts), trailer_end + 4
        if len(buffer) < line_end + 2 + size + 2:
            return None, 0
        parts.append(bytes(buffer[line_end + 2 : line_end + 2 + size]))
        at = line_end + 2 + size + 2


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
        shared.transport_error(f"reconnect failed: {exc!r}")
        if shared.open_clients <= 0:
            shared.all_closed.set()
        return
    client.send()


def build_requests(paths: list[str], host: str, headers: dict[str, str] | None = None) -> list[bytes]:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    tail = f" HTTP/1.1\r\nHost: {host}\r\nUser-Agent: b3lb-bench\r\n{extra}\r\n".encode()
    return [b"GET " + path.encode("ascii") + tail for path in paths]


async def run_builtin(spec: LoadSpec) -> LoadResult:
    paths = read_paths(spec.paths_file) if spec.paths_file else []
    shared = _Shared(spec, paths)
    clients = [await _connect(shared) for _ in range(spec.connections)]
    began = time.perf_counter()
    shared.start = began + spec.warmup
    shared.deadline = shared.start + spec.duration
    for client in clients:
        client.send()
    await asyncio.sleep(spec.warmup + spec.duration)
    try:
        await asyncio.wait_for(shared.all_closed.wait(), DRAIN_SECONDS)
    except TimeoutError:
        stuck = sum(1 for c in clients if c.sent and not c.closing)
        shared.transport_errors += stuck  # no answer within the drain time: a timeout
        if stuck:
            shared.note(f"{stuck} requests without an answer {DRAIN_SECONDS}s after the end")
        for client in clients:
            if client.transport is not None:
                client.closing = True
                client.transport.close()
    latencies = sorted(shared.latencies)
    return LoadResult(
        requests=len(latencies),
        seconds=spec.duration,
        rps=len(latencies) / spec.duration,
        p50_ms=1000 * percentile(latencies, 0.50),
        p99_ms=1000 * percentile(latencies, 0.99),
        max_ms=1000 * (latencies[-1] if latencies else 0.0),
        transport_errors=shared.transport_errors,
        unexpected=shared.unexpected,
        warmup_errors=shared.warmup_errors,
        answers=shared.completed,
        checked_locations=shared.checked_locations,
        paths=len(paths),
        per_second=shared.per_second,
        examples=shared.examples,
    )


async def run_all(specs: list[LoadSpec]) -> None:
    for spec in specs:
        result = await run_builtin(spec)
        print("BENCHJSON " + json.dumps(asdict(result)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HTTP/1.1 keep-alive load generator of benchmarks.run")
    parser.add_argument("--spec", required=True, action="append", help="JSON file with the LoadSpec fields")
    args = parser.parse_args(argv)
    specs = [LoadSpec(**json.loads(Path(p).read_text(encoding="utf-8"))) for p in args.spec]
    import uvloop

    uvloop.run(run_all(specs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
