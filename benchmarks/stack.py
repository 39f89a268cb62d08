"""The system under test: PostgreSQL, a seeded schema, the fake fleet and one `b3lb serve` process
(or `b3lb serve --workers N`), in the variants the scenarios need (benchmarks/README.md)."""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import os
import secrets
import subprocess
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
from b3lb.testing.harness import add_secret, seed
from benchmarks import lag
from benchmarks.common import LOOPBACK, PYTHON, REPO, Child, free_port, with_search_path

BASE_DOMAIN = "bench.test"
# metrics.admin_token of the server under test: the metrics scenario reads the global view with it.
METRICS_ADMIN_TOKEN = "bench-metrics-" + secrets.token_hex(16)
SERVE = "import sys; from b3lb.config import load_config; from b3lb.server import serve; sys.exit(serve(load_config()))"
CLI = "import sys; from b3lb.admin.cli import main; sys.exit(main(sys.argv[1:]))"  # `b3lb ...`
# Tenants and how many meetings each gets before the load starts (the main stack).
PRECREATED = {"BENCH": 500, "SMALL": 50, "JOIN": 100}
TENANTS = (*PRECREATED, "CREATE")
PASSWORDS = (("attendeePW", "ap"), ("moderatorPW", "mp"))
# The fleet's own meetings (FakeNode.populate: m-{node}-{nnnn}) mapped to b3lb meetings of one secret.
OWN_SQL = """
INSERT INTO meeting (secret_id, meeting_id, meeting_name, node_id)
SELECT $1, 'm-' || n.slug || '-' || lpad(k::text, 4, '0'), 'Meeting ' || k, n.id
FROM node n CROSS JOIN generate_series(0, $2 - 1) AS k
"""
JOIN_TARGETS_SQL = """
SELECT m.meeting_id, n.protocol, n.domain, n.port, n.secret, c.sha_algorithm
FROM meeting m JOIN secret s ON s.id = m.secret_id JOIN node n ON n.id = m.node_id JOIN cluster c ON c.id = n.cluster_id
WHERE s.secret = $1
"""
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
    scheme: str = "http"
    ca_file: str = ""  # the test CA the fleet's certificates are signed by (--tls)


@dataclass
class FleetOptions:
    """Options of the fake fleet beyond size (benchmarks/README.md: nodes as deployed)."""

    tls_dir: Path | None = None  # --tls DIR: https with a trustme CA written to DIR/ca.pem
    chunked: bool = False
    gzip: bool = False
    churn: float = 0.0  # --churn FRACTION: every getMeetings changes this share of the node's meetings

    def arguments(self) -> list[str]:
        found: list[str] = []
        if self.tls_dir is not None:
            found += ["--tls", str(self.tls_dir)]
        found += ["--chunked"] if self.chunked else []
        found += ["--gzip"] if self.gzip else []
        found += ["--churn", str(self.churn)] if self.churn else []
        return found

    def missing(self) -> list[str]:
        """The options the fake fleet in this tree does not offer yet."""
        return [o for o in self.arguments() if o.startswith("--") and not fleet_supports(o)]


@functools.cache
def _fleet_help() -> str:
    done = subprocess.run([PYTHON, "-m", "b3lb.testing.fakebbb", "--help"], capture_output=True, text=True,
                          cwd=REPO, timeout=60)  # fmt: skip
    return done.stdout


def fleet_supports(option: str) -> bool:
    return option in _fleet_help()


def start_fleet(
    nodes: int,
    folder: Path,
    cpus: frozenset[int] | None,
    *,
    meetings: int = 0,
    attendees: int = 0,
    options: FleetOptions | None = None,
    name: str = "fleet",
) -> tuple[Child, FleetInfo]:
    """`python -m b3lb.testing.fakebbb` with one known secret; returns the child and its port."""
    options = options or FleetOptions()
    missing = options.missing()
    if missing:
        raise Unsupported(f"the fake fleet has no {', '.join(missing)} yet")
    secret = secrets.token_hex(20)
    command = [
        PYTHON, "-m", "b3lb.testing.fakebbb", "--nodes", str(nodes), "--secret", secret,
        "--meetings", str(meetings), "--attendees", str(attendees), *options.arguments(),
    ]  # fmt: skip
    child = Child("fake fleet", command, folder / f"{name}.log", cpus=cpus, stdout_pipe=True)
    try:
        # The fleet prints a node line and a `b3lb node add` hint per node, then serves.
        lines = child.read_lines(2 * nodes, timeout=60 + nodes * meetings * max(attendees, 1) / 5000)
        info = FleetInfo(port=int(lines[0].split()[2]), secret=secret)
        info.domains = [line.split()[1] for line in lines[:nodes]]
        if options.tls_dir is not None:
            info.scheme, info.ca_file = "https", str(options.tls_dir / "ca.pem")
            if not Path(info.ca_file).is_file():
                raise RuntimeError(f"the fleet started with --tls but wrote no {info.ca_file}")
    except Exception:
        child.stop()
        raise
    return child, info


