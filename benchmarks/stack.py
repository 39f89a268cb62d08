"""The system under test: PostgreSQL, a seeded schema, the fake fleet and one `b3lb serve` process."""

from __future__ import annotations

import asyncio
import http.client
import os
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from b3lb import migrate
from b3lb.checksum import digest, encode_params
from b3lb.db import EmbeddedPostgres
from b3lb.testing.fakebbb import FakeFleet
from b3lb.testing.harness import seed
from benchmarks.common import LOOPBACK, PYTHON, REPO, Child, free_port, with_search_path

BASE_DOMAIN = "bench.test"
# metrics.admin_token of the server under test: the metrics scenario reads the global view with it.
METRICS_ADMIN_TOKEN = "bench-metrics-" + secrets.token_hex(16)
SERVE = "import sys; from b3lb.config import load_config; from b3lb.server import serve; sys.exit(serve(load_config()))"
# Tenants and how many meetings each gets before the load starts.
PRECREATED = {"BENCH": 500, "SMALL": 50, "JOIN": 100}
TENANTS = (*PRECREATED, "CREATE")
PASSWORDS = (("attendeePW", "ap"), ("moderatorPW", "mp"))
T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def tenant_host(slug: str) -> str:
    return f"{slug.lower()}.{BASE_DOMAIN}"


def signed_path(call: str, params: Sequence[tuple[str, str]], secret: str) -> str:
    query = encode_params(params)
    checksum = digest("sha256", call, query, secret)
    return (
        f"/bigbluebutton/api/{call}?{query}&checksum={checksum}"
        if query
        else (f"/bigbluebutton/api/{call}?checksum={checksum}")
    )


def precreated_ids(slug: str) -> list[str]:
    return [f"{slug.lower()}-{number:04d}" for number in range(PRECREATED.get(slug, 0))]


def create_params(meeting_id: str, name: str) -> list[tuple[str, str]]:
    return [("name", name), ("meetingID", meeting_id), *PASSWORDS]


class Postgres:
    """DATABASE_URL when set, else an embedded PostgreSQL in the run's temporary folder."""

    def __init__(self, folder: Path) -> None:
        self.embedded: EmbeddedPostgres | None = None
        url = os.environ.get("DATABASE_URL", "")
        if not url:
            self.embedded = EmbeddedPostgres(folder / "pgdata")
            url = self.embedded.start()
        self.url = url
        self.schemas: list[str] = []

    @property
    def kind(self) -> str:
        return "embedded" if self.embedded is not None else "DATABASE_URL"

    def new_schema(self, prefix: str) -> str:
        """URL of a fresh schema with every migration applied."""
        schema = f"{prefix}_{secrets.token_hex(4)}"
        run_async(create_schema(self.url, schema))
        self.schemas.append(schema)
        return with_search_path(self.url, schema)

    def stop(self) -> None:
        try:
            if self.schemas:
                run_async(drop_schemas(self.url, self.schemas))
        finally:
            if self.embedded is not None:
                self.embedded.stop()


async def create_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    conn = await asyncpg.connect(with_search_path(url, schema))
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


