"""Optional Redis channel between b3lb instances sharing one database.

Without Redis each instance learns of meetings created or ended elsewhere at its next table
refresh (`api.cache_refresh_interval`) or, for joins, by one SQL lookup on a miss. With
`redis.url` set, every instance publishes its creates and ends and applies the others' at once,
so a meeting ended through instance A is no longer routed by instance B a moment later.

The channel belongs to one deployment: Redis pub/sub ignores DB numbers, so two deployments on
one Redis would otherwise route each other's meetings. It is `redis.channel` when set, else
derived from the database's identity (cluster system identifier, database, schema), which all
instances of a deployment share and no other deployment has. Events only speed routing up: the
database stays authoritative (a meeting learnt from an event is marked `via_event`, and a create
still writes or finds its row).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from typing import TYPE_CHECKING

import asyncpg
import orjson

from b3lb.meetings import MeetingRef
from b3lb.outage import Outage
from b3lb.runtime import Runtime

if TYPE_CHECKING:
    import redis.asyncio as redis

log = logging.getLogger("b3lb.events")

CHANNEL_PREFIX = "b3lb:meetings:"
RECONNECT_PAUSE = 2.0  # seconds between subscription attempts while Redis is down

# Readable by any role (PostgreSQL >= 10 grants pg_control_system() to PUBLIC): unique per cluster.
_IDENTITY = "SELECT (SELECT system_identifier FROM pg_control_system())::text, current_database(), current_schema()"
# Where pg_control_system() is revoked (some managed services): the server's address instead.
_FALLBACK_IDENTITY = (
    "SELECT coalesce(host(inet_server_addr()) || ':' || inet_server_port(), 'local'), "
    "current_database(), current_schema()"
)


async def derive_channel(pool: asyncpg.Pool) -> str:
    """The deployment's channel: the same for every instance on this database schema, across restarts."""
    try:
        row = await pool.fetchrow(_IDENTITY)
    except (asyncpg.InsufficientPrivilegeError, asyncpg.UndefinedFunctionError) as exc:
        log.warning("cannot read the database's system identifier (%s); the Redis channel is derived from "
                    "the server address: set redis.channel if instances reach the database differently", exc)
        row = await pool.fetchrow(_FALLBACK_IDENTITY)
    assert row is not None
    identity = "\x00".join(str(value or "") for value in row)
    return CHANNEL_PREFIX + hashlib.sha256(identity.encode()).hexdigest()[:20]


class MeetingEvents:
    def __init__(self, runtime: Runtime, url: str, channel: str = "") -> None:
        self.runtime = runtime
        # None until derived from the database (first publish or subscription)
        self.channel: str | None = channel or runtime.config.redis.channel or None
        self._deriving = asyncio.Lock()
        # imported here: a deployment without Redis never loads the client (some 10 MB per process)
        import redis.asyncio as redis_client

        self.client: redis.Redis = redis_client.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.errors = (redis_client.RedisError, OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
        self.received = 0
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # our own messages come back too
        # Redis outages are logged when they start and end, not per event (one per create and end)
        self.publishing = Outage("Redis (publishing meeting events)", dependency="redis", logger=log,
                                 failure_text="cannot publish meeting events to Redis")
        self.subscription = Outage("Redis (meeting events subscription)", dependency="redis", logger=log,
                                   failure_text="meeting events from Redis interrupted")

    async def channel_name(self) -> str:
        if self.channel is None:
            async with self._deriving:
                if self.channel is None:
                    self.channel = await derive_channel(self.runtime.pool)
                    log.info("meeting events on Redis channel %s", self.channel)
        return self.channel

    async def publish(self, kind: str, ref: MeetingRef) -> None:
        message = {"from": self.instance, "kind": kind, "id": ref.id, "secret_id": ref.secret_id,
                   "meeting_id": ref.meeting_id, "node_id": ref.node_id, "nonce": str(ref.nonce),
                   "failover_state": ref.failover_state}  # a re-created meeting's joins carry roles
        try:
            channel = await self.channel_name()
            await self.client.publish(channel, orjson.dumps(message))
        except self.errors as exc:
            self.publishing.failed(exc)  # the database stays authoritative: others see it at their refresh
            return
        self.publishing.succeeded()

    async def publish_suspect(self, node_id: int) -> None:
        """Ask the polling instance to poll this node at once: a call to it failed here."""
        message = {"from": self.instance, "kind": "suspect", "node_id": node_id}
        try:
            await self.client.publish(await self.channel_name(), orjson.dumps(message))
        except self.errors as exc:
            self.publishing.failed(exc)  # the poller still polls it within an interval
            return
        self.publishing.succeeded()

    def apply(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            if message["from"] == self.instance:
                return
            if message["kind"] == "suspect":
                self._apply_suspect(int(message["node_id"]))
                return
            ref = MeetingRef(id=message["id"], secret_id=message["secret_id"], meeting_id=message["meeting_id"],
                             node_id=message["node_id"], nonce=uuid.UUID(message["nonce"]), via_event=True,
                             failover_state=int(message.get("failover_state", 0)))
            kind = message["kind"]
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed meeting event: %s", exc)
            return
        if ref.secret_id not in self.runtime.directory.by_secret_id or ref.node_id not in self.runtime.loads.nodes:
            return  # not of this deployment's tenants or nodes (or not loaded yet): the refresh will tell
        meetings = self.runtime.meetings
        self.received += 1
        known = meetings.get(ref.secret_id, ref.meeting_id)
        if kind == "created":
            if known is None or (known.id, known.node_id) != (ref.id, ref.node_id):
                meetings.add(ref)  # an identical record read from the database is kept as it is
        elif kind == "ended":
            if known is not None and known.id == ref.id:
                meetings.remove(known)

    def _apply_suspect(self, node_id: int) -> None:
        runtime = self.runtime
        if runtime.polling and runtime.poller is not None and node_id in runtime.loads.nodes:
            runtime.poller.probe_soon(node_id, "a call failed on another instance")

    async def listen(self, ready: asyncio.Event | None = None) -> None:
        """Apply other instances' events until cancelled; reconnect after Redis outages."""
        while True:
            try:
                channel = await self.channel_name()
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    self.subscription.succeeded()
                    if ready is not None:
                        ready.set()
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            self.apply(item["data"])
            except asyncio.CancelledError:
                raise
            except self.errors as exc:
                self.subscription.failed(exc)
                await asyncio.sleep(RECONNECT_PAUSE)

    async def close(self) -> None:
        await self.client.aclose()