class Unsupported(RuntimeError):
    """A piece the scenario needs has not landed in this tree (reported as n/a, not as a failure)."""


def tenant_slugs(count: int) -> list[str]:
    """`count` distinct tenant slugs of letters (a slug is ^[A-Z]{2,10}$): MAAA, MAAB, ..."""
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return [f"M{letters[n // 676 % 26]}{letters[n // 26 % 26]}{letters[n % 26]}" for n in range(count)]


async def seed_database(
    url: str, fleet: FleetInfo, tenants: Sequence[str], *, secrets_per_tenant: int = 1
) -> dict[str, str]:
    """Cluster, nodes (as the fleet process serves them, https with --tls) and tenants with
    `secrets_per_tenant` secrets each (sub 0, 1, ...); returns slug -> secret of sub 0."""
    stub = FakeFleet(len(fleet.domains), secret=fleet.secret)  # never started: only names and addresses
    for node, domain in zip(stub.nodes, fleet.domains, strict=True):
        if node.domain != domain:
            raise RuntimeError(f"fleet node {node.name} listens on {domain}, expected {node.domain}")
        node.port = fleet.port
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        seeded = await seed(pool, stub, tuple(tenants))
        if fleet.scheme != "http":  # harness.seed registers http nodes
            await pool.execute("UPDATE node SET protocol = $1", fleet.scheme)
        for tenant in seeded.values():
            for sub_id in range(1, secrets_per_tenant):
                await add_secret(pool, tenant, sub_id)
    finally:
        await pool.close()
    return {slug: tenant.secrets[0][1] for slug, tenant in seeded.items()}


async def own_fleet_meetings(url: str, secret: str, per_node: int) -> int:
    """Map the fleet's own meetings (m-{node}-{nnnn}, `per_node` of each node) to b3lb meetings of
    the secret with one INSERT ... SELECT; returns how many rows the meeting table then has."""
    conn = await asyncpg.connect(url)
    try:
        secret_id = await conn.fetchval("SELECT id FROM secret WHERE secret = $1", secret)
        await conn.execute(OWN_SQL, secret_id, per_node)
        count: int = await conn.fetchval("SELECT count(*) FROM meeting")
        return count
    finally:
        await conn.close()


