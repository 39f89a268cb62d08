"""Optional Redis channel between b3lb instances sharing one database.

Without Redis each instance learns of meetings created or ended elsewhere at its next table
refresh (`api.cache_refresh_interval`) or, for joins, by one SQL lookup on a miss. With
`redis.url` set, every instance publishes its creates and ends and applies the others' at once,
so a meeting ended through instance A is no longer routed by instance B a moment later.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

import orjson
import redis.asyncio as redis

from b3lb.meetings import MeetingRef
from b3lb.runtime import Runtime

log = logging.getLogger("b3lb.events")

CHANNEL = "b3lb:meetings"


class MeetingEvents:
    def __init__(self, runtime: Runtime, url: str, channel: str = CHANNEL) -> None:
        self.runtime = runtime
        self.channel = channel
        self.client = redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        self.received = 0
        self.instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"  # our own messages come back too

    async def publish(self, kind: str, ref: MeetingRef) -> None:
        message = {"from": self.instance, "kind": kind, "id": ref.id, "secret_id": ref.secret_id,
                   "meeting_id": ref.meeting_id, "node_id": ref.node_id, "nonce": str(ref.nonce)}
        try:
            await self.client.publish(self.channel, orjson.dumps(message))
        except (redis.RedisError, OSError) as exc:  # the database stays authoritative
            log.warning("cannot publish meeting event: %s", exc)

    def apply(self, raw: bytes) -> None:
        try:
            message = orjson.loads(raw)
            if message["from"] == self.instance:
                return
            ref = MeetingRef(id=message["id"], secret_id=message["secret_id"], meeting_id=message["meeting_id"],
                             node_id=message["node_id"], nonce=uuid.UUID(message["nonce"]))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring malformed meeting event: %s", exc)
            return
        meetings = self.runtime.meetings
        self.received += 1
        if message["kind"] == "created":
            meetings.add(ref)
        elif message["kind"] == "ended":
            known = meetings.get(ref.secret_id, ref.meeting_id)
            if known is not None and known.id == ref.id:
                meetings.remove(known)

    async def listen(self, ready: asyncio.Event | None = None) -> None:
        """Apply other instances' events until cancelled; reconnect after Redis outages."""
        while True:
            try:
                async with self.client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    if ready is not None:
                        ready.set()
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            self.apply(item["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as exc:
                log.warning("meeting events from Redis interrupted: %s", exc)
                await asyncio.sleep(2.0)

    async def close(self) -> None:
        await self.client.aclose()
