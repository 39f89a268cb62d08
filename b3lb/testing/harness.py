"""An in-process load balancer on a seeded database in front of a fake fleet.

Used by the end-to-end tests and the benchmarks: everything is real (PostgreSQL, HTTP on
loopback, checksums), only the BBB nodes are fakes.
"""

from __future__ import annotations

import dataclasses
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from typing import Self

import asyncpg
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from b3lb.app import make_app
from b3lb.checksum import digest
from b3lb.config import Config, load_config
from b3lb.db import keep_session
from b3lb.httplimits import make_http_server
from b3lb.poller import NodePoll, Poller
from b3lb.runtime import Runtime
from b3lb.testing.fakebbb import FakeFleet

BASE_DOMAIN = "lb.test"
# [callbacks] for tests whose frontends (callback receivers) listen on loopback, which the URL guard
# refuses by default.
LOOPBACK_CALLBACKS: dict[str, object] = {"allowed_networks": ["127.0.0.0/8"]}


@dataclass
class SeededTenant:
    slug: str
    tenant_id: int
    # sub_id -> (secret row id, secret value)
    secrets: dict[int, tuple[int, str]] = field(default_factory=dict)


async def seed(
    pool: asyncpg.Pool, fleet: FakeFleet, tenants: tuple[str, ...] = ("ABC",), *, sha: str = "SHA256"
) -> dict[str, SeededTenant]:
    """One cluster with every fake node, one cluster group, and the tenants with secret 0."""
    cluster_id = await pool.fetchval("INSERT INTO cluster (name, sha_algorithm) VALUES ('main', $1) RETURNING id", sha)
    group_id = await pool.fetchval("INSERT INTO cluster_group (name) VALUES ('all') RETURNING id")
    await pool.execute("INSERT INTO cluster_group_relation (cluster_group_id, cluster_id) VALUES ($1, $2)",
                       group_id, cluster_id)
    await pool.executemany(
        "INSERT INTO node (cluster_id, slug, domain, secret, protocol, port) VALUES ($1, $2, $3, $4, 'http', $5)",
        [(cluster_id, n.name, n.domain, n.secret, n.port) for n in fleet.nodes],
    )
    seeded: dict[str, SeededTenant] = {}
    for slug in tenants:
        tenant_id = await pool.fetchval(
            "INSERT INTO tenant (slug, cluster_group_id) VALUES ($1, $2) RETURNING id", slug, group_id
        )
        seeded[slug] = SeededTenant(slug, tenant_id)
        await add_secret(pool, seeded[slug], 0)
    return seeded


async def add_secret(pool: asyncpg.Pool, tenant: SeededTenant, sub_id: int, **columns: object) -> str:
    value = secrets.token_hex(32)
    names = ["tenant_id", "sub_id", "secret", *columns]
    placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    secret_id = await pool.fetchval(
        f"INSERT INTO secret ({', '.join(names)}) VALUES ({placeholders}) RETURNING id",
        tenant.tenant_id, sub_id, value, *columns.values(),
    )
    tenant.secrets[sub_id] = (secret_id, value)
    return value