async def fetch_join_targets(url: str, secret: str) -> dict[str, tuple[str, str, str]]:
    """meetingID -> (node base URL, node secret, SHA algorithm) of the secret's meetings, as stored."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(JOIN_TARGETS_SQL, secret)
    finally:
        await conn.close()
    return {r["meeting_id"]: (f"{r['protocol']}://{r['domain']}:{r['port']}", r["secret"], r["sha_algorithm"])
            for r in rows}  # fmt: skip


def server_env(
    db_url: str, port: int, folder: Path, poll_interval: float, *, ca_file: str = "", workers: int = 0
) -> dict[str, str]:
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
    if ca_file:
        env["B3LB_API_NODE_CA_FILE"] = ca_file
    if workers:
        env["B3LB_SERVER_WORKERS"] = str(workers)
    return env


@functools.cache
def serve_supports_workers() -> bool:
    done = subprocess.run([PYTHON, "-c", CLI, "serve", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)  # fmt: skip
    return "--workers" in done.stdout


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


@dataclass
class StackSpec:
    """What one stack consists of; each stack gets a fresh schema, fleet and server."""

    name: str  # for logs and messages: "http", "tls", "scale", ...
    nodes: int
    poll_interval: float
    fleet: FleetOptions = field(default_factory=FleetOptions)
    fleet_meetings: int = 0  # the fleet's own meetings per node
    fleet_attendees: int = 0
    tenants: tuple[str, ...] = TENANTS
    secrets_per_tenant: int = 1
    precreated: dict[str, int] = field(default_factory=lambda: dict(PRECREATED))
    own_fleet_meetings: str = ""  # tenant whose secret owns every fleet meeting before the server starts
    workers: int = 0  # 0: `b3lb serve` as before; N: `b3lb serve --workers N` (supervisor + N workers)
    server_cpus: frozenset[int] | None = None
    fleet_cpus: frozenset[int] | None = None
    env: dict[str, str] = field(default_factory=dict)  # more settings of the server (B3LB_...)


class ApiStack:
    """Seeded schema + fake fleet + one b3lb server, with meetings pre-created through the API."""

    def __init__(self, postgres: Postgres, folder: Path, spec: StackSpec) -> None:
        self.folder, self.spec = folder, spec
        self.server: Child | None = None
        self.client: Client | None = None
        self.owned = 0
        if spec.workers and not serve_supports_workers():
            raise Unsupported("`b3lb serve` has no --workers yet")
        if spec.fleet.tls_dir is not None:
            spec.fleet.tls_dir.mkdir(parents=True, exist_ok=True)
        self.db_url = postgres.new_schema("bench")
        self.fleet, self.fleet_info = start_fleet(
            spec.nodes, folder, spec.fleet_cpus, meetings=spec.fleet_meetings, attendees=spec.fleet_attendees,
            options=spec.fleet, name=f"fleet-{spec.name}",
        )  # fmt: skip
        try:
            self.secrets = run_async(
                seed_database(self.db_url, self.fleet_info, spec.tenants, secrets_per_tenant=spec.secrets_per_tenant)
            )
            if spec.own_fleet_meetings:
                secret = self.secrets[spec.own_fleet_meetings]
                self.owned = run_async(own_fleet_meetings(self.db_url, secret, spec.fleet_meetings))
            self.port = free_port()
            env = server_env(self.db_url, self.port, folder, spec.poll_interval, ca_file=self.fleet_info.ca_file,
                             workers=spec.workers)  # fmt: skip
            env.update(spec.env)
            command = [PYTHON, "-c", SERVE] if not spec.workers else [PYTHON, "-c", CLI, "serve", "--workers",
                                                                      str(spec.workers)]  # fmt: skip
            self.server = Child("b3lb server", command, folder / f"server-{spec.name}.log", cpus=spec.server_cpus,
                                env=env)  # fmt: skip
            self.client = Client(self.port)
            wait_until(self._ping, "the server's /b3lb/ping", 60 + self.owned / 2000, self.server)
            self.lag = lag.Scraper(self.port, BASE_DOMAIN, METRICS_ADMIN_TOKEN)
        except BaseException:
            self.stop()
            raise

    @property
    def server_pid(self) -> int:
        assert self.server is not None
        return self.server.pid

    def _ping(self) -> tuple[bool, str]:
        assert self.client is not None
        status, body = self.client.get("/b3lb/ping", BASE_DOMAIN)
        return status == 200 and body == b"OK!", f"HTTP {status} {body[:80]!r}"

    def precreate(self) -> None:
        """The stack's pre-created meetings, through real create calls (4 connections in parallel)."""
        jobs = [(slug, meeting_id) for slug, count in self.spec.precreated.items()
                for meeting_id in precreated_ids(slug)[:count]]  # fmt: skip

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
        assert self.client is not None
        client = self.client
        for slug, count in self.spec.precreated.items():
            path = signed_path("getMeetings", [], self.secrets[slug])

            def listed(path: str = path, slug: str = slug, count: int = count) -> tuple[bool, str]:
                status, body = client.get(path, tenant_host(slug))
                found = body.count(b"<meetingID>")
                return status == 200 and found == count, f"{slug}: HTTP {status}, {found} of {count} meetings"

            wait_until(listed, f"getMeetings of {slug} to list {count} meetings", timeout, self.server)

    def write_join_targets(self, slug: str = "JOIN") -> Path:
        """The meetingID -> (node base URL, node secret, algorithm) map of a tenant's meetings, as the
        database says b3lb placed them; the load generator checks every join's Location against it."""
        targets = run_async(fetch_join_targets(self.db_url, self.secrets[slug]))
        wanted = set(precreated_ids(slug)[: self.spec.precreated.get(slug, 0)])
        if not wanted <= set(targets):
            missing = len(wanted - set(targets))
            raise RuntimeError(f"{self.spec.name}: {missing} pre-created meetings are not in the database")
        path = self.folder / f"join-targets-{self.spec.name}-{slug}.json"
        path.write_text(json.dumps({m: targets[m] for m in wanted}), encoding="utf-8")
        return path

    def end_all(self) -> tuple[int, str]:
        """POST /fleet/end-all on the fleet: every meeting on every node ends. (status, body)."""
        domain = self.fleet_info.domains[0]
        conn = http.client.HTTPConnection(domain, self.fleet_info.port, timeout=60)
        if self.fleet_info.scheme == "https":
            import ssl

            context = ssl.create_default_context(cafile=self.fleet_info.ca_file)
            conn = http.client.HTTPSConnection(domain, self.fleet_info.port, timeout=60, context=context)
        try:
            conn.request("POST", "/fleet/end-all", body=b"", headers={"Host": domain})
            response = conn.getresponse()
            return response.status, response.read()[:200].decode("utf-8", "replace")
        finally:
            conn.close()

    def check_alive(self, before: str) -> None:
        """RuntimeError when the server or the fleet has exited."""
        for child in (self.server, self.fleet):
            if child is not None and not child.alive():
                code = child.process.returncode
                raise RuntimeError(f"{child.name} exited (code {code}) before {before}\n{child.log_tail()}")

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.stop(timeout=20)
        self.fleet.stop()
