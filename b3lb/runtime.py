"""Everything the serving process holds in memory, and the coroutines that keep it fresh.

Handlers read these tables without awaiting anything; background tasks reload them from the
database every `api.cache_refresh_interval` seconds and flush counters back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import asyncpg
from tornado.httputil import HTTPServerRequest

from b3lb.balancer import LoadTable
from b3lb.config import Config
from b3lb.counters import Counters
from b3lb.db import Q
from b3lb.inserts import MeetingInserts
from b3lb.meeting_lists import MeetingLists
from b3lb.meeting_sync import MeetingSync
from b3lb.meetings import MeetingRef, MeetingTable
from b3lb.memory import settle_long_lived
from b3lb.models import Cluster, Node, Parameter, Secret, Tenant
from b3lb.nodeclient import NodeClient
from b3lb.outage import Outage, describe, is_database_unavailable
from b3lb.recordings.storage import Storage, make_storage
from b3lb.slices import Slices
from b3lb.tenancy import AssetFlags, HostResolver, SecretContext, TenantDirectory

log = logging.getLogger("b3lb.runtime")
SUSPECT_GAP = 2.0  # seconds between two requests for an extra poll of one node from this instance


class Runtime:
    def __init__(self, config: Config, pool: asyncpg.Pool) -> None:
        self.config = config
        self.pool = pool
        self.directory = TenantDirectory()
        self.loads = LoadTable(error_after=config.poller.error_after, recover_after=config.poller.recover_after)
        self.meetings = MeetingTable()
        self.meeting_lists = MeetingLists()  # getMeetings answers (b3lb/api/getmeetings.py)
        # Ended meetings' ids are remembered this long: a read that began before the end must not bring them back.
        keep_removed = max(30.0, 3 * config.api.cache_refresh_interval)
        # Background Python work (poll cycles, meeting reads) runs one slice per loop turn (b3lb/slices.py).
        self.slices = Slices()
        self.meeting_sync = MeetingSync(pool, self.meetings, keep_removed=keep_removed, slices=self.slices)
        self.counters = Counters()
        # Whether this process reaches PostgreSQL: API calls, table refreshes, counter flushes and
        # inserts report here, so an outage is logged once when it starts and once when it ends.
        self.database = Outage("database")
        # The poller's writes, with their own wording (b3lb/poller.py _store).
        self.poll_store = Outage("poll results store", dependency="database",
                                 failure_text="cannot store poll results")
        self.meeting_inserts = MeetingInserts(pool, outage=self.database)
        self.nodes = NodeClient(config.api, config.callbacks)
        self.hosts = HostResolver(config.server.api_base_domain)
        self.allowed_algorithms = frozenset(config.api.allowed_sha_algorithms)
        self.trusted_proxies = frozenset(config.server.trusted_proxies)
        self._tasks: set[asyncio.Task[None]] = set()
        # The Poller of this process (b3lb/poller.py), and whether it currently leads (polls).
        self.poller: Any = None
        self.polling = False
        # b3lb.events.MeetingEvents when redis.url is set: creates and ends reach other instances at once.
        self.events: Any = None
        self._suspected: dict[int, float] = {}  # node id -> when this instance last asked for an extra poll
        self._storage: Storage | None = None

    @property
    def storage(self) -> Storage:
        """Recording storage ([recordings] storage), made on first use: most calls never need it."""
        if self._storage is None:
            self._storage = make_storage(self.config)
        return self._storage

    def secret_for(self, request: HTTPServerRequest, slug: str | None, sub: str | None) -> SecretContext | None:
        """The secret a request addresses: from the path (/b3lb/t/{slug}[-NNN]/...) when given,
        else from the Host (X-Forwarded-Host only from trusted proxies)."""
        if slug is not None:
            return self.directory.lookup(slug, int(sub or 0))
        key = self.hosts.resolve(self.request_host(request))
        return self.directory.lookup(*key) if key else None

    def request_host(self, request: HTTPServerRequest) -> str:
        headers = request.headers  # `in` first: HTTPHeaders.get raises and catches KeyError inside when absent
        forwarded = headers["X-Forwarded-Host"] if "X-Forwarded-Host" in headers else None
        if forwarded and request.remote_ip in self.trusted_proxies:
            return forwarded.split(",", 1)[0].strip()
        return request.host or ""

    # -- loading ------------------------------------------------------------------------------

    async def refresh_directory(self) -> None:
        """Reload tenants, secrets, rules, assets, clusters and nodes in one snapshot."""
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            tenants = [Tenant.from_row(r) for r in await conn.fetch(Q.load_tenants)]
            secrets = [Secret.from_row(r) for r in await conn.fetch(Q.load_secrets)]
            parameters = [Parameter.from_row(r) for r in await conn.fetch(Q.load_parameters)]
            asset_rows = await conn.fetch(Q.load_asset_flags)
            clusters = [Cluster.from_row(r) for r in await conn.fetch(Q.load_clusters)]
            nodes = [Node.from_row(r) for r in await conn.fetch(Q.load_nodes)]
            relations = [(r["cluster_group_id"], r["cluster_id"]) for r in await conn.fetch(Q.load_group_clusters)]
        assets = {
            r["tenant_id"]: AssetFlags(
                logo=bool(r["logo"]),
                slide=bool(r["slide"]),
                css=bool(r["css"]),
                slide_filename=r["slide"],
                slide_size=r["slide_size"],
            )
            for r in asset_rows
        }
        self.directory.rebuild(tenants, secrets, parameters, assets)
        unstored = self.poller.unstored_health if self.polling and self.poller is not None else ()
        self.loads.rebuild(clusters, nodes, relations, keep_health=unstored)

    async def refresh_meetings(self) -> None:
        """The meetings changed since the last read (b3lb/meeting_sync.py)."""
        await self.meeting_sync.refresh(polling=self.polling)
        settle_long_lived()  # the records just read must not make the next full collection long

    async def lookup_meeting(self, secret_id: int, meeting_id: str) -> MeetingRef | None:
        """Memory first; on a miss one indexed query, for meetings another instance created."""
        ref = self.meetings.get(secret_id, meeting_id)
        if ref is not None:
            return ref
        row = await self.pool.fetchrow(Q.meeting_by_key, secret_id, meeting_id)
        if row is None:
            return None
        ref = MeetingRef.from_row(row)
        if ref.id in self.meetings.removed:
            return None
        self.meetings.add(ref)
        return ref

    def announce(self, kind: str, ref: MeetingRef) -> None:
        """Tell other instances (through Redis, when configured) that a meeting was created or ended."""
        if self.events is not None:
            self.add_task("meeting event", self.events.publish(kind, ref))

    def suspect_node(self, node_id: int, reason: str) -> None:
        """A call to this node failed: the poller (which alone decides node health) polls it again
        at once instead of waiting for its next cycle. An instance that does not poll asks the one
        that does through Redis (at most once per node and SUSPECT_GAP); without Redis the poller
        finds out within its interval."""
        if self.polling and self.poller is not None:
            self.poller.probe_soon(node_id, reason)
        elif self.events is not None:
            now = time.monotonic()
            if now - self._suspected.get(node_id, -1e9) >= SUSPECT_GAP:
                self._suspected[node_id] = now
                self.add_task("node suspect event", self.events.publish_suspect(node_id))

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.nodes.prepare()
        await self.refresh_directory()
        await self.refresh_meetings()
        api = self.config.api
        self._spawn("directory refresh", self.refresh_directory, api.cache_refresh_interval)
        self._spawn("meeting refresh", self.refresh_meetings, api.cache_refresh_interval)
        self._spawn("counter flush", self.flush_counters, api.counter_flush_interval)

    async def flush_counters(self) -> bool:
        """False when there was nothing to write (the database was not asked)."""
        return await self.counters.flush(self.pool) > 0

    def add_task(self, name: str, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a background coroutine until it ends or stop() cancels it."""
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, name: str, job: Callable[[], Awaitable[object]], interval: float) -> None:
        """Run a database job every `interval` seconds; a job returning False did not reach the database."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                try:
                    reached = await job()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # a background job must survive a bad cycle
                    if is_database_unavailable(exc):  # logged once per outage, not per cycle
                        self.database.failed(f"{name}: {describe(exc)}")
                    else:
                        log.exception("%s failed", name)
                else:
                    if reached is not False:
                        self.database.succeeded()

        self.add_task(name, loop())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.counters.flush(self.pool)
        except Exception as exc:  # shutting down: log and go on closing
            if is_database_unavailable(exc):
                log.warning("final counter flush failed, %d secrets' counts lost: %s",
                            len(self.counters.pending), describe(exc))
            else:
                log.exception("final counter flush failed")
        await self.nodes.aclose()
        if self._storage is not None:
            await self._storage.close()
        if self.events is not None:
            await self.events.close()