class Harness:
    """`async with Harness(db_url, nodes=3) as h:` then `await h.call("create", "meetingID=x&name=xx")`."""

    def __init__(
        self,
        db_url: str,
        *,
        nodes: int = 2,
        tenants: tuple[str, ...] = ("ABC",),
        server: dict[str, object] | None = None,
        poller: dict[str, object] | None = None,
        callbacks: dict[str, object] | None = None,
        recordings: dict[str, object] | None = None,
        **api: object,
    ) -> None:
        """`api` overrides [api] settings, `server`, `poller`, `callbacks` and `recordings` their
        sections. Recordings go to local storage in a temporary folder unless `recordings` says otherwise."""
        self.db_url = db_url
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self.fleet = FakeFleet(nodes)
        self.tenant_slugs = tenants
        base = load_config(env={})
        self.config: Config = dataclasses.replace(
            base,
            server=dataclasses.replace(
                base.server, **{"api_base_domain": BASE_DOMAIN, "public_scheme": "https", **(server or {})}
            ),
            api=dataclasses.replace(base.api, node_request_timeout=2.0, node_connect_timeout=1.0, **api),
            # no extra polls behind the test's back unless it asks (probe_failed)
            poller=dataclasses.replace(base.poller, **{"timeout": 1.0, "probe_failed": False, **(poller or {})}),
            callbacks=dataclasses.replace(base.callbacks, **(callbacks or {})),
            recordings=dataclasses.replace(base.recordings, **self._recordings(recordings or {})),
        )
        self.tenants: dict[str, SeededTenant] = {}
        self.pool: asyncpg.Pool | None = None
        self.runtime: Runtime | None = None
        self.server: HTTPServer | None = None
        self.port = 0
        self.client = AsyncHTTPClient(force_instance=True)

    def _recordings(self, overrides: dict[str, object]) -> dict[str, object]:
        if overrides.get("storage", "local") == "local" and not overrides.get("local_path"):
            self._scratch = tempfile.TemporaryDirectory(prefix="b3lb-recordings-")
            return {**overrides, "local_path": self._scratch.name}
        return overrides

    async def __aenter__(self) -> Self:
        await self.fleet.start()
        # Like `b3lb serve`'s pool (db.Database.open(serving=True)): no session reset on release,
        # the serving process's synchronous_commit.
        self.pool = await asyncpg.create_pool(
            self.db_url, min_size=1, max_size=5, reset=keep_session,
            server_settings={"synchronous_commit": self.config.database.synchronous_commit},
        )
        self.tenants = await seed(self.pool, self.fleet, self.tenant_slugs)
        self.runtime = Runtime(self.config, self.pool)
        await self.runtime.start()
        # Polls only when a test asks (h.poll()), so tests decide what the poller has seen.
        self.runtime.poller = Poller(self.runtime)
        self.runtime.polling = True
        sock = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)[0]
        self.port = sock.getsockname()[1]
        # The same server, limits and timeouts as `b3lb serve` (b3lb/server.py).
        self.server = make_http_server(make_app(self.runtime), self.config.server)
        self.server.add_sockets([sock])
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.client.close()
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
        if self.runtime is not None:
            await self.runtime.stop()
        if self.pool is not None:
            await self.pool.close()
        await self.fleet.stop()
        if self._scratch is not None:
            self._scratch.cleanup()

    async def reload(self) -> None:
        """Pick up rows a test changed in the database."""
        assert self.runtime is not None
        await self.runtime.refresh_directory()
        await self.runtime.refresh_meetings()

    async def poll(self) -> list[NodePoll]:
        """Run one poll cycle of every node now, as the background poller would."""
        assert self.runtime is not None
        results: list[NodePoll] = await self.runtime.poller.poll_once()
        return results

    def secret(self, slug: str = "ABC", sub_id: int = 0) -> str:
        return self.tenants[slug].secrets[sub_id][1]

    def signed(self, call: str, query: str, secret: str, algorithm: str = "sha256") -> str:
        checksum = digest(algorithm, call, query, secret)
        return f"{query}&checksum={checksum}" if query else f"checksum={checksum}"

    async def call(
        self,
        call: str,
        query: str = "",
        *,
        slug: str = "ABC",
        sub_id: int = 0,
        algorithm: str = "sha256",
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
        path_style: bool = False,
        raw_query: str | None = None,
        secret: str | None = None,
    ) -> HTTPResponse:
        """Sign `query` with the tenant's secret and send it (host style unless path_style)."""
        full = raw_query if raw_query is not None else self.signed(call, query, secret or self.secret(slug, sub_id),
                                                                   algorithm)
        label = slug.lower() if sub_id == 0 else f"{slug.lower()}-{sub_id:03d}"
        if path_style:
            return await self.request(f"/b3lb/t/{label}/bbb/api/{call}?{full}", method=method, body=body,
                                      content_type=content_type)
        return await self.request(f"/bigbluebutton/api/{call}?{full}", host=f"{label}.{BASE_DOMAIN}",
                                  method=method, body=body, content_type=content_type)

    async def request(
        self,
        path: str,
        *,
        host: str = BASE_DOMAIN,
        method: str = "GET",
        body: bytes | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> HTTPResponse:
        all_headers = {"Host": host, **(headers or {})}
        if content_type:
            all_headers["Content-Type"] = content_type
        request = HTTPRequest(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            body=body if body is not None else (b"" if method in ("POST", "PUT", "PATCH") else None),
            headers=all_headers,
            follow_redirects=False,
            allow_nonstandard_methods=True,
            request_timeout=10,
        )
        return await self.client.fetch(request, raise_error=False)