async def drop_schemas(url: str, schemas: list[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@dataclass
class FleetInfo:
    port: int
    secret: str
    domains: list[str] = field(default_factory=list)


def start_fleet(
    nodes: int, folder: Path, cpus: frozenset[int] | None, *, meetings: int = 0, attendees: int = 0
) -> tuple[Child, FleetInfo]:
    """`python -m b3lb.testing.fakebbb` with one known secret; returns the child and its port."""
    secret = secrets.token_hex(20)
    command = [
        PYTHON,
        "-m",
        "b3lb.testing.fakebbb",
        "--nodes",
        str(nodes),
        "--secret",
        secret,
        "--meetings",
        str(meetings),
        "--attendees",
        str(attendees),
    ]
    child = Child("fake fleet", command, folder / "fleet.log", cpus=cpus, stdout_pipe=True)
    try:
        # The fleet prints a node line and a `b3lb node add` hint per node, then serves.
        lines = child.read_lines(2 * nodes, timeout=60 + nodes * meetings * max(attendees, 1) / 5000)
    except Exception:
        child.stop()
        raise
    info = FleetInfo(port=int(lines[0].split()[2]), secret=secret)
    info.domains = [line.split()[1] for line in lines[:nodes]]
    return child, info


async def seed_database(url: str, fleet: FleetInfo, tenants: Sequence[str]) -> dict[str, str]:
    """Cluster, nodes (as the fleet process serves them) and tenants; returns slug -> secret."""
    stub = FakeFleet(len(fleet.domains), secret=fleet.secret)  # never started: only names and addresses
    for node, domain in zip(stub.nodes, fleet.domains, strict=True):
        if node.domain != domain:
            raise RuntimeError(f"fleet node {node.name} listens on {domain}, expected {node.domain}")
        node.port = fleet.port
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        seeded = await seed(pool, stub, tuple(tenants))
    finally:
        await pool.close()
    return {slug: tenant.secrets[0][1] for slug, tenant in seeded.items()}


def server_env(db_url: str, port: int, folder: Path, poll_interval: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("B3LB_") and k != "REDIS_URL"}
    env.update(
        {
            "DATABASE_URL": db_url,
            "B3LB_CONFIG": str(REPO / "conf" / "b3lb.conf"),
            "B3LB_SERVER_PORT": str(port),
            "B3LB_SERVER_LISTEN_ADDRESS": LOOPBACK,
            "B3LB_SERVER_API_BASE_DOMAIN": BASE_DOMAIN,
            "B3LB_SERVER_PUBLIC_SCHEME": "http",
            "B3LB_SERVER_LOG_LEVEL": "WARNING",
            "B3LB_SERVER_DATA_DIR": str(folder / "var"),
            "B3LB_POLLER_INTERVAL": str(poll_interval),
            "B3LB_POLLER_JITTER": "0",
            "B3LB_METRICS_ADMIN_TOKEN": METRICS_ADMIN_TOKEN,
        }
    )
    return env


class Client:
    """A blocking keep-alive HTTP client for set-up and checks (not for load)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)

    def get(self, path: str, host: str) -> tuple[int, bytes]:
        for attempt in range(2):
            try:
                self.conn.request("GET", path, headers={"Host": host})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def wait_until(check: Callable[[], tuple[bool, str]], what: str, timeout: float, child: Child | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited while waiting for {what}\n{child.log_tail()}")
        try:
            ok, last = check()
        except (OSError, http.client.HTTPException) as exc:
            ok, last = False, repr(exc)
        if ok:
            return
        time.sleep(0.1)
    tail = f"\n{child.log_tail()}" if child is not None else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last}){tail}")


class ApiStack:
    """Seeded schema + fake fleet + one b3lb server, with meetings pre-created through the API."""

    def __init__(
        self,
        postgres: Postgres,
        folder: Path,
        *,
        nodes: int,
        server_cpus: frozenset[int] | None,
        fleet_cpus: frozenset[int] | None,
        poll_interval: float,
    ) -> None:
        self.folder = folder
        self.db_url = postgres.new_schema("bench")
        self.fleet, self.fleet_info = start_fleet(nodes, folder, fleet_cpus)
        self.server: Child | None = None
        try:
            self.secrets = run_async(seed_database(self.db_url, self.fleet_info, TENANTS))
            self.port = free_port()
            env = server_env(self.db_url, self.port, folder, poll_interval)
            self.server = Child("b3lb server", [PYTHON, "-c", SERVE], folder / "server.log", cpus=server_cpus, env=env)
            self.client = Client(self.port)
            wait_until(self._ping, "the server's /b3lb/ping", 60, self.server)
        except BaseException:
            self.stop()
            raise

    @property
    def server_pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def _ping(self) -> tuple[bool, str]:
        status, body = self.client.get("/b3lb/ping", BASE_DOMAIN)
        return status == 200 and body == b"OK!", f"HTTP {status} {body[:80]!r}"

    def precreate(self) -> None:
        """The meetings of PRECREATED, through real create calls (4 connections in parallel)."""
        jobs = [(slug, meeting_id) for slug in PRECREATED for meeting_id in precreated_ids(slug)]

        def work(part: list[tuple[str, str]]) -> None:
            client = Client(self.port)
            try:
                for slug, meeting_id in part:
                    path = signed_path("create", create_params(meeting_id, f"Room {meeting_id}"), self.secrets[slug])
                    status, body = client.get(path, tenant_host(slug))
                    if status != 200 or b"<returncode>SUCCESS</returncode>" not in body:
                        raise RuntimeError(f"pre-create of {meeting_id} failed: HTTP {status} {body[:300]!r}")
            finally:
                client.close()

        with ThreadPoolExecutor(4) as pool:
            for future in [pool.submit(work, jobs[i::4]) for i in range(4)]:
                future.result()

    def wait_for_poll(self, timeout: float = 60) -> None:
        """Until getMeetings lists every pre-created meeting (a poll cycle has stored them)."""
        for slug, count in PRECREATED.items():
            path = signed_path("getMeetings", [], self.secrets[slug])

            def listed(path: str = path, slug: str = slug, count: int = count) -> tuple[bool, str]:
                status, body = self.client.get(path, tenant_host(slug))
                found = body.count(b"<meetingID>")
                return status == 200 and found == count, f"{slug}: HTTP {status}, {found} of {count} meetings"

            wait_until(listed, f"getMeetings of {slug} to list {count} meetings", timeout, self.server)

    def check_alive(self, before: str) -> None:
        """RuntimeError when the server or the fleet has exited."""
        for child in (self.server, self.fleet):
            if child is not None and not child.alive():
                code = child.process.returncode
                raise RuntimeError(f"{child.name} exited (code {code}) before {before}\n{child.log_tail()}")

    def stop(self) -> None:
        if getattr(self, "client", None) is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop()
        self.fleet.stop()
